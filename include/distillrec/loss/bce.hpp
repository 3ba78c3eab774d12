// distillrec/loss/bce.hpp
//
// Binary cross-entropy with sampled negatives, SASRec's training objective (Kang & McAuley,
// 2018; kang205/SASRec model.py): for user vector h_i [d], positive item p_i and k negatives
// n_ij, with scores s = h . E[item],
//     l_i = -log sigma(s_ip) - sum_j log(1 - sigma(s_ij)) = softplus(-s_ip) + sum_j softplus(s_ij)
//     L   = mean_i l_i   (kMean, over the rows given: SASRec's non-padding positions)
//     dl/ds_ip = sigma(s_ip) - 1,   dl/ds_ij = sigma(s_ij)
//     dL/dh_i = sum_items dl/ds * E[item],  dL/dE[item] += dl/ds * h_i
// Negatives are laid out row-major [n, k]. Item ids must be in 1..N (validated).
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/loss/reduction.hpp"

#include <cmath>
#include <vector>

namespace distillrec::loss {

namespace detail {
/// log(1 + exp(x)) without overflow.
template <typename T>
T softplus(T x) {
  return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x)));
}
template <typename T>
T sigmoid(T x) {
  return x >= 0 ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
}
}  // namespace detail

template <typename T>
struct SampledBinaryCrossEntropy {
  Reduction reduction = Reduction::kMean;

  /// Returns the loss; overwrites grad_h [n, d], adds into grad_table [(N+1), d] (skipped when
  /// grad_table has no rows: a frozen table).
  T operator()(const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& table, const std::vector<ItemId>& positives,
               const std::vector<ItemId>& negatives, Index num_negatives, MatrixRef<T> grad_h,
               MatrixRef<T> grad_table) const {
    const Index n = h.rows(), d = h.cols(), num_items = table.rows() - 1;
    if (table.cols() != d) {
      throw ShapeError(distillrec::detail::concat("binary cross-entropy: user vectors have ", d,
                                                  " columns but the item table has ", table.cols()));
    }
    if (static_cast<Index>(positives.size()) != n || static_cast<Index>(negatives.size()) != n * num_negatives) {
      throw ShapeError(distillrec::detail::concat("binary cross-entropy: ", n, " user vectors, ", positives.size(),
                                                  " positives and ", negatives.size(), " negatives (expected ",
                                                  n * num_negatives, ")"));
    }
    require_shape(grad_h, n, d, "binary cross-entropy user-vector gradient");
    if (grad_table.rows() > 0) require_shape(grad_table, table.rows(), d, "binary cross-entropy item-table gradient");
    auto check_id = [&](ItemId id, const char* what) {
      if (id < 1 || id > num_items) {
        throw ShapeError(distillrec::detail::concat("binary cross-entropy: ", what, " item ", id, " is outside 1..", num_items));
      }
    };
    for (ItemId id : positives) check_id(id, "positive");
    for (ItemId id : negatives) check_id(id, "negative");

    const T scale = reduction == Reduction::kMean ? T(1) / static_cast<T>(std::max<Index>(n, 1)) : T(1);
    const Index k = num_negatives;
    // Per-score gradients, [n, 1 + k]: column 0 the positive, then the negatives.
    std::vector<T> score_grads(static_cast<std::size_t>(n * (1 + k)));
    std::vector<double> row_loss(static_cast<std::size_t>(n));
#pragma omp parallel for schedule(static) if (n > 256 && !parallel::in_parallel())
    for (Index i = 0; i < n; ++i) {
      const auto hi = h.row(i);
      T* g = score_grads.data() + i * (1 + k);
      const T pos = hi.dot(table.row(positives[static_cast<std::size_t>(i)]));
      double l = static_cast<double>(detail::softplus(-pos));
      g[0] = (detail::sigmoid(pos) - T(1)) * scale;
      for (Index j = 0; j < k; ++j) {
        const T neg = hi.dot(table.row(negatives[static_cast<std::size_t>(i * k + j)]));
        l += static_cast<double>(detail::softplus(neg));
        g[1 + j] = detail::sigmoid(neg) * scale;
      }
      row_loss[static_cast<std::size_t>(i)] = l;
      auto gh = grad_h.row(i);
      gh = g[0] * table.row(positives[static_cast<std::size_t>(i)]);
      for (Index j = 0; j < k; ++j) gh += g[1 + j] * table.row(negatives[static_cast<std::size_t>(i * k + j)]);
    }
    // Scatter into the table gradient in a fixed order (deterministic).
    for (Index i = 0; i < n && grad_table.rows() > 0; ++i) {
      const T* g = score_grads.data() + i * (1 + k);
      grad_table.row(positives[static_cast<std::size_t>(i)]) += g[0] * h.row(i);
      for (Index j = 0; j < k; ++j) grad_table.row(negatives[static_cast<std::size_t>(i * k + j)]) += g[1 + j] * h.row(i);
    }
    double total = 0.0;
    for (double l : row_loss) total += l;
    return static_cast<T>(total * static_cast<double>(scale));
  }
};

}  // namespace distillrec::loss
