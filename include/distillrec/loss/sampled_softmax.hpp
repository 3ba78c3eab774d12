// distillrec/loss/sampled_softmax.hpp
//
// Sampled softmax cross-entropy with logQ correction (Bengio & Senecal, 2008; Yi et al.,
// RecSys 2019 "Sampling-bias-corrected neural modeling"): m negatives are drawn once per batch
// from a proposal Q and shared by all rows; every logit is corrected by the log of its item's
// proposal probability so the sampled softmax is an unbiased-in-the-limit estimate of the full
// one:
//     z_i0 = h_i . E[p_i] / tau - log Q(p_i)
//     z_ij = h_i . E[n_j] / tau - log Q(n_j)        (-inf where n_j == p_i: accidental hit)
//     L = mean_i -log softmax(z_i)[0]
// Gradients: dz = softmax(z) - onehot(0); dh_i = sum_j dz_ij E[item_j] / tau, dE[item_j] +=
// dz_ij h_i / tau.
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
  };

  Reduction reduction = Reduction::kMean;
  T temperature = T(1);
  bool remove_accidental_hits = true;

  /// Returns the loss; overwrites grad_h [n, d], adds into grad_table [(N+1), d] (skipped when
  /// grad_table has no rows: a frozen table).
  T operator()(const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& table, const std::vector<ItemId>& positives,
               const std::vector<T>& log_q_positives, const std::vector<ItemId>& negatives,
               const std::vector<T>& log_q_negatives, MatrixRef<T> grad_h, MatrixRef<T> grad_table,
               Workspace& ws) const {
    const Index n = h.rows(), d = h.cols(), m = static_cast<Index>(negatives.size());
    const Index num_items = table.rows() - 1;
    if (table.cols() != d) throw ShapeError("sampled softmax: user vectors and item table differ in width");
    if (static_cast<Index>(positives.size()) != n || static_cast<Index>(log_q_positives.size()) != n ||
        static_cast<Index>(log_q_negatives.size()) != m || m == 0) {
      throw ShapeError(distillrec::detail::concat("sampled softmax: ", n, " user vectors, ", positives.size(), " positives, ",
                                                  log_q_positives.size(), " positive log-probabilities, ", m, " negatives, ",
                                                  log_q_negatives.size(), " negative log-probabilities (need at least one negative)"));
    }
    if (!(temperature > T(0))) throw ConfigError("sampled softmax: temperature must be positive");
    require_shape(grad_h, n, d, "sampled softmax user-vector gradient");
    const bool table_grad = grad_table.rows() > 0;
    if (table_grad) require_shape(grad_table, table.rows(), d, "sampled softmax item-table gradient");
    for (ItemId id : positives) {
      if (id < 1 || id > num_items) throw ShapeError(distillrec::detail::concat("sampled softmax: positive item ", id, " is outside 1..", num_items));
    }
    auto neg_table = ws.negative_table.resize(m, d);
    for (Index j = 0; j < m; ++j) {
      const ItemId id = negatives[static_cast<std::size_t>(j)];
      if (id < 1 || id > num_items) throw ShapeError(distillrec::detail::concat("sampled softmax: negative item ", id, " is outside 1..", num_items));
      neg_table.row(j) = table.row(id);
    }
    const T inv_tau = T(1) / temperature;
    auto logits = ws.logits.resize(n, 1 + m);
    backend::gemm(backend::Trans::kNo, backend::Trans::kYes, inv_tau, h, neg_table, T(0), logits.rightCols(m));
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (Index i = 0; i < n; ++i) {
      const ItemId p = positives[static_cast<std::size_t>(i)];
      logits(i, 0) = h.row(i).dot(table.row(p)) * inv_tau - log_q_positives[static_cast<std::size_t>(i)];
      for (Index j = 0; j < m; ++j) {
        logits(i, 1 + j) -= log_q_negatives[static_cast<std::size_t>(j)];
        if (remove_accidental_hits && negatives[static_cast<std::size_t>(j)] == p) logits(i, 1 + j) = neg_inf;
      }
    }
    ws.targets.assign(static_cast<std::size_t>(n), 0);
    SoftmaxCrossEntropyWithLogits<T> ce;
    ce.reduction = reduction;
    const T value = ce(logits, ws.targets, logits);  // logits now hold dL/dz
    // Through z = s / tau - log Q: dL/ds = dL/dz / tau.
    logits *= inv_tau;
    backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), logits.rightCols(m), neg_table, T(0), grad_h);
    for (Index i = 0; i < n; ++i) {
      const ItemId p = positives[static_cast<std::size_t>(i)];
      grad_h.row(i) += logits(i, 0) * table.row(p);
      if (table_grad) grad_table.row(p) += logits(i, 0) * h.row(i);
    }
    if (!table_grad) return value;
    auto neg_grads = ws.negative_grads.resize(m, d);
    backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), logits.rightCols(m), h, T(0), neg_grads);
    for (Index j = 0; j < m; ++j) grad_table.row(negatives[static_cast<std::size_t>(j)]) += neg_grads.row(j);
    return value;
  }
};

}  // namespace distillrec::loss
