// Element-wise activations and softmax / log-softmax: forward and backward over raw arrays.
#pragma once

#include <cstdint>

namespace gradfuse {

enum class Activation : int {
  Sigmoid = 0,
  Tanh = 1,
  Relu = 2,
  LeakyRelu = 3,  // a = negative_slope
  Elu = 4,        // a = alpha
  GeluErf = 5,    // exact: x * Phi(x)
  GeluTanh = 6,   // tanh approximation
  Silu = 7,
  Softplus = 8,   // a = beta, b = threshold
};

struct ActivationArgs {
  Activation op = Activation::Relu;
  double a = 0.0;
  double b = 0.0;
};

// What the backward of each op reads besides the output gradient (one pass, no recompute of
// the forward's value): the forward output y for sigmoid, tanh, relu and elu (alpha >= 0),
// the input x for the others (leaky_relu reads either: sign(y) == sign(x) when slope >= 0).
bool activation_backward_uses_output(const ActivationArgs& a);

// y[i] = f(x[i]), i < n. x == y is allowed (in place). Reads n, writes n values.
template <typename T>
void activation_forward(const T* x, int64_t n, const ActivationArgs& a, T* y);

// dx[i] = g[i] * f'(x[i]) with f' computed from `saved` (y or x, see above). dx may alias g.
template <typename T>
void activation_backward(const T* g, const T* saved, int64_t n, const ActivationArgs& a, T* dx);

// Softmax over the middle axis of a C-contiguous (outer, dim, inner) array; log = log_softmax.
// inner == 1 is the last-dim case (rows stay in L1 between the max, exp-sum and write passes);
// inner > 1 works on tiles of columns so every pass reads contiguous memory.
template <typename T>
void softmax_forward(const T* x, int64_t outer, int64_t dim, int64_t inner, bool log, T* y);

// softmax:     dx = y * (g - sum_d g y)
// log_softmax: dx = g - exp(y) * sum_d g
template <typename T>
void softmax_backward(const T* g, const T* y, int64_t outer, int64_t dim, int64_t inner, bool log,
                      T* dx);

}  // namespace gradfuse
