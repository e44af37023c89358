// Fused log-softmax + negative log-likelihood (cross entropy) over rows of logits.
#pragma once

#include <cstdint>

namespace gradfuse {

struct CrossEntropyArgs {
  int64_t n = 0;                 // rows (batch)
  int64_t c = 0;                 // classes
  int64_t ignore_index = -100;   // rows with this target contribute nothing
  double label_smoothing = 0.0;  // epsilon in [0, 1]
};

// Sums over rows in row order (so independent of the thread count).
struct CrossEntropySums {
  double loss = 0.0;    // sum of row_loss
  double weight = 0.0;  // sum of weight[target] over rows not ignored: the 'mean' divisor
};

// Throws std::invalid_argument naming the first target outside [0, c) that is not ignore_index.
void check_targets(const int64_t* target, const CrossEntropyArgs& a);

// Per row i with target y, lse = log sum_j exp(x_j), eps = label_smoothing, w = weight
// (all ones when weight == nullptr):
//   row_loss[i] = (1 - eps) w_y (lse - x_y) + eps / c * sum_j w_j (lse - x_j),  0 if ignored
// which is PyTorch's cross_entropy with reduction='none'. lse is saved for the backward.
// Reads the logits twice (max, then exp-sum; the row stays in L1) and writes 2n values.
template <typename T>
CrossEntropySums cross_entropy_forward(const T* logits, const int64_t* target, const T* weight,
                                       const CrossEntropyArgs& a, T* row_loss, T* lse);

// dlogits[i, j] = g_i * ((1 - eps) w_y (p_j - [j == y]) + eps / c * (W p_j - w_j)),
// p = softmax(x_i) recomputed as exp(x - lse), W = sum_j w_j, g_i = grad_rows[i] * grad_scale
// (grad_rows == nullptr means 1). One read of the logits, one write of dlogits.
template <typename T>
void cross_entropy_backward(const T* logits, const int64_t* target, const T* weight, const T* lse,
                            const T* grad_rows, double grad_scale, const CrossEntropyArgs& a,
                            T* dlogits);

}  // namespace gradfuse
