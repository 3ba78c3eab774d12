// distillrec/backend/kernels/adam.hpp
//
// The Adam update of a contiguous range of parameters (optim/adam.hpp splits the buffer into
// ranges and runs them on the library's threads):
//
//   g = grad (+ wd * value, L2 form)        value *= 1 - lr * wd (decoupled form, AdamW)
//   m = b1 * m + (1 - b1) * g
//   v = b2 * v + (1 - b2) * g * g
//   value -= step_size * m / (sqrt(v) * inv_sqrt_bias2 + eps)
//
// step_size = lr / (1 - b1^t), inv_sqrt_bias2 = 1 / sqrt(1 - b2^t). The update streams four
// arrays once and is bound by memory bandwidth when it runs on SIMD lanes; a scalar loop is
// bound by the latency of its square root and division (about 3x slower on a 3-million
// parameter model). The SIMD lanes and the scalar tail evaluate the same expression, with its
// three multiply-adds fused explicitly (so no compiler's contraction choice changes a result).
#pragma once

#include "distillrec/backend/kernels/common.hpp"

#include <cmath>

namespace distillrec::backend::kernels {

template <typename T>
struct AdamCoefficients {
  T beta1, beta2;        // b1, b2
  T step_size;           // lr / (1 - b1^t)
  T inv_sqrt_bias2;      // 1 / sqrt(1 - b2^t)
  T eps;
  T weight_decay;        // 0: none
  bool decoupled;        // true: value *= decay before the update (AdamW); false: g += wd * value
  T decay;               // 1 - lr * wd (decoupled form)
};

namespace detail {

/// One element or one batch of lanes: the same expression for both.
template <typename V, typename T>
inline void adam_element(V& value, V g, V& m, V& v, const AdamCoefficients<T>& c) {
  using std::fma;
  using std::sqrt;
  using xsimd::fma;
  using xsimd::sqrt;
  if (c.weight_decay != T(0)) {
    if (c.decoupled) {
      value = value * V(c.decay);
    } else {
      g = fma(V(c.weight_decay), value, g);
    }
  }
  m = fma(V(c.beta1), m, V(T(1) - c.beta1) * g);
  v = fma(V(c.beta2), v, V(T(1) - c.beta2) * g * g);
  value = value - V(c.step_size) * m / fma(sqrt(v), V(c.inv_sqrt_bias2), V(c.eps));
}

}  // namespace detail

namespace reference {

template <typename T>
void adam_update(T* values, const T* grads, T* m, T* v, Index n, const AdamCoefficients<T>& c) {
  for (Index i = 0; i < n; ++i) {
    T g = grads[i];
    if (c.weight_decay != T(0)) {
      if (c.decoupled) {
        values[i] *= c.decay;
      } else {
        g += c.weight_decay * values[i];
      }
    }
    m[i] = c.beta1 * m[i] + (T(1) - c.beta1) * g;
    v[i] = c.beta2 * v[i] + (T(1) - c.beta2) * g * g;
    values[i] -= c.step_size * m[i] / (std::sqrt(v[i]) * c.inv_sqrt_bias2 + c.eps);
  }
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
void adam_update(T* values, const T* grads, T* m, T* v, Index n, const AdamCoefficients<T>& c) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  for (Index i = 0; i < vec_end; i += W) {
    B value = B::load_unaligned(values + i), mi = B::load_unaligned(m + i), vi = B::load_unaligned(v + i);
    detail::adam_element(value, B::load_unaligned(grads + i), mi, vi, c);
    value.store_unaligned(values + i);
    mi.store_unaligned(m + i);
    vi.store_unaligned(v + i);
  }
  for (Index i = vec_end; i < n; ++i) detail::adam_element(values[i], grads[i], m[i], v[i], c);
}

}  // namespace distillrec::backend::kernels
