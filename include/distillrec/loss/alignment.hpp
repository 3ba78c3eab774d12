// distillrec/loss/alignment.hpp
//
// Feature-alignment losses between student states S and (fixed) teacher states Tt, both [n, d],
// one row per example. They are SLMRec's D_cos and D_norm (methods.md §1.7); the gradient flows
// into the student only.
//
// CosineAlignment (feature direction), PyTorch's F.cosine_similarity with eps:
//     c_b = <s_b, t_b> / (max(|s_b|, eps) max(|t_b|, eps)),    L = 1 - reduce_b c_b
//     dL/ds_b = -w (t_b / (|s_b| |t_b|) - c_b s_b / |s_b|^2)    (w = 1/n for the mean; the
//                                                                |s_b| < eps branch uses eps
//                                                                and drops the second term)
// FeatureDistance (feature distance), the reference's plain L2 norm or the paper's square:
//     L = reduce_b |s_b - t_b|          dL/ds_b = w (s_b - t_b) / |s_b - t_b|   (0 at s_b = t_b)
//     L = reduce_b |s_b - t_b|^2        dL/ds_b = 2 w (s_b - t_b)                (squared = true)
//
// Both return the loss and overwrite grad [n, d] with dL/dS. Teacher rows must be finite.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/loss/reduction.hpp"

#include <algorithm>
#include <cmath>

namespace distillrec::loss {

template <typename T>
struct CosineAlignment {
  Reduction reduction = Reduction::kMean;
  T eps = T(1e-8);
  /// > 0: the mean divides by this instead of the rows given (a data-parallel shard divides by
  /// its global batch's count, so the shards' losses and gradients sum to the global batch's).
  Index denominator = 0;

  T operator()(const ConstMatrixRef<T>& student, const ConstMatrixRef<T>& teacher, MatrixRef<T> grad) const {
    check(student, teacher, grad);
    const Index n = student.rows();
    if (n == 0) return T(0);
    const Index mean_over = denominator > 0 ? denominator : n;
    const T w = reduction == Reduction::kMean ? T(1) / static_cast<T>(mean_over) : T(1);
    double total = 0.0;
    for (Index b = 0; b < n; ++b) {
      const auto s = student.row(b);
      const auto t = teacher.row(b);
      const T s_norm = s.norm(), t_norm = t.norm();
      const T s_den = std::max(s_norm, eps), t_den = std::max(t_norm, eps);
      const T c = s.dot(t) / (s_den * t_den);
      total += static_cast<double>(c);
      if (s_norm >= eps) {
        grad.row(b) = -w * (t / (s_den * t_den) - c * s / (s_den * s_den));
      } else {
        grad.row(b) = -w * t / (s_den * t_den);
      }
    }
    // Mean: 1 - mean cos, i.e. sum(1 - cos) / mean_over (so shards sum to the global mean).
    if (reduction == Reduction::kMean) {
      if (denominator <= 0) return static_cast<T>(1.0 - total / static_cast<double>(n));
      return static_cast<T>((static_cast<double>(n) - total) / static_cast<double>(mean_over));
    }
    return static_cast<T>(static_cast<double>(n) - total);
  }

  static void check(const ConstMatrixRef<T>& student, const ConstMatrixRef<T>& teacher, MatrixRef<T> grad) {
    if (student.rows() != teacher.rows() || student.cols() != teacher.cols()) {
      throw ShapeError(distillrec::detail::concat("feature alignment: student states [", student.rows(), ", ", student.cols(),
                                                  "] and teacher states [", teacher.rows(), ", ", teacher.cols(),
                                                  "] differ in shape"));
    }
    require_shape(grad, student.rows(), student.cols(), "feature alignment gradient");
  }
};

template <typename T>
struct FeatureDistance {
  Reduction reduction = Reduction::kMean;
  bool squared = false;
  /// > 0: the mean divides by this instead of the rows given (a data-parallel shard divides by
  /// its global batch's count, so the shards' losses and gradients sum to the global batch's).
  Index denominator = 0;

  T operator()(const ConstMatrixRef<T>& student, const ConstMatrixRef<T>& teacher, MatrixRef<T> grad) const {
    CosineAlignment<T>::check(student, teacher, grad);
    const Index n = student.rows();
    if (n == 0) return T(0);
    const Index mean_over = denominator > 0 ? denominator : n;
    const T w = reduction == Reduction::kMean ? T(1) / static_cast<T>(mean_over) : T(1);
    double total = 0.0;
    for (Index b = 0; b < n; ++b) {
      grad.row(b) = student.row(b) - teacher.row(b);
      const T sq = grad.row(b).squaredNorm();
      if (squared) {
        total += static_cast<double>(sq);
        grad.row(b) *= T(2) * w;
      } else {
        const T dist = std::sqrt(sq);
        total += static_cast<double>(dist);
        if (dist > T(0)) {
          grad.row(b) *= w / dist;
        } else {
          grad.row(b).setZero();
        }
      }
    }
    return static_cast<T>(reduction == Reduction::kMean ? total / static_cast<double>(mean_over) : total);
  }
};

}  // namespace distillrec::loss
