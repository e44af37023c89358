// Segment sums for data-parallel all-reduce (gradfuse.distributed, ShmReducer).
#pragma once

#include <cstdint>

namespace gradfuse {

// For i < n and every d < ndst:
//   dst[d][i] = (((src[0][i] + src[1][i]) + src[2][i]) + ... + src[nsrc-1][i]) / div
// (the sum in source order, then divided unless div == 1; no reassociation, so the bits are
// the same as numpy's np.add chain). A dst may alias a src over the same range: each block is
// read completely before it is written. Elementwise, so the result does not depend on the
// thread count.
template <typename T>
void segment_sum(const T* const* src, int nsrc, T* const* dst, int ndst, int64_t n, double div);

}  // namespace gradfuse
