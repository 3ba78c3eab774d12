// distillrec/backend/kernels/common.hpp
//
// Shared pieces of the xsimd kernels (the batch type and lane count for an instruction set) and
// the element-wise product:
//
//   multiply             y = x * m element-wise
//
// xsimd kernels templated on the scalar and on the instruction set (default: the best one the
// compiler targets), each with a plain scalar twin in `reference::` that the tests hold it to.
#pragma once

#include "distillrec/core/types.hpp"

#include <xsimd/xsimd.hpp>

namespace distillrec::backend::kernels {

namespace detail {
template <typename T, typename Arch>
using Batch = xsimd::batch<T, Arch>;

template <typename T, typename Arch>
constexpr Index lanes() {
  return static_cast<Index>(Batch<T, Arch>::size);
}
}  // namespace detail

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
void multiply(const T* x, const T* m, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = x[i] * m[i];
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
void multiply(const T* x, const T* m, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  for (Index i = 0; i < vec_end; i += W) (B::load_unaligned(x + i) * B::load_unaligned(m + i)).store_unaligned(y + i);
  for (Index i = vec_end; i < n; ++i) y[i] = x[i] * m[i];
}

}  // namespace distillrec::backend::kernels
