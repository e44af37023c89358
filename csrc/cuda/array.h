// Generic array kernels behind gradfuse.cuda.DeviceArray (csrc/cuda/array.cu): strided copy
// and cast, broadcasting element-wise ops, axis reductions, gathers and cuBLAS matrix products.
//
// Every operand is a device pointer plus strides in ELEMENTS over one common shape (a stride
// of 0 broadcasts); a null pointer with a value is a scalar operand, so `x * 2.0` costs no
// host-to-device copy. Everything is queued on gf::cuda::stream(); nothing synchronizes.
#pragma once

#include <cstdint>
#include <vector>

namespace gf::cuda {

// Element types; BOOL is stored as one byte (0/1) like numpy's bool_.
enum DType : int { F32 = 0, F64 = 1, I64 = 2, I32 = 3, U8 = 4, BOOL = 5 };

enum UnaryOp : int {
  NEG = 0, EXP, LOG, SQRT, ABS, SIGN, TANH, TRUNC, FLOOR, CEIL, RECIPROCAL, SQUARE, LOG1P,
  EXPM1, SIN, COS, LOGICAL_NOT,
  // -> BOOL
  ISFINITE, ISNAN, ISINF,
};

enum BinaryOp : int {
  ADD = 0, SUB, MUL, DIV, POW, MAXIMUM, MINIMUM, LOGICAL_AND, LOGICAL_OR,
  // -> BOOL
  EQ, NE, LT, LE, GT, GE,
};

enum ReduceOp : int { R_SUM = 0, R_MAX, R_MIN, R_ARGMAX, R_ARGMIN };

struct Operand {
  const void* ptr = nullptr;       // null: a scalar operand holding `value`
  std::vector<std::int64_t> strides;  // elements, one per dim of the common shape
  double value = 0.0;
};

// dst[idx] = cast(src[idx]) over `shape`; dtypes may differ (numpy's astype / copyto).
void copy(void* dst, int dst_dtype, const std::vector<std::int64_t>& dst_strides,
          const Operand& src, int src_dtype, const std::vector<std::int64_t>& shape);

// out = op(a) with a and out of dtype `dtype` (out BOOL for ISFINITE/ISNAN/ISINF).
void unary(int op, int dtype, void* out, const std::vector<std::int64_t>& out_strides,
           const Operand& a, const std::vector<std::int64_t>& shape);

// out = a op b, a and b of dtype `dtype`; out of `dtype` or BOOL for comparisons.
void binary(int op, int dtype, void* out, const std::vector<std::int64_t>& out_strides,
            const Operand& a, const Operand& b, const std::vector<std::int64_t>& shape);

// out = cond ? a : b (cond BOOL, a/b/out of dtype).
void where(int dtype, void* out, const std::vector<std::int64_t>& out_strides,
           const Operand& cond, const Operand& a, const Operand& b,
           const std::vector<std::int64_t>& shape);

// Reduces the middle axis of a contiguous (outer, n, inner) array into contiguous
// (outer, inner) `out`: SUM writes dtype (double accumulation for floats, int64 for ints),
// MAX/MIN write dtype, ARGMAX/ARGMIN write int64. Fixed chunking: bitwise reproducible.
// NaN propagates through MAX/MIN and is the arg of ARGMAX/ARGMIN, as in numpy.
void reduce(int op, int dtype, void* out, const void* in, std::int64_t outer, std::int64_t n,
            std::int64_t inner);

// out[o, j, i] = in[o, index[j], i] for a contiguous (outer, n, inner) `in`, int64 `index`
// of length m (negative entries count from the end), contiguous (outer, m, inner) `out`.
void take(int dtype, void* out, const void* in, const std::int64_t* index, std::int64_t outer,
          std::int64_t n, std::int64_t inner, std::int64_t m);
// out[o, index[j], i] += src[o, j, i] (numpy's add.at: repeated indices accumulate; float
// atomics, so the order of the additions and the last bits vary between runs).
void index_add(int dtype, void* out, const void* src, const std::int64_t* index,
               std::int64_t outer, std::int64_t n, std::int64_t inner, std::int64_t m);
// take_along_axis / put_along_axis on contiguous arrays: index is (outer, m, inner).
void take_along(int dtype, void* out, const void* in, const std::int64_t* index,
                std::int64_t outer, std::int64_t n, std::int64_t inner, std::int64_t m);
void put_along(int dtype, void* out, const void* src, const std::int64_t* index,
               std::int64_t outer, std::int64_t n, std::int64_t inner, std::int64_t m);

// Row-major batched C[b] = op(A[b]) @ op(B[b]) (m x k times k x n) through cuBLAS, F32 or
// F64. lda/ldb/ldc are row strides; trans_a means A is stored as its (k x m) transpose.
void gemm(int dtype, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
          const void* a, std::int64_t lda, std::int64_t stride_a, const void* b, std::int64_t ldb,
          std::int64_t stride_b, void* c, std::int64_t ldc, std::int64_t stride_c,
          std::int64_t batch);

}  // namespace gf::cuda
