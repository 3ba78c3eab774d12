// distillrec/backend/kernels/softmax.hpp
//
// Row softmax and its backward pass:
//
//   softmax              x <- softmax(scale * x) on one row, max-subtracted; returns
//                        log-sum-exp(scale * x). A row whose entries are all -inf (every
//                        candidate masked) becomes all zeros and returns -inf, never NaN.
//   softmax_backward     dx = scale * y * (dy - <y, dy>)
//   exp_shifted          x <- exp(x + b - m), m = max(x + b), b an optional bias row; returns
//                        {m, sum of the exponentials}: the unnormalised softmax of x + b in
//                        two passes over the row (the catalogue cross-entropy's fused step:
//                        the bias add, the max and the exponentials without a pass of their
//                        own). A row that is all -inf becomes zeros and returns {-inf, 0}.
//   scale                x <- factor * x
//
// xsimd kernels templated on the scalar and on the instruction set (default: the best one the
// compiler targets), each with a plain scalar twin in `reference::` that the tests hold it to.
#pragma once

#include "distillrec/backend/kernels/common.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace distillrec::backend::kernels {

/// What exp_shifted returns: the row's maximum (the shift) and the sum of the exponentials, so
/// that log-sum-exp = max + log(sum) and softmax = x / sum.
template <typename T>
struct ShiftedExp {
  T max;
  T sum;
};

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
T softmax(T* x, Index n, T scale = T(1)) {
  if (n <= 0) return -std::numeric_limits<T>::infinity();
  T max_value = -std::numeric_limits<T>::infinity();
  for (Index i = 0; i < n; ++i) max_value = std::max(max_value, x[i] * scale);
  if (max_value == -std::numeric_limits<T>::infinity()) {  // every entry masked
    std::fill(x, x + n, T(0));
    return max_value;
  }
  T sum = 0;
  for (Index i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] * scale - max_value);
    sum += x[i];
  }
  for (Index i = 0; i < n; ++i) x[i] /= sum;
  return max_value + std::log(sum);
}

template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, Index n, T scale = T(1)) {
  T dot = 0;
  for (Index i = 0; i < n; ++i) dot += y[i] * dy[i];
  for (Index i = 0; i < n; ++i) dx[i] = scale * y[i] * (dy[i] - dot);
}

template <typename T>
void scale(T* x, T factor, Index n) {
  for (Index i = 0; i < n; ++i) x[i] *= factor;
}

template <typename T>
ShiftedExp<T> exp_shifted(T* x, const T* bias, Index n) {
  ShiftedExp<T> out{-std::numeric_limits<T>::infinity(), T(0)};
  for (Index i = 0; i < n; ++i) out.max = std::max(out.max, bias != nullptr ? x[i] + bias[i] : x[i]);
  if (out.max == -std::numeric_limits<T>::infinity()) {
    std::fill(x, x + n, T(0));
    return out;
  }
  for (Index i = 0; i < n; ++i) {
    x[i] = std::exp((bias != nullptr ? x[i] + bias[i] : x[i]) - out.max);
    out.sum += x[i];
  }
  return out;
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
T softmax(T* x, Index n, T scale = T(1)) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  if (n <= 0) return -std::numeric_limits<T>::infinity();
  const Index vec_end = n - n % W;
  // max of scale * x
  T max_value = -std::numeric_limits<T>::infinity();
  {
    B vmax(-std::numeric_limits<T>::infinity());
    const B vscale(scale);
    for (Index i = 0; i < vec_end; i += W) vmax = xsimd::max(vmax, B::load_unaligned(x + i) * vscale);
    alignas(64) T lanes_out[W];
    vmax.store_aligned(lanes_out);
    for (Index l = 0; l < W; ++l) max_value = std::max(max_value, lanes_out[l]);
    for (Index i = vec_end; i < n; ++i) max_value = std::max(max_value, x[i] * scale);
  }
  if (max_value == -std::numeric_limits<T>::infinity()) {  // every entry masked: no NaN from -inf - -inf
    std::fill(x, x + n, T(0));
    return max_value;
  }
  T sum = 0;
  {
    const B vscale(scale), vmax(max_value);
    B vsum(T(0));
    for (Index i = 0; i < vec_end; i += W) {
      const B e = xsimd::exp(xsimd::fms(B::load_unaligned(x + i), vscale, vmax));
      e.store_unaligned(x + i);
      vsum += e;
    }
    sum = xsimd::hadd(vsum);
    if (vec_end < n) {  // the tail in one padded vector: short rows (attention's) are mostly tail
      alignas(64) T tail[W];
      const Index m = n - vec_end;
      for (Index l = 0; l < W; ++l) tail[l] = l < m ? x[vec_end + l] : T(0);
      xsimd::exp(xsimd::fms(B::load_aligned(tail), vscale, vmax)).store_aligned(tail);
      for (Index l = 0; l < m; ++l) {
        x[vec_end + l] = tail[l];
        sum += tail[l];
      }
    }
  }
  const T inv = T(1) / sum;
  const B vinv(inv);
  for (Index i = 0; i < vec_end; i += W) (B::load_unaligned(x + i) * vinv).store_unaligned(x + i);
  for (Index i = vec_end; i < n; ++i) x[i] *= inv;
  return max_value + std::log(sum);
}

template <typename T, typename Arch = xsimd::default_arch>
void softmax_backward(const T* y, const T* dy, T* dx, Index n, T scale = T(1)) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  B vdot(T(0));
  for (Index i = 0; i < vec_end; i += W) vdot = xsimd::fma(B::load_unaligned(y + i), B::load_unaligned(dy + i), vdot);
  T dot = xsimd::hadd(vdot);
  for (Index i = vec_end; i < n; ++i) dot += y[i] * dy[i];
  const B vd(dot), vs(scale);
  for (Index i = 0; i < vec_end; i += W) {
    (vs * B::load_unaligned(y + i) * (B::load_unaligned(dy + i) - vd)).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) dx[i] = scale * y[i] * (dy[i] - dot);
}

template <typename T, typename Arch = xsimd::default_arch>
ShiftedExp<T> exp_shifted(T* x, const T* bias, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const T inf = std::numeric_limits<T>::infinity();
  ShiftedExp<T> out{-inf, T(0)};
  if (n <= 0) return out;
  const Index vec_end = n - n % W;
  {
    B vmax(-inf);
    if (bias != nullptr) {
      for (Index i = 0; i < vec_end; i += W) vmax = xsimd::max(vmax, B::load_unaligned(x + i) + B::load_unaligned(bias + i));
    } else {
      for (Index i = 0; i < vec_end; i += W) vmax = xsimd::max(vmax, B::load_unaligned(x + i));
    }
    alignas(64) T lanes_out[W];
    vmax.store_aligned(lanes_out);
    for (Index l = 0; l < W; ++l) out.max = std::max(out.max, lanes_out[l]);
    for (Index i = vec_end; i < n; ++i) out.max = std::max(out.max, bias != nullptr ? x[i] + bias[i] : x[i]);
  }
  if (out.max == -inf) {  // every entry -inf: no NaN from -inf - -inf
    std::fill(x, x + n, T(0));
    return out;
  }
  const B vmax(out.max);
  B vsum(T(0));
  if (bias != nullptr) {
    for (Index i = 0; i < vec_end; i += W) {
      const B e = xsimd::exp((B::load_unaligned(x + i) + B::load_unaligned(bias + i)) - vmax);
      e.store_unaligned(x + i);
      vsum += e;
    }
  } else {
    for (Index i = 0; i < vec_end; i += W) {
      const B e = xsimd::exp(B::load_unaligned(x + i) - vmax);
      e.store_unaligned(x + i);
      vsum += e;
    }
  }
  out.sum = xsimd::hadd(vsum);
  if (vec_end < n) {  // the tail in one padded vector
    alignas(64) T tail[W];
    const Index m = n - vec_end;
    for (Index l = 0; l < W; ++l) tail[l] = l < m ? (bias != nullptr ? x[vec_end + l] + bias[vec_end + l] : x[vec_end + l]) : -inf;
    xsimd::exp(B::load_aligned(tail) - vmax).store_aligned(tail);
    for (Index l = 0; l < m; ++l) {
      x[vec_end + l] = tail[l];
      out.sum += tail[l];
    }
  }
  return out;
}

/// x *= factor over a row.
template <typename T, typename Arch = xsimd::default_arch>
void scale(T* x, T factor, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B f(factor);
  for (Index i = 0; i < vec_end; i += W) (B::load_unaligned(x + i) * f).store_unaligned(x + i);
  for (Index i = vec_end; i < n; ++i) x[i] *= factor;
}

}  // namespace distillrec::backend::kernels
