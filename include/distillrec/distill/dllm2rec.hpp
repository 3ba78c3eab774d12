// distillrec/distill/dllm2rec.hpp
//
// DLLM2Rec distillation (Cui et al., RecSys 2024; methods.md §2): importance-aware ranking
// distillation from a teacher's top-K lists (this header) and collaborative embedding
// distillation. Any model of the library can be the student (SASRec, GRU4Rec, ...): the term
// scores through the student's output head, tied or untied.
//
// RankingDistillation is a loss term (train/loss_term.hpp). For every training example in the
// batch, at the newest position of its window (the position that predicts the example's target),
// it takes the teacher's first K candidates c_1..c_K (distill/ranking_signals.hpp) and weights
//
//   position     w^p_k = exp(-k / λ_r) / Σ_k' exp(-k' / λ_r)                 (λ_r = 1)
//   confidence   w^c_k = (e_k + 1e-8) / Σ_k' (e_k' + 1e-8),  e_k = exp(s_k - max_k' s_k')
//                with s = -distance (lower-is-better scores, the reference) or s = score
//                (higher-is-better)
//   consistency  w^o_k = 1[c_k is in the student's current top-K over all items] + 1e-8
//                (no gradient; computed from the same forward pass)
//   w_k = (γ_p w^p_k + γ_c w^c_k + γ_o w^o_k) / Σ_k' (...)                  (0.3, 0.5, 0)
//
// and adds λ · L_rd (loss/ranking_distillation.hpp; λ = 0.8) with the base objective's sampled
// negative of that position (bce), or, under another base objective, one negative it draws
// uniformly from the items outside the example's history and target (as the reference samples).
//
// Deviation from the reference, on purpose: the confidence weights subtract the row's largest
// s before exp. The reference computes exp(-distance) directly, which underflows to 0 in fp32 for
// distances above ~88 (typical of 4096-wide LLM embeddings) and then silently turns the weights
// uniform. The two agree whenever the best candidate's distance is 0; otherwise the 1e-8 floor
// weighs slightly differently.
//
// Default that differs from the reference: γ_o = 0 (the reference uses 0.1). The consistency
// weight needs the student's scores for the whole catalogue at every step, one [batch x items x d]
// product and a top-K scan that the BCE base objective does not otherwise need: on Amazon Games
// (23,715 items) it makes an epoch 1.42x (SASRec) and 1.74x (GRU4Rec) as long, while without
// it ranking distillation adds nothing measurable (x0.97, x1.01; bench/dllm2rec_overhead,
// bench/results/dllm2rec_overhead_games.log). On validation it changed
// nothing beyond the seed spread (README, "Cost of ranking distillation"). Set
// gamma_consistency = 0.1 for the reference's weighting; with γ_o = 0 the term skips the scoring.
#pragma once

#include "distillrec/core/collective.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/backend/gemm.hpp"
#include "distillrec/loss/dros.hpp"
#include "distillrec/loss/ranking_distillation.hpp"
#include "distillrec/loss/softmax_ce.hpp"
#include "distillrec/serve/scoring.hpp"
#include "distillrec/train/loss_term.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace distillrec::distill {

struct RankingWeightsConfig {
  double lambda_position = 1.0;     // λ_r: position weights exp(-k / λ_r)
  double gamma_position = 0.3;      // γ_p
  double gamma_confidence = 0.5;    // γ_c
  double gamma_consistency = 0.0;   // γ_o; the reference's 0.1 costs a full-catalogue scoring per step (see above)

  void validate() const {
    if (!(lambda_position > 0)) throw ConfigError(detail::concat("ranking distillation: λ_r must be positive, got ", lambda_position));
    for (double g : {gamma_position, gamma_confidence, gamma_consistency}) {
      if (!(g >= 0) || !std::isfinite(g)) throw ConfigError(detail::concat("ranking distillation: γ weights must be >= 0, got ", g));
    }
    if (gamma_position + gamma_confidence + gamma_consistency <= 0) {
      throw ConfigError("ranking distillation: γ_p + γ_c + γ_o must be positive");
    }
  }
};

/// One example's importance weights w[0..K) (summing to 1) from the teacher's scores (best first,
/// in `order`) and whether each candidate is in the student's top-K (nullptr: none is).
template <typename T>
void ranking_weights(const RankingWeightsConfig& config, const float* scores, ScoreOrder order, const unsigned char* in_student_topk,
                     Index k, T* w) {
  constexpr double kFloor = 1e-8;
  double position_total = 0.0, max_s = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < k; ++j) {
    position_total += std::exp(-static_cast<double>(j + 1) / config.lambda_position);
    const double s = order == ScoreOrder::kLowerIsBetter ? -static_cast<double>(scores[j]) : static_cast<double>(scores[j]);
    max_s = std::max(max_s, s);
  }
  double confidence_total = 0.0;
  for (Index j = 0; j < k; ++j) {
    const double s = order == ScoreOrder::kLowerIsBetter ? -static_cast<double>(scores[j]) : static_cast<double>(scores[j]);
    confidence_total += std::exp(s - max_s) + kFloor;
  }
  double total = 0.0;
  for (Index j = 0; j < k; ++j) {
    const double s = order == ScoreOrder::kLowerIsBetter ? -static_cast<double>(scores[j]) : static_cast<double>(scores[j]);
    const double wp = std::exp(-static_cast<double>(j + 1) / config.lambda_position) / position_total;
    const double wc = (std::exp(s - max_s) + kFloor) / confidence_total;
    const double wo = (in_student_topk != nullptr && in_student_topk[j] ? 1.0 : 0.0) + kFloor;
    const double mixed = config.gamma_position * wp + config.gamma_confidence * wc + config.gamma_consistency * wo;
    w[j] = static_cast<T>(mixed);
    total += mixed;
  }
  for (Index j = 0; j < k; ++j) w[j] = static_cast<T>(static_cast<double>(w[j]) / total);
}

/// Item propensities for DROS from the training examples' targets (methods.md §2.5).
inline std::vector<double> dros_propensities(const data::ExampleSplit& split) {
  std::vector<double> counts(static_cast<std::size_t>(split.num_items) + 1, 0.0);
  for (const auto& e : split.train) counts[static_cast<std::size_t>(split.target(e))] += 1.0;
  return loss::dros_propensities(counts);
}

namespace dllm2rec_detail {

/// Back through the head from gradients of full logit rows G [B, N] of h [B, d]: adds G·W to
/// grad_h, Gᵀ·h to the head's weight gradient and G's column sums to its bias gradient.
template <typename T>
void add_full_logit_gradients(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, const ConstMatrixRef<T>& g, MatrixRef<T> grad_h,
                              nn::HeadGradients<T> grad_head) {
  backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), g, head.weight, T(1), grad_h);
  if (grad_head.has_weight()) backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), g, h, T(1), grad_head.weight);
  if (grad_head.bias != nullptr) loss::add_column_sums<T>(g, grad_head.bias);
}

}  // namespace dllm2rec_detail

struct DROSConfig {
  double alpha = 1.0;  // weight of the DRO term (the reference's default; its README uses 0.5)
  double beta = 1.0;   // radius
  void validate() const {
    if (!(alpha > 0) || !std::isfinite(alpha)) throw ConfigError(detail::concat("DROS: alpha must be > 0, got ", alpha));
    if (!(beta > 0) || !std::isfinite(beta)) throw ConfigError(detail::concat("DROS: beta must be > 0, got ", beta));
  }
};

/// DROS's robustness term as a loss term: α · mean over the batch's examples of ℓ(z, target) at
/// each window's newest position (the example's target), with the full catalogue's logits.
template <typename Model>
class DROSTerm : public train::LossTerm<Model> {
 public:
  using T = typename Model::Scalar;

  DROSTerm(const data::ExampleSplit& split, DROSConfig config) : config_(config) {
    config_.validate();
    const auto ps = dros_propensities(split);
    dros_.propensity.assign(ps.begin(), ps.end());
    dros_.beta = config_.beta;
  }

  std::string name() const override { return "dros"; }

  T compute(train::StepContext<Model>& ctx) override {
    const Index b_count = ctx.num_sequences();
    const auto head = ctx.model.output_weights();
    const Index n = head.num_items();
    if (static_cast<Index>(dros_.propensity.size()) != n) {
      throw ShapeError(detail::concat("DROS: the data has ", dros_.propensity.size(), " items, the model ", n));
    }
    if (b_count == 0) return T(0);
    auto logits = logits_.resize(b_count, n);
    serve::score_items<T>(ctx.newest_outputs, head, logits);
    auto g = grads_.zeros(b_count, n);
    losses_.assign(static_cast<std::size_t>(b_count), 0.0);
    scratch_.resize(static_cast<std::size_t>(std::max(1, parallel::max_threads())));
    const T one = T(1);
    parallel::for_each(b_count, b_count * n > 100000 && !parallel::in_parallel(), [&](Index s, int thread) {
      const ItemId target = ctx.split.target(ctx.example(s));
      losses_[static_cast<std::size_t>(s)] =
          dros_.row(logits.row(s).data(), &target, &one, 1, g.row(s).data(), scratch_[static_cast<std::size_t>(thread)]);
    });
    double total = 0.0;
    for (double l : losses_) total += l;
    const auto global = static_cast<double>(ctx.global_sequences());  // a data-parallel shard's global batch
    const double mean = total / global;
    g *= static_cast<T>(config_.alpha / global);
    dllm2rec_detail::add_full_logit_gradients<T>(ctx.newest_outputs, head, g, ctx.grad_newest_outputs, ctx.model.output_gradients());
    report_ += mean;
    ++steps_;
    return static_cast<T>(config_.alpha * mean);
  }

  /// "dro": the mean unweighted ℓ since the last call; resets.
  std::map<std::string, double> take_report() override {
    std::map<std::string, double> out;
    if (steps_ > 0) out["dro"] = report_ / static_cast<double>(steps_);
    report_ = 0.0;
    steps_ = 0;
    return out;
  }

 private:
  DROSConfig config_;
  loss::DROS<T> dros_;
  ScratchMatrix<T> logits_, grads_;
  std::vector<double> losses_;
  std::vector<std::vector<double>> scratch_;
  double report_ = 0.0;
  Index steps_ = 0;
};

struct RankingDistillationConfig {
  Index candidates = 10;             // K teacher candidates per example
  double weight = 0.8;               // λ: weight of L_rd in the total loss
  RankingWeightsConfig weights;
  bool reference_negative = false;   // the reference's -log σ(1 - z_neg) instead of -log(1 - σ(z_neg))
  double dros_alpha = 0.0;           // > 0: add the reference's DRO part, α Σ_k mean_b(w_bk) mean_b(ℓ(z_b, c_bk))
  double dros_beta = 1.0;

  void validate() const {
    if (candidates <= 0) throw ConfigError(detail::concat("ranking distillation: K must be >= 1, got ", candidates));
    if (!(weight >= 0) || !std::isfinite(weight)) throw ConfigError(detail::concat("ranking distillation: λ must be >= 0, got ", weight));
    weights.validate();
    if (!(dros_alpha >= 0) || !std::isfinite(dros_alpha)) throw ConfigError("ranking distillation: the DRO weight must be >= 0");
    if (dros_alpha > 0) DROSConfig{dros_alpha, dros_beta}.validate();
  }
};

template <typename Model>
class RankingDistillation : public train::LossTerm<Model> {
 public:
  using T = typename Model::Scalar;

  /// Checks the signals against the training examples (every example has a list of at least K
  /// items of the data) and keeps them.
  RankingDistillation(std::shared_ptr<const RankingSignals> signals, const data::ExampleSplit& split, RankingDistillationConfig config)
      : config_(config), signals_(std::move(signals)) {
    config_.validate();
    if (!signals_) throw ConfigError("ranking distillation: no teacher ranking");
    row_of_example_ = signals_->match(split, config_.candidates);
    loss_.reference_negative = config_.reference_negative;
    if (config_.dros_alpha > 0) {
      const auto ps = dros_propensities(split);
      dros_.propensity.assign(ps.begin(), ps.end());
      dros_.beta = config_.dros_beta;
    }
  }

  const RankingDistillationConfig& config() const { return config_; }
  std::string name() const override { return "ranking"; }

  T compute(train::StepContext<Model>& ctx) override {
    const Index b_count = ctx.num_sequences(), k = config_.candidates;
    const auto head = ctx.model.output_weights();
    const Index n = head.num_items();
    if (k > n) throw ConfigError(detail::concat("ranking distillation: K = ", k, " is larger than the ", n, " items"));
    candidates_.resize(static_cast<std::size_t>(b_count * k));
    weights_.resize(candidates_.size());
    in_topk_.assign(candidates_.size(), 0);
    negatives_.resize(static_cast<std::size_t>(b_count));
    for (Index s = 0; s < b_count; ++s) {
      const Index e = signal_row(ctx, s);
      std::copy(signals_->items(e), signals_->items(e) + k, candidates_.begin() + s * k);
      negatives_[static_cast<std::size_t>(s)] = negative(ctx, s);
    }
    if (config_.dros_alpha > 0) {
      logits_.resize(b_count, n);
      serve::score_items<T>(ctx.newest_outputs, head, logits_.map());
    } else if (config_.weights.gamma_consistency > 0) {  // the bias is added inside the top-K scan
      logits_.resize(b_count, n);
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), ctx.newest_outputs, head.weight, T(0), logits_.map());
    }
    if (config_.weights.gamma_consistency > 0) mark_student_topk(b_count, k, config_.dros_alpha > 0 ? nullptr : head.bias);
    std::size_t agree = 0;
    for (Index s = 0; s < b_count; ++s) {
      const Index e = signal_row(ctx, s);
      ranking_weights(config_.weights, signals_->scores(e), signals_->order(), in_topk_.data() + s * k, k, weights_.data() + s * k);
    }
    for (unsigned char f : in_topk_) agree += f;
    loss_.weight = static_cast<T>(config_.weight);
    loss_.denominator = ctx.batch.totals.rows;  // the global batch (0 outside a trainer: the rows given)
    T rd = loss_(ctx.newest_outputs, head, k, candidates_, weights_, negatives_, ctx.grad_newest_outputs, ctx.model.output_gradients());
    if (config_.dros_alpha > 0 && b_count > 0) {
      // The reference's DRO part (methods.md §2.6): α Σ_k mean_b(w_bk) · mean_b(ℓ(z_b, c_bk)); the
      // weights do not pair with their own rows, as in the reference.
      if (static_cast<Index>(dros_.propensity.size()) != n) throw ShapeError("ranking distillation: DROS propensities do not match the items");
      coef_.assign(static_cast<std::size_t>(k), T(0));
      for (Index s = 0; s < b_count; ++s) {
        for (Index j = 0; j < k; ++j) coef_[static_cast<std::size_t>(j)] += weights_[static_cast<std::size_t>(s * k + j)];
      }
      ctx.sum_across_shards(coef_.data(), coef_.size());  // mean_b over the global batch
      const auto global = static_cast<double>(ctx.global_sequences());
      for (auto& c : coef_) c = static_cast<T>(config_.dros_alpha * static_cast<double>(c) / (global * global));
      auto g = grads_.zeros(b_count, n);
      const auto logits = logits_.map();
      row_dro_.assign(static_cast<std::size_t>(b_count), 0.0);
      scratch_.resize(static_cast<std::size_t>(std::max(1, parallel::max_threads())));
      parallel::for_each(b_count, b_count * n > 100000 && !parallel::in_parallel(), [&](Index s, int thread) {
        row_dro_[static_cast<std::size_t>(s)] = dros_.row(logits.row(s).data(), candidates_.data() + s * k, coef_.data(), k, g.row(s).data(),
                                                           scratch_[static_cast<std::size_t>(thread)]);
      });
      double dro = 0.0;
      for (double v : row_dro_) dro += v;
      g *= static_cast<T>(config_.weight);
      dllm2rec_detail::add_full_logit_gradients<T>(ctx.newest_outputs, head, g, ctx.grad_newest_outputs, ctx.model.output_gradients());
      rd += static_cast<T>(dro);
      report_dro_ += dro;
    }
    report_rd_ += static_cast<double>(rd);
    if (config_.weights.gamma_consistency > 0 && b_count > 0) {
      report_agreement_ += static_cast<double>(agree) / static_cast<double>(b_count * k);
      ++report_agreement_steps_;
    }
    ++report_steps_;
    return static_cast<T>(config_.weight) * rd;
  }

  /// "rd": mean unweighted L_rd; "agreement": mean share of teacher candidates in the student's
  /// top-K (when the consistency weight is on). Since the last call; resets.
  std::map<std::string, double> take_report() override {
    std::map<std::string, double> out;
    if (report_steps_ > 0) out["rd"] = report_rd_ / static_cast<double>(report_steps_);
    if (report_agreement_steps_ > 0) out["agreement"] = report_agreement_ / static_cast<double>(report_agreement_steps_);
    if (report_steps_ > 0 && config_.dros_alpha > 0) out["dro"] = report_dro_ / static_cast<double>(report_steps_);
    report_rd_ = report_agreement_ = report_dro_ = 0.0;
    report_steps_ = report_agreement_steps_ = 0;
    return out;
  }

 private:
  Index signal_row(const train::StepContext<Model>& ctx, Index s) const {
    const Index example = ctx.example_index(s);
    if (example < 0 || example >= static_cast<Index>(row_of_example_.size())) {
      throw ShapeError(detail::concat("ranking distillation: training example ", example, " has no teacher ranking"));
    }
    return row_of_example_[static_cast<std::size_t>(example)];
  }

  /// The base objective's first negative at sequence s's newest position, or one drawn uniformly
  /// from the items outside the example's history and target.
  ItemId negative(train::StepContext<Model>& ctx, Index s) const {
    const Index token = ctx.layout().last(s);
    if (ctx.num_negatives > 0) {
      Index row = token;
      if (ctx.targets.size() != static_cast<std::size_t>(ctx.outputs.rows())) {  // gathered prediction rows
        const auto it = std::lower_bound(ctx.prediction_rows.begin(), ctx.prediction_rows.end(), token);
        if (it == ctx.prediction_rows.end() || *it != token) {
          throw ShapeError(detail::concat("ranking distillation: the newest position of sequence ", s, " has no target"));
        }
        row = static_cast<Index>(it - ctx.prediction_rows.begin());
      }
      return ctx.negatives[static_cast<std::size_t>(row * ctx.num_negatives)];
    }
    const data::Example& example = ctx.example(s);
    const ItemId target = ctx.split.target(example), n = ctx.model.num_items();
    const ItemId* begin = ctx.split.history_begin(example);
    const ItemId* end = ctx.split.history_end(example);
    return ctx.draw_for_sequence(s, /*purpose=*/1, [&](Rng& rng) {
      for (int attempt = 0; attempt < 100; ++attempt) {
        const auto item = static_cast<ItemId>(rng.uniform_int(std::int64_t{1}, static_cast<std::int64_t>(n)));
        if (item != target && std::find(begin, end, item) == end) return item;
      }
      return ItemId{kPaddingId};  // the example has (almost) every item in its history: no negative part
    });
  }

  /// in_topk_[s*K + j] = whether candidate j of sequence s is among the student's K best items
  /// over the whole catalogue (serve::top_k: ties rank the lower item id first), from logits_.
  /// `bias`: added to logits_ on the fly (nullptr: logits_ already carries it, or there is none).
  void mark_student_topk(Index b_count, Index k, const T* bias) {
    auto logits = logits_.map();
    const Index n = logits.cols();
    top_.resize(static_cast<std::size_t>(std::max(1, parallel::max_threads())));
    parallel::for_each(b_count, b_count * n > 100000 && !parallel::in_parallel(), [&](Index s, int thread) {
      auto& best = top_[static_cast<std::size_t>(thread)];
      serve::top_k(logits.row(s).data(), bias, n, k, best);
      for (Index j = 0; j < k; ++j) {
        const ItemId c = candidates_[static_cast<std::size_t>(s * k + j)];
        bool found = false;
        for (const auto& item : best) found = found || item.item == c;
        in_topk_[static_cast<std::size_t>(s * k + j)] = found ? 1 : 0;
      }
    });
  }

  RankingDistillationConfig config_;
  std::shared_ptr<const RankingSignals> signals_;
  std::vector<Index> row_of_example_;
  loss::RankingDistillationLoss<T> loss_;
  std::vector<ItemId> candidates_, negatives_;
  std::vector<T> weights_;
  std::vector<unsigned char> in_topk_;
  ScratchMatrix<T> logits_;
  std::vector<std::vector<serve::ScoredItem>> top_;
  loss::DROS<T> dros_;
  ScratchMatrix<T> grads_;
  std::vector<T> coef_;
  std::vector<double> row_dro_;
  std::vector<std::vector<double>> scratch_;
  double report_rd_ = 0.0, report_agreement_ = 0.0, report_dro_ = 0.0;
  Index report_steps_ = 0, report_agreement_steps_ = 0;
};

/// Export: the model's top-K over the full catalogue for every example of `part` (as a teacher's
/// ranking: scores are the model's, higher is better), keyed by the examples' ids. The history is
/// not masked unless mask_history (the reference's teacher does not filter its candidates).
/// Parallel over blocks of examples.
template <typename Model>
RankingSignals compute_ranking_signals(const Model& model, const data::ExampleSplit& split, Index k,
                                       data::Part part = data::Part::kTrain, bool mask_history = false,
                                       Index block_examples = 256, Collective* collective = nullptr) {
  static_assert(models::check_scoring_model<Model>());
  using T = typename Model::Scalar;
  const Index n = model.num_items();
  if (split.num_items != n) {
    throw ShapeError(detail::concat("ranking export: the data has ", split.num_items, " items, the model ", n));
  }
  if (k <= 0 || k > n) throw ConfigError(detail::concat("ranking export: K = ", k, " must be in 1..", n, " (the items)"));
  const auto& examples = split.examples(part);
  const auto count = static_cast<Index>(examples.size());
  std::vector<ItemId> items(static_cast<std::size_t>(count * k));
  // with a collective, other processes' entries stay -0.0: the sum then gives each value bit for bit
  std::vector<float> scores(items.size(), collective != nullptr ? -0.0f : 0.0f);
  const auto head = model.output_weights();
  const int shards = collective != nullptr ? collective->size() : 1;
  const int shard = collective != nullptr ? collective->rank() : 0;
  run_agreeing_on_failure(collective, "teacher rankings", [&] {
    eval::for_each_encoded_block(model, split, examples, block_examples,
                                 [&](Index begin, Index end, const std::vector<Sequence>& histories, const Matrix<T>& users,
                                     Matrix<T>& block_scores) {
                                   block_scores.resize(end - begin, n);
                                   serve::score_items<T>(users, head, block_scores);
                                   std::vector<serve::ScoredItem> best;
                                   for (Index i = begin; i < end; ++i) {
                                     if (mask_history) serve::mask_items<T>(block_scores, i - begin, histories[static_cast<std::size_t>(i - begin)]);
                                     serve::top_k(block_scores.row(i - begin).data(), n, k, best);
                                     if (static_cast<Index>(best.size()) < k) {
                                       throw ConfigError(detail::concat("ranking export: example ", examples[static_cast<std::size_t>(i)].id,
                                                                        " has fewer than K = ", k, " unmasked items"));
                                     }
                                     for (Index r = 0; r < k; ++r) {
                                       items[static_cast<std::size_t>(i * k + r)] = best[static_cast<std::size_t>(r)].item;
                                       scores[static_cast<std::size_t>(i * k + r)] = best[static_cast<std::size_t>(r)].score;
                                     }
                                   }
                                 }, shard, shards);
  });
  if (shards > 1) {  // every process gets every block: one sum (each value is one process's plus zeros, -0.0 for scores)
    std::vector<double> ids(items.begin(), items.end());
    collective->sum(ids.data(), ids.size());
    std::transform(ids.begin(), ids.end(), items.begin(), [](double v) { return static_cast<ItemId>(v); });
    collective->sum(scores.data(), scores.size());
  }
  RankingSignals ranking(k, ScoreOrder::kHigherIsBetter, "exported from a model");
  for (Index i = 0; i < count; ++i) {
    ranking.add(examples[static_cast<std::size_t>(i)].id, items.data() + i * k, scores.data() + i * k);
  }
  return ranking;
}

/// Export: the model's item embeddings as a teacher's: the rows its output head scores items with
/// (for a tied head, the item embedding table), [N, d].
template <typename Model>
TeacherItemEmbeddings model_item_embeddings(const Model& model) {
  static_assert(models::check_scoring_model<Model>());
  const auto head = model.output_weights();
  TeacherItemEmbeddings out{head.weight.template cast<float>(), "exported from a model"};
  return out;
}

}  // namespace distillrec::distill
