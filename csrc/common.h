// Shared helpers for every kernel family: threading, CPU dispatch, vectorizable math.
// Nothing here knows about Python; errors are C++ exceptions that bindings.cpp maps.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef GRADFUSE_OPENMP
#include <omp.h>
#endif

namespace gradfuse {

// Below this many elements of work a parallel region costs more than it saves
// (thread wake-up is ~1-5 us on this machine; a 128x10 loss is well under that).
constexpr int64_t kParallelGrain = 1 << 15;

inline int max_threads() {
#ifdef GRADFUSE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Runs fn(begin, end) over [0, n) in static chunks. Work items must be independent:
// any reduction across items is done by the caller in a fixed order afterwards, so
// results do not depend on the number of threads (DESIGN.md, decision 4).
template <typename Fn>
inline void parallel_for(int64_t n, int64_t work_per_item, Fn&& fn) {
#ifdef GRADFUSE_OPENMP
  if (n > 1 && n * work_per_item >= kParallelGrain && omp_get_max_threads() > 1) {
#pragma omp parallel
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

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// exp(x) for float32 without a libm call, so loops over it vectorize
// (glibc's vector expf is only declared under -ffast-math, which we do not use).
// exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 split in two parts
// (Cody-Waite) so r is exact; exp(r) on |r| <= ln2/2 by Cephes' degree-6 polynomial
// (max rel. error ~1.5 ulp). 2^k is applied as 2^(k/2) * 2^(k - k/2) so that both factors
// stay normal for k in [-150, 128]: gradual underflow and exp(88.7) come out right.
inline float exp_f32(float x) {
  constexpr float kHi = 88.72283935546875f;   // exp(kHi) ~ FLT_MAX
  constexpr float kLo = -103.97208404541015f;  // exp(kLo) < smallest denormal / 2
  float xc = x > kHi ? kHi : x;
  xc = xc < kLo ? kLo : xc;
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
  float y = p * bits_to_float((k1 + 127) << 23) * bits_to_float((k2 + 127) << 23);
  y = x > kHi ? __builtin_inff() : y;
  y = x < kLo ? 0.0f : y;
  return x != x ? x : y;  // NaN in, NaN out
}

// Error helpers: messages always name the argument and what was expected.
[[noreturn]] inline void fail_value(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace gradfuse
