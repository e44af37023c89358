// Shared helpers for every kernel family: threading, CPU dispatch, vectorizable math.
// Nothing here knows about Python; errors are C++ exceptions that bindings.cpp maps.
#pragma once

#include <cstdint>
#if defined(__SSE2__)
#include <emmintrin.h>  // streaming stores
#endif
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef GRADFUSE_OPENMP
#include <omp.h>
#endif

namespace gradfuse {

// Below this many units of work (elements x a kernel's per-element weight) a parallel region
// costs more than it saves. gradfuse's OpenMP workers sleep between regions (OMP_WAIT_POLICY
// is PASSIVE, see gradfuse/_backend.py), and waking one took ~70-90 us on this machine's
// virtual CPUs: relu on 64K floats took 10 us on one thread and 78 us on two, on 1M floats
// 330 us and 239 us. So the default is 1M units (~0.2-0.3 ms of single-thread work).
// GRADFUSE_PARALLEL_GRAIN (read once, at load) overrides it: the tests set it low so that
// the multi-thread paths of every kernel run on small inputs.
constexpr int64_t kDefaultParallelGrain = int64_t(1) << 20;
int64_t parallel_grain();

// The kernels' thread count, process wide. OpenMP's own setting (omp_set_num_threads) is per
// calling thread, so a count set from the main thread would not reach kernels launched from a
// data-loading thread; every parallel region below asks for this count explicitly instead.
int num_threads();
void set_num_threads(int n);

// Runs fn(begin, end) over [0, n) in static chunks. Work items must be independent:
// any reduction across items is done by the caller in a fixed order afterwards, so
// results do not depend on the number of threads (DESIGN.md, decision 4).
template <typename Fn>
inline void parallel_for(int64_t n, int64_t work_per_item, Fn&& fn) {
#ifdef GRADFUSE_OPENMP
  const int threads = num_threads();
  if (n > 1 && n * work_per_item >= parallel_grain() && threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t nt = omp_get_num_threads();
      const int64_t t = omp_get_thread_num();
      const int64_t chunk = (n + nt - 1) / nt;
      const int64_t b = t * chunk;
      const int64_t e = b + chunk < n ? b + chunk : n;
      if (b < e) fn(b, e);
    }
    return;
  }
#endif
  (void)work_per_item;
  if (n > 0) fn(0, n);
}

// Hot loops are compiled for baseline x86-64, AVX2 and AVX-512 and picked at load time
// (GCC function multi-versioning), so one wheel runs everywhere and still uses the
// vector width of the machine. -march=native builds (GRADFUSE_NATIVE) need no clones.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !GRADFUSE_NATIVE_BUILD
#define GF_TARGET_CLONES __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define GF_TARGET_CLONES
#endif

// Helpers called from a GF_TARGET_CLONES function must be inlined into each clone: a helper
// left out of line is compiled once, for the baseline ISA, and the AVX-512 clone then calls
// SSE2 code (exp_f32 and lane_max were out of line in loss.cpp until this was forced).
#ifndef GF_INLINE
#if defined(__GNUC__)
#define GF_INLINE inline __attribute__((always_inline))
#else
#define GF_INLINE inline
#endif
#endif

GF_INLINE float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// exp(x) for float32 without a libm call, so loops over it vectorize
// (glibc's vector expf is only declared under -ffast-math, which we do not use).
// exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 split in two parts
// (Cody-Waite) so r is exact; exp(r) on |r| <= ln2/2 by Cephes' degree-6 polynomial
// (max rel. error ~1.5 ulp). 2^k is applied as 2^(k/2) * 2^(k - k/2) so that both factors
// stay normal for k in [-150, 128]: gradual underflow comes out right, and past
// ln(FLT_MAX) = 88.72 the product overflows to inf by itself. NaN passes through the clamps
// (comparisons with NaN are false) and the arithmetic, so no select is needed for it either:
// about 25 vector instructions per 16 floats with AVX-512.
GF_INLINE float exp_f32(float x) {
  float xc = x > 89.0f ? 89.0f : x;
  xc = xc < -104.0f ? -104.0f : xc;
  // round to nearest by the 1.5 * 2^23 trick: vectorizes without SSE4.1's roundps
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  const int32_t k1 = k >> 1;
  const int32_t k2 = k - k1;
  return p * bits_to_float((k1 + 127) << 23) * bits_to_float((k2 + 127) << 23);
}

// ---- row loops without a scalar tail
// The body of a row runs as an ordinary vectorized loop over its whole blocks of kLanes
// elements; the last partial block goes through the same vector code on a padded copy,
// masked. GCC 12 would otherwise run the remainder through a scalar epilogue: a 10-class
// cross-entropy row is all remainder at AVX-512 width, and that epilogue was 80% of its time.
constexpr int64_t kLanes = 16;

template <typename T>
struct PaddedTail {  // x[full .. n) copied into a full block, padded with x[0] (a real value)
  alignas(64) T v[kLanes];
  int64_t full, rem;
  PaddedTail(const T* x, int64_t n) : full(n - n % kLanes), rem(n % kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) v[j] = j < rem ? x[full + j] : x[0];
  }
};

// sum over j < n of f(x[j]) (weighted form: f(x[j], w[j]))
template <typename T, typename F>
GF_INLINE T lane_sum(const T* x, int64_t n, F f) {
  const PaddedTail<T> t(x, n);
  T s = 0, st = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < t.full; ++j) s += f(x[j]);
#pragma omp simd reduction(+ : st)
  for (int64_t j = 0; j < kLanes; ++j) st += j < t.rem ? f(t.v[j]) : T(0);
  return s + st;
}

template <typename T, typename F>
GF_INLINE T lane_sum(const T* x, const T* w, int64_t n, F f) {
  const PaddedTail<T> t(x, n), tw(w, n);
  T s = 0, st = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < t.full; ++j) s += f(x[j], w[j]);
#pragma omp simd reduction(+ : st)
  for (int64_t j = 0; j < kLanes; ++j) st += j < t.rem ? f(t.v[j], tw.v[j]) : T(0);
  return s + st;
}

// max over j < n of x[j] (n >= 1); NaN elements are skipped here and caught downstream.
template <typename T>
GF_INLINE T lane_max(const T* x, int64_t n) {
  const PaddedTail<T> t(x, n);  // padding with x[0] cannot raise the max
  T m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < t.full; ++j) m = x[j] > m ? x[j] : m;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < kLanes; ++j) m = t.v[j] > m ? t.v[j] : m;
  return m;
}

// out[j] = f(x[j]) for j < n (weighted form: f(x[j], w[j]))
template <typename T, typename F>
GF_INLINE void lane_map(const T* x, int64_t n, T* out, F f) {
  const PaddedTail<T> t(x, n);
#pragma omp simd
  for (int64_t j = 0; j < t.full; ++j) out[j] = f(x[j]);
  alignas(64) T o[kLanes];
#pragma omp simd
  for (int64_t j = 0; j < kLanes; ++j) o[j] = f(t.v[j]);
  for (int64_t j = 0; j < t.rem; ++j) out[t.full + j] = o[j];
}

template <typename T, typename F>
GF_INLINE void lane_map(const T* x, const T* w, int64_t n, T* out, F f) {
  const PaddedTail<T> t(x, n), tw(w, n);
#pragma omp simd
  for (int64_t j = 0; j < t.full; ++j) out[j] = f(x[j], w[j]);
  alignas(64) T o[kLanes];
#pragma omp simd
  for (int64_t j = 0; j < kLanes; ++j) o[j] = f(t.v[j], tw.v[j]);
  for (int64_t j = 0; j < t.rem; ++j) out[t.full + j] = o[j];
}

// Error helpers: messages always name the argument and what was expected.
[[noreturn]] inline void fail_value(const std::string& msg) { throw std::invalid_argument(msg); }

// ---------------------------------------------------------------- streaming stores
// A plain store of an output that will not be read soon first reads its cache line from memory
// (write-allocate), so a large output costs twice its size in traffic. Kernels that write
// outputs of several MiB compute a block into a small L1 buffer and copy it out with these.
// SSE2's 16-byte streaming stores are in every x86-64 target clone; consecutive ones fill whole
// lines in the write-combining buffers, so the width does not matter.

// dst[0, n) = src[0, n), streaming where dst is 16-byte aligned.
GF_INLINE void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

GF_INLINE void stream_copy(double* dst, const double* src, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// Streaming stores are weakly ordered: each thread fences before its writes are read.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace gradfuse
