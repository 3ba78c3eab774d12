// distillrec/train/info_nce_term.hpp
//
// InfoNCE (loss/info_nce.hpp) as a loss term over a model's item table, as HLLM's code trains
// its ID-based baselines (methods.md §3.10) and, with item embeddings from an item model, HLLM
// itself: at every position that predicts, the model's output is the query, the target item's
// row of the output head's table the positive, and a pool of `negatives` items drawn uniformly
// from 1..N at each step (HLLM's --num_negatives mode: nothing excluded; a drawn negative that is
// the target is removed by the false-negative filter, its cosine with the positive being 1) is
// shared by every position of the batch. The term owns the learnable log-scale
// ("info_nce.log_scale", initial ln(1 / 0.07), clamped to [0, ln 100] before each use, as HLLM
// clamps it), so the optimiser, checkpoints and the best-epoch snapshot keep it with the model.
//
//   trainer.add_term(std::make_unique<train::InfoNceTerm<models::SASRec<float>>>(config));
//
// Gradients go to the outputs, to the head's table rows of the positives and negatives (the bias,
// if any, is not used) and to the log-scale. The report gives the term's loss, the scale, the
// negatives kept per position and the fraction of positions whose target beats every negative.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/loss/info_nce.hpp"
#include "distillrec/train/loss_term.hpp"

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace distillrec::train {

struct InfoNceTermConfig {
  double weight = 1.0;     // the term's weight in the total loss
  Index negatives = 512;   // the pool shared by a step's positions
  loss::InfoNceConfig loss;

  void validate() const {
    if (!(weight >= 0.0) || !std::isfinite(weight)) {
      throw ConfigError(distillrec::detail::concat("InfoNCE term: the weight must be finite and >= 0, got ", weight));
    }
    if (negatives < 1) throw ConfigError(distillrec::detail::concat("InfoNCE term: needs at least one negative, got ", negatives));
    loss.validate();
  }
};

template <typename Model>
class InfoNceTerm : public LossTerm<Model> {
 public:
  using T = typename Model::Scalar;

  explicit InfoNceTerm(const InfoNceTermConfig& config = {})
      : config_(config), loss_((config.validate(), config.loss)), params_(std::make_unique<Parameters<T>>()) {
    log_scale_ = params_->declare("info_nce.log_scale", 1, 1);
    params_->allocate();
    params_->value(log_scale_)(0, 0) = static_cast<T>(config_.loss.initial_log_scale());
  }

  std::string name() const override { return "info_nce"; }
  Parameters<T>* parameters() override { return params_.get(); }
  const InfoNceTermConfig& config() const { return config_; }

  /// The current scale exp(l) (l clamped).
  double scale() const { return std::exp(config_.loss.clamp_log_scale(static_cast<double>(params_->value(log_scale_)(0, 0)))); }

  T compute(StepContext<Model>& ctx) override {
    const auto head = ctx.model.output_weights();
    const Index num_items = head.num_items(), dim = head.dim();
    if (ctx.outputs.cols() != dim) {
      throw ShapeError(distillrec::detail::concat("InfoNCE term: the model's outputs have ", ctx.outputs.cols(),
                                                  " columns but its item table ", dim));
    }
    // The pool is drawn first, even for a shard with no positions (a data-parallel run's last
    // batch): every process's generator then stays in step with one process's.
    const Index pool = config_.negatives;
    pool_.resize(static_cast<std::size_t>(pool));
    for (Index m = 0; m < pool; ++m) {
      pool_[static_cast<std::size_t>(m)] = static_cast<ItemId>(ctx.rng.uniform_int(std::int64_t{1}, static_cast<std::int64_t>(num_items)));
    }
    const Index rows = static_cast<Index>(ctx.prediction_rows.size());
    if (rows == 0) return T(0);
    const bool per_token = ctx.targets.size() == static_cast<std::size_t>(ctx.outputs.rows());
    auto queries = queries_.resize(rows, dim), positives = positives_.resize(rows, dim);
    targets_.resize(static_cast<std::size_t>(rows));
    for (Index j = 0; j < rows; ++j) {
      const Index token = ctx.prediction_rows[static_cast<std::size_t>(j)];
      const ItemId target = ctx.targets[static_cast<std::size_t>(per_token ? token : j)];
      if (target < 1 || target > num_items) {
        throw ShapeError(distillrec::detail::concat("InfoNCE term: target item ", target, " of position ", token, " is outside 1..", num_items));
      }
      targets_[static_cast<std::size_t>(j)] = target;
      queries.row(j) = ctx.outputs.row(token);
      positives.row(j) = head.weight.row(target - 1);
    }
    auto negatives = negatives_.resize(pool, dim);
    for (Index m = 0; m < pool; ++m) negatives.row(m) = head.weight.row(pool_[static_cast<std::size_t>(m)] - 1);
    // l is clamped in place before use, as HLLM does.
    T& l = params_->value(log_scale_)(0, 0);
    l = static_cast<T>(config_.loss.clamp_log_scale(static_cast<double>(l)));
    auto dq = grad_queries_.resize(rows, dim), dp = grad_positives_.resize(rows, dim), dn = grad_negatives_.resize(pool, dim);
    T dl = T(0);
    loss::InfoNceStats stats;
    const T value = loss_(queries, positives, negatives, no_mask_, l, dq, dp, dn, &dl, ws_, &stats, ctx.global_predictions());
    const T w = static_cast<T>(config_.weight);
    for (Index j = 0; j < rows; ++j) ctx.grad_outputs.row(ctx.prediction_rows[static_cast<std::size_t>(j)]) += w * dq.row(j);
    auto grad_head = ctx.model.output_gradients();
    if (grad_head.has_weight()) {
      for (Index j = 0; j < rows; ++j) grad_head.weight.row(targets_[static_cast<std::size_t>(j)] - 1) += w * dp.row(j);
      for (Index m = 0; m < pool; ++m) grad_head.weight.row(pool_[static_cast<std::size_t>(m)] - 1) += w * dn.row(m);
    }
    params_->grad(log_scale_)(0, 0) += w * dl;
    report_.loss += static_cast<double>(value);
    report_.kept += stats.surviving_negatives;
    report_.accuracy += stats.accuracy;
    report_.scale += std::exp(static_cast<double>(l));
    report_.steps += 1;
    return w * value;
  }

  std::map<std::string, double> take_report() override {
    std::map<std::string, double> out;
    if (report_.steps > 0) {
      const double n = static_cast<double>(report_.steps);
      out["loss"] = report_.loss / n;
      out["scale"] = report_.scale / n;
      out["kept"] = report_.kept / n;
      out["accuracy"] = report_.accuracy / n;
    }
    report_ = Report{};
    return out;
  }

 private:
  struct Report {
    double loss = 0.0, scale = 0.0, kept = 0.0, accuracy = 0.0;
    Index steps = 0;
  };

  InfoNceTermConfig config_;
  loss::InfoNce<T> loss_;
  typename loss::InfoNce<T>::Workspace ws_;
  std::unique_ptr<Parameters<T>> params_;
  typename Parameters<T>::Id log_scale_ = -1;
  ScratchMatrix<T> queries_, positives_, negatives_, grad_queries_, grad_positives_, grad_negatives_;
  std::vector<ItemId> targets_, pool_;
  std::vector<std::uint8_t> no_mask_;
  Report report_;
};

}  // namespace distillrec::train
