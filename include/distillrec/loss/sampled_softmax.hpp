// distillrec/loss/sampled_softmax.hpp
//
// Sampled softmax cross-entropy with logQ correction (Bengio & Senecal, 2008; Yi et al.,
// RecSys 2019 "Sampling-bias-corrected neural modeling"): m negatives are drawn once per batch
// from a proposal Q and shared by all rows; every logit is corrected by the log of its item's
// proposal probability so the sampled softmax is an unbiased-in-the-limit estimate of the full
// one:
//     z_i0 = s(h_i, p_i) / tau - log Q(p_i)
//     z_ij = s(h_i, n_j) / tau - log Q(n_j)        (-inf where n_j == p_i: accidental hit)
// with s(h, i) = h . W[i] (+ b[i]) the model's output head (nn/output_head.hpp).
//     L = mean_i -log softmax(z_i)[0]
// Gradients: dz = softmax(z) - onehot(0); dh_i = sum_j dz_ij W[item_j] / tau, dW[item_j] +=
// dz_ij h_i / tau, db[item_j] += dz_ij / tau.
//
// PopularityProposal: Q(i) proportional to count(i)^alpha over items 1..N (alpha = 0 gives the
// uniform proposal), sampled in O(1) with Walker's alias method.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/loss/reduction.hpp"
#include "distillrec/loss/softmax_ce.hpp"

#include <cmath>
#include <limits>
#include <vector>

namespace distillrec::loss {

class PopularityProposal {
 public:
  /// counts[i] = number of occurrences of item i (index 0 = padding, ignored); every item gets
  /// at least a count of 1 so that none has zero probability.
  PopularityProposal(const std::vector<double>& counts, double alpha = 1.0) {
    if (counts.size() < 2) throw ConfigError("PopularityProposal: needs at least one item");
    const std::size_t n = counts.size() - 1;
    std::vector<double> weights(n);
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!(counts[i + 1] >= 0.0)) throw ConfigError(distillrec::detail::concat("PopularityProposal: count of item ", i + 1, " is negative or NaN"));
      weights[i] = std::pow(std::max(counts[i + 1], 1.0), alpha);
      total += weights[i];
    }
    log_q_.assign(counts.size(), -std::numeric_limits<double>::infinity());
    for (std::size_t i = 0; i < n; ++i) log_q_[i + 1] = std::log(weights[i] / total);
    // Walker's alias table.
    prob_.resize(n);
    alias_.resize(n);
    std::vector<double> scaled(n);
    std::vector<std::size_t> small, large;
    for (std::size_t i = 0; i < n; ++i) {
      scaled[i] = weights[i] / total * static_cast<double>(n);
      (scaled[i] < 1.0 ? small : large).push_back(i);
    }
    while (!small.empty() && !large.empty()) {
      const std::size_t s = small.back(), l = large.back();
      small.pop_back();
      prob_[s] = scaled[s];
      alias_[s] = l;
      scaled[l] -= 1.0 - scaled[s];
      if (scaled[l] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    for (std::size_t i : large) prob_[i] = 1.0;
    for (std::size_t i : small) prob_[i] = 1.0;
  }

  ItemId num_items() const { return static_cast<ItemId>(prob_.size()); }

  /// log Q(item), item in 1..N.
  double log_probability(ItemId item) const { return log_q_.at(static_cast<std::size_t>(item)); }

  ItemId sample(Rng& rng) const {
    const auto column = static_cast<std::size_t>(rng.uniform_int(static_cast<std::uint64_t>(prob_.size())));
    const std::size_t index = rng.uniform() < prob_[column] ? column : alias_[column];
    return static_cast<ItemId>(index + 1);
  }

 private:
  std::vector<double> prob_;
  std::vector<std::size_t> alias_;
  std::vector<double> log_q_;
};

template <typename T>
class SampledSoftmaxCrossEntropy {
 public:
  struct Workspace {
    ScratchMatrix<T> negative_table;   // [m, d]
    ScratchMatrix<T> logits;           // [n, 1 + m]
    ScratchMatrix<T> negative_grads;   // [m, d]
    std::vector<Index> targets;
    std::vector<double> row_loss;
  };

  Reduction reduction = Reduction::kMean;
  /// > 0: the mean divides by this instead of the rows given (a data-parallel shard divides by
  /// its global batch's count, so the shards' losses and gradients sum to the global batch's).
  Index denominator = 0;
  T temperature = T(1);
  bool remove_accidental_hits = true;

  /// Returns the loss; overwrites grad_h [n, d] and adds the head's gradients into grad_head
  /// (a frozen weight or a missing bias is skipped).
  T operator()(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, const std::vector<ItemId>& positives,
               const std::vector<T>& log_q_positives, const std::vector<ItemId>& negatives,
               const std::vector<T>& log_q_negatives, MatrixRef<T> grad_h, nn::HeadGradients<T> grad_head,
               Workspace& ws) const {
    const Index n = h.rows(), d = h.cols(), m = static_cast<Index>(negatives.size());
    const Index num_items = head.num_items();
    if (head.dim() != d) throw ShapeError("sampled softmax: output vectors and output head differ in width");
    if (static_cast<Index>(positives.size()) != n || static_cast<Index>(log_q_positives.size()) != n ||
        static_cast<Index>(log_q_negatives.size()) != m || m == 0) {
      throw ShapeError(distillrec::detail::concat("sampled softmax: ", n, " output vectors, ", positives.size(), " positives, ",
                                                  log_q_positives.size(), " positive log-probabilities, ", m, " negatives, ",
                                                  log_q_negatives.size(), " negative log-probabilities (need at least one negative)"));
    }
    if (!(temperature > T(0))) throw ConfigError("sampled softmax: temperature must be positive");
    require_shape(grad_h, n, d, "sampled softmax output gradient");
    const bool weight_grad = grad_head.has_weight();
    if (weight_grad) require_shape(grad_head.weight, num_items, d, "sampled softmax head gradient");
    for (ItemId id : positives) {
      if (id < 1 || id > num_items) throw ShapeError(distillrec::detail::concat("sampled softmax: positive item ", id, " is outside 1..", num_items));
    }
    const auto& table = head.weight;
    auto neg_table = ws.negative_table.resize(m, d);
    for (Index j = 0; j < m; ++j) {
      const ItemId id = negatives[static_cast<std::size_t>(j)];
      if (id < 1 || id > num_items) throw ShapeError(distillrec::detail::concat("sampled softmax: negative item ", id, " is outside 1..", num_items));
      neg_table.row(j) = table.row(id - 1);
    }
    const T inv_tau = T(1) / temperature;
    auto logits = ws.logits.resize(n, 1 + m);
    backend::gemm(backend::Trans::kNo, backend::Trans::kYes, inv_tau, h, neg_table, T(0), logits.rightCols(m));
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (Index i = 0; i < n; ++i) {
      const ItemId p = positives[static_cast<std::size_t>(i)];
      logits(i, 0) = head.score(h.row(i), p) * inv_tau - log_q_positives[static_cast<std::size_t>(i)];
      for (Index j = 0; j < m; ++j) {
        const ItemId negative = negatives[static_cast<std::size_t>(j)];
        logits(i, 1 + j) -= log_q_negatives[static_cast<std::size_t>(j)];
        if (head.bias != nullptr) logits(i, 1 + j) += head.bias[negative - 1] * inv_tau;
        if (remove_accidental_hits && negative == p) logits(i, 1 + j) = neg_inf;
      }
    }
    ws.targets.assign(static_cast<std::size_t>(n), 0);
    SoftmaxCrossEntropyWithLogits<T> ce;
    ce.reduction = reduction;
    const T value = ce(logits, ws.targets, logits, ws.row_loss,
                       reduction == Reduction::kMean && denominator > 0 ? denominator : -1);  // logits now hold dL/dz
    // Through z = s / tau - log Q: dL/ds = dL/dz / tau.
    logits *= inv_tau;
    backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), logits.rightCols(m), neg_table, T(0), grad_h);
    for (Index i = 0; i < n; ++i) {
      const ItemId p = positives[static_cast<std::size_t>(i)];
      grad_h.row(i) += logits(i, 0) * table.row(p - 1);
      grad_head.add(p, logits(i, 0), h.row(i));
    }
    if (grad_head.bias != nullptr) {
      for (Index j = 0; j < m; ++j) grad_head.bias[negatives[static_cast<std::size_t>(j)] - 1] += logits.col(1 + j).sum();
    }
    if (!weight_grad) return value;
    auto neg_grads = ws.negative_grads.resize(m, d);
    backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), logits.rightCols(m), h, T(0), neg_grads);
    for (Index j = 0; j < m; ++j) grad_head.weight.row(negatives[static_cast<std::size_t>(j)] - 1) += neg_grads.row(j);
    return value;
  }
};

}  // namespace distillrec::loss
