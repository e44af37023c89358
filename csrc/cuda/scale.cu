// The scalers' transform on the GPU (CPU: csrc/kernels/scale.cpp): the per-column affine map
// out = clip((x - shift) * mul + add, lo, hi) in double, rounded once to x's dtype, with the
// NaN / inf census the CPU returns folded into the same pass (a device flag pair), and the
// uint8 image map (pixels -> float32). One read, one write per element.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace gf::cuda {
namespace {

using namespace dev;

template <typename T, bool kClip>
__global__ void affine_kernel(const T* __restrict__ x, const double* __restrict__ shift,
                              const double* __restrict__ mul, const double* __restrict__ add,
                              int64_t total, int64_t d, double lo, double hi, T* __restrict__ out,
                              int* nonfinite) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  bool nan = false, inf = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t j = i % d;
    const double v = double(x[i]);
    nan |= isnan(v);
    inf |= isinf(v);
    double y = (v - shift[j]) * mul[j] + add[j];
    if (kClip) {
      y = y < lo ? lo : y;
      y = y > hi ? hi : y;
    }
    out[i] = T(y);
  }
  const int any_nan = __syncthreads_or(nan), any_inf = __syncthreads_or(inf);
  if (threadIdx.x == 0 && nonfinite) {
    if (any_nan) atomicOr(nonfinite, 1);
    if (any_inf) atomicOr(nonfinite + 1, 1);
  }
}

__global__ void image_affine_kernel(const uint8_t* __restrict__ x, int64_t total, int64_t channels,
                                    int64_t inner, const double* __restrict__ shift,
                                    const double* __restrict__ mul,
                                    const double* __restrict__ add, float* __restrict__ out) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t c = (inner == 1 ? i : i / inner) % channels;
    out[i] = float((double(x[i]) - shift[c]) * mul[c] + add[c]);
  }
}

}  // namespace

template <typename T>
void affine_columns(const T* x, const double* shift, const double* mul, const double* add,
                    const gradfuse::AffineArgs& a, T* out, int* nonfinite) {
  const int64_t total = a.n * a.d;
  if (total <= 0) return;
  const unsigned grid = grid_for(size_t(total), kThreads);
  if (a.clip) {
    affine_kernel<T, true><<<grid, kThreads, 0, stream()>>>(x, shift, mul, add, total, a.d, a.lo,
                                                           a.hi, out, nonfinite);
  } else {
    affine_kernel<T, false><<<grid, kThreads, 0, stream()>>>(x, shift, mul, add, total, a.d, a.lo,
                                                            a.hi, out, nonfinite);
  }
  GF_CUDA_CHECK_LAUNCH("affine_columns");
}

void image_affine(const uint8_t* x, const gradfuse::ImageLayout& l, const double* shift,
                  const double* mul, const double* add, float* out) {
  const int64_t total = l.outer * l.channels * l.inner;
  if (total <= 0) return;
  image_affine_kernel<<<grid_for(size_t(total), kThreads), kThreads, 0, stream()>>>(
      x, total, l.channels, l.inner, shift, mul, add, out);
  GF_CUDA_CHECK_LAUNCH("image_affine");
}

template void affine_columns<float>(const float*, const double*, const double*, const double*,
                                    const gradfuse::AffineArgs&, float*, int*);
template void affine_columns<double>(const double*, const double*, const double*, const double*,
                                     const gradfuse::AffineArgs&, double*, int*);

}  // namespace gf::cuda
