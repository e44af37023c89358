// Normalization layers on the GPU (CPU: csrc/kernels/norms.cpp): layer / RMS / group norm as
// row kernels (a warp per row up to 1024 elements, else a block per row; warp-shuffle
// reductions), batch norm and the weight / bias gradients as per-channel reductions over fixed
// chunks of samples (coalesced tiles; partial sums in double, combined in chunk order, so the
// bits do not depend on the launch).
//
// Statistics, as on the CPU, are one read of the row: s1 = sum(x - k), s2 = sum((x - k)^2)
// around k = the row's first value (no cancellation for data far from 0), var = s2/n - (s1/n)^2.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace gf::cuda {
namespace {

using namespace dev;

// A row of `cols` elements and its affine channel: rows are (sample, group) pairs of a group
// norm (groups, cg channels of s elements each) or the rows of a layer norm (groups = 1,
// cg = cols, s = 1: channel = column).
struct RowMap {
  int64_t rows, cols, groups, cg, s;
  __device__ int64_t channel(int64_t r, int64_t j) const {
    return (groups == 1 ? 0 : (r % groups) * cg) + (s == 1 ? j : j / s);
  }
};

template <typename T, int G>
__global__ void row_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ b, RowMap m, double eps, bool rms,
                               T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd) {
  __shared__ double sh[32];
  using Gr = Group<G>;
  const int64_t per_block = G ? blockDim.x / 32 : 1;
  const int64_t r = int64_t(blockIdx.x) * per_block + (G ? threadIdx.x / 32 : 0);
  if (r >= m.rows) return;
  const int lane = Gr::rank(), gs = Gr::size();
  const T* xr = x + r * m.cols;
  T* yr = y + r * m.cols;
  const T k = rms ? T(0) : xr[0];
  T a1 = 0, a2 = 0;
  for (int64_t j = lane; j < m.cols; j += gs) {
    const T d = xr[j] - k;
    a1 += d;
    a2 += d * d;
  }
  const double n = double(m.cols);
  const double s1 = rms ? 0.0 : Gr::sum(double(a1), sh);
  const double s2 = Gr::sum(double(a2), sh);
  const double mu = s1 / n;
  const double var = s2 / n - mu * mu;
  const T mt = rms ? T(0) : T(double(k) + mu);
  const T rs = T(1.0 / sqrt((var > 0 ? var : 0.0) + eps));
  if (lane == 0) {
    if (mean) mean[r] = mt;
    rstd[r] = rs;
  }
  for (int64_t j = lane; j < m.cols; j += gs) {
    T v = (xr[j] - mt) * rs;
    if (w || b) {
      const int64_t ch = m.channel(r, j);
      if (w) v = v * w[ch];
      if (b) v = v + b[ch];
    }
    yr[j] = v;
  }
}

template <typename T, int G>
__global__ void row_bwd_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                               const T* __restrict__ w, const T* __restrict__ mean,
                               const T* __restrict__ rstd, RowMap m, bool rms,
                               T* __restrict__ dx) {
  __shared__ double sh[32];
  using Gr = Group<G>;
  const int64_t per_block = G ? blockDim.x / 32 : 1;
  const int64_t r = int64_t(blockIdx.x) * per_block + (G ? threadIdx.x / 32 : 0);
  if (r >= m.rows) return;
  const int lane = Gr::rank(), gs = Gr::size();
  const T* xr = x + r * m.cols;
  const T* gr = dy + r * m.cols;
  T* dr = dx + r * m.cols;
  const T mu = rms ? T(0) : mean[r], rs = rstd[r];
  T a1 = 0, a2 = 0;
  for (int64_t j = lane; j < m.cols; j += gs) {
    const T g = w ? gr[j] * w[m.channel(r, j)] : gr[j];
    a1 += g;
    a2 += g * ((xr[j] - mu) * rs);
  }
  const T inv_n = T(1.0 / double(m.cols));
  const T sg = rms ? T(0) : T(Gr::sum(double(a1), sh)) * inv_n;
  const T sgx = T(Gr::sum(double(a2), sh)) * inv_n;
  for (int64_t j = lane; j < m.cols; j += gs) {
    const T g = w ? gr[j] * w[m.channel(r, j)] : gr[j];
    const T xh = (xr[j] - mu) * rs;
    dr[j] = rs * (g - sg - xh * sgx);
  }
}

// ---- layer / RMS norm rows of 1024 < D <= 2048 * 16 / sizeof(T) elements held in registers
// (16-byte vectors, NV per thread, a block per row): the forward reads x once from memory;
// the backward reads x and dy once and, with a persistent grid (each block walks rows
// blockIdx.x, + gridDim.x, ...; a thread owns the same columns in every row), accumulates
// dweight / dbias partials in registers, written once per block and summed over the blocks in
// order by row_dwdb_finish: no second pass over x and dy for the weight gradients.
constexpr int kRowThreads = 256;

template <typename T, int NV>
__global__ void __launch_bounds__(kRowThreads)
row_fwd_cached(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
               int64_t rows, int64_t cols, double eps, bool rms, T* __restrict__ y,
               T* __restrict__ mean, T* __restrict__ rstd) {
  using V = Vec<T>;
  using VT = typename V::type;
  constexpr int L = V::n;
  __shared__ double sh[32];
  const int64_t nvec = cols / L;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const VT* xr = reinterpret_cast<const VT*>(x + r * cols);
    T v[NV][L];
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * kRowThreads;
      if (i < nvec) vget(xr[i], v[k]);
    }
    const T shift = rms ? T(0) : x[r * cols];
    T a1 = 0, a2 = 0;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      if (threadIdx.x + int64_t(k) * kRowThreads < nvec) {
#pragma unroll
        for (int e = 0; e < L; ++e) {
          const T d = v[k][e] - shift;
          a1 += d;
          a2 += d * d;
        }
      }
    }
    const double n = double(cols);
    const double s1 = rms ? 0.0 : block_sum(double(a1), sh);
    const double s2 = block_sum(double(a2), sh);
    const double mu = s1 / n;
    const double var = s2 / n - mu * mu;
    const T mt = rms ? T(0) : T(double(shift) + mu);
    const T rs = T(1.0 / sqrt((var > 0 ? var : 0.0) + eps));
    if (threadIdx.x == 0) {
      if (mean) mean[r] = mt;
      rstd[r] = rs;
    }
    VT* yr = reinterpret_cast<VT*>(y + r * cols);
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * kRowThreads;
      if (i < nvec) {
        T wv[L], bv[L];
        if (w) vget(reinterpret_cast<const VT*>(w)[i], wv);
        if (b) vget(reinterpret_cast<const VT*>(b)[i], bv);
#pragma unroll
        for (int e = 0; e < L; ++e) {
          T o = (v[k][e] - mt) * rs;
          if (w) o = o * wv[e];
          if (b) o = o + bv[e];
          v[k][e] = o;
        }
        yr[i] = vmake(v[k]);
      }
    }
  }
}

template <typename T, int NV>
__global__ void __launch_bounds__(kRowThreads)
row_bwd_cached(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ w,
               const T* __restrict__ mean, const T* __restrict__ rstd, int64_t rows,
               int64_t cols, bool rms, T* __restrict__ dx, double* __restrict__ part_w,
               double* __restrict__ part_b) {
  using V = Vec<T>;
  using VT = typename V::type;
  constexpr int L = V::n;
  __shared__ double sh[32];
  const int64_t nvec = cols / L;
  T accw[NV][L] = {}, accb[NV][L] = {};
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const VT* xr = reinterpret_cast<const VT*>(x + r * cols);
    const VT* gr = reinterpret_cast<const VT*>(dy + r * cols);
    T xv[NV][L], gv[NV][L];
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * kRowThreads;
      if (i < nvec) {
        vget(xr[i], xv[k]);
        vget(gr[i], gv[k]);
      }
    }
    const T mu = rms ? T(0) : mean[r], rs = rstd[r];
    T a1 = 0, a2 = 0;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * kRowThreads;
      if (i < nvec) {
        T wv[L];
        if (w) vget(reinterpret_cast<const VT*>(w)[i], wv);
#pragma unroll
        for (int e = 0; e < L; ++e) {
          const T xh = (xv[k][e] - mu) * rs;
          accw[k][e] += gv[k][e] * xh;
          accb[k][e] += gv[k][e];
          const T g = w ? gv[k][e] * wv[e] : gv[k][e];
          a1 += g;
          a2 += g * xh;
          xv[k][e] = xh;  // keep xhat
          gv[k][e] = g;   // and w dy
        }
      }
    }
    const T inv_n = T(1.0 / double(cols));
    const T sg = rms ? T(0) : T(block_sum(double(a1), sh)) * inv_n;
    const T sgx = T(block_sum(double(a2), sh)) * inv_n;
    if (dx) {
      VT* dr = reinterpret_cast<VT*>(dx + r * cols);
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        const int64_t i = threadIdx.x + int64_t(k) * kRowThreads;
        if (i < nvec) {
          T o[L];
#pragma unroll
          for (int e = 0; e < L; ++e) o[e] = rs * (gv[k][e] - sg - xv[k][e] * sgx);
          dr[i] = vmake(o);
        }
      }
    }
  }
  if (part_w) {
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * kRowThreads;
      if (i < nvec) {
#pragma unroll
        for (int e = 0; e < L; ++e) {
          part_w[int64_t(blockIdx.x) * cols + i * L + e] = double(accw[k][e]);
          part_b[int64_t(blockIdx.x) * cols + i * L + e] = double(accb[k][e]);
        }
      }
    }
  }
}

template <typename T>
__global__ void row_dwdb_finish(const double* pw, const double* pb, int64_t nb, int64_t cols,
                                T* dw, T* db) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double a = 0, b = 0;
  for (int64_t k = 0; k < nb; ++k) {
    a += pw[k * cols + j];
    b += pb[k * cols + j];
  }
  if (dw) dw[j] = T(a);
  if (db) db[j] = T(b);
}

int num_sms() {
  static int sms = [] {
    int d = 0, v = 0;
    cudaGetDevice(&d);
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, d);
    return v > 0 ? v : 1;
  }();
  return sms;
}

// Whether the register path serves this layer norm: 16-byte rows and vectors, 1024 < D and
// at most 8 vectors per thread.
template <typename T>
int cached_nv(int64_t cols, const void* x, const void* w, const void* b, const void* y) {
  constexpr int L = Vec<T>::n;
  if (cols <= 1024 || cols % L != 0) return 0;
  if (!aligned16(x) || !aligned16(y) || (w && !aligned16(w)) || (b && !aligned16(b))) return 0;
  const int64_t per = (cols / L + kRowThreads - 1) / kRowThreads;
  return per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : per <= 8 ? 8 : 0;
}

template <typename T>
bool row_fwd_fast(const T* x, const T* w, const T* b, const RowNormArgs& a, T* y, T* mean,
                  T* rstd) {
  const int nv = cached_nv<T>(a.cols, x, w, b, y);
  if (!nv) return false;
  const unsigned grid = static_cast<unsigned>(a.rows < (int64_t(1) << 30) ? a.rows : (1 << 30));
#define GF_RF(NV)                                                                           \
  row_fwd_cached<T, NV><<<grid, kRowThreads, 0, stream()>>>(x, w, b, a.rows, a.cols, a.eps, \
                                                            a.rms, y, mean, rstd)
  switch (nv) {
    case 1: GF_RF(1); break;
    case 2: GF_RF(2); break;
    case 4: GF_RF(4); break;
    default: GF_RF(8); break;
  }
#undef GF_RF
  GF_CUDA_CHECK_LAUNCH("row_norm_forward");
  return true;
}

template <typename T>
bool row_bwd_fast(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                  const RowNormArgs& a, T* dx, T* dw, T* db) {
  const int nv = cached_nv<T>(a.cols, x, w, dy, dx ? static_cast<const void*>(dx) : x);
  if (!nv) return false;
  // 2 blocks per SM stay resident with the registers NV = 8 needs; fewer when rows are few
  const int64_t want = int64_t(num_sms()) * 2;
  const int64_t nb = a.rows < want ? a.rows : want;
  double* pw = nullptr;
  double* pb = nullptr;
  if (dw || db) {
    pw = static_cast<double*>(alloc(sizeof(double) * size_t(2 * nb * a.cols)));
    pb = pw + nb * a.cols;
  }
#define GF_RB(NV)                                                                           \
  row_bwd_cached<T, NV><<<static_cast<unsigned>(nb), kRowThreads, 0, stream()>>>(           \
      x, dy, w, mean, rstd, a.rows, a.cols, a.rms, dx, pw, pb)
  switch (nv) {
    case 1: GF_RB(1); break;
    case 2: GF_RB(2); break;
    case 4: GF_RB(4); break;
    default: GF_RB(8); break;
  }
#undef GF_RB
  GF_CUDA_CHECK_LAUNCH("row_norm_backward");
  if (pw) {
    row_dwdb_finish<T><<<static_cast<unsigned>((a.cols + kThreads - 1) / kThreads), kThreads, 0,
                         stream()>>>(pw, pb, nb, a.cols, dw, db);
    GF_CUDA_CHECK_LAUNCH("row_norm_backward (dw, db)");
    gf::cuda::free(pw);
  }
  return true;
}

template <typename T, int G>
void launch_rows(const RowMap& m, bool fwd, const T* x, const T* dy, const T* w, const T* b,
                 const T* mean_in, const T* rstd_in, double eps, bool rms, T* out, T* mean,
                 T* rstd) {
  const unsigned threads = G ? kThreads : 512;
  const unsigned grid = static_cast<unsigned>(G ? (m.rows + 7) / 8 : m.rows);
  if (fwd) {
    row_fwd_kernel<T, G><<<grid, threads, 0, stream()>>>(x, w, b, m, eps, rms, out, mean, rstd);
  } else {
    row_bwd_kernel<T, G><<<grid, threads, 0, stream()>>>(x, dy, w, mean_in, rstd_in, m, rms, out);
  }
  GF_CUDA_CHECK_LAUNCH(fwd ? "norm forward" : "norm backward");
}

template <typename T>
void rows(const RowMap& m, bool fwd, const T* x, const T* dy, const T* w, const T* b,
          const T* mean_in, const T* rstd_in, double eps, bool rms, T* out, T* mean, T* rstd) {
  if (m.rows == 0) return;
  if (m.cols <= 1024) {
    launch_rows<T, 32>(m, fwd, x, dy, w, b, mean_in, rstd_in, eps, rms, out, mean, rstd);
  } else {
    launch_rows<T, 0>(m, fwd, x, dy, w, b, mean_in, rstd_in, eps, rms, out, mean, rstd);
  }
}

// ---- per-channel reductions over (n, c, l): part[chunk * c + ch] = sums of op(i, ch, idx)
// over the samples i of the chunk (and all l positions).
constexpr int64_t kChunkElems = 4096;

int64_t chunk_samples(int64_t n, int64_t l) {
  if (l == 1) return 256;
  const int64_t s = kChunkElems / l;
  return s > 0 ? s : 1;
}

// l == 1: (n, c) rows; a 32 x 8 tile, 32 channels per block, coalesced along c.
template <typename Op>
__global__ void chan_reduce_cols(int64_t n, int64_t c, int64_t chunk, Op op, double2* part) {
  __shared__ double2 sh[8][33];
  const int64_t ch = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t i0 = int64_t(blockIdx.y) * chunk;
  const int64_t i1 = i0 + chunk < n ? i0 + chunk : n;
  double a = 0, b = 0;
  if (ch < c) {
    // 4 rows per step, their loads independent of each other (several in flight per thread)
    int64_t i = i0 + threadIdx.y;
    for (; i + 24 < i1; i += 32) {
      double2 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = op(i + 8 * u, ch, (i + 8 * u) * c + ch);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        a += v[u].x;
        b += v[u].y;
      }
    }
    for (; i < i1; i += 8) {
      const double2 v = op(i, ch, i * c + ch);
      a += v.x;
      b += v.y;
    }
  }
  sh[threadIdx.y][threadIdx.x] = make_double2(a, b);
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    for (int k = 1; k < 8; ++k) {
      a += sh[k][threadIdx.x].x;
      b += sh[k][threadIdx.x].y;
    }
    part[int64_t(blockIdx.y) * c + ch] = make_double2(a, b);
  }
}

// l > 1: one block per (channel, chunk of samples); threads run over the chunk's i * l + k
// (contiguous within a sample).
template <typename Op>
__global__ void chan_reduce_planes(int64_t n, int64_t c, int64_t l, int64_t chunk, Op op,
                                   double2* part) {
  __shared__ double sh[32];
  const int64_t ch = blockIdx.x;
  const int64_t i0 = int64_t(blockIdx.y) * chunk;
  const int64_t i1 = i0 + chunk < n ? i0 + chunk : n;
  const int64_t cnt = (i1 - i0) * l;
  double a = 0, b = 0;
  for (int64_t t = threadIdx.x; t < cnt; t += blockDim.x) {
    const int64_t i = i0 + t / l, k = t % l;
    const double2 v = op(i, ch, (i * c + ch) * l + k);
    a += v.x;
    b += v.y;
  }
  a = block_sum(a, sh);
  b = block_sum(b, sh);
  if (threadIdx.x == 0) part[int64_t(blockIdx.y) * c + ch] = make_double2(a, b);
}

template <typename Op>
double2* chan_reduce(int64_t n, int64_t c, int64_t l, Op op, int64_t* nchunks) {
  const int64_t chunk = chunk_samples(n, l);
  const int64_t nc = (n + chunk - 1) / chunk;
  auto* part = static_cast<double2*>(alloc(sizeof(double2) * size_t(nc * c)));
  if (l == 1) {
    dim3 grid(static_cast<unsigned>((c + 31) / 32), static_cast<unsigned>(nc));
    chan_reduce_cols<<<grid, dim3(32, 8), 0, stream()>>>(n, c, chunk, op, part);
  } else {
    dim3 grid(static_cast<unsigned>(c), static_cast<unsigned>(nc));
    chan_reduce_planes<<<grid, kThreads, 0, stream()>>>(n, c, l, chunk, op, part);
  }
  GF_CUDA_CHECK_LAUNCH("channel reduction");
  *nchunks = nc;
  return part;
}

// Shifted moments around k = x[sample 0, ch, position 0].
template <typename T>
struct StatsOp {
  const T* x;
  int64_t c, l;
  __device__ double2 operator()(int64_t, int64_t ch, int64_t idx) const {
    const double d = double(x[idx]) - double(x[ch * l]);
    return make_double2(d, d * d);
  }
};

// (dy, dy * xhat) with per-row statistics (layer / group norm weight gradients): row of
// element (i, ch) is i * groups + ch / cg.
template <typename T>
struct AffineGradOp {
  const T* x;
  const T* dy;
  const T* mean;
  const T* rstd;
  int64_t groups, cg;
  __device__ double2 operator()(int64_t i, int64_t ch, int64_t idx) const {
    const int64_t r = i * groups + (groups == 1 ? 0 : ch / cg);
    const T xh = (x[idx] - (mean ? mean[r] : T(0))) * rstd[r];
    return make_double2(double(dy[idx]), double(dy[idx] * xh));
  }
};

// (dy, dy (x - mean_ch)) for the batch norm backward.
template <typename T>
struct BnGradOp {
  const T* x;
  const T* dy;
  const T* mean;
  __device__ double2 operator()(int64_t, int64_t ch, int64_t idx) const {
    return make_double2(double(dy[idx]), double(dy[idx]) * (double(x[idx]) - double(mean[ch])));
  }
};

template <typename T>
__global__ void affine_grad_finish(const double2* part, int64_t nc, int64_t c, T* dw, T* db) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double a = 0, b = 0;
  for (int64_t k = 0; k < nc; ++k) {
    a += part[k * c + ch].x;
    b += part[k * c + ch].y;
  }
  if (dw) dw[ch] = T(b);
  if (db) db[ch] = T(a);
}

template <typename T>
__global__ void bn_stats_finish(const double2* part, int64_t nc, int64_t c, int64_t l,
                                int64_t m, const T* x, double eps, double factor, T* rm, T* rv,
                                T* save_mean, T* save_rstd) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double s1 = 0, s2 = 0;
  for (int64_t k = 0; k < nc; ++k) {
    s1 += part[k * c + ch].x;
    s2 += part[k * c + ch].y;
  }
  const double mu = s1 / double(m);
  double var = s2 / double(m) - mu * mu;
  var = var > 0 ? var : 0.0;
  const double mean = double(x[ch * l]) + mu;
  save_mean[ch] = T(mean);
  save_rstd[ch] = T(1.0 / sqrt(var + eps));
  if (rm) {
    const double unbiased = m > 1 ? var * double(m) / double(m - 1) : var;
    rm[ch] = T((1.0 - factor) * double(rm[ch]) + factor * mean);
    rv[ch] = T((1.0 - factor) * double(rv[ch]) + factor * unbiased);
  }
}

template <typename T>
__global__ void bn_eval_stats(const T* rm, const T* rv, int64_t c, double eps, T* save_mean,
                              T* save_rstd) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  save_mean[ch] = rm[ch];
  save_rstd[ch] = T(1.0 / sqrt(double(rv[ch]) + eps));
}

// Element-wise passes of batch norm over (n, c, l) without a 64-bit division per element:
// (N, C) input (l == 1) has a thread per channel, its per-channel coefficients in registers,
// walking kRowUnroll rows at a time (loads in flight); (N, C, L) has a block per (sample,
// channel) plane and the threads along it. Per channel, with xc = x - mean:
//   forward:  y = xc * A + B              A = rstd w, B = b
//   backward: dx = dy * K1 + xc * K2 + K3  K1 = rstd w; training: K2 = -K1 rstd^2 sdyx / m,
//             K3 = -K1 sdy / m; eval: K2 = K3 = 0
template <typename T>
struct BnCoef {
  T mean, k1, k2, k3;
};

template <typename T>
__device__ __forceinline__ BnCoef<T> bn_coef(int64_t ch, const T* w, const T* b, const T* mean,
                                             const T* rstd, const double2* sums, int64_t m,
                                             bool fwd, bool training) {
  const T rs = rstd[ch];
  const T wr = w ? w[ch] * rs : rs;
  BnCoef<T> k{mean[ch], wr, T(0), T(0)};
  if (fwd) {
    k.k3 = b ? b[ch] : T(0);
  } else if (training) {
    k.k2 = -wr * rs * rs * T(sums[ch].y / double(m));
    k.k3 = -wr * T(sums[ch].x / double(m));
  }
  return k;
}

// fwd: out = (x - mean) k1 + k3; bwd: out = dy k1 + (x - mean) k2 + k3
template <typename T>
__device__ __forceinline__ T bn_elem(const BnCoef<T>& k, T x, T dy, bool fwd) {
  return fwd ? (x - k.mean) * k.k1 + k.k3 : dy * k.k1 + (x - k.mean) * k.k2 + k.k3;
}

constexpr int kRowUnroll = 4;

template <typename T>
__global__ void bn_elem_rows(const T* __restrict__ x, const T* __restrict__ dy,
                             const T* __restrict__ w, const T* __restrict__ b,
                             const T* __restrict__ mean, const T* __restrict__ rstd,
                             const double2* __restrict__ sums, int64_t n, int64_t c, int64_t m,
                             bool fwd, bool training, T* __restrict__ out) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  const BnCoef<T> k = bn_coef(ch, w, b, mean, rstd, sums, m, fwd, training);
  const int64_t step = int64_t(gridDim.y) * kRowUnroll;
  for (int64_t r0 = int64_t(blockIdx.y) * kRowUnroll; r0 < n; r0 += step) {
    T xv[kRowUnroll], gv[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int64_t r = r0 + u;
      if (r < n) {
        xv[u] = x[r * c + ch];
        gv[u] = fwd ? T(0) : dy[r * c + ch];
      }
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int64_t r = r0 + u;
      if (r < n) out[r * c + ch] = bn_elem(k, xv[u], gv[u], fwd);
    }
  }
}

template <typename T>
__global__ void bn_elem_planes(const T* __restrict__ x, const T* __restrict__ dy,
                               const T* __restrict__ w, const T* __restrict__ b,
                               const T* __restrict__ mean, const T* __restrict__ rstd,
                               const double2* __restrict__ sums, int64_t n, int64_t c, int64_t l,
                               int64_t m, bool fwd, bool training, T* __restrict__ out) {
  for (int64_t pl = blockIdx.x; pl < n * c; pl += gridDim.x) {
    const BnCoef<T> k = bn_coef(pl % c, w, b, mean, rstd, sums, m, fwd, training);
    const int64_t base = pl * l;
    for (int64_t j = threadIdx.x; j < l; j += blockDim.x) {
      out[base + j] = bn_elem(k, x[base + j], fwd ? T(0) : dy[base + j], fwd);
    }
  }
}

template <typename T>
void bn_elementwise(const T* x, const T* dy, const T* w, const T* b, const T* mean,
                    const T* rstd, const double2* sums, const BatchNormArgs& a, bool fwd, T* out) {
  const int64_t m = a.n * a.l;
  if (a.l == 1) {
    const int64_t gy = (a.n + kRowUnroll - 1) / kRowUnroll;
    dim3 grid(static_cast<unsigned>((a.c + kThreads - 1) / kThreads),
              static_cast<unsigned>(gy < 8192 ? gy : 8192));
    bn_elem_rows<T><<<grid, kThreads, 0, stream()>>>(x, dy, w, b, mean, rstd, sums, a.n, a.c, m,
                                                     fwd, a.training, out);
  } else {
    const int64_t planes = a.n * a.c;
    const unsigned threads = a.l >= 256 ? 256 : (a.l >= 64 ? 64 : 32);
    bn_elem_planes<T><<<static_cast<unsigned>(planes < (1 << 20) ? planes : (1 << 20)), threads,
                        0, stream()>>>(x, dy, w, b, mean, rstd, sums, a.n, a.c, a.l, m, fwd,
                                       a.training, out);
  }
  GF_CUDA_CHECK_LAUNCH(fwd ? "batch_norm_forward (apply)" : "batch_norm_backward (dx)");
}

template <typename T>
__global__ void bn_sums_finish(const double2* part, int64_t nc, int64_t c, const T* rstd,
                               double2* sums, T* dw, T* db) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double a = 0, b = 0;
  for (int64_t k = 0; k < nc; ++k) {
    a += part[k * c + ch].x;
    b += part[k * c + ch].y;
  }
  sums[ch] = make_double2(a, b);
  if (dw) dw[ch] = T(double(rstd[ch]) * b);
  if (db) db[ch] = T(a);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
void row_norm_forward(const T* x, const T* w, const T* b, const RowNormArgs& a, T* y, T* mean,
                      T* rstd) {
  if (a.rows == 0) return;
  if (row_fwd_fast<T>(x, w, b, a, y, a.rms ? nullptr : mean, rstd)) return;
  const RowMap m{a.rows, a.cols, 1, a.cols, 1};
  rows<T>(m, true, x, nullptr, w, b, nullptr, nullptr, a.eps, a.rms, y, a.rms ? nullptr : mean,
          rstd);
}

template <typename T>
void row_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                       const RowNormArgs& a, T* dx, T* dw, T* db) {
  if (a.rows == 0) return;
  if (row_bwd_fast<T>(x, dy, w, a.rms ? nullptr : mean, rstd, a, dx, dw, db)) return;
  const RowMap m{a.rows, a.cols, 1, a.cols, 1};
  if (dx) rows<T>(m, false, x, dy, w, nullptr, a.rms ? nullptr : mean, rstd, 0.0, a.rms, dx,
                  nullptr, nullptr);
  if (dw || db) {
    int64_t nc = 0;
    double2* part = chan_reduce(a.rows, a.cols, 1,
                                AffineGradOp<T>{x, dy, a.rms ? nullptr : mean, rstd, 1, a.cols},
                                &nc);
    affine_grad_finish<T><<<blocks_for(a.cols), kThreads, 0, stream()>>>(part, nc, a.cols, dw, db);
    GF_CUDA_CHECK_LAUNCH("row_norm_backward (dw, db)");
    gf::cuda::free(part);
  }
}

template <typename T>
void group_norm_forward(const T* x, const T* w, const T* b, const GroupNormArgs& a, T* y, T* mean,
                        T* rstd) {
  const int64_t cg = a.c / a.groups;
  const RowMap m{a.n * a.groups, cg * a.s, a.groups, cg, a.s};
  rows<T>(m, true, x, nullptr, w, b, nullptr, nullptr, a.eps, false, y, mean, rstd);
}

template <typename T>
void group_norm_backward(const T* x, const T* dy, const T* w, const T* mean, const T* rstd,
                         const GroupNormArgs& a, T* dx, T* dw, T* db) {
  if (a.n == 0) return;
  const int64_t cg = a.c / a.groups;
  const RowMap m{a.n * a.groups, cg * a.s, a.groups, cg, a.s};
  if (dx) rows<T>(m, false, x, dy, w, nullptr, mean, rstd, 0.0, false, dx, nullptr, nullptr);
  if (dw || db) {
    int64_t nc = 0;
    double2* part =
        chan_reduce(a.n, a.c, a.s, AffineGradOp<T>{x, dy, mean, rstd, a.groups, cg}, &nc);
    affine_grad_finish<T><<<blocks_for(a.c), kThreads, 0, stream()>>>(part, nc, a.c, dw, db);
    GF_CUDA_CHECK_LAUNCH("group_norm_backward (dw, db)");
    gf::cuda::free(part);
  }
}

template <typename T>
void batch_norm_forward(const T* x, const T* w, const T* b, T* running_mean, T* running_var,
                        const BatchNormArgs& a, T* y, T* save_mean, T* save_rstd) {
  if (a.c == 0) return;
  const int64_t m = a.n * a.l;
  if (a.training) {
    int64_t nc = 0;
    double2* part = chan_reduce(a.n, a.c, a.l, StatsOp<T>{x, a.c, a.l}, &nc);
    bn_stats_finish<T><<<blocks_for(a.c), kThreads, 0, stream()>>>(
        part, nc, a.c, a.l, m, x, a.eps, a.factor, a.update_running ? running_mean : nullptr,
        a.update_running ? running_var : nullptr, save_mean, save_rstd);
    GF_CUDA_CHECK_LAUNCH("batch_norm_forward (stats)");
    gf::cuda::free(part);
  } else {
    bn_eval_stats<T><<<blocks_for(a.c), kThreads, 0, stream()>>>(running_mean, running_var, a.c,
                                                                 a.eps, save_mean, save_rstd);
    GF_CUDA_CHECK_LAUNCH("batch_norm_forward (eval stats)");
  }
  if (a.n * a.c * a.l == 0) return;
  bn_elementwise<T>(x, nullptr, w, b, save_mean, save_rstd, nullptr, a, true, y);
}

template <typename T>
void batch_norm_backward(const T* x, const T* dy, const T* w, const T* save_mean,
                         const T* save_rstd, const BatchNormArgs& a, T* dx, T* dw, T* db) {
  if (a.c == 0) return;
  const int64_t total = a.n * a.c * a.l;
  double2* sums = nullptr;
  if (a.training || dw || db) {
    int64_t nc = 0;
    double2* part = chan_reduce(a.n, a.c, a.l, BnGradOp<T>{x, dy, save_mean}, &nc);
    sums = static_cast<double2*>(alloc(sizeof(double2) * size_t(a.c)));
    bn_sums_finish<T><<<blocks_for(a.c), kThreads, 0, stream()>>>(part, nc, a.c, save_rstd, sums,
                                                                  dw, db);
    GF_CUDA_CHECK_LAUNCH("batch_norm_backward (sums)");
    gf::cuda::free(part);
  }
  if (dx && total > 0) {
    bn_elementwise<T>(x, dy, w, nullptr, save_mean, save_rstd, sums, a, false, dx);
  }
  gf::cuda::free(sums);
}

#define GF_INST(T)                                                                              \
  template void row_norm_forward<T>(const T*, const T*, const T*, const RowNormArgs&, T*, T*,   \
                                    T*);                                                        \
  template void row_norm_backward<T>(const T*, const T*, const T*, const T*, const T*,          \
                                     const RowNormArgs&, T*, T*, T*);                           \
  template void batch_norm_forward<T>(const T*, const T*, const T*, T*, T*,                     \
                                      const BatchNormArgs&, T*, T*, T*);                        \
  template void batch_norm_backward<T>(const T*, const T*, const T*, const T*, const T*,        \
                                       const BatchNormArgs&, T*, T*, T*);                       \
  template void group_norm_forward<T>(const T*, const T*, const T*, const GroupNormArgs&, T*,   \
                                      T*, T*);                                                  \
  template void group_norm_backward<T>(const T*, const T*, const T*, const T*, const T*,        \
                                       const GroupNormArgs&, T*, T*, T*);
GF_INST(float)
GF_INST(double)
#undef GF_INST

}  // namespace gf::cuda
