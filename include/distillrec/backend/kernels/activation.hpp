// distillrec/backend/kernels/activation.hpp
//
// Element-wise activations and their backward passes:
//
//   relu / relu_backward dx = dy * [y > 0]
//   gelu / gelu_backward exact GELU, x * Phi(x) (PyTorch's default), dPhi via the normal pdf
//   swiglu / backward    h = silu(a) * b, silu(a) = a * sigmoid(a) (LLaMA's gated FFN)
//   sigmoid              y = 1 / (1 + exp(-x)), computed from exp(-|x|) so that no intermediate
//                        overflows: finite and in [0, 1] for every finite x (GRU/LSTM gates)
//   tanh                 y = tanh(x), saturating to +-1 without overflow for large |x|
//
// detail::sigmoid_batch / detail::sigmoid_scalar are the same sigmoid on one SIMD batch and on
// one scalar, for fused kernels built on it (kernels/gru_gates.hpp).
//
// xsimd kernels templated on the scalar and on the instruction set (default: the best one the
// compiler targets), each with a plain scalar twin in `reference::` that the tests hold it to.
#pragma once

#include "distillrec/backend/kernels/common.hpp"

#include <cmath>

namespace distillrec::backend::kernels {

namespace detail {

/// sigmoid(x) = s for x >= 0 and e * s for x < 0, with e = exp(-|x|) in (0, 1] and
/// s = 1 / (1 + e): exp never overflows and the result never leaves [0, 1]. Always inlined:
/// fused kernels call it more than once per batch, and an out-of-line call costs them a third.
template <typename T, typename Arch>
EIGEN_ALWAYS_INLINE Batch<T, Arch> sigmoid_batch(const Batch<T, Arch>& x) {
  using B = Batch<T, Arch>;
  const B one(T(1));
  const B e = xsimd::exp(-xsimd::abs(x));
  const B s = one / (one + e);
  return xsimd::select(x >= B(T(0)), s, e * s);
}

template <typename T>
T sigmoid_scalar(T x) {
  const T e = std::exp(-std::abs(x));
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

}  // namespace detail

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
void relu(const T* x, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
void relu_backward(const T* y, const T* dy, T* dx, Index n) {
  for (Index i = 0; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <typename T>
void gelu(const T* x, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, Index n) {
  const T inv_sqrt_2pi = T(0.3989422804014327);
  for (Index i = 0; i < n; ++i) {
    const T cdf = T(0.5) * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

template <typename T>
void swiglu(const T* a, const T* b, T* h, Index n) {
  for (Index i = 0; i < n; ++i) h[i] = a[i] / (T(1) + std::exp(-a[i])) * b[i];
}

template <typename T>
void swiglu_backward(const T* a, const T* b, const T* dh, T* da, T* db, Index n) {
  for (Index i = 0; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-a[i]));
    const T silu = a[i] * sig;
    db[i] = dh[i] * silu;
    da[i] = dh[i] * b[i] * sig * (T(1) + a[i] * (T(1) - sig));
  }
}

template <typename T>
void sigmoid(const T* x, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = detail::sigmoid_scalar(x[i]);
}

template <typename T>
void tanh(const T* x, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
void relu(const T* x, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B zero(T(0));
  for (Index i = 0; i < vec_end; i += W) xsimd::max(B::load_unaligned(x + i), zero).store_unaligned(y + i);
  for (Index i = vec_end; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T, typename Arch = xsimd::default_arch>
void relu_backward(const T* y, const T* dy, T* dx, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B zero(T(0));
  for (Index i = 0; i < vec_end; i += W) {
    xsimd::select(B::load_unaligned(y + i) > zero, B::load_unaligned(dy + i), zero).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <typename T, typename Arch = xsimd::default_arch>
void gelu(const T* x, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B half(T(0.5)), one(T(1)), r2(T(0.7071067811865476));
  for (Index i = 0; i < vec_end; i += W) {
    const B v = B::load_unaligned(x + i);
    (half * v * (one + xsimd::erf(v * r2))).store_unaligned(y + i);
  }
  for (Index i = vec_end; i < n; ++i) y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
}

template <typename T, typename Arch = xsimd::default_arch>
void gelu_backward(const T* x, const T* dy, T* dx, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const T inv_sqrt_2pi = T(0.3989422804014327);
  const B half(T(0.5)), one(T(1)), r2(T(0.7071067811865476)), c(inv_sqrt_2pi), mhalf(T(-0.5));
  for (Index i = 0; i < vec_end; i += W) {
    const B v = B::load_unaligned(x + i);
    const B cdf = half * (one + xsimd::erf(v * r2));
    const B pdf = c * xsimd::exp(mhalf * v * v);
    (B::load_unaligned(dy + i) * xsimd::fma(v, pdf, cdf)).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) {
    const T cdf = T(0.5) * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

template <typename T, typename Arch = xsimd::default_arch>
void swiglu(const T* a, const T* b, T* h, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B one(T(1));
  for (Index i = 0; i < vec_end; i += W) {
    const B va = B::load_unaligned(a + i);
    (va / (one + xsimd::exp(-va)) * B::load_unaligned(b + i)).store_unaligned(h + i);
  }
  for (Index i = vec_end; i < n; ++i) h[i] = a[i] / (T(1) + std::exp(-a[i])) * b[i];
}

template <typename T, typename Arch = xsimd::default_arch>
void swiglu_backward(const T* a, const T* b, const T* dh, T* da, T* db, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B one(T(1));
  for (Index i = 0; i < vec_end; i += W) {
    const B va = B::load_unaligned(a + i);
    const B vdh = B::load_unaligned(dh + i);
    const B sig = one / (one + xsimd::exp(-va));
    const B silu = va * sig;
    const B vb = B::load_unaligned(b + i);
    (vdh * silu).store_unaligned(db + i);
    (vdh * vb * sig * xsimd::fma(va, one - sig, one)).store_unaligned(da + i);
  }
  for (Index i = vec_end; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-a[i]));
    db[i] = dh[i] * a[i] * sig;
    da[i] = dh[i] * b[i] * sig * (T(1) + a[i] * (T(1) - sig));
  }
}

template <typename T, typename Arch = xsimd::default_arch>
void sigmoid(const T* x, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  for (Index i = 0; i < vec_end; i += W) {
    detail::sigmoid_batch<T, Arch>(B::load_unaligned(x + i)).store_unaligned(y + i);
  }
  for (Index i = vec_end; i < n; ++i) y[i] = detail::sigmoid_scalar(x[i]);
}

template <typename T, typename Arch = xsimd::default_arch>
void tanh(const T* x, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  for (Index i = 0; i < vec_end; i += W) xsimd::tanh(B::load_unaligned(x + i)).store_unaligned(y + i);
  for (Index i = vec_end; i < n; ++i) y[i] = std::tanh(x[i]);
}

}  // namespace distillrec::backend::kernels
