// distillrec/backend/kernels/rope.hpp
//
// Rotary position embedding of one head vector, HF LLaMA's "rotate half" layout:
//
//   rope_rotate          for j < d/2, (x_j, x_{j+d/2}) is rotated by the angle
//                        pos * theta^(-2j/d); sign = -1 rotates back (the backward pass)
//
// xsimd kernels templated on the scalar and on the instruction set (default: the best one the
// compiler targets), each with a plain scalar twin in `reference::` that the tests hold it to.
#pragma once

#include "distillrec/backend/kernels/common.hpp"

#include <type_traits>

namespace distillrec::backend::kernels {

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
void rope_rotate(T* x, const T* cos, const T* sin, Index half, T sign = T(1)) {
  for (Index j = 0; j < half; ++j) {
    const T x1 = x[j], x2 = x[j + half], s = sign * sin[j];
    x[j] = x1 * cos[j] - x2 * s;
    x[j + half] = x2 * cos[j] + x1 * s;
  }
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
void rope_rotate(T* x, const T* cos, const T* sin, Index half, T sign = T(1)) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = half - half % W;
  const B vs(sign);
  for (Index j = 0; j < vec_end; j += W) {
    const B x1 = B::load_unaligned(x + j), x2 = B::load_unaligned(x + j + half);
    const B c = B::load_unaligned(cos + j), s = B::load_unaligned(sin + j) * vs;
    xsimd::fms(x1, c, x2 * s).store_unaligned(x + j);
    xsimd::fma(x1, s, x2 * c).store_unaligned(x + j + half);
  }
  Index j = vec_end;
#if XSIMD_WITH_AVX2
  // Heads narrower than the vector (16 floats on AVX-512: head size 16 has half = 8) in 8-lane
  // vectors rather than one scalar at a time.
  if constexpr (std::is_same<T, float>::value && W > 8) {
    using H = xsimd::batch<float, xsimd::avx2>;
    const H hs(sign);
    for (; j + 8 <= half; j += 8) {
      const H x1 = H::load_unaligned(x + j), x2 = H::load_unaligned(x + j + half);
      const H c = H::load_unaligned(cos + j), s = H::load_unaligned(sin + j) * hs;
      xsimd::fms(x1, c, x2 * s).store_unaligned(x + j);
      xsimd::fma(x1, s, x2 * c).store_unaligned(x + j + half);
    }
  }
#endif
  for (; j < half; ++j) {
    const T x1 = x[j], x2 = x[j + half], s = sign * sin[j];
    x[j] = x1 * cos[j] - x2 * s;
    x[j + half] = x2 * cos[j] + x1 * s;
  }
}

}  // namespace distillrec::backend::kernels
