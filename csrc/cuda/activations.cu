// Element-wise activations and softmax / log-softmax on the GPU (CPU: csrc/kernels/activations.cpp).
//
// An activation is one read and one write per element (two reads for a backward): 16-byte
// vector loads and stores over a grid-stride loop when every pointer is 16-byte aligned, a
// scalar loop for the rest. float32 uses the CPU's own polynomial exp/tanh/erf (activations.cpp)
// so both devices agree to an ulp or two; float64 uses CUDA's libm.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace gf::cuda {
namespace {

using namespace dev;
using gradfuse::Activation;

__device__ __forceinline__ float expm1_t(float x) {
  const float p =
      x * (1.0f +
           x * (0.5f +
                x * (1.6666667e-1f +
                     x * (4.1666668e-2f +
                          x * (8.3333338e-3f +
                               x * (1.3888889e-3f + x * (1.9841270e-4f + x * 2.4801587e-5f)))))));
  const float e = exp_f32(x) - 1.0f;
  return fabsf(x) < 0.5f ? p : e;
}
__device__ __forceinline__ double expm1_t(double x) { return expm1(x); }

__device__ __forceinline__ float log1p_unit_t(float t) {
  float p = -3.25641138421558e-03f;
  p = fmaf(p, t, 1.9907361193140374e-02f);
  p = fmaf(p, t, -5.706468917249068e-02f);
  p = fmaf(p, t, 1.061432771856425e-01f);
  p = fmaf(p, t, -1.531191032022159e-01f);
  p = fmaf(p, t, 1.9678138260688416e-01f);
  p = fmaf(p, t, -2.4954564284642933e-01f);
  p = fmaf(p, t, 3.333000478271785e-01f);
  p = fmaf(p, t, -4.9999904039258003e-01f);
  p = fmaf(p, t, 9.999999953932726e-01f);
  return t * p;
}
__device__ __forceinline__ double log1p_unit_t(double t) { return log1p(t); }

template <typename T>
__device__ __forceinline__ T sigmoid_t(T x) {
  const T e = exp_t(-fabs(x));
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

__device__ __forceinline__ float tanh_t(float x) {
  const float ax = fabsf(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = fmaf(p, z, 2.06390887954e-2f);
  p = fmaf(p, z, -5.37397155531e-2f);
  p = fmaf(p, z, 1.33314422036e-1f);
  p = fmaf(p, z, -3.33332819422e-1f);
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
  const float sbig = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : sbig;
}
__device__ __forceinline__ double tanh_t(double x) { return tanh(x); }

__device__ __forceinline__ float erf_t(float x) {
  const float ax = fabsf(x);
  const float z = x * x;
  float p = -5.654111894666087e-4f;
  p = fmaf(p, z, 4.92328409480979e-3f);
  p = fmaf(p, z, -2.6716396296219184e-2f);
  p = fmaf(p, z, 1.1280365106701278e-1f);
  p = fmaf(p, z, -3.7612349946569185e-1f);
  p = fmaf(p, z, 1.1283791274923942f);
  const float small = x * p;
  const float u = (ax < 4.0f ? ax : 4.0f) - 2.5f;
  float r = 1.671832676414621e-06f;
  r = fmaf(r, u, -6.3862097450017026e-06f);
  r = fmaf(r, u, 1.4353506185245601e-05f);
  r = fmaf(r, u, -5.358525087493841e-05f);
  r = fmaf(r, u, 2.1297235389787159e-04f);
  r = fmaf(r, u, -7.389983919414924e-04f);
  r = fmaf(r, u, 2.4659821652460276e-03f);
  r = fmaf(r, u, -7.999345153810672e-03f);
  r = fmaf(r, u, 2.4938203784893677e-02f);
  r = fmaf(r, u, -7.434760098919367e-02f);
  r = fmaf(r, u, 2.1080635752659926e-01f);
  const float big = 1.0f - exp_f32(-z) * r;
  const float sbig = x < 0.0f ? -big : big;
  return ax < 1.0f ? small : sbig;
}
__device__ __forceinline__ double erf_t(double x) { return erf(x); }

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kGeluBeta = 0.79788456080286535588;
constexpr double kGeluKappa = 0.044715;

// The float32 polynomials above are Horner steps written as explicit fmaf: the build compiles
// every .cu with -fmad=false (init.cu and optim.cu need it for bitwise CPU parity), which would
// otherwise split each step into a multiply and an add (gelu ran at 0.9x PyTorch that way).
// The CPU's AVX2 / AVX-512 clones contract the same steps into FMAs.

// ---- the ops as functors: forward f(x), backward f(g, saved)
template <typename T> struct FSigmoid { __device__ T operator()(T v) const { return sigmoid_t(v); } };
template <typename T> struct FTanh { __device__ T operator()(T v) const { return tanh_t(v); } };
template <typename T> struct FRelu { __device__ T operator()(T v) const { return v <= T(0) ? T(0) : v; } };
template <typename T> struct FLeaky {
  T slope;
  __device__ T operator()(T v) const { return v > T(0) ? v : v * slope; }
};
template <typename T> struct FElu {
  T alpha;
  __device__ T operator()(T v) const { return v > T(0) ? v : alpha * expm1_t(v); }
};
template <typename T> struct FGeluErf {
  __device__ T operator()(T v) const { return T(0.5) * v * (T(1) + erf_t(v * T(kSqrt1_2))); }
};
template <typename T> struct FGeluTanh {
  __device__ T operator()(T v) const {
    const T inner = T(kGeluBeta) * (v + T(kGeluKappa) * v * v * v);
    return T(0.5) * v * (T(1) + tanh_t(inner));
  }
};
template <typename T> struct FSilu { __device__ T operator()(T v) const { return v * sigmoid_t(v); } };
template <typename T> struct FSoftplus {
  T beta, inv_beta, threshold;
  __device__ T operator()(T v) const {
    const T z = v * beta;
    const T sp = (z > T(0) ? z : T(0)) + log1p_unit_t(exp_t(-fabs(z)));
    return z > threshold ? v : sp * inv_beta;
  }
};

template <typename T> struct BSigmoid { __device__ T operator()(T g, T y) const { return g * (T(1) - y) * y; } };
template <typename T> struct BTanh { __device__ T operator()(T g, T y) const { return g * (T(1) - y * y); } };
template <typename T> struct BRelu { __device__ T operator()(T g, T y) const { return y <= T(0) ? T(0) : g; } };
template <typename T> struct BLeaky {
  T slope;
  __device__ T operator()(T g, T s) const { return s > T(0) ? g : g * slope; }
};
template <typename T> struct BEluY {
  T alpha;
  __device__ T operator()(T g, T y) const { return y <= T(0) ? g * (y + alpha) : g; }
};
template <typename T> struct BEluX {
  T alpha;
  __device__ T operator()(T g, T x) const { return x <= T(0) ? g * alpha * exp_t(x) : g; }
};
template <typename T> struct BGeluErf {
  __device__ T operator()(T g, T x) const {
    const T cdf = T(0.5) * (T(1) + erf_t(x * T(kSqrt1_2)));
    const T pdf = exp_t(T(-0.5) * x * x) * T(kInvSqrt2Pi);
    return g * (cdf + x * pdf);
  }
};
template <typename T> struct BGeluTanh {
  __device__ T operator()(T g, T x) const {
    const T xc = x > T(20) ? T(20) : (x < T(-20) ? T(-20) : x);
    const T x2 = xc * xc;
    const T t = tanh_t(T(kGeluBeta) * (xc + T(kGeluKappa) * x2 * xc));
    const T left = T(0.5) * (T(1) + t);
    const T right = T(0.5) * xc * (T(1) - t * t) * T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * x2);
    return g * (left + right);
  }
};
template <typename T> struct BSilu {
  __device__ T operator()(T g, T x) const {
    const T s = sigmoid_t(x);
    return g * s * (T(1) + x * (T(1) - s));
  }
};
template <typename T> struct BSoftplus {
  T beta, threshold;
  __device__ T operator()(T g, T x) const {
    const T z = x * beta;
    return z > threshold ? g : g * sigmoid_t(z);
  }
};

// ---- element-wise loops. VEC: every pointer 16-byte aligned; each thread of a block handles
// kUnroll 16-byte vectors kThreads apart (coalesced), all loads issued before the first use so
// several are in flight per thread (a single load per iteration left the H100 at ~88% of its
// copy bandwidth); the last n % V elements go through a scalar loop.
constexpr int kUnroll = 4;

template <typename T, bool VEC, typename F>
__global__ void map1_kernel(const T* x, int64_t n, T* y, F f) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (VEC) {
    using V = Vec<T>;
    using VT = typename V::type;
    const int64_t nv = n / V::n;
    const auto* xv = reinterpret_cast<const VT*>(x);
    auto* yv = reinterpret_cast<VT*>(y);
    const int64_t chunk = int64_t(blockDim.x) * kUnroll;
    for (int64_t base = int64_t(blockIdx.x) * chunk + threadIdx.x; base < nv;
         base += int64_t(gridDim.x) * chunk) {
      VT r[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t i = base + int64_t(k) * blockDim.x;
        if (i < nv) r[k] = xv[i];
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t i = base + int64_t(k) * blockDim.x;
        if (i < nv) {
          T a[V::n];
          vget(r[k], a);
#pragma unroll
          for (int e = 0; e < V::n; ++e) a[e] = f(a[e]);
          yv[i] = vmake(a);
        }
      }
    }
    done = nv * V::n;
  }
  for (int64_t i = done + tid; i < n; i += stride) y[i] = f(x[i]);
}

template <typename T, bool VEC, typename F>
__global__ void map2_kernel(const T* g, const T* s, int64_t n, T* dx, F f) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (VEC) {
    using V = Vec<T>;
    using VT = typename V::type;
    const int64_t nv = n / V::n;
    const auto* gv = reinterpret_cast<const VT*>(g);
    const auto* sv = reinterpret_cast<const VT*>(s);
    auto* dv = reinterpret_cast<VT*>(dx);
    const int64_t chunk = int64_t(blockDim.x) * kUnroll;
    for (int64_t base = int64_t(blockIdx.x) * chunk + threadIdx.x; base < nv;
         base += int64_t(gridDim.x) * chunk) {
      VT rg[kUnroll], rs[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t i = base + int64_t(k) * blockDim.x;
        if (i < nv) {
          rg[k] = gv[i];
          rs[k] = sv[i];
        }
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t i = base + int64_t(k) * blockDim.x;
        if (i < nv) {
          T a[V::n], b[V::n];
          vget(rg[k], a);
          vget(rs[k], b);
#pragma unroll
          for (int e = 0; e < V::n; ++e) a[e] = f(a[e], b[e]);
          dv[i] = vmake(a);
        }
      }
    }
    done = nv * V::n;
  }
  for (int64_t i = done + tid; i < n; i += stride) dx[i] = f(g[i], s[i]);
}

// One block per kUnroll * kThreads vectors (no grid-stride cap: the whole array in flight),
// at least enough blocks for the scalar tail.
template <typename T>
unsigned map_grid(int64_t n) {
  const int64_t per_block = int64_t(kThreads) * kUnroll * Vec<T>::n;
  const int64_t b = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(b < (int64_t(1) << 30) ? (b > 0 ? b : 1) : (int64_t(1) << 30));
}

// x == y (in place) is fine: each element is read before it is written by the same thread
// (no __restrict__ on these pointers for that reason).
template <typename T, typename F>
void launch1(const T* x, int64_t n, T* y, F f) {
  if (n <= 0) return;
  if (aligned16(x) && aligned16(y)) {
    map1_kernel<T, true><<<map_grid<T>(n), kThreads, 0, stream()>>>(x, n, y, f);
  } else {
    map1_kernel<T, false><<<grid_for(static_cast<size_t>(n), kThreads), kThreads, 0, stream()>>>(
        x, n, y, f);
  }
  GF_CUDA_CHECK_LAUNCH("activation_forward");
}

template <typename T, typename F>
void launch2(const T* g, const T* s, int64_t n, T* dx, F f) {
  if (n <= 0) return;
  if (aligned16(g) && aligned16(s) && aligned16(dx)) {
    map2_kernel<T, true><<<map_grid<T>(n), kThreads, 0, stream()>>>(g, s, n, dx, f);
  } else {
    map2_kernel<T, false><<<grid_for(static_cast<size_t>(n), kThreads), kThreads, 0, stream()>>>(
        g, s, n, dx, f);
  }
  GF_CUDA_CHECK_LAUNCH("activation_backward");
}

// ---- softmax. Last-dim rows (inner == 1): a warp per row up to 1024 columns (8 rows per
// block), else a block per row; three passes (max, exp-sum, write) over a row that stays in
// L1/L2 after the first. inner > 1: one thread per (outer, inner) column, the d loop strided
// by inner (coalesced across the warp).
template <typename T, int G>
__global__ void softmax_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t d, bool log,
                                    T* __restrict__ y) {
  __shared__ T sh[32];
  using Gr = Group<G>;
  const int64_t per_block = G ? blockDim.x / 32 : 1;
  const int64_t r = int64_t(blockIdx.x) * per_block + (G ? threadIdx.x / 32 : 0);
  if (r >= rows) return;  // whole warps only (G = 32), never a block (G = 0: one row a block)
  const T* xr = x + r * d;
  T* yr = y + r * d;
  const int lane = Gr::rank(), gs = Gr::size();
  T m = xr[0];
  for (int64_t j = lane; j < d; j += gs) m = xr[j] > m ? xr[j] : m;
  m = Gr::max(m, sh);
  T s = 0;
  for (int64_t j = lane; j < d; j += gs) s += exp_t(xr[j] - m);
  s = Gr::sum(s, sh);
  if (log) {
    const T ls = log_t(s);
    for (int64_t j = lane; j < d; j += gs) yr[j] = (xr[j] - m) - ls;
  } else {
    const T inv = T(1) / s;
    for (int64_t j = lane; j < d; j += gs) yr[j] = exp_t(xr[j] - m) * inv;
  }
}

template <typename T, int G>
__global__ void softmax_bwd_rows_kernel(const T* __restrict__ g, const T* __restrict__ y,
                                        int64_t rows, int64_t d, bool log, T* __restrict__ dx) {
  __shared__ T sh[32];
  using Gr = Group<G>;
  const int64_t per_block = G ? blockDim.x / 32 : 1;
  const int64_t r = int64_t(blockIdx.x) * per_block + (G ? threadIdx.x / 32 : 0);
  if (r >= rows) return;
  const T* gr = g + r * d;
  const T* yr = y + r * d;
  T* dr = dx + r * d;
  const int lane = Gr::rank(), gs = Gr::size();
  T s = 0;
  for (int64_t j = lane; j < d; j += gs) s += log ? gr[j] : gr[j] * yr[j];
  s = Gr::sum(s, sh);
  if (log) {
    for (int64_t j = lane; j < d; j += gs) dr[j] = gr[j] - exp_t(yr[j]) * s;
  } else {
    for (int64_t j = lane; j < d; j += gs) dr[j] = yr[j] * (gr[j] - s);
  }
}

template <typename T>
__global__ void softmax_cols_kernel(const T* __restrict__ x, int64_t outer, int64_t d,
                                    int64_t inner, bool log, T* __restrict__ y) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= outer * inner) return;
  const int64_t o = c / inner, k = c % inner;
  const T* xc = x + o * d * inner + k;
  T* yc = y + o * d * inner + k;
  T m = xc[0];
  for (int64_t r = 1; r < d; ++r) m = xc[r * inner] > m ? xc[r * inner] : m;
  T s = 0;
  for (int64_t r = 0; r < d; ++r) s += exp_t(xc[r * inner] - m);
  if (log) {
    const T ls = log_t(s);
    for (int64_t r = 0; r < d; ++r) yc[r * inner] = (xc[r * inner] - m) - ls;
  } else {
    const T inv = T(1) / s;
    for (int64_t r = 0; r < d; ++r) yc[r * inner] = exp_t(xc[r * inner] - m) * inv;
  }
}

template <typename T>
__global__ void softmax_bwd_cols_kernel(const T* __restrict__ g, const T* __restrict__ y,
                                        int64_t outer, int64_t d, int64_t inner, bool log,
                                        T* __restrict__ dx) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= outer * inner) return;
  const int64_t base = (c / inner) * d * inner + c % inner;
  T s = 0;
  for (int64_t r = 0; r < d; ++r) {
    const int64_t i = base + r * inner;
    s += log ? g[i] : g[i] * y[i];
  }
  for (int64_t r = 0; r < d; ++r) {
    const int64_t i = base + r * inner;
    dx[i] = log ? g[i] - exp_t(y[i]) * s : y[i] * (g[i] - s);
  }
}

}  // namespace

template <typename T>
void activation_forward(const T* x, int64_t n, const ActivationArgs& a, T* y) {
  switch (a.op) {
    case Activation::Sigmoid: launch1(x, n, y, FSigmoid<T>{}); break;
    case Activation::Tanh: launch1(x, n, y, FTanh<T>{}); break;
    case Activation::Relu: launch1(x, n, y, FRelu<T>{}); break;
    case Activation::LeakyRelu: launch1(x, n, y, FLeaky<T>{T(a.a)}); break;
    case Activation::Elu: launch1(x, n, y, FElu<T>{T(a.a)}); break;
    case Activation::GeluErf: launch1(x, n, y, FGeluErf<T>{}); break;
    case Activation::GeluTanh: launch1(x, n, y, FGeluTanh<T>{}); break;
    case Activation::Silu: launch1(x, n, y, FSilu<T>{}); break;
    case Activation::Softplus:
      launch1(x, n, y, FSoftplus<T>{T(a.a), T(1.0 / a.a), T(a.b)});
      break;
  }
}

template <typename T>
void activation_backward(const T* g, const T* saved, int64_t n, const ActivationArgs& a, T* dx) {
  switch (a.op) {
    case Activation::Sigmoid: launch2(g, saved, n, dx, BSigmoid<T>{}); break;
    case Activation::Tanh: launch2(g, saved, n, dx, BTanh<T>{}); break;
    case Activation::Relu: launch2(g, saved, n, dx, BRelu<T>{}); break;
    case Activation::LeakyRelu: launch2(g, saved, n, dx, BLeaky<T>{T(a.a)}); break;
    case Activation::Elu:
      if (gradfuse::activation_backward_uses_output(a)) {
        launch2(g, saved, n, dx, BEluY<T>{T(a.a)});
      } else {
        launch2(g, saved, n, dx, BEluX<T>{T(a.a)});
      }
      break;
    case Activation::GeluErf: launch2(g, saved, n, dx, BGeluErf<T>{}); break;
    case Activation::GeluTanh: launch2(g, saved, n, dx, BGeluTanh<T>{}); break;
    case Activation::Silu: launch2(g, saved, n, dx, BSilu<T>{}); break;
    case Activation::Softplus: launch2(g, saved, n, dx, BSoftplus<T>{T(a.a), T(a.b)}); break;
  }
}

template <typename T>
void softmax_forward(const T* x, int64_t outer, int64_t dim, int64_t inner, bool log, T* y) {
  if (outer == 0 || dim == 0 || inner == 0) return;
  if (inner == 1) {
    if (dim <= 1024) {
      const unsigned grid = static_cast<unsigned>((outer + 7) / 8);
      softmax_rows_kernel<T, 32><<<grid, kThreads, 0, stream()>>>(x, outer, dim, log, y);
    } else {
      softmax_rows_kernel<T, 0><<<static_cast<unsigned>(outer), 512, 0, stream()>>>(x, outer, dim,
                                                                                    log, y);
    }
  } else {
    const unsigned grid = static_cast<unsigned>((outer * inner + kThreads - 1) / kThreads);
    softmax_cols_kernel<T><<<grid, kThreads, 0, stream()>>>(x, outer, dim, inner, log, y);
  }
  GF_CUDA_CHECK_LAUNCH("softmax_forward");
}

template <typename T>
void softmax_backward(const T* g, const T* y, int64_t outer, int64_t dim, int64_t inner, bool log,
                      T* dx) {
  if (outer == 0 || dim == 0 || inner == 0) return;
  if (inner == 1) {
    if (dim <= 1024) {
      const unsigned grid = static_cast<unsigned>((outer + 7) / 8);
      softmax_bwd_rows_kernel<T, 32><<<grid, kThreads, 0, stream()>>>(g, y, outer, dim, log, dx);
    } else {
      softmax_bwd_rows_kernel<T, 0><<<static_cast<unsigned>(outer), 512, 0, stream()>>>(
          g, y, outer, dim, log, dx);
    }
  } else {
    const unsigned grid = static_cast<unsigned>((outer * inner + kThreads - 1) / kThreads);
    softmax_bwd_cols_kernel<T><<<grid, kThreads, 0, stream()>>>(g, y, outer, dim, inner, log, dx);
  }
  GF_CUDA_CHECK_LAUNCH("softmax_backward");
}

#define GF_INST(T)                                                                             \
  template void activation_forward<T>(const T*, int64_t, const ActivationArgs&, T*);           \
  template void activation_backward<T>(const T*, const T*, int64_t, const ActivationArgs&, T*); \
  template void softmax_forward<T>(const T*, int64_t, int64_t, int64_t, bool, T*);             \
  template void softmax_backward<T>(const T*, const T*, int64_t, int64_t, int64_t, bool, T*);
GF_INST(float)
GF_INST(double)
#undef GF_INST

}  // namespace gf::cuda
