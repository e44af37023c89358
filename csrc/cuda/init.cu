// Random fills and dropout on the GPU (CPU: csrc/kernels/init.cpp), bitwise the CPU's values.
//
// The counter layout of csrc/rng/philox.h is what makes that possible: value i of a fill
// depends only on (seed, offset, i). Here one thread computes one Philox block, block j of
// tile T (the tile's 16 blocks are 16 consecutive threads), and writes that block's values at
// their places in the tile: word r of block j is value 64 T + 16 r + j (V = 64), and the
// float64 maps' two values are 32 T + j and 32 T + 16 + j (V = 32). The word -> value maps
// are philox.h's own functions. This file MUST be compiled with --fmad=false: an a * b + c
// contracted into an FMA rounds once where the CPU (-ffp-contract=off) rounds twice.
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "rng/fill_args.h"
#include "rng/philox.h"

namespace gf::cuda {
namespace {

using namespace dev;
namespace ph = gradfuse::philox;
constexpr int64_t kTB = ph::kTileBlocks;  // 16

using gradfuse::fill_args::blocks_for;
using gradfuse::fill_args::check_n;

// Map: (w0..w3, vals) -> writes V / 16 values of block j into v[0..]; kPer values per block.
struct UniformF32 {
  float lo, span, amin, bmax;
  static constexpr int kPer = 4;
  __device__ void operator()(const uint32_t* w, float* v) const {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float x = lo + span * ph::u01_f32(w[r]);
      x = x < amin ? amin : x;
      v[r] = x > bmax ? bmax : x;
    }
  }
};
struct UniformF64 {
  double lo, span, amin, bmax;
  static constexpr int kPer = 2;
  __device__ void operator()(const uint32_t* w, double* v) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      double x = lo + span * ph::u01_f64(w[2 * h], w[2 * h + 1]);
      x = x < amin ? amin : x;
      v[h] = x > bmax ? bmax : x;
    }
  }
};
struct NormalF32 {
  float mean, std;
  static constexpr int kPer = 4;
  __device__ void operator()(const uint32_t* w, float* v) const {
    float z0, z1, z2, z3;
    ph::box_muller_f32(w[0], w[1], z0, z1);
    ph::box_muller_f32(w[2], w[3], z2, z3);
    v[0] = mean + std * z0;
    v[1] = mean + std * z1;
    v[2] = mean + std * z2;
    v[3] = mean + std * z3;
  }
};
struct NormalF64 {
  double mean, std;
  static constexpr int kPer = 2;
  __device__ void operator()(const uint32_t* w, double* v) const {
    double z0, z1;
    ph::box_muller_f64(w[0], w[1], w[2], w[3], z0, z1);
    v[0] = mean + std * z0;
    v[1] = mean + std * z1;
  }
};
template <typename T>
struct Bernoulli {
  uint32_t tm1;
  T one;
  static constexpr int kPer = 4;
  __device__ void operator()(const uint32_t* w, T* v) const {
#pragma unroll
    for (int r = 0; r < 4; ++r) v[r] = w[r] <= tm1 ? one : T(0);
  }
};

// Thread t = block t of the fill (tile t / 16, block j = t % 16); its values go to
// tile_base + 16 r + j.
template <typename T, typename Map>
__global__ void fill_kernel(Map map, uint64_t seed, uint64_t offset, int64_t n, int64_t nblocks,
                            T* __restrict__ out) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < nblocks; t += stride) {
    uint32_t w[4];
    ph::block_words(seed, offset + static_cast<uint64_t>(t), w[0], w[1], w[2], w[3]);
    T v[Map::kPer];
    map(w, v);
    const int64_t base = (t / kTB) * (kTB * Map::kPer) + t % kTB;
#pragma unroll
    for (int r = 0; r < Map::kPer; ++r) {
      const int64_t i = base + r * kTB;
      if (i < n) out[i] = v[r];
    }
  }
}

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, uint64_t seed, uint64_t offset, int64_t n,
                               int64_t nblocks, uint32_t tm1, bool keep_any, T scale,
                               T* __restrict__ out, uint8_t* __restrict__ mask) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < nblocks; t += stride) {
    uint32_t w[4];
    ph::block_words(seed, offset + static_cast<uint64_t>(t), w[0], w[1], w[2], w[3]);
    const int64_t base = (t / kTB) * (4 * kTB) + t % kTB;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t i = base + r * kTB;
      if (i < n) {
        const bool keep = (w[r] <= tm1) && keep_any;
        out[i] = x[i] * (keep ? scale : T(0));
        if (mask) mask[i] = keep ? 1 : 0;
      }
    }
  }
}

template <typename T>
__global__ void dropout_bwd_kernel(const T* __restrict__ g, const uint8_t* __restrict__ mask,
                                   int64_t n, T scale, T* __restrict__ dx) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dx[i] = g[i] * (mask[i] ? scale : T(0));
  }
}

__global__ void words_kernel(uint64_t seed, uint64_t offset, int64_t nb, uint32_t* out) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < nb; j += stride) {
    uint32_t* o = out + 4 * j;
    ph::block_words(seed, offset + static_cast<uint64_t>(j), o[0], o[1], o[2], o[3]);
  }
}

template <typename T, typename Map>
uint64_t fill(const Map& map, PhiloxStream s, T* out, int64_t n, int64_t vals_per_tile) {
  const uint64_t nb = blocks_for(n, vals_per_tile);
  if (n > 0) {
    fill_kernel<T, Map><<<grid_for(size_t(nb), kThreads), kThreads, 0, stream()>>>(
        map, s.seed, s.offset, n, static_cast<int64_t>(nb), out);
    GF_CUDA_CHECK_LAUNCH("random fill");
  }
  return nb;
}

}  // namespace

template <typename T>
uint64_t uniform_fill(T* out, int64_t n, PhiloxStream s, double a, double b) {
  check_n(n);
  const auto u = gradfuse::fill_args::uniform<T>(a, b);
  if constexpr (sizeof(T) == 4) {
    return fill(UniformF32{u.lo, u.span, u.cmin, u.cmax}, s, out, n, 64);
  } else {
    return fill(UniformF64{u.lo, u.span, u.cmin, u.cmax}, s, out, n, 32);
  }
}

template <typename T>
uint64_t normal_fill(T* out, int64_t n, PhiloxStream s, double mean, double std) {
  check_n(n);
  gradfuse::fill_args::check_normal(mean, std);
  if constexpr (sizeof(T) == 4) {
    return fill(NormalF32{static_cast<float>(mean), static_cast<float>(std)}, s, out, n, 64);
  } else {
    return fill(NormalF64{mean, std}, s, out, n, 32);
  }
}

template <typename T>
uint64_t bernoulli_fill(T* out, int64_t n, PhiloxStream s, double p) {
  check_n(n);
  gradfuse::fill_args::check_probability(p);
  const bool never = ph::bernoulli_never(p);
  return fill(Bernoulli<T>{ph::bernoulli_threshold_minus1(p), never ? T(0) : T(1)}, s, out, n,
              64);
}

template <typename T>
uint64_t dropout_forward(const T* x, int64_t n, PhiloxStream s, double p, T* out, uint8_t* mask) {
  check_n(n);
  const auto d = gradfuse::fill_args::dropout<T>(p);
  const uint64_t nb = blocks_for(n, 64);
  if (n > 0) {
    dropout_kernel<T><<<grid_for(size_t(nb), kThreads), kThreads, 0, stream()>>>(
        x, s.seed, s.offset, n, static_cast<int64_t>(nb), d.tm1, !d.none, d.scale, out, mask);
    GF_CUDA_CHECK_LAUNCH("dropout_forward");
  }
  return nb;
}

template <typename T>
void dropout_backward(const T* grad, const uint8_t* mask, int64_t n, double scale, T* dx) {
  check_n(n);
  if (n == 0) return;
  dropout_bwd_kernel<T><<<grid_for(size_t(n), kThreads), kThreads, 0, stream()>>>(
      grad, mask, n, static_cast<T>(scale), dx);
  GF_CUDA_CHECK_LAUNCH("dropout_backward");
}

void philox_words(uint64_t seed, uint64_t offset, int64_t n_blocks, uint32_t* out) {
  check_n(n_blocks);
  if (n_blocks == 0) return;
  words_kernel<<<grid_for(size_t(n_blocks), kThreads), kThreads, 0, stream()>>>(seed, offset,
                                                                               n_blocks, out);
  GF_CUDA_CHECK_LAUNCH("philox_words");
}

#define GF_INST(T)                                                                              \
  template uint64_t uniform_fill<T>(T*, int64_t, PhiloxStream, double, double);                \
  template uint64_t normal_fill<T>(T*, int64_t, PhiloxStream, double, double);                 \
  template uint64_t bernoulli_fill<T>(T*, int64_t, PhiloxStream, double);                      \
  template uint64_t dropout_forward<T>(const T*, int64_t, PhiloxStream, double, T*, uint8_t*); \
  template void dropout_backward<T>(const T*, const uint8_t*, int64_t, double, T*);
GF_INST(float)
GF_INST(double)
#undef GF_INST

}  // namespace gf::cuda
