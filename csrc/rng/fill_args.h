// Host-side argument checks and parameters of the random fills, shared by the CPU kernels
// (csrc/kernels/init.cpp) and their CUDA twins (csrc/cuda/init.cu). One copy keeps the two
// devices in step: the same bad input gives the same ValueError text, and the same (a, b) the
// same clamped range and the same dropout threshold, which the CPU/GPU same-bits contract needs.
// Plain host C++ (no device code): nvcc compiles it in its host pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "rng/philox.h"

namespace gradfuse::fill_args {

// std::invalid_argument: pybind11 maps it to ValueError
[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

inline const char* dtype_name(float) { return "float32"; }
inline const char* dtype_name(double) { return "float64"; }

inline void check_n(int64_t n) {
  if (n < 0) fail("n: expected a size >= 0, got " + std::to_string(n));
}

// Blocks consumed by a fill of n values, vals_per_tile to a tile of kTileBlocks blocks.
inline uint64_t blocks_for(int64_t n, int64_t vals_per_tile) {
  return static_cast<uint64_t>((n + vals_per_tile - 1) / vals_per_tile) * philox::kTileBlocks;
}

// The dtype's values inside [a, b] (inclusive) or [a, b) (exclusive upper end).
template <typename T>
T at_least(double a) {
  T t = static_cast<T>(a);
  if (static_cast<double>(t) < a) t = std::nextafter(t, std::numeric_limits<T>::infinity());
  return t;
}
template <typename T>
T at_most(double b) {
  T t = static_cast<T>(b);
  if (static_cast<double>(t) > b) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}
template <typename T>
T below(double b) {
  T t = static_cast<T>(b);
  if (static_cast<double>(t) >= b) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// uniform_(a, b): lo + span * u, clamped into [cmin, cmax], the dtype's values in [a, b).
template <typename T>
struct Uniform {
  T lo, span, cmin, cmax;
};

template <typename T>
Uniform<T> uniform(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b)) {
    fail("a, b: expected finite bounds, got [" + num(a) + ", " + num(b) + ")");
  }
  if (a > b) {
    fail("uniform_ expects to return a [from, to) range, but found from=" + num(a) +
         " > to=" + num(b));
  }
  const double span = b - a;
  if (!std::isfinite(span) || !std::isfinite(static_cast<T>(span))) {
    fail(std::string("b - a: ") + num(span) + " overflows " + dtype_name(T(0)));
  }
  const T amin = at_least<T>(a), bmax = below<T>(b);
  const T lo = static_cast<T>(a);
  // no value of the dtype in [a, b) (a == b included): every element is a, rounded
  const bool constant = !(amin <= bmax);
  return {lo, constant ? T(0) : static_cast<T>(span), constant ? lo : amin,
          constant ? lo : bmax};
}

inline void check_normal(double mean, double std) {
  if (!std::isfinite(mean)) fail("mean: expected a finite value, got " + num(mean));
  if (!std::isfinite(std) || std < 0.0) fail("std: expected a finite value >= 0, got " + num(std));
}

inline void check_probability(double p) {
  if (!(p >= 0.0 && p <= 1.0)) fail("p: expected a probability in [0, 1], got " + num(p));
}

// dropout(p): keep a value when its word is <= tm1 (unless none), scaled by 1 / (1 - p).
template <typename T>
struct Dropout {
  uint32_t tm1;
  bool none;
  T scale;
};

template <typename T>
Dropout<T> dropout(double p) {
  if (!(p >= 0.0 && p <= 1.0)) {
    fail("p: dropout probability has to be between 0 and 1, but got " + num(p));
  }
  const double keep = 1.0 - p;
  // p = 1: keep nothing; the threshold test alone would keep words equal to 0
  const bool none = philox::bernoulli_never(keep);
  return {philox::bernoulli_threshold_minus1(keep), none,
          none ? T(0) : static_cast<T>(1.0 / keep)};
}

}  // namespace gradfuse::fill_args
