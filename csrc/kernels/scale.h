// Data scaling: per-column statistics for a streaming fit, the fused per-column affine map of
// transform / inverse_transform, and the uint8 image path (pixels 0..255 -> float32).
#pragma once

#include <cstdint>

namespace gradfuse {

// Per-column statistics of a row-major (n, d) array, accumulated in double whatever the
// input type. Arrays of length d owned by the caller. Either the moments (mean and m2 set,
// min and max nullptr: StandardScaler) or the range (mean and m2 nullptr: MinMaxScaler, no
// second pass over each block) are computed, with the count in both cases. Infinity shows as
// a non-finite mean/m2 or as an infinite min/max.
struct ColumnStatsOut {
  double* count = nullptr;  // non-NaN values per column (n minus the NaNs)
  double* mean = nullptr;   // mean of the non-NaN values (NaN when count == 0)
  double* m2 = nullptr;     // sum of squared deviations from that mean
  double* min = nullptr;    // +inf when count == 0; -inf if the column holds -inf
  double* max = nullptr;    // -inf when count == 0; +inf if the column holds +inf
};

// One read of x from memory. The rows are cut into blocks of a fixed size that depends only
// on (n, d); a block's mean and M2 come from two passes over it while it sits in L1/L2
// (x - mean, not sum(x^2) - n mean^2, so no cancellation), and blocks are combined with Chan,
// Golub and LeVeque's pairwise update in a fixed order. The result is therefore bitwise the
// same for any thread count, and a fit in chunks merged the same way agrees with one fit to
// a few ulps.
template <typename T>
void column_stats(const T* x, int64_t n, int64_t d, const ColumnStatsOut& out);

// out[i, j] = clip((x[i, j] - shift[j]) * mul[j] + add[j], lo, hi) (clip only when clip is
// set), computed in double and rounded once to T. Reads x once, writes out once.
// NaN passes through (and through the clip); the return value says whether x held any NaN
// or infinity, so the caller can reject them without a second pass.
struct AffineArgs {
  int64_t n = 0;
  int64_t d = 0;
  bool clip = false;
  double lo = 0.0;
  double hi = 0.0;
};

struct NonFiniteSeen {
  bool nan = false;
  bool inf = false;
};

template <typename T>
NonFiniteSeen affine_columns(const T* x, const double* shift, const double* mul,
                             const double* add, const AffineArgs& a, T* out);

// A uint8 image batch seen as (outer, channels, inner): NCHW is (N, C, H*W), NHWC is
// (N*H*W, C, 1), a flat (N, D) batch with one channel is (1, 1, N*D).
struct ImageLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};

// Exact per-channel mean and (population) variance in pixel units: the sums of x and x^2 are
// integers, accumulated without rounding, so the result does not depend on the thread count
// or the order. mean and var have length channels.
void image_channel_stats(const uint8_t* x, const ImageLayout& l, double* mean, double* var);

// out[o, c, i] = float((x[o, c, i] - shift[c]) * mul[c] + add[c]), computed in double and
// rounded once: one read of the bytes, one write of the floats.
void image_affine(const uint8_t* x, const ImageLayout& l, const double* shift, const double* mul,
                  const double* add, float* out);

}  // namespace gradfuse
