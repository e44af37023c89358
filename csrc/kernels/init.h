// Random fills from the Philox4x32-10 stream (csrc/rng/philox.h): uniform, normal, truncated
// normal, Bernoulli, and dropout forward (mask and scale in one pass) / backward.
//
// Every fill takes the generator's (seed, offset), writes n values and returns the number of
// 128-bit Philox blocks it consumed, 16 ceil(n / V) with V values per tile of 16 blocks
// (philox.h: V = 64 for float32 and for masks, 32 for float64); the caller advances its offset by
// that much. Value i depends only on (seed, offset, i), so results are bitwise independent of the
// thread count. Arguments are checked here (std::invalid_argument naming the argument) before
// anything is written.
#pragma once

#include <cstdint>

namespace gradfuse {

struct PhiloxStream {
  uint64_t seed = 0;    // the Philox key
  uint64_t offset = 0;  // first block of this fill
};

// out[i] = a + (b - a) u_i in the dtype, u_i uniform on [0, 1) (philox.h: u01_f32 / u01_f64),
// clamped to the dtype's values in [a, b) so that b itself never appears (a == b fills a).
// Requires a <= b, both finite, b - a finite in T.
template <typename T>
uint64_t uniform_fill(T* out, int64_t n, PhiloxStream s, double a, double b);

// out[i] = mean + std z_i, z_i standard normal by Box-Muller (philox.h). std >= 0, both finite.
template <typename T>
uint64_t normal_fill(T* out, int64_t n, PhiloxStream s, double mean, double std);

struct TruncNormalArgs {
  double mean = 0.0, std = 1.0;  // of the parent normal
  double a = -2.0, b = 2.0;      // bounds, absolute (as PyTorch's trunc_normal_), may be +-inf
};

// Normal(mean, std) conditioned on [a, b], by inverse CDF: with alpha, beta the bounds in std
// units (reflected to the lower half, -x for x, when alpha + beta > 0, so the CDF values keep
// their relative precision in an upper tail), p_i = Phi(alpha) + u_i (Phi(beta) - Phi(alpha))
// with u_i uniform on (0, 1) (float32: (w + 1/2) 2^-32; float64: (bits53 + 1/2) 2^-53),
// x_i = Phi^-1(p_i): float64 by Acklam's approximation (relative error < 1.2e-9) refined by one
// Halley step with the C library's erfc and exp; float32 in float32 arithmetic from p_i in double
// (philox.h: inv_normal_cdf_f32, within 6 float32 ulp) with mean + std x_i in float32, or, when
// the interval reaches tail masses below float32's normal range (beyond ~13 std) or mean or std
// do not fit float32, by Acklam's in double, x_i clamped to [alpha, beta] and mean + std x_i in
// double. The result is clamped to the dtype's values in [a, b]: bounds hold exactly. Requires std > 0, a <= b, and mass Phi(beta) - Phi(alpha) representable in double
// (the interval within ~37 std of the mean).
template <typename T>
uint64_t trunc_normal_fill(T* out, int64_t n, PhiloxStream s, const TruncNormalArgs& args);

// out[i] = 1 with probability p (exactly round(p 2^32) / 2^32: the word is below that), else 0.
template <typename T>
uint64_t bernoulli_fill(T* out, int64_t n, PhiloxStream s, double p);

// Inverted dropout in one pass: keep_i ~ Bernoulli(1 - p) as in bernoulli_fill, out[i] =
// x[i] * (keep_i ? 1 / (1 - p) : 0) (NaN and inf propagate as in PyTorch's x * mask * scale),
// mask[i] = keep_i (mask may be nullptr when no backward will need it). p in [0, 1]; p = 1
// drops everything (scale 0, as PyTorch). Reads n values, writes n values and n mask bytes.
template <typename T>
uint64_t dropout_forward(const T* x, int64_t n, PhiloxStream s, double p, T* out, uint8_t* mask);

// dx[i] = grad[i] * (mask[i] ? scale : 0).
template <typename T>
void dropout_backward(const T* grad, const uint8_t* mask, int64_t n, double scale, T* dx);

// Philox4x32-10 of one counter under one key (the published known-answer vectors test this).
void philox4x32_10_block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

// The words of tiles 0 .. n_tiles - 1 in fill order (out[64 t + 16 r + j]) from one Philox
// implementation: isa 0 = the one fills use, 1 = portable, 2 = AVX2, 3 = AVX-512. Returns false
// (writing nothing) when this CPU or build lacks it. Tests check that every path agrees.
bool philox_tile_words(uint64_t seed, uint64_t offset, int64_t n_tiles, int isa, uint32_t* out);

// The raw stream: out[4 j + r] = word r of block offset + j, for j < n_blocks (tests, tools).
void philox_words(uint64_t seed, uint64_t offset, int64_t n_blocks, uint32_t* out);

}  // namespace gradfuse
