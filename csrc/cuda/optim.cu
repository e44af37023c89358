// Fused optimizer updates over a flat arena on the GPU (CPU: csrc/kernels/optim.cpp).
//
// One launch per arena: a grid-stride loop over 16-byte vectors of every buffer the update
// reads (param, grad and only the state buffers the kind uses), the scalar tail after it.
// The update of each element is the CPU's, operation for operation: every FMA the CPU writes
// as std::fma is fma/fmaf here, and this file MUST be compiled with --fmad=false so that no
// other a * b + c is contracted (the CPU builds optim.cpp with -ffp-contract=off). Division and
// sqrt are IEEE (nvcc's default -prec-div/-prec-sqrt), so the CPU's correctly rounded
// div_const(a, c) is the plain a / c here. CPU and GPU trajectories then agree to the bit
// wherever both round the same operations (tests/test_cuda_kernels.py measures it).
//
// Fused guards: `skip` (a device int) makes the whole launch a no-op when set - the non-finite
// check (arena_nonfinite_flag) runs as a reduction just before, on the same stream, so a
// skipped step costs no host round trip; `dscale` (a device double) multiplies the gradient as
// it is read - a clip_grad_norm_ coefficient that never leaves the device.
#include <cmath>
#include <limits>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace gf::cuda {
namespace {

using namespace dev;
using gradfuse::OptimKind;

__device__ __forceinline__ float fma_t(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
__device__ __forceinline__ T lerp_pt(T a, T b, T w, T wm1, bool small) {
  return small ? fma_t(w, b - a, a) : fma_t(wm1, b - a, b);
}

// Each op: kS = bit mask of the state buffers it reads/writes (1: s0, 2: s1, 4: s2), and
// operator()(p, d, s0, s1, s2) with d = grad * scale (sign of maximize included).
template <typename T, bool kMom, bool kWd, bool kNesterov, bool kFirst>
struct Sgd {
  static constexpr int kS = kMom ? 1 : 0;
  T wd, mom, damp1, nlr;
  __device__ void operator()(T& p, T d, T& buf, T&, T&) const {
    if constexpr (kWd) d = fma_t(p, wd, d);
    if constexpr (!kMom) {
      p = fma_t(d, nlr, p);
    } else {
      const T b = kFirst ? d : fma_t(d, damp1, buf * mom);
      buf = b;
      const T u = kNesterov ? fma_t(b, mom, d) : b;
      p = fma_t(u, nlr, p);
    }
  }
};

template <typename T, bool kCoupled, bool kDecoupled, bool kAms>
struct Adam {
  static constexpr int kS = kAms ? 7 : 3;
  T wd, decay, w1, w1m1, b2, w2, nstep, bc2s, eps;
  bool small;
  __device__ void operator()(T& p, T d, T& m, T& v, T& vmax) const {
    T pi = p;
    if constexpr (kCoupled) d = fma_t(pi, wd, d);
    if constexpr (kDecoupled) pi = pi * decay;
    const T mi = lerp_pt(m, d, w1, w1m1, small);
    T vi = fma_t(w2 * d, d, v * b2);
    m = mi;
    v = vi;
    if constexpr (kAms) {
      vi = vmax > vi ? vmax : vi;
      vmax = vi;
    }
    const T denom = sqrt(vi) / bc2s + eps;
    p = pi + (nstep * mi) / denom;
  }
};

template <typename T, bool kCentered, bool kMomentum, bool kWd>
struct RmsProp {
  static constexpr int kS = 1 | (kMomentum ? 2 : 0) | (kCentered ? 4 : 0);
  T wd, a, wa, wam1, eps, nlr, mom;
  bool small;
  __device__ void operator()(T& p, T d, T& sq, T& buf, T& ga) const {
    if constexpr (kWd) d = fma_t(p, wd, d);
    const T s = fma_t(wa * d, d, sq * a);
    sq = s;
    T avg;
    if constexpr (kCentered) {
      const T gi = lerp_pt(ga, d, wa, wam1, small);
      ga = gi;
      avg = sqrt(fma_t(-gi, gi, s)) + eps;
    } else {
      avg = sqrt(s) + eps;
    }
    if constexpr (kMomentum) {
      const T b = buf * mom + d / avg;
      buf = b;
      p = fma_t(b, nlr, p);
    } else {
      p = p + (nlr * d) / avg;
    }
  }
};

template <typename T, bool kWd>
struct Adagrad {
  static constexpr int kS = 1;
  T wd, nclr, eps;
  __device__ void operator()(T& p, T d, T& sum, T&, T&) const {
    if constexpr (kWd) d = fma_t(p, wd, d);
    const T s = fma_t(d, d, sum);
    sum = s;
    p = p + (nclr * d) / (sqrt(s) + eps);
  }
};

template <typename T, bool kCoupled, bool kDecoupled>
struct NAdam {
  static constexpr int kS = 3;
  T wd, decay, w1, w1m1, b2, w2, bc2, eps, c1, c2;
  bool small;
  __device__ void operator()(T& p, T d, T& m, T& v, T&) const {
    T pi = p;
    if constexpr (kCoupled) d = fma_t(pi, wd, d);
    if constexpr (kDecoupled) pi = pi * decay;
    const T mi = lerp_pt(m, d, w1, w1m1, small);
    const T vi = fma_t(w2 * d, d, v * b2);
    m = mi;
    v = vi;
    const T denom = sqrt(vi / bc2) + eps;
    pi = pi + (c1 * d) / denom;
    p = pi + (c2 * mi) / denom;
  }
};

template <typename T, bool kCoupled, bool kDecoupled, bool kRectify>
struct RAdam {
  static constexpr int kS = 3;
  T wd, decay, w1, w1m1, b2, w2, bc1, rect, bc2s, eps, lr;
  bool small;
  __device__ void operator()(T& p, T d, T& m, T& v, T&) const {
    T pi = p;
    if constexpr (kCoupled) d = fma_t(pi, wd, d);
    if constexpr (kDecoupled) pi = pi * decay;
    const T mi = lerp_pt(m, d, w1, w1m1, small);
    const T vi = fma_t(w2 * d, d, v * b2);
    m = mi;
    v = vi;
    const T mh = mi / bc1;
    if constexpr (kRectify) {
      const T adaptive = (T(1) / (sqrt(vi) + eps)) * bc2s;
      p = pi - ((mh * lr) * adaptive) * rect;
    } else {
      p = pi - mh * lr;
    }
  }
};

template <typename T>
struct Lion {
  static constexpr int kS = 1;
  T decay, lr, b1, w1, b2, w2;
  __device__ void operator()(T& p, T d, T& m, T&, T&) const {
    const T c = b1 * m + w1 * d;
    const T s = c > T(0) ? T(1) : (c < T(0) ? T(-1) : T(0));
    p = p * decay - lr * s;
    m = b2 * m + w2 * d;
  }
};

constexpr int kUnroll = 2;

template <typename T, bool VEC, typename Op>
__global__ void optim_kernel(Op op, T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s0,
                             T* __restrict__ s1, T* __restrict__ s2, int64_t n,
                             const int* __restrict__ skip, const double* __restrict__ dscale,
                             double host_scale, bool maximize) {
  if (skip && *skip) return;
  const T scale = T(dscale ? host_scale * *dscale : host_scale) * (maximize ? T(-1) : T(1));
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  constexpr int S = Op::kS;
  int64_t done = 0;
  if constexpr (VEC) {
    // kUnroll vectors per thread, kThreads apart, every load issued before the first update:
    // several 16-byte loads of each buffer in flight per thread
    using V = Vec<T>;
    using VT = typename V::type;
    constexpr int L = V::n;
    constexpr int U = kUnroll;
    const int64_t nv = n / L;
    const int64_t chunk = int64_t(blockDim.x) * U;
    for (int64_t base = int64_t(blockIdx.x) * chunk + threadIdx.x; base < nv;
         base += int64_t(gridDim.x) * chunk) {
      VT rp[U], rg[U], ra[U], rb[U], rc[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = base + int64_t(u) * blockDim.x;
        if (i < nv) {
          rp[u] = reinterpret_cast<const VT*>(p)[i];
          rg[u] = reinterpret_cast<const VT*>(g)[i];
          if constexpr (S & 1) ra[u] = reinterpret_cast<const VT*>(s0)[i];
          if constexpr (S & 2) rb[u] = reinterpret_cast<const VT*>(s1)[i];
          if constexpr (S & 4) rc[u] = reinterpret_cast<const VT*>(s2)[i];
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = base + int64_t(u) * blockDim.x;
        if (i >= nv) continue;
        T pv[L], gv[L], a[L] = {}, b[L] = {}, c[L] = {};
        vget(rp[u], pv);
        vget(rg[u], gv);
        if constexpr (S & 1) vget(ra[u], a);
        if constexpr (S & 2) vget(rb[u], b);
        if constexpr (S & 4) vget(rc[u], c);
#pragma unroll
        for (int k = 0; k < L; ++k) op(pv[k], gv[k] * scale, a[k], b[k], c[k]);
        reinterpret_cast<VT*>(p)[i] = vmake(pv);
        if constexpr (S & 1) reinterpret_cast<VT*>(s0)[i] = vmake(a);
        if constexpr (S & 2) reinterpret_cast<VT*>(s1)[i] = vmake(b);
        if constexpr (S & 4) reinterpret_cast<VT*>(s2)[i] = vmake(c);
      }
    }
    done = nv * L;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    T pv = p[i], a = 0, b = 0, c = 0;
    if constexpr (S & 1) a = s0[i];
    if constexpr (S & 2) b = s1[i];
    if constexpr (S & 4) c = s2[i];
    op(pv, g[i] * scale, a, b, c);
    p[i] = pv;
    if constexpr (S & 1) s0[i] = a;
    if constexpr (S & 2) s1[i] = b;
    if constexpr (S & 4) s2[i] = c;
  }
}

struct Launch {
  const OptimHyper& h;
  int64_t n;
  const int* skip;
  const double* dscale;
  template <typename T, typename Op>
  void run(const Op& op, T* p, const T* g, T* s0, T* s1, T* s2) const {
    if (n <= 0) return;
    const bool vec = aligned16(p) && aligned16(g) && (!(Op::kS & 1) || aligned16(s0)) &&
                     (!(Op::kS & 2) || aligned16(s1)) && (!(Op::kS & 4) || aligned16(s2));
    const int64_t per_block = int64_t(kThreads) * kUnroll * Vec<T>::n;
    const unsigned vgrid = static_cast<unsigned>((n + per_block - 1) / per_block);
    if (vec) {
      optim_kernel<T, true, Op><<<vgrid, kThreads, 0, stream()>>>(op, p, g, s0, s1, s2, n, skip,
                                                                dscale, h.grad_scale, h.maximize);
    } else {
      optim_kernel<T, false, Op><<<grid_for(static_cast<size_t>(n), kThreads), kThreads, 0, stream()>>>(op, p, g, s0, s1, s2, n, skip,
                                                                 dscale, h.grad_scale, h.maximize);
    }
    GF_CUDA_CHECK_LAUNCH("optim_step");
  }
};

template <typename T>
void sgd(const Launch& L, T* p, const T* g, T* buf) {
  const OptimHyper& h = L.h;
  const T wd = T(h.weight_decay), mom = T(h.momentum), damp1 = T(1.0 - h.dampening), nlr = T(-h.lr);
  const bool w = h.weight_decay != 0;
  if (h.momentum == 0) {
    if (w) L.run(Sgd<T, false, true, false, false>{wd, mom, damp1, nlr}, p, g, buf, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
    else L.run(Sgd<T, false, false, false, false>{wd, mom, damp1, nlr}, p, g, buf, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
    return;
  }
  const int mode = (w ? 1 : 0) | (h.nesterov ? 2 : 0) | (h.first ? 4 : 0);
  switch (mode) {
#define GF_SGD(M, W, N, F) \
  case M: L.run(Sgd<T, true, W, N, F>{wd, mom, damp1, nlr}, p, g, buf, static_cast<T*>(nullptr), static_cast<T*>(nullptr)); break;
    GF_SGD(0, false, false, false)
    GF_SGD(1, true, false, false)
    GF_SGD(2, false, true, false)
    GF_SGD(3, true, true, false)
    GF_SGD(4, false, false, true)
    GF_SGD(5, true, false, true)
    GF_SGD(6, false, true, true)
    GF_SGD(7, true, true, true)
#undef GF_SGD
  }
}

template <typename T>
void adam(const Launch& L, T* p, const T* g, T* m, T* v, T* vmax) {
  const OptimHyper& h = L.h;
  const T w1 = T(1.0 - h.beta1);
  const T bc2s = T(h.bc2_sqrt);
  const bool wd = h.weight_decay != 0;
  const int mode = (wd && !h.decoupled ? 1 : 0) | (wd && h.decoupled ? 2 : 0) | (h.amsgrad ? 4 : 0);
#define GF_ADAM(C, D, A)                                                                     \
  L.run(Adam<T, C, D, A>{T(h.weight_decay), T(1.0 - h.lr * h.weight_decay), w1, w1 - T(1),  \
                         T(h.beta2), T(1.0 - h.beta2), T(-h.step_size), bc2s, T(h.eps),      \
                         std::fabs(w1) < T(0.5)},                                            \
        p, g, m, v, vmax)
  switch (mode) {
    case 0: GF_ADAM(false, false, false); break;
    case 1: GF_ADAM(true, false, false); break;
    case 2: GF_ADAM(false, true, false); break;
    case 4: GF_ADAM(false, false, true); break;
    case 5: GF_ADAM(true, false, true); break;
    default: GF_ADAM(false, true, true); break;
  }
#undef GF_ADAM
}

template <typename T>
void rmsprop(const Launch& L, T* p, const T* g, T* sq, T* buf, T* ga) {
  const OptimHyper& h = L.h;
  const T wa = T(1.0 - h.alpha);
  const int mode = (h.centered ? 1 : 0) | (h.momentum > 0 ? 2 : 0) | (h.weight_decay != 0 ? 4 : 0);
#define GF_RMS(C, M, W)                                                                       \
  L.run(RmsProp<T, C, M, W>{T(h.weight_decay), T(h.alpha), wa, wa - T(1), T(h.eps), T(-h.lr), \
                            T(h.momentum), std::fabs(wa) < T(0.5)},                           \
        p, g, sq, buf, ga)
  switch (mode) {
    case 0: GF_RMS(false, false, false); break;
    case 1: GF_RMS(true, false, false); break;
    case 2: GF_RMS(false, true, false); break;
    case 3: GF_RMS(true, true, false); break;
    case 4: GF_RMS(false, false, true); break;
    case 5: GF_RMS(true, false, true); break;
    case 6: GF_RMS(false, true, true); break;
    default: GF_RMS(true, true, true); break;
  }
#undef GF_RMS
}

template <typename T>
void nadam(const Launch& L, T* p, const T* g, T* m, T* v) {
  const OptimHyper& h = L.h;
  const T w1 = T(1.0 - h.beta1);
  const bool wd = h.weight_decay != 0;
#define GF_NADAM(C, D)                                                                         \
  L.run(NAdam<T, C, D>{T(h.weight_decay), T(1.0 - h.lr * h.weight_decay), w1, w1 - T(1),       \
                       T(h.beta2), T(1.0 - h.beta2), T(h.bc2_sqrt), T(h.eps), T(h.c1), T(h.c2), \
                       std::fabs(w1) < T(0.5)},                                                \
        p, g, m, v, static_cast<T*>(nullptr))
  if (wd && h.decoupled) GF_NADAM(false, true);
  else if (wd) GF_NADAM(true, false);
  else GF_NADAM(false, false);
#undef GF_NADAM
}

template <typename T>
void radam(const Launch& L, T* p, const T* g, T* m, T* v) {
  const OptimHyper& h = L.h;
  const T w1 = T(1.0 - h.beta1);
  const bool wd = h.weight_decay != 0;
  const int mode = (wd && h.decoupled ? 1 : wd ? 2 : 0) | (h.rectify ? 4 : 0);
#define GF_RADAM(C, D, R)                                                                       \
  L.run(RAdam<T, C, D, R>{T(h.weight_decay), T(1.0 - h.lr * h.weight_decay), w1, w1 - T(1),     \
                          T(h.beta2), T(1.0 - h.beta2), T(h.c1), T(h.c2), T(h.bc2_sqrt),        \
                          T(h.eps), T(h.lr), std::fabs(w1) < T(0.5)},                           \
        p, g, m, v, static_cast<T*>(nullptr))
  switch (mode) {
    case 0: GF_RADAM(false, false, false); break;
    case 1: GF_RADAM(false, true, false); break;
    case 2: GF_RADAM(true, false, false); break;
    case 4: GF_RADAM(false, false, true); break;
    case 5: GF_RADAM(false, true, true); break;
    default: GF_RADAM(true, false, true); break;
  }
#undef GF_RADAM
}

// ---- reductions over fixed 64Ki-element blocks (as the CPU): one partial per block, summed
// in block order by one thread block - the bits depend on n only.
constexpr int64_t kReduceBlock = int64_t(1) << 16;

// mode 0: sum x^2, 1: sum |x|, 2: max |x| (NaN wins), 3: sum |x|^p
template <typename T>
__global__ void norm_partial_kernel(const T* __restrict__ x, int64_t n, int mode, double pw,
                                    double* part) {
  __shared__ double sh[32];
  const int64_t lo = int64_t(blockIdx.x) * kReduceBlock;
  const int64_t hi = lo + kReduceBlock < n ? lo + kReduceBlock : n;
  double s = 0;
  bool nan = false;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const double v = double(x[i]);
    if (mode == 0) s += v * v;
    else if (mode == 1) s += fabs(v);
    else if (mode == 2) {
      nan |= isnan(v);
      s = fabs(v) > s ? fabs(v) : s;
    } else s += pow(fabs(v), pw);
  }
  if (mode == 2) {
    s = block_max(s, sh);
    const int any_nan = __syncthreads_or(nan);
    if (threadIdx.x == 0) part[blockIdx.x] = any_nan ? NAN : s;
  } else {
    s = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
  }
}

__global__ void norm_finish_kernel(const double* part, int64_t nb, int mode, double* out,
                                   bool accumulate) {
  if (threadIdx.x != 0) return;
  double r = accumulate ? *out : 0.0;
  for (int64_t k = 0; k < nb; ++k) {
    const double v = part[k];
    if (mode == 2) {
      if (isnan(r)) break;
      r = (isnan(v) || v > r) ? v : r;
    } else {
      r += v;
    }
  }
  *out = r;
}

template <typename T>
__global__ void nonfinite_kernel(const T* __restrict__ x, int64_t n, int* flag) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  bool bad = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T v = x[i];
    bad |= !(v - v == T(0));
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, T s) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = x[i] * s;
}

template <typename T>
__global__ void clamp_kernel(T* x, int64_t n, T lo, T hi) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T v = x[i];
    x[i] = v < lo ? lo : (v > hi ? hi : v);
  }
}

__global__ void clip_coef_kernel(const double* total, double norm_type, double max_norm,
                                 double* coef, double* norm_out) {
  const double t = *total;
  const double norm = isinf(norm_type) ? t : (norm_type == 2.0 ? sqrt(t) : pow(t, 1.0 / norm_type));
  if (norm_out) *norm_out = norm;
  const double c = max_norm / (norm + 1e-6);
  *coef = c < 1.0 ? c : 1.0;  // NaN norm gives NaN coef (fails c < 1): keeps NaN
  if (isnan(c)) *coef = c;
}

// ---- LAMB (CPU: lamb_step in optim.cpp): the same fixed 64Ki-element blocks per segment.
// Pass 1 (a CUDA block per arena block): m, v updated, sums of p^2 and u^2 into part[]; pass 2
// (a thread per segment): the partials summed in block order -> step = lr * trust ratio;
// pass 3: p -= step u with u recomputed from the new m, v.
struct LambBlock {
  int64_t seg, lo, hi;
};

template <typename T>
__global__ void lamb_moments_kernel(const LambBlock* __restrict__ blocks, double sign_scale,
                                    T b1, T w1, T b2, T w2, T c1, T c2, T eps, T wd,
                                    const T* __restrict__ p, const T* __restrict__ g,
                                    T* __restrict__ m, T* __restrict__ v, double2* part) {
  __shared__ double sh[32];
  const LambBlock B = blocks[blockIdx.x];
  const T scale = T(sign_scale);
  double sp = 0, su = 0;
  for (int64_t i = B.lo + threadIdx.x; i < B.hi; i += blockDim.x) {
    const T d = g[i] * scale;
    const T mi = b1 * m[i] + w1 * d;
    const T vi = b2 * v[i] + w2 * d * d;
    m[i] = mi;
    v[i] = vi;
    const T u = (mi * c1) / (sqrt(vi * c2) + eps) + wd * p[i];
    sp += double(p[i]) * double(p[i]);
    su += double(u) * double(u);
  }
  sp = block_sum(sp, sh);
  su = block_sum(su, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = make_double2(sp, su);
}

__global__ void lamb_trust_kernel(const double2* part, const int64_t* first, int64_t nseg,
                                  double lr, double* step) {
  const int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= nseg) return;
  double a = 0, b = 0;
  for (int64_t k = first[s]; k < first[s + 1]; ++k) {
    a += part[k].x;
    b += part[k].y;
  }
  const double r1 = sqrt(a), r2 = sqrt(b);
  step[s] = lr * ((r1 > 0 && r2 > 0) ? r1 / r2 : 1.0);
}

template <typename T>
__global__ void lamb_apply_kernel(const LambBlock* __restrict__ blocks, const double* step,
                                  T c1, T c2, T eps, T wd, T* __restrict__ p,
                                  const T* __restrict__ m, const T* __restrict__ v) {
  const LambBlock B = blocks[blockIdx.x];
  const T st = T(step[B.seg]);
  for (int64_t i = B.lo + threadIdx.x; i < B.hi; i += blockDim.x) {
    const T u = (m[i] * c1) / (sqrt(v[i] * c2) + eps) + wd * p[i];
    p[i] = p[i] - st * u;
  }
}

int norm_mode(double p) { return p == 2.0 ? 0 : p == 1.0 ? 1 : std::isinf(p) ? 2 : 3; }

template <typename T>
T read_back(const T* d) {
  T h;
  cudaError_t e = cudaMemcpyAsync(&h, d, sizeof(T), cudaMemcpyDeviceToHost, stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
  GF_CUDA_CHECK(e);
  return h;
}

}  // namespace

template <typename T>
void optim_step(const OptimHyper& h, T* param, const T* grad, T* s0, T* s1, T* s2, int64_t n,
                const int* skip, const double* scale) {
  const Launch L{h, n, skip, scale};
  switch (h.kind) {
    case OptimKind::SGD: sgd<T>(L, param, grad, s0); break;
    case OptimKind::Adam: adam<T>(L, param, grad, s0, s1, s2); break;
    case OptimKind::RMSprop: rmsprop<T>(L, param, grad, s0, s1, s2); break;
    case OptimKind::Adagrad: {
      const T wd = T(h.weight_decay), nclr = T(-h.step_size), eps = T(h.eps);
      if (h.weight_decay != 0) L.run(Adagrad<T, true>{wd, nclr, eps}, param, grad, s0, s1, s2);
      else L.run(Adagrad<T, false>{wd, nclr, eps}, param, grad, s0, s1, s2);
      break;
    }
    case OptimKind::NAdam: nadam<T>(L, param, grad, s0, s1); break;
    case OptimKind::RAdam: radam<T>(L, param, grad, s0, s1); break;
    case OptimKind::Lion:
      L.run(Lion<T>{T(1.0 - h.lr * h.weight_decay), T(h.lr), T(h.beta1), T(1.0 - h.beta1),
                    T(h.beta2), T(1.0 - h.beta2)},
            param, grad, s0, s1, s2);
      break;
  }
}

template <typename T>
void lamb_step(const OptimHyper& h, T* param, const T* grad, T* m, T* v, const int64_t* offsets,
               const int64_t* sizes, int64_t nseg) {
  std::vector<LambBlock> blocks;
  std::vector<int64_t> first(size_t(nseg) + 1, 0);
  for (int64_t s = 0; s < nseg; ++s) {
    first[size_t(s)] = int64_t(blocks.size());
    for (int64_t lo = 0; lo < sizes[s]; lo += kReduceBlock) {
      const int64_t hi = lo + kReduceBlock < sizes[s] ? lo + kReduceBlock : sizes[s];
      blocks.push_back({s, offsets[s] + lo, offsets[s] + hi});
    }
  }
  first[size_t(nseg)] = int64_t(blocks.size());
  const int64_t nb = int64_t(blocks.size());
  if (nb == 0) return;
  // one scratch allocation: the block table, segment starts, partials and per-segment steps
  const size_t b_tab = sizeof(LambBlock) * size_t(nb), b_first = sizeof(int64_t) * first.size();
  const size_t b_part = sizeof(double2) * size_t(nb), b_step = sizeof(double) * size_t(nseg);
  auto round = [](size_t b) { return (b + 255) / 256 * 256; };
  char* scratch = static_cast<char*>(alloc(round(b_tab) + round(b_first) + round(b_part) + b_step));
  auto* d_blocks = reinterpret_cast<LambBlock*>(scratch);
  auto* d_first = reinterpret_cast<int64_t*>(scratch + round(b_tab));
  auto* d_part = reinterpret_cast<double2*>(scratch + round(b_tab) + round(b_first));
  auto* d_step = reinterpret_cast<double*>(scratch + round(b_tab) + round(b_first) + round(b_part));
  // pageable host -> device: returns once the host vectors have been staged
  GF_CUDA_CHECK(cudaMemcpyAsync(d_blocks, blocks.data(), b_tab, cudaMemcpyHostToDevice, stream()));
  GF_CUDA_CHECK(cudaMemcpyAsync(d_first, first.data(), b_first, cudaMemcpyHostToDevice, stream()));
  const double ss = h.grad_scale * (h.maximize ? -1.0 : 1.0);
  const T c1 = T(h.c1), c2 = T(h.c2), eps = T(h.eps), wd = T(h.weight_decay);
  lamb_moments_kernel<T><<<static_cast<unsigned>(nb), 512, 0, stream()>>>(
      d_blocks, ss, T(h.beta1), T(1.0 - h.beta1), T(h.beta2), T(1.0 - h.beta2), c1, c2, eps, wd,
      param, grad, m, v, d_part);
  GF_CUDA_CHECK_LAUNCH("lamb_step (moments)");
  lamb_trust_kernel<<<static_cast<unsigned>((nseg + 127) / 128), 128, 0, stream()>>>(
      d_part, d_first, nseg, h.lr, d_step);
  GF_CUDA_CHECK_LAUNCH("lamb_step (trust)");
  lamb_apply_kernel<T><<<static_cast<unsigned>(nb), 512, 0, stream()>>>(d_blocks, d_step, c1, c2,
                                                                        eps, wd, param, m, v);
  GF_CUDA_CHECK_LAUNCH("lamb_step (apply)");
  gf::cuda::free(scratch);
}

template <typename T>
void arena_nonfinite_flag(const T* x, int64_t n, int* flag) {
  if (n <= 0) return;
  nonfinite_kernel<T><<<grid_for(size_t(n), kThreads), kThreads, 0, stream()>>>(x, n, flag);
  GF_CUDA_CHECK_LAUNCH("arena_nonfinite_flag");
}

template <typename T>
void arena_norm_reduce_dev(const T* x, int64_t n, double norm_type, double* out, bool accumulate) {
  const int mode = norm_mode(norm_type);
  const int64_t nb = (n + kReduceBlock - 1) / kReduceBlock;
  double* part = nb ? static_cast<double*>(alloc(sizeof(double) * size_t(nb))) : nullptr;
  if (nb) {
    norm_partial_kernel<T><<<static_cast<unsigned>(nb), 512, 0, stream()>>>(x, n, mode, norm_type,
                                                                            part);
    GF_CUDA_CHECK_LAUNCH("arena_norm_reduce");
  }
  norm_finish_kernel<<<1, 32, 0, stream()>>>(part, nb, mode, out, accumulate);
  GF_CUDA_CHECK_LAUNCH("arena_norm_reduce (finish)");
  gf::cuda::free(part);
}

template <typename T>
double arena_norm_reduce(const T* x, int64_t n, double norm_type) {
  auto* d = static_cast<double*>(alloc(sizeof(double)));
  arena_norm_reduce_dev(x, n, norm_type, d, false);
  double r = 0;
  try {
    r = read_back(d);
  } catch (...) {
    gf::cuda::free(d);
    throw;
  }
  gf::cuda::free(d);
  return r;
}

template <typename T>
bool arena_all_finite(const T* x, int64_t n) {
  auto* d = static_cast<int*>(alloc(sizeof(int)));
  GF_CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(int), stream()));
  arena_nonfinite_flag(x, n, d);
  int r = 0;
  try {
    r = read_back(d);
  } catch (...) {
    gf::cuda::free(d);
    throw;
  }
  gf::cuda::free(d);
  return r == 0;
}

template <typename T>
void arena_scale(T* x, int64_t n, double s) {
  if (n <= 0) return;
  scale_kernel<T><<<grid_for(size_t(n), kThreads), kThreads, 0, stream()>>>(x, n, T(s));
  GF_CUDA_CHECK_LAUNCH("arena_scale");
}

template <typename T>
void arena_clamp(T* x, int64_t n, double lo, double hi) {
  if (n <= 0) return;
  clamp_kernel<T><<<grid_for(size_t(n), kThreads), kThreads, 0, stream()>>>(x, n, T(lo), T(hi));
  GF_CUDA_CHECK_LAUNCH("arena_clamp");
}

void clip_coef(const double* total, double norm_type, double max_norm, double* coef,
               double* norm_out) {
  clip_coef_kernel<<<1, 1, 0, stream()>>>(total, norm_type, max_norm, coef, norm_out);
  GF_CUDA_CHECK_LAUNCH("clip_coef");
}

#define GF_INST(T)                                                                          \
  template void lamb_step<T>(const OptimHyper&, T*, const T*, T*, T*, const int64_t*,       \
                             const int64_t*, int64_t);                                      \
  template void optim_step<T>(const OptimHyper&, T*, const T*, T*, T*, T*, int64_t,         \
                              const int*, const double*);                                   \
  template void arena_nonfinite_flag<T>(const T*, int64_t, int*);                           \
  template void arena_norm_reduce_dev<T>(const T*, int64_t, double, double*, bool);         \
  template double arena_norm_reduce<T>(const T*, int64_t, double);                          \
  template bool arena_all_finite<T>(const T*, int64_t);                                     \
  template void arena_scale<T>(T*, int64_t, double);                                        \
  template void arena_clamp<T>(T*, int64_t, double, double);
GF_INST(float)
GF_INST(double)
#undef GF_INST

}  // namespace gf::cuda
