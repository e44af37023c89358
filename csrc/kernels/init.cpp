// Random fills from Philox4x32-10 (see init.h for the contract, csrc/rng/philox.h for the maps
// and the tile layout).
//
// A fill is a sequence of tiles of 16 Philox blocks. philox_tiles runs Philox on the 16 counters
// of a tile at once, one counter per 32-bit vector lane (AVX-512: one register per word; the
// 32x32->64 multiplies are two vpmuludq on the even and odd lanes, which GCC's vectorizer does
// not find by itself: it widens to 64-bit lanes and uses the 3-uop vpmullq, half the speed), and
// stores the words as W[16 r + j] = word r of block j. That is the order values are stored in,
// so every map below is a plain 16- or 64-lane loop with no shuffles. Tiles are what parallel_for
// distributes and a tile's values depend only on its index, so the thread count changes nothing.
// The last, partial tile is mapped into a buffer on the stack and the valid part copied out.
//
// This file is compiled with -ffp-contract=off (CMakeLists.txt): the multiply-adds of the maps
// must round the same way in the baseline, AVX2 and AVX-512 clones (and in CUDA later), or the
// same seed would give different bits on different machines.
#include "kernels/init.h"

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "common.h"
#include "rng/fill_args.h"
#include "rng/philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define GF_PHILOX_X86 1
#else
#define GF_PHILOX_X86 0
#endif

namespace gradfuse {
namespace {

using philox::kTileBlocks;
constexpr int kTileWords = 4 * kTileBlocks;
constexpr int kTilesPerBatch = 8;  // 2 KiB of words per Philox call: stays in L1

struct Tile {
  alignas(64) uint32_t w[4][kTileBlocks];  // word r of block j at w[r][j]
};

// ---------------------------------------------------------------- Philox on 16 counters

// Portable version: the vectorizer handles it, with 64-bit multiplies.
GF_HOST_DEVICE void philox_tiles_generic(uint64_t seed, uint64_t block0, int nt, Tile* t) {
  const uint32_t k0 = static_cast<uint32_t>(seed);
  const uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int i = 0; i < nt; ++i) {
#pragma omp simd
    for (int j = 0; j < kTileBlocks; ++j) {
      const uint64_t b = block0 + static_cast<uint64_t>(i * kTileBlocks + j);
      uint32_t c0 = static_cast<uint32_t>(b), c1 = static_cast<uint32_t>(b >> 32), c2 = 0, c3 = 0;
      philox::philox4x32_10(c0, c1, c2, c3, k0, k1);
      t[i].w[0][j] = c0;
      t[i].w[1][j] = c1;
      t[i].w[2][j] = c2;
      t[i].w[3][j] = c3;
    }
  }
}

#if GF_PHILOX_X86
// The counters' low and high words of blocks block0 + j, j < 16 (the carry crosses lanes rarely,
// but it must be right: offsets are arbitrary 64-bit values).
inline void tile_counters(uint64_t block0, uint32_t* lo, uint32_t* hi) {
  for (int j = 0; j < kTileBlocks; ++j) {
    const uint64_t b = block0 + static_cast<uint64_t>(j);
    lo[j] = static_cast<uint32_t>(b);
    hi[j] = static_cast<uint32_t>(b >> 32);
  }
}

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_epi32(), which -Wmaybe-uninitialized
// reports as a use of an uninitialized value (a false positive in the header).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// hi:lo = a * m per 32-bit lane: vpmuludq multiplies the even lanes (as 64-bit lanes), the odd
// lanes are moved down by a shuffle and multiplied too, and one two-source permute per output
// gathers the low (high) halves of both products back into lane order.
__attribute__((target("avx512f"), always_inline)) inline void mulhilo_x16(__m512i a, __m512i m,
                                                                         __m512i& hi,
                                                                         __m512i& lo) {
  const __m512i ilo = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i ihi = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  const __m512i pe = _mm512_mul_epu32(a, m);
  const __m512i po =
      _mm512_mul_epu32(_mm512_shuffle_epi32(a, static_cast<_MM_PERM_ENUM>(0xF5)), m);  // 3,3,1,1
  lo = _mm512_permutex2var_epi32(pe, ilo, po);
  hi = _mm512_permutex2var_epi32(pe, ihi, po);
}

// Two tiles per iteration: a Philox round is a chain of dependent multiplies and permutes, so
// one tile alone leaves the vector units waiting on latency (measured 2x faster with two).
// An odd count computes one spare tile into t[nt], which the caller's buffer has room for.
__attribute__((target("avx512f"))) void philox_tiles_avx512(uint64_t seed, uint64_t block0,
                                                            int nt, Tile* t) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kM1));
  alignas(64) uint32_t lo[2 * kTileBlocks], hi[2 * kTileBlocks];
  for (int i = 0; i < nt; i += 2) {
    tile_counters(block0 + static_cast<uint64_t>(i) * kTileBlocks, lo, hi);
    tile_counters(block0 + static_cast<uint64_t>(i + 1) * kTileBlocks, lo + kTileBlocks,
                  hi + kTileBlocks);
    __m512i a0 = _mm512_load_si512(lo), a1 = _mm512_load_si512(hi);
    __m512i b0 = _mm512_load_si512(lo + kTileBlocks), b1 = _mm512_load_si512(hi + kTileBlocks);
    __m512i a2 = _mm512_setzero_si512(), a3 = a2, b2 = a2, b3 = a2;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < philox::kRounds; ++r) {
      const __m512i kv0 = _mm512_set1_epi32(static_cast<int>(k0));
      const __m512i kv1 = _mm512_set1_epi32(static_cast<int>(k1));
      __m512i ah0, al0, ah1, al1, bh0, bl0, bh1, bl1;
      mulhilo_x16(a0, m0, ah0, al0);
      mulhilo_x16(a2, m1, ah1, al1);
      mulhilo_x16(b0, m0, bh0, bl0);
      mulhilo_x16(b2, m1, bh1, bl1);
      a0 = _mm512_ternarylogic_epi32(ah1, a1, kv0, 0x96);  // 0x96: three-way xor
      a2 = _mm512_ternarylogic_epi32(ah0, a3, kv1, 0x96);
      b0 = _mm512_ternarylogic_epi32(bh1, b1, kv0, 0x96);
      b2 = _mm512_ternarylogic_epi32(bh0, b3, kv1, 0x96);
      a1 = al1;
      a3 = al0;
      b1 = bl1;
      b3 = bl0;
      k0 += philox::kW0;
      k1 += philox::kW1;
    }
    _mm512_store_si512(t[i].w[0], a0);
    _mm512_store_si512(t[i].w[1], a1);
    _mm512_store_si512(t[i].w[2], a2);
    _mm512_store_si512(t[i].w[3], a3);
    _mm512_store_si512(t[i + 1].w[0], b0);
    _mm512_store_si512(t[i + 1].w[1], b1);
    _mm512_store_si512(t[i + 1].w[2], b2);
    _mm512_store_si512(t[i + 1].w[3], b3);
  }
}

#pragma GCC diagnostic pop

__attribute__((target("avx2"), always_inline)) inline void mulhilo_x8(__m256i a, __m256i m,
                                                                    __m256i& hi, __m256i& lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// The two 8-lane halves of a tile run interleaved, for the same latency reason as above.
__attribute__((target("avx2"))) void philox_tiles_avx2(uint64_t seed, uint64_t block0, int nt,
                                                       Tile* t) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kM1));
  alignas(64) uint32_t lo[kTileBlocks], hi[kTileBlocks];
  for (int i = 0; i < nt; ++i) {
    tile_counters(block0 + static_cast<uint64_t>(i) * kTileBlocks, lo, hi);
    __m256i a0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    __m256i a1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + 8));
    __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi + 8));
    __m256i a2 = _mm256_setzero_si256(), a3 = a2, b2 = a2, b3 = a2;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < philox::kRounds; ++r) {
      const __m256i kv0 = _mm256_set1_epi32(static_cast<int>(k0));
      const __m256i kv1 = _mm256_set1_epi32(static_cast<int>(k1));
      __m256i ah0, al0, ah1, al1, bh0, bl0, bh1, bl1;
      mulhilo_x8(a0, m0, ah0, al0);
      mulhilo_x8(a2, m1, ah1, al1);
      mulhilo_x8(b0, m0, bh0, bl0);
      mulhilo_x8(b2, m1, bh1, bl1);
      a0 = _mm256_xor_si256(_mm256_xor_si256(ah1, a1), kv0);
      a2 = _mm256_xor_si256(_mm256_xor_si256(ah0, a3), kv1);
      b0 = _mm256_xor_si256(_mm256_xor_si256(bh1, b1), kv0);
      b2 = _mm256_xor_si256(_mm256_xor_si256(bh0, b3), kv1);
      a1 = al1;
      a3 = al0;
      b1 = bl1;
      b3 = bl0;
      k0 += philox::kW0;
      k1 += philox::kW1;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[0]), a0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[1]), a1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[2]), a2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[3]), a3);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[0] + 8), b0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[1] + 8), b1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[2] + 8), b2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[i].w[3] + 8), b3);
  }
}

void philox_tiles_default(uint64_t seed, uint64_t block0, int nt, Tile* t) {
  philox_tiles_generic(seed, block0, nt, t);
}

using PhiloxTilesFn = void (*)(uint64_t, uint64_t, int, Tile*);

// Picked once at load time, as the target_clones resolvers pick the maps' code.
PhiloxTilesFn pick_philox_tiles() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return philox_tiles_avx512;
  if (__builtin_cpu_supports("avx2")) return philox_tiles_avx2;
  return philox_tiles_default;
}
const PhiloxTilesFn philox_tiles = pick_philox_tiles();
#else
using PhiloxTilesFn = void (*)(uint64_t, uint64_t, int, Tile*);
void philox_tiles(uint64_t seed, uint64_t block0, int nt, Tile* t) {
  philox_tiles_generic(seed, block0, nt, t);
}
#endif

using fill_args::at_least;
using fill_args::at_most;
using fill_args::blocks_for;
using fill_args::check_n;
using fill_args::dtype_name;
using fill_args::num;

// ---------------------------------------------------------------- maps: 16 blocks -> values

// Maps: one tile of words -> kVals values in the tile layout of philox.h. Members are copied to
// locals first: a member read under a select would become a masked load and stop the vectorizer.

struct UniformF32 {
  float lo, span, amin, bmax;
  static constexpr int64_t kVals = kTileWords;
  GF_HOST_DEVICE void operator()(const Tile& t, float* dst) const {
    const float lo = this->lo, span = this->span, amin = this->amin, bmax = this->bmax;
    const uint32_t* w = t.w[0];
#pragma omp simd
    for (int i = 0; i < kVals; ++i) {
      float v = lo + span * philox::u01_f32(w[i]);
      v = v < amin ? amin : v;
      dst[i] = v > bmax ? bmax : v;
    }
  }
};

struct UniformF64 {
  double lo, span, amin, bmax;
  static constexpr int64_t kVals = 2 * kTileBlocks;
  GF_HOST_DEVICE void operator()(const Tile& t, double* dst) const {
    const double lo = this->lo, span = this->span, amin = this->amin, bmax = this->bmax;
#pragma omp simd
    for (int j = 0; j < kTileBlocks; ++j) {
      double v0 = lo + span * philox::u01_f64(t.w[0][j], t.w[1][j]);
      double v1 = lo + span * philox::u01_f64(t.w[2][j], t.w[3][j]);
      v0 = v0 < amin ? amin : v0;
      v1 = v1 < amin ? amin : v1;
      dst[j] = v0 > bmax ? bmax : v0;
      dst[kTileBlocks + j] = v1 > bmax ? bmax : v1;
    }
  }
};

struct NormalF32 {
  float mean, std;
  static constexpr int64_t kVals = kTileWords;
  GF_HOST_DEVICE void operator()(const Tile& t, float* dst) const {
    const float mean = this->mean, std = this->std;
#pragma omp simd
    for (int j = 0; j < kTileBlocks; ++j) {
      float z0, z1, z2, z3;
      philox::box_muller_f32(t.w[0][j], t.w[1][j], z0, z1);
      philox::box_muller_f32(t.w[2][j], t.w[3][j], z2, z3);
      dst[j] = mean + std * z0;
      dst[kTileBlocks + j] = mean + std * z1;
      dst[2 * kTileBlocks + j] = mean + std * z2;
      dst[3 * kTileBlocks + j] = mean + std * z3;
    }
  }
};

struct NormalF64 {
  double mean, std;
  static constexpr int64_t kVals = 2 * kTileBlocks;
  GF_HOST_DEVICE void operator()(const Tile& t, double* dst) const {
    const double mean = this->mean, std = this->std;
#pragma omp simd
    for (int j = 0; j < kTileBlocks; ++j) {
      double z0, z1;
      philox::box_muller_f64(t.w[0][j], t.w[1][j], t.w[2][j], t.w[3][j], z0, z1);
      dst[j] = mean + std * z0;
      dst[kTileBlocks + j] = mean + std * z1;
    }
  }
};

// Truncated normal, shared set-up: the interval in std units, reflected to the lower half.
struct TruncSetup {
  double mean, std, sign, alpha, beta, pa, span;
};

double phi_cdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }

TruncSetup trunc_setup(const TruncNormalArgs& g) {
  TruncSetup s{};
  s.mean = g.mean;
  s.std = g.std;
  double alpha = (g.a - g.mean) / g.std, beta = (g.b - g.mean) / g.std;
  s.sign = 1.0;
  if (alpha + beta > 0.0) {  // upper half: sample -x on [-beta, -alpha]
    const double t = alpha;
    alpha = -beta;
    beta = -t;
    s.sign = -1.0;
  }
  s.alpha = alpha;
  s.beta = beta;
  s.pa = phi_cdf(alpha);
  const double pb = phi_cdf(beta);
  s.span = pb - s.pa;
  if (!(pb >= 1e-290) || !(s.span > 0.0)) {
    fail_value("a, b: the interval [" + num(g.a) + ", " + num(g.b) + "] has no probability " +
               "mass representable in float64 under Normal(" + num(g.mean) + ", " + num(g.std) +
               "^2) (it lies more than ~37 std from the mean)");
  }
  return s;
}

// The standard-normal quantile of the lower-half mass pa + u span, clamped to [alpha, beta].
GF_HOST_DEVICE double trunc_std(const TruncSetup& s, double u) {
  double p = s.pa + s.span * u;
  p = p < DBL_MIN ? DBL_MIN : p;  // the log in inv_normal_cdf needs a normal double
  double x = philox::inv_normal_cdf(p);
  x = x < s.alpha ? s.alpha : x;
  return x > s.beta ? s.beta : x;
}

// float32, fast path: Phi^-1 in float32 (philox.h: inv_normal_cdf_f32) and mean + std x in
// float32, 16 lanes per vector (the affine step in double cost 15%; x is already within 6 ulp).
// Used when every tail mass the interval can produce is a normal float32 and mean and std are
// finite in float32 with std a normal float32 (trunc_f32_ok); the clamp to [lo, hi] keeps the
// bounds exact.
struct TruncNormalF32 {
  TruncSetup s;
  float lo, hi;
  static constexpr int64_t kVals = kTileWords;
  GF_HOST_DEVICE void operator()(const Tile& t, float* dst) const {
    const TruncSetup s = this->s;
    const float lo = this->lo, hi = this->hi;
    const float meanf = static_cast<float>(s.mean), sstd = static_cast<float>(s.sign * s.std);
    const uint32_t* w = t.w[0];
#pragma omp simd
    for (int i = 0; i < kVals; ++i) {
      const double u = (static_cast<double>(w[i]) + 0.5) * 2.3283064365386963e-10;  // 2^-32
      const float x = philox::inv_normal_cdf_f32(s.pa + s.span * u);
      float v = meanf + sstd * x;
      v = v < lo ? lo : v;
      dst[i] = v > hi ? hi : v;
    }
  }
};

// float32 beyond ~13 std (tail masses below float32's normal range) or with mean or std out of
// float32's normal range: Phi^-1 in double (Acklam, 1.2e-9 relative) and mean + std x in double,
// rounded once to float32.
struct TruncNormalF32Deep {
  TruncSetup s;
  float lo, hi;
  static constexpr int64_t kVals = kTileWords;
  GF_HOST_DEVICE void operator()(const Tile& t, float* dst) const {
    const TruncSetup s = this->s;
    const float lo = this->lo, hi = this->hi;
    const uint32_t* w = t.w[0];
#pragma omp simd
    for (int i = 0; i < kVals; ++i) {
      const double u = (static_cast<double>(w[i]) + 0.5) * 2.3283064365386963e-10;  // 2^-32
      const double x = trunc_std(s, u);
      float v = static_cast<float>(s.mean + s.std * (s.sign * x));
      v = v < lo ? lo : v;
      dst[i] = v > hi ? hi : v;
    }
  }
};

// Whether inv_normal_cdf_f32 may serve this interval: the smallest and largest p a word can give
// (u = 2^-33 and 1 - 2^-33, computed as the map computes them; p is monotone in u) leave tail
// masses t = min(p, 1 - p) of at least 2^-125, a normal float32; and mean and std fit float32.
bool trunc_f32_ok(const TruncSetup& s) {
  const float meanf = static_cast<float>(s.mean), stdf = static_cast<float>(s.std);
  if (!std::isfinite(meanf) || !std::isfinite(stdf) || !(stdf >= FLT_MIN)) return false;
  const double p_lo = s.pa + s.span * (0.5 * 2.3283064365386963e-10);
  const double p_hi = s.pa + s.span * (4294967295.5 * 2.3283064365386963e-10);
  const double tiny = 2.350988701644575e-38;  // 2^-125
  return p_lo >= tiny && 1.0 - p_hi >= tiny;
}

// float64: Acklam's 1.2e-9 is not enough, so one Halley step on Phi(x) = p (third-order
// convergence: to full double precision), with libm's erfc and exp, which keep this loop scalar.
struct TruncNormalF64 {
  TruncSetup s;
  double lo, hi;
  static constexpr int64_t kVals = 2 * kTileBlocks;
  GF_HOST_DEVICE void operator()(const Tile& t, double* dst) const {
    for (int i = 0; i < kVals; ++i) {
      {
        const int hw = i / kTileBlocks, j = i % kTileBlocks;  // value 16 hw + j: words 2hw, 2hw+1
        const double u =
            (static_cast<double>(philox::bits53(t.w[2 * hw][j], t.w[2 * hw + 1][j])) + 0.5) *
            1.1102230246251565e-16;  // 2^-53
        double p = s.pa + s.span * u;
        p = p < DBL_MIN ? DBL_MIN : p;
        double x = philox::inv_normal_cdf(p);
        // Phi(x) - p, from the upper tail above 1/2 (1 - p is exact there): near p = 1 the
        // difference of two numbers close to 1 would lose the digits Halley's step needs
        const double e = p > 0.5 ? (1.0 - p) - 0.5 * std::erfc(x * 0.70710678118654752440)
                                 : phi_cdf(x) - p;
        const double h = e * 2.5066282746310002 * std::exp(0.5 * x * x);  // e / pdf(x)
        const double xr = x - h / (1.0 + 0.5 * x * h);
        x = std::isfinite(xr) ? xr : x;
        x = x < s.alpha ? s.alpha : x;
        x = x > s.beta ? s.beta : x;
        double v = s.mean + s.std * (s.sign * x);
        v = v < lo ? lo : v;
        dst[i] = v > hi ? hi : v;
      }
    }
  }
};

template <typename T>
struct Bernoulli {
  uint32_t tm1;
  T one;  // 0 when p rounds to 0 (no word is below a threshold of 0)
  static constexpr int64_t kVals = kTileWords;
  GF_HOST_DEVICE void operator()(const Tile& t, T* dst) const {
    const uint32_t th = tm1;
    const T v1 = one;
    const uint32_t* w = t.w[0];
#pragma omp simd
    for (int i = 0; i < kVals; ++i) dst[i] = w[i] <= th ? v1 : T(0);
  }
};

// ---------------------------------------------------------------- per-thread chunks
// One multiversioned function per map, so that Philox and the map are inlined into code built
// for the machine's vector width.

// Large fills bypass the cache with streaming stores: a plain store of an output that will not
// be read soon first reads its cache line from memory (write-allocate), doubling the traffic.
// SSE2's 16-byte movntdq is in every x86-64 CPU, so it needs no dispatch; the write-combining
// buffers merge four of them into one full-line write.
constexpr int64_t kStreamBytes = 4 << 20;

inline void stream_tile(const void* src, void* dst, int64_t bytes) {
#if GF_PHILOX_X86
  const __m128i* s = static_cast<const __m128i*>(src);
  __m128i* d = static_cast<__m128i*>(dst);
  for (int64_t i = 0; i < bytes / 16; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
#else
  std::memcpy(dst, src, static_cast<size_t>(bytes));
#endif
}


// Runs map(tile, dst) over the tiles [t0, t1) of an n-value fill; map writes Map::kVals values.
#define GF_FILL_CHUNK_BODY                                                                  \
  constexpr int64_t kVals = Map::kVals;                                                     \
  Tile tiles[kTilesPerBatch + 1]; /* + 1: the spare tile of an odd count */                 \
  alignas(64) T tmp[kVals];                                                                 \
  const bool stream = n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes &&                \
                      reinterpret_cast<uintptr_t>(out) % 64 == 0;                           \
  for (int64_t tb = t0; tb < t1; tb += kTilesPerBatch) {                                    \
    const int nt = static_cast<int>(t1 - tb < kTilesPerBatch ? t1 - tb : kTilesPerBatch);    \
    philox_tiles(s.seed, s.offset + static_cast<uint64_t>(tb) * kTileBlocks, nt, tiles);    \
    for (int i = 0; i < nt; ++i) {                                                          \
      const int64_t e0 = (tb + i) * kVals;                                                  \
      if (e0 + kVals <= n) {                                                                \
        if (stream) {                                                                       \
          map(tiles[i], tmp);                                                               \
          stream_tile(tmp, out + e0, kVals * static_cast<int64_t>(sizeof(T)));              \
        } else {                                                                            \
          map(tiles[i], out + e0);                                                          \
        }                                                                                   \
      } else {                                                                              \
        map(tiles[i], tmp);                                                                 \
        for (int64_t k = 0; e0 + k < n; ++k) out[e0 + k] = tmp[k];                          \
      }                                                                                     \
    }                                                                                       \
  }                                                                                         \
  if (stream) stream_fence();

template <typename Map, typename T>
GF_TARGET_CLONES void fill_chunk(const Map& map, PhiloxStream s, T* out, int64_t n, int64_t t0,
                                 int64_t t1) {
  GF_FILL_CHUNK_BODY
}

// Scalar-math maps (the float64 truncated normal) need no clones.
template <typename Map, typename T>
void fill_chunk_scalar(const Map& map, PhiloxStream s, T* out, int64_t n, int64_t t0,
                       int64_t t1) {
  GF_FILL_CHUNK_BODY
}
#undef GF_FILL_CHUNK_BODY

// Cost per value for parallel_for's grain: Philox is ~3 vector ops per word, the maps add up to
// ~40 (Box-Muller, inverse CDF in double).
template <bool kScalar = false, typename Map, typename T>
uint64_t fill(const Map& map, PhiloxStream s, T* out, int64_t n, int64_t cost) {
  const int64_t tiles = (n + Map::kVals - 1) / Map::kVals;
  parallel_for(tiles, Map::kVals * cost, [&](int64_t t0, int64_t t1) {
    if constexpr (kScalar) {
      fill_chunk_scalar(map, s, out, n, t0, t1);
    } else {
      fill_chunk(map, s, out, n, t0, t1);
    }
  });
  return blocks_for(n, Map::kVals);
}

// keep_any = 0 (p rounds to 1) keeps nothing: the threshold test alone would keep the words
// equal to 0, and a mask of 1 there would let backward pass a gradient for a zeroed output.
template <typename T>
GF_TARGET_CLONES void dropout_chunk(const T* x, int64_t n, PhiloxStream s, uint32_t tm1,
                                    uint32_t keep_any, T keep_scale, T* out, uint8_t* mask,
                                    int64_t t0, int64_t t1) {
  constexpr int64_t kVals = kTileWords;
  Tile tiles[kTilesPerBatch + 1];  // + 1: the spare tile of an odd count
  alignas(64) T xt[kVals], ot[kVals];
  alignas(64) uint8_t mt[kVals];
  const bool stream = n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes &&
                      reinterpret_cast<uintptr_t>(out) % 64 == 0 &&
                      reinterpret_cast<uintptr_t>(mask) % 64 == 0;  // nullptr counts as aligned
  for (int64_t tb = t0; tb < t1; tb += kTilesPerBatch) {
    const int nt = static_cast<int>(t1 - tb < kTilesPerBatch ? t1 - tb : kTilesPerBatch);
    philox_tiles(s.seed, s.offset + static_cast<uint64_t>(tb) * kTileBlocks, nt, tiles);
    for (int b = 0; b < nt; ++b) {
      const int64_t e0 = (tb + b) * kVals;
      const bool full = e0 + kVals <= n;
      const int64_t cnt = full ? kVals : n - e0;
      const T* xs = x + e0;
      T* os = stream ? ot : out + e0;
      uint8_t* ms = mask && !stream ? mask + e0 : mt;
      if (!full) {
        for (int64_t i = 0; i < kVals; ++i) xt[i] = i < cnt ? x[e0 + i] : T(0);
        xs = xt;
        os = ot;
        ms = mt;
      }
      const uint32_t* w = tiles[b].w[0];
#pragma omp simd
      for (int64_t i = 0; i < kVals; ++i) {
        const bool keep = (w[i] <= tm1) & (keep_any != 0);
        os[i] = xs[i] * (keep ? keep_scale : T(0));
        ms[i] = keep ? 1 : 0;
      }
      if (!full) {
        for (int64_t i = 0; i < cnt; ++i) out[e0 + i] = ot[i];
        if (mask) {
          for (int64_t i = 0; i < cnt; ++i) mask[e0 + i] = mt[i];
        }
      } else if (stream) {
        stream_tile(ot, out + e0, kVals * static_cast<int64_t>(sizeof(T)));
        if (mask) stream_tile(mt, mask + e0, kVals);
      }
    }
  }
  if (stream) stream_fence();
}

template <typename T>
GF_TARGET_CLONES void dropout_backward_range(const T* g, const uint8_t* mask, T scale, T* dx,
                                             int64_t b, int64_t e) {
#pragma omp simd
  for (int64_t i = b; i < e; ++i) dx[i] = g[i] * (mask[i] ? scale : T(0));
}

}  // namespace

// ---------------------------------------------------------------- entry points

template <typename T>
uint64_t uniform_fill(T* out, int64_t n, PhiloxStream s, double a, double b) {
  check_n(n);
  const auto u = fill_args::uniform<T>(a, b);
  if constexpr (sizeof(T) == 4) {
    return fill(UniformF32{u.lo, u.span, u.cmin, u.cmax}, s, out, n, 4);
  } else {
    return fill(UniformF64{u.lo, u.span, u.cmin, u.cmax}, s, out, n, 4);
  }
}

template <typename T>
uint64_t normal_fill(T* out, int64_t n, PhiloxStream s, double mean, double std) {
  check_n(n);
  fill_args::check_normal(mean, std);
  if constexpr (sizeof(T) == 4) {
    return fill(NormalF32{static_cast<float>(mean), static_cast<float>(std)}, s, out, n, 16);
  } else {
    return fill(NormalF64{mean, std}, s, out, n, 32);
  }
}

template <typename T>
uint64_t trunc_normal_fill(T* out, int64_t n, PhiloxStream s, const TruncNormalArgs& g) {
  check_n(n);
  if (!std::isfinite(g.mean)) fail_value("mean: expected a finite value, got " + num(g.mean));
  if (!std::isfinite(g.std) || !(g.std > 0.0)) {
    fail_value("std: expected a finite value > 0, got " + num(g.std));
  }
  if (std::isnan(g.a) || std::isnan(g.b) || g.a > g.b) {
    fail_value("a, b: expected a <= b, got a=" + num(g.a) + ", b=" + num(g.b));
  }
  const T lo = at_least<T>(g.a), hi = at_most<T>(g.b);
  if (!(lo <= hi)) {
    fail_value(std::string("a, b: no ") + dtype_name(T(0)) + " value lies in [" + num(g.a) +
               ", " + num(g.b) + "]");
  }
  const TruncSetup ts = trunc_setup(g);
  if constexpr (sizeof(T) == 4) {
    if (trunc_f32_ok(ts)) return fill(TruncNormalF32{ts, lo, hi}, s, out, n, 20);
    return fill(TruncNormalF32Deep{ts, lo, hi}, s, out, n, 40);
  } else {
    return fill<true>(TruncNormalF64{ts, lo, hi}, s, out, n, 200);
  }
}

template <typename T>
uint64_t bernoulli_fill(T* out, int64_t n, PhiloxStream s, double p) {
  check_n(n);
  fill_args::check_probability(p);
  const bool never = philox::bernoulli_never(p);
  const Bernoulli<T> map{philox::bernoulli_threshold_minus1(p), never ? T(0) : T(1)};
  return fill(map, s, out, n, 4);
}

template <typename T>
uint64_t dropout_forward(const T* x, int64_t n, PhiloxStream s, double p, T* out, uint8_t* mask) {
  check_n(n);
  const auto d = fill_args::dropout<T>(p);
  const int64_t tiles = (n + kTileWords - 1) / kTileWords;
  parallel_for(tiles, kTileWords * 4, [&](int64_t t0, int64_t t1) {
    dropout_chunk<T>(x, n, s, d.tm1, d.none ? 0u : 1u, d.scale, out, mask, t0, t1);
  });
  return blocks_for(n, kTileWords);
}

template <typename T>
void dropout_backward(const T* grad, const uint8_t* mask, int64_t n, double scale, T* dx) {
  check_n(n);
  const T sc = static_cast<T>(scale);
  parallel_for(n, 1, [&](int64_t b, int64_t e) { dropout_backward_range<T>(grad, mask, sc, dx, b, e); });
}

void philox4x32_10_block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  philox::philox4x32_10(c0, c1, c2, c3, key[0], key[1]);
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

bool philox_tile_words(uint64_t seed, uint64_t offset, int64_t n_tiles, int isa, uint32_t* out) {
  check_n(n_tiles);
  PhiloxTilesFn fn = nullptr;
#if GF_PHILOX_X86
  __builtin_cpu_init();
  if (isa == 0) fn = philox_tiles;
  if (isa == 1) fn = philox_tiles_default;
  if (isa == 2 && __builtin_cpu_supports("avx2")) fn = philox_tiles_avx2;
  if (isa == 3 && __builtin_cpu_supports("avx512f")) fn = philox_tiles_avx512;
#else
  if (isa == 0 || isa == 1) fn = philox_tiles;
#endif
  if (fn == nullptr) return false;
  Tile tiles[kTilesPerBatch + 1];  // + 1: the spare tile of an odd count
  for (int64_t t = 0; t < n_tiles; t += kTilesPerBatch) {
    const int nt = static_cast<int>(n_tiles - t < kTilesPerBatch ? n_tiles - t : kTilesPerBatch);
    fn(seed, offset + static_cast<uint64_t>(t) * kTileBlocks, nt, tiles);
    std::memcpy(out + t * kTileWords, tiles, sizeof(Tile) * static_cast<size_t>(nt));
  }
  return true;
}

void philox_words(uint64_t seed, uint64_t offset, int64_t n_blocks, uint32_t* out) {
  check_n(n_blocks);
  parallel_for(n_blocks, 16, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      uint32_t* o = out + 4 * j;
      philox::block_words(seed, offset + static_cast<uint64_t>(j), o[0], o[1], o[2], o[3]);
    }
  });
}

#define GF_INIT_INSTANTIATE(T)                                                                  \
  template uint64_t uniform_fill<T>(T*, int64_t, PhiloxStream, double, double);                \
  template uint64_t normal_fill<T>(T*, int64_t, PhiloxStream, double, double);                 \
  template uint64_t trunc_normal_fill<T>(T*, int64_t, PhiloxStream, const TruncNormalArgs&);   \
  template uint64_t bernoulli_fill<T>(T*, int64_t, PhiloxStream, double);                      \
  template uint64_t dropout_forward<T>(const T*, int64_t, PhiloxStream, double, T*, uint8_t*); \
  template void dropout_backward<T>(const T*, const uint8_t*, int64_t, double, T*);
GF_INIT_INSTANTIATE(float)
GF_INIT_INSTANTIATE(double)
#undef GF_INIT_INSTANTIATE

}  // namespace gradfuse
