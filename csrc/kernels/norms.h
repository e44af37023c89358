// Normalization layers: batch norm, layer norm, RMS norm, group norm; forward and backward.
//
// Statistics are one read of the data: each row/channel is summed in blocks as
// s1 = sum(x - k), s2 = sum((x - k)^2) around a shift k = the first value of the row/channel
// (so 1000 + N(0,1) data loses nothing to cancellation), a block's sums in T (few terms per
// SIMD lane), blocks added in double. mean = k + s1/n, var = s2/n - (s1/n)^2 (biased).
// Every reduction over rows runs over FIXED chunks, merged in chunk order, so results are
// bitwise independent of the thread count (DESIGN.md, decision 4).
#pragma once

#include <cstdint>

namespace gradfuse {

// Row-wise normalization of a (rows, cols) array: LayerNorm (rms = false) or RMSNorm (rms = true).
struct RowNormArgs {
  int64_t rows = 0;
  int64_t cols = 0;
  double eps = 1e-5;
  bool rms = false;  // RMSNorm: no centering, x / sqrt(mean(x^2) + eps)
};

// y = (x - mean) * rstd * w + b per row (w, b may be nullptr: 1 and 0). mean (nullptr for rms)
// and rstd (rows,) are saved for the backward. Reads x once from memory, writes y once.
template <typename T>
void row_norm_forward(const T* x, const T* w, const T* b, const RowNormArgs& a, T* y, T* mean,
                      T* rstd);

// One fused pass: per row, xhat = (x - mean) rstd, g = w dy,
//   dx = rstd (g - mean(g) - xhat mean(g xhat))   (rms: without the mean(g) term)
// and dw += dy xhat, db += dy accumulated per fixed chunk of rows, chunks merged in order.
// Any of dx, dw, db may be nullptr (not wanted).
template <typename T>
void row_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                       const RowNormArgs& a, T* dx, T* dw, T* db);

// BatchNorm over (n, c, l) input (l = 1 for (N, C)): statistics per channel over n and l.
struct BatchNormArgs {
  int64_t n = 0, c = 0, l = 1;
  double eps = 1e-5;
  bool training = true;         // batch statistics (else the running ones)
  bool update_running = false;  // training only: update running_mean/var with factor
  double factor = 0.1;          // momentum, or 1/num_batches_tracked for a cumulative average
};

// training: save_mean/save_rstd = batch mean and 1/sqrt(biased var + eps); running stats (if
// update_running) r = (1 - factor) r + factor * stat, with the unbiased variance. eval:
// save_mean = running_mean, save_rstd = 1/sqrt(running_var + eps). Then y = (x - mean) rstd w + b.
// Two reads of x (statistics, then normalize) and one write of y.
template <typename T>
void batch_norm_forward(const T* x, const T* w, const T* b, T* running_mean, T* running_var,
                        const BatchNormArgs& a, T* y, T* save_mean, T* save_rstd);

// Pass 1: per channel sdy = sum dy, sdyx = sum dy (x - mean); dw = rstd sdyx, db = sdy.
// Pass 2: dx = rstd w (dy - sdy/m - (x - mean) rstd^2 sdyx/m) in training (m = n l), and
// dx = rstd w dy with running statistics (pass 1 is then skipped unless dw or db is wanted).
template <typename T>
void batch_norm_backward(const T* x, const T* dy, const T* w, const T* save_mean,
                         const T* save_rstd, const BatchNormArgs& a, T* dx, T* dw, T* db);

// SyncBatchNorm's pieces (one rank's shard; the caller merges the statistics and all-reduces
// the gradient sums across ranks in between, so the kernels stay free of communication).
// Per channel over n and l: mean and m2 = sum (x - mean)^2, in double (shifted sums as above).
template <typename T>
void batch_norm_stats(const T* x, const BatchNormArgs& a, double* mean, double* m2);

// Per channel: sdy = sum dy, sdyx = sum dy (x - mean), in double.
template <typename T>
void batch_norm_grad_sums(const T* x, const T* dy, const T* mean, const BatchNormArgs& a,
                          double* sdy, double* sdyx);

// dx = rstd w (dy - sdy/count - (x - mean) rstd^2 sdyx/count): the training backward with sums
// and element count taken over all ranks. One read of x and dy, one write of dx.
template <typename T>
void batch_norm_grad_input(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                           const double* sdy, const double* sdyx, double count,
                           const BatchNormArgs& a, T* dx);

// GroupNorm over (n, c, s): statistics per (sample, group of c/groups channels), affine per
// channel. mean/rstd are (n * groups).
struct GroupNormArgs {
  int64_t n = 0, c = 0, s = 1, groups = 1;
  double eps = 1e-5;
};

template <typename T>
void group_norm_forward(const T* x, const T* w, const T* b, const GroupNormArgs& a, T* y, T* mean,
                        T* rstd);

template <typename T>
void group_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                         const GroupNormArgs& a, T* dx, T* dw, T* db);

}  // namespace gradfuse
