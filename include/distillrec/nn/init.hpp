// distillrec/nn/init.hpp
//
// Parameter initialisers, all drawing from an explicit seeded generator.
//   xavier_normal   N(0, 2 / (fan_in + fan_out)), PyTorch's xavier_normal_ with fans taken from
//                   a [out, in] weight (rows = fan_out, cols = fan_in)
//   xavier_uniform  U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (TensorFlow's glorot_uniform)
//   normal          N(0, std^2)
//   uniform         U(-bound, bound) (PyTorch's nn.Linear and nn.GRU defaults use 1/sqrt(fan_in))
#pragma once

#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"

#include <cmath>

namespace distillrec::nn {

template <typename Derived>
void init_normal(const Eigen::MatrixBase<Derived>& target, double stddev, Rng& rng) {
  auto& m = const_cast<Eigen::MatrixBase<Derived>&>(target);  // Eigen's idiom for writable temporaries (maps)
  using T = typename Derived::Scalar;
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<T>(stddev * rng.normal());
}

template <typename Derived>
void init_xavier_normal(const Eigen::MatrixBase<Derived>& m, Rng& rng) {
  init_normal(m, std::sqrt(2.0 / static_cast<double>(m.rows() + m.cols())), rng);
}

template <typename Derived>
void init_xavier_uniform(const Eigen::MatrixBase<Derived>& target, Rng& rng) {
  auto& m = const_cast<Eigen::MatrixBase<Derived>&>(target);
  using T = typename Derived::Scalar;
  const double bound = std::sqrt(6.0 / static_cast<double>(m.rows() + m.cols()));
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<T>(bound * (2.0 * rng.uniform() - 1.0));
}

template <typename Derived>
void init_uniform(const Eigen::MatrixBase<Derived>& target, double bound, Rng& rng) {
  auto& m = const_cast<Eigen::MatrixBase<Derived>&>(target);
  using T = typename Derived::Scalar;
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<T>(bound * (2.0 * rng.uniform() - 1.0));
}

}  // namespace distillrec::nn
