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

#include <cmath>
#include <array>
#include <vector>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "common.h"
#include "kernels/loss.h"
#include "kernels/optim.h"
#include "kernels/scale.h"
#include "kernels/norms.h"
#include "kernels/init.h"
#include "kernels/activations.h"
#include "kernels/reduce.h"
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
    if (cleared_ || !py_arena_intact(params_, grads_, views_)) return -1;
    py::gil_scoped_release nogil;
    return is_float_ ? int(arena_all_finite(f_.g, f_.n)) : int(arena_all_finite(d_.g, d_.n));
  }

  // False (nothing written) when a parameter's .data or .grad is no longer its arena view.
  bool operator()(const std::vector<double>& sc, int64_t flags) {
    if (cleared_) return false;
    const OptimHyper h = make_hyper(kind_, sc, flags);
    if (is_float_) check_state_present(h, f_.a != nullptr, f_.b != nullptr, f_.c != nullptr);
    else check_state_present(h, d_.a != nullptr, d_.b != nullptr, d_.c != nullptr);
    if (!py_arena_intact(params_, grads_, views_)) return false;
    py::gil_scoped_release nogil;
    if (is_float_) optim_step<float>(h, f_.p, f_.g, f_.a, f_.b, f_.c, f_.n);
    else optim_step<double>(h, d_.p, d_.g, d_.a, d_.b, d_.c, d_.n);
    return true;
  }

  // The cyclic GC's view of the Python objects held here: the gradient tensors refer back
  // to their arena (_ArenaGrad._gf_arena), which holds this object, so without traverse
  // every optimizer that had stepped stayed alive with all its buffers (the GC took the
  // lists for external references). Clear drops the lists; the object then never writes.
  int traverse(visitproc visit, void* arg) {
    Py_VISIT(params_.ptr());
    Py_VISIT(grads_.ptr());
    Py_VISIT(views_.ptr());
    Py_VISIT(s0_.ptr());
    Py_VISIT(s1_.ptr());
    Py_VISIT(s2_.ptr());
    return 0;
  }
  void clear() {
    cleared_ = true;
    params_ = py::list();
    grads_ = py::list();
    views_ = py::list();
  }

 private:
  py::array param_, grad_;
  py::object s0_, s1_, s2_;
  py::list params_, grads_, views_;
  bool cleared_ = false;
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

// ---------------------------------------------------------------- data scaling (scale.cpp)

// X of a scaler: a C-contiguous float32/float64 (n_samples, n_features) array.
void check_scaler_input(const py::array& x) {
  check_floating(x, "X");
  if (x.ndim() != 2) {
    throw py::value_error("X: expected a 2-D array (n_samples, n_features), got shape " +
                          shape_str(x));
  }
  if (!(x.flags() & py::array::c_style)) {
    throw py::value_error("X: expected a C-contiguous array");
  }
}

template <typename T>
void column_stats_call(const py::array& x, const ColumnStatsOut& out) {
  const T* p = cptr<T>(x);
  const int64_t n = x.shape(0), d = x.shape(1);
  py::gil_scoped_release nogil;
  column_stats<T>(p, n, d, out);
}

py::tuple py_column_stats(const py::array& x, bool moments) {
  check_scaler_input(x);
  const int64_t n = x.shape(0), d = x.shape(1);
  if (n == 0 || d == 0) {
    throw py::value_error("X: expected at least 1 sample and 1 feature, got shape " +
                          shape_str(x));
  }
  py::array_t<double> count(d);
  py::object mean = py::none(), m2 = py::none(), mn = py::none(), mx = py::none();
  ColumnStatsOut out;
  out.count = count.mutable_data();
  if (moments) {
    py::array_t<double> mean_a(d), m2_a(d);
    out.mean = mean_a.mutable_data();
    out.m2 = m2_a.mutable_data();
    mean = mean_a;
    m2 = m2_a;
  } else {
    py::array_t<double> mn_a(d), mx_a(d);
    out.min = mn_a.mutable_data();
    out.max = mx_a.mutable_data();
    mn = mn_a;
    mx = mx_a;
  }
  if (is_dtype<float>(x)) {
    column_stats_call<float>(x, out);
  } else {
    column_stats_call<double>(x, out);
  }
  return py::make_tuple(count, mean, m2, mn, mx);
}

template <typename T>
py::tuple affine_columns_call(const py::array& x, const double* sh, const double* mu,
                              const double* ad, const AffineArgs& a) {
  py::array_t<T> out({a.n, a.d});
  T* o = out.mutable_data();
  const T* p = cptr<T>(x);
  NonFiniteSeen seen;
  {
    py::gil_scoped_release nogil;
    seen = affine_columns<T>(p, sh, mu, ad, a, o);
  }
  return py::make_tuple(out, seen.nan, seen.inf);
}

py::tuple py_affine_columns(const py::array& x, const py::array& shift, const py::array& mul,
                            const py::array& add, bool clip, double lo, double hi) {
  check_scaler_input(x);
  AffineArgs a;
  a.n = x.shape(0);
  a.d = x.shape(1);
  a.clip = clip;
  a.lo = lo;
  a.hi = hi;
  const std::pair<const py::array*, const char*> coefs[] = {
      {&shift, "shift"}, {&mul, "mul"}, {&add, "add"}};
  for (const auto& [arr, name] : coefs) {
    check_array<double>(*arr, name, 1);
    if (arr->shape(0) != a.d) {
      throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(a.d) +
                            ",) to match X " + shape_str(x) + ", got " + shape_str(*arr));
    }
  }
  if (clip && !(lo <= hi)) throw py::value_error("lo, hi: expected lo <= hi for clip");
  const double* sh = cptr<double>(shift);
  const double* mu = cptr<double>(mul);
  const double* ad = cptr<double>(add);
  if (is_dtype<float>(x)) return affine_columns_call<float>(x, sh, mu, ad, a);
  return affine_columns_call<double>(x, sh, mu, ad, a);
}

ImageLayout image_layout(const py::array& x, int64_t outer, int64_t channels, int64_t inner) {
  if (!is_dtype<uint8_t>(x)) {
    throw py::type_error("x: expected dtype uint8 (pixels 0..255), got " + dtype_str(x));
  }
  if (!(x.flags() & py::array::c_style)) {
    throw py::value_error("x: expected a C-contiguous array");
  }
  // the product is checked for overflow: a wrapped product could match a small array's size
  int64_t total = 0;
  const bool overflow = __builtin_mul_overflow(outer, channels, &total) ||
                        __builtin_mul_overflow(total, inner, &total);
  if (outer < 1 || channels < 1 || inner < 1 || overflow || total != int64_t(x.size())) {
    throw py::value_error("x: layout (outer=" + std::to_string(outer) + ", channels=" +
                          std::to_string(channels) + ", inner=" + std::to_string(inner) +
                          ") does not match shape " + shape_str(x));
  }
  ImageLayout l;
  l.outer = outer;
  l.channels = channels;
  l.inner = inner;
  return l;
}

py::tuple py_image_channel_stats(const py::array& x, int64_t outer, int64_t channels,
                                 int64_t inner) {
  const ImageLayout l = image_layout(x, outer, channels, inner);
  py::array_t<double> mean(channels), var(channels);
  double* m = mean.mutable_data();
  double* v = var.mutable_data();
  const uint8_t* p = cptr<uint8_t>(x);
  {
    py::gil_scoped_release nogil;
    image_channel_stats(p, l, m, v);
  }
  return py::make_tuple(mean, var);
}

py::array py_image_affine(const py::array& x, int64_t outer, int64_t channels, int64_t inner,
                          const py::array& shift, const py::array& mul, const py::array& add) {
  const ImageLayout l = image_layout(x, outer, channels, inner);
  check_array<double>(shift, "shift", 1);
  check_array<double>(mul, "mul", 1);
  check_array<double>(add, "add", 1);
  if (shift.shape(0) != channels || mul.shape(0) != channels || add.shape(0) != channels) {
    throw py::value_error("shift, mul, add: expected shape (" + std::to_string(channels) + ",)");
  }
  py::array_t<float> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  float* o = out.mutable_data();
  const uint8_t* p = cptr<uint8_t>(x);
  const double* sh = cptr<double>(shift);
  const double* mu = cptr<double>(mul);
  const double* ad = cptr<double>(add);
  {
    py::gil_scoped_release nogil;
    image_affine(p, l, sh, mu, ad, o);
  }
  return std::move(out);
}

// ---------------------------------------------------------------- normalization layers
// x arrives as (rows, cols) for layer/RMS norm and as (N, C, L) for batch/group norm: the
// Python layer reshapes (views, no copies) before calling.

void check_eps(double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps)) {
    throw py::value_error("eps: expected a finite value >= 0, got " + std::to_string(eps));
  }
}

// A 1-D float array of `n` elements of type T (weight, bias, statistics), or nullptr for None.
template <typename T>
const T* norm_vec(const std::optional<py::array>& a, const char* name, int64_t n) {
  if (!a) return nullptr;
  check_array<T>(*a, name, 1);
  if (a->shape(0) != n) {
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(n) +
                          ",), got " + shape_str(*a));
  }
  return cptr<T>(*a);
}

template <typename T>
void check_same_shape(const py::array& a, const py::array& ref, const char* name) {
  check_array<T>(a, name, int(ref.ndim()));
  for (py::ssize_t i = 0; i < ref.ndim(); ++i) {
    if (a.shape(i) != ref.shape(i)) {
      throw py::value_error(std::string(name) + ": expected shape " + shape_str(ref) + ", got " +
                            shape_str(a));
    }
  }
}

py::object none_or(bool want, py::array a) { return want ? py::object(std::move(a)) : py::none(); }

// The (dx, dweight, dbias) a norm backward returns: each allocated only when requested (a
// kernel skips a null pointer), returned as None otherwise.
template <typename T>
struct NormGrads {
  bool need_dx, need_dw, need_db;
  py::array_t<T> dx, dw, db;
  NormGrads(std::vector<py::ssize_t> x_shape, py::ssize_t c, bool ndx, bool ndw, bool ndb)
      : need_dx(ndx), need_dw(ndw), need_db(ndb),
        dx(ndx ? std::move(x_shape) : std::vector<py::ssize_t>{0}), dw(ndw ? c : 0),
        db(ndb ? c : 0) {}
  T* dxp() { return need_dx ? dx.mutable_data() : nullptr; }
  T* dwp() { return need_dw ? dw.mutable_data() : nullptr; }
  T* dbp() { return need_db ? db.mutable_data() : nullptr; }
  py::tuple result() {
    return py::make_tuple(none_or(need_dx, dx), none_or(need_dw, dw), none_or(need_db, db));
  }
};

template <typename T>
py::tuple row_norm_forward_impl(const py::array& x, const py::object& weight,
                                const py::object& bias, double eps, bool rms) {
  check_array<T>(x, "input", 2);
  RowNormArgs a;
  a.rows = x.shape(0);
  a.cols = x.shape(1);
  a.eps = eps;
  a.rms = rms;
  if (a.cols == 0) throw py::value_error("normalized_shape: normalizes over 0 elements");
  const auto wa = optional_array(weight, "weight"), ba = optional_array(bias, "bias");
  const T* w = norm_vec<T>(wa, "weight", a.cols);
  const T* b = norm_vec<T>(ba, "bias", a.cols);
  py::array_t<T> y({a.rows, a.cols}), mean(a.rows), rstd(a.rows);
  T* yp = y.mutable_data();
  T* mp = rms ? nullptr : mean.mutable_data();
  T* rp = rstd.mutable_data();
  const T* xp = cptr<T>(x);
  {
    py::gil_scoped_release nogil;
    row_norm_forward<T>(xp, w, b, a, yp, mp, rp);
  }
  return py::make_tuple(y, none_or(!rms, mean), rstd);
}

py::tuple py_row_norm_forward(const py::array& x, const py::object& weight, const py::object& bias,
                              double eps, bool rms) {
  check_floating(x, "input");
  check_eps(eps);
  if (is_dtype<float>(x)) return row_norm_forward_impl<float>(x, weight, bias, eps, rms);
  return row_norm_forward_impl<double>(x, weight, bias, eps, rms);
}

template <typename T>
py::tuple row_norm_backward_impl(const py::array& x, const py::array& dy, const py::object& weight,
                                 const py::object& mean, const py::array& rstd, bool rms,
                                 bool need_dx, bool need_dw, bool need_db) {
  check_array<T>(x, "input", 2);
  check_same_shape<T>(dy, x, "grad_output");
  RowNormArgs a;
  a.rows = x.shape(0);
  a.cols = x.shape(1);
  a.rms = rms;
  const auto wa = optional_array(weight, "weight"), ma = optional_array(mean, "mean");
  const T* w = norm_vec<T>(wa, "weight", a.cols);
  const T* m = norm_vec<T>(ma, "mean", a.rows);
  if (!rms && !m) throw py::value_error("mean: required for layer_norm (rms=False)");
  const T* r = norm_vec<T>(std::optional<py::array>(rstd), "rstd", a.rows);
  NormGrads<T> g({a.rows, a.cols}, a.cols, need_dx, need_dw, need_db);
  T *dxp = g.dxp(), *dwp = g.dwp(), *dbp = g.dbp();  // before the GIL is released
  const T* xp = cptr<T>(x);
  const T* gp = cptr<T>(dy);
  {
    py::gil_scoped_release nogil;
    row_norm_backward<T>(xp, gp, w, m, r, a, dxp, dwp, dbp);
  }
  return g.result();
}

py::tuple py_row_norm_backward(const py::array& x, const py::array& dy, const py::object& weight,
                               const py::object& mean, const py::array& rstd, bool rms,
                               bool need_dx, bool need_dw, bool need_db) {
  check_floating(x, "input");
  if (is_dtype<float>(x)) {
    return row_norm_backward_impl<float>(x, dy, weight, mean, rstd, rms, need_dx, need_dw,
                                         need_db);
  }
  return row_norm_backward_impl<double>(x, dy, weight, mean, rstd, rms, need_dx, need_dw, need_db);
}

// (N, C) or (N, C, L): outputs get the input's own shape, so a gradient needs no reshape (a
// reshaped view could not be adopted as a leaf's .grad without a copy).
template <typename T>
BatchNormArgs bn_args(const py::array& x) {
  if (x.ndim() != 2 && x.ndim() != 3) {
    throw py::value_error("input: expected a 2-D (N, C) or 3-D (N, C, L) array, got shape " +
                          shape_str(x));
  }
  check_array<T>(x, "input", int(x.ndim()));
  BatchNormArgs a;
  a.n = x.shape(0);
  a.c = x.shape(1);
  a.l = x.ndim() == 3 ? x.shape(2) : 1;
  return a;
}

std::vector<py::ssize_t> same_shape(const py::array& x) {
  return std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim());
}

template <typename T>
py::tuple batch_norm_forward_impl(const py::array& x, const py::object& weight,
                                  const py::object& bias, const py::object& running_mean,
                                  const py::object& running_var, bool training, double factor,
                                  double eps) {
  BatchNormArgs a = bn_args<T>(x);
  a.eps = eps;
  a.training = training;
  a.factor = factor;
  const auto wa = optional_array(weight, "weight"), ba = optional_array(bias, "bias");
  const auto rma = optional_array(running_mean, "running_mean");
  const auto rva = optional_array(running_var, "running_var");
  const T* w = norm_vec<T>(wa, "weight", a.c);
  const T* b = norm_vec<T>(ba, "bias", a.c);
  T* rm = const_cast<T*>(norm_vec<T>(rma, "running_mean", a.c));
  T* rv = const_cast<T*>(norm_vec<T>(rva, "running_var", a.c));
  if (bool(rm) != bool(rv)) {
    throw py::value_error("running_mean, running_var: give both or neither");
  }
  if (rm && (!rma->writeable() || !rva->writeable())) {
    throw py::value_error("running_mean, running_var: expected writeable arrays");
  }
  if (!training && !rm) {
    throw py::value_error("running_mean: required when training=False");
  }
  if (a.c == 0) throw py::value_error("input: 0 channels");
  if (training && a.n * a.l <= 1) {
    throw py::value_error("Expected more than 1 value per channel when training, got input "
                          "size " + shape_str(x));
  }
  if (!(factor >= 0.0 && factor <= 1.0)) {
    throw py::value_error("momentum: expected a value in [0, 1], got " + std::to_string(factor));
  }
  a.update_running = training && rm != nullptr;
  py::array_t<T> y(same_shape(x)), mean(a.c), rstd(a.c);
  T* yp = y.mutable_data();
  T* mp = mean.mutable_data();
  T* rp = rstd.mutable_data();
  const T* xp = cptr<T>(x);
  {
    py::gil_scoped_release nogil;
    batch_norm_forward<T>(xp, w, b, rm, rv, a, yp, mp, rp);
  }
  return py::make_tuple(y, mean, rstd);
}

py::tuple py_batch_norm_forward(const py::array& x, const py::object& weight,
                                const py::object& bias, const py::object& running_mean,
                                const py::object& running_var, bool training, double factor,
                                double eps) {
  check_floating(x, "input");
  check_eps(eps);
  if (is_dtype<float>(x)) {
    return batch_norm_forward_impl<float>(x, weight, bias, running_mean, running_var, training,
                                          factor, eps);
  }
  return batch_norm_forward_impl<double>(x, weight, bias, running_mean, running_var, training,
                                         factor, eps);
}

template <typename T>
py::tuple batch_norm_backward_impl(const py::array& x, const py::array& dy,
                                   const py::object& weight, const py::array& mean,
                                   const py::array& rstd, bool training, bool need_dx,
                                   bool need_dw, bool need_db) {
  BatchNormArgs a = bn_args<T>(x);
  check_same_shape<T>(dy, x, "grad_output");
  a.training = training;
  const auto wa = optional_array(weight, "weight");
  const T* w = norm_vec<T>(wa, "weight", a.c);
  const T* m = norm_vec<T>(std::optional<py::array>(mean), "mean", a.c);
  const T* r = norm_vec<T>(std::optional<py::array>(rstd), "rstd", a.c);
  NormGrads<T> g(same_shape(x), a.c, need_dx, need_dw, need_db);
  T *dxp = g.dxp(), *dwp = g.dwp(), *dbp = g.dbp();  // before the GIL is released
  const T* xp = cptr<T>(x);
  const T* gp = cptr<T>(dy);
  {
    py::gil_scoped_release nogil;
    batch_norm_backward<T>(xp, gp, w, m, r, a, dxp, dwp, dbp);
  }
  return g.result();
}

py::tuple py_batch_norm_backward(const py::array& x, const py::array& dy, const py::object& weight,
                                 const py::array& mean, const py::array& rstd, bool training,
                                 bool need_dx, bool need_dw, bool need_db) {
  check_floating(x, "input");
  if (is_dtype<float>(x)) {
    return batch_norm_backward_impl<float>(x, dy, weight, mean, rstd, training, need_dx, need_dw,
                                           need_db);
  }
  return batch_norm_backward_impl<double>(x, dy, weight, mean, rstd, training, need_dx, need_dw,
                                          need_db);
}

// ---------------------------------------------------------------- SyncBatchNorm pieces
// One rank's statistics / gradient sums (float64) and the input gradient from the reduced sums;
// gradfuse.nn.SyncBatchNorm merges and all-reduces across ranks in between.

template <typename T>
py::tuple batch_norm_stats_impl(const py::array& x) {
  const BatchNormArgs a = bn_args<T>(x);
  py::array_t<double> mean(a.c), m2(a.c);
  double* mp = mean.mutable_data();
  double* qp = m2.mutable_data();
  const T* xp = cptr<T>(x);
  {
    py::gil_scoped_release nogil;
    batch_norm_stats<T>(xp, a, mp, qp);
  }
  return py::make_tuple(mean, m2);
}

py::tuple py_batch_norm_stats(const py::array& x) {
  check_floating(x, "input");
  return is_dtype<float>(x) ? batch_norm_stats_impl<float>(x) : batch_norm_stats_impl<double>(x);
}

template <typename T>
py::tuple batch_norm_grad_sums_impl(const py::array& x, const py::array& dy,
                                    const py::array& mean) {
  const BatchNormArgs a = bn_args<T>(x);
  check_same_shape<T>(dy, x, "grad_output");
  const T* m = norm_vec<T>(std::optional<py::array>(mean), "mean", a.c);
  py::array_t<double> sdy(a.c), sdyx(a.c);
  double* sp = sdy.mutable_data();
  double* qp = sdyx.mutable_data();
  const T* xp = cptr<T>(x);
  const T* gp = cptr<T>(dy);
  {
    py::gil_scoped_release nogil;
    batch_norm_grad_sums<T>(xp, gp, m, a, sp, qp);
  }
  return py::make_tuple(sdy, sdyx);
}

py::tuple py_batch_norm_grad_sums(const py::array& x, const py::array& dy, const py::array& mean) {
  check_floating(x, "input");
  return is_dtype<float>(x) ? batch_norm_grad_sums_impl<float>(x, dy, mean)
                            : batch_norm_grad_sums_impl<double>(x, dy, mean);
}

template <typename T>
py::array batch_norm_grad_input_impl(const py::array& x, const py::array& dy,
                                     const py::object& weight, const py::array& mean,
                                     const py::array& rstd, const py::array& sdy,
                                     const py::array& sdyx, double count) {
  const BatchNormArgs a = bn_args<T>(x);
  check_same_shape<T>(dy, x, "grad_output");
  const auto wa = optional_array(weight, "weight");
  const T* w = norm_vec<T>(wa, "weight", a.c);
  const T* m = norm_vec<T>(std::optional<py::array>(mean), "mean", a.c);
  const T* r = norm_vec<T>(std::optional<py::array>(rstd), "rstd", a.c);
  const double* s = norm_vec<double>(std::optional<py::array>(sdy), "sum_dy", a.c);
  const double* q = norm_vec<double>(std::optional<py::array>(sdyx), "sum_dy_xmu", a.c);
  if (!(count >= 1.0) || !std::isfinite(count)) {
    throw py::value_error("count: expected the element count over all ranks (>= 1), got " +
                          std::to_string(count));
  }
  py::array_t<T> dx(same_shape(x));
  T* dxp = dx.mutable_data();
  const T* xp = cptr<T>(x);
  const T* gp = cptr<T>(dy);
  {
    py::gil_scoped_release nogil;
    batch_norm_grad_input<T>(xp, gp, w, m, r, s, q, count, a, dxp);
  }
  return std::move(dx);
}

py::array py_batch_norm_grad_input(const py::array& x, const py::array& dy,
                                   const py::object& weight, const py::array& mean,
                                   const py::array& rstd, const py::array& sdy,
                                   const py::array& sdyx, double count) {
  check_floating(x, "input");
  return is_dtype<float>(x)
             ? batch_norm_grad_input_impl<float>(x, dy, weight, mean, rstd, sdy, sdyx, count)
             : batch_norm_grad_input_impl<double>(x, dy, weight, mean, rstd, sdy, sdyx, count);
}

GroupNormArgs gn_args(const py::array& x, int64_t groups, double eps) {
  GroupNormArgs a;
  a.n = x.shape(0);
  a.c = x.shape(1);
  a.s = x.shape(2);
  a.groups = groups;
  a.eps = eps;
  if (groups <= 0 || a.c % groups != 0) {
    throw py::value_error("num_groups: expected a positive divisor of the " +
                          std::to_string(a.c) + " channels, got " + std::to_string(groups));
  }
  return a;
}

template <typename T>
py::tuple group_norm_forward_impl(const py::array& x, const py::object& weight,
                                  const py::object& bias, int64_t groups, double eps) {
  check_array<T>(x, "input", 3);
  const GroupNormArgs a = gn_args(x, groups, eps);
  // c == 0 as well as s == 0: the statistics' shift reads the first element of each group
  if (a.s == 0 || a.c == 0) {
    throw py::value_error("input: normalizes over 0 elements, shape " + shape_str(x));
  }
  const auto wa = optional_array(weight, "weight"), ba = optional_array(bias, "bias");
  const T* w = norm_vec<T>(wa, "weight", a.c);
  const T* b = norm_vec<T>(ba, "bias", a.c);
  py::array_t<T> y({a.n, a.c, a.s}), mean(a.n * a.groups), rstd(a.n * a.groups);
  T* yp = y.mutable_data();
  T* mp = mean.mutable_data();
  T* rp = rstd.mutable_data();
  const T* xp = cptr<T>(x);
  {
    py::gil_scoped_release nogil;
    group_norm_forward<T>(xp, w, b, a, yp, mp, rp);
  }
  return py::make_tuple(y, mean, rstd);
}

py::tuple py_group_norm_forward(const py::array& x, const py::object& weight,
                                const py::object& bias, int64_t groups, double eps) {
  check_floating(x, "input");
  check_eps(eps);
  if (is_dtype<float>(x)) return group_norm_forward_impl<float>(x, weight, bias, groups, eps);
  return group_norm_forward_impl<double>(x, weight, bias, groups, eps);
}

template <typename T>
py::tuple group_norm_backward_impl(const py::array& x, const py::array& dy,
                                   const py::object& weight, const py::array& mean,
                                   const py::array& rstd, int64_t groups, bool need_dx,
                                   bool need_dw, bool need_db) {
  check_array<T>(x, "input", 3);
  check_same_shape<T>(dy, x, "grad_output");
  const GroupNormArgs a = gn_args(x, groups, 0.0);
  const auto wa = optional_array(weight, "weight");
  const T* w = norm_vec<T>(wa, "weight", a.c);
  const T* m = norm_vec<T>(std::optional<py::array>(mean), "mean", a.n * a.groups);
  const T* r = norm_vec<T>(std::optional<py::array>(rstd), "rstd", a.n * a.groups);
  NormGrads<T> g({a.n, a.c, a.s}, a.c, need_dx, need_dw, need_db);
  T *dxp = g.dxp(), *dwp = g.dwp(), *dbp = g.dbp();  // before the GIL is released
  const T* xp = cptr<T>(x);
  const T* gp = cptr<T>(dy);
  {
    py::gil_scoped_release nogil;
    group_norm_backward<T>(xp, gp, w, m, r, a, dxp, dwp, dbp);
  }
  return g.result();
}

py::tuple py_group_norm_backward(const py::array& x, const py::array& dy, const py::object& weight,
                                 const py::array& mean, const py::array& rstd, int64_t groups,
                                 bool need_dx, bool need_dw, bool need_db) {
  check_floating(x, "input");
  if (is_dtype<float>(x)) {
    return group_norm_backward_impl<float>(x, dy, weight, mean, rstd, groups, need_dx, need_dw,
                                           need_db);
  }
  return group_norm_backward_impl<double>(x, dy, weight, mean, rstd, groups, need_dx, need_dw,
                                          need_db);
}

// ---------------------------------------------------------------- random fills (Philox)
// Fills write into an existing array (the tensor being initialized) and return the number of
// Philox blocks consumed, which the Python Generator adds to its offset (csrc/kernels/init.h).

// A T* must point at a T boundary: numpy allows unaligned views (a float32 view of a byte
// buffer at an odd offset), which the kernels' vector loads and stores may not assume.
void check_aligned(const py::array& a, const char* name) {
  if (!PyArray_ISALIGNED(reinterpret_cast<PyArrayObject*>(a.ptr()))) {
    throw py::value_error(std::string(name) + ": expected an aligned array (this one is a view "
                          "at an offset that is not a multiple of its item size)");
  }
}

// A float32/float64 array of any shape that the kernel may write as one flat run of values.
void check_fill_target(const py::array& a, const char* name) {
  check_floating(a, name);
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  }
  check_aligned(a, name);
  if (!a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
}

template <typename Fill>
uint64_t dispatch_fill(py::array& out, Fill&& fill) {
  check_fill_target(out, "out");
  const int64_t n = out.size();
  void* p = out.mutable_data();
  py::gil_scoped_release nogil;
  if (is_dtype<float>(out)) return fill(static_cast<float*>(p), n);
  return fill(static_cast<double*>(p), n);
}

uint64_t py_uniform_fill(py::array out, uint64_t seed, uint64_t offset, double a, double b) {
  return dispatch_fill(out, [&](auto* p, int64_t n) {
    return uniform_fill(p, n, PhiloxStream{seed, offset}, a, b);
  });
}

uint64_t py_normal_fill(py::array out, uint64_t seed, uint64_t offset, double mean, double std) {
  return dispatch_fill(out, [&](auto* p, int64_t n) {
    return normal_fill(p, n, PhiloxStream{seed, offset}, mean, std);
  });
}

uint64_t py_trunc_normal_fill(py::array out, uint64_t seed, uint64_t offset, double mean,
                              double std, double a, double b) {
  TruncNormalArgs args;
  args.mean = mean;
  args.std = std;
  args.a = a;
  args.b = b;
  return dispatch_fill(out, [&](auto* p, int64_t n) {
    return trunc_normal_fill(p, n, PhiloxStream{seed, offset}, args);
  });
}

uint64_t py_bernoulli_fill(py::array out, uint64_t seed, uint64_t offset, double p) {
  return dispatch_fill(out, [&](auto* o, int64_t n) {
    return bernoulli_fill(o, n, PhiloxStream{seed, offset}, p);
  });
}

template <typename T>
py::tuple dropout_forward_impl(const py::array& x, uint64_t seed, uint64_t offset, double p,
                               bool with_mask) {
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::array_t<T> out(shape);
  py::object mask_obj = py::none();
  uint8_t* m = nullptr;
  if (with_mask) {
    py::array_t<uint8_t> mask(shape);
    m = mask.mutable_data();
    mask_obj = mask;
  }
  const T* xp = cptr<T>(x);
  T* op = out.mutable_data();
  const int64_t n = x.size();
  uint64_t blocks;
  {
    py::gil_scoped_release nogil;
    blocks = dropout_forward<T>(xp, n, PhiloxStream{seed, offset}, p, op, m);
  }
  return py::make_tuple(out, mask_obj, blocks);
}

py::tuple py_dropout_forward(const py::array& x, uint64_t seed, uint64_t offset, double p,
                             bool with_mask) {
  check_floating(x, "input");
  if (!(x.flags() & py::array::c_style)) {
    throw py::value_error("input: expected a C-contiguous array");
  }
  check_aligned(x, "input");
  if (!(p >= 0.0 && p <= 1.0)) {
    throw py::value_error("p: dropout probability has to be between 0 and 1, but got " +
                          std::to_string(p));
  }
  if (is_dtype<float>(x)) return dropout_forward_impl<float>(x, seed, offset, p, with_mask);
  return dropout_forward_impl<double>(x, seed, offset, p, with_mask);
}

template <typename T>
py::array dropout_backward_impl(const py::array& grad, const py::array& mask, double scale) {
  std::vector<py::ssize_t> shape(grad.shape(), grad.shape() + grad.ndim());
  py::array_t<T> dx(shape);
  const T* g = cptr<T>(grad);
  const uint8_t* m = cptr<uint8_t>(mask);
  T* d = dx.mutable_data();
  const int64_t n = grad.size();
  {
    py::gil_scoped_release nogil;
    dropout_backward<T>(g, m, n, scale, d);
  }
  return std::move(dx);
}

py::array py_dropout_backward(const py::array& grad, const py::array& mask, double scale) {
  check_floating(grad, "grad_output");
  if (!(grad.flags() & py::array::c_style)) {
    throw py::value_error("grad_output: expected a C-contiguous array");
  }
  check_aligned(grad, "grad_output");
  if (!is_dtype<uint8_t>(mask)) {
    throw py::type_error("mask: expected dtype uint8, got " + dtype_str(mask));
  }
  bool same_shape = mask.ndim() == grad.ndim();
  for (py::ssize_t i = 0; same_shape && i < grad.ndim(); ++i) {
    same_shape = mask.shape(i) == grad.shape(i);
  }
  if (!(mask.flags() & py::array::c_style) || !same_shape) {
    throw py::value_error("mask: expected a C-contiguous array of grad_output's shape " +
                          shape_str(grad) + ", got shape " + shape_str(mask));
  }
  if (is_dtype<float>(grad)) return dropout_backward_impl<float>(grad, mask, scale);
  return dropout_backward_impl<double>(grad, mask, scale);
}

py::tuple py_philox4x32_10(const std::array<uint32_t, 4>& counter,
                           const std::array<uint32_t, 2>& key) {
  uint32_t out[4];
  philox4x32_10_block(counter.data(), key.data(), out);
  return py::make_tuple(out[0], out[1], out[2], out[3]);
}

py::object py_philox_tile_words(uint64_t seed, uint64_t offset, int64_t n_tiles,
                                const std::string& isa) {
  int code = -1;
  if (isa == "auto") code = 0;
  if (isa == "generic") code = 1;
  if (isa == "avx2") code = 2;
  if (isa == "avx512") code = 3;
  if (code < 0) {
    throw py::value_error("isa: expected 'auto', 'generic', 'avx2' or 'avx512', got '" + isa +
                          "'");
  }
  if (n_tiles < 0) {
    throw py::value_error("n_tiles: expected a count >= 0, got " + std::to_string(n_tiles));
  }
  py::array_t<uint32_t> out({static_cast<py::ssize_t>(n_tiles), py::ssize_t(64)});
  uint32_t* o = out.mutable_data();
  bool ok;
  {
    py::gil_scoped_release nogil;
    ok = philox_tile_words(seed, offset, n_tiles, code, o);
  }
  if (!ok) return py::none();
  return std::move(out);
}

py::array py_philox_words(uint64_t seed, uint64_t offset, int64_t n_blocks) {
  if (n_blocks < 0) {
    throw py::value_error("n_blocks: expected a count >= 0, got " + std::to_string(n_blocks));
  }
  py::array_t<uint32_t> out({static_cast<py::ssize_t>(n_blocks), py::ssize_t(4)});
  uint32_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    philox_words(seed, offset, n_blocks, o);
  }
  return std::move(out);
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
  d["parallel_grain"] = parallel_grain();
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

// ---------------------------------------------------------------- cuda runtime and arrays
// (csrc/cuda/runtime.cu, csrc/cuda/array.cu): the `_C.cuda` submodule behind gradfuse.cuda.
// Device memory travels as integer addresses (std::uintptr_t) with shapes and element strides,
// so DeviceArray (python/gradfuse/cuda/array.py) and CuPy arrays can both be passed.
#ifdef GRADFUSE_WITH_CUDA
}  // namespace

#include "cuda/array.h"
#include "cuda/runtime.h"
#include "cuda/runtime_stats.h"

namespace {

using devaddr = std::uintptr_t;
template <typename T = void>
T* as_dev(devaddr p) {
  return reinterpret_cast<T*>(p);
}

// Owns one block of the caching allocator; DeviceArray views keep it alive.
struct DeviceBuffer {
  void* p = nullptr;
  std::size_t nbytes = 0;
  explicit DeviceBuffer(std::size_t n) : p(gf::cuda::alloc(n)), nbytes(n) {}
  ~DeviceBuffer() { gf::cuda::free(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

gf::cuda::Operand operand(devaddr ptr, std::vector<int64_t> strides, double value) {
  gf::cuda::Operand o;
  o.ptr = as_dev<const void>(ptr);
  o.strides = std::move(strides);
  o.value = value;
  return o;
}

py::tuple cuda_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return py::make_tuple(0, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
  }
  return py::make_tuple(n, n == 0 ? std::string("no CUDA device found") : std::string());
}

py::dict cuda_device_properties(int device) {
  cudaDeviceProp prop{};
  GF_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int clock_khz = 0, bus_bits = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  cudaGetLastError();
  py::dict d;
  d["name"] = std::string(prop.name);
  d["major"] = prop.major;
  d["minor"] = prop.minor;
  d["total_memory"] = prop.totalGlobalMem;
  d["multi_processor_count"] = prop.multiProcessorCount;
  // DDR: two transfers per clock
  d["peak_bandwidth_gbs"] = 2.0 * clock_khz * 1e3 * (bus_bits / 8) / 1e9;
  d["compiled_archs"] = std::string(GRADFUSE_CUDA_ARCHS);
  return d;
}

py::dict cuda_memory_stats() {
  const gf::cuda::AllocStats s = gf::cuda::alloc_stats();
  py::dict d;
  d["alloc_calls"] = s.alloc_calls;
  d["malloc_calls"] = s.malloc_calls;
  d["cache_hits"] = s.cache_hits;
  d["allocated_bytes"] = s.allocated_bytes;
  d["reserved_bytes"] = s.reserved_bytes;
  d["peak_allocated_bytes"] = s.peak_allocated_bytes;
  return d;
}

void cuda_upload(devaddr dst, const py::array& src) {
  if (!(src.flags() & py::array::c_style))
    throw py::value_error("src: expected a C-contiguous array");
  const std::size_t n = static_cast<std::size_t>(src.nbytes());
  const void* h = src.data();
  py::gil_scoped_release nogil;
  // from pageable memory the copy has read `src` when the call returns, so `src` may die then
  GF_CUDA_CHECK(cudaMemcpyAsync(as_dev(dst), h, n, cudaMemcpyHostToDevice, gf::cuda::stream()));
}

void cuda_download(py::array& dst, devaddr src) {
  if (!(dst.flags() & py::array::c_style) || !dst.writeable())
    throw py::value_error("dst: expected a writeable C-contiguous array");
  const std::size_t n = static_cast<std::size_t>(dst.nbytes());
  void* h = dst.mutable_data();
  py::gil_scoped_release nogil;
  GF_CUDA_CHECK(cudaMemcpyAsync(h, as_dev(src), n, cudaMemcpyDeviceToHost, gf::cuda::stream()));
  GF_CUDA_CHECK(cudaStreamSynchronize(gf::cuda::stream()));
}

void register_cuda(py::module_& m) {
  auto cu = m.def_submodule("cuda", "CUDA runtime and array kernels; use gradfuse.cuda");
  cu.def("device_count", &cuda_device_count, "-> (count, reason when 0)");
  cu.def("device_properties", &cuda_device_properties, py::arg("device") = 0);
  cu.def("synchronize", [] {
    py::gil_scoped_release nogil;
    GF_CUDA_CHECK(cudaStreamSynchronize(gf::cuda::stream()));
  });
  cu.def("memory_stats", &cuda_memory_stats);
  cu.def("reset_alloc_counters", &gf::cuda::reset_alloc_counters);
  cu.def("empty_cache", [] {
    py::gil_scoped_release nogil;
    gf::cuda::empty_cache();
  });
  cu.def("stream", [] { return reinterpret_cast<devaddr>(gf::cuda::stream()); },
         "gradfuse's stream as an integer handle (for CuPy/PyTorch interop)");
  py::class_<DeviceBuffer>(cu, "DeviceBuffer", "nbytes of device memory from the caching allocator")
      .def(py::init<std::size_t>(), py::arg("nbytes"))
      .def_property_readonly("ptr", [](const DeviceBuffer& b) { return reinterpret_cast<devaddr>(b.p); })
      .def_property_readonly("nbytes", [](const DeviceBuffer& b) { return b.nbytes; });
  cu.def("upload", &cuda_upload, py::arg("dst"), py::arg("src"));
  cu.def("download", &cuda_download, py::arg("dst"), py::arg("src"));
  cu.def("memcpy", [](devaddr dst, devaddr src, std::size_t n) {
    py::gil_scoped_release nogil;
    GF_CUDA_CHECK(cudaMemcpyAsync(as_dev(dst), as_dev<const void>(src), n,
                                  cudaMemcpyDeviceToDevice, gf::cuda::stream()));
  }, py::arg("dst"), py::arg("src"), py::arg("nbytes"));
  cu.def("copy", [](devaddr dst, int dst_dtype, std::vector<int64_t> dst_strides, devaddr src,
                    int src_dtype, std::vector<int64_t> src_strides, double value,
                    std::vector<int64_t> shape) {
    const auto s = operand(src, std::move(src_strides), value);
    py::gil_scoped_release nogil;
    gf::cuda::copy(as_dev(dst), dst_dtype, dst_strides, s, src_dtype, shape);
  }, py::arg("dst"), py::arg("dst_dtype"), py::arg("dst_strides"), py::arg("src"),
     py::arg("src_dtype"), py::arg("src_strides"), py::arg("value"), py::arg("shape"),
     "dst[i] = cast(src[i]) over shape (src 0: the scalar value)");
  cu.def("unary", [](int op, int dtype, devaddr out, std::vector<int64_t> out_strides, devaddr a,
                     std::vector<int64_t> a_strides, double av, std::vector<int64_t> shape) {
    const auto A = operand(a, std::move(a_strides), av);
    py::gil_scoped_release nogil;
    gf::cuda::unary(op, dtype, as_dev(out), out_strides, A, shape);
  });
  cu.def("binary", [](int op, int dtype, devaddr out, std::vector<int64_t> out_strides, devaddr a,
                      std::vector<int64_t> a_strides, double av, devaddr b,
                      std::vector<int64_t> b_strides, double bv, std::vector<int64_t> shape) {
    const auto A = operand(a, std::move(a_strides), av);
    const auto B = operand(b, std::move(b_strides), bv);
    py::gil_scoped_release nogil;
    gf::cuda::binary(op, dtype, as_dev(out), out_strides, A, B, shape);
  });
  cu.def("where", [](int dtype, devaddr out, std::vector<int64_t> out_strides, devaddr c,
                     std::vector<int64_t> c_strides, double cv, devaddr a,
                     std::vector<int64_t> a_strides, double av, devaddr b,
                     std::vector<int64_t> b_strides, double bv, std::vector<int64_t> shape) {
    const auto C = operand(c, std::move(c_strides), cv);
    const auto A = operand(a, std::move(a_strides), av);
    const auto B = operand(b, std::move(b_strides), bv);
    py::gil_scoped_release nogil;
    gf::cuda::where(dtype, as_dev(out), out_strides, C, A, B, shape);
  });
  cu.def("reduce", [](int op, int dtype, devaddr out, devaddr in, int64_t outer, int64_t n,
                      int64_t inner) {
    py::gil_scoped_release nogil;
    gf::cuda::reduce(op, dtype, as_dev(out), as_dev<const void>(in), outer, n, inner);
  });
  cu.def("take", [](int kind, int dtype, devaddr out, devaddr in, devaddr index, int64_t outer, int64_t n,
                    int64_t inner, int64_t m) {
    py::gil_scoped_release nogil;
    const auto* idx = as_dev<const int64_t>(index);
    switch (kind) {
      case 0: gf::cuda::take(dtype, as_dev(out), as_dev<const void>(in), idx, outer, n, inner, m); break;
      case 1: gf::cuda::index_add(dtype, as_dev(out), as_dev<const void>(in), idx, outer, n, inner, m); break;
      case 2: gf::cuda::take_along(dtype, as_dev(out), as_dev<const void>(in), idx, outer, n, inner, m); break;
      default: gf::cuda::put_along(dtype, as_dev(out), as_dev<const void>(in), idx, outer, n, inner, m);
    }
  }, "kind 0 take, 1 index_add (into out), 2 take_along, 3 put_along (into out)");
  cu.def("gemm", [](int dtype, bool ta, bool tb, int64_t m_, int64_t n, int64_t k, devaddr a,
                    int64_t lda, int64_t sa, devaddr b, int64_t ldb, int64_t sb, devaddr c, int64_t ldc,
                    int64_t sc, int64_t batch) {
    py::gil_scoped_release nogil;
    gf::cuda::gemm(dtype, ta, tb, m_, n, k, as_dev<const void>(a), lda, sa,
                   as_dev<const void>(b), ldb, sb, as_dev(c), ldc, sc, batch);
  });
}
#endif  // GRADFUSE_WITH_CUDA

}  // namespace

// ---------------------------------------------------------------- cuda kernels (cudakern)
// The kernel families of csrc/cuda/*.cu in the `_C.cuda` submodule. Arguments are DEVICE
// pointers as integers (DeviceArray.ptr, or CuPy's a.data.ptr in tests; 0 for None) plus sizes
// and hyperparameters, and `itemsize` (4: float32, 8: float64) picks the dtype. Shapes, dtypes
// and contiguity are checked by the Python layer (gradfuse/cuda/ops.py), which also allocates
// the outputs. Every call releases the GIL; none synchronizes except where it returns a value
// computed on the device (cross_entropy_forward, arena_norm_reduce, arena_all_finite).
#ifdef GRADFUSE_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace {

template <typename T>
T* dptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// fn(T{}) with T = float (itemsize 4) or double (8).
template <typename F>
auto by_dtype(int itemsize, F&& fn) {
  if (itemsize == 4) return fn(float{});
  if (itemsize == 8) return fn(double{});
  throw py::type_error("itemsize: expected 4 (float32) or 8 (float64), got " +
                       std::to_string(itemsize));
}

void add_cuda_kernels(py::module_& m) {
  py::module_ cu = py::hasattr(m, "cuda") ? m.attr("cuda").cast<py::module_>()
                                          : m.def_submodule("cuda", "gradfuse CUDA backend");
  using U = std::uintptr_t;
  namespace C = gf::cuda;

  cu.def("activation_forward", [](int op, int isz, U x, int64_t n, double a, double b, U y) {
    if (op < 0 || op > int(Activation::Softplus)) throw py::value_error("op: unknown activation");
    ActivationArgs args{Activation(op), a, b};
    py::gil_scoped_release nogil;
    by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      C::activation_forward<T>(dptr<const T>(x), n, args, dptr<T>(y));
    });
  });
  cu.def("activation_backward",
         [](int op, int isz, U g, U s, int64_t n, double a, double b, U dx) {
           if (op < 0 || op > int(Activation::Softplus)) {
             throw py::value_error("op: unknown activation");
           }
           ActivationArgs args{Activation(op), a, b};
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::activation_backward<T>(dptr<const T>(g), dptr<const T>(s), n, args, dptr<T>(dx));
           });
         });
  cu.def("softmax_forward",
         [](int isz, U x, int64_t outer, int64_t dim, int64_t inner, bool log, U y) {
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::softmax_forward<T>(dptr<const T>(x), outer, dim, inner, log, dptr<T>(y));
           });
         });
  cu.def("softmax_backward",
         [](int isz, U g, U y, int64_t outer, int64_t dim, int64_t inner, bool log, U dx) {
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::softmax_backward<T>(dptr<const T>(g), dptr<const T>(y), outer, dim, inner, log,
                                    dptr<T>(dx));
           });
         });

  cu.def("cross_entropy_forward",
         [](int isz, U x, U target, U w, int64_t n, int64_t c, int64_t ignore, double ls,
            U row_loss, U lse) {
           CrossEntropyArgs a{n, c, ignore, ls};
           CrossEntropySums s;
           {
             py::gil_scoped_release nogil;
             s = by_dtype(isz, [&](auto t) {
               using T = decltype(t);
               return C::cross_entropy_forward<T>(dptr<const T>(x), dptr<const int64_t>(target),
                                                  dptr<const T>(w), a, dptr<T>(row_loss),
                                                  dptr<T>(lse));
             });
           }
           return py::make_tuple(s.loss, s.weight);
         },
         "-> (loss_sum, weight_sum); synchronizes (reads the sums and the target check back)");
  cu.def("cross_entropy_backward",
         [](int isz, U x, U target, U w, U lse, U grad_rows, double grad_scale, int64_t n,
            int64_t c, int64_t ignore, double ls, U dx) {
           CrossEntropyArgs a{n, c, ignore, ls};
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::cross_entropy_backward<T>(dptr<const T>(x), dptr<const int64_t>(target),
                                          dptr<const T>(w), dptr<const T>(lse),
                                          dptr<const T>(grad_rows), grad_scale, a, dptr<T>(dx));
           });
         });

  cu.def("row_norm_forward",
         [](int isz, U x, U w, U b, int64_t rows, int64_t cols, double eps, bool rms, U y, U mean,
            U rstd) {
           RowNormArgs a;
           a.rows = rows; a.cols = cols; a.eps = eps; a.rms = rms;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::row_norm_forward<T>(dptr<const T>(x), dptr<const T>(w), dptr<const T>(b), a,
                                    dptr<T>(y), dptr<T>(mean), dptr<T>(rstd));
           });
         });
  cu.def("row_norm_backward",
         [](int isz, U x, U dy, U w, U mean, U rstd, int64_t rows, int64_t cols, bool rms, U dx,
            U dw, U db) {
           RowNormArgs a;
           a.rows = rows; a.cols = cols; a.rms = rms;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::row_norm_backward<T>(dptr<const T>(x), dptr<const T>(dy), dptr<const T>(w),
                                     dptr<const T>(mean), dptr<const T>(rstd), a, dptr<T>(dx),
                                     dptr<T>(dw), dptr<T>(db));
           });
         });
  cu.def("batch_norm_forward",
         [](int isz, U x, U w, U b, U rm, U rv, int64_t n, int64_t c, int64_t l, double eps,
            bool training, bool update_running, double factor, U y, U mean, U rstd) {
           BatchNormArgs a;
           a.n = n; a.c = c; a.l = l; a.eps = eps; a.training = training;
           a.update_running = update_running; a.factor = factor;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::batch_norm_forward<T>(dptr<const T>(x), dptr<const T>(w), dptr<const T>(b),
                                      dptr<T>(rm), dptr<T>(rv), a, dptr<T>(y), dptr<T>(mean),
                                      dptr<T>(rstd));
           });
         });
  cu.def("batch_norm_backward",
         [](int isz, U x, U dy, U w, U mean, U rstd, int64_t n, int64_t c, int64_t l,
            bool training, U dx, U dw, U db) {
           BatchNormArgs a;
           a.n = n; a.c = c; a.l = l; a.training = training;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::batch_norm_backward<T>(dptr<const T>(x), dptr<const T>(dy), dptr<const T>(w),
                                       dptr<const T>(mean), dptr<const T>(rstd), a, dptr<T>(dx),
                                       dptr<T>(dw), dptr<T>(db));
           });
         });
  cu.def("group_norm_forward",
         [](int isz, U x, U w, U b, int64_t n, int64_t c, int64_t s, int64_t groups, double eps,
            U y, U mean, U rstd) {
           if (groups <= 0 || c % groups != 0) throw py::value_error("num_groups: must divide C");
           GroupNormArgs a;
           a.n = n; a.c = c; a.s = s; a.groups = groups; a.eps = eps;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::group_norm_forward<T>(dptr<const T>(x), dptr<const T>(w), dptr<const T>(b), a,
                                      dptr<T>(y), dptr<T>(mean), dptr<T>(rstd));
           });
         });
  cu.def("group_norm_backward",
         [](int isz, U x, U dy, U w, U mean, U rstd, int64_t n, int64_t c, int64_t s,
            int64_t groups, U dx, U dw, U db) {
           if (groups <= 0 || c % groups != 0) throw py::value_error("num_groups: must divide C");
           GroupNormArgs a;
           a.n = n; a.c = c; a.s = s; a.groups = groups;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::group_norm_backward<T>(dptr<const T>(x), dptr<const T>(dy), dptr<const T>(w),
                                       dptr<const T>(mean), dptr<const T>(rstd), a, dptr<T>(dx),
                                       dptr<T>(dw), dptr<T>(db));
           });
         });

  cu.def("uniform_fill", [](int isz, U out, int64_t n, uint64_t seed, uint64_t offset, double a,
                            double b) {
    py::gil_scoped_release nogil;
    return by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      return C::uniform_fill<T>(dptr<T>(out), n, PhiloxStream{seed, offset}, a, b);
    });
  }, "-> Philox blocks consumed");
  cu.def("normal_fill", [](int isz, U out, int64_t n, uint64_t seed, uint64_t offset, double mean,
                           double std) {
    py::gil_scoped_release nogil;
    return by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      return C::normal_fill<T>(dptr<T>(out), n, PhiloxStream{seed, offset}, mean, std);
    });
  }, "-> Philox blocks consumed");
  cu.def("bernoulli_fill",
         [](int isz, U out, int64_t n, uint64_t seed, uint64_t offset, double p) {
           py::gil_scoped_release nogil;
           return by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             return C::bernoulli_fill<T>(dptr<T>(out), n, PhiloxStream{seed, offset}, p);
           });
         }, "-> Philox blocks consumed");
  cu.def("dropout_forward",
         [](int isz, U x, int64_t n, uint64_t seed, uint64_t offset, double p, U out, U mask) {
           py::gil_scoped_release nogil;
           return by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             return C::dropout_forward<T>(dptr<const T>(x), n, PhiloxStream{seed, offset}, p,
                                          dptr<T>(out), dptr<uint8_t>(mask));
           });
         }, "-> Philox blocks consumed");
  cu.def("dropout_backward", [](int isz, U g, U mask, int64_t n, double scale, U dx) {
    py::gil_scoped_release nogil;
    by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      C::dropout_backward<T>(dptr<const T>(g), dptr<const uint8_t>(mask), n, scale, dptr<T>(dx));
    });
  });
  cu.def("philox_words", [](uint64_t seed, uint64_t offset, int64_t n_blocks, U out) {
    py::gil_scoped_release nogil;
    C::philox_words(seed, offset, n_blocks, dptr<uint32_t>(out));
  });

  cu.def("affine_columns",
         [](int isz, U x, U shift, U mul, U add, int64_t n, int64_t d, bool clip, double lo,
            double hi, U out, U nonfinite) {
           AffineArgs a;
           a.n = n; a.d = d; a.clip = clip; a.lo = lo; a.hi = hi;
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::affine_columns<T>(dptr<const T>(x), dptr<const double>(shift),
                                  dptr<const double>(mul), dptr<const double>(add), a,
                                  dptr<T>(out), dptr<int>(nonfinite));
           });
         });
  cu.def("image_affine", [](U x, int64_t outer, int64_t channels, int64_t inner, U shift, U mul,
                            U add, U out) {
    ImageLayout l;
    l.outer = outer; l.channels = channels; l.inner = inner;
    py::gil_scoped_release nogil;
    C::image_affine(dptr<const uint8_t>(x), l, dptr<const double>(shift), dptr<const double>(mul),
                    dptr<const double>(add), dptr<float>(out));
  });

  cu.def("optim_step",
         [](int kind, int isz, U p, U g, U s0, U s1, U s2, int64_t n,
            const std::vector<double>& sc, int64_t flags, U skip, U scale) {
           const OptimHyper h = make_hyper(kind, sc, flags);
           check_state_present(h, s0 != 0, s1 != 0, s2 != 0);
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::optim_step<T>(h, dptr<T>(p), dptr<const T>(g), dptr<T>(s0), dptr<T>(s1),
                              dptr<T>(s2), n, dptr<const int>(skip), dptr<const double>(scale));
           });
         },
         "one fused update of an arena on the device; skip (int*) / scale (double*) device "
         "pointers or 0");
  cu.def("lamb_step",
         [](int isz, U p, U g, U m, U v, int64_t n, const py::array& offsets,
            const py::array& sizes, const std::vector<double>& sc, int64_t flags) {
           if (sc.size() != kOptScalars) throw py::value_error("scalars: expected 14 values");
           OptimHyper h;
           h.lr = sc[0]; h.weight_decay = sc[1]; h.eps = sc[2]; h.beta1 = sc[3]; h.beta2 = sc[4];
           h.c1 = sc[10]; h.c2 = sc[11]; h.grad_scale = sc[12];
           h.maximize = flags & kOptMaximize;
           check_array<int64_t>(offsets, "offsets", 1);
           check_array<int64_t>(sizes, "sizes", 1);
           const int64_t nseg = offsets.shape(0);
           if (sizes.shape(0) != nseg) {
             throw py::value_error("sizes: expected as many entries as offsets");
           }
           const int64_t* off = cptr<int64_t>(offsets);
           const int64_t* sz = cptr<int64_t>(sizes);
           for (int64_t s = 0; s < nseg; ++s) {
             if (off[s] < 0 || sz[s] < 0 || off[s] + sz[s] > n) {
               throw py::value_error("offsets/sizes: segment " + std::to_string(s) +
                                     " lies outside the arena of " + std::to_string(n) +
                                     " elements");
             }
           }
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::lamb_step<T>(h, dptr<T>(p), dptr<const T>(g), dptr<T>(m), dptr<T>(v), off, sz,
                             nseg);
           });
         },
         "LAMB over a device arena; offsets / sizes are host int64 arrays (the segment table)");
  cu.def("arena_nonfinite_flag", [](int isz, U x, int64_t n, U flag) {
    py::gil_scoped_release nogil;
    by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      C::arena_nonfinite_flag<T>(dptr<const T>(x), n, dptr<int>(flag));
    });
  });
  cu.def("arena_norm_reduce_dev",
         [](int isz, U x, int64_t n, double norm_type, U out, bool accumulate) {
           py::gil_scoped_release nogil;
           by_dtype(isz, [&](auto t) {
             using T = decltype(t);
             C::arena_norm_reduce_dev<T>(dptr<const T>(x), n, norm_type, dptr<double>(out),
                                         accumulate);
           });
         });
  cu.def("arena_norm_reduce", [](int isz, U x, int64_t n, double norm_type) {
    py::gil_scoped_release nogil;
    return by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      return C::arena_norm_reduce<T>(dptr<const T>(x), n, norm_type);
    });
  }, "synchronizes");
  cu.def("arena_all_finite", [](int isz, U x, int64_t n) {
    py::gil_scoped_release nogil;
    return by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      return C::arena_all_finite<T>(dptr<const T>(x), n);
    });
  }, "synchronizes");
  cu.def("arena_scale", [](int isz, U x, int64_t n, double s) {
    py::gil_scoped_release nogil;
    by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      C::arena_scale<T>(dptr<T>(x), n, s);
    });
  });
  cu.def("arena_clamp", [](int isz, U x, int64_t n, double lo, double hi) {
    py::gil_scoped_release nogil;
    by_dtype(isz, [&](auto t) {
      using T = decltype(t);
      C::arena_clamp<T>(dptr<T>(x), n, lo, hi);
    });
  });
  cu.def("clip_coef", [](U total, double norm_type, double max_norm, U coef, U norm_out) {
    py::gil_scoped_release nogil;
    C::clip_coef(dptr<const double>(total), norm_type, max_norm, dptr<double>(coef),
                 dptr<double>(norm_out));
  });
  if (!py::hasattr(cu, "stream_synchronize")) {
    cu.def("stream_synchronize", [] {
      py::gil_scoped_release nogil;
      GF_CUDA_CHECK(cudaStreamSynchronize(gf::cuda::stream()));
    }, "waits for every kernel queued on gradfuse's stream");
  }
}

}  // namespace
#endif  // GRADFUSE_WITH_CUDA (cuda kernels)

// ---------------------------------------------------------------- segment sums (distributed)
// dsts[d][:] = (srcs[0] + srcs[1] + ... in order) / div: the owner's step of ShmReducer's
// all-reduce over the shared-memory segments of a node. Every array 1-D, contiguous, one dtype,
// one length; dsts writeable (a dst may be one of the srcs).

template <typename T>
void segment_sum_typed(const std::vector<py::array>& srcs, const std::vector<py::array>& dsts,
                       double div) {
  const int64_t n = srcs[0].shape(0);
  std::vector<const T*> sp;
  std::vector<T*> dp;
  for (const auto& a : srcs) {
    check_array<T>(a, "srcs", 1);
    if (a.shape(0) != n) throw py::value_error("srcs: arrays of different lengths");
    sp.push_back(static_cast<const T*>(a.data()));
  }
  for (const auto& a : dsts) {
    check_array<T>(a, "dsts", 1);
    if (a.shape(0) != n) throw py::value_error("dsts: expected the length of srcs");
    if (!a.writeable()) throw py::value_error("dsts: array is read-only");
    dp.push_back(static_cast<T*>(const_cast<void*>(a.data())));
  }
  py::gil_scoped_release nogil;
  segment_sum<T>(sp.data(), static_cast<int>(sp.size()), dp.data(), static_cast<int>(dp.size()),
                 n, div);
}

void py_segment_sum(const std::vector<py::array>& srcs, const std::vector<py::array>& dsts,
                    double div) {
  if (srcs.empty()) throw py::value_error("srcs: expected at least one array");
  if (!(div > 0.0)) throw py::value_error("div: expected > 0");
  check_floating(srcs[0], "srcs");
  if (is_dtype<float>(srcs[0])) {
    segment_sum_typed<float>(srcs, dsts, div);
  } else {
    segment_sum_typed<double>(srcs, dsts, div);
  }
}

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
                        py::custom_type_setup([](PyHeapTypeObject* heap_type) {
                          auto* type = &heap_type->ht_type;
                          type->tp_flags |= Py_TPFLAGS_HAVE_GC;
                          type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) {
                            Py_VISIT(Py_TYPE(self));
                            if (!py::detail::is_holder_constructed(self)) return 0;
                            return py::cast<ArenaStep&>(py::handle(self)).traverse(visit, arg);
                          };
                          type->tp_clear = [](PyObject* self) {
                            if (py::detail::is_holder_constructed(self))
                              py::cast<ArenaStep&>(py::handle(self)).clear();
                            return 0;
                          };
                        }),
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
  m.def("column_stats", &py_column_stats, py::arg("X"), py::arg("moments"),
        "(X (n, d) float32|float64, moments) -> (count, mean, m2, None, None) if moments else"
        " (count, None, None, min, max), each (d,) float64; NaN skipped");
  m.def("affine_columns", &py_affine_columns, py::arg("X"), py::arg("shift"), py::arg("mul"),
        py::arg("add"), py::arg("clip"), py::arg("lo"), py::arg("hi"),
        "-> (out, saw_nan, saw_inf); out = clip((X - shift) * mul + add, lo, hi), X's dtype");
  m.def("image_channel_stats", &py_image_channel_stats, py::arg("x"), py::arg("outer"),
        py::arg("channels"), py::arg("inner"),
        "(x uint8 seen as (outer, channels, inner)) -> (mean, var) per channel, pixel units");
  m.def("image_affine", &py_image_affine, py::arg("x"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("shift"), py::arg("mul"), py::arg("add"),
        "-> float32 (x - shift[c]) * mul[c] + add[c], x's shape");

  // normalization layers
  m.def("row_norm_forward", &py_row_norm_forward, py::arg("input"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"), py::arg("rms"),
        "(input (M, D), weight (D,)|None, bias (D,)|None, eps, rms) -> (y, mean (M,)|None, rstd)");
  m.def("row_norm_backward", &py_row_norm_backward, py::arg("input"), py::arg("grad_output"),
        py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("rms"), py::arg("need_dx"),
        py::arg("need_dw"), py::arg("need_db"), "-> (dx|None, dweight|None, dbias|None)");
  m.def("batch_norm_forward", &py_batch_norm_forward, py::arg("input"), py::arg("weight"),
        py::arg("bias"), py::arg("running_mean"), py::arg("running_var"), py::arg("training"),
        py::arg("factor"), py::arg("eps"),
        "(input (N, C, L), ...) -> (y, save_mean (C,), save_rstd (C,)); updates running stats "
        "in place when training");
  m.def("batch_norm_backward", &py_batch_norm_backward, py::arg("input"), py::arg("grad_output"),
        py::arg("weight"), py::arg("save_mean"), py::arg("save_rstd"), py::arg("training"),
        py::arg("need_dx"), py::arg("need_dw"), py::arg("need_db"),
        "-> (dx|None, dweight|None, dbias|None)");
  m.def("group_norm_forward", &py_group_norm_forward, py::arg("input"), py::arg("weight"),
        py::arg("bias"), py::arg("num_groups"), py::arg("eps"),
        "(input (N, C, S), ...) -> (y, mean (N*G,), rstd (N*G,))");
  m.def("group_norm_backward", &py_group_norm_backward, py::arg("input"), py::arg("grad_output"),
        py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("num_groups"),
        py::arg("need_dx"), py::arg("need_dw"), py::arg("need_db"),
        "-> (dx|None, dweight|None, dbias|None)");

  // SyncBatchNorm pieces
  m.def("batch_norm_stats", &py_batch_norm_stats, py::arg("input"),
        "(input (N, C, L)) -> (mean (C,) float64, m2 (C,) float64): m2 = sum (x - mean)^2");
  m.def("batch_norm_grad_sums", &py_batch_norm_grad_sums, py::arg("input"),
        py::arg("grad_output"), py::arg("mean"),
        "-> (sum dy (C,) float64, sum dy (x - mean) (C,) float64)");
  m.def("batch_norm_grad_input", &py_batch_norm_grad_input, py::arg("input"),
        py::arg("grad_output"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        py::arg("sum_dy"), py::arg("sum_dy_xmu"), py::arg("count"),
        "-> dx = rstd w (dy - sum_dy/count - (x - mean) rstd^2 sum_dy_xmu/count)");

  m.def("philox4x32_10", &py_philox4x32_10, py::arg("counter"), py::arg("key"),
        "Philox4x32-10 of one counter (4 uint32) under one key (2 uint32) -> 4 uint32");
  m.def("philox_words", &py_philox_words, py::arg("seed"), py::arg("offset"), py::arg("n_blocks"),
        "-> uint32 (n_blocks, 4): the words of blocks offset .. offset + n_blocks - 1");
  m.def("philox_tile_words", &py_philox_tile_words, py::arg("seed"), py::arg("offset"),
        py::arg("n_tiles"), py::arg("isa"),
        "-> uint32 (n_tiles, 64) in fill order from one Philox implementation, or None when "
        "this CPU lacks it");
  m.def("uniform_fill", &py_uniform_fill, py::arg("out").noconvert(), py::arg("seed"), py::arg("offset"),
        py::arg("a"), py::arg("b"), "fill out with U[a, b) in place -> Philox blocks consumed");
  m.def("normal_fill", &py_normal_fill, py::arg("out").noconvert(), py::arg("seed"), py::arg("offset"),
        py::arg("mean"), py::arg("std"), "fill out with N(mean, std^2) -> blocks consumed");
  m.def("trunc_normal_fill", &py_trunc_normal_fill, py::arg("out").noconvert(), py::arg("seed"),
        py::arg("offset"), py::arg("mean"), py::arg("std"), py::arg("a"), py::arg("b"),
        "fill out with N(mean, std^2) truncated to [a, b] -> blocks consumed");
  m.def("bernoulli_fill", &py_bernoulli_fill, py::arg("out").noconvert(), py::arg("seed"), py::arg("offset"),
        py::arg("p"), "fill out with 1 (probability p) or 0 -> blocks consumed");
  m.def("dropout_forward", &py_dropout_forward, py::arg("input"), py::arg("seed"),
        py::arg("offset"), py::arg("p"), py::arg("with_mask"),
        "-> (output, uint8 mask | None, blocks consumed)");
  m.def("dropout_backward", &py_dropout_backward, py::arg("grad_output"), py::arg("mask"),
        py::arg("scale"), "-> grad_output * mask * scale");

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

  m.def("segment_sum", &py_segment_sum, py::arg("srcs"), py::arg("dsts"), py::arg("div"),
        "dsts[d][:] = (srcs[0] + srcs[1] + ...) / div (ShmReducer)");

  m.def("build_info", &build_info);
  m.def("get_num_threads", &py_get_num_threads);
  m.def("set_num_threads", &py_set_num_threads, py::arg("n"));

#ifdef GRADFUSE_WITH_CUDA
  register_cuda(m);  // the `_C.cuda` submodule (runtime and arrays)
  add_cuda_kernels(m);  // cuda kernels (cudakern): after cudacore's `_C.cuda` section
#endif
}
