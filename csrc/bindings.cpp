// The one adapter between Python and the kernels (DESIGN.md, decision 1): every argument is
// checked here (dtype, shape, contiguity) with an error that names it, outputs are allocated
// here, the GIL is released, and the plain C++ kernel is called.
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#define NPY_TARGET_VERSION NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "common.h"
#include "kernels/activations.h"
#include "kernels/loss.h"
#include "memory/pool.h"

namespace py = pybind11;
using namespace gradfuse;

namespace {

// ---------------------------------------------------------------- argument checks

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (a.ndim() == 1 || i + 1 < a.ndim()) s += a.ndim() == 1 ? "," : ", ";
  }
  return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Equivalence, not identity: an unpickled array or np.longlong carries an equal but distinct
// descriptor object.
template <typename T>
bool is_dtype(const py::array& a) {
  return PyArray_EquivTypes(reinterpret_cast<PyArray_Descr*>(a.dtype().ptr()),
                            reinterpret_cast<PyArray_Descr*>(py::dtype::of<T>().ptr()));
}

// Optional array arguments must already be ndarrays: a list converted here would be a
// temporary freed before the kernel reads it.
std::optional<py::array> optional_array(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + ": expected a numpy array or None, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

// Checks dtype, ndim and C-contiguity of an array that is about to be read as raw T*.
template <typename T>
void check_array(const py::array& a, const char* name, int ndim) {
  if (!is_dtype<T>(a)) {
    throw py::type_error(std::string(name) + ": expected dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
                         dtype_str(a));
  }
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) +
                          "-D array, got shape " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  }
}

template <typename T>
const T* cptr(const py::array& a) {
  return static_cast<const T*>(a.data());
}

void check_floating(const py::array& a, const char* name) {
  if (!is_dtype<float>(a) && !is_dtype<double>(a)) {
    throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " +
                         dtype_str(a));
  }
}

// ---------------------------------------------------------------- cross entropy

CrossEntropyArgs ce_args(const py::array& logits, const py::array& target, int64_t ignore_index,
                         double label_smoothing) {
  check_floating(logits, "input");
  if (logits.ndim() != 2) {
    throw py::value_error("input: expected logits of shape (N, C), got shape " + shape_str(logits));
  }
  check_array<int64_t>(target, "target", 1);
  CrossEntropyArgs a;
  a.n = logits.shape(0);
  a.c = logits.shape(1);
  a.ignore_index = ignore_index;
  a.label_smoothing = label_smoothing;
  if (a.n == 0) throw py::value_error("input: empty batch (0 rows)");
  if (a.c == 0) throw py::value_error("input: 0 classes");
  if (target.shape(0) != a.n) {
    throw py::value_error("target: expected shape (" + std::to_string(a.n) +
                          ",) to match input " + shape_str(logits) + ", got " +
                          shape_str(target));
  }
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) {
    throw py::value_error("label_smoothing: expected a value in [0, 1], got " +
                          std::to_string(label_smoothing));
  }
  return a;
}

// `w` is the caller's reference to the weight array: it keeps the memory alive.
template <typename T>
const T* checked_weight(const std::optional<py::array>& wopt, const CrossEntropyArgs& a) {
  if (!wopt) return nullptr;
  const py::array& w = *wopt;
  check_array<T>(w, "weight", 1);
  if (w.shape(0) != a.c) {
    throw py::value_error("weight: expected shape (" + std::to_string(a.c) + ",), got " +
                          shape_str(w));
  }
  return cptr<T>(w);
}

template <typename T>
py::tuple ce_forward_impl(const py::array& logits, const py::array& target,
                          const py::object& weight, const CrossEntropyArgs& a) {
  check_array<T>(logits, "input", 2);
  const auto warr = optional_array(weight, "weight");
  const T* w = checked_weight<T>(warr, a);
  py::array_t<T> row_loss(a.n), lse(a.n);
  T* rl = row_loss.mutable_data();
  T* ls = lse.mutable_data();
  const T* x = cptr<T>(logits);
  const int64_t* t = cptr<int64_t>(target);
  CrossEntropySums sums;
  {
    py::gil_scoped_release nogil;
    sums = cross_entropy_forward<T>(x, t, w, a, rl, ls);
  }
  return py::make_tuple(row_loss, lse, sums.loss, sums.weight);
}

py::tuple ce_forward(const py::array& logits, const py::array& target, const py::object& weight,
                     int64_t ignore_index, double label_smoothing) {
  CrossEntropyArgs a = ce_args(logits, target, ignore_index, label_smoothing);
  if (is_dtype<float>(logits)) return ce_forward_impl<float>(logits, target, weight, a);
  return ce_forward_impl<double>(logits, target, weight, a);
}

template <typename T>
py::array ce_backward_impl(const py::array& logits, const py::array& target,
                           const py::object& weight, const py::array& lse,
                           const py::object& grad_rows, double grad_scale,
                           const CrossEntropyArgs& a) {
  check_array<T>(logits, "input", 2);
  const auto warr = optional_array(weight, "weight");
  const T* w = checked_weight<T>(warr, a);
  check_array<T>(lse, "lse", 1);
  if (lse.shape(0) != a.n) throw py::value_error("lse: expected shape (N,) matching input");
  const T* g = nullptr;
  const auto grows = optional_array(grad_rows, "grad_output");
  if (grows) {
    check_array<T>(*grows, "grad_output", 1);
    if (grows->shape(0) != a.n) {
      throw py::value_error("grad_output: expected shape (" + std::to_string(a.n) + ",), got " +
                            shape_str(*grows));
    }
    g = cptr<T>(*grows);
  }
  py::array_t<T> dlogits({a.n, a.c});
  T* dx = dlogits.mutable_data();
  const T* x = cptr<T>(logits);
  const int64_t* t = cptr<int64_t>(target);
  const T* l = cptr<T>(lse);
  {
    py::gil_scoped_release nogil;
    cross_entropy_backward<T>(x, t, w, l, g, grad_scale, a, dx);
  }
  return std::move(dlogits);
}

py::array ce_backward(const py::array& logits, const py::array& target, const py::object& weight,
                      const py::array& lse, const py::object& grad_rows, double grad_scale,
                      int64_t ignore_index, double label_smoothing) {
  CrossEntropyArgs a = ce_args(logits, target, ignore_index, label_smoothing);
  if (is_dtype<float>(logits)) {
    return ce_backward_impl<float>(logits, target, weight, lse, grad_rows, grad_scale, a);
  }
  return ce_backward_impl<double>(logits, target, weight, lse, grad_rows, grad_scale, a);
}

// ---------------------------------------------------------------- activations
// Element-wise ops take any shape (the kernel sees n elements); softmax takes the array and
// a dim and views it as (outer, dim, inner). Inputs are float32 or float64, strided ones are
// copied to C order; outputs are allocated here (the pool serves large ones) unless `out`
// names a C-contiguous array to write into (in place: out may be the input).

ActivationArgs act_args(int op, double a, double b) {
  if (op < int(Activation::Sigmoid) || op > int(Activation::Softplus)) {
    throw py::value_error("op: unknown activation code " + std::to_string(op));
  }
  ActivationArgs args;
  args.op = static_cast<Activation>(op);
  args.a = a;
  args.b = b;
  return args;
}

void check_contiguous(const py::array& x, const char* name) {
  if (!(x.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  }
}

// Inputs that are only read may be strided views (a transpose): they are copied here, in C,
// so the common contiguous case costs Python no flags check.
py::array c_contiguous(const py::array& x) {
  if (x.flags() & py::array::c_style) return x;
  PyObject* copy = PyArray_NewCopy(reinterpret_cast<PyArrayObject*>(x.ptr()), NPY_CORDER);
  if (!copy) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(copy);
}

void check_same(const py::array& x, const py::array& ref, const char* name, const char* refname) {
  if (!x.dtype().is(ref.dtype()) && !PyArray_EquivTypes(
          reinterpret_cast<PyArray_Descr*>(x.dtype().ptr()),
          reinterpret_cast<PyArray_Descr*>(ref.dtype().ptr()))) {
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(ref) + " like " +
                         refname + ", got " + dtype_str(x));
  }
  bool same = x.ndim() == ref.ndim();
  for (py::ssize_t i = 0; same && i < x.ndim(); ++i) same = x.shape(i) == ref.shape(i);
  if (!same) {
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(ref) + " like " +
                          refname + ", got " + shape_str(x));
  }
  check_contiguous(x, name);
}

py::array new_like(const py::array& x) {
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  return py::array(x.dtype(), shape);
}

py::array act_forward(int op, const py::array& input_any, double a, double b,
                      const py::object& out) {
  const ActivationArgs args = act_args(op, a, b);
  check_floating(input_any, "input");
  const py::array input = c_contiguous(input_any);
  const auto oarr = optional_array(out, "out");
  py::array y;
  if (oarr) {
    check_same(*oarr, input, "out", "input");
    if (!oarr->writeable()) throw py::value_error("out: array is read-only");
    y = *oarr;
  } else {
    y = new_like(input);
  }
  const int64_t n = input.size();
  const void* xp = input.data();
  void* yp = y.mutable_data();
  const bool f32 = is_dtype<float>(input);
  {
    py::gil_scoped_release nogil;
    if (f32) {
      activation_forward<float>(static_cast<const float*>(xp), n, args, static_cast<float*>(yp));
    } else {
      activation_forward<double>(static_cast<const double*>(xp), n, args,
                                 static_cast<double*>(yp));
    }
  }
  return y;
}

py::array act_backward(int op, const py::array& grad_any, const py::array& saved_any, double a,
                       double b) {
  const ActivationArgs args = act_args(op, a, b);
  check_floating(saved_any, "saved");
  const py::array saved = c_contiguous(saved_any);
  const py::array grad = c_contiguous(grad_any);
  check_same(grad, saved, "grad_output", "saved");
  py::array dx = new_like(saved);
  const int64_t n = saved.size();
  const void* gp = grad.data();
  const void* sp = saved.data();
  void* dp = dx.mutable_data();
  const bool f32 = is_dtype<float>(saved);
  {
    py::gil_scoped_release nogil;
    if (f32) {
      activation_backward<float>(static_cast<const float*>(gp), static_cast<const float*>(sp), n,
                                 args, static_cast<float*>(dp));
    } else {
      activation_backward<double>(static_cast<const double*>(gp), static_cast<const double*>(sp),
                                  n, args, static_cast<double*>(dp));
    }
  }
  return dx;
}

bool act_backward_uses_output(int op, double a, double b) {
  return activation_backward_uses_output(act_args(op, a, b));
}

struct SoftmaxShape {
  int64_t outer = 1, dim = 1, inner = 1;
};

// A 0-d array is one element with dim 0 (or -1), as PyTorch treats it.
SoftmaxShape softmax_shape(const py::array& x, int64_t dim) {
  const int64_t nd = x.ndim();
  const int64_t span = nd > 0 ? nd : 1;
  if (dim < -span || dim >= span) {
    throw py::index_error("dim: " + std::to_string(dim) + " is out of range for a tensor with " +
                          std::to_string(nd) + " dimensions (expected an int in [" +
                          std::to_string(-span) + ", " + std::to_string(span - 1) + "])");
  }
  SoftmaxShape s;
  if (nd == 0) return s;
  const int64_t d = dim < 0 ? dim + nd : dim;
  for (int64_t i = 0; i < d; ++i) s.outer *= x.shape(i);
  s.dim = x.shape(d);
  for (int64_t i = d + 1; i < nd; ++i) s.inner *= x.shape(i);
  return s;
}

py::array softmax_fwd(const py::array& input_any, int64_t dim, bool log) {
  check_floating(input_any, "input");
  const py::array input = c_contiguous(input_any);
  const SoftmaxShape s = softmax_shape(input, dim);
  py::array y = new_like(input);
  const void* xp = input.data();
  void* yp = y.mutable_data();
  const bool f32 = is_dtype<float>(input);
  {
    py::gil_scoped_release nogil;
    if (f32) {
      softmax_forward<float>(static_cast<const float*>(xp), s.outer, s.dim, s.inner, log,
                             static_cast<float*>(yp));
    } else {
      softmax_forward<double>(static_cast<const double*>(xp), s.outer, s.dim, s.inner, log,
                              static_cast<double*>(yp));
    }
  }
  return y;
}

py::array softmax_bwd(const py::array& grad_any, const py::array& output_any, int64_t dim,
                      bool log) {
  check_floating(output_any, "output");
  const py::array output = c_contiguous(output_any);
  const py::array grad = c_contiguous(grad_any);
  check_same(grad, output, "grad_output", "output");
  const SoftmaxShape s = softmax_shape(output, dim);
  py::array dx = new_like(output);
  const void* gp = grad.data();
  const void* yp = output.data();
  void* dp = dx.mutable_data();
  const bool f32 = is_dtype<float>(output);
  {
    py::gil_scoped_release nogil;
    if (f32) {
      softmax_backward<float>(static_cast<const float*>(gp), static_cast<const float*>(yp),
                              s.outer, s.dim, s.inner, log, static_cast<float*>(dp));
    } else {
      softmax_backward<double>(static_cast<const double*>(gp), static_cast<const double*>(yp),
                               s.outer, s.dim, s.inner, log, static_cast<double*>(dp));
    }
  }
  return dx;
}

// ---------------------------------------------------------------- numpy allocator hook
// numpy (NEP 49) lets a context route every array's data allocation through a handler.
// Ours sends large requests to the pool, so the outputs of ordinary numpy operations inside a
// training step (matmul, add, ...) reuse warm pages instead of faulting in fresh ones.

void* np_malloc(void*, size_t size) {
  if (size >= memory::kPoolMinBytes) return memory::pool_alloc(size);
  return std::malloc(size ? size : 1);
}

void* np_calloc(void*, size_t nelem, size_t elsize) {
  if (elsize != 0 && nelem > SIZE_MAX / elsize) return nullptr;
  const size_t size = nelem * elsize;
  if (size >= memory::kPoolMinBytes) {
    void* p = memory::pool_alloc(size);
    // Pool pages are already mapped; zeroing them is cheaper than faulting fresh zero pages.
    if (p) std::memset(p, 0, size);
    return p;
  }
  return std::calloc(nelem ? nelem : 1, elsize ? elsize : 1);
}

void np_free(void*, void* ptr, size_t) {
  if (ptr == nullptr) return;
  if (memory::pool_owns(ptr, nullptr)) {
    memory::pool_free(ptr);
  } else {
    std::free(ptr);
  }
}

void* np_realloc(void*, void* ptr, size_t new_size) {
  if (ptr == nullptr) return np_malloc(nullptr, new_size);
  size_t old_size = 0;
  const bool pooled = memory::pool_owns(ptr, &old_size);
  if (!pooled && new_size < memory::kPoolMinBytes) return std::realloc(ptr, new_size ? new_size : 1);
  if (pooled && new_size <= old_size && new_size >= memory::kPoolMinBytes) return ptr;
  if (!pooled) old_size = malloc_usable_size(ptr);
  void* fresh = np_malloc(nullptr, new_size);
  if (fresh == nullptr) return nullptr;  // numpy keeps the old block, as with realloc
  std::memcpy(fresh, ptr, old_size < new_size ? old_size : new_size);
  np_free(nullptr, ptr, old_size);
  return fresh;
}

PyDataMem_Handler pool_handler = {
    "gradfuse_pool", 1, {nullptr, np_malloc, np_calloc, np_realloc, np_free}};

// numpy keeps the handler per context (thread / contextvars context), so the questions
// "is the pool active?" and "switch it off" are answered for the calling context only, by
// looking at numpy's current handler rather than at state of our own.
bool pool_handler_active() {
  PyObject* current = PyDataMem_GetHandler();
  if (!current) throw py::error_already_set();
  const bool mine = PyCapsule_GetPointer(current, "mem_handler") == &pool_handler;
  Py_DECREF(current);
  return mine;
}

void set_handler(PyObject* capsule) {
  PyObject* old = PyDataMem_SetHandler(capsule);
  if (!old) throw py::error_already_set();
  Py_DECREF(old);
}

bool install_numpy_allocator() {
  if (pool_handler_active()) return false;
  PyObject* capsule = PyCapsule_New(&pool_handler, "mem_handler", nullptr);
  if (!capsule) throw py::error_already_set();
  set_handler(capsule);
  Py_DECREF(capsule);
  return true;
}

bool uninstall_numpy_allocator() {
  if (!pool_handler_active()) return false;
  set_handler(PyDataMem_DefaultHandler);  // numpy's own malloc-based handler
  return true;
}

py::dict pool_stats() {
  memory::PoolStats s = memory::pool_stats();
  py::dict d;
  d["bytes_in_use"] = s.bytes_in_use;
  d["bytes_cached"] = s.bytes_cached;
  d["peak_bytes_in_use"] = s.peak_bytes_in_use;
  d["cache_limit"] = s.cache_limit;
  d["allocs"] = s.allocs;
  d["reuses"] = s.reuses;
  d["fresh"] = s.fresh;
  d["releases"] = s.releases;
  d["min_bytes"] = memory::kPoolMinBytes;
  return d;
}

// A numpy array whose memory comes straight from the pool, whatever the active handler.
py::array pool_empty(const std::vector<py::ssize_t>& shape, const py::dtype& dtype) {
  if (PyDataType_REFCHK(reinterpret_cast<PyArray_Descr*>(dtype.ptr()))) {
    // reused memory is not zeroed: object pointers in it would be garbage
    throw py::type_error("dtype: the pool holds plain data only, got " +
                         py::str(dtype).cast<std::string>());
  }
  size_t count = 1;
  for (auto d : shape) {
    if (d < 0) throw py::value_error("shape: dimensions must be >= 0");
    count *= size_t(d);
  }
  const size_t bytes = count * size_t(dtype.itemsize());
  void* p = memory::pool_alloc(bytes ? bytes : 1);
  if (!p) throw std::bad_alloc();
  py::capsule owner(p, [](void* q) { memory::pool_free(q); });
  return py::array(dtype, shape, {}, p, owner);
}

// ---------------------------------------------------------------- build information

py::dict build_info() {
  py::dict d;
#ifdef GRADFUSE_CXX_COMPILER
  d["compiler"] = GRADFUSE_CXX_COMPILER;
#endif
  d["compiler_version"] = __VERSION__;
#ifdef GRADFUSE_OPENMP
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
#else
  d["openmp"] = false;
#endif
  d["native_build"] = bool(GRADFUSE_NATIVE_BUILD);
  py::list compiled;
#ifdef __SSE2__
  compiled.append("SSE2");
#endif
#ifdef __AVX2__
  compiled.append("AVX2");
#endif
#ifdef __FMA__
  compiled.append("FMA");
#endif
#ifdef __AVX512F__
  compiled.append("AVX512F");
#endif
  d["simd_baseline"] = compiled;
  std::string dispatch = "baseline";
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !GRADFUSE_NATIVE_BUILD
  d["multiversioned"] = true;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    dispatch = "x86-64-v4 (AVX-512)";
  } else if (__builtin_cpu_supports("avx2")) {
    dispatch = "AVX2";
  }
#else
  d["multiversioned"] = false;
#endif
  d["simd_dispatch"] = dispatch;
  d["cuda"] = false;
  d["pool_min_bytes"] = memory::kPoolMinBytes;
  return d;
}

int py_get_num_threads() { return gradfuse::num_threads(); }

void py_set_num_threads(int n) {
  if (n < 1) throw py::value_error("n: expected a thread count >= 1, got " + std::to_string(n));
  gradfuse::set_num_threads(n);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  if (_import_array() < 0) throw py::error_already_set();
  m.doc() = "gradfuse compiled kernels; import through gradfuse._backend only";

  m.def("cross_entropy_forward", &ce_forward, py::arg("input"), py::arg("target"),
        py::arg("weight"), py::arg("ignore_index"), py::arg("label_smoothing"),
        "(input (N,C) float, target (N,) int64, weight (C,)|None, ignore_index, label_smoothing)"
        " -> (row_loss (N,), lse (N,), loss_sum, weight_sum)");
  m.def("cross_entropy_backward", &ce_backward, py::arg("input"), py::arg("target"),
        py::arg("weight"), py::arg("lse"), py::arg("grad_output"), py::arg("grad_scale"),
        py::arg("ignore_index"), py::arg("label_smoothing"),
        "-> dinput (N, C); grad_output (N,)|None is multiplied by grad_scale");

  m.def("activation_forward", &act_forward, py::arg("op"), py::arg("input"), py::arg("a"),
        py::arg("b"), py::arg("out"),
        "(op code, input float array C-contiguous, a, b, out array|None) -> output, same shape;"
        " out may be input (in place)");
  m.def("activation_backward", &act_backward, py::arg("op"), py::arg("grad_output"),
        py::arg("saved"), py::arg("a"), py::arg("b"),
        "(op, grad_output, saved (output or input, see activation_backward_uses_output), a, b)"
        " -> grad_input");
  m.def("activation_backward_uses_output", &act_backward_uses_output, py::arg("op"),
        py::arg("a"), py::arg("b"), "True: backward wants the forward output, else the input");
  m.def("softmax_forward", &softmax_fwd, py::arg("input"), py::arg("dim"), py::arg("log"),
        "(input, dim, log) -> softmax (or log_softmax) along dim");
  m.def("softmax_backward", &softmax_bwd, py::arg("grad_output"), py::arg("output"),
        py::arg("dim"), py::arg("log"), "(grad_output, forward output, dim, log) -> grad_input");

  m.def("install_numpy_allocator", &install_numpy_allocator);
  m.def("uninstall_numpy_allocator", &uninstall_numpy_allocator);
  m.def("pool_stats", &pool_stats);
  m.def("pool_empty_cache", &memory::pool_empty_cache);
  m.def("pool_set_cache_limit", &memory::pool_set_cache_limit, py::arg("bytes"));
  m.def("pool_empty", &pool_empty, py::arg("shape"), py::arg("dtype"));

  m.def("build_info", &build_info);
  m.def("get_num_threads", &py_get_num_threads);
  m.def("set_num_threads", &py_set_num_threads, py::arg("n"));
}
