// Fused optimizer updates: one pass over a flat arena per group and dtype (see optim.h).
//
// Memory traffic per element (float32): SGD-momentum reads p, g, buf and writes p, buf (20 B);
// Adam reads p, g, m, v and writes p, m, v (28 B). The loops are plain elementwise updates in
// the operation order of PyTorch's CPU kernels, in the parameter's dtype with the host scalars
// cast to it (see "Rounding model" below).
#include "kernels/optim.h"

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace gradfuse {
namespace {

// Rounding model. PyTorch's CPU kernels (the fused Adam/AdamW/SGD/Adagrad loops of
// aten/src/ATen/native/cpu/Fused*Kernel.cpp, and the per-op kernels of the single-tensor
// RMSprop/NAdam/RAdam) round every operation to the parameter's dtype, with the scalars
// cast to it, and GCC contracts `a + b * c` in them into one fused multiply-add; `lerp`
// is an explicit vec::fmadd. This file is compiled with -ffp-contract=off (CMakeLists.txt)
// and spells every such FMA out with std::fma, so each update below rounds exactly where
// PyTorch's does. Checked bit for bit (one step, 4096 elements, and 110 steps in
// tests/test_optim.py) against the vectorized body of PyTorch's fused loops and against its
// per-op kernels on small tensors; PyTorch's fused scalar tail loops (a tensor's last
// numel % 16 elements) contract some `a * b + c * d` differently from their vector loops, and
// the per-op torch.sqrt of a tensor of more than a few hundred elements is not correctly
// rounded (1 ulp on ~0.7% of them) where the fused kernels' sqrt, and std::sqrt here, are:
// PyTorch disagrees with itself there, and no single order can match both (1 ulp).
// std::fma vectorizes to vfmadd in the AVX2 and AVX-512 clones.

// torch.lerp(a, b, w) as at::vec's lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w),
// each with one rounding (wm1 = w - 1 rounded in T, as PyTorch computes it).
template <typename T>
GF_INLINE T lerp_pt(T a, T b, T w, T wm1, bool small) {
  return small ? std::fma(w, b - a, a) : std::fma(wm1, b - a, b);
}

// a / c for a constant c without a divide, correctly rounded: q = a y with y = RN(1 / c) is
// within an ulp of a / c, r = a - q c is then exact in one FMA, and q + r y rounds to RN(a / c)
// (Markstein's theorem; Muller et al., Handbook of Floating-Point Arithmetic, 2nd ed., 4.9).
// So it equals PyTorch's `a / c` bit for bit; checked exhaustively for float over every
// numerator significand with 30003 divisors (all sqrt(1 - b2^t), t <= 3000, for eight b2 and
// 9000 random ones) and on 4.2e9 random double pairs. Valid while r does not underflow: for
// a >= 0 that is a = 0 or a >= 2^-75 (float) / 2^-537 (double), which every a = sqrt(v) meets.
// a = inf gives r = NaN: the select keeps q = inf, as the division would.
template <typename T>
GF_INLINE T div_const(T a, T c, T y) {
  const T q = a * y;
  const T r = std::fma(-q, c, a);
  return r == r ? std::fma(r, y, q) : q;
}

template <typename T>
GF_TARGET_CLONES void sgd_range(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                T* __restrict buf, int64_t n) {
  const T sign = h.maximize ? T(-1) : T(1), scale = T(h.grad_scale) * sign;
  const T wd = T(h.weight_decay), mom = T(h.momentum), damp1 = T(1.0 - h.dampening);
  const T nlr = T(-h.lr);
  const bool use_wd = h.weight_decay != 0, use_mom = h.momentum != 0;
  if (!use_mom) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T d = g[i] * scale;
      if (use_wd) d = std::fma(p[i], wd, d);
      p[i] = std::fma(d, nlr, p[i]);
    }
    return;
  }
  const bool first = h.first, nesterov = h.nesterov;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i] * scale;
    if (use_wd) d = std::fma(p[i], wd, d);
    // first step: buf = grad (no dampening), as PyTorch's clone
    const T b = first ? d : std::fma(d, damp1, buf[i] * mom);
    buf[i] = b;
    const T u = nesterov ? std::fma(b, mom, d) : b;
    p[i] = std::fma(u, nlr, p[i]);
  }
}

// Adam / AdamW:  m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2; (amsgrad: vmax = max(vmax, v))
//   p += (-step_size m) / (sqrt(v) / sqrt(1 - b2^t) + eps),  step_size = lr / (1 - b1^t)
// The divide by the constant sqrt(1 - b2^t) is div_const (exact, no divider use); the divide by
// the denominator stays a divide: a multiply by a reciprocal would be 1 ulp off PyTorch's.
template <typename T, bool kCoupled, bool kDecoupled, bool kAms>
GF_TARGET_CLONES void adam_loop(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                T* __restrict m, T* __restrict v, T* __restrict vmax, int64_t n) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T wd = T(h.weight_decay), decay = T(1.0 - h.lr * h.weight_decay);
  const T w1 = T(1.0 - h.beta1), w1m1 = w1 - T(1), b2 = T(h.beta2), w2 = T(1.0 - h.beta2);
  const bool small = std::fabs(w1) < T(0.5);
  const T nstep = T(-h.step_size), bc2s = T(h.bc2_sqrt), inv_bc2s = T(1) / bc2s, eps = T(h.eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i];
    T d = g[i] * scale;
    if constexpr (kCoupled) d = std::fma(pi, wd, d);
    if constexpr (kDecoupled) pi = pi * decay;
    const T mi = lerp_pt(m[i], d, w1, w1m1, small);
    T vi = std::fma(w2 * d, d, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    if constexpr (kAms) {
      vi = vmax[i] > vi ? vmax[i] : vi;
      vmax[i] = vi;
    }
    const T denom = div_const(std::sqrt(vi), bc2s, inv_bc2s) + eps;
    p[i] = pi + (nstep * mi) / denom;
  }
}

// Flags that decide which arrays a loop reads or writes are template parameters: a store
// under a runtime condition keeps GCC 12 from vectorizing the loop at all.
template <typename T>
void adam_range(const OptimHyper& h, T* p, const T* g, T* m, T* v, T* vmax, int64_t n) {
  const bool wd = h.weight_decay != 0;
  const int mode = (wd && !h.decoupled ? 1 : 0) | (wd && h.decoupled ? 2 : 0) |
                   (h.amsgrad ? 4 : 0);
  switch (mode) {
    case 0: adam_loop<T, false, false, false>(h, p, g, m, v, vmax, n); break;
    case 1: adam_loop<T, true, false, false>(h, p, g, m, v, vmax, n); break;
    case 2: adam_loop<T, false, true, false>(h, p, g, m, v, vmax, n); break;
    case 4: adam_loop<T, false, false, true>(h, p, g, m, v, vmax, n); break;
    case 5: adam_loop<T, true, false, true>(h, p, g, m, v, vmax, n); break;
    default: adam_loop<T, false, true, true>(h, p, g, m, v, vmax, n); break;
  }
}

// RMSprop (PyTorch's single-tensor ops): sq = alpha sq + (1 - alpha) g^2;
//   centered: ga = lerp(ga, g, 1 - alpha), avg = sqrt(sq - ga^2) + eps, else sqrt(sq) + eps;
//   momentum: buf = mom buf + g / avg, p -= lr buf; otherwise p += (-lr g) / avg
template <typename T, bool kCentered, bool kMomentum>
GF_TARGET_CLONES void rmsprop_loop(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                   T* __restrict sq, T* __restrict buf, T* __restrict ga,
                                   int64_t n) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T wd = T(h.weight_decay), a = T(h.alpha), wa = T(1.0 - h.alpha), eps = T(h.eps);
  const T wam1 = wa - T(1);
  const bool small = std::fabs(wa) < T(0.5);
  const T nlr = T(-h.lr), mom = T(h.momentum);
  const bool use_wd = h.weight_decay != 0;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i] * scale;
    if (use_wd) d = std::fma(p[i], wd, d);
    const T s = std::fma(wa * d, d, sq[i] * a);
    sq[i] = s;
    T avg;
    if constexpr (kCentered) {
      const T gi = lerp_pt(ga[i], d, wa, wam1, small);
      ga[i] = gi;
      avg = std::sqrt(std::fma(-gi, gi, s)) + eps;
    } else {
      avg = std::sqrt(s) + eps;
    }
    if constexpr (kMomentum) {
      const T b = buf[i] * mom + d / avg;
      buf[i] = b;
      p[i] = std::fma(b, nlr, p[i]);
    } else {
      p[i] = p[i] + (nlr * d) / avg;
    }
  }
}

template <typename T>
void rmsprop_range(const OptimHyper& h, T* p, const T* g, T* sq, T* buf, T* ga, int64_t n) {
  const bool mom = h.momentum > 0;
  if (h.centered) {
    if (mom) rmsprop_loop<T, true, true>(h, p, g, sq, buf, ga, n);
    else rmsprop_loop<T, true, false>(h, p, g, sq, buf, ga, n);
  } else {
    if (mom) rmsprop_loop<T, false, true>(h, p, g, sq, buf, ga, n);
    else rmsprop_loop<T, false, false>(h, p, g, sq, buf, ga, n);
  }
}

// Adagrad: sum += g^2; p += (-clr g) / (sqrt(sum) + eps), clr = lr / (1 + (t - 1) lr_decay)
template <typename T>
GF_TARGET_CLONES void adagrad_range(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                    T* __restrict sum, int64_t n) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T wd = T(h.weight_decay), nclr = T(-h.step_size), eps = T(h.eps);
  const bool use_wd = h.weight_decay != 0;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i] * scale;
    if (use_wd) d = std::fma(p[i], wd, d);
    const T s = std::fma(d, d, sum[i]);
    sum[i] = s;
    p[i] = p[i] + (nclr * d) / (std::sqrt(s) + eps);
  }
}

// NAdam (PyTorch): m, v as Adam; denom = sqrt(v / (1 - b2^t)) + eps (h.bc2_sqrt holds
//   1 - b2^t here); p += (c1 g) / denom; p += (c2 m) / denom with
//   c1 = -lr (1 - mu_t) / (1 - prod mu), c2 = -lr mu_{t+1} / (1 - prod mu * mu_{t+1})
template <typename T, bool coupled, bool decoupled>
GF_TARGET_CLONES void nadam_loop(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                  T* __restrict m, T* __restrict v, int64_t n) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T wd = T(h.weight_decay), decay = T(1.0 - h.lr * h.weight_decay);
  const T w1 = T(1.0 - h.beta1), w1m1 = w1 - T(1), b2 = T(h.beta2), w2 = T(1.0 - h.beta2);
  const bool small = std::fabs(w1) < T(0.5);
  const T bc2 = T(h.bc2_sqrt), eps = T(h.eps), c1 = T(h.c1), c2 = T(h.c2);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i];
    T d = g[i] * scale;
    if constexpr (coupled) d = std::fma(pi, wd, d);
    if constexpr (decoupled) pi = pi * decay;
    const T mi = lerp_pt(m[i], d, w1, w1m1, small);
    const T vi = std::fma(w2 * d, d, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    const T denom = std::sqrt(vi / bc2) + eps;
    pi = pi + (c1 * d) / denom;
    p[i] = pi + (c2 * mi) / denom;
  }
}

// RAdam (PyTorch): m, v as Adam; mhat = m / (1 - b1^t) (h.c1 holds 1 - b1^t);
//   rho_t > 5: p -= ((mhat lr) a) rect with a = (1 / (sqrt(v) + eps)) sqrt(1 - b2^t)
//              (PyTorch's scalar / tensor is reciprocal() * scalar), rect = h.c2
//   else:      p -= mhat lr
template <typename T, bool coupled, bool decoupled, bool rectify>
GF_TARGET_CLONES void radam_loop(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                  T* __restrict m, T* __restrict v, int64_t n) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T wd = T(h.weight_decay), decay = T(1.0 - h.lr * h.weight_decay);
  const T w1 = T(1.0 - h.beta1), w1m1 = w1 - T(1), b2 = T(h.beta2), w2 = T(1.0 - h.beta2);
  const bool small = std::fabs(w1) < T(0.5);
  const T bc1 = T(h.c1), rect = T(h.c2), bc2s = T(h.bc2_sqrt), eps = T(h.eps);
  const T lr = T(h.lr);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i];
    T d = g[i] * scale;
    if constexpr (coupled) d = std::fma(pi, wd, d);
    if constexpr (decoupled) pi = pi * decay;
    const T mi = lerp_pt(m[i], d, w1, w1m1, small);
    const T vi = std::fma(w2 * d, d, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    const T mh = mi / bc1;
    if constexpr (rectify) {
      const T adaptive = (T(1) / (std::sqrt(vi) + eps)) * bc2s;
      p[i] = pi - ((mh * lr) * adaptive) * rect;
    } else {
      p[i] = pi - mh * lr;
    }
  }
}

template <typename T>
void nadam_range(const OptimHyper& h, T* p, const T* g, T* m, T* v, int64_t n) {
  const bool wd = h.weight_decay != 0;
  if (wd && h.decoupled) nadam_loop<T, false, true>(h, p, g, m, v, n);
  else if (wd) nadam_loop<T, true, false>(h, p, g, m, v, n);
  else nadam_loop<T, false, false>(h, p, g, m, v, n);
}

template <typename T, bool rectify>
void radam_wd(const OptimHyper& h, T* p, const T* g, T* m, T* v, int64_t n) {
  const bool wd = h.weight_decay != 0;
  if (wd && h.decoupled) radam_loop<T, false, true, rectify>(h, p, g, m, v, n);
  else if (wd) radam_loop<T, true, false, rectify>(h, p, g, m, v, n);
  else radam_loop<T, false, false, rectify>(h, p, g, m, v, n);
}

template <typename T>
void radam_range(const OptimHyper& h, T* p, const T* g, T* m, T* v, int64_t n) {
  if (h.rectify) radam_wd<T, true>(h, p, g, m, v, n);
  else radam_wd<T, false>(h, p, g, m, v, n);
}

// Lion (Chen et al. 2023, arXiv:2302.06675): c = b1 m + (1 - b1) g;
//   p = p (1 - lr wd) - lr sign(c); m = b2 m + (1 - b2) g
template <typename T>
GF_TARGET_CLONES void lion_range(const OptimHyper& h, T* __restrict p, const T* __restrict g,
                                 T* __restrict m, int64_t n) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T decay = T(1.0 - h.lr * h.weight_decay), lr = T(h.lr);
  const T b1 = T(h.beta1), w1 = T(1.0 - h.beta1), b2 = T(h.beta2), w2 = T(1.0 - h.beta2);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T d = g[i] * scale;
    const T c = b1 * m[i] + w1 * d;
    const T s = c > T(0) ? T(1) : (c < T(0) ? T(-1) : T(0));
    p[i] = p[i] * decay - lr * s;
    m[i] = b2 * m[i] + w2 * d;
  }
}

constexpr int64_t kReduceBlock = int64_t(1) << 16;

// (block_reduce and LAMB below share the fixed block size)

template <typename T>
GF_TARGET_CLONES double block_reduce(const T* x, int64_t n, int mode, double p) {
  double s = 0;
  if (mode == 0) {  // sum of squares
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  } else if (mode == 1) {  // sum |x|
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += std::fabs(double(x[i]));
  } else if (mode == 2) {  // max |x|; NaN is folded in separately (max drops it)
    double nan_probe = 0;
#pragma omp simd reduction(max : s) reduction(+ : nan_probe)
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::fabs(double(x[i]));
      s = a > s ? a : s;
      nan_probe += double(x[i]) * 0.0;  // inf * 0 is NaN too; only NaN matters: handled below
    }
    if (std::isnan(nan_probe)) {
      for (int64_t i = 0; i < n; ++i)
        if (std::isnan(x[i])) return std::numeric_limits<double>::quiet_NaN();
    }
  } else {  // sum |x|^p
    for (int64_t i = 0; i < n; ++i) s += std::pow(std::fabs(double(x[i])), p);
  }
  return s;
}

// ---- LAMB
template <typename T>
GF_TARGET_CLONES void lamb_moments(const OptimHyper& h, const T* __restrict p,
                                   const T* __restrict g, T* __restrict m, T* __restrict v,
                                   int64_t n, double* pn, double* un) {
  const T scale = T(h.grad_scale) * (h.maximize ? T(-1) : T(1));
  const T b1 = T(h.beta1), w1 = T(1.0 - h.beta1), b2 = T(h.beta2), w2 = T(1.0 - h.beta2);
  const T c1 = T(h.c1), c2 = T(h.c2), eps = T(h.eps), wd = T(h.weight_decay);
  double sp = 0, su = 0;
#pragma omp simd reduction(+ : sp, su)
  for (int64_t i = 0; i < n; ++i) {
    const T d = g[i] * scale;
    const T mi = b1 * m[i] + w1 * d;
    const T vi = b2 * v[i] + w2 * d * d;
    m[i] = mi;
    v[i] = vi;
    const T u = (mi * c1) / (std::sqrt(vi * c2) + eps) + wd * p[i];
    sp += double(p[i]) * double(p[i]);
    su += double(u) * double(u);
  }
  *pn = sp;
  *un = su;
}

template <typename T>
GF_TARGET_CLONES void lamb_apply(const OptimHyper& h, T* __restrict p, const T* __restrict m,
                                 const T* __restrict v, int64_t n, T step) {
  const T c1 = T(h.c1), c2 = T(h.c2), eps = T(h.eps), wd = T(h.weight_decay);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T u = (m[i] * c1) / (std::sqrt(v[i] * c2) + eps) + wd * p[i];
    p[i] = p[i] - step * u;
  }
}

struct LambBlock {
  int64_t seg, lo, hi;
};

}  // namespace

template <typename T>
void lamb_step(const OptimHyper& h, T* param, const T* grad, T* m, T* v, const int64_t* offsets,
               const int64_t* sizes, int64_t nseg) {
  std::vector<LambBlock> blocks;
  for (int64_t s = 0; s < nseg; ++s) {
    for (int64_t lo = 0; lo < sizes[s]; lo += kReduceBlock) {
      const int64_t hi = lo + kReduceBlock < sizes[s] ? lo + kReduceBlock : sizes[s];
      blocks.push_back({s, offsets[s] + lo, offsets[s] + hi});
    }
  }
  const int64_t nb = int64_t(blocks.size());
  std::vector<double> pn(static_cast<size_t>(nb)), un(static_cast<size_t>(nb));
  std::vector<double> step(static_cast<size_t>(nseg), 0.0);
  parallel_for(nb, kReduceBlock, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const LambBlock& B = blocks[size_t(k)];
      lamb_moments<T>(h, param + B.lo, grad + B.lo, m + B.lo, v + B.lo, B.hi - B.lo,
                      &pn[size_t(k)], &un[size_t(k)]);
    }
  });
  {
    std::vector<double> sp(size_t(nseg), 0.0), su(size_t(nseg), 0.0);
    for (int64_t k = 0; k < nb; ++k) {
      sp[size_t(blocks[size_t(k)].seg)] += pn[size_t(k)];
      su[size_t(blocks[size_t(k)].seg)] += un[size_t(k)];
    }
    for (int64_t s = 0; s < nseg; ++s) {
      const double r1 = std::sqrt(sp[size_t(s)]), r2 = std::sqrt(su[size_t(s)]);
      const double trust = (r1 > 0 && r2 > 0) ? r1 / r2 : 1.0;
      step[size_t(s)] = h.lr * trust;
    }
  }
  parallel_for(nb, kReduceBlock, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const LambBlock& B = blocks[size_t(k)];
      lamb_apply<T>(h, param + B.lo, m + B.lo, v + B.lo, B.hi - B.lo, T(step[size_t(B.seg)]));
    }
  });
}

namespace {
}  // namespace

template <typename T>
void optim_step(const OptimHyper& h, T* param, const T* grad, T* s0, T* s1, T* s2, int64_t n) {
  // Work per element, in parallel_for's units: the kernels with a sqrt and a divide per
  // element are bound by the divider (~0.5 ns per float32 element with AVX-512, one divider per
  // core), the others by memory, so the first count three units an element. (With spinning
  // OpenMP workers two threads won from ~11K Adam elements; with the sleeping workers gradfuse
  // now uses, a wake-up costs ~80 us here and the default grain keeps small models on one.)
  const bool divides = h.kind != OptimKind::SGD && h.kind != OptimKind::Lion;
  parallel_for(n, divides ? 3 : 1, [&](int64_t b, int64_t e) {
    const int64_t len = e - b;
    T* p = param + b;
    const T* g = grad + b;
    T* a = s0 ? s0 + b : nullptr;
    T* c = s1 ? s1 + b : nullptr;
    T* d = s2 ? s2 + b : nullptr;
    switch (h.kind) {
      case OptimKind::SGD: sgd_range<T>(h, p, g, a, len); break;
      case OptimKind::Adam: adam_range<T>(h, p, g, a, c, d, len); break;
      case OptimKind::RMSprop: rmsprop_range<T>(h, p, g, a, c, d, len); break;
      case OptimKind::Adagrad: adagrad_range<T>(h, p, g, a, len); break;
      case OptimKind::NAdam: nadam_range<T>(h, p, g, a, c, len); break;
      case OptimKind::RAdam: radam_range<T>(h, p, g, a, c, len); break;
      case OptimKind::Lion: lion_range<T>(h, p, g, a, len); break;
    }
  });
}

template <typename T>
double arena_norm_reduce(const T* x, int64_t n, double norm_type) {
  const int mode = norm_type == 2.0 ? 0 : norm_type == 1.0 ? 1 : std::isinf(norm_type) ? 2 : 3;
  const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> part(size_t(blocks > 0 ? blocks : 1), 0.0);
  parallel_for(blocks, kReduceBlock, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t lo = k * kReduceBlock, hi = lo + kReduceBlock < n ? lo + kReduceBlock : n;
      part[size_t(k)] = block_reduce<T>(x + lo, hi - lo, mode, norm_type);
    }
  });
  double r = 0;
  for (int64_t k = 0; k < blocks; ++k) {
    const double v = part[size_t(k)];
    if (mode == 2) {
      r = (std::isnan(v) || v > r) ? v : r;
      if (std::isnan(r)) break;
    } else {
      r += v;
    }
  }
  return r;
}

template <typename T>
GF_TARGET_CLONES static T finite_probe(const T* x, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] - x[i];
  return s;
}

template <typename T>
bool arena_all_finite(const T* x, int64_t n) {
  const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<unsigned char> ok(size_t(blocks > 0 ? blocks : 1), 1);
  parallel_for(blocks, kReduceBlock, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t lo = k * kReduceBlock, hi = lo + kReduceBlock < n ? lo + kReduceBlock : n;
      ok[size_t(k)] = finite_probe<T>(x + lo, hi - lo) == T(0);
    }
  });
  for (unsigned char o : ok)
    if (!o) return false;
  return true;
}

template <typename T>
GF_TARGET_CLONES static void scale_range(T* x, int64_t n, T s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * s;
}

template <typename T>
void arena_scale(T* x, int64_t n, double s) {
  parallel_for(n, 1, [&](int64_t b, int64_t e) { scale_range<T>(x + b, e - b, T(s)); });
}

template <typename T>
GF_TARGET_CLONES static void clamp_range(T* x, int64_t n, T lo, T hi) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    x[i] = v < lo ? lo : (v > hi ? hi : v);  // NaN fails both tests and stays
  }
}

template <typename T>
void arena_clamp(T* x, int64_t n, double lo, double hi) {
  parallel_for(n, 1, [&](int64_t b, int64_t e) { clamp_range<T>(x + b, e - b, T(lo), T(hi)); });
}

#define GF_OPTIM_INSTANTIATE(T)                                                            \
  template void optim_step<T>(const OptimHyper&, T*, const T*, T*, T*, T*, int64_t);      \
  template double arena_norm_reduce<T>(const T*, int64_t, double);                        \
  template bool arena_all_finite<T>(const T*, int64_t);                                   \
  template void arena_scale<T>(T*, int64_t, double);                                      \
  template void arena_clamp<T>(T*, int64_t, double, double);                              \
  template void lamb_step<T>(const OptimHyper&, T*, const T*, T*, T*, const int64_t*,     \
                             const int64_t*, int64_t);
GF_OPTIM_INSTANTIATE(float)
GF_OPTIM_INSTANTIATE(double)
#undef GF_OPTIM_INSTANTIATE

}  // namespace gradfuse
