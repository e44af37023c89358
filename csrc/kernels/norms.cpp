#include "kernels/norms.h"

#include <emmintrin.h>  // streaming stores; SSE2 is in every x86-64 target clone

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

namespace gradfuse {
namespace {

// Elements per block whose sums are kept in T: 4096 / 16 lanes = 256 terms per SIMD lane, so a
// float32 block sum is good to ~1e-6 relative; blocks are added in double.
constexpr int64_t kBlock = 4096;
// Rows per partial of a reduction over rows (LayerNorm dw/db, BatchNorm (N, C) statistics).
// Fixed, never derived from the thread count: the partials are merged in chunk order.
constexpr int64_t kRowChunk = 64;
constexpr int64_t kColChunk = 256;
// The two partial vectors of a chunk are kPad elements further apart than their length: at
// exactly 4 KiB apart (1024 floats) every store to one falsely aliases the next load from the
// other (4K aliasing); the BatchNorm backward at 8192x1024 ran about 2x slower that way.
constexpr int64_t kPad = 16;


// Accumulates one element into the pair of sums a statistic needs:
//   statistics (kGrad false):  p += x - k,  q += (x - k)^2      (k = shift)
//   gradient   (kGrad true):   p += dy,     q += dy (x - k)     (k = mean)
template <bool kGrad, typename T>
GF_INLINE void acc_pair(T xv, T yv, T k, T& p, T& q) {
  if constexpr (kGrad) {
    p += yv;
    q += yv * (xv - k);
  } else {
    (void)yv;
    const T d = xv - k;
    p += d;
    q += d * d;
  }
}

// Pair sums over one contiguous run of n elements: T within a block, double across blocks.
template <bool kGrad, typename T>
GF_INLINE void run_sums(const T* x, const T* y, int64_t n, T k, double& s1, double& s2) {
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    const T* xb = x + b;
    const T* yb = kGrad ? y + b : x + b;
    T p = 0, q = 0;
#pragma omp simd reduction(+ : p, q)
    for (int64_t j = 0; j < len; ++j) acc_pair<kGrad>(xb[j], yb[j], k, p, q);
    s1 += double(p);
    s2 += double(q);
  }
}

// Mean and biased variance (or mean square when !center) of a contiguous run, in one read.
template <typename T>
GF_INLINE void run_stats(const T* x, int64_t n, bool center, double& mean, double& var) {
  const T k = center ? x[0] : T(0);
  double s1 = 0, s2 = 0;
  run_sums<false>(x, static_cast<const T*>(nullptr), n, k, s1, s2);
  const double m1 = s1 / double(n);
  mean = double(k) + m1;
  var = center ? std::max(s2 / double(n) - m1 * m1, 0.0) : s2 / double(n);
}

// y = (x - m) * r * w + b over a run; W / B say whether w / b exist.
template <bool W, bool B, typename T>
GF_INLINE void affine_run(const T* x, const T* w, const T* b, int64_t n, T m, T r, T* y) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    T v = (x[j] - m) * r;
    if constexpr (W) v = v * w[j];
    if constexpr (B) v = v + b[j];
    y[j] = v;
  }
}

// Outputs (y, dx) at least this large are written with non-temporal (streaming) stores: an
// ordinary store first reads the line it writes (read for ownership), so BatchNorm's normalize
// pass would move x, y-read, y-write instead of x, y-write (and its backward's dx pass dy, x,
// dx-read, dx-write). Such an output does not stay in L2 anyway. Same threshold as scale.cpp.
// Measured at 8192x1024 float32, one thread, a module forward + backward repeated (min of 30):
// BatchNorm1d 9.4-10.1 ms vs 14.7-15.4 ms with ordinary stores, LayerNorm 7.6-8.8 vs
// 10.4-12.5 ms. A LayerNorm forward alone, repeated so that x and y both stay in the L3, is
// the one case that loses: 2.85 vs 2.5 ms.
constexpr int64_t kStreamMinBytes = int64_t(8) << 20;
// values computed into an L1 buffer, then streamed out (see stream_copy)
constexpr int64_t kStreamBuf = 256;


// ------------------------------------------------------------------ LayerNorm / RMSNorm rows

template <bool kStream, typename T>
GF_INLINE void row_forward(const T* x, const T* w, const T* b, int64_t n, double eps, bool rms,
                           T* y, T* mean_out, T* rstd_out) {
  double mean, var;
  run_stats(x, n, !rms, mean, var);
  const T m = rms ? T(0) : T(mean);
  const T r = T(1.0 / std::sqrt(var + eps));
  if (mean_out) *mean_out = m;
  *rstd_out = r;
  // The row was just read for the statistics and is still in L1/L2: this pass costs only the
  // write of y (through an L1 buffer and streaming stores when kStream).
  alignas(64) T buf[kStream ? kStreamBuf : 1];
  for (int64_t j0 = 0; j0 < n; j0 += (kStream ? kStreamBuf : n)) {
    const int64_t len = kStream ? std::min(kStreamBuf, n - j0) : n;
    T* dst = kStream ? buf : y + j0;
    const T* wj = w ? w + j0 : nullptr;
    const T* bj = b ? b + j0 : nullptr;
    if (w && b) {
      affine_run<true, true>(x + j0, wj, bj, len, m, r, dst);
    } else if (w) {
      affine_run<true, false>(x + j0, wj, bj, len, m, r, dst);
    } else if (b) {
      affine_run<false, true>(x + j0, wj, bj, len, m, r, dst);
    } else {
      affine_run<false, false>(x + j0, wj, bj, len, m, r, dst);
    }
    if constexpr (kStream) stream_copy(y + j0, buf, len);
  }
}

// One row of the fused backward, two loops over the row. The first reads x and dy (from memory)
// and forms the row sums sg = sum g, sgx = sum g (x - m) of g = w dy (T per block, double
// across blocks), and, since mean and rstd are known from the forward, also adds the chunk's
// partial dw += dy (x - m) r, db += dy (L1-resident): no store in it goes to memory. The
// second, over the now cached row, writes dx. (One loop writing dx, dw and db together ran
// about 1.6x slower at 8192x1024 on one thread, probably because the L1 stores then wait in
// the store buffer behind dx's cache-missing ones.)
template <bool W, bool P, bool kStream, typename T>
GF_INLINE void row_backward(const T* x, const T* dy, const T* w, T m, T r, int64_t n, bool rms,
                            T* dx, T* pw, T* pb) {
  double sg = 0, sgx = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    T p = 0, q = 0;
#pragma omp simd reduction(+ : p, q)
    for (int64_t j = b; j < e; ++j) {
      const T d = dy[j], xc = x[j] - m;
      T g = d;
      if constexpr (W) g = g * w[j];
      p += g;
      q += g * xc;
      if constexpr (P) {
        pw[j] += d * (xc * r);
        pb[j] += d;
      }
    }
    sg += double(p);
    sgx += double(q);
  }
  if (!dx) return;
  // dx = r (g - sg/n - (x - m) r^2 sgx/n)
  const T c1 = rms ? T(0) : T(sg / double(n));
  const T c2 = T(double(r) * double(r) * sgx / double(n));
  alignas(64) T buf[kStream ? kStreamBuf : 1];
  for (int64_t j0 = 0; j0 < n; j0 += (kStream ? kStreamBuf : n)) {
    const int64_t len = kStream ? std::min(kStreamBuf, n - j0) : n;
    T* dst = kStream ? buf : dx + j0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      T g = dy[j0 + j];
      if constexpr (W) g = g * w[j0 + j];
      dst[j] = r * (g - c1 - (x[j0 + j] - m) * c2);
    }
    if constexpr (kStream) stream_copy(dx + j0, buf, len);
  }
}

// Rows [r0, r1): the unit compiled per instruction set, so a small row costs no dispatch.
template <bool kStream, typename T>
GF_TARGET_CLONES void rows_forward(const T* x, const T* w, const T* b, const RowNormArgs& a,
                                   int64_t r0, int64_t r1, T* y, T* mean, T* rstd) {
  const int64_t D = a.cols;
  for (int64_t i = r0; i < r1; ++i) {
    row_forward<kStream, T>(x + i * D, w, b, D, a.eps, a.rms, y + i * D,
                            mean ? mean + i : nullptr, rstd + i);
  }
  if (kStream) stream_fence();
}

template <bool W, bool P, bool kStream, typename T>
GF_TARGET_CLONES void rows_backward(const T* x, const T* dy, const T* w, const T* mean,
                                    const T* rstd, const RowNormArgs& a, int64_t r0, int64_t r1,
                                    T* dx, T* pw, T* pb) {
  const int64_t D = a.cols;
  for (int64_t i = r0; i < r1; ++i) {
    row_backward<W, P, kStream, T>(x + i * D, dy + i * D, w, mean ? mean[i] : T(0), rstd[i], D,
                                   a.rms, dx ? dx + i * D : nullptr, pw, pb);
  }
  if (kStream) stream_fence();
}

template <bool kStream, typename T>
void rows_backward_dispatch(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                            const RowNormArgs& a, int64_t r0, int64_t r1, T* dx, T* pw, T* pb,
                            bool want) {
  if (w && want) {
    rows_backward<true, true, kStream, T>(x, dy, w, mean, rstd, a, r0, r1, dx, pw, pb);
  } else if (w) {
    rows_backward<true, false, kStream, T>(x, dy, w, mean, rstd, a, r0, r1, dx, pw, pb);
  } else if (want) {
    rows_backward<false, true, kStream, T>(x, dy, w, mean, rstd, a, r0, r1, dx, pw, pb);
  } else {
    rows_backward<false, false, kStream, T>(x, dy, w, mean, rstd, a, r0, r1, dx, pw, pb);
  }
}

// Sum of nchunks partial vectors of length n (stride `stride` apart) in chunk order, in double.
template <typename T>
void merge_partials(const T* part, int64_t nchunks, int64_t stride, int64_t n, T* out) {
  parallel_for(n, nchunks, [&](int64_t b, int64_t e) {
    std::vector<double> acc(size_t(e - b), 0.0);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const T* p = part + ch * stride;
      for (int64_t j = b; j < e; ++j) acc[size_t(j - b)] += double(p[j]);
    }
    for (int64_t j = b; j < e; ++j) out[j] = T(acc[size_t(j - b)]);
  });
}

// ------------------------------------------------------------------ BatchNorm channel sums

// Rows [r0, r1) of an (n, C) array added into the chunk's partials p, q (all C columns at once).
template <bool kGrad, typename T>
GF_TARGET_CLONES void col_chunk_sums(const T* x, const T* y, const T* k, int64_t r0, int64_t r1,
                                     int64_t C, T* p, T* q) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    const T* yr = kGrad ? y + r * C : xr;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) acc_pair<kGrad>(xr[c], yr[c], k[c], p[c], q[c]);
  }
}

// Channel c of (n, C, l) data: its n runs of l summed in order.
template <bool kGrad, typename T>
GF_TARGET_CLONES void channel_run_sums(const T* x, const T* y, T k, const BatchNormArgs& a,
                                       int64_t c, double* s1, double* s2) {
  double u = 0, v = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t off = (i * a.c + c) * a.l;
    run_sums<kGrad>(x + off, kGrad ? y + off : x + off, a.l, k, u, v);
  }
  *s1 = u;
  *s2 = v;
}

// Per-channel pair sums over (n, c, l) data, merged in a fixed order:
//   l == 1: rows in fixed chunks of kColChunk, each chunk accumulating all C columns at once
//           (contiguous, vectorized across channels), chunk partials added in chunk order;
//   l > 1:  one channel per work item, its n runs of l summed in order.
// (N, C, L) with short runs: each sample is one contiguous row of C L values, so it is treated
// as an (N, C L) array (the l == 1 paths, vectorized across the row) and the L columns of a
// channel are folded afterwards. One channel at a time over runs of 4 read each 64-byte line
// four times, one channel after another: (131072, 16, 4) float32 took 50 ms forward.
constexpr int64_t kShortRun = 64;
constexpr int64_t kMaxFoldedCols = 8192;

inline bool short_runs(const BatchNormArgs& a) {
  return a.l > 1 && a.l < kShortRun && a.c * a.l <= kMaxFoldedCols;
}

inline BatchNormArgs as_rows(const BatchNormArgs& a) {
  BatchNormArgs f = a;
  f.c = a.c * a.l;
  f.l = 1;
  return f;
}

// v (C,) repeated L times per channel: (C L,)
template <typename T>
std::vector<T> per_column(const T* v, const BatchNormArgs& a) {
  std::vector<T> out(static_cast<size_t>(a.c * a.l));
  for (int64_t c = 0; c < a.c; ++c) {
    for (int64_t j = 0; j < a.l; ++j) out[size_t(c * a.l + j)] = v[c];
  }
  return out;
}

template <bool kGrad, typename T>
void channel_sums(const T* x, const T* y, const T* k, const BatchNormArgs& a, double* s1,
                  double* s2) {
  const int64_t C = a.c;
  if (short_runs(a)) {
    const BatchNormArgs f = as_rows(a);
    const std::vector<T> kc = per_column(k, a);
    std::vector<double> u(static_cast<size_t>(f.c)), v(static_cast<size_t>(f.c));
    channel_sums<kGrad, T>(x, y, kc.data(), f, u.data(), v.data());
    for (int64_t c = 0; c < C; ++c) {
      double p = 0, q = 0;
      for (int64_t j = 0; j < a.l; ++j) {
        p += u[size_t(c * a.l + j)];
        q += v[size_t(c * a.l + j)];
      }
      s1[c] = p;
      s2[c] = q;
    }
    return;
  }
  if (a.l == 1) {
    const int64_t nchunks = (a.n + kColChunk - 1) / kColChunk;
    const int64_t stride = 2 * (C + kPad);
    std::vector<T> part(static_cast<size_t>(nchunks * stride), T(0));
    parallel_for(nchunks, kColChunk * C, [&](int64_t cb, int64_t ce) {
      for (int64_t ch = cb; ch < ce; ++ch) {
        T* p = part.data() + ch * stride;
        col_chunk_sums<kGrad, T>(x, y, k, ch * kColChunk, std::min(a.n, (ch + 1) * kColChunk),
                                 C, p, p + C + kPad);
      }
    });
    for (int64_t c = 0; c < C; ++c) s1[c] = s2[c] = 0.0;
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const T* p = part.data() + ch * stride;
      for (int64_t c = 0; c < C; ++c) {
        s1[c] += double(p[c]);
        s2[c] += double(p[C + kPad + c]);
      }
    }
    return;
  }
  parallel_for(C, a.n * a.l, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) channel_run_sums<kGrad, T>(x, y, k[c], a, c, s1 + c, s2 + c);
  });
}

// o[j] = (x[j] - m[j]) * s[j] + t[j]   (per-channel vectors, V false), or
// o[j] = x[j] * s[j] + t[j] + u[j] * (v[j] - m[j])   (V true: the training backward);
// kScalar: m, s, t, u are one value each (a run of one channel). Direct stores, or through an
// L1 buffer and streaming stores (kStream).
template <bool V, bool kScalar, bool kStream, typename T>
GF_INLINE void bn_apply_span(const T* x, const T* m, const T* s, const T* t, const T* v,
                             const T* u, int64_t n, T* o) {
  alignas(64) T buf[kStream ? kStreamBuf : 1];
  for (int64_t j0 = 0; j0 < n; j0 += (kStream ? kStreamBuf : n)) {
    const int64_t len = kStream ? std::min(kStreamBuf, n - j0) : n;
    T* dst = kStream ? buf : o + j0;
    const T* xs = x + j0;
    const T* vs = V ? v + j0 : nullptr;
    const int64_t c0 = kScalar ? 0 : j0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const int64_t c = kScalar ? 0 : c0 + j;
      if constexpr (V) {
        dst[j] = xs[j] * s[c] + t[c] + u[c] * (vs[j] - m[c]);
      } else {
        dst[j] = (xs[j] - m[c]) * s[c] + t[c];
      }
    }
    if constexpr (kStream) stream_copy(o + j0, buf, len);
  }
}

// out = (x - m[c]) * s[c] + t[c] over (n, c, l): the normalize pass of the forward and, with
// x = dy and m = 0, the running-statistics backward. u[c] * (v - mv[c]) is added when v != null
// (the training backward: dx = s dy + t + u (x - mean)).
template <bool kStream, typename T>
GF_TARGET_CLONES void bn_apply_rows(const T* x, const T* m, const T* s, const T* t, const T* v,
                                    const T* u, int64_t r0, int64_t r1, int64_t C, T* out) {
  for (int64_t r = r0; r < r1; ++r) {
    if (v) {
      bn_apply_span<true, false, kStream>(x + r * C, m, s, t, v + r * C, u, C, out + r * C);
    } else {
      bn_apply_span<false, false, kStream>(x + r * C, m, s, t, v, u, C, out + r * C);
    }
  }
  if (kStream) stream_fence();
}

template <bool kStream, typename T>
GF_TARGET_CLONES void bn_apply_runs(const T* x, const T* m, const T* s, const T* t, const T* v,
                                    const T* u, int64_t i0, int64_t i1, int64_t C, int64_t L,
                                    T* out) {
  for (int64_t i = i0; i < i1; ++i) {  // i = sample * C + channel
    const int64_t c = i % C;
    if (v) {
      bn_apply_span<true, true, kStream>(x + i * L, m + c, s + c, t + c, v + i * L, u + c, L,
                                         out + i * L);
    } else {
      bn_apply_span<false, true, kStream>(x + i * L, m + c, s + c, t + c, v, u, L, out + i * L);
    }
  }
  if (kStream) stream_fence();
}

template <bool kStream, typename T>
void bn_apply_impl(const T* x, const T* m, const T* s, const T* t, const T* v, const T* u,
                   const BatchNormArgs& a, T* out) {
  if (a.l == 1) {
    parallel_for(a.n, a.c, [&](int64_t b, int64_t e) {
      bn_apply_rows<kStream>(x, m, s, t, v, u, b, e, a.c, out);
    });
  } else {
    parallel_for(a.n * a.c, a.l, [&](int64_t b, int64_t e) {
      bn_apply_runs<kStream>(x, m, s, t, v, u, b, e, a.c, a.l, out);
    });
  }
}

template <typename T>
void bn_apply(const T* x, const T* m, const T* s, const T* t, const T* v, const T* u,
              const BatchNormArgs& a, T* out) {
  if (short_runs(a)) {  // as rows of C L values, the per-channel vectors repeated per column
    const std::vector<T> mc = per_column(m, a), sc = per_column(s, a), tc = per_column(t, a);
    const std::vector<T> uc = u ? per_column(u, a) : std::vector<T>();
    bn_apply(x, mc.data(), sc.data(), tc.data(), v, u ? uc.data() : nullptr, as_rows(a), out);
    return;
  }
  // (N, C, L) runs shorter than the buffer would stream partial lines and mix ordinary and
  // streaming stores on the lines between runs: (131072, 16, 4) float32 ran 1.4x slower so
  if (a.n * a.c * a.l * int64_t(sizeof(T)) >= kStreamMinBytes && (a.l == 1 || a.l >= kStreamBuf)) {
    bn_apply_impl<true>(x, m, s, t, v, u, a, out);
  } else {
    bn_apply_impl<false>(x, m, s, t, v, u, a, out);
  }
}

// (sample, group) blocks [r0, r1) of the GroupNorm forward.
template <typename T>
GF_TARGET_CLONES void gn_forward_rows(const T* x, const T* w, const T* b, const GroupNormArgs& a,
                                      int64_t r0, int64_t r1, T* y, T* mean, T* rstd) {
  const int64_t cg = a.c / a.groups;
  const int64_t K = cg * a.s;
  for (int64_t i = r0; i < r1; ++i) {
    const T* xi = x + i * K;
    T* yi = y + i * K;
    double mu, var;
    run_stats(xi, K, true, mu, var);
    const T mt = T(mu);
    const T r = T(1.0 / std::sqrt(var + a.eps));
    mean[i] = mt;
    rstd[i] = r;
    const int64_t c0 = (i % a.groups) * cg;
    for (int64_t j = 0; j < cg; ++j) {
      const T sc = w ? r * w[c0 + j] : r;
      const T tc = b ? b[c0 + j] : T(0);
      const T* xs = xi + j * a.s;
      T* ys = yi + j * a.s;
#pragma omp simd
      for (int64_t q = 0; q < a.s; ++q) ys[q] = (xs[q] - mt) * sc + tc;
    }
  }
}

// (sample, group) blocks [r0, r1) of the GroupNorm backward; per (sample, channel) sums of dy
// and dy (x - mean) go to pdy, pdyx for the dw/db reduction.
template <typename T>
GF_TARGET_CLONES void gn_backward_rows(const T* x, const T* dy, const T* w, const T* mean,
                                       const T* rstd, const GroupNormArgs& a, int64_t r0,
                                       int64_t r1, T* dx, double* pdy, double* pdyx) {
  const int64_t cg = a.c / a.groups;
  const int64_t K = cg * a.s;
  for (int64_t i = r0; i < r1; ++i) {
    const T* xi = x + i * K;
    const T* gi = dy + i * K;
    const T mt = mean[i];
    const double r = rstd[i];
    const int64_t c0 = (i % a.groups) * cg;
    const int64_t nc0 = (i / a.groups) * a.c + c0;  // index of (sample, c0)
    double A = 0, B = 0;                              // sum w dy, sum w dy (x - mean)
    for (int64_t j = 0; j < cg; ++j) {
      double u = 0, v = 0;
      run_sums<true>(xi + j * a.s, gi + j * a.s, a.s, mt, u, v);
      pdy[nc0 + j] = u;
      pdyx[nc0 + j] = v;
      const double wc = w ? double(w[c0 + j]) : 1.0;
      A += wc * u;
      B += wc * v;
    }
    if (!dx) continue;
    // dx = r w dy - r A/K - (x - mean) r^3 B/K
    const T t = T(-r * A / double(K));
    const T uu = T(-r * r * r * B / double(K));
    for (int64_t j = 0; j < cg; ++j) {
      const T sc = T(w ? r * double(w[c0 + j]) : r);
      const T* xs = xi + j * a.s;
      const T* gs = gi + j * a.s;
      T* o = dx + i * K + j * a.s;
#pragma omp simd
      for (int64_t q = 0; q < a.s; ++q) o[q] = gs[q] * sc + t + uu * (xs[q] - mt);
    }
  }
}

}  // namespace

// ------------------------------------------------------------------ LayerNorm / RMSNorm

template <typename T>
void row_norm_forward(const T* x, const T* w, const T* b, const RowNormArgs& a, T* y, T* mean,
                      T* rstd) {
  const int64_t D = a.cols;
  const bool stream = a.rows * D * int64_t(sizeof(T)) >= kStreamMinBytes;
  parallel_for(a.rows, D, [&](int64_t r0, int64_t r1) {
    if (stream) {
      rows_forward<true, T>(x, w, b, a, r0, r1, y, mean, rstd);
    } else {
      rows_forward<false, T>(x, w, b, a, r0, r1, y, mean, rstd);
    }
  });
}

template <typename T>
void row_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                       const RowNormArgs& a, T* dx, T* dw, T* db) {
  const int64_t D = a.cols, M = a.rows;
  const int64_t nchunks = (M + kRowChunk - 1) / kRowChunk;
  // Per chunk of kRowChunk rows: partial dw then db (2 D values of T), written by exactly one
  // thread, merged in chunk order below. 64 rows x 1024 floats keeps the partials in L1.
  const int64_t stride = 2 * (D + kPad);
  const bool want = dw || db;
  const bool stream = dx && M * D * int64_t(sizeof(T)) >= kStreamMinBytes;
  std::vector<T> part(want ? size_t(nchunks * stride) : 0, T(0));
  parallel_for(nchunks, kRowChunk * D, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      // dw and db are both accumulated when either is wanted (the other is nearly free)
      T* pw = want ? part.data() + ch * stride : nullptr;
      T* pb = want ? part.data() + ch * stride + D + kPad : nullptr;
      const int64_t r0 = ch * kRowChunk, r1 = std::min(M, (ch + 1) * kRowChunk);
      if (stream) {
        rows_backward_dispatch<true>(x, dy, w, mean, rstd, a, r0, r1, dx, pw, pb, want);
      } else {
        rows_backward_dispatch<false>(x, dy, w, mean, rstd, a, r0, r1, dx, pw, pb, want);
      }
    }
  });
  if (!want) return;
  // dw, the pad and db merged as one vector: one parallel region, not two (each region end is
  // a barrier, and a barrier is what costs most when the cores are shared with other work)
  std::vector<T> merged(static_cast<size_t>(D + kPad + D));
  merge_partials(part.data(), nchunks, stride, D + kPad + D, merged.data());
  if (dw) std::copy(merged.begin(), merged.begin() + D, dw);
  if (db) std::copy(merged.begin() + D + kPad, merged.begin() + D + kPad + D, db);
}

// ------------------------------------------------------------------ BatchNorm

template <typename T>
void batch_norm_forward(const T* x, const T* w, const T* b, T* running_mean, T* running_var,
                        const BatchNormArgs& a, T* y, T* save_mean, T* save_rstd) {
  const int64_t C = a.c;
  const int64_t m = a.n * a.l;
  if (a.training) {
    // shift per channel: its first value (x[0, c, 0])
    std::vector<T> k(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) k[size_t(c)] = x[c * a.l];
    std::vector<double> s1(static_cast<size_t>(C)), s2(static_cast<size_t>(C));
    channel_sums<false>(x, static_cast<const T*>(nullptr), k.data(), a, s1.data(), s2.data());
    for (int64_t c = 0; c < C; ++c) {
      const double d = s1[size_t(c)] / double(m);
      const double mean = double(k[size_t(c)]) + d;
      const double var = std::max(s2[size_t(c)] / double(m) - d * d, 0.0);
      save_mean[c] = T(mean);
      save_rstd[c] = T(1.0 / std::sqrt(var + a.eps));
      if (a.update_running) {
        const double f = a.factor;
        const double unbiased = m > 1 ? var * double(m) / double(m - 1) : var;
        running_mean[c] = T((1.0 - f) * double(running_mean[c]) + f * mean);
        running_var[c] = T((1.0 - f) * double(running_var[c]) + f * unbiased);
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      save_mean[c] = running_mean[c];
      save_rstd[c] = T(1.0 / std::sqrt(double(running_var[c]) + a.eps));
    }
  }
  std::vector<T> s(static_cast<size_t>(C)), t(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    s[size_t(c)] = w ? save_rstd[c] * w[c] : save_rstd[c];
    t[size_t(c)] = b ? b[c] : T(0);
  }
  bn_apply<T>(x, save_mean, s.data(), t.data(), nullptr, nullptr, a, y);
}

template <typename T>
void batch_norm_backward(const T* x, const T* dy, const T* w, const T* save_mean,
                         const T* save_rstd, const BatchNormArgs& a, T* dx, T* dw, T* db) {
  const int64_t C = a.c;
  const double m = double(a.n * a.l);
  std::vector<double> sdy(static_cast<size_t>(C), 0.0), sdyx(static_cast<size_t>(C), 0.0);
  if (a.training || dw || db) {
    channel_sums<true>(x, dy, save_mean, a, sdy.data(), sdyx.data());
  }
  for (int64_t c = 0; c < C; ++c) {
    if (dw) dw[c] = T(double(save_rstd[c]) * sdyx[size_t(c)]);
    if (db) db[c] = T(sdy[size_t(c)]);
  }
  if (!dx) return;
  const size_t nc = static_cast<size_t>(C);
  std::vector<T> s(nc), t(nc), u(nc), zero(nc, T(0));
  for (int64_t c = 0; c < C; ++c) {
    const double r = save_rstd[c];
    const double rw = w ? r * double(w[c]) : r;
    s[size_t(c)] = T(rw);
    t[size_t(c)] = a.training ? T(-rw * sdy[size_t(c)] / m) : T(0);
    u[size_t(c)] = a.training ? T(-rw * r * r * sdyx[size_t(c)] / m) : T(0);
  }
  if (a.training) {
    // dx = s dy + t + u (x - mean)
    bn_apply<T>(dy, save_mean, s.data(), t.data(), x, u.data(), a, dx);
  } else {
    bn_apply<T>(dy, zero.data(), s.data(), t.data(), nullptr, nullptr, a, dx);
  }
}

// ------------------------------------------------------------------ SyncBatchNorm pieces

template <typename T>
void batch_norm_stats(const T* x, const BatchNormArgs& a, double* mean, double* m2) {
  const int64_t C = a.c;
  const double m = double(a.n * a.l);
  if (a.n * a.l == 0) {  // an empty shard: count 0 contributes nothing to the merge
    for (int64_t c = 0; c < C; ++c) mean[c] = m2[c] = 0.0;
    return;
  }
  std::vector<T> k(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) k[size_t(c)] = x[c * a.l];
  channel_sums<false>(x, static_cast<const T*>(nullptr), k.data(), a, mean, m2);
  for (int64_t c = 0; c < C; ++c) {
    const double s1 = mean[c], s2 = m2[c];
    mean[c] = double(k[size_t(c)]) + s1 / m;
    m2[c] = std::max(s2 - s1 * s1 / m, 0.0);  // sum (x - mean)^2 from the shifted sums
  }
}

template <typename T>
void batch_norm_grad_sums(const T* x, const T* dy, const T* mean, const BatchNormArgs& a,
                          double* sdy, double* sdyx) {
  if (a.n * a.l == 0) {
    for (int64_t c = 0; c < a.c; ++c) sdy[c] = sdyx[c] = 0.0;
    return;
  }
  channel_sums<true>(x, dy, mean, a, sdy, sdyx);
}

template <typename T>
void batch_norm_grad_input(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                           const double* sdy, const double* sdyx, double count,
                           const BatchNormArgs& a, T* dx) {
  if (a.n * a.l == 0) return;
  const size_t nc = static_cast<size_t>(a.c);
  std::vector<T> s(nc), t(nc), u(nc);
  for (int64_t c = 0; c < a.c; ++c) {
    const double r = rstd[c];
    const double rw = w ? r * double(w[c]) : r;
    s[size_t(c)] = T(rw);
    t[size_t(c)] = T(-rw * sdy[c] / count);
    u[size_t(c)] = T(-rw * r * r * sdyx[c] / count);
  }
  bn_apply<T>(dy, mean, s.data(), t.data(), x, u.data(), a, dx);  // s dy + t + u (x - mean)
}

// ------------------------------------------------------------------ GroupNorm

template <typename T>
void group_norm_forward(const T* x, const T* w, const T* b, const GroupNormArgs& a, T* y, T* mean,
                        T* rstd) {
  const int64_t cg = a.c / a.groups;
  const int64_t K = cg * a.s;  // a (sample, group) block is contiguous
  parallel_for(a.n * a.groups, K, [&](int64_t r0, int64_t r1) {
    gn_forward_rows<T>(x, w, b, a, r0, r1, y, mean, rstd);
  });
}

template <typename T>
void group_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                         const GroupNormArgs& a, T* dx, T* dw, T* db) {
  const int64_t cg = a.c / a.groups;
  const int64_t K = cg * a.s;
  // Per (sample, channel) sums of dy and dy (x - mean), each written by one work item; dw/db
  // are then summed over samples in order.
  std::vector<double> pdy(static_cast<size_t>(a.n * a.c)), pdyx(static_cast<size_t>(a.n * a.c));
  parallel_for(a.n * a.groups, K, [&](int64_t r0, int64_t r1) {
    gn_backward_rows<T>(x, dy, w, mean, rstd, a, r0, r1, dx, pdy.data(), pdyx.data());
  });
  if (!dw && !db) return;
  for (int64_t c = 0; c < a.c; ++c) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < a.n; ++n) {
      sw += double(rstd[n * a.groups + c / cg]) * pdyx[size_t(n * a.c + c)];
      sb += pdy[size_t(n * a.c + c)];
    }
    if (dw) dw[c] = T(sw);
    if (db) db[c] = T(sb);
  }
}

#define GF_INSTANTIATE(T)                                                                         \
  template void row_norm_forward<T>(const T*, const T*, const T*, const RowNormArgs&, T*, T*, T*); \
  template void row_norm_backward<T>(const T*, const T*, const T*, const T*, const T*,             \
                                     const RowNormArgs&, T*, T*, T*);                              \
  template void batch_norm_forward<T>(const T*, const T*, const T*, T*, T*, const BatchNormArgs&,  \
                                      T*, T*, T*);                                                 \
  template void batch_norm_backward<T>(const T*, const T*, const T*, const T*, const T*,           \
                                       const BatchNormArgs&, T*, T*, T*);                          \
  template void batch_norm_stats<T>(const T*, const BatchNormArgs&, double*, double*);              \
  template void batch_norm_grad_sums<T>(const T*, const T*, const T*, const BatchNormArgs&,        \
                                        double*, double*);                                         \
  template void batch_norm_grad_input<T>(const T*, const T*, const T*, const T*, const T*,         \
                                         const double*, const double*, double,                     \
                                         const BatchNormArgs&, T*);                                \
  template void group_norm_forward<T>(const T*, const T*, const T*, const GroupNormArgs&, T*, T*,  \
                                      T*);                                                         \
  template void group_norm_backward<T>(const T*, const T*, const T*, const T*, const T*,           \
                                       const GroupNormArgs&, T*, T*, T*);
GF_INSTANTIATE(float)
GF_INSTANTIATE(double)
#undef GF_INSTANTIATE

}  // namespace gradfuse
