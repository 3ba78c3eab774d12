// distillrec/loss/bce.hpp
//
// Binary cross-entropy with sampled negatives, SASRec's training objective (Kang & McAuley,
// 2018; kang205/SASRec model.py): for output vector h_i [d], positive item p_i and k negatives
// n_ij, with scores s = h . W[item] (+ b[item]) through the model's output head
// (nn/output_head.hpp; SASRec's head is its item table),
//     l_i = -log sigma(s_ip) - sum_j log(1 - sigma(s_ij)) = softplus(-s_ip) + sum_j softplus(s_ij)
//     L   = mean_i l_i   (kMean, over the rows given: SASRec's non-padding positions)
//     dl/ds_ip = sigma(s_ip) - 1,   dl/ds_ij = sigma(s_ij)
//     dL/dh_i = sum_items dl/ds * W[item],  dL/dW[item] += dl/ds * h_i,  dL/db[item] += dl/ds
// Negatives are laid out row-major [n, k]. Item ids must be in 1..N (validated).
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/loss/reduction.hpp"
#include "distillrec/nn/output_head.hpp"

#include <cmath>
#include <vector>

namespace distillrec::loss {

namespace detail {

// detail::concat written in this namespace means the library-wide helper.
using distillrec::detail::concat;
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
  /// Per-call scratch (reused, so a training step does not allocate).
  struct Workspace {
    std::vector<T> score_grads;    // [n, 1 + k]
    std::vector<double> row_loss;  // [n]
  };

  Reduction reduction = Reduction::kMean;
  /// > 0: the mean divides by this instead of the rows given (a data-parallel shard divides by
  /// its global batch's count, so the shards' losses and gradients sum to the global batch's).
  Index denominator = 0;

  /// Returns the loss; overwrites grad_h [n, d] and adds the head's gradients into grad_head
  /// (nn/output_head.hpp: a frozen weight or a missing bias is skipped).
  T operator()(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, const std::vector<ItemId>& positives,
               const std::vector<ItemId>& negatives, Index num_negatives, MatrixRef<T> grad_h,
               nn::HeadGradients<T> grad_head, Workspace& ws) const {
    const Index n = h.rows(), d = h.cols(), num_items = head.num_items();
    if (head.dim() != d) {
      throw ShapeError(distillrec::detail::concat("binary cross-entropy: output vectors have ", d,
                                                  " columns but the output head has ", head.dim()));
    }
    if (static_cast<Index>(positives.size()) != n || static_cast<Index>(negatives.size()) != n * num_negatives) {
      throw ShapeError(distillrec::detail::concat("binary cross-entropy: ", n, " output vectors, ", positives.size(),
                                                  " positives and ", negatives.size(), " negatives (expected ",
                                                  n * num_negatives, ")"));
    }
    require_shape(grad_h, n, d, "binary cross-entropy output gradient");
    if (grad_head.has_weight()) require_shape(grad_head.weight, num_items, d, "binary cross-entropy head gradient");
    auto check_id = [&](ItemId id, const char* what) {
      if (id < 1 || id > num_items) {
        throw ShapeError(distillrec::detail::concat("binary cross-entropy: ", what, " item ", id, " is outside 1..", num_items));
      }
    };
    for (ItemId id : positives) check_id(id, "positive");
    for (ItemId id : negatives) check_id(id, "negative");

    const T scale = reduction == Reduction::kMean ? T(1) / static_cast<T>(denominator > 0 ? denominator : std::max<Index>(n, 1)) : T(1);
    const Index k = num_negatives;
    // Per-score gradients, [n, 1 + k]: column 0 the positive, then the negatives.
    ws.score_grads.resize(static_cast<std::size_t>(n * (1 + k)));
    ws.row_loss.resize(static_cast<std::size_t>(n));
    const auto& w = head.weight;
    parallel::for_each(n, n > 256 && !parallel::in_parallel(), [&](Index i, int) {
      const auto hi = h.row(i);
      T* g = ws.score_grads.data() + i * (1 + k);
      const ItemId p = positives[static_cast<std::size_t>(i)];
      const T pos = head.score(hi, p);
      double l = static_cast<double>(detail::softplus(-pos));
      g[0] = (detail::sigmoid(pos) - T(1)) * scale;
      for (Index j = 0; j < k; ++j) {
        const T neg = head.score(hi, negatives[static_cast<std::size_t>(i * k + j)]);
        l += static_cast<double>(detail::softplus(neg));
        g[1 + j] = detail::sigmoid(neg) * scale;
      }
      ws.row_loss[static_cast<std::size_t>(i)] = l;
      auto gh = grad_h.row(i);
      gh = g[0] * w.row(p - 1);
      for (Index j = 0; j < k; ++j) gh += g[1 + j] * w.row(negatives[static_cast<std::size_t>(i * k + j)] - 1);
    });
    // Scatter into the head's gradients in a fixed order (deterministic).
    if (grad_head.has_weight() || grad_head.bias != nullptr) {
      for (Index i = 0; i < n; ++i) {
        const T* g = ws.score_grads.data() + i * (1 + k);
        grad_head.add(positives[static_cast<std::size_t>(i)], g[0], h.row(i));
        for (Index j = 0; j < k; ++j) grad_head.add(negatives[static_cast<std::size_t>(i * k + j)], g[1 + j], h.row(i));
      }
    }
    double total = 0.0;
    for (double l : ws.row_loss) total += l;
    return static_cast<T>(total * static_cast<double>(scale));
  }
};

}  // namespace distillrec::loss
