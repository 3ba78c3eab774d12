// distillrec/loss/ranking_distillation.hpp
//
// DLLM2Rec's ranking-distillation loss (methods.md §2.6): each of B output vectors h_b learns
// the teacher's K candidates c_b1..c_bK with importance weights w_bk (each row sums to 1; see
// distill/dllm2rec.hpp for how they are made), against the base objective's negative n_b:
//
//   L_rd = 1/B Σ_b Σ_k w_bk [ softplus(-z_b,c_bk) + neg(z_b,n_b) ]
//   neg(z) = softplus(z)        = -log(1 - σ(z))   (binary cross-entropy; the default)
//          = softplus(z - 1)    = -log σ(1 - z)    (reference_negative: the reference's form)
//
// with z_b,i = score(h_b, i) through the model's output head (nn/output_head.hpp). Gradients:
//   dL/dz_b,c_bk = w_bk (σ(z_b,c_bk) - 1) / B,   dL/dz_b,n_b = (Σ_k w_bk) σ(z_b,n_b [- 1]) / B
// ADDED to grad_h and to the head's gradients (weight rows and bias), all scaled by `weight`.
// A row whose negative is 0 has no negative part. The weights are constants (no gradient).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/loss/bce.hpp"
#include "distillrec/nn/output_head.hpp"

#include <vector>

namespace distillrec::loss {

template <typename T>
struct RankingDistillationLoss {
  bool reference_negative = false;  // neg(z) = softplus(z - 1), as the reference's log σ(1 - z_neg)
  T weight = T(1);                  // scales the gradients; the value returned is unweighted
  /// > 0: the mean divides by this instead of the rows given (a data-parallel shard divides by
  /// its global batch's count, so the shards' losses and gradients sum to the global batch's).
  Index denominator = 0;

  /// h [B, d]; candidates and weights [B * K] row-major; negatives [B] (0: none). Returns L_rd.
  T operator()(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, Index k, const std::vector<ItemId>& candidates,
               const std::vector<T>& weights, const std::vector<ItemId>& negatives, MatrixRef<T> grad_h,
               nn::HeadGradients<T> grad_head) const {
    const Index b_count = h.rows();
    if (k <= 0 || static_cast<Index>(candidates.size()) != b_count * k || static_cast<Index>(weights.size()) != b_count * k ||
        static_cast<Index>(negatives.size()) != b_count) {
      throw ShapeError(distillrec::detail::concat("ranking distillation: ", b_count, " rows with K = ", k, " need ", b_count * k,
                                                  " candidates and weights and ", b_count, " negatives; got ", candidates.size(), ", ",
                                                  weights.size(), " and ", negatives.size()));
    }
    if (head.dim() != h.cols()) {
      throw ShapeError(distillrec::detail::concat("ranking distillation: output vectors have ", h.cols(), " columns, the head ", head.dim()));
    }
    require_shape(grad_h, b_count, h.cols(), "ranking distillation output gradient");
    const Index n = head.num_items();
    auto check_item = [&](ItemId item, Index row, const char* what) {
      if (item < 1 || item > n) {
        throw ShapeError(distillrec::detail::concat("ranking distillation: ", what, " item ", item, " of row ", row, " is outside 1..", n));
      }
    };
    if (b_count == 0) return T(0);
    const Index mean_over = denominator > 0 ? denominator : b_count;
    const T scale = weight / static_cast<T>(mean_over);
    double total = 0.0;
    for (Index b = 0; b < b_count; ++b) {
      const auto hb = h.row(b);
      double row_weight = 0.0;
      for (Index j = 0; j < k; ++j) {
        const ItemId c = candidates[static_cast<std::size_t>(b * k + j)];
        check_item(c, b, "candidate");
        const T w = weights[static_cast<std::size_t>(b * k + j)];
        const T z = head.score(hb, c);
        total += static_cast<double>(w) * static_cast<double>(detail::softplus(-z));
        row_weight += static_cast<double>(w);
        const T g = scale * w * (detail::sigmoid(z) - T(1));
        grad_h.row(b) += g * head.weight.row(c - 1);
        grad_head.add(c, g, hb);
      }
      const ItemId neg = negatives[static_cast<std::size_t>(b)];
      if (neg == kPaddingId) continue;
      check_item(neg, b, "negative");
      const T z = head.score(hb, neg) - (reference_negative ? T(1) : T(0));
      total += row_weight * static_cast<double>(detail::softplus(z));
      const T g = scale * static_cast<T>(row_weight) * detail::sigmoid(z);
      grad_h.row(b) += g * head.weight.row(neg - 1);
      grad_head.add(neg, g, hb);
    }
    return static_cast<T>(total / static_cast<double>(mean_over));
  }
};

}  // namespace distillrec::loss
