// Device helpers shared by csrc/cuda/*.cu: launch shapes, 16-byte vector access, warp and block
// reductions, and device copies of the CPU's float32 approximations (common.h, activations.cpp)
// so the GPU's float32 results stay within an ulp or two of the CPU's.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/runtime.h"

namespace gf::cuda::dev {

constexpr int kThreads = 256;

// 16 bytes of T: float4 / double2.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using type = float4;
  static constexpr int n = 4;
};
template <>
struct Vec<double> {
  using type = double2;
  static constexpr int n = 2;
};

__device__ __forceinline__ void vget(const float4& v, float* o) {
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
__device__ __forceinline__ void vget(const double2& v, double* o) {
  o[0] = v.x; o[1] = v.y;
}
__device__ __forceinline__ float4 vmake(const float* o) { return make_float4(o[0], o[1], o[2], o[3]); }
__device__ __forceinline__ double2 vmake(const double* o) { return make_double2(o[0], o[1]); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- reductions
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}

// Sum (or max) over the block; every thread gets the result. `sh` holds 32 T.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read from a previous call
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : T(0);
  return warp_sum(v);
}
template <typename T>
__device__ __forceinline__ T block_max(T v, T* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : sh[0];
  return warp_max(v);
}

// A group of threads that works on one row: a warp (G = 32, several rows per block) or the
// whole block (G = 0). rank/size inside the group; sum/max over it.
template <int G>
struct Group {
  __device__ static int rank() { return G ? (threadIdx.x & 31) : threadIdx.x; }
  __device__ static int size() { return G ? 32 : blockDim.x; }
  template <typename T>
  __device__ static T sum(T v, T* sh) {
    if constexpr (G != 0) {
      (void)sh;
      return warp_sum(v);
    } else {
      return block_sum(v, sh);
    }
  }
  template <typename T>
  __device__ static T max(T v, T* sh) {
    if constexpr (G != 0) {
      (void)sh;
      return warp_max(v);
    } else {
      return block_max(v, sh);
    }
  }
};

// ---- float32 math as on the CPU (common.h exp_f32, activations.cpp); double uses CUDA's libm
__device__ __forceinline__ float exp_f32(float x) {
  float xc = x > 89.0f ? 89.0f : x;
  xc = xc < -104.0f ? -104.0f : xc;
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = p * r * r + r + 1.0f;
  const int k = static_cast<int>(kf);
  const int k1 = k >> 1;
  const int k2 = k - k1;
  return p * __int_as_float((k1 + 127) << 23) * __int_as_float((k2 + 127) << 23);
}
__device__ __forceinline__ float exp_t(float x) { return exp_f32(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float log_t(float x) { return logf(x); }
__device__ __forceinline__ double log_t(double x) { return log(x); }

}  // namespace gf::cuda::dev
