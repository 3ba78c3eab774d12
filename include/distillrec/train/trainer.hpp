// distillrec/train/trainer.hpp
//
// The training loop for next-item sequence models (SASRec and the models built like it):
// epochs of shuffled batches (data/batcher.hpp) -> forward_train -> objective
// (train/objective.hpp) -> backward -> optional gradient clipping -> Adam step under a
// learning-rate schedule. Every `eval_every` epochs the model is evaluated on the validation
// targets with full ranking; the best parameters by `selection_metric` are kept and restored at
// the end; training stops early after `patience` validations without improvement. The test
// split is never looked at here.
//
// An auxiliary loss (set_auxiliary_loss; e.g. distillation) runs after the objective at every
// step: it returns its part of the loss and leaves its gradients where the model's backward
// picks them up (LLMRec::hidden_state_grad) or directly in the parameter gradients.
//
// Progress goes to `log` (per epoch: loss, seconds, steps/s, validation metrics, ETA; with
// log_every_steps > 0 also within an epoch). A non-finite loss stops training with an Error
// naming the epoch and step.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/optim/adam.hpp"
#include "distillrec/optim/clip.hpp"
#include "distillrec/optim/schedule.hpp"
#include "distillrec/train/objective.hpp"
#include "distillrec/train/progress.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::train {

struct TrainerConfig {
  Index epochs = 200;
  Index batch_size = 128;
  Index num_negatives = 1;  // bce: negatives per position
  ObjectiveConfig objective;
  optim::AdamConfig adam{1e-3, 0.9, 0.98, 1e-8, 0.0, false};
  Index warmup_steps = 0;    // linear warm-up, then constant or cosine
  bool cosine_decay = false;
  double clip_norm = 0.0;    // 0: no clipping
  Index eval_every = 1;      // validate every k epochs; 0: never (keeps the last epoch)
  Index patience = 5;        // validations without improvement before stopping; 0: never stop early
  std::string selection_metric = "NDCG@10";
  eval::FullRankingOptions validation;
  std::uint64_t seed = 42;
  std::ostream* log = &std::cout;  // nullptr: silent
  Index log_every_steps = 0;

  void validate() const {
    if (epochs <= 0) throw ConfigError(detail::concat("trainer: epochs must be positive, got ", epochs));
    if (batch_size <= 0) throw ConfigError(detail::concat("trainer: batch size must be positive, got ", batch_size));
    if (num_negatives <= 0) throw ConfigError("trainer: num_negatives must be positive");
    if (eval_every < 0 || patience < 0 || warmup_steps < 0) {
      throw ConfigError("trainer: eval_every, patience and warmup_steps must be >= 0");
    }
    if (!(clip_norm >= 0.0)) throw ConfigError("trainer: clip_norm must be >= 0");
    adam.validate();
  }
};

struct EpochRecord {
  Index epoch = 0;            // 1-based
  double loss = 0.0;          // mean over the epoch's steps
  double seconds = 0.0;       // training only (validation excluded)
  double steps_per_second = 0.0;
  double learning_rate = 0.0; // at the end of the epoch
  std::optional<eval::EvaluationResult> validation;

  nlohmann::json to_json() const {
    nlohmann::json j{{"epoch", epoch}, {"loss", loss}, {"seconds", seconds}, {"steps_per_second", steps_per_second},
                     {"learning_rate", learning_rate}};
    if (validation) j["validation"] = validation->to_json();
    return j;
  }
};

struct TrainingSummary {
  std::vector<EpochRecord> epochs;
  Index best_epoch = 0;
  double best_score = 0.0;
  std::string selection_metric;
  bool stopped_early = false;
  double train_seconds = 0.0;       // sum of epoch training times
  double validation_seconds = 0.0;

  /// Median seconds per training epoch.
  double median_epoch_seconds() const {
    std::vector<double> s;
    for (const auto& e : epochs) s.push_back(e.seconds);
    if (s.empty()) return 0.0;
    std::sort(s.begin(), s.end());
    return s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  }

  nlohmann::json to_json() const {
    nlohmann::json history = nlohmann::json::array();
    for (const auto& e : epochs) history.push_back(e.to_json());
    return nlohmann::json{{"epochs", history},
                          {"best_epoch", best_epoch},
                          {"best_validation_score", best_score},
                          {"selection_metric", selection_metric},
                          {"stopped_early", stopped_early},
                          {"train_seconds", train_seconds},
                          {"validation_seconds", validation_seconds},
                          {"median_epoch_seconds", median_epoch_seconds()}};
  }
};

/// Training occurrences of every item (index = item id), from training sequences.
inline std::vector<double> item_counts(const std::vector<Sequence>& sequences, ItemId num_items) {
  std::vector<double> counts(static_cast<std::size_t>(num_items) + 1, 0.0);
  for (const auto& s : sequences)
    for (ItemId i : s)
      if (i >= 1 && i <= num_items) counts[static_cast<std::size_t>(i)] += 1.0;
  return counts;
}

template <typename Model>
class Trainer {
 public:
  using T = typename Model::Scalar;

  Trainer(Model& model, const data::LeaveOneOutSplit& split, TrainerConfig config)
      : model_(model), split_(split), config_(std::move(config)), adam_(config_.adam),
        objective_(config_.objective, item_counts(split.train, split.num_items)), rng_(config_.seed) {
    config_.validate();
    if (split.num_items != model.num_items()) {
      throw ShapeError(detail::concat("trainer: the data has ", split.num_items, " items, the model ", model.num_items()));
    }
    data::BatcherConfig batcher;
    batcher.batch_size = config_.batch_size;
    batcher.max_length = model.config().max_length;
    batcher.num_negatives = config_.objective.objective == Objective::kBce ? config_.num_negatives : 1;
    batcher.seed = config_.seed;
    batcher_.emplace(split.train, split.num_items, batcher);
    if (batcher_->num_training_users() == 0) {
      throw ConfigError("trainer: no user has at least 2 training items; there is nothing to train on");
    }
    adam_state_ = adam_.make_state(model.parameters());
    total_steps_ = config_.epochs * batcher_->batches_per_epoch();
  }

  /// Extra loss terms computed after the objective at every step (see the header comment).
  using AuxiliaryLoss = std::function<T(Model&, typename Model::Workspace&, const data::TrainingBatch&)>;
  void set_auxiliary_loss(AuxiliaryLoss loss) { auxiliary_ = std::move(loss); }

  /// Called after every epoch (after validation, if any); return false to stop training.
  void on_epoch_end(std::function<bool(const EpochRecord&)> callback) { callback_ = std::move(callback); }

  const TrainerConfig& config() const { return config_; }
  Index steps_per_epoch() const { return batcher_->batches_per_epoch(); }

  /// Trains, validates, keeps and finally restores the best parameters.
  TrainingSummary fit() {
    TrainingSummary summary;
    summary.selection_metric = config_.selection_metric;
    Index validations_without_improvement = 0;
    std::optional<Parameters<T>> best;
    ProgressPrinter progress(config_.log);
    progress.line(detail::concat("training: ", batcher_->num_training_users(), " users, ", steps_per_epoch(),
                                 " steps per epoch, objective ", to_string(config_.objective.objective), ", ",
                                 parallel::max_threads(), " threads"));
    for (Index epoch = 1; epoch <= config_.epochs; ++epoch) {
      EpochRecord record = train_epoch(epoch, progress);
      summary.train_seconds += record.seconds;
      const bool validate_now = config_.eval_every > 0 && (epoch % config_.eval_every == 0 || epoch == config_.epochs);
      bool stop = false;
      if (validate_now) {
        const auto start = std::chrono::steady_clock::now();
        record.validation = eval::evaluate_full_ranking(model_, split_, eval::EvalSplit::kValid, config_.validation);
        summary.validation_seconds += seconds_since(start);
        const double score = record.validation->value(config_.selection_metric);
        if (summary.best_epoch == 0 || score > summary.best_score) {
          summary.best_epoch = epoch;
          summary.best_score = score;
          if (!best) best.emplace(model_.parameters());
          best->copy_values_from(model_.parameters());
          validations_without_improvement = 0;
        } else {
          ++validations_without_improvement;
          if (config_.patience > 0 && validations_without_improvement >= config_.patience) stop = true;
        }
      }
      const double mean_epoch = (summary.train_seconds + summary.validation_seconds) / static_cast<double>(epoch);
      progress.epoch(record, config_.epochs, summary.best_epoch, summary.best_score, config_.selection_metric,
                     mean_epoch * static_cast<double>(config_.epochs - epoch));
      summary.epochs.push_back(record);
      if (callback_ && !callback_(record)) stop = true;
      if (stop) {
        summary.stopped_early = epoch < config_.epochs;
        if (summary.stopped_early) {
          progress.line(detail::concat("early stop: no improvement of ", config_.selection_metric, " in ",
                                       validations_without_improvement, " validations"));
        }
        break;
      }
    }
    if (best) {
      model_.parameters().copy_values_from(*best);
      progress.line(detail::concat("restored the best epoch ", summary.best_epoch, " (valid ", config_.selection_metric,
                                   " ", summary.best_score, ")"));
    } else {
      summary.best_epoch = static_cast<Index>(summary.epochs.size());
    }
    return summary;
  }

  /// One pass over the training users; returns the epoch's record (no validation).
  EpochRecord train_epoch(Index epoch, ProgressPrinter& progress) {
    const auto start = std::chrono::steady_clock::now();
    batcher_->start_epoch(static_cast<std::uint64_t>(epoch - 1));
    double loss_sum = 0.0;
    Index steps = 0;
    auto& params = model_.parameters();
    double lr = config_.adam.learning_rate;
    while (batcher_->next(batch_)) {
      params.zero_grad();
      const auto hidden = model_.forward_train(batch_, rng_, workspace_);
      auto grad_hidden = grad_hidden_.resize(hidden.rows(), hidden.cols());
      T loss = objective_.compute(hidden, model_.item_table(), workspace_.targets, workspace_.negatives,
                                  workspace_.num_negatives, grad_hidden, model_.item_table_grad(), rng_);
      if (auxiliary_) loss += auxiliary_(model_, workspace_, batch_);
      if (!std::isfinite(static_cast<double>(loss))) {
        throw Error(detail::concat("training diverged: loss is ", loss, " at epoch ", epoch, ", step ", steps + 1,
                                   " (lower the learning rate, or enable gradient clipping)"));
      }
      model_.backward(grad_hidden, workspace_);
      if (config_.clip_norm > 0.0) optim::clip_gradient_norm(params, config_.clip_norm);
      lr = learning_rate(global_step_);
      adam_.step(params, adam_state_, lr);
      ++global_step_;
      loss_sum += static_cast<double>(loss);
      ++steps;
      if (config_.log_every_steps > 0 && steps % config_.log_every_steps == 0) {
        progress.step(epoch, steps, steps_per_epoch(), loss_sum / static_cast<double>(steps), seconds_since(start));
      }
    }
    EpochRecord record;
    record.epoch = epoch;
    record.loss = steps > 0 ? loss_sum / static_cast<double>(steps) : 0.0;
    record.seconds = seconds_since(start);
    record.steps_per_second = record.seconds > 0 ? static_cast<double>(steps) / record.seconds : 0.0;
    record.learning_rate = lr;
    return record;
  }

 private:
  static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  double learning_rate(long step) const {
    const double base = config_.adam.learning_rate;
    if (config_.cosine_decay) {
      optim::WarmupCosineSchedule schedule{base, static_cast<long>(config_.warmup_steps), static_cast<long>(total_steps_), 0.0};
      return schedule(step);
    }
    if (step < config_.warmup_steps) return base * static_cast<double>(step + 1) / static_cast<double>(config_.warmup_steps);
    return base;
  }

  Model& model_;
  const data::LeaveOneOutSplit& split_;
  TrainerConfig config_;
  optim::Adam adam_;
  optim::AdamState<T> adam_state_;
  NextItemObjective<T> objective_;
  Rng rng_;
  std::optional<data::SequenceBatcher> batcher_;
  data::TrainingBatch batch_;
  typename Model::Workspace workspace_;
  ScratchMatrix<T> grad_hidden_;
  long global_step_ = 0;
  Index total_steps_ = 0;
  std::function<bool(const EpochRecord&)> callback_;
  AuxiliaryLoss auxiliary_;
};

}  // namespace distillrec::train
