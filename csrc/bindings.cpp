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
#include "kernels/loss.h"
#include "kernels/optim.h"
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

// ---------------------------------------------------------------- optimizers (flat arena)
// One call updates a whole arena (one param group, one dtype). Hyperparameters come as one
// tuple of floats plus a bit mask, so a step costs a single argument conversion per group.

enum : int64_t {
  kOptMaximize = 1, kOptNesterov = 2, kOptFirst = 4, kOptAmsgrad = 8, kOptDecoupled = 16,
  kOptCentered = 32, kOptRectify = 64
};
constexpr size_t kOptScalars = 14;

template <typename T>
T* optional_state(const py::object& obj, const char* name, int64_t n) {
  const auto a = optional_array(obj, name);
  if (!a) return nullptr;
  check_array<T>(*a, name, 1);
  if (a->shape(0) != n) {
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(n) +
                          ",) to match param, got " + shape_str(*a));
  }
  if (!a->writeable()) throw py::value_error(std::string(name) + ": array is read-only");
  return static_cast<T*>(const_cast<void*>(a->data()));
}

void check_state_present(const OptimHyper& h, bool a, bool b, bool c) {
  const bool need0 = !(h.kind == OptimKind::SGD && h.momentum == 0);
  const bool need1 = h.kind == OptimKind::Adam || h.kind == OptimKind::NAdam ||
                     h.kind == OptimKind::RAdam || (h.kind == OptimKind::RMSprop && h.momentum > 0);
  const bool need2 = (h.kind == OptimKind::Adam && h.amsgrad) ||
                     (h.kind == OptimKind::RMSprop && h.centered);
  if ((need0 && !a) || (need1 && !b) || (need2 && !c)) {
    throw py::value_error("state: a state buffer this optimizer needs is None");
  }
}

OptimHyper make_hyper(int kind, const std::vector<double>& sc, int64_t flags) {
  if (kind < 0 || kind > int(OptimKind::Lion)) {
    throw py::value_error("kind: unknown optimizer kind " + std::to_string(kind));
  }
  if (sc.size() != kOptScalars) {
    throw py::value_error("scalars: expected " + std::to_string(kOptScalars) + " values, got " +
                          std::to_string(sc.size()));
  }
  OptimHyper h;
  h.kind = OptimKind(kind);
  h.lr = sc[0]; h.weight_decay = sc[1]; h.eps = sc[2]; h.beta1 = sc[3]; h.beta2 = sc[4];
  h.momentum = sc[5]; h.dampening = sc[6]; h.alpha = sc[7]; h.step_size = sc[8];
  h.bc2_sqrt = sc[9]; h.c1 = sc[10]; h.c2 = sc[11]; h.grad_scale = sc[12];
  (void)sc[13];  // reserved
  h.maximize = flags & kOptMaximize; h.nesterov = flags & kOptNesterov; h.first = flags & kOptFirst;
  h.amsgrad = flags & kOptAmsgrad; h.decoupled = flags & kOptDecoupled;
  h.centered = flags & kOptCentered; h.rectify = flags & kOptRectify;
  return h;
}

template <typename T>
struct OptimBuffers {
  T* p;
  const T* g;
  T* a;
  T* b;
  T* c;
  int64_t n;
};

// The buffers of one arena, checked: 1-D contiguous arrays of T of one length, the state
// buffers `h` needs present (all before anything is written).
template <typename T>
OptimBuffers<T> optim_buffers(const OptimHyper& h, py::array& param, const py::array& grad,
                              const py::object& s0, const py::object& s1, const py::object& s2) {
  check_array<T>(param, "param", 1);
  check_array<T>(grad, "grad", 1);
  const int64_t n = param.shape(0);
  if (grad.shape(0) != n) {
    throw py::value_error("grad: expected shape (" + std::to_string(n) + ",), got " +
                          shape_str(grad));
  }
  if (!param.writeable()) throw py::value_error("param: array is read-only");
  OptimBuffers<T> B{static_cast<T*>(param.mutable_data()), cptr<T>(grad),
                    optional_state<T>(s0, "state0", n), optional_state<T>(s1, "state1", n),
                    optional_state<T>(s2, "state2", n), n};
  check_state_present(h, B.a != nullptr, B.b != nullptr, B.c != nullptr);
  return B;
}

template <typename T>
void optim_step_impl(const OptimHyper& h, py::array& param, const py::array& grad,
                     const py::object& s0, const py::object& s1, const py::object& s2) {
  const OptimBuffers<T> B = optim_buffers<T>(h, param, grad, s0, s1, s2);
  py::gil_scoped_release nogil;
  optim_step<T>(h, B.p, B.g, B.a, B.b, B.c, B.n);
}

void py_optim_step(int kind, py::array param, const py::array& grad, const py::object& s0,
                   const py::object& s1, const py::object& s2, const std::vector<double>& sc,
                   int64_t flags) {
  const OptimHyper h = make_hyper(kind, sc, flags);
  check_floating(param, "param");
  if (is_dtype<float>(param)) {
    optim_step_impl<float>(h, param, grad, s0, s1, s2);
  } else {
    optim_step_impl<double>(h, param, grad, s0, s1, s2);
  }
}

template <typename T>
void lamb_impl(const OptimHyper& h, py::array& param, const py::array& grad, const py::array& m,
               const py::array& v, const py::array& offsets, const py::array& sizes) {
  check_array<T>(param, "param", 1);
  check_array<T>(grad, "grad", 1);
  const int64_t n = param.shape(0);
  if (grad.shape(0) != n) throw py::value_error("grad: expected the shape of param");
  if (!param.writeable()) throw py::value_error("param: array is read-only");
  T* pm = optional_state<T>(m, "exp_avg", n);
  T* pv = optional_state<T>(v, "exp_avg_sq", n);
  check_array<int64_t>(offsets, "offsets", 1);
  check_array<int64_t>(sizes, "sizes", 1);
  const int64_t nseg = offsets.shape(0);
  if (sizes.shape(0) != nseg) throw py::value_error("sizes: expected as many entries as offsets");
  const int64_t* off = cptr<int64_t>(offsets);
  const int64_t* sz = cptr<int64_t>(sizes);
  for (int64_t s = 0; s < nseg; ++s) {
    if (off[s] < 0 || sz[s] < 0 || off[s] + sz[s] > n) {
      throw py::value_error("offsets/sizes: segment " + std::to_string(s) +
                            " lies outside the arena of " + std::to_string(n) + " elements");
    }
  }
  T* p = static_cast<T*>(param.mutable_data());
  const T* g = cptr<T>(grad);
  py::gil_scoped_release nogil;
  lamb_step<T>(h, p, g, pm, pv, off, sz, nseg);
}

void py_lamb_step(py::array param, const py::array& grad, const py::array& exp_avg,
                  const py::array& exp_avg_sq, const py::array& offsets, const py::array& sizes,
                  const std::vector<double>& sc, int64_t flags) {
  if (sc.size() != kOptScalars) throw py::value_error("scalars: expected 14 values");
  OptimHyper h;
  h.lr = sc[0]; h.weight_decay = sc[1]; h.eps = sc[2]; h.beta1 = sc[3]; h.beta2 = sc[4];
  h.c1 = sc[10]; h.c2 = sc[11]; h.grad_scale = sc[12];
  h.maximize = flags & kOptMaximize;
  check_floating(param, "param");
  if (is_dtype<float>(param)) {
    lamb_impl<float>(h, param, grad, exp_avg, exp_avg_sq, offsets, sizes);
  } else {
    lamb_impl<double>(h, param, grad, exp_avg, exp_avg_sq, offsets, sizes);
  }
}

// The optimizer's per-step check that every parameter still has its arena views as .grad and
// .data (nothing rebound): a plain loop of attribute reads and pointer compares, ~10 ns per
// parameter, where the same check in Python cost ~65 ns.
bool py_arena_intact(const py::list& params, const py::list& grads, const py::list& views) {
  static PyObject* s_grad = PyUnicode_InternFromString("grad");
  static PyObject* s_data = PyUnicode_InternFromString("data");
  const Py_ssize_t n = PyList_GET_SIZE(params.ptr());
  if (PyList_GET_SIZE(grads.ptr()) != n || PyList_GET_SIZE(views.ptr()) != n) {
    throw py::value_error("params, grads, views: expected lists of equal length");
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyList_GET_ITEM(params.ptr(), i);
    PyObject* g = PyObject_GetAttr(p, s_grad);
    if (!g) throw py::error_already_set();
    const bool ok_g = g == PyList_GET_ITEM(grads.ptr(), i);
    Py_DECREF(g);
    if (!ok_g) return false;
    PyObject* d = PyObject_GetAttr(p, s_data);
    if (!d) throw py::error_already_set();
    const bool ok_d = d == PyList_GET_ITEM(views.ptr(), i);
    Py_DECREF(d);
    if (!ok_d) return false;
  }
  return true;
}

// One arena's update bound once: the buffers are checked at construction (and kept alive by
// the references held here), so a step is one call that checks the arena views (as
// arena_intact) and runs the kernel, converting only the scalars. The optimizer rebuilds it
// whenever its state buffers or the group's hyperparameters change.
class ArenaStep {
 public:
  ArenaStep(int kind, py::array param, py::array grad, py::object s0, py::object s1,
            py::object s2, const std::vector<double>& sc, int64_t flags, py::list params,
            py::list grads, py::list views)
      : param_(std::move(param)), grad_(std::move(grad)), s0_(std::move(s0)),
        s1_(std::move(s1)), s2_(std::move(s2)), params_(std::move(params)),
        grads_(std::move(grads)), views_(std::move(views)), kind_(kind) {
    const OptimHyper h = make_hyper(kind, sc, flags);
    check_floating(param_, "param");
    is_float_ = is_dtype<float>(param_);
    if (is_float_) {
      f_ = optim_buffers<float>(h, param_, grad_, s0_, s1_, s2_);
    } else {
      d_ = optim_buffers<double>(h, param_, grad_, s0_, s1_, s2_);
    }
  }

  // For the non-finite guard, before any arena is updated: -1 when a view was rebound (the
  // caller takes the general path), else whether every gradient is finite (one read pass).
  int grads_finite() {
    if (!py_arena_intact(params_, grads_, views_)) return -1;
    py::gil_scoped_release nogil;
    return is_float_ ? int(arena_all_finite(f_.g, f_.n)) : int(arena_all_finite(d_.g, d_.n));
  }

  // False (nothing written) when a parameter's .data or .grad is no longer its arena view.
  bool operator()(const std::vector<double>& sc, int64_t flags) {
    const OptimHyper h = make_hyper(kind_, sc, flags);
    if (is_float_) check_state_present(h, f_.a != nullptr, f_.b != nullptr, f_.c != nullptr);
    else check_state_present(h, d_.a != nullptr, d_.b != nullptr, d_.c != nullptr);
    if (!py_arena_intact(params_, grads_, views_)) return false;
    py::gil_scoped_release nogil;
    if (is_float_) optim_step<float>(h, f_.p, f_.g, f_.a, f_.b, f_.c, f_.n);
    else optim_step<double>(h, d_.p, d_.g, d_.a, d_.b, d_.c, d_.n);
    return true;
  }

 private:
  py::array param_, grad_;
  py::object s0_, s1_, s2_;
  py::list params_, grads_, views_;
  int kind_;
  bool is_float_ = true;
  OptimBuffers<float> f_{};
  OptimBuffers<double> d_{};
};

// x must be a 1-D contiguous float32/float64 arena (or arena slice).
template <typename F>
auto arena_dispatch(const py::array& x, const char* name, F&& f) {
  check_floating(x, name);
  if (is_dtype<float>(x)) {
    check_array<float>(x, name, 1);
    return f(static_cast<float*>(const_cast<void*>(x.data())), x.shape(0));
  }
  check_array<double>(x, name, 1);
  return f(static_cast<double*>(const_cast<void*>(x.data())), x.shape(0));
}

double py_arena_norm_reduce(const py::array& x, double norm_type) {
  return arena_dispatch(x, "x", [&](auto* p, int64_t n) {
    py::gil_scoped_release nogil;
    return arena_norm_reduce(p, n, norm_type);
  });
}

bool py_arena_all_finite(const py::array& x) {
  return arena_dispatch(x, "x", [&](auto* p, int64_t n) {
    py::gil_scoped_release nogil;
    return arena_all_finite(p, n);
  });
}

void py_arena_scale(py::array x, double s) {
  if (!x.writeable()) throw py::value_error("x: array is read-only");
  arena_dispatch(x, "x", [&](auto* p, int64_t n) {
    py::gil_scoped_release nogil;
    arena_scale(p, n, s);
  });
}

void py_arena_clamp(py::array x, double lo, double hi) {
  if (!x.writeable()) throw py::value_error("x: array is read-only");
  arena_dispatch(x, "x", [&](auto* p, int64_t n) {
    py::gil_scoped_release nogil;
    arena_clamp(p, n, lo, hi);
  });
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

  m.def("optim_step", &py_optim_step, py::arg("kind"), py::arg("param"), py::arg("grad"),
        py::arg("state0"), py::arg("state1"), py::arg("state2"), py::arg("scalars"),
        py::arg("flags"),
        "one fused optimizer update over a flat arena (see csrc/kernels/optim.h)");
  m.def("lamb_step", &py_lamb_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("offsets"), py::arg("sizes"), py::arg("scalars"),
        py::arg("flags"), "LAMB over an arena with a per-tensor trust ratio (segment table)");
  py::class_<ArenaStep>(m, "ArenaStep",
                        "ArenaStep(kind, param, grad, state0, state1, state2, scalars, flags, "
                        "params, grads, views); call(scalars, flags) -> bool: optim_step "
                        "bound to one arena, False (no update) if a view was rebound")
      .def(py::init<int, py::array, py::array, py::object, py::object, py::object,
                    const std::vector<double>&, int64_t, py::list, py::list, py::list>(),
           py::arg("kind"), py::arg("param"), py::arg("grad"), py::arg("state0"),
           py::arg("state1"), py::arg("state2"), py::arg("scalars"), py::arg("flags"),
           py::arg("params"), py::arg("grads"), py::arg("views"))
      .def("__call__", &ArenaStep::operator(), py::arg("scalars"), py::arg("flags"))
      .def("grads_finite", &ArenaStep::grads_finite,
           "-1 if a view was rebound, else 1 when every gradient is finite, 0 otherwise");
  m.def("arena_intact", &py_arena_intact, py::arg("params"), py::arg("grads"),
        py::arg("views"), "whether params[i].grad is grads[i] and params[i].data is views[i]");
  m.def("arena_norm_reduce", &py_arena_norm_reduce, py::arg("x"), py::arg("norm_type"),
        "sum |x|^p (p=2: sum of squares; p=inf: max |x|), NaN if any NaN");
  m.def("arena_all_finite", &py_arena_all_finite, py::arg("x"));
  m.def("arena_scale", &py_arena_scale, py::arg("x"), py::arg("s"));
  m.def("arena_clamp", &py_arena_clamp, py::arg("x"), py::arg("lo"), py::arg("hi"));

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
