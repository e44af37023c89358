#include "kernels/activations.h"

#include <cmath>

#include "common.h"

namespace gradfuse {
namespace {

// ---------------------------------------------------------------- vectorizable math
// float: branch-free polynomial forms (selects, no libm calls), so every loop below vectorizes;
// glibc's vector variants are only declared under -ffast-math, which we do not use.
// double: libm (float64 is the gradcheck / reference dtype; accuracy over speed).

inline float exp_t(float x) { return exp_f32(x); }
inline double exp_t(double x) { return std::exp(x); }

// expm1: Taylor series to x^8/8! for |x| < 0.5 (truncation < 1e-8 relative), else exp(x) - 1,
// where |exp(x) - 1| >= 0.39 keeps the cancellation under 3 ulp.
inline float expm1_t(float x) {
  const float p =
      x * (1.0f +
           x * (0.5f +
                x * (1.6666667e-1f +
                     x * (4.1666668e-2f +
                          x * (8.3333338e-3f +
                               x * (1.3888889e-3f + x * (1.9841270e-4f + x * 2.4801587e-5f)))))));
  const float e = exp_f32(x) - 1.0f;
  return std::fabs(x) < 0.5f ? p : e;
}
inline double expm1_t(double x) { return std::expm1(x); }

// log(1 + t) for t in [0, 1] (the softplus tail, t = exp(-|z|)): t P(t) with P of degree 9
// fitted to log1p(t) / t on [0, 1] (least squares on Chebyshev nodes; max error 2.7 ulp in
// float32 evaluation). No division and no exponent juggling: this was softplus's hot spot
// (Goldberg's log1p trick over a Cephes logf needs a division per element).
inline float log1p_unit_t(float t) {
  float p = -3.25641138421558e-03f;
  p = p * t + 1.9907361193140374e-02f;
  p = p * t - 5.706468917249068e-02f;
  p = p * t + 1.061432771856425e-01f;
  p = p * t - 1.531191032022159e-01f;
  p = p * t + 1.9678138260688416e-01f;
  p = p * t - 2.4954564284642933e-01f;
  p = p * t + 3.333000478271785e-01f;
  p = p * t - 4.9999904039258003e-01f;
  p = p * t + 9.999999953932726e-01f;
  return t * p;
}
inline double log1p_unit_t(double t) { return std::log1p(t); }

// sigmoid without overflow: e = exp(-|x|) is in (0, 1], s = 1 / (1 + e), and for x < 0
// sigmoid(x) = e / (1 + e) = e s. Exact to a few ulp for every finite x, 0 and 1 at -inf/+inf
// (exp_f32 clamps), NaN propagates through exp.
template <typename T>
inline T sigmoid_t(T x) {
  const T e = exp_t(-std::fabs(x));
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

// tanh: Cephes' tanhf, x + x^3 P(x^2) for |x| < 0.625 (where 1 - exp would cancel), else
// sign(x) (1 - 2 / (exp(2|x|) + 1)), which saturates to +-1 once exp overflows to inf.
inline float tanh_t(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
  const float sbig = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : sbig;
}
inline double tanh_t(double x) { return std::tanh(x); }

// erf: |x| < 1: x P(x^2); |x| >= 1: 1 - exp(-x^2) R(|x|) with R(x) = erfc(x) exp(x^2) fitted on
// [1, 4.5] (least squares, degree 5 and 10; max error 2 ulp relative below 1 and 1 ulp absolute
// above). |x| is clamped to 4 inside R only: beyond it exp(-x^2) R < 2e-8 rounds 1 - it to 1.
inline float erf_t(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  float p = -5.654111894666087e-4f;
  p = p * z + 4.92328409480979e-3f;
  p = p * z - 2.6716396296219184e-2f;
  p = p * z + 1.1280365106701278e-1f;
  p = p * z - 3.7612349946569185e-1f;
  p = p * z + 1.1283791274923942f;
  const float small = x * p;
  const float u = (ax < 4.0f ? ax : 4.0f) - 2.5f;
  float r = 1.671832676414621e-06f;
  r = r * u - 6.3862097450017026e-06f;
  r = r * u + 1.4353506185245601e-05f;
  r = r * u - 5.358525087493841e-05f;
  r = r * u + 2.1297235389787159e-04f;
  r = r * u - 7.389983919414924e-04f;
  r = r * u + 2.4659821652460276e-03f;
  r = r * u - 7.999345153810672e-03f;
  r = r * u + 2.4938203784893677e-02f;
  r = r * u - 7.434760098919367e-02f;
  r = r * u + 2.1080635752659926e-01f;
  const float big = 1.0f - exp_f32(-z) * r;
  const float sbig = x < 0.0f ? -big : big;
  return ax < 1.0f ? small : sbig;
}
inline double erf_t(double x) { return std::erf(x); }

constexpr double kSqrt1_2 = 0.70710678118654752440;  // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kGeluBeta = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

// ---------------------------------------------------------------- element-wise loops
// One template per arity; each op is a lambda inlined into it. The loops are the whole
// memory traffic of an activation: n reads (two for a backward) and n writes, nothing else.
// y may be x (in place) and dx may be g: element i is read before it is written, and
// `omp simd` (not __restrict) is what licenses the vectorizer.

template <typename T, typename F>
GF_TARGET_CLONES void map1(const T* x, int64_t n, T* y, F f) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

template <typename T, typename F>
GF_TARGET_CLONES void map2(const T* g, const T* s, int64_t n, T* dx, F f) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = f(g[i], s[i]);
}

// Threads split the array at multiples of kBlock elements. The vectorized loop and its
// epilogue may round differently (GCC contracts a*b+c into FMAs separately in each), so an
// element must land in the same part of the loop whatever the thread count: with every chunk
// starting at a multiple of kBlock (a multiple of any vector width and unroll), only the
// array's own last elements reach an epilogue. The grain keeps a 128x128 activation (16K
// elements) on one thread, where waking a second costs more than it saves.
constexpr int64_t kBlock = 1024;

template <typename Fn>
void par_blocks(int64_t n, Fn&& fn) {
  parallel_for((n + kBlock - 1) / kBlock, kBlock, [&](int64_t b, int64_t e) {
    const int64_t lo = b * kBlock, hi = e * kBlock < n ? e * kBlock : n;
    fn(lo, hi);
  });
}

template <typename T, typename F>
void par_map1(const T* x, int64_t n, T* y, F f) {
  par_blocks(n, [&](int64_t b, int64_t e) { map1(x + b, e - b, y + b, f); });
}

template <typename T, typename F>
void par_map2(const T* g, const T* s, int64_t n, T* dx, F f) {
  par_blocks(n, [&](int64_t b, int64_t e) { map2(g + b, s + b, e - b, dx + b, f); });
}

}  // namespace

bool activation_backward_uses_output(const ActivationArgs& a) {
  switch (a.op) {
    case Activation::Sigmoid:
    case Activation::Tanh:
    case Activation::Relu:
      return true;
    case Activation::Elu:
      // for x <= 0, y = alpha (e^x - 1) and dy/dx = alpha e^x = y + alpha; y <= 0 <=> x <= 0
      // only when alpha >= 0
      return a.a >= 0.0;
    default:
      return false;
  }
}

template <typename T>
void activation_forward(const T* x, int64_t n, const ActivationArgs& a, T* y) {
  switch (a.op) {
    case Activation::Sigmoid:
      par_map1(x, n, y, [](T v) { return sigmoid_t(v); });
      break;
    case Activation::Tanh:
      par_map1(x, n, y, [](T v) { return tanh_t(v); });
      break;
    case Activation::Relu:
      // NaN > 0 is false but NaN <= 0 is false too: NaN stays NaN, as in PyTorch
      par_map1(x, n, y, [](T v) { return v <= T(0) ? T(0) : v; });
      break;
    case Activation::LeakyRelu: {
      const T slope = T(a.a);
      par_map1(x, n, y, [slope](T v) { return v > T(0) ? v : v * slope; });
      break;
    }
    case Activation::Elu: {
      const T alpha = T(a.a);
      par_map1(x, n, y, [alpha](T v) { return v > T(0) ? v : alpha * expm1_t(v); });
      break;
    }
    case Activation::GeluErf:
      par_map1(x, n, y, [](T v) { return T(0.5) * v * (T(1) + erf_t(v * T(kSqrt1_2))); });
      break;
    case Activation::GeluTanh:
      par_map1(x, n, y, [](T v) {
        const T inner = T(kGeluBeta) * (v + T(kGeluKappa) * v * v * v);
        return T(0.5) * v * (T(1) + tanh_t(inner));
      });
      break;
    case Activation::Silu:
      par_map1(x, n, y, [](T v) { return v * sigmoid_t(v); });
      break;
    case Activation::Softplus: {
      // log(1 + e^z) = max(z, 0) + log1p(e^-|z|): no overflow for large z, no lost digits
      // for very negative z (where PyTorch's log1p(exp(z)) is exact too)
      const T beta = T(a.a), inv_beta = T(1.0 / a.a), threshold = T(a.b);
      par_map1(x, n, y, [=](T v) {
        const T z = v * beta;
        const T sp = (z > T(0) ? z : T(0)) + log1p_unit_t(exp_t(-std::fabs(z)));
        return z > threshold ? v : sp * inv_beta;
      });
      break;
    }
  }
}

template <typename T>
void activation_backward(const T* g, const T* saved, int64_t n, const ActivationArgs& a, T* dx) {
  switch (a.op) {
    case Activation::Sigmoid:  // saved = y: dy/dx = y (1 - y)
      par_map2(g, saved, n, dx, [](T gv, T y) { return gv * (T(1) - y) * y; });
      break;
    case Activation::Tanh:  // saved = y: dy/dx = 1 - y^2
      par_map2(g, saved, n, dx, [](T gv, T y) { return gv * (T(1) - y * y); });
      break;
    case Activation::Relu:  // saved = y (y > 0 <=> x > 0), PyTorch's threshold_backward
      par_map2(g, saved, n, dx, [](T gv, T y) { return y <= T(0) ? T(0) : gv; });
      break;
    case Activation::LeakyRelu: {  // saved = x, or y when slope >= 0 (same sign)
      const T slope = T(a.a);
      par_map2(g, saved, n, dx, [slope](T gv, T s) { return s > T(0) ? gv : gv * slope; });
      break;
    }
    case Activation::Elu: {
      const T alpha = T(a.a);
      if (activation_backward_uses_output(a)) {
        par_map2(g, saved, n, dx, [alpha](T gv, T y) { return y <= T(0) ? gv * (y + alpha) : gv; });
      } else {
        par_map2(g, saved, n, dx,
                 [alpha](T gv, T x) { return x <= T(0) ? gv * alpha * exp_t(x) : gv; });
      }
      break;
    }
    case Activation::GeluErf:  // d/dx x Phi(x) = Phi(x) + x phi(x)
      par_map2(g, saved, n, dx, [](T gv, T x) {
        const T cdf = T(0.5) * (T(1) + erf_t(x * T(kSqrt1_2)));
        const T pdf = exp_t(T(-0.5) * x * x) * T(kInvSqrt2Pi);
        return gv * (cdf + x * pdf);
      });
      break;
    case Activation::GeluTanh:
      par_map2(g, saved, n, dx, [](T gv, T x) {
        // Past |x| = 20 tanh(inner) is +-1 to the last bit and the sech^2 term is 0; clamping
        // there keeps x^2 and x^3 finite, so 0 * inf cannot make a NaN for huge |x|.
        const T xc = x > T(20) ? T(20) : (x < T(-20) ? T(-20) : x);
        const T x2 = xc * xc;
        const T t = tanh_t(T(kGeluBeta) * (xc + T(kGeluKappa) * x2 * xc));
        const T left = T(0.5) * (T(1) + t);
        const T right = T(0.5) * xc * (T(1) - t * t) * T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * x2);
        return gv * (left + right);
      });
      break;
    case Activation::Silu:  // d/dx x s(x) = s (1 + x (1 - s))
      par_map2(g, saved, n, dx, [](T gv, T x) {
        const T s = sigmoid_t(x);
        return gv * s * (T(1) + x * (T(1) - s));
      });
      break;
    case Activation::Softplus: {  // d/dx = sigmoid(beta x), computed without overflow
      const T beta = T(a.a), threshold = T(a.b);
      par_map2(g, saved, n, dx, [=](T gv, T x) {
        const T z = x * beta;
        return z > threshold ? gv : gv * sigmoid_t(z);
      });
      break;
    }
  }
}

// ---------------------------------------------------------------- softmax / log_softmax

namespace {

// Last-dim rows; a row stays in L1 between its passes (memory sees one read, one write).
// The reductions (max, sum, dot) use GCC vector types with one 64-byte accumulator, then
// add its lanes in order: GCC's `omp simd reduction` kept the accumulator on the stack (a
// store-to-load round trip per vector) and common.h's lane_* helpers were not inlined into
// these clones (out-of-line baseline-ISA calls, 3.5x slower). The transcendental work is in
// plain map loops, which vectorize without any reduction. The order is fixed, so any
// thread count gives the same bits.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

// Unaligned load through memcpy (compiles to one vmovups); by reference, not by value, so the
// baseline clone has no 64-byte vector in its calling convention.
template <typename T>
inline void vload(Vec<T>& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}

// Folds the lanes of a vector as a tree (half onto half): log2(L) dependent steps instead of
// L - 1, which matters once per row of a 128-wide softmax; the order is fixed.
template <typename T, typename Op>
inline T lanes_reduce(const Vec<T>& acc, Op op) {
  constexpr int64_t L = 64 / sizeof(T);
  alignas(64) T v[L];
  std::memcpy(v, &acc, sizeof v);
  for (int64_t w = L / 2; w >= 1; w /= 2) {
    for (int64_t k = 0; k < w; ++k) v[k] = op(v[k], v[k + w]);
  }
  return v[0];
}

template <typename T>
inline T row_max(const T* x, int64_t d) {
  // NaN elements are skipped here; exp(NaN - m) turns the row NaN downstream, as in PyTorch
  constexpr int64_t L = 64 / sizeof(T);
  T m = x[0];
  int64_t j = 0;
  if (d >= L) {
    Vec<T> acc, v;
    vload(acc, x);
    for (j = L; j + L <= d; j += L) {
      vload(v, x + j);
      acc = v > acc ? v : acc;
    }
    m = lanes_reduce<T>(acc, [](T a, T b) { return a > b ? a : b; });
  }
  for (; j < d; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// sum_j a[j] (b == nullptr) or sum_j a[j] b[j]
template <typename T>
inline T row_sum(const T* a, const T* b, int64_t d) {
  constexpr int64_t L = 64 / sizeof(T);
  Vec<T> acc = {}, va, vb;
  int64_t j = 0;
  if (b) {
    for (; j + L <= d; j += L) {
      vload(va, a + j);
      vload(vb, b + j);
      acc += va * vb;
    }
  } else {
    for (; j + L <= d; j += L) {
      vload(va, a + j);
      acc += va;
    }
  }
  T s = lanes_reduce<T>(acc, [](T u, T v) { return u + v; });
  for (; j < d; ++j) s += b ? a[j] * b[j] : a[j];
  return s;
}

// Rows [0, rows) of width d. The row loop lives inside the multiversioned function: entering
// a clone costs a dispatch, a stack realignment and the exp constants' broadcasts, about 30%
// of a 128-wide row when paid per row.
template <typename T>
GF_TARGET_CLONES void softmax_rows(const T* x, int64_t rows, int64_t d, bool log, T* y) {
  for (int64_t i = 0; i < rows; ++i, x += d, y += d) {
    const T m = row_max(x, d);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) y[j] = exp_t(x[j] - m);
    const T s = row_sum<T>(y, nullptr, d);
    if (log) {
      const T ls = std::log(s);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - m) - ls;
    } else {
      const T inv = T(1) / s;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) y[j] *= inv;
    }
  }
}

template <typename T>
GF_TARGET_CLONES void softmax_backward_rows(const T* g, const T* y, int64_t rows, int64_t d,
                                            bool log, T* dx) {
  for (int64_t i = 0; i < rows; ++i, g += d, y += d, dx += d) {
    if (log) {
      const T s = row_sum<T>(g, nullptr, d);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dx[j] = g[j] - exp_t(y[j]) * s;
    } else {
      const T s = row_sum<T>(g, y, d);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dx[j] = y[j] * (g[j] - s);
    }
  }
}

// A column tile of a (dim, inner) slab: rows of the tile are contiguous runs of w <= kTile
// values, `inner` apart. Per column the reduction runs over d in order: thread-count independent.
constexpr int64_t kTile = 64;

template <typename T>
GF_TARGET_CLONES void softmax_tile(const T* x, int64_t d, int64_t inner, int64_t w, bool log,
                                   T* y) {
  alignas(64) T m[kTile], s[kTile];
  for (int64_t k = 0; k < w; ++k) m[k] = x[k];
  for (int64_t r = 1; r < d; ++r) {
    const T* xr = x + r * inner;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) m[k] = xr[k] > m[k] ? xr[k] : m[k];
  }
  for (int64_t k = 0; k < w; ++k) s[k] = 0;
  for (int64_t r = 0; r < d; ++r) {
    const T* xr = x + r * inner;
    T* yr = y + r * inner;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) {
      const T e = exp_t(xr[k] - m[k]);
      if (!log) yr[k] = e;
      s[k] += e;
    }
  }
  if (log) {
    for (int64_t k = 0; k < w; ++k) s[k] = std::log(s[k]);
    for (int64_t r = 0; r < d; ++r) {
      const T* xr = x + r * inner;
      T* yr = y + r * inner;
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) yr[k] = (xr[k] - m[k]) - s[k];
    }
  } else {
    for (int64_t k = 0; k < w; ++k) s[k] = T(1) / s[k];
    for (int64_t r = 0; r < d; ++r) {
      T* yr = y + r * inner;
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) yr[k] *= s[k];
    }
  }
}

template <typename T>
GF_TARGET_CLONES void softmax_backward_tile(const T* g, const T* y, int64_t d, int64_t inner,
                                            int64_t w, bool log, T* dx) {
  alignas(64) T s[kTile];
  for (int64_t k = 0; k < w; ++k) s[k] = 0;
  for (int64_t r = 0; r < d; ++r) {
    const T* gr = g + r * inner;
    const T* yr = y + r * inner;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) s[k] += log ? gr[k] : gr[k] * yr[k];
  }
  for (int64_t r = 0; r < d; ++r) {
    const T* gr = g + r * inner;
    const T* yr = y + r * inner;
    T* dr = dx + r * inner;
    if (log) {
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) dr[k] = gr[k] - exp_t(yr[k]) * s[k];
    } else {
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) dr[k] = yr[k] * (gr[k] - s[k]);
    }
  }
}

}  // namespace

template <typename T>
void softmax_forward(const T* x, int64_t outer, int64_t dim, int64_t inner, bool log, T* y) {
  if (outer == 0 || dim == 0 || inner == 0) return;
  if (inner == 1) {
    parallel_for(outer, dim, [&](int64_t b, int64_t e) {
      softmax_rows<T>(x + b * dim, e - b, dim, log, y + b * dim);
    });
    return;
  }
  const int64_t tiles = (inner + kTile - 1) / kTile;
  parallel_for(outer * tiles, dim * kTile, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t o = it / tiles, c0 = (it % tiles) * kTile;
      const int64_t w = inner - c0 < kTile ? inner - c0 : kTile;
      const int64_t off = o * dim * inner + c0;
      softmax_tile<T>(x + off, dim, inner, w, log, y + off);
    }
  });
}

template <typename T>
void softmax_backward(const T* g, const T* y, int64_t outer, int64_t dim, int64_t inner, bool log,
                      T* dx) {
  if (outer == 0 || dim == 0 || inner == 0) return;
  if (inner == 1) {
    parallel_for(outer, dim, [&](int64_t b, int64_t e) {
      softmax_backward_rows<T>(g + b * dim, y + b * dim, e - b, dim, log, dx + b * dim);
    });
    return;
  }
  const int64_t tiles = (inner + kTile - 1) / kTile;
  parallel_for(outer * tiles, dim * kTile, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t o = it / tiles, c0 = (it % tiles) * kTile;
      const int64_t w = inner - c0 < kTile ? inner - c0 : kTile;
      const int64_t off = o * dim * inner + c0;
      softmax_backward_tile<T>(g + off, y + off, dim, inner, w, log, dx + off);
    }
  });
}

#define GF_INSTANTIATE(T)                                                                     \
  template void activation_forward<T>(const T*, int64_t, const ActivationArgs&, T*);          \
  template void activation_backward<T>(const T*, const T*, int64_t, const ActivationArgs&,    \
                                       T*);                                                  \
  template void softmax_forward<T>(const T*, int64_t, int64_t, int64_t, bool, T*);            \
  template void softmax_backward<T>(const T*, const T*, int64_t, int64_t, int64_t, bool, T*);
GF_INSTANTIATE(float)
GF_INSTANTIATE(double)
#undef GF_INSTANTIATE

}  // namespace gradfuse
