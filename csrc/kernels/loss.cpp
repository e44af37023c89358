#include "kernels/loss.h"

#include <cmath>
#include <string>

#include "common.h"

namespace gradfuse {
namespace {

template <typename T>
inline T exp_t(T x) {
  return std::exp(x);
}
template <>
inline float exp_t<float>(float x) {
  return exp_f32(x);
}

// One row of the forward. Returns lse; *loss gets the row's (unreduced) loss.
template <typename T>
GF_TARGET_CLONES T ce_forward_row(const T* x, int64_t c, int64_t y, const T* w, T wsum,
                                  double eps, T* loss) {
  const T m = lane_max(x, c);
  const T s = lane_sum(x, c, [m](T v) { return exp_t<T>(v - m); });
  const T log_s = std::log(s);
  const T lse = m + log_s;
  const T wy = w ? w[y] : T(1);
  *loss = wy * (lse - x[y]);
  if (eps != 0.0) {
    // Without smoothing only the target's logit matters (and a huge spread of the others,
    // making dev inf, must not turn the loss into 0 * inf = nan). With it:
    // sum_j w_j (lse - x_j) = W (lse - m) + dev, dev = sum_j w_j (m - x_j): every term of
    // dev is >= 0, so there is no cancellation.
    const T dev = w ? lane_sum(x, w, c, [m](T v, T wv) { return wv * (m - v); })
                    : lane_sum(x, c, [m](T v) { return m - v; });
    const T smooth = wsum * log_s + dev;
    *loss = T(1 - eps) * *loss + T(eps / double(c)) * smooth;
  }
  return lse;
}

template <typename T>
GF_TARGET_CLONES void ce_backward_row(const T* x, int64_t c, int64_t y, const T* w, T wsum,
                                      double eps, T lse, T g, T* dx) {
  const T wy = w ? w[y] : T(1);
  const T a = g * (T(1 - eps) * wy + T(eps / double(c)) * wsum);
  const T b = g * T(eps / double(c));
  if (w) {
    lane_map(x, w, c, dx, [=](T v, T wv) { return a * exp_t<T>(v - lse) - b * wv; });
  } else {
    lane_map(x, c, dx, [=](T v) { return a * exp_t<T>(v - lse) - b; });
  }
  dx[y] -= g * T(1 - eps) * wy;
}

template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t j = 0; j < n; j += kLine) __builtin_prefetch(p + j, 0, 3);
}

template <typename T>
T weight_total(const T* weight, int64_t c) {
  if (!weight) return T(c);
  double s = 0;
  for (int64_t j = 0; j < c; ++j) s += weight[j];
  return T(s);
}

}  // namespace

void check_targets(const int64_t* target, const CrossEntropyArgs& a) {
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t t = target[i];
    if (t != a.ignore_index && (t < 0 || t >= a.c)) {
      fail_value("target: class index " + std::to_string(t) + " at position " + std::to_string(i) +
                 " is out of range [0, " + std::to_string(a.c) + ")");
    }
  }
}

template <typename T>
CrossEntropySums cross_entropy_forward(const T* logits, const int64_t* target, const T* weight,
                                       const CrossEntropyArgs& a, T* row_loss, T* lse) {
  check_targets(target, a);
  const T wsum = weight_total(weight, a.c);
  parallel_for(a.n, a.c, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      // The exp pass runs from L1 and leaves the memory bus idle: start the next row's load
      // now so it streams in underneath (a max-then-exp row costs ~1/3 less this way).
      if (i + 1 < e) prefetch_row(logits + (i + 1) * a.c, a.c);
      const int64_t y = target[i];
      if (y == a.ignore_index) {
        row_loss[i] = 0;
        lse[i] = 0;
        continue;
      }
      lse[i] = ce_forward_row<T>(logits + i * a.c, a.c, y, weight, wsum, a.label_smoothing,
                                 row_loss + i);
    }
  });
  CrossEntropySums sums;
  for (int64_t i = 0; i < a.n; ++i) {
    if (target[i] == a.ignore_index) continue;
    sums.loss += double(row_loss[i]);
    sums.weight += weight ? double(weight[target[i]]) : 1.0;
  }
  return sums;
}

template <typename T>
void cross_entropy_backward(const T* logits, const int64_t* target, const T* weight, const T* lse,
                            const T* grad_rows, double grad_scale, const CrossEntropyArgs& a,
                            T* dlogits) {
  check_targets(target, a);
  const T wsum = weight_total(weight, a.c);
  parallel_for(a.n, a.c, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T* dx = dlogits + i * a.c;
      const int64_t y = target[i];
      if (y == a.ignore_index) {
        for (int64_t j = 0; j < a.c; ++j) dx[j] = 0;
        continue;
      }
      const T g = T((grad_rows ? double(grad_rows[i]) : 1.0) * grad_scale);
      ce_backward_row<T>(logits + i * a.c, a.c, y, weight, wsum, a.label_smoothing, lse[i], g, dx);
    }
  });
}

#define GF_INSTANTIATE(T)                                                                        \
  template CrossEntropySums cross_entropy_forward<T>(const T*, const int64_t*, const T*,         \
                                                     const CrossEntropyArgs&, T*, T*);           \
  template void cross_entropy_backward<T>(const T*, const int64_t*, const T*, const T*, const T*, \
                                          double, const CrossEntropyArgs&, T*);
GF_INSTANTIATE(float)
GF_INSTANTIATE(double)
#undef GF_INSTANTIATE

}  // namespace gradfuse
