// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3" (SC'11), and the maps from its 32-bit words to the distributions
// gradfuse samples. One header for CPU and CUDA: every function is GF_HOST_DEVICE, branch free
// (selects only, so a loop over blocks vectorizes), and uses only + - * / and sqrt, which IEEE 754
// rounds exactly: compiled without floating-point contraction (-ffp-contract=off on the host,
// --fmad=false under nvcc) the same (seed, offset) gives the same bits on any ISA or device.
// The one exception is the float64 truncated normal's refinement step, which calls the C
// library's erfc and exp (see trunc_normal_refine_f64).
//
// Counter layout (the contract every fill follows; gradfuse.random documents it for users):
//   key       = (seed & 0xffffffff, seed >> 32)
//   counter   = (block & 0xffffffff, block >> 32, 0, 0)             (block mod 2^64)
// A fill reads tiles of 16 consecutive blocks, tile T = blocks offset + 16 T .. offset + 16 T + 15,
// and orders the tile's 64 words as W_T[16 r + j] = word r of block offset + 16 T + j (one
// vector lane per block on a CPU, one thread per block on a GPU; both store whole rows). The
// values of tile T are, with V values per tile:
//   V = 64, one word each:  float32 uniform and truncated normal, Bernoulli and dropout masks
//                           (any dtype): value 64 T + p is made from W_T[p];
//   V = 64, float32 normal: words (0, 1) of block j give values 64 T + j (r cos) and
//                           64 T + 16 + j (r sin); words (2, 3) give 64 T + 32 + j, 64 T + 48 + j;
//   V = 32, float64 uniform and truncated normal: value 32 T + 16 h + j from words (2h, 2h + 1)
//                           of block j (53 bits);
//   V = 32, float64 normal: the four words of block j give values 32 T + j (r cos) and
//                           32 T + 16 + j (r sin).
// A fill of n values uses ceil(n / V) tiles and advances the generator's offset by
// 16 ceil(n / V) blocks. Value i depends only on (seed, offset, i): a fill is bitwise the same on
// any number of threads (or GPU blocks), and fills of n1 (a multiple of V) and n2 values give
// exactly the values of one fill of n1 + n2.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>  // memcpy bit casts on the host (nvcc's host pass too)

#ifdef __CUDACC__
#define GF_HOST_DEVICE __host__ __device__ __forceinline__
#else
// always_inline: these must be inlined into each multiversioned (target_clones) kernel, or the
// loop calling them runs at the baseline ISA's vector width.
#if defined(__GNUC__)
#define GF_HOST_DEVICE inline __attribute__((always_inline))
#else
#define GF_HOST_DEVICE inline
#endif
#endif

namespace gradfuse {
namespace philox {

// Multipliers and Weyl key increments of Philox4x32 (Random123, philox.h).
constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kRounds = 10;
constexpr int kTileBlocks = 16;  // blocks per tile of a fill (the layout above)

// One Philox S-box round: two 32x32->64 multiplies; the high halves are mixed with the other
// two words and the key (a Feistel-like step), the low halves are carried over.
GF_HOST_DEVICE void round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                          uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
}

// Philox4x32-10 in place on the counter (c0..c3): round r (r = 0..9) uses key + r * (kW0, kW1).
GF_HOST_DEVICE void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                                  uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kRounds; ++r) {
    round(c0, c1, c2, c3, k0, k1);
    k0 += kW0;
    k1 += kW1;
  }
}

// The four words of block `block` of the stream keyed by `seed` (the counter layout above).
GF_HOST_DEVICE void block_words(uint64_t seed, uint64_t block, uint32_t& w0, uint32_t& w1,
                                uint32_t& w2, uint32_t& w3) {
  w0 = static_cast<uint32_t>(block);
  w1 = static_cast<uint32_t>(block >> 32);
  w2 = 0;
  w3 = 0;
  philox4x32_10(w0, w1, w2, w3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// ---------------------------------------------------------------- uniform maps (exact)
// Each is exact: the integer has at most 24 (53) bits, so the conversion and the scaling by a
// power of two round nothing.

// [0, 1), multiples of 2^-24: the top 24 bits of w.
GF_HOST_DEVICE float u01_f32(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(w >> 8)) * 5.9604644775390625e-8f;  // 2^-24
}
// (0, 1]: (top 24 bits + 1) * 2^-24, for a logarithm that must not see 0.
GF_HOST_DEVICE float u01_open_f32(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(w >> 8) + 1) * 5.9604644775390625e-8f;
}
// The 53-bit integer (hi << 21) | (lo >> 11): all of hi and the top 21 bits of lo.
GF_HOST_DEVICE int64_t bits53(uint32_t hi, uint32_t lo) {
  return static_cast<int64_t>((static_cast<uint64_t>(hi) << 21) | (lo >> 11));
}
// [0, 1), multiples of 2^-53.
GF_HOST_DEVICE double u01_f64(uint32_t hi, uint32_t lo) {
  return static_cast<double>(bits53(hi, lo)) * 1.1102230246251565e-16;  // 2^-53
}
// (0, 1]: (bits53 + 1) * 2^-53.
GF_HOST_DEVICE double u01_open_f64(uint32_t hi, uint32_t lo) {
  return static_cast<double>(bits53(hi, lo) + 1) * 1.1102230246251565e-16;
}

// ---------------------------------------------------------------- bit casts
GF_HOST_DEVICE uint32_t f32_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
GF_HOST_DEVICE float bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}
GF_HOST_DEVICE uint64_t f64_bits(double x) {
#ifdef __CUDA_ARCH__
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
GF_HOST_DEVICE double bits_f64(uint64_t u) {
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(u));
#else
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// ---------------------------------------------------------------- log, sin and cos
// Our own polynomials rather than libm: libm calls would stop the loops vectorizing, and CUDA's
// libm differs from glibc's in the last bit.

// ln(x) for normal x > 0. x = m 2^e with m in [sqrt(1/2), sqrt(2)); with f = m - 1 (exact) and
// s = f / (2 + f), ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), |s| <= 0.1716, so the series
// through s^9 is within 2e-9 relative (float32: ~2 ulp in all). e ln 2 is added in two parts
// (ln2_hi has 8 significant bits, so e * ln2_hi is exact for |e| < 2^16).
GF_HOST_DEVICE float log_f32(float x) {
  const uint32_t b = f32_bits(x);
  int32_t e = static_cast<int32_t>(b >> 23) - 127;
  float m = bits_f32((b & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float p = z * (0.666666667f + z * (0.4f + z * (0.285714286f + z * 0.222222222f)));
  const float lnm = 2.0f * s + s * p;
  const float ef = static_cast<float>(e);
  return ef * 0.693359375f + (lnm + ef * -2.12194440e-4f);
}

// ln(x) for normal x > 0, float64: the same reduction, the atanh series through s^21
// (truncation < 1e-17 relative), fdlibm's split of ln 2 (ln2_hi has 32 significant bits).
GF_HOST_DEVICE double log_f64(double x) {
  const uint64_t b = f64_bits(x);
  int64_t e = static_cast<int64_t>(b >> 52) - 1023;
  double m = bits_f64((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  const bool big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  e = big ? e + 1 : e;
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double p = 1.0 / 21;
  p = p * z + 1.0 / 19;
  p = p * z + 1.0 / 17;
  p = p * z + 1.0 / 15;
  p = p * z + 1.0 / 13;
  p = p * z + 1.0 / 11;
  p = p * z + 1.0 / 9;
  p = p * z + 1.0 / 7;
  p = p * z + 1.0 / 5;
  p = p * z + 1.0 / 3;
  const double lnm = 2.0 * s + 2.0 * s * (z * p);
  const double ed = static_cast<double>(e);
  return ed * 6.93147180369123816490e-01 + (lnm + ed * 1.90821492927058770002e-10);
}

// sin(2 pi u) and cos(2 pi u) for u in [0, 1). The reduction is exact because u is a dyadic
// rational: q = round(4u) in 0..4, d = u - q/4 in [-1/8, 1/8] (Sterbenz: no rounding), so
// 2 pi u = q pi/2 + z with z = 2 pi d in [-pi/4, pi/4], where the Taylor series of sin through
// z^9 and of cos through z^10 are within 3e-8 (float32); the quadrant q picks the signs.
GF_HOST_DEVICE void sincos_2pi_f32(float u, float& s, float& c) {
  const int32_t q = static_cast<int32_t>(u * 4.0f + 0.5f);
  const float d = u - static_cast<float>(q) * 0.25f;
  const float z = d * 6.28318530717958648f;
  const float z2 = z * z;
  const float sz =
      z + z * z2 * (-1.66666667e-1f + z2 * (8.33333333e-3f + z2 * (-1.98412698e-4f +
                                                               z2 * 2.75573192e-6f)));
  const float cz =
      1.0f + z2 * (-0.5f + z2 * (4.16666667e-2f + z2 * (-1.38888889e-3f +
                                                      z2 * (2.48015873e-5f +
                                                            z2 * -2.75573192e-7f))));
  const int32_t k = q & 3;
  const float sa = (k & 1) ? cz : sz;  // odd quadrants swap sin and cos
  const float ca = (k & 1) ? sz : cz;
  s = (k & 2) ? -sa : sa;                   // sin: +, +, -, - over quadrants 0..3
  c = ((k + 1) & 2) ? -ca : ca;             // cos: +, -, -, + over quadrants 0..3
}

// The float64 version: sin through z^19, cos through z^20 (truncation < 1e-17 on |z| <= pi/4).
GF_HOST_DEVICE void sincos_2pi_f64(double u, double& s, double& c) {
  const int64_t q = static_cast<int64_t>(u * 4.0 + 0.5);
  const double d = u - static_cast<double>(q) * 0.25;
  const double z = d * 6.283185307179586477;
  const double z2 = z * z;
  // 1/n! as compile-time quotients: exact to the last bit of each constant
  double ps = -1.0 / 121645100408832000.0;        // -1/19!
  ps = ps * z2 + 1.0 / 355687428096000.0;         // 1/17!
  ps = ps * z2 - 1.0 / 1307674368000.0;           // 1/15!
  ps = ps * z2 + 1.0 / 6227020800.0;              // 1/13!
  ps = ps * z2 - 1.0 / 39916800.0;                // 1/11!
  ps = ps * z2 + 1.0 / 362880.0;                  // 1/9!
  ps = ps * z2 - 1.0 / 5040.0;                    // 1/7!
  ps = ps * z2 + 1.0 / 120.0;                     // 1/5!
  ps = ps * z2 - 1.0 / 6.0;                       // 1/3!
  const double sz = z + z * z2 * ps;
  double pc = 1.0 / 2432902008176640000.0;        // 1/20!
  pc = pc * z2 - 1.0 / 6402373705728000.0;        // 1/18!
  pc = pc * z2 + 1.0 / 20922789888000.0;          // 1/16!
  pc = pc * z2 - 1.0 / 87178291200.0;             // 1/14!
  pc = pc * z2 + 1.0 / 479001600.0;               // 1/12!
  pc = pc * z2 - 1.0 / 3628800.0;                 // 1/10!
  pc = pc * z2 + 1.0 / 40320.0;                   // 1/8!
  pc = pc * z2 - 1.0 / 720.0;                     // 1/6!
  pc = pc * z2 + 1.0 / 24.0;                      // 1/4!
  pc = pc * z2 - 0.5;
  const double cz = 1.0 + z2 * pc;
  const int64_t k = q & 3;
  const double sa = (k & 1) ? cz : sz;
  const double ca = (k & 1) ? sz : cz;
  s = (k & 2) ? -sa : sa;
  c = ((k + 1) & 2) ? -ca : ca;
}

// ---------------------------------------------------------------- normal (Box-Muller)
// From one pair of words (float32) or one block (float64): r = sqrt(-2 ln u1) with u1 in (0, 1],
// theta = 2 pi u2 with u2 in [0, 1); z0 = r cos(theta), z1 = r sin(theta) are independent N(0, 1).
// Largest |z|: sqrt(2 * 24 ln 2) = 5.77 (float32), sqrt(2 * 53 ln 2) = 8.57 (float64).
GF_HOST_DEVICE void box_muller_f32(uint32_t wa, uint32_t wb, float& z0, float& z1) {
  const float r = sqrtf(-2.0f * log_f32(u01_open_f32(wa)));
  float s, c;
  sincos_2pi_f32(u01_f32(wb), s, c);
  z0 = r * c;
  z1 = r * s;
}

GF_HOST_DEVICE void box_muller_f64(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3, double& z0,
                                   double& z1) {
  const double r = sqrt(-2.0 * log_f64(u01_open_f64(w0, w1)));
  double s, c;
  sincos_2pi_f64(u01_f64(w2, w3), s, c);
  z0 = r * c;
  z1 = r * s;
}

// ---------------------------------------------------------------- inverse normal CDF
// Acklam's rational approximation of Phi^-1 (relative error < 1.15e-9 on (0, 1)): a central
// rational in (p - 1/2)^2 for p in [0.02425, 0.97575], a tail rational in sqrt(-2 ln p) outside.
// Both branches are computed and one is selected, so loops over p vectorize. p must be a normal
// double in (0, 1).
GF_HOST_DEVICE double inv_normal_cdf(double p) {
  const double a1 = -3.969683028665376e+01, a2 = 2.209460984245205e+02,
               a3 = -2.759285104469687e+02, a4 = 1.383577518672690e+02,
               a5 = -3.066479806614716e+01, a6 = 2.506628277459239e+00;
  const double b1 = -5.447609879822406e+01, b2 = 1.615858368580409e+02,
               b3 = -1.556989798598866e+02, b4 = 6.680131188771972e+01,
               b5 = -1.328068155288572e+01;
  const double c1 = -7.784894002430293e-03, c2 = -3.223964580411365e-01,
               c3 = -2.400758277161838e+00, c4 = -2.549732539343734e+00,
               c5 = 4.374664141464968e+00, c6 = 2.938163982698783e+00;
  const double d1 = 7.784695709041462e-03, d2 = 3.224671290700398e-01,
               d3 = 2.445134137142996e+00, d4 = 3.754408661907416e+00;
  const double plow = 0.02425;
  const double q = p - 0.5;
  const double r = q * q;
  const double central = (((((a1 * r + a2) * r + a3) * r + a4) * r + a5) * r + a6) * q /
                         (((((b1 * r + b2) * r + b3) * r + b4) * r + b5) * r + 1.0);
  const bool upper = q > 0.0;
  const double t = upper ? 1.0 - p : p;  // the smaller tail mass, exact for p >= 1/2
  const double tt = t < plow ? t : plow;  // keeps the unused branch finite
  const double u = sqrt(-2.0 * log_f64(tt));
  const double lower = (((((c1 * u + c2) * u + c3) * u + c4) * u + c5) * u + c6) /
                       ((((d1 * u + d2) * u + d3) * u + d4) * u + 1.0);
  const double tail = upper ? -lower : lower;
  return t < plow ? tail : central;
}

// The float32 quantile, 16 lanes wide on AVX-512 where the double one above runs 8 and needs two
// divisions and a double log: p = Phi(x) stays a double (it carries the 32 random bits), but the
// tail mass t = min(p, 1 - p) and q = p - 1/2 are rounded to float32 (relative error 2^-24, so
// x moves by well under an ulp) and the rest is float32:
//   t >= 0.02425 (|x| <= 1.97): Giles's single-precision erfinv ("Approximating the erfinv
//     function", GPU Computing Gems, 2011), x = sqrt(2) erfinv(2q) = sqrt(2) 2q P(w) with
//     w = -ln(4 t (1 - t)) = -ln(1 - (2q)^2) in [0, 2.36] and P a degree-8 polynomial in w - 2.5:
//     no division and none of the cancellation Acklam's central rational has in float32;
//   t < 0.02425: Acklam's tail rational in sqrt(-2 ln t) (its terms share a sign: well
//     conditioned in float32).
// One log serves both (its argument is selected first) and one division (the tail's). Measured
// against scipy's ndtri on 2.3M points of (1e-37, 1): within 6 float32 ulp. t must be a normal
// float32 (the caller checks that its interval allows it, see trunc_setup).
GF_HOST_DEVICE float inv_normal_cdf_f32(double p) {
  const bool upper = p > 0.5;
  const float t = static_cast<float>(upper ? 1.0 - p : p);  // 1 - p is exact for p >= 1/2
  const float q2 = static_cast<float>(p - 0.5) * 2.0f;     // 2p - 1, exact scaling
  const bool central = t >= 0.02425f;
  const float L = log_f32(central ? 4.0f * t * (1.0f - t) : t);
  const float w = -L - 2.5f;
  float g = 2.81022636e-08f;
  g = 3.43273939e-07f + g * w;
  g = -3.5233877e-06f + g * w;
  g = -4.39150654e-06f + g * w;
  g = 0.00021858087f + g * w;
  g = -0.00125372503f + g * w;
  g = -0.00417768164f + g * w;
  g = 0.246640727f + g * w;
  g = 1.50140941f + g * w;
  const float xc = 1.41421356f * (q2 * g);
  const float u = sqrtf(central ? 1.0f : -2.0f * L);  // the central lanes' value is unused
  const float num = ((((-7.784894002430293e-03f * u + -3.223964580411365e-01f) * u +
                       -2.400758277161838e+00f) * u + -2.549732539343734e+00f) * u +
                     4.374664141464968e+00f) * u + 2.938163982698783e+00f;
  const float den = (((7.784695709041462e-03f * u + 3.224671290700398e-01f) * u +
                      2.445134137142996e+00f) * u + 3.754408661907416e+00f) * u + 1.0f;
  const float xt = num / den;
  return central ? xc : (upper ? -xt : xt);
}

// ---------------------------------------------------------------- Bernoulli
// 1 with probability t / 2^32 where t = round(p 2^32) in [0, 2^32]: w < t, written as
// w <= t - 1 so that the threshold fits 32 bits; t = 0 (p = 0) is the caller's special case.
GF_HOST_DEVICE uint32_t bernoulli_threshold_minus1(double p) {
  const double t = p * 4294967296.0 + 0.5;
  const uint64_t ti = t >= 4294967296.0 ? 4294967296ull : static_cast<uint64_t>(t);
  return static_cast<uint32_t>(ti - (ti > 0 ? 1 : 0));
}
GF_HOST_DEVICE bool bernoulli_never(double p) { return p * 4294967296.0 + 0.5 < 1.0; }

}  // namespace philox
}  // namespace gradfuse
