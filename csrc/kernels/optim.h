// Fused optimizer updates over a flat parameter arena (DESIGN.md, decision 3).
//
// Every parameter of one group and dtype lives in one contiguous buffer, its gradient in a
// second and each state tensor (exp_avg, exp_avg_sq, ...) in one more, all laid out alike.
// A step is one pass over those buffers: each element is independent, so the arena is cut
// into one contiguous chunk per thread and the result does not depend on the thread count.
// Scalars that depend only on the step (bias corrections, decayed lr) are computed once on
// the host, in double, and handed in through OptimHyper.
#pragma once

#include <cstdint>

namespace gradfuse {

enum class OptimKind : int { SGD = 0, Adam = 1, RMSprop = 2, Adagrad = 3, NAdam = 4, RAdam = 5, Lion = 6 };

struct OptimHyper {
  OptimKind kind = OptimKind::SGD;
  double lr = 0.0;
  double weight_decay = 0.0;
  double eps = 0.0;
  double beta1 = 0.0, beta2 = 0.0;  // Adam family, Lion
  double momentum = 0.0;            // SGD, RMSprop
  double dampening = 0.0;           // SGD
  double alpha = 0.0;               // RMSprop smoothing constant
  bool maximize = false;
  bool nesterov = false;            // SGD
  bool first = false;               // SGD: no momentum buffer yet (PyTorch copies the gradient)
  bool amsgrad = false;             // Adam
  bool decoupled = false;           // AdamW / NAdam / RAdam decoupled weight decay
  bool centered = false;            // RMSprop
  // per-step scalars, computed by the caller from the step count
  double step_size = 0.0;           // Adam: lr / (1 - beta1^t); Adagrad: lr / (1 + (t-1) lr_decay)
  double bc2_sqrt = 1.0;            // Adam: sqrt(1 - beta2^t); NAdam: 1 - beta2^t
  double c1 = 0.0, c2 = 0.0;        // NAdam: grad and exp_avg coefficients; RAdam: see optim.cpp
  bool rectify = false;             // RAdam: rho_t > 5
  // Multiplies the gradient as it is read: a clip_grad_norm_ scale folded into the step.
  double grad_scale = 1.0;
};

// One update of n elements. State buffers by kind (unused ones may be null):
//   SGD      s0 = momentum_buffer (when momentum != 0)
//   Adam     s0 = exp_avg, s1 = exp_avg_sq, s2 = max_exp_avg_sq (amsgrad)
//   RMSprop  s0 = square_avg, s1 = momentum_buffer (momentum > 0), s2 = grad_avg (centered)
//   Adagrad  s0 = sum
//   NAdam    s0 = exp_avg, s1 = exp_avg_sq
//   RAdam    s0 = exp_avg, s1 = exp_avg_sq
//   Lion     s0 = exp_avg
template <typename T>
void optim_step(const OptimHyper& h, T* param, const T* grad, T* s0, T* s1, T* s2, int64_t n);

// LAMB (You et al. 2019, arXiv:1904.00962) over an arena of nseg tensors (segment table
// offsets/sizes, in elements): per element u = mhat / (sqrt(vhat) + eps) + wd p with
// mhat = m c1, vhat = v c2 (c1, c2 = 1 / bias corrections, h.c1 / h.c2), then per tensor
// p -= lr * trust * u with trust = ||p|| / ||u|| (1 when either norm is 0). Two passes: the
// first updates m, v and sums ||p||^2, ||u||^2 in fixed 64Ki-element blocks (summed in order:
// thread independent), the second recomputes u from the new m, v and applies it.
template <typename T>
void lamb_step(const OptimHyper& h, T* param, const T* grad, T* m, T* v, const int64_t* offsets,
               const int64_t* sizes, int64_t nseg);

// ---- gradient-arena reductions (fixed 64Ki-element blocks summed in order: thread independent)
// norm_type: 2 -> sum of squares, 1 -> sum of |x|, inf -> max |x| (+inf passes as inf),
// other p -> sum |x|^p. NaN anywhere gives NaN.
template <typename T>
double arena_norm_reduce(const T* x, int64_t n, double norm_type);

// True when every element is finite: one read pass, vectorized (x - x is 0 for finite x,
// NaN for inf and NaN).
template <typename T>
bool arena_all_finite(const T* x, int64_t n);

// x *= s in place.
template <typename T>
void arena_scale(T* x, int64_t n, double s);

// x = min(max(x, lo), hi) in place (NaN stays NaN, as torch.clamp).
template <typename T>
void arena_clamp(T* x, int64_t n, double lo, double hi);

}  // namespace gradfuse
