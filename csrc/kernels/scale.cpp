#include "kernels/scale.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common.h"

#if defined(__SSE2__)
#include <emmintrin.h>  // streaming stores; SSE2 is in every x86-64 target clone
#endif

namespace gradfuse {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Short rows (a few features) would leave the column loop a few lanes long; k whole rows,
// which are contiguous, are walked as one segment instead, with the per-column state repeated
// k times. k makes the segment at least kSegmentMin long (kStatsSegmentMin for the statistics,
// whose four accumulators per position want to stay few), and a multiple of 16 when that costs
// at most doubling it, so the vector loop has no scalar tail. Either way a segment is shorter
// than 2 * kSegmentMin.
constexpr int64_t kSegmentMin = 256;
constexpr int64_t kStatsSegmentMin = 64;
// Wider rows are cut into column tiles so the per-column state of a tile stays in L1/L2.
constexpr int64_t kTileCols = 2048;
// A block of the stats pass (32 KiB of float32) is read from memory once and a second time
// from cache for its M2.
constexpr int64_t kBlockElems = 8192;
// The stats pass hands rows to threads in superblocks of about this many values; their number
// depends only on (n, d), never on the thread count, and is bounded so the partial results
// stay small (at most kMaxPartials doubles).
constexpr int64_t kSuperElems = int64_t(1) << 18;
constexpr int64_t kMaxSuper = 256;
constexpr int64_t kMaxPartials = int64_t(1) << 23;
// transform: rows per work item, so a tile's coefficients are reused across many rows
constexpr int64_t kAffineBlockElems = int64_t(1) << 16;
// Outputs at least this large are written with non-temporal (streaming) stores: an ordinary
// store first reads the line it writes (read for ownership), so a transform that cannot fit
// its output in cache would move 3 bytes per byte written instead of 2. Smaller outputs stay
// in cache for whatever reads them next.
constexpr int64_t kStreamMinBytes = int64_t(8) << 20;
// image path: flat chunk per work item; 2^16 bytes keep a uint32 sum of squares exact
// (2^16 * 255^2 < 2^32)
constexpr int64_t kImageChunk = int64_t(1) << 16;

struct Tiling {
  int64_t w = 1;       // columns per tile (all d when d <= kTileCols)
  int64_t ntiles = 1;
  int64_t k = 1;       // rows per segment (> 1 only for rows shorter than the minimum)
  int64_t seg = 1;     // k * w: length of the inner loop and of the per-column state
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t repeat_for_lanes(int64_t period, int64_t min_len) {
  if (period >= min_len) return 1;
  const int64_t k0 = 16 / std::gcd(period, int64_t(16));
  if (k0 * period <= min_len) return k0 * ceil_div(min_len, k0 * period);
  return ceil_div(min_len, period);
}

Tiling make_tiling(int64_t d, int64_t min_len) {
  Tiling t;
  t.w = d <= kTileCols ? d : kTileCols;
  t.ntiles = ceil_div(d, t.w);
  t.k = repeat_for_lanes(d, min_len);
  t.seg = t.k * t.w;
  return t;
}

// Calls f(offset, count, len) for the segments of rows [r0, r1) in the tile starting at
// column j0 (width wt): `count` segments of `len` values, k * d apart. A segment is k whole
// rows when k > 1 (then j0 == 0 and wt == d, so the k rows are contiguous), else one row's
// slice of the tile; a last segment of fewer rows comes as a second call. The hot functions
// take the whole run of segments, so the dispatch of a target_clones call is paid per block,
// not per row.
template <typename F>
inline void for_segments(int64_t r0, int64_t r1, int64_t d, int64_t j0, int64_t wt, int64_t k,
                         F&& f) {
  const int64_t count = (r1 - r0) / k;
  const int64_t rest = (r1 - r0) % k;
  if (count > 0) f(r0 * d + j0, count, k * wt);
  if (rest > 0) f((r0 + count * k) * d + j0, int64_t(1), rest * wt);
}


// >= every segment length: kTileCols for tiled rows, < 2 * kSegmentMin for repeated ones
constexpr int64_t kStreamBuf = kTileCols;
static_assert(2 * kSegmentMin <= kStreamBuf, "a repeated-row segment must fit the buffer");

// ---------------------------------------------------------------- column statistics

// Pass 1 over a segment: count and either the sum (kMoments) or min and max of the non-NaN
// values, in double. The sum is of x - ref (ref: a value of the column, see column_stats_impl), so block means and the
// differences between them keep their digits when |mean| >> std.
// NaN fails every comparison, so min/max skip it without a test; v == v is the NaN mask.
template <typename T, bool kMoments>
GF_TARGET_CLONES void stats_pass1(const T* x, int64_t count, int64_t stride, int64_t len,
                                  const double* ref, double* cnt, double* sum, double* mn,
                                  double* mx) {
  for (int64_t s = 0; s < count; ++s, x += stride) {
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) {
      const double v = double(x[p]);
      const bool ok = v == v;
      cnt[p] += ok ? 1.0 : 0.0;
      if (kMoments) {
        sum[p] += ok ? v - ref[p] : 0.0;
      } else {
        mn[p] = v < mn[p] ? v : mn[p];
        mx[p] = v > mx[p] ? v : mx[p];
      }
    }
  }
}

// Pass 2, from cache: sum of squared deviations from the block's column mean (both shifted
// by ref).
template <typename T>
GF_TARGET_CLONES void stats_pass2(const T* x, int64_t count, int64_t stride, int64_t len,
                                  const double* ref, const double* mean, double* m2) {
  for (int64_t s = 0; s < count; ++s, x += stride) {
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) {
      const double v = double(x[p]);
      const double dv = (v - ref[p]) - mean[p];
      m2[p] += v == v ? dv * dv : 0.0;
    }
  }
}

// Chan, Golub & LeVeque: merge (nb, mb, m2b) into (na, ma, m2a).
//   n = na + nb, delta = mb - ma, mean = ma + delta nb / n, M2 = M2a + M2b + delta^2 na nb / n
inline void chan_merge(double& na, double& ma, double& m2a, double nb, double mb, double m2b) {
  if (nb == 0.0) return;
  if (na == 0.0) {
    na = nb;
    ma = mb;
    m2a = m2b;
    return;
  }
  const double n = na + nb;
  const double delta = mb - ma;
  ma += delta * (nb / n);
  m2a += m2b + delta * delta * (na * (nb / n));
  na = n;
}

// Statistics of one superblock (rows [r0, r1)) in one column tile, written to p* (length wt;
// pmean relative to ref). acc holds 6 * seg doubles of per-segment-position state; ref is the
// per-column shift repeated to the segment length.
template <typename T, bool kMoments>
void stats_item(const T* x, int64_t d, const Tiling& tl, int64_t block_rows, int64_t r0,
                int64_t r1, int64_t j0, int64_t wt, const double* ref, double* acc, double* pcnt,
                double* pmean, double* pm2, double* pmn, double* pmx) {
  const int64_t k = tl.k;
  const int64_t len = k * wt;
  double* cnt = acc;
  double* sum = acc + tl.seg;
  double* mn = acc + 2 * tl.seg;
  double* mx = acc + 3 * tl.seg;
  double* m2 = acc + 4 * tl.seg;
  double* bm = acc + 5 * tl.seg;
  for (int64_t c = 0; c < wt; ++c) {
    pcnt[c] = 0.0;
    pmn[c] = kInf;
    pmx[c] = -kInf;
    if (kMoments) pmean[c] = pm2[c] = 0.0;
  }
  for (int64_t b0 = r0; b0 < r1; b0 += block_rows) {
    const int64_t b1 = std::min(b0 + block_rows, r1);
    std::fill(cnt, cnt + len, 0.0);
    std::fill(mn, mn + len, kInf);
    std::fill(mx, mx + len, -kInf);
    if (kMoments) {
      std::fill(sum, sum + len, 0.0);
      std::fill(m2, m2 + len, 0.0);
    }
    for_segments(b0, b1, d, j0, wt, k, [&](int64_t off, int64_t count, int64_t n) {
      stats_pass1<T, kMoments>(x + off, count, k * d, n, ref, cnt, sum, mn, mx);
    });
    // fold the k copies of each column, in a fixed order
    for (int64_t c = 0; c < wt; ++c) {
      double nb = 0.0, sb = 0.0, lo = kInf, hi = -kInf;
      for (int64_t q = 0; q < k; ++q) {
        const int64_t p = q * wt + c;
        nb += cnt[p];
        if (kMoments) {
          sb += sum[p];
        } else {
          lo = mn[p] < lo ? mn[p] : lo;
          hi = mx[p] > hi ? mx[p] : hi;
        }
      }
      pmn[c] = lo < pmn[c] ? lo : pmn[c];
      pmx[c] = hi > pmx[c] ? hi : pmx[c];
      cnt[c] = nb;  // slot c (q == 0) is read again only below, as the block's count
      if (kMoments) {
        const double mean = nb > 0.0 ? sb / nb : 0.0;
        for (int64_t q = 0; q < k; ++q) bm[q * wt + c] = mean;
      }
    }
    if (kMoments) {
      for_segments(b0, b1, d, j0, wt, k, [&](int64_t off, int64_t count, int64_t n) {
        stats_pass2<T>(x + off, count, k * d, n, ref, bm, m2);
      });
      for (int64_t c = 0; c < wt; ++c) {
        double m2b = 0.0;
        for (int64_t q = 0; q < k; ++q) m2b += m2[q * wt + c];
        chan_merge(pcnt[c], pmean[c], pm2[c], cnt[c], bm[c], m2b);
      }
    } else {
      for (int64_t c = 0; c < wt; ++c) pcnt[c] += cnt[c];
    }
  }
}

template <typename T, bool kMoments>
void column_stats_impl(const T* x, int64_t n, int64_t d, const ColumnStatsOut& out) {
  const Tiling tl = make_tiling(d, kStatsSegmentMin);
  const int64_t block_rows = tl.k * std::max<int64_t>(1, kBlockElems / tl.seg);
  int64_t nsuper = std::clamp<int64_t>(ceil_div(n * d, kSuperElems), 1, kMaxSuper);
  nsuper = std::min<int64_t>(nsuper, std::max<int64_t>(1, kMaxPartials / (5 * d)));
  int64_t rows = ceil_div(n, nsuper);
  if (rows > block_rows) rows = ceil_div(rows, block_rows) * block_rows;
  nsuper = ceil_div(n, rows);

  // Every mean is accumulated relative to ref[j], the column's first finite value among its
  // first rows (x - ref is exact for values within a factor 2 of ref, Sterbenz): with mean 1e6
  // and std 1e-3 the block means then differ in their leading digits, not below an ulp of 1e6.
  // The same ref for all blocks keeps the merge order and the result thread independent.
  // Stored repeated k times, as the segments see it.
  std::vector<double> ref(kMoments ? size_t(tl.k) * size_t(d) : 0, 0.0);
  if (kMoments) {
    const int64_t scan = std::min<int64_t>(n, 64);
    for (int64_t j = 0; j < d; ++j) {
      for (int64_t i = 0; i < scan; ++i) {
        const double v = double(x[i * d + j]);
        if (std::isfinite(v)) {
          ref[j] = v;
          break;
        }
      }
    }
    for (int64_t q = 1; q < tl.k; ++q) {
      std::copy(ref.begin(), ref.begin() + d, ref.begin() + q * d);
    }
  }

  // partials[s] = 5 arrays of d: count, mean - ref, m2, min, max
  std::vector<double> partials(size_t(nsuper) * 5 * size_t(d));
  const int64_t items = nsuper * tl.ntiles;
  parallel_for(items, rows * tl.w, [&](int64_t b, int64_t e) {
    std::vector<double> acc(6 * size_t(tl.seg));
    for (int64_t it = b; it < e; ++it) {
      const int64_t s = it / tl.ntiles, t = it % tl.ntiles;
      const int64_t j0 = t * tl.w, wt = std::min(tl.w, d - j0);
      const int64_t r0 = s * rows, r1 = std::min(n, r0 + rows);
      double* p = partials.data() + size_t(s) * 5 * size_t(d) + size_t(j0);
      const double* rj = kMoments ? ref.data() + j0 : nullptr;
      stats_item<T, kMoments>(x, d, tl, block_rows, r0, r1, j0, wt, rj, acc.data(), p, p + d,
                              p + 2 * d, p + 3 * d, p + 4 * d);
    }
  });

  // superblocks merged in row order, so the result is the same for any thread count
  for (int64_t j = 0; j < d; ++j) {
    double cnt = 0.0, mean = 0.0, m2 = 0.0, lo = kInf, hi = -kInf;
    for (int64_t s = 0; s < nsuper; ++s) {
      const double* p = partials.data() + size_t(s) * 5 * size_t(d) + size_t(j);
      if (kMoments) {
        chan_merge(cnt, mean, m2, p[0], p[d], p[2 * d]);
      } else {
        cnt += p[0];
      }
      lo = p[3 * d] < lo ? p[3 * d] : lo;
      hi = p[4 * d] > hi ? p[4 * d] : hi;
    }
    out.count[j] = cnt;
    if (!kMoments) {
      out.min[j] = lo;
      out.max[j] = hi;
    } else {
      out.mean[j] = cnt > 0.0 ? ref[j] + mean : std::numeric_limits<double>::quiet_NaN();
      out.m2[j] = cnt > 0.0 ? m2 : std::numeric_limits<double>::quiet_NaN();
    }
  }
}

// ---------------------------------------------------------------- transform

// always_inline: a helper the compiler leaves out of line is compiled for the baseline target
// only, and the AVX-512 clone of the caller would run SSE2 code.
template <typename T, bool kClip>
__attribute__((always_inline)) inline void affine_values(const T* x, int64_t len, const double* shift, const double* mul,
                          const double* add, double lo, double hi, T* out, double& nans,
                          double& infs) {
  double nn = 0.0, ni = 0.0;
#pragma omp simd reduction(+ : nn, ni)
  for (int64_t p = 0; p < len; ++p) {
    const double v = double(x[p]);
    nn += v != v ? 1.0 : 0.0;
    ni += std::fabs(v) == kInf ? 1.0 : 0.0;
    double y = (v - shift[p]) * mul[p] + add[p];
    if (kClip) {
      y = y < lo ? lo : y;  // NaN fails both tests and passes through, as in np.clip
      y = y > hi ? hi : y;
    }
    out[p] = T(y);
  }
  nans += nn;
  infs += ni;
}

template <typename T, bool kClip, bool kStream>
GF_TARGET_CLONES void affine_segments(const T* x, int64_t count, int64_t stride, int64_t len,
                                      const double* shift, const double* mul, const double* add,
                                      double lo, double hi, T* out, double* nan_seen,
                                      double* inf_seen) {
  double nans = 0.0, infs = 0.0;
  alignas(64) T buf[kStream ? kStreamBuf : 1];
  for (int64_t s = 0; s < count; ++s, x += stride, out += stride) {
    if (kStream) {
      affine_values<T, kClip>(x, len, shift, mul, add, lo, hi, buf, nans, infs);
      stream_copy(out, buf, len);
    } else {
      affine_values<T, kClip>(x, len, shift, mul, add, lo, hi, out, nans, infs);
    }
  }
  *nan_seen += nans;
  *inf_seen += infs;
}

template <typename T, bool kClip, bool kStream>
NonFiniteSeen affine_impl(const T* x, const double* shift, const double* mul, const double* add,
                          const AffineArgs& a, T* out) {
  const int64_t n = a.n, d = a.d;
  const Tiling tl = make_tiling(d, kSegmentMin);
  // k > 1: the per-column coefficients repeated k times to match a k-row segment
  std::vector<double> rep;
  if (tl.k > 1) {
    rep.resize(3 * size_t(tl.seg));
    for (int64_t q = 0; q < tl.k; ++q) {
      for (int64_t j = 0; j < d; ++j) {
        rep[q * d + j] = shift[j];
        rep[tl.seg + q * d + j] = mul[j];
        rep[2 * tl.seg + q * d + j] = add[j];
      }
    }
    shift = rep.data();
    mul = rep.data() + tl.seg;
    add = rep.data() + 2 * tl.seg;
  }
  const int64_t block_rows = tl.k * std::max<int64_t>(1, kAffineBlockElems / tl.seg);
  std::atomic<bool> any_nan{false}, any_inf{false};
  parallel_for(ceil_div(n, block_rows), block_rows * d, [&](int64_t b, int64_t e) {
    double nans = 0.0, infs = 0.0;
    const int64_t r1 = std::min(n, e * block_rows);
    for (int64_t r0 = b * block_rows; r0 < r1; r0 += block_rows) {
      const int64_t rb = std::min(r1, r0 + block_rows);
      for (int64_t t = 0; t < tl.ntiles; ++t) {
        const int64_t j0 = t * tl.w, wt = std::min(tl.w, d - j0);
        for_segments(r0, rb, d, j0, wt, tl.k, [&](int64_t off, int64_t count, int64_t len) {
          affine_segments<T, kClip, kStream>(x + off, count, tl.k * d, len, shift + j0,
                                             mul + j0, add + j0, a.lo, a.hi, out + off, &nans,
                                             &infs);
        });
      }
    }
    if (kStream) stream_fence();
    if (nans > 0.0) any_nan.store(true, std::memory_order_relaxed);
    if (infs > 0.0) any_inf.store(true, std::memory_order_relaxed);
  });
  return {any_nan.load(), any_inf.load()};
}

// ---------------------------------------------------------------- images

// Images whose channel runs (inner) are long are walked run by run with the channel's two
// coefficients as scalars; short runs (NHWC: inner == 1) use a pattern of period
// channels * inner repeated to at least kSegmentMin, as the column kernels do.
bool long_runs(const ImageLayout& l) { return l.inner >= kSegmentMin; }

// Calls f(begin, end, channel) for the pieces of flat range [s, e) that lie in one run.
template <typename F>
inline void for_runs(const ImageLayout& l, int64_t s, int64_t e, F&& f) {
  while (s < e) {
    const int64_t run = s / l.inner;
    const int64_t end = std::min(e, (run + 1) * l.inner);
    f(s, end, run % l.channels);
    s = end;
  }
}

GF_TARGET_CLONES void u8_sums(const uint8_t* x, int64_t len, uint64_t* s_out, uint64_t* q_out) {
  uint32_t s = 0, q = 0;  // len <= kImageChunk keeps both exact
#pragma omp simd reduction(+ : s, q)
  for (int64_t i = 0; i < len; ++i) {
    const uint32_t v = x[i];
    s += v;
    q += v * v;
  }
  *s_out += s;
  *q_out += q;
}

// count contiguous segments of len bytes (count <= kImageChunk keeps the uint32 sums exact)
GF_TARGET_CLONES void u8_sums_pattern(const uint8_t* x, int64_t count, int64_t len, uint32_t* s,
                                      uint32_t* q) {
  for (int64_t i = 0; i < count; ++i, x += len) {
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) {
      const uint32_t v = x[p];
      s[p] += v;
      q[p] += v * v;
    }
  }
}

// In double, rounded once to float: x / 255 comes out exactly as numpy's (x / 255) cast to
// float32 (x / 255 repeats x's 8 bits, so it is never near a float rounding midpoint), and a
// standardized pixel is as close to its float64 value as a float allows; x - shift is exact,
// so a pixel equal to the mean gives exactly 0. The memory traffic (1 byte in, 4 out) hides
// the wider arithmetic.
template <bool kStream>
GF_TARGET_CLONES void u8_affine_run(const uint8_t* x, int64_t len, double s, double m, double a,
                                    float* out) {
  if (!kStream) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) out[i] = float((double(x[i]) - s) * m + a);
    return;
  }
  alignas(64) float buf[kStreamBuf];
  for (int64_t i0 = 0; i0 < len; i0 += kStreamBuf) {
    const int64_t n = std::min(kStreamBuf, len - i0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = float((double(x[i0 + i]) - s) * m + a);
    stream_copy(out + i0, buf, n);
  }
}

template <bool kStream>
GF_TARGET_CLONES void u8_affine_pattern(const uint8_t* x, int64_t count, int64_t len,
                                        const double* s, const double* m, const double* a,
                                        float* out) {
  alignas(64) float buf[kStream ? kStreamBuf : 1];
  for (int64_t i = 0; i < count; ++i, x += len, out += len) {
    if (!kStream) {
#pragma omp simd
      for (int64_t p = 0; p < len; ++p) out[p] = float((double(x[p]) - s[p]) * m[p] + a[p]);
      continue;
    }
    for (int64_t p0 = 0; p0 < len; p0 += kStreamBuf) {
      const int64_t n = std::min(kStreamBuf, len - p0);
#pragma omp simd
      for (int64_t p = 0; p < n; ++p) {
        buf[p] = float((double(x[p0 + p]) - s[p0 + p]) * m[p0 + p] + a[p0 + p]);
      }
      stream_copy(out + p0, buf, n);
    }
  }
}

template <bool kStream>
void image_affine_impl(const uint8_t* x, const ImageLayout& l, const double* shift,
                       const double* mul, const double* add, float* out) {
  const int64_t C = l.channels;
  const int64_t total = l.outer * C * l.inner;
  if (long_runs(l)) {
    parallel_for(ceil_div(total, kImageChunk), kImageChunk, [&](int64_t b, int64_t e) {
      for_runs(l, b * kImageChunk, std::min(total, e * kImageChunk),
               [&](int64_t s0, int64_t s1, int64_t c) {
                 u8_affine_run<kStream>(x + s0, s1 - s0, shift[c], mul[c], add[c], out + s0);
               });
      if (kStream) stream_fence();
    });
    return;
  }
  const int64_t period = C * l.inner;
  const int64_t seg = repeat_for_lanes(period, kSegmentMin) * period;
  std::vector<double> ps(seg), pm(seg), pa(seg);
  for (int64_t p = 0; p < seg; ++p) {
    const int64_t c = (p / l.inner) % C;
    ps[p] = shift[c];
    pm[p] = mul[c];
    pa[p] = add[c];
  }
  const int64_t nfull = total / seg;
  parallel_for(ceil_div(total, seg), seg, [&](int64_t b, int64_t e) {
    const int64_t full_end = std::min(e, nfull);
    if (full_end > b) {
      u8_affine_pattern<kStream>(x + b * seg, full_end - b, seg, ps.data(), pm.data(), pa.data(),
                                 out + b * seg);
    }
    if (e > nfull && nfull * seg < total) {  // the partial last segment
      u8_affine_pattern<kStream>(x + nfull * seg, 1, total - nfull * seg, ps.data(), pm.data(),
                                 pa.data(), out + nfull * seg);
    }
    if (kStream) stream_fence();
  });
}

}  // namespace

template <typename T>
void column_stats(const T* x, int64_t n, int64_t d, const ColumnStatsOut& out) {
  if (n <= 0 || d <= 0) fail_value("X: expected at least one row and one column");
  if (out.mean != nullptr) {
    column_stats_impl<T, true>(x, n, d, out);
  } else {
    column_stats_impl<T, false>(x, n, d, out);
  }
}

template <typename T>
NonFiniteSeen affine_columns(const T* x, const double* shift, const double* mul,
                             const double* add, const AffineArgs& a, T* out) {
  if (a.n <= 0 || a.d <= 0) return {};
  const bool stream = a.n * a.d * int64_t(sizeof(T)) >= kStreamMinBytes;
  if (a.clip) {
    return stream ? affine_impl<T, true, true>(x, shift, mul, add, a, out)
                  : affine_impl<T, true, false>(x, shift, mul, add, a, out);
  }
  return stream ? affine_impl<T, false, true>(x, shift, mul, add, a, out)
                : affine_impl<T, false, false>(x, shift, mul, add, a, out);
}

void image_channel_stats(const uint8_t* x, const ImageLayout& l, double* mean, double* var) {
  const int64_t C = l.channels;
  const int64_t total = l.outer * C * l.inner;
  std::vector<std::atomic<uint64_t>> sum(C), sumsq(C);
  for (int64_t c = 0; c < C; ++c) sum[c] = sumsq[c] = 0;
  // Integer sums: every split of the work gives the same totals.
  if (long_runs(l)) {
    parallel_for(ceil_div(total, kImageChunk), kImageChunk, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> s(C, 0), q(C, 0);
      const int64_t stop = std::min(total, e * kImageChunk);
      for (int64_t c0 = b * kImageChunk; c0 < stop; c0 += kImageChunk) {
        for_runs(l, c0, std::min(stop, c0 + kImageChunk), [&](int64_t s0, int64_t s1, int64_t c) {
          u8_sums(x + s0, s1 - s0, &s[c], &q[c]);
        });
      }
      for (int64_t c = 0; c < C; ++c) {
        sum[c].fetch_add(s[c], std::memory_order_relaxed);
        sumsq[c].fetch_add(q[c], std::memory_order_relaxed);
      }
    });
  } else {
    const int64_t period = C * l.inner;
    const int64_t seg = repeat_for_lanes(period, kSegmentMin) * period;
    const int64_t nseg = ceil_div(total, seg);
    parallel_for(nseg, seg, [&](int64_t b, int64_t e) {
      // uint32 per position, flushed to uint64 before kImageChunk segments could overflow it
      std::vector<uint32_t> s32(seg, 0), q32(seg, 0);
      std::vector<uint64_t> s64(seg, 0), q64(seg, 0);
      auto flush = [&]() {
        for (int64_t p = 0; p < seg; ++p) {
          s64[p] += s32[p];
          q64[p] += q32[p];
          s32[p] = q32[p] = 0;
        }
      };
      // whole segments in runs of at most kImageChunk, then the partial last one
      const int64_t full_end = std::min(e, total / seg);
      for (int64_t i = b; i < full_end; i += kImageChunk) {
        const int64_t count = std::min(kImageChunk, full_end - i);
        u8_sums_pattern(x + i * seg, count, seg, s32.data(), q32.data());
        flush();
      }
      if (e > full_end && full_end * seg < total) {
        u8_sums_pattern(x + full_end * seg, 1, total - full_end * seg, s32.data(), q32.data());
        flush();
      }
      std::vector<uint64_t> s(C, 0), q(C, 0);
      for (int64_t p = 0; p < seg; ++p) {
        const int64_t c = (p / l.inner) % C;
        s[c] += s64[p];
        q[c] += q64[p];
      }
      for (int64_t c = 0; c < C; ++c) {
        sum[c].fetch_add(s[c], std::memory_order_relaxed);
        sumsq[c].fetch_add(q[c], std::memory_order_relaxed);
      }
    });
  }
  const uint64_t cnt = uint64_t(l.outer * l.inner);
  for (int64_t c = 0; c < C; ++c) {
    const uint64_t s = sum[c].load(), q = sumsq[c].load();
    mean[c] = double(s) / double(cnt);
    // n sum(x^2) - (sum x)^2 >= 0 exactly in 128-bit integers: no cancellation at all
    const unsigned __int128 num = (unsigned __int128)cnt * q - (unsigned __int128)s * s;
    var[c] = double(num) / (double(cnt) * double(cnt));
  }
}

void image_affine(const uint8_t* x, const ImageLayout& l, const double* shift, const double* mul,
                  const double* add, float* out) {
  const int64_t bytes = l.outer * l.channels * l.inner * int64_t(sizeof(float));
  if (bytes >= kStreamMinBytes) {
    image_affine_impl<true>(x, l, shift, mul, add, out);
  } else {
    image_affine_impl<false>(x, l, shift, mul, add, out);
  }
}

#define GF_INSTANTIATE(T)                                                                  \
  template void column_stats<T>(const T*, int64_t, int64_t, const ColumnStatsOut&);         \
  template NonFiniteSeen affine_columns<T>(const T*, const double*, const double*,          \
                                           const double*, const AffineArgs&, T*);
GF_INSTANTIATE(float)
GF_INSTANTIATE(double)
#undef GF_INSTANTIATE

}  // namespace gradfuse
