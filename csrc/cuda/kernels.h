// CUDA versions of the kernel families of csrc/kernels/*.h (issue 7): the same math on DEVICE
// pointers. Plain C++ declarations (no CUDA headers), so bindings.cpp includes this with the
// host compiler. Every function queues its kernels on gf::cuda::stream() and returns without
// synchronizing, except where it returns a value computed on the device (said so below):
// cross_entropy_forward's sums, arena_norm_reduce, arena_all_finite and the fills' argument
// checks need nothing from the device (fills return the block count, known on the host).
//
// Implemented in csrc/cuda/{activations,loss,norms,init,scale,optim}.cu; init.cu and optim.cu
// MUST be compiled with --fmad=false (CPU: -ffp-contract=off), so that a Philox fill gives the
// same bits as on the CPU and an optimizer step rounds where the CPU's does.
#pragma once

#include <cstdint>

#include "kernels/activations.h"
#include "kernels/init.h"
#include "kernels/loss.h"
#include "kernels/norms.h"
#include "kernels/optim.h"
#include "kernels/scale.h"

namespace gf::cuda {

using gradfuse::ActivationArgs;
using gradfuse::BatchNormArgs;
using gradfuse::CrossEntropyArgs;
using gradfuse::CrossEntropySums;
using gradfuse::GroupNormArgs;
using gradfuse::OptimHyper;
using gradfuse::PhiloxStream;
using gradfuse::RowNormArgs;

// ---- activations.cu
template <typename T>
void activation_forward(const T* x, int64_t n, const ActivationArgs& a, T* y);
template <typename T>
void activation_backward(const T* g, const T* saved, int64_t n, const ActivationArgs& a, T* dx);
template <typename T>
void softmax_forward(const T* x, int64_t outer, int64_t dim, int64_t inner, bool log, T* y);
template <typename T>
void softmax_backward(const T* g, const T* y, int64_t outer, int64_t dim, int64_t inner, bool log,
                      T* dx);

// ---- loss.cu
// Synchronizes once: the sums (and a bad-target flag, thrown as std::invalid_argument naming
// the first bad row, as the CPU's check_targets) are read back. row_loss / lse stay on the device.
template <typename T>
CrossEntropySums cross_entropy_forward(const T* logits, const int64_t* target, const T* weight,
                                       const CrossEntropyArgs& a, T* row_loss, T* lse);
// No synchronization: ignored / out-of-range targets give a zero row (forward already checked).
template <typename T>
void cross_entropy_backward(const T* logits, const int64_t* target, const T* weight, const T* lse,
                            const T* grad_rows, double grad_scale, const CrossEntropyArgs& a,
                            T* dlogits);

// ---- norms.cu (the CPU signatures; dw/db written, not accumulated into)
template <typename T>
void row_norm_forward(const T* x, const T* w, const T* b, const RowNormArgs& a, T* y, T* mean,
                      T* rstd);
template <typename T>
void row_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                       const RowNormArgs& a, T* dx, T* dw, T* db);
template <typename T>
void batch_norm_forward(const T* x, const T* w, const T* b, T* running_mean, T* running_var,
                        const BatchNormArgs& a, T* y, T* save_mean, T* save_rstd);
template <typename T>
void batch_norm_backward(const T* x, const T* dy, const T* w, const T* save_mean,
                         const T* save_rstd, const BatchNormArgs& a, T* dx, T* dw, T* db);
template <typename T>
void group_norm_forward(const T* x, const T* w, const T* b, const GroupNormArgs& a, T* y, T* mean,
                        T* rstd);
template <typename T>
void group_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                         const GroupNormArgs& a, T* dx, T* dw, T* db);

// ---- init.cu: bitwise the CPU fills (same counter layout and word->value maps). Arguments are
// checked on the host with the CPU's messages; returns the Philox blocks consumed.
template <typename T>
uint64_t uniform_fill(T* out, int64_t n, PhiloxStream s, double a, double b);
template <typename T>
uint64_t normal_fill(T* out, int64_t n, PhiloxStream s, double mean, double std);
template <typename T>
uint64_t bernoulli_fill(T* out, int64_t n, PhiloxStream s, double p);
template <typename T>
uint64_t dropout_forward(const T* x, int64_t n, PhiloxStream s, double p, T* out, uint8_t* mask);
template <typename T>
void dropout_backward(const T* grad, const uint8_t* mask, int64_t n, double scale, T* dx);
// out[4 j + r] = word r of block offset + j (device), for tests against philox_words.
void philox_words(uint64_t seed, uint64_t offset, int64_t n_blocks, uint32_t* out);

// ---- scale.cu: the scalers' fused per-column affine map (computed in double, rounded once).
// nonfinite (device, 2 ints: saw NaN, saw inf) is OR-ed into, so the caller reads it back only
// when it must reject non-finite input (one sync).
template <typename T>
void affine_columns(const T* x, const double* shift, const double* mul, const double* add,
                    const gradfuse::AffineArgs& a, T* out, int* nonfinite);
void image_affine(const uint8_t* x, const gradfuse::ImageLayout& l, const double* shift,
                  const double* mul, const double* add, float* out);

// ---- optim.cu: one launch per arena. The CPU update order (std::fma where the CPU has it).
// skip (device int, may be null): when *skip != 0 the kernel writes nothing (the fused
//   non-finite guard: arena_nonfinite_flag sets it on the device, no host round trip).
// scale (device double, may be null): multiplies the gradient as it is read, on top of
//   h.grad_scale (a clip_grad_norm_ coefficient computed on the device).
template <typename T>
void optim_step(const OptimHyper& h, T* param, const T* grad, T* s0, T* s1, T* s2, int64_t n,
                const int* skip = nullptr, const double* scale = nullptr);
// LAMB over an arena of nseg tensors (offsets / sizes: HOST arrays, in elements), as the CPU's
// lamb_step: the same 64Ki-element blocks and per-tensor trust ratio (sums in block order).
template <typename T>
void lamb_step(const OptimHyper& h, T* param, const T* grad, T* m, T* v, const int64_t* offsets,
               const int64_t* sizes, int64_t nseg);
// *flag |= 1 when x holds a NaN or inf (device int, not cleared here).
template <typename T>
void arena_nonfinite_flag(const T* x, int64_t n, int* flag);
// Device result (sum |x|^p, max |x| for p = inf; NaN propagates) into *out (a device double);
// accumulate = add to *out (max for inf) instead of overwriting. Blocks of a fixed size,
// combined in a fixed order: the bits do not depend on the launch.
template <typename T>
void arena_norm_reduce_dev(const T* x, int64_t n, double norm_type, double* out, bool accumulate);
// Host results (synchronize).
template <typename T>
double arena_norm_reduce(const T* x, int64_t n, double norm_type);
template <typename T>
bool arena_all_finite(const T* x, int64_t n);
template <typename T>
void arena_scale(T* x, int64_t n, double s);
template <typename T>
void arena_clamp(T* x, int64_t n, double lo, double hi);
// *coef = min(max_norm / (total_norm + 1e-6), 1) from the device-side total of
// arena_norm_reduce_dev (sum of |x|^p, so the p-th root is taken here; max for inf).
void clip_coef(const double* total, double norm_type, double max_norm, double* coef,
               double* norm_out);

}  // namespace gf::cuda
