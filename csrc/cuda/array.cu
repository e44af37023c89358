// Generic array kernels for gradfuse.cuda.DeviceArray (see csrc/cuda/array.h).
//
// Element-wise ops are memory bound: a contiguous operand set takes a flat grid-stride loop
// (one load per input, one store), anything strided or broadcast takes the same loop with the
// offsets computed from a collapsed shape (adjacent dimensions merged on the host first, so a
// transposed matrix is 2-D and a broadcast bias is 2-D whatever the rank).
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/array.h"
#include "cuda/runtime.h"

namespace gf::cuda {

namespace {

using i64 = std::int64_t;
constexpr int kMaxDims = 8;
constexpr unsigned kThreads = 256;

// ------------------------------------------------------------------------ layouts

struct Meta {
  int ndim;
  int nops;  // operands in s (out first)
  i64 shape[kMaxDims];
  i64 s[4][kMaxDims];
};

// Merges adjacent dimensions that every operand can step through with one stride, drops
// size-1 dimensions; returns whether every operand is then C-contiguous over the result.
bool collapse(const std::vector<i64>& shape, const std::vector<const std::vector<i64>*>& strides,
              const std::vector<bool>& scalar, Meta& m) {
  const int nops = static_cast<int>(strides.size());
  m.nops = nops;
  int nd = 0;
  i64 shp[kMaxDims * 4];
  i64 st[4][kMaxDims * 4];
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (nd > 0) {
      bool merge = true;
      for (int k = 0; k < nops && merge; ++k) {
        if (scalar[k]) continue;
        merge = st[k][nd - 1] == (*strides[k])[d] * shape[d];
      }
      if (merge) {
        shp[nd - 1] *= shape[d];
        for (int k = 0; k < nops; ++k) st[k][nd - 1] = scalar[k] ? 0 : (*strides[k])[d];
        continue;
      }
    }
    shp[nd] = shape[d];
    for (int k = 0; k < nops; ++k) st[k][nd] = scalar[k] ? 0 : (*strides[k])[d];
    ++nd;
  }
  if (nd > kMaxDims)
    throw std::invalid_argument("cuda array op: more than 8 dimensions after merging");
  m.ndim = nd;
  bool contig = true;
  for (int d = 0; d < nd; ++d) {
    m.shape[d] = shp[d];
    for (int k = 0; k < nops; ++k) m.s[k][d] = st[k][d];
  }
  for (int k = 0; k < nops; ++k) {
    if (scalar[k]) continue;
    contig = contig && (nd == 0 || (nd == 1 && m.s[k][0] == 1));
  }
  return contig;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0; }

i64 numel(const std::vector<i64>& shape) {
  i64 n = 1;
  for (i64 s : shape) n *= s;
  return n;
}

template <int N>
__device__ __forceinline__ void offsets(i64 i, const Meta& m, i64 (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
  for (int d = m.ndim - 1; d >= 0; --d) {
    const i64 sz = m.shape[d];
    const i64 q = i / sz;
    const i64 r = i - q * sz;
    i = q;
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += r * m.s[k][d];
  }
}

// ------------------------------------------------------------------------ scalar math

template <typename T>
__device__ __forceinline__ bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) return v != v;
  return false;
}

template <typename T>
__device__ __forceinline__ T unary_math(int op, T x) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      case NEG: return -x;
      case EXP: return exp(x);
      case LOG: return log(x);
      case SQRT: return sqrt(x);
      case ABS: return fabs(x);
      case SIGN: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);  // keeps 0, -0 and nan
      case TANH: return tanh(x);
      case TRUNC: return trunc(x);
      case FLOOR: return floor(x);
      case CEIL: return ceil(x);
      case RECIPROCAL: return T(1) / x;
      case SQUARE: return x * x;
      case LOG1P: return log1p(x);
      case EXPM1: return expm1(x);
      case SIN: return sin(x);
      case COS: return cos(x);
      case LOGICAL_NOT: return x == T(0) ? T(1) : T(0);
      default: return x;
    }
  } else {
    switch (op) {
      case NEG: return T(-x);
      case ABS:
        if constexpr (std::is_signed_v<T>) return x < T(0) ? T(-x) : x;
        return x;
      case SIGN:
        if constexpr (std::is_signed_v<T>) return T((x > T(0)) - (x < T(0)));
        return T(x != T(0));
      case SQUARE: return T(x * x);
      case LOGICAL_NOT: return T(x == T(0));
      default: return x;  // TRUNC/FLOOR/CEIL of an integer is itself
    }
  }
}

template <typename T>
__device__ __forceinline__ bool unary_pred(int op, T x) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      case ISFINITE: return isfinite(x);
      case ISNAN: return x != x;
      case ISINF: return isinf(x);
      default: return false;
    }
  } else {
    return op == ISFINITE;
  }
}

template <typename T>
__device__ __forceinline__ T ipow(T base, T e) {
  // numpy's integer power (negative exponents are refused on the host)
  T r = 1;
  while (e > 0) {
    if (e & 1) r *= base;
    base *= base;
    e >>= 1;
  }
  return r;
}

template <typename T>
__device__ __forceinline__ T binary_math(int op, T a, T b) {
  switch (op) {
    case ADD: return a + b;
    case SUB: return a - b;
    case MUL: return a * b;
    case DIV:
      if constexpr (std::is_floating_point_v<T>) {
        return a / b;
      } else {
        return b == 0 ? T(0) : T(a / b);  // floor division is not offered; true divide casts
      }
    case POW:
      if constexpr (std::is_floating_point_v<T>) {
        return pow(a, b);
      } else {
        return ipow(a, b);
      }
    case MAXIMUM:  // numpy: nan wins
      if (is_nan(a)) return a;
      if (is_nan(b)) return b;
      return a > b ? a : b;
    case MINIMUM:
      if (is_nan(a)) return a;
      if (is_nan(b)) return b;
      return a < b ? a : b;
    case LOGICAL_AND: return T((a != T(0)) && (b != T(0)));
    case LOGICAL_OR: return T((a != T(0)) || (b != T(0)));
    default: return a;
  }
}

template <typename T>
__device__ __forceinline__ bool binary_pred(int op, T a, T b) {
  switch (op) {
    case EQ: return a == b;
    case NE: return a != b;
    case LT: return a < b;
    case LE: return a <= b;
    case GT: return a > b;
    default: return a >= b;
  }
}

template <typename To, typename Ti>
__device__ __forceinline__ To convert(Ti v, bool to_bool) {
  if (to_bool) return To(v != Ti(0));
  return static_cast<To>(v);
}

// ------------------------------------------------------------------------ kernels
// Contiguous operands take an unrolled loop: each thread loads kUnroll elements (a grid stride
// apart, so a warp's loads stay coalesced) before it computes and stores any, keeping several
// memory requests in flight per thread. One element per step left an H100 at 55% of its DRAM
// bandwidth (1.8 TB/s copy against PyTorch's 3.0 TB/s, measured). The tail and every strided
// or broadcast operand set take the one-element loop with computed offsets.
constexpr int kUnroll = 4;

#define GF_ELEMENTWISE_LOOP(LOAD, STORE, ...)                                    \
  const i64 stride = i64(blockDim.x) * gridDim.x;                                 \
  i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x;                             \
  if (contig) {                                                                   \
    for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {               \
      Val v[kUnroll];                                                             \
      _Pragma("unroll") for (int k = 0; k < kUnroll; ++k) LOAD(v[k], i + k * stride); \
      _Pragma("unroll") for (int k = 0; k < kUnroll; ++k) STORE(v[k], i + k * stride); \
    }                                                                             \
    for (; i < n; i += stride) {                                                  \
      Val v;                                                                      \
      LOAD(v, i);                                                                 \
      STORE(v, i);                                                                \
    }                                                                             \
  } else {                                                                        \
    for (; i < n; i += stride) {                                                  \
      __VA_ARGS__;                                                                \
    }                                                                             \
  }

template <typename To, typename Ti>
__global__ void copy_kernel(To* dst, const Ti* src, Ti value, bool to_bool, bool contig, Meta m,
                            i64 n) {
  using Val = Ti;
#define LOAD(v, j) v = src ? src[j] : value
#define STORE(v, j) dst[j] = convert<To, Ti>(v, to_bool)
  GF_ELEMENTWISE_LOOP(LOAD, STORE, {
    i64 off[2];
    offsets<2>(i, m, off);
    dst[off[0]] = convert<To, Ti>(src ? src[off[1]] : value, to_bool);
  })
#undef LOAD
#undef STORE
}

// A transposing copy (dst row-major R x C, src column-major: src[r + c * ld]) through a
// 32 x 33 shared tile, so both the reads and the writes are coalesced; the generic strided
// loop reads one of the two with a stride and ran at 19% of an H100's bandwidth.
template <typename To, typename Ti>
__global__ void transpose_kernel(To* dst, const Ti* src, i64 rows, i64 cols, i64 ld,
                                 bool to_bool) {
  __shared__ Ti tile[32][33];
  const i64 r0 = i64(blockIdx.y) * 32, c0 = i64(blockIdx.x) * 32;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const i64 r = r0 + threadIdx.x, c = c0 + k;
    if (r < rows && c < cols) tile[k][threadIdx.x] = src[r + c * ld];
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const i64 r = r0 + k, c = c0 + threadIdx.x;
    if (r < rows && c < cols) dst[r * cols + c] = convert<To, Ti>(tile[threadIdx.x][k], to_bool);
  }
}

template <typename T, typename O, bool Pred>
__device__ __forceinline__ O unary_apply(int op, T x) {
  if constexpr (Pred) {
    return O(unary_pred<T>(op, x));
  } else {
    return unary_math<T>(op, x);
  }
}

template <typename T, typename O, bool Pred>
__global__ void unary_kernel(int op, O* out, const T* a, T av, bool contig, Meta m, i64 n) {
  using Val = T;
#define LOAD(v, j) v = a ? a[j] : av
#define STORE(v, j) out[j] = unary_apply<T, O, Pred>(op, v)
  GF_ELEMENTWISE_LOOP(LOAD, STORE, {
    i64 off[2];
    offsets<2>(i, m, off);
    out[off[0]] = unary_apply<T, O, Pred>(op, a ? a[off[1]] : av);
  })
#undef LOAD
#undef STORE
}

template <typename T, typename O, bool Pred>
__device__ __forceinline__ O binary_apply(int op, T x, T y) {
  if constexpr (Pred) {
    return O(binary_pred<T>(op, x, y));
  } else {
    return binary_math<T>(op, x, y);
  }
}

template <typename T>
struct Pair {
  T x, y;
};

template <typename T, typename O, bool Pred>
__global__ void binary_kernel(int op, O* out, const T* a, T av, const T* b, T bv, bool contig,
                              Meta m, i64 n) {
  using Val = Pair<T>;
#define LOAD(v, j) v = Pair<T>{a ? a[j] : av, b ? b[j] : bv}
#define STORE(v, j) out[j] = binary_apply<T, O, Pred>(op, v.x, v.y)
  GF_ELEMENTWISE_LOOP(LOAD, STORE, {
    i64 off[3];
    offsets<3>(i, m, off);
    out[off[0]] = binary_apply<T, O, Pred>(op, a ? a[off[1]] : av, b ? b[off[2]] : bv);
  })
#undef LOAD
#undef STORE
}

template <typename T>
struct Triple {
  bool c;
  T x, y;
};

template <typename T>
__global__ void where_kernel(T* out, const std::uint8_t* c, bool cv, const T* a, T av, const T* b,
                             T bv, bool contig, Meta m, i64 n) {
  using Val = Triple<T>;
#define LOAD(v, j) v = Triple<T>{c ? c[j] != 0 : cv, a ? a[j] : av, b ? b[j] : bv}
#define STORE(v, j) out[j] = v.c ? v.x : v.y
  GF_ELEMENTWISE_LOOP(LOAD, STORE, {
    i64 off[4];
    offsets<4>(i, m, off);
    const bool take_a = c ? c[off[1]] != 0 : cv;
    out[off[0]] = take_a ? (a ? a[off[2]] : av) : (b ? b[off[3]] : bv);
  })
#undef LOAD
#undef STORE
}

#undef GF_ELEMENTWISE_LOOP

// ------------------------------------------------------------------------ contiguous fast path
// Every operand contiguous (or a scalar): P elements per 16-byte access (P = 16 / the widest
// element size), kVecUnroll accesses kThreads apart issued per thread before the first use, one
// block per kThreads * kVecUnroll packs (no grid-stride cap: the whole array is in flight). The
// scalar loop above left the H100 at 82-90% of PyTorch (4-byte accesses, 4 in flight); the
// kernel families' 16-byte loops reach 95-100% of copy bandwidth. Same math per element, so
// the results are the same bits as the scalar loop's. The last n % P elements take a scalar
// tail in the first block.
constexpr int kVecUnroll = 4;

template <typename T, int P>
struct alignas(sizeof(T) * P) Pack {
  T v[P];
};

template <int P, typename Load, typename Store>
__device__ __forceinline__ void vec_loop(i64 nv, Load load, Store store) {
  const i64 chunk = i64(blockDim.x) * kVecUnroll;
  for (i64 base = i64(blockIdx.x) * chunk + threadIdx.x; base < nv;
       base += i64(gridDim.x) * chunk) {
    decltype(load(i64(0))) r[kVecUnroll];
#pragma unroll
    for (int k = 0; k < kVecUnroll; ++k) {
      const i64 i = base + i64(k) * blockDim.x;
      if (i < nv) r[k] = load(i);
    }
#pragma unroll
    for (int k = 0; k < kVecUnroll; ++k) {
      const i64 i = base + i64(k) * blockDim.x;
      if (i < nv) store(i, r[k]);
    }
  }
}

template <typename To, typename Ti, int P>
__global__ void __launch_bounds__(kThreads, 3) copy_vec(To* dst, const Ti* src, Ti value, bool to_bool, i64 n) {
  using PI = Pack<Ti, P>;
  using PO = Pack<To, P>;
  const i64 nv = n / P;
  vec_loop<P>(
      nv,
      [&](i64 i) {
        if (src) return reinterpret_cast<const PI*>(src)[i];
        PI r;
#pragma unroll
        for (int e = 0; e < P; ++e) r.v[e] = value;
        return r;
      },
      [&](i64 i, const PI& r) {
        PO o;
#pragma unroll
        for (int e = 0; e < P; ++e) o.v[e] = convert<To, Ti>(r.v[e], to_bool);
        reinterpret_cast<PO*>(dst)[i] = o;
      });
  if (blockIdx.x == 0)
    for (i64 i = nv * P + threadIdx.x; i < n; i += blockDim.x)
      dst[i] = convert<To, Ti>(src ? src[i] : value, to_bool);
}

template <typename T, typename O, bool Pred, int P>
__global__ void __launch_bounds__(kThreads, 3) unary_vec(int op, O* out, const T* a, T av, i64 n) {
  using PI = Pack<T, P>;
  using PO = Pack<O, P>;
  const i64 nv = n / P;
  vec_loop<P>(
      nv,
      [&](i64 i) {
        if (a) return reinterpret_cast<const PI*>(a)[i];
        PI r;
#pragma unroll
        for (int e = 0; e < P; ++e) r.v[e] = av;
        return r;
      },
      [&](i64 i, const PI& r) {
        PO o;
#pragma unroll
        for (int e = 0; e < P; ++e) o.v[e] = unary_apply<T, O, Pred>(op, r.v[e]);
        reinterpret_cast<PO*>(out)[i] = o;
      });
  if (blockIdx.x == 0)
    for (i64 i = nv * P + threadIdx.x; i < n; i += blockDim.x)
      out[i] = unary_apply<T, O, Pred>(op, a ? a[i] : av);
}

template <typename T, int P>
struct Pack2 {
  Pack<T, P> x, y;
};

template <typename T, int P>
__device__ __forceinline__ Pack<T, P> load_or_fill(const T* p, T v, i64 i) {
  if (p) return reinterpret_cast<const Pack<T, P>*>(p)[i];
  Pack<T, P> r;
#pragma unroll
  for (int e = 0; e < P; ++e) r.v[e] = v;
  return r;
}

template <typename T, typename O, bool Pred, int P>
__global__ void __launch_bounds__(kThreads, 3) binary_vec(int op, O* out, const T* a, T av, const T* b, T bv, i64 n) {
  using PO = Pack<O, P>;
  const i64 nv = n / P;
  vec_loop<P>(
      nv,
      [&](i64 i) { return Pack2<T, P>{load_or_fill<T, P>(a, av, i), load_or_fill<T, P>(b, bv, i)}; },
      [&](i64 i, const Pack2<T, P>& r) {
        PO o;
#pragma unroll
        for (int e = 0; e < P; ++e) o.v[e] = binary_apply<T, O, Pred>(op, r.x.v[e], r.y.v[e]);
        reinterpret_cast<PO*>(out)[i] = o;
      });
  if (blockIdx.x == 0)
    for (i64 i = nv * P + threadIdx.x; i < n; i += blockDim.x)
      out[i] = binary_apply<T, O, Pred>(op, a ? a[i] : av, b ? b[i] : bv);
}

template <typename T, int P>
struct Pack3 {
  Pack<std::uint8_t, P> c;
  Pack<T, P> x, y;
};

template <typename T, int P>
__global__ void __launch_bounds__(kThreads, 3) where_vec(T* out, const std::uint8_t* c, bool cv, const T* a, T av, const T* b,
                          T bv, i64 n) {
  using PO = Pack<T, P>;
  const i64 nv = n / P;
  vec_loop<P>(
      nv,
      [&](i64 i) {
        return Pack3<T, P>{load_or_fill<std::uint8_t, P>(c, std::uint8_t(cv), i),
                           load_or_fill<T, P>(a, av, i), load_or_fill<T, P>(b, bv, i)};
      },
      [&](i64 i, const Pack3<T, P>& r) {
        PO o;
#pragma unroll
        for (int e = 0; e < P; ++e) o.v[e] = r.c.v[e] != 0 ? r.x.v[e] : r.y.v[e];
        reinterpret_cast<PO*>(out)[i] = o;
      });
  if (blockIdx.x == 0)
    for (i64 i = nv * P + threadIdx.x; i < n; i += blockDim.x) {
      const bool take_a = c ? c[i] != 0 : cv;
      out[i] = take_a ? (a ? a[i] : av) : (b ? b[i] : bv);
    }
}

// Pack width: 16 bytes of the wider of the input and output elements, at most 4 elements
// (16 one-byte elements per pack kept 64+ values per thread live and spilled).
template <typename A, typename B>
constexpr int pack_of() {
  constexpr int p = int(16 / (sizeof(A) > sizeof(B) ? sizeof(A) : sizeof(B)));
  return p < 4 ? p : 4;
}

// Every non-null pointer aligned to its pack (bytes = element size * P).
inline bool pack_aligned(const void* p, std::size_t bytes) {
  return p == nullptr || (reinterpret_cast<std::uintptr_t>(p) % bytes) == 0;
}

inline unsigned vec_grid(i64 n, int P) {
  const i64 per_block = i64(kThreads) * kVecUnroll * P;
  const i64 b = (n + per_block - 1) / per_block;
  return unsigned(std::min<i64>(std::max<i64>(b, 1), (i64(1) << 31) - 1));
}

// ------------------------------------------------------------------------ dispatch

template <typename F>
void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case F32: f(float{}); break;
    case F64: f(double{}); break;
    case I64: f(std::int64_t{}); break;
    case I32: f(std::int32_t{}); break;
    case U8:
    case BOOL: f(std::uint8_t{}); break;
    default: throw std::invalid_argument("cuda array op: unknown dtype code " + std::to_string(dtype));
  }
}

inline std::size_t dtype_size(int dtype) {
  switch (dtype) {
    case F32: case I32: return 4;
    case F64: case I64: return 8;
    default: return 1;
  }
}

template <typename T>
T scalar_as(double v) {
  return static_cast<T>(v);
}

}  // namespace

void copy(void* dst, int dst_dtype, const std::vector<i64>& dst_strides, const Operand& src,
          int src_dtype, const std::vector<i64>& shape) {
  const i64 n = numel(shape);
  if (n == 0) return;
  Meta m{};
  const bool contig = collapse(shape, {&dst_strides, &src.strides}, {false, src.ptr == nullptr}, m);
  const bool to_bool = dst_dtype == BOOL && src_dtype != BOOL;
  // dst C-contiguous and src stepping 1 along dst's rows: a transpose (a.T.copy(), and every
  // ascontiguous of a transposed view)
  const bool transpose = !contig && src.ptr != nullptr && m.ndim == 2 && m.s[0][1] == 1 &&
                         m.s[0][0] == m.shape[1] && m.s[1][0] == 1 && m.s[1][1] >= m.shape[0] &&
                         (m.shape[0] + 31) / 32 <= 65535;
  if (contig && src.ptr != nullptr && dst_dtype == src_dtype) {
    // a same-dtype contiguous copy is a plain memcpy (the copy engine path PyTorch takes too),
    // unless the ranges overlap, where the element loop keeps its old behaviour
    const std::size_t bytes = std::size_t(n) * dtype_size(dst_dtype);
    const auto d0 = reinterpret_cast<std::uintptr_t>(dst);
    const auto s0 = reinterpret_cast<std::uintptr_t>(src.ptr);
    if (d0 + bytes <= s0 || s0 + bytes <= d0) {
      GF_CUDA_CHECK(cudaMemcpyAsync(dst, src.ptr, bytes, cudaMemcpyDeviceToDevice, stream()));
      return;
    }
  }
  dispatch(dst_dtype, [&](auto to) {
    using To = decltype(to);
    dispatch(src_dtype, [&](auto ti) {
      using Ti = decltype(ti);
      constexpr int P = pack_of<Ti, To>();
      if (contig && pack_aligned(dst, sizeof(To) * P) && pack_aligned(src.ptr, sizeof(Ti) * P)) {
        copy_vec<To, Ti, P><<<vec_grid(n, P), kThreads, 0, stream()>>>(
            static_cast<To*>(dst), static_cast<const Ti*>(src.ptr), scalar_as<Ti>(src.value),
            to_bool, n);
        return;
      }
      if (transpose) {
        const dim3 grid(unsigned((m.shape[1] + 31) / 32), unsigned((m.shape[0] + 31) / 32));
        transpose_kernel<To, Ti><<<grid, dim3(32, 8), 0, stream()>>>(
            static_cast<To*>(dst), static_cast<const Ti*>(src.ptr), m.shape[0], m.shape[1],
            m.s[1][1], to_bool);
        return;
      }
      copy_kernel<To, Ti><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<To*>(dst), static_cast<const Ti*>(src.ptr), scalar_as<Ti>(src.value),
          to_bool, contig, m, n);
    });
  });
  GF_CUDA_CHECK_LAUNCH("copy_kernel");
}

void unary(int op, int dtype, void* out, const std::vector<i64>& out_strides, const Operand& a,
           const std::vector<i64>& shape) {
  const i64 n = numel(shape);
  if (n == 0) return;
  Meta m{};
  const bool contig = collapse(shape, {&out_strides, &a.strides}, {false, a.ptr == nullptr}, m);
  const bool pred = op >= ISFINITE;
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    if (contig) {
      if (pred) {
        constexpr int P = pack_of<T, std::uint8_t>();
        if (pack_aligned(out, P) && pack_aligned(a.ptr, sizeof(T) * P)) {
          unary_vec<T, std::uint8_t, true, P><<<vec_grid(n, P), kThreads, 0, stream()>>>(
              op, static_cast<std::uint8_t*>(out), static_cast<const T*>(a.ptr),
              scalar_as<T>(a.value), n);
          return;
        }
      } else {
        constexpr int P = pack_of<T, T>();
        if (pack_aligned(out, sizeof(T) * P) && pack_aligned(a.ptr, sizeof(T) * P)) {
          unary_vec<T, T, false, P><<<vec_grid(n, P), kThreads, 0, stream()>>>(
              op, static_cast<T*>(out), static_cast<const T*>(a.ptr), scalar_as<T>(a.value), n);
          return;
        }
      }
    }
    if (pred) {
      unary_kernel<T, std::uint8_t, true><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
          op, static_cast<std::uint8_t*>(out), static_cast<const T*>(a.ptr),
          scalar_as<T>(a.value), contig, m, n);
    } else {
      unary_kernel<T, T, false><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
          op, static_cast<T*>(out), static_cast<const T*>(a.ptr), scalar_as<T>(a.value), contig,
          m, n);
    }
  });
  GF_CUDA_CHECK_LAUNCH("unary_kernel");
}

void binary(int op, int dtype, void* out, const std::vector<i64>& out_strides, const Operand& a,
            const Operand& b, const std::vector<i64>& shape) {
  const i64 n = numel(shape);
  if (n == 0) return;
  Meta m{};
  const bool contig = collapse(shape, {&out_strides, &a.strides, &b.strides},
                               {false, a.ptr == nullptr, b.ptr == nullptr}, m);
  const bool pred = op >= EQ;
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    constexpr int P = pack_of<T, T>();
    const bool vec = contig && pack_aligned(a.ptr, sizeof(T) * P) &&
                     pack_aligned(b.ptr, sizeof(T) * P) &&
                     pack_aligned(out, (pred ? 1 : sizeof(T)) * P);
    if (vec) {
      if (pred) {
        binary_vec<T, std::uint8_t, true, P><<<vec_grid(n, P), kThreads, 0, stream()>>>(
            op, static_cast<std::uint8_t*>(out), static_cast<const T*>(a.ptr),
            scalar_as<T>(a.value), static_cast<const T*>(b.ptr), scalar_as<T>(b.value), n);
      } else {
        binary_vec<T, T, false, P><<<vec_grid(n, P), kThreads, 0, stream()>>>(
            op, static_cast<T*>(out), static_cast<const T*>(a.ptr), scalar_as<T>(a.value),
            static_cast<const T*>(b.ptr), scalar_as<T>(b.value), n);
      }
      return;
    }
    if (pred) {
      binary_kernel<T, std::uint8_t, true><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
          op, static_cast<std::uint8_t*>(out), static_cast<const T*>(a.ptr),
          scalar_as<T>(a.value), static_cast<const T*>(b.ptr), scalar_as<T>(b.value), contig, m,
          n);
    } else {
      binary_kernel<T, T, false><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
          op, static_cast<T*>(out), static_cast<const T*>(a.ptr), scalar_as<T>(a.value),
          static_cast<const T*>(b.ptr), scalar_as<T>(b.value), contig, m, n);
    }
  });
  GF_CUDA_CHECK_LAUNCH("binary_kernel");
}

void where(int dtype, void* out, const std::vector<i64>& out_strides, const Operand& cond,
           const Operand& a, const Operand& b, const std::vector<i64>& shape) {
  const i64 n = numel(shape);
  if (n == 0) return;
  Meta m{};
  const bool contig =
      collapse(shape, {&out_strides, &cond.strides, &a.strides, &b.strides},
               {false, cond.ptr == nullptr, a.ptr == nullptr, b.ptr == nullptr}, m);
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    constexpr int P = pack_of<T, T>();
    if (contig && pack_aligned(out, sizeof(T) * P) && pack_aligned(cond.ptr, P) &&
        pack_aligned(a.ptr, sizeof(T) * P) && pack_aligned(b.ptr, sizeof(T) * P)) {
      where_vec<T, P><<<vec_grid(n, P), kThreads, 0, stream()>>>(
          static_cast<T*>(out), static_cast<const std::uint8_t*>(cond.ptr), cond.value != 0.0,
          static_cast<const T*>(a.ptr), scalar_as<T>(a.value), static_cast<const T*>(b.ptr),
          scalar_as<T>(b.value), n);
      return;
    }
    where_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(out), static_cast<const std::uint8_t*>(cond.ptr), cond.value != 0.0,
        static_cast<const T*>(a.ptr), scalar_as<T>(a.value), static_cast<const T*>(b.ptr),
        scalar_as<T>(b.value), contig, m, n);
  });
  GF_CUDA_CHECK_LAUNCH("where_kernel");
}

// ------------------------------------------------------------------------ reductions

namespace {

template <typename T>
struct Acc {
  // sums of floats accumulate in double (H100 double throughput is ample for a memory-bound
  // pass), integer sums in int64, like numpy's promotion of sum(int32) to int64
  using type = std::conditional_t<std::is_floating_point_v<T>, double, i64>;
};

// (value, index) pairs: index is the position along the reduced axis (argmax/argmin);
// ties go to the lower index and nan beats everything (numpy's argmax returns the first nan).
template <typename V>
__device__ __forceinline__ void combine(int op, V& v, i64& i, V w, i64 j) {
  switch (op) {
    case R_SUM: v = v + w; return;
    case R_MAX:
    case R_ARGMAX: {
      const bool vn = is_nan(v), wn = is_nan(w);
      bool take;
      if (vn || wn) {
        take = wn && (!vn || j < i);
      } else {
        take = w > v || (w == v && j < i);
      }
      if (take) { v = w; i = j; }
      return;
    }
    default: {
      const bool vn = is_nan(v), wn = is_nan(w);
      bool take;
      if (vn || wn) {
        take = wn && (!vn || j < i);
      } else {
        take = w < v || (w == v && j < i);
      }
      if (take) { v = w; i = j; }
      return;
    }
  }
}

// Reduction kernels templated on the combining op (R_SUM; R_MAX for max and argmax; R_MIN for
// min and argmin), so a sum moves no indices. Every accumulator starts from the op's identity
// (-0.0 for float sums: -0.0 + x == x for every x, so starting there is bitwise the same as
// starting from the first element; -inf/+inf with index kNoIdx for max/min, which loses every
// tie and every nan), so no "have a value yet" flags travel through the trees.
constexpr i64 kNoIdx = INT64_MAX;

template <int OP, typename V>
__device__ __forceinline__ V red_identity() {
  if constexpr (OP == R_SUM) {
    if constexpr (std::is_floating_point_v<V>) return V(-0.0);
    else return V(0);
  } else if constexpr (OP == R_MAX) {
    if constexpr (std::is_floating_point_v<V>) return V(-INFINITY);
    else return V(INT64_MIN);
  } else {
    if constexpr (std::is_floating_point_v<V>) return V(INFINITY);
    else return V(INT64_MAX);
  }
}

template <int OP, typename V>
__device__ __forceinline__ void comb(V& v, i64& i, V w, i64 j) {
  if constexpr (OP == R_SUM) {
    v = v + w;
  } else {
    combine(OP, v, i, w, j);
  }
}

// Block-wide tree (warp shuffles, then one warp over the warps' results): a fixed order, so
// a sum is the same bits every run. Thread 0 gets the result.
template <int OP, typename V>
__device__ __forceinline__ void block_reduce(V& v, i64& i) {
  __shared__ V sv[32];
  __shared__ i64 si[32];
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const V w = __shfl_down_sync(0xffffffffu, v, o);
    i64 j = 0;
    if constexpr (OP != R_SUM) j = __shfl_down_sync(0xffffffffu, i, o);
    comb<OP>(v, i, w, j);
  }
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const unsigned nw = blockDim.x >> 5;
    v = lane < nw ? sv[lane] : red_identity<OP, V>();
    i = lane < nw ? si[lane] : kNoIdx;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const V w = __shfl_down_sync(0xffffffffu, v, o);
      i64 j = 0;
      if constexpr (OP != R_SUM) j = __shfl_down_sync(0xffffffffu, i, o);
      comb<OP>(v, i, w, j);
    }
  }
}

// The last stage writes the result: the element type for sum/max/min, int64 for arg*.
template <typename T, typename V>
__device__ __forceinline__ void red_write(void* out, bool arg, i64 k, V v, i64 i) {
  if (arg) {
    static_cast<i64*>(out)[k] = i;
  } else {
    static_cast<T*>(out)[k] = static_cast<T>(v);
  }
}

constexpr int kRedUnroll = 4;

// inner == 1, stage 1: one block per (row, chunk). The chunk is cut into packs of P elements
// (16 bytes); thread t takes packs t, t + 256, ... into kRedUnroll accumulators (kRedUnroll
// 16-byte loads in flight per thread), then the block tree. `vec` only picks 16-byte loads
// over P scalar loads of the same elements: the order of the additions is the same either way.
template <int OP, typename T, typename V>
__global__ void __launch_bounds__(kThreads) rows_stage1(const T* in, i64 n, i64 chunk, bool vec,
                                                        V* pv, i64* pi, void* out, bool fin,
                                                        bool arg) {
  constexpr int P = int(16 / sizeof(T));
  using PK = Pack<T, P>;
  const i64 row = blockIdx.x, c = blockIdx.y;
  const i64 lo = c * chunk, hi = min(n, lo + chunk);
  const T* base = in + row * n + lo;
  const i64 len = hi - lo, full = len / P;
  V acc[kRedUnroll];
  i64 ai[kRedUnroll];
#pragma unroll
  for (int u = 0; u < kRedUnroll; ++u) {
    acc[u] = red_identity<OP, V>();
    ai[u] = kNoIdx;
  }
  const i64 bd = blockDim.x;
  i64 p = threadIdx.x;
  for (; p + (kRedUnroll - 1) * bd < full; p += kRedUnroll * bd) {
    PK w[kRedUnroll];
#pragma unroll
    for (int u = 0; u < kRedUnroll; ++u) {
      const i64 q = p + u * bd;
      if (vec) {
        w[u] = reinterpret_cast<const PK*>(base)[q];
      } else {
#pragma unroll
        for (int e = 0; e < P; ++e) w[u].v[e] = base[q * P + e];
      }
    }
#pragma unroll
    for (int u = 0; u < kRedUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < P; ++e)
        comb<OP>(acc[u], ai[u], V(w[u].v[e]), lo + (p + u * bd) * P + e);
    }
  }
  for (; p < full; p += bd) {
    PK w;
    if (vec) {
      w = reinterpret_cast<const PK*>(base)[p];
    } else {
#pragma unroll
      for (int e = 0; e < P; ++e) w.v[e] = base[p * P + e];
    }
#pragma unroll
    for (int e = 0; e < P; ++e) comb<OP>(acc[0], ai[0], V(w.v[e]), lo + p * P + e);
  }
  // the last len % P (< P <= 256) elements: one each for the first threads
  if (full * P + threadIdx.x < len) {
    const i64 j = full * P + threadIdx.x;
    comb<OP>(acc[1], ai[1], V(base[j]), lo + j);
  }
#pragma unroll
  for (int u = 1; u < kRedUnroll; ++u) comb<OP>(acc[0], ai[0], acc[u], ai[u]);
  block_reduce<OP, V>(acc[0], ai[0]);
  if (threadIdx.x == 0) {
    if (fin) {
      red_write<T, V>(out, arg, row, acc[0], ai[0]);
    } else {
      const i64 k = row * gridDim.y + c;
      pv[k] = acc[0];
      pi[k] = ai[0];
    }
  }
}

// inner == 1, stage 2: one block per row over its `chunks` partials (fixed order again).
template <int OP, typename T, typename V>
__global__ void __launch_bounds__(kThreads) rows_stage2(const V* pv, const i64* pi, i64 chunks,
                                                        void* out, bool arg) {
  const i64 row = blockIdx.x;
  V v = red_identity<OP, V>();
  i64 i = kNoIdx;
  for (i64 j = threadIdx.x; j < chunks; j += blockDim.x) {
    i64 wj = 0;
    if constexpr (OP != R_SUM) wj = pi[row * chunks + j];
    comb<OP>(v, i, pv[row * chunks + j], wj);
  }
  block_reduce<OP, V>(v, i);
  if (threadIdx.x == 0) red_write<T, V>(out, arg, row, v, i);
}

// inner > 1: a thread per Q adjacent columns of (outer, inner) (Q = P with 16-byte loads when
// inner % P == 0 and the input is aligned, else 1), walking its chunk of n in order with
// kColUnroll rows loaded ahead. Each column is combined in row order from the identity, which
// is the same arithmetic, bit for bit, whatever Q is.
constexpr int kColUnroll = 8;

template <int OP, typename T, typename V, int Q>
__global__ void __launch_bounds__(kThreads) cols_stage1(const T* in, i64 outer, i64 n, i64 inner,
                                                        i64 chunk, V* pv, i64* pi, void* out,
                                                        bool fin, bool arg) {
  using PK = Pack<T, Q>;
  const i64 col = (i64(blockIdx.x) * blockDim.x + threadIdx.x) * Q;
  if (col >= outer * inner) return;
  const i64 o = col / inner, ii = col - o * inner;
  const i64 c = blockIdx.y;
  const i64 lo = c * chunk, hi = min(n, lo + chunk);
  const T* src = in + (o * n + lo) * inner + ii;
  V acc[Q];
  i64 ai[Q];
#pragma unroll
  for (int e = 0; e < Q; ++e) {
    acc[e] = red_identity<OP, V>();
    ai[e] = kNoIdx;
  }
  i64 j = lo;
  for (; j + kColUnroll <= hi; j += kColUnroll) {
    PK w[kColUnroll];
#pragma unroll
    for (int u = 0; u < kColUnroll; ++u)
      w[u] = *reinterpret_cast<const PK*>(src + (j - lo + u) * inner);
#pragma unroll
    for (int u = 0; u < kColUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < Q; ++e) comb<OP>(acc[e], ai[e], V(w[u].v[e]), j + u);
    }
  }
  for (; j < hi; ++j) {
    const PK w = *reinterpret_cast<const PK*>(src + (j - lo) * inner);
#pragma unroll
    for (int e = 0; e < Q; ++e) comb<OP>(acc[e], ai[e], V(w.v[e]), j);
  }
#pragma unroll
  for (int e = 0; e < Q; ++e) {
    if (fin) {
      red_write<T, V>(out, arg, o * inner + ii + e, acc[e], ai[e]);
    } else {
      const i64 k = (o * gridDim.y + c) * inner + ii + e;
      pv[k] = acc[e];
      pi[k] = ai[e];
    }
  }
}

// inner > 1, stage 2: a thread per column over its `chunks` partials in chunk order.
template <int OP, typename T, typename V>
__global__ void __launch_bounds__(kThreads) cols_stage2(const V* pv, const i64* pi, i64 outer,
                                                        i64 chunks, i64 inner, void* out,
                                                        bool arg) {
  const i64 col = i64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= outer * inner) return;
  const i64 o = col / inner, ii = col - o * inner;
  V v = red_identity<OP, V>();
  i64 i = kNoIdx;
  for (i64 c = 0; c < chunks; ++c) {
    const i64 k = (o * chunks + c) * inner + ii;
    i64 wj = 0;
    if constexpr (OP != R_SUM) wj = pi[k];
    comb<OP>(v, i, pv[k], wj);
  }
  red_write<T, V>(out, arg, col, v, i);
}

struct Temp {
  void* p = nullptr;
  explicit Temp(std::size_t bytes) : p(bytes ? alloc(bytes) : nullptr) {}
  ~Temp() { free(p); }
  Temp(const Temp&) = delete;
  Temp& operator=(const Temp&) = delete;
};

template <int OP, typename T>
void reduce_impl(void* out, const T* in, i64 outer, i64 n, i64 inner, bool arg) {
  using V = typename Acc<T>::type;  // exact for max/min too (a float widens losslessly)
  const i64 cols = outer * inner;
  // Fixed chunking: the chunk count depends on the shape only (never on the device or the
  // pointer), so a result is the same bits on every GPU and every run. Rows: a block per
  // (row, chunk), chunks of at most 16K elements (many small blocks balance 132 SMs; stage 2
  // combines the partials), about 528 blocks wanted (four per SM of an H100). Columns: a
  // thread per (column, chunk), about 270K threads wanted (every SM full), each chunk at
  // least 32 rows long.
  i64 chunks = 1;
  if (inner == 1) {
    const i64 want = 4 * 132;
    if (cols < want && n > 4096)
      chunks = std::min<i64>((n + 4095) / 4096, (want + cols - 1) / cols);
    chunks = std::max<i64>(chunks, (n + 16383) / 16384);
  } else {
    const i64 want = 132 * 2048;
    if (cols < want) chunks = std::min<i64>((want + cols - 1) / cols, (n + 31) / 32);
  }
  chunks = std::max<i64>(chunks, 1);
  i64 chunk = std::max<i64>(1, (n + chunks - 1) / chunks);
  if (inner == 1 && chunks > 1) {
    chunk = std::max<i64>(chunk, (n + 65534) / 65535);  // grid.y limit
    chunk = (chunk + 15) / 16 * 16;  // whole 16-byte packs per chunk, whatever the dtype
  }
  chunks = std::max<i64>(1, (n + chunk - 1) / chunk);
  const bool fin = chunks == 1;
  Temp v1(fin ? 0 : sizeof(V) * cols * chunks), i1(fin ? 0 : sizeof(i64) * cols * chunks);
  V* pv = static_cast<V*>(v1.p);
  i64* pi = static_cast<i64*>(i1.p);
  if (inner == 1) {
    constexpr int P = int(16 / sizeof(T));
    const bool vec = aligned16(in) && (outer == 1 || n % P == 0) && (fin || chunk % P == 0);
    rows_stage1<OP, T, V><<<dim3(unsigned(outer), unsigned(chunks)), kThreads, 0, stream()>>>(
        in, n, chunk, vec, pv, pi, out, fin, arg);
    GF_CUDA_CHECK_LAUNCH("reduce stage 1");
    if (!fin) {
      rows_stage2<OP, T, V><<<unsigned(outer), kThreads, 0, stream()>>>(pv, pi, chunks, out, arg);
      GF_CUDA_CHECK_LAUNCH("reduce stage 2");
    }
  } else {
    constexpr int P = int(16 / sizeof(T));
    const bool vec = aligned16(in) && inner % P == 0;
    const i64 threads = vec ? cols / P : cols;
    const unsigned bx = unsigned((threads + kThreads - 1) / kThreads);
    if (vec) {
      cols_stage1<OP, T, V, P><<<dim3(bx, unsigned(chunks)), kThreads, 0, stream()>>>(
          in, outer, n, inner, chunk, pv, pi, out, fin, arg);
    } else {
      cols_stage1<OP, T, V, 1><<<dim3(bx, unsigned(chunks)), kThreads, 0, stream()>>>(
          in, outer, n, inner, chunk, pv, pi, out, fin, arg);
    }
    GF_CUDA_CHECK_LAUNCH("reduce stage 1");
    if (!fin) {
      const unsigned b2 = unsigned((cols + kThreads - 1) / kThreads);
      cols_stage2<OP, T, V><<<b2, kThreads, 0, stream()>>>(pv, pi, outer, chunks, inner, out,
                                                           arg);
      GF_CUDA_CHECK_LAUNCH("reduce stage 2");
    }
  }
}

}  // namespace

void reduce(int op, int dtype, void* out, const void* in, i64 outer, i64 n, i64 inner) {
  const i64 cols = outer * inner;
  if (cols == 0) return;
  if (n == 0) {
    if (op != R_SUM) throw std::invalid_argument("reduction over an empty axis has no identity");
  }
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    if (n == 0) {  // an empty sum is zero (all-zero bytes for every dtype)
      GF_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(T) * std::size_t(cols), stream()));
      return;
    }
    const T* p = static_cast<const T*>(in);
    const bool arg = op == R_ARGMAX || op == R_ARGMIN;
    if (op == R_SUM) {
      reduce_impl<R_SUM, T>(out, p, outer, n, inner, false);
    } else if (op == R_MAX || op == R_ARGMAX) {
      reduce_impl<R_MAX, T>(out, p, outer, n, inner, arg);
    } else {
      reduce_impl<R_MIN, T>(out, p, outer, n, inner, arg);
    }
  });
}

// ------------------------------------------------------------------------ gathers

namespace {

__device__ __forceinline__ i64 wrap(i64 j, i64 n) { return j < 0 ? j + n : j; }

template <typename T>
__global__ void take_kernel(T* out, const T* in, const i64* index, i64 outer, i64 n, i64 inner,
                            i64 m) {
  const i64 total = outer * m * inner;
  const i64 stride = i64(blockDim.x) * gridDim.x;
  for (i64 t = i64(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const i64 i = t % inner, j = (t / inner) % m, o = t / (inner * m);
    out[t] = in[(o * n + wrap(index[j], n)) * inner + i];
  }
}

template <typename T>
__global__ void index_add_kernel(T* out, const T* src, const i64* index, i64 outer, i64 n,
                                 i64 inner, i64 m) {
  const i64 total = outer * m * inner;
  const i64 stride = i64(blockDim.x) * gridDim.x;
  for (i64 t = i64(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const i64 i = t % inner, j = (t / inner) % m, o = t / (inner * m);
    T* dst = out + (o * n + wrap(index[j], n)) * inner + i;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      atomicAdd(dst, src[t]);
    } else if constexpr (std::is_same_v<T, i64>) {
      atomicAdd(reinterpret_cast<unsigned long long*>(dst),
                static_cast<unsigned long long>(src[t]));
    } else if constexpr (std::is_same_v<T, std::int32_t>) {
      atomicAdd(dst, src[t]);
    } else {
      *dst = T(*dst + src[t]);  // bytes: not atomic (a bool mask gradient is never summed)
    }
  }
}

template <typename T>
__global__ void along_kernel(T* out, const T* in, const i64* index, i64 outer, i64 n, i64 inner,
                             i64 m, bool put) {
  const i64 total = outer * m * inner;
  const i64 stride = i64(blockDim.x) * gridDim.x;
  for (i64 t = i64(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const i64 i = t % inner, o = t / (inner * m);
    const i64 k = (o * n + wrap(index[t], n)) * inner + i;
    if (put) {
      out[k] = in[t];
    } else {
      out[t] = in[k];
    }
  }
}

}  // namespace

void take(int dtype, void* out, const void* in, const i64* index, i64 outer, i64 n, i64 inner,
          i64 m) {
  const i64 total = outer * m * inner;
  if (total == 0) return;
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    take_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(out), static_cast<const T*>(in), index, outer, n, inner, m);
  });
  GF_CUDA_CHECK_LAUNCH("take_kernel");
}

void index_add(int dtype, void* out, const void* src, const i64* index, i64 outer, i64 n,
               i64 inner, i64 m) {
  const i64 total = outer * m * inner;
  if (total == 0) return;
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    index_add_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(out), static_cast<const T*>(src), index, outer, n, inner, m);
  });
  GF_CUDA_CHECK_LAUNCH("index_add_kernel");
}

void take_along(int dtype, void* out, const void* in, const i64* index, i64 outer, i64 n,
                i64 inner, i64 m) {
  const i64 total = outer * m * inner;
  if (total == 0) return;
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    along_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(out), static_cast<const T*>(in), index, outer, n, inner, m, false);
  });
  GF_CUDA_CHECK_LAUNCH("take_along_kernel");
}

void put_along(int dtype, void* out, const void* src, const i64* index, i64 outer, i64 n,
               i64 inner, i64 m) {
  const i64 total = outer * m * inner;
  if (total == 0) return;
  dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    along_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(out), static_cast<const T*>(src), index, outer, n, inner, m, true);
  });
  GF_CUDA_CHECK_LAUNCH("put_along_kernel");
}

// ------------------------------------------------------------------------ cuBLAS

namespace {

void cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + what + ": status " +
                             std::to_string(static_cast<int>(s)));
}

cublasHandle_t handle() {
  // one handle bound to gradfuse's stream, created on first use and kept for the process
  static cublasHandle_t h = [] {
    cublasHandle_t hh = nullptr;
    cublas_check(cublasCreate(&hh), "cublasCreate");
    cublas_check(cublasSetStream(hh, stream()), "cublasSetStream");
    // full float32 products (no TF32), as numpy and PyTorch's default
    cublas_check(cublasSetMathMode(hh, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    return hh;
  }();
  return h;
}

}  // namespace

void gemm(int dtype, bool trans_a, bool trans_b, i64 m, i64 n, i64 k, const void* a, i64 lda,
          i64 stride_a, const void* b, i64 ldb, i64 stride_b, void* c, i64 ldc, i64 stride_c,
          i64 batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  // Row-major C (m x n) is column-major C^T (n x m) = op(B)^T op(A)^T: the same call with the
  // operands swapped, and a row-major matrix read as column-major is its transpose for free.
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (k == 0) {
    // an empty inner dimension: C is zeros (cuBLAS would leave it unwritten for k = 0 with
    // beta = 0 on some versions); C is contiguous per batch here
    if (ldc == n && (batch == 1 || stride_c == m * n)) {
      GF_CUDA_CHECK(cudaMemsetAsync(c, 0, std::size_t(batch * m * n) * (dtype == F32 ? 4 : 8),
                                    stream()));
      return;
    }
  }
  if (dtype == F32) {
    const float alpha = 1.f, beta = 0.f;
    cublas_check(cublasSgemmStridedBatched(handle(), ob, oa, int(n), int(m), int(k), &alpha,
                                           static_cast<const float*>(b), int(ldb), stride_b,
                                           static_cast<const float*>(a), int(lda), stride_a,
                                           &beta, static_cast<float*>(c), int(ldc), stride_c,
                                           int(batch)),
                 "cublasSgemmStridedBatched");
  } else if (dtype == F64) {
    const double alpha = 1.0, beta = 0.0;
    cublas_check(cublasDgemmStridedBatched(handle(), ob, oa, int(n), int(m), int(k), &alpha,
                                           static_cast<const double*>(b), int(ldb), stride_b,
                                           static_cast<const double*>(a), int(lda), stride_a,
                                           &beta, static_cast<double*>(c), int(ldc), stride_c,
                                           int(batch)),
                 "cublasDgemmStridedBatched");
  } else {
    throw std::invalid_argument("matmul on cuda: float32 or float64 only");
  }
}

}  // namespace gf::cuda
