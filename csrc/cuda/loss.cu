// Fused log-softmax + NLL (cross entropy) on the GPU (CPU: csrc/kernels/loss.cpp): a warp per
// row up to 1024 classes (8 rows per block), a block per row above. Same formulas as the CPU:
// lse = m + log sum exp(x - m); with label smoothing the deviation term sum_j w_j (m - x_j) has
// only non-negative terms (no cancellation).
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace gf::cuda {
namespace {

using namespace dev;

// status[0]: 1 + the first row whose target is out of range (atomicMin over 1-based rows; 0
// means none: it starts at INT64_MAX and is mapped below).
template <typename T, int G>
__global__ void ce_forward_kernel(const T* __restrict__ x, const int64_t* __restrict__ target,
                                  const T* __restrict__ w, T wsum, int64_t n, int64_t c,
                                  int64_t ignore, double eps, T* __restrict__ row_loss,
                                  T* __restrict__ lse, unsigned long long* bad_row) {
  __shared__ T sh[32];
  using Gr = Group<G>;
  const int64_t per_block = G ? blockDim.x / 32 : 1;
  const int64_t i = int64_t(blockIdx.x) * per_block + (G ? threadIdx.x / 32 : 0);
  if (i >= n) return;
  const int lane = Gr::rank(), gs = Gr::size();
  const int64_t y = target[i];
  if (y == ignore || y < 0 || y >= c) {
    if (lane == 0) {
      row_loss[i] = 0;
      lse[i] = 0;
      if (y != ignore) atomicMin(bad_row, static_cast<unsigned long long>(i));
    }
    return;
  }
  const T* xr = x + i * c;
  T m = xr[0];
  for (int64_t j = lane; j < c; j += gs) m = xr[j] > m ? xr[j] : m;
  m = Gr::max(m, sh);
  T s = 0;
  for (int64_t j = lane; j < c; j += gs) s += exp_t(xr[j] - m);
  s = Gr::sum(s, sh);
  T dev = 0;
  if (eps != 0.0) {
    for (int64_t j = lane; j < c; j += gs) dev += w ? w[j] * (m - xr[j]) : m - xr[j];
    dev = Gr::sum(dev, sh);
  }
  if (lane == 0) {
    const T log_s = log_t(s);
    const T l = m + log_s;
    const T wy = w ? w[y] : T(1);
    T loss = wy * (l - xr[y]);
    if (eps != 0.0) loss = T(1 - eps) * loss + T(eps / double(c)) * (wsum * log_s + dev);
    row_loss[i] = loss;
    lse[i] = l;
  }
}

template <typename T, int G>
__global__ void ce_backward_kernel(const T* __restrict__ x, const int64_t* __restrict__ target,
                                   const T* __restrict__ w, T wsum, const T* __restrict__ lse,
                                   const T* __restrict__ grad_rows, double grad_scale, int64_t n,
                                   int64_t c, int64_t ignore, double eps, T* __restrict__ dx) {
  using Gr = Group<G>;
  const int64_t per_block = G ? blockDim.x / 32 : 1;
  const int64_t i = int64_t(blockIdx.x) * per_block + (G ? threadIdx.x / 32 : 0);
  if (i >= n) return;
  const int lane = Gr::rank(), gs = Gr::size();
  const int64_t y = target[i];
  T* dr = dx + i * c;
  if (y == ignore || y < 0 || y >= c) {
    for (int64_t j = lane; j < c; j += gs) dr[j] = 0;
    return;
  }
  const T* xr = x + i * c;
  const T g = T((grad_rows ? double(grad_rows[i]) : 1.0) * grad_scale);
  const T wy = w ? w[y] : T(1);
  const T a = g * (T(1 - eps) * wy + T(eps / double(c)) * wsum);
  const T b = g * T(eps / double(c));
  const T l = lse[i];
  const T hit = g * T(1 - eps) * wy;
  for (int64_t j = lane; j < c; j += gs) {
    T v = a * exp_t(xr[j] - l) - (w ? b * w[j] : b);
    if (j == y) v -= hit;
    dr[j] = v;
  }
}

// Row sums in row order on one block (deterministic): loss and the 'mean' weight.
template <typename T>
__global__ void ce_sums_kernel(const T* __restrict__ row_loss, const int64_t* __restrict__ target,
                               const T* __restrict__ w, int64_t n, int64_t c, int64_t ignore,
                               double* out) {
  __shared__ double sh[32];
  double sl = 0, sw = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t y = target[i];
    if (y == ignore || y < 0 || y >= c) continue;
    sl += double(row_loss[i]);
    sw += w ? double(w[y]) : 1.0;
  }
  sl = block_sum(sl, sh);
  sw = block_sum(sw, sh);
  if (threadIdx.x == 0) {
    out[0] = sl;
    out[1] = sw;
  }
}

template <typename T>
__global__ void weight_total_kernel(const T* w, int64_t c, T* out) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s += double(w[j]);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) *out = T(s);
}

}  // namespace

// The class-weight total is needed as a kernel argument: computed on the device and read back
// (weighted CE with label smoothing only; one small sync).
template <typename T>
static T weight_total(const T* w, int64_t c) {
  if (!w) return T(c);
  T* d = static_cast<T*>(alloc(sizeof(T)));
  weight_total_kernel<T><<<1, 256, 0, stream()>>>(w, c, d);
  T h;
  cudaError_t e = cudaMemcpyAsync(&h, d, sizeof(T), cudaMemcpyDeviceToHost, stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
  gf::cuda::free(d);
  GF_CUDA_CHECK(e);
  return h;
}

template <typename T>
CrossEntropySums cross_entropy_forward(const T* logits, const int64_t* target, const T* weight,
                                       const CrossEntropyArgs& a, T* row_loss, T* lse) {
  CrossEntropySums sums;
  if (a.n == 0) return sums;
  const T wsum = (weight && a.label_smoothing != 0.0) ? weight_total(weight, a.c) : T(a.c);
  struct Scratch {
    double sums[2];
    unsigned long long bad;
  };
  auto* s = static_cast<Scratch*>(alloc(sizeof(Scratch)));
  GF_CUDA_CHECK(cudaMemsetAsync(&s->bad, 0xff, sizeof(unsigned long long), stream()));
  if (a.c <= 1024) {
    const unsigned grid = static_cast<unsigned>((a.n + 7) / 8);
    ce_forward_kernel<T, 32><<<grid, kThreads, 0, stream()>>>(
        logits, target, weight, wsum, a.n, a.c, a.ignore_index, a.label_smoothing, row_loss, lse,
        &s->bad);
  } else {
    ce_forward_kernel<T, 0><<<static_cast<unsigned>(a.n), 512, 0, stream()>>>(
        logits, target, weight, wsum, a.n, a.c, a.ignore_index, a.label_smoothing, row_loss, lse,
        &s->bad);
  }
  GF_CUDA_CHECK_LAUNCH("cross_entropy_forward");
  ce_sums_kernel<T><<<1, 1024, 0, stream()>>>(row_loss, target, weight, a.n, a.c, a.ignore_index,
                                             s->sums);
  GF_CUDA_CHECK_LAUNCH("cross_entropy_forward (sums)");
  Scratch h;
  cudaError_t e = cudaMemcpyAsync(&h, s, sizeof(Scratch), cudaMemcpyDeviceToHost, stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
  gf::cuda::free(s);
  GF_CUDA_CHECK(e);
  if (h.bad != ~0ull) {
    int64_t t = 0;
    GF_CUDA_CHECK(cudaMemcpy(&t, target + h.bad, sizeof(int64_t), cudaMemcpyDeviceToHost));
    throw std::invalid_argument("target: class index " + std::to_string(t) + " at position " +
                                std::to_string(h.bad) + " is out of range [0, " +
                                std::to_string(a.c) + ")");
  }
  sums.loss = h.sums[0];
  sums.weight = h.sums[1];
  return sums;
}

template <typename T>
void cross_entropy_backward(const T* logits, const int64_t* target, const T* weight, const T* lse,
                            const T* grad_rows, double grad_scale, const CrossEntropyArgs& a,
                            T* dlogits) {
  if (a.n == 0) return;
  const T wsum = (weight && a.label_smoothing != 0.0) ? weight_total(weight, a.c) : T(a.c);
  if (a.c <= 1024) {
    const unsigned grid = static_cast<unsigned>((a.n + 7) / 8);
    ce_backward_kernel<T, 32><<<grid, kThreads, 0, stream()>>>(
        logits, target, weight, wsum, lse, grad_rows, grad_scale, a.n, a.c, a.ignore_index,
        a.label_smoothing, dlogits);
  } else {
    ce_backward_kernel<T, 0><<<static_cast<unsigned>(a.n), 512, 0, stream()>>>(
        logits, target, weight, wsum, lse, grad_rows, grad_scale, a.n, a.c, a.ignore_index,
        a.label_smoothing, dlogits);
  }
  GF_CUDA_CHECK_LAUNCH("cross_entropy_backward");
}

#define GF_INST(T)                                                                               \
  template CrossEntropySums cross_entropy_forward<T>(const T*, const int64_t*, const T*,         \
                                                     const CrossEntropyArgs&, T*, T*);           \
  template void cross_entropy_backward<T>(const T*, const int64_t*, const T*, const T*, const T*, \
                                          double, const CrossEntropyArgs&, T*);
GF_INST(float)
GF_INST(double)
#undef GF_INST

}  // namespace gf::cuda
