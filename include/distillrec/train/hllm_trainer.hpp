// distillrec/train/hllm_trainer.hpp
//
// Trains HLLM (models/hllm.hpp) end to end, item LLM and user LLM together, with InfoNCE, as
// HLLM's code does (methods.md §3.6-3.8): AdamW, linear warm-up then cosine decay of the
// learning rate, gradient-norm clipping, a learnable temperature, a pool of `negatives` items
// shared by the batch each step.
//
//   train::HllmTrainerConfig training;
//   training.epochs = 10;
//   train::HllmTrainer<float> trainer(hllm, split, training);   // split: data::ExampleSplit
//   const auto history = trainer.fit();   // best validation epoch restored, table refreshed
//
// Each training example (data/examples.hpp) gives one window: the newest max_length items of its
// history followed by its target; with every-position supervision every position of the window
// predicts the next item (leave-one-out: SASRec's training), with newest-position supervision
// only the target is predicted. Negatives are drawn uniformly, with replacement, from the items
// that occur in the training examples (so items held out of training, cold-start items, are
// never seen, not even as negatives); a drawn negative equal to a target is removed for that row
// by InfoNCE's false-negative filter (its cosine with the positive is 1).
//
// After each epoch (every eval_every) the item table is refreshed and the validation examples
// are ranked against every item (eval/full_ranking.hpp, history masked); the best epoch's
// weights are kept and restored at the end (patience: epochs without improvement before
// stopping). Progress: one line per epoch (loss, in-batch accuracy, temperature, sequences/s,
// validation) and a line every `log_every_steps` steps within an epoch.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/loss/info_nce.hpp"
#include "distillrec/models/hllm.hpp"
#include "distillrec/optim/adam.hpp"
#include "distillrec/optim/clip.hpp"
#include "distillrec/optim/schedule.hpp"
#include "distillrec/train/progress.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace distillrec::train {

struct HllmTrainerConfig {
  Index epochs = 10;
  Index batch_size = 32;           // training examples (windows) per step
  Index negatives = 256;           // the pool shared by a step's positions
  /// AdamW as HLLM trains (weight decay 0.01 decoupled); the schedule scales learning_rate.
  optim::AdamConfig adam{1e-3, 0.9, 0.98, 1e-8, 0.01, true};
  double warmup_fraction = 0.05;   // of all steps, linear warm-up; then cosine decay to 0
  double clip_norm = 1.0;          // 0: no clipping
  loss::InfoNceConfig loss;
  Index eval_every = 1;            // 0: never validate (the last epoch's weights are kept)
  Index patience = 3;              // validations without improvement before stopping (0: never)
  std::string selection_metric = "NDCG@10";
  eval::FullRankingOptions validation;
  Index log_every_steps = 0;       // 0: only the epoch lines
  std::uint64_t seed = 42;
  std::ostream* log = &std::cout;  // nullptr: silent

  void validate() const {
    if (epochs <= 0) throw ConfigError(distillrec::detail::concat("HLLM trainer: epochs must be positive, got ", epochs));
    if (batch_size <= 0) throw ConfigError(distillrec::detail::concat("HLLM trainer: batch size must be positive, got ", batch_size));
    if (negatives <= 0) throw ConfigError(distillrec::detail::concat("HLLM trainer: negatives must be positive, got ", negatives));
    if (!(warmup_fraction >= 0.0 && warmup_fraction <= 1.0)) {
      throw ConfigError(distillrec::detail::concat("HLLM trainer: warmup_fraction must be in [0, 1], got ", warmup_fraction));
    }
    if (!(clip_norm >= 0.0)) throw ConfigError("HLLM trainer: clip_norm must be >= 0");
    if (eval_every < 0 || patience < 0 || log_every_steps < 0) {
      throw ConfigError("HLLM trainer: eval_every, patience and log_every_steps must be >= 0");
    }
    adam.validate();
    loss.validate();
  }
};

/// One epoch's record.
struct HllmEpochRecord {
  Index epoch = 0;
  double loss = 0.0;              // mean InfoNCE over the epoch's steps
  double accuracy = 0.0;          // positions whose target beats every kept negative
  double kept_negatives = 0.0;    // negatives per position after the false-negative filter (few
                                  // while the item embeddings are still alike: the loss can rise
                                  // at first as they separate)
  double scale = 0.0;             // the temperature's inverse at the epoch's end
  double seconds = 0.0;           // training (without validation)
  double sequences_per_second = 0.0;
  double validation_seconds = 0.0;
  std::optional<eval::EvaluationResult> validation;
};

template <typename T = float>
class HllmTrainer {
 public:
  HllmTrainer(models::Hllm<T>& model, data::ExampleSplit split, HllmTrainerConfig config)
      : model_(model), split_(std::move(split)), config_((config.validate(), config)), nce_(config_.loss), adam_(config_.adam) {
    split_.validate();
    if (split_.num_items != model_.num_items()) {
      throw ShapeError(distillrec::detail::concat("HLLM trainer: the data has ", split_.num_items, " items, the model ", model_.num_items()));
    }
    if (split_.train.empty()) throw ConfigError("HLLM trainer: " + split_.source + " has no training examples");
    if (!model_.has_item_tokens()) throw ConfigError("HLLM trainer: the model has no item texts (Hllm::set_item_tokens)");
    std::vector<char> seen(static_cast<std::size_t>(split_.num_items) + 1, 0);
    for (const auto& e : split_.train) {
      const Index begin = std::max<Index>(0, e.end - model_.max_length());
      for (Index k = begin; k <= e.end; ++k) seen[static_cast<std::size_t>(split_.sequence(e.user)[static_cast<std::size_t>(k)])] = 1;
    }
    for (ItemId i = 1; i <= split_.num_items; ++i) {
      if (seen[static_cast<std::size_t>(i)]) negative_candidates_.push_back(i);
    }
    log_scale_ = static_cast<T>(config_.loss.initial_log_scale());
  }

  /// The temperature's log-inverse (clamped before each use), learnt with the weights.
  T log_scale() const { return log_scale_; }

  /// Trains; returns one record per epoch. The best validated epoch's weights (and temperature)
  /// are restored and the item table refreshed before returning.
  std::vector<HllmEpochRecord> fit() {
    using Clock = std::chrono::steady_clock;
    ProgressPrinter progress(config_.log);
    auto& params = model_.parameters();
    auto adam_state = adam_.make_state(params);
    T scale_m = 0, scale_v = 0;
    const Index examples = static_cast<Index>(split_.train.size());
    const Index steps_per_epoch = (examples + config_.batch_size - 1) / config_.batch_size;
    optim::WarmupCosineSchedule schedule;
    schedule.learning_rate = config_.adam.learning_rate;
    schedule.total_steps = steps_per_epoch * config_.epochs;
    schedule.warmup_steps = static_cast<long>(std::floor(config_.warmup_fraction * static_cast<double>(schedule.total_steps)));
    schedule.validate();
    {
      char buffer[256];
      std::snprintf(buffer, sizeof(buffer),
                    "HLLM: %ld training windows, %ld steps/epoch of %ld, %ld negatives from %zu items, %ld trainable parameters",
                    static_cast<long>(examples), static_cast<long>(steps_per_epoch), static_cast<long>(config_.batch_size),
                    static_cast<long>(config_.negatives), negative_candidates_.size(), static_cast<long>(params.num_trainable_scalars()));
      progress.line(buffer);
    }

    Rng rng(config_.seed);
    Rng dropout_rng = Rng(config_.seed).derive(0x4c6f5241);  // LoRA dropout masks (a stream of their own)
    const nn::RunMode mode = nn::RunMode::train(dropout_rng);
    std::vector<Index> order(static_cast<std::size_t>(examples));
    std::iota(order.begin(), order.end(), Index{0});
    std::vector<Sequence> batch;
    std::vector<ItemId> negatives(static_cast<std::size_t>(config_.negatives));
    typename models::Hllm<T>::TrainWorkspace ws;
    std::vector<HllmEpochRecord> history;
    std::vector<T> best_values;
    T best_log_scale = log_scale_;
    double best_score = -1.0;
    Index best_epoch = 0, since_best = 0;
    long step = 0;
    const bool every = split_.supervision == data::Supervision::kEveryPosition;

    for (Index epoch = 1; epoch <= config_.epochs; ++epoch) {
      HllmEpochRecord record;
      record.epoch = epoch;
      for (Index k = examples - 1; k > 0; --k) {  // Fisher-Yates
        std::swap(order[static_cast<std::size_t>(k)], order[static_cast<std::size_t>(rng.uniform_int(static_cast<std::uint64_t>(k + 1)))]);
      }
      const auto start = Clock::now();
      double loss_sum = 0.0, accuracy_sum = 0.0, kept_sum = 0.0;
      for (Index s = 0; s < steps_per_epoch; ++s) {
        batch.clear();
        const Index begin = s * config_.batch_size, end = std::min(examples, begin + config_.batch_size);
        for (Index k = begin; k < end; ++k) {
          const auto& e = split_.train[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])];
          Sequence window = split_.window(e, model_.max_length());
          window.push_back(split_.target(e));
          batch.push_back(std::move(window));
        }
        for (auto& n : negatives) {
          n = negative_candidates_[static_cast<std::size_t>(rng.uniform_int(static_cast<std::uint64_t>(negative_candidates_.size())))];
        }
        params.zero_grad();
        T grad_log_scale = 0;
        loss::InfoNceStats stats;
        const T value = model_.train_step(batch, every, negatives, nce_, log_scale_, &grad_log_scale, ws, &stats, 0, mode);
        if (!std::isfinite(static_cast<double>(value))) {
          throw Error(distillrec::detail::concat("HLLM trainer: the loss is not finite at epoch ", epoch, " step ", s + 1));
        }
        // The temperature's gradient is clipped with the weights' (one global norm, as
        // torch.nn.utils.clip_grad_norm_ over every parameter).
        const double norm = std::sqrt(std::pow(optim::gradient_norm(params), 2) + static_cast<double>(grad_log_scale) * grad_log_scale);
        if (!std::isfinite(norm)) {
          throw Error(distillrec::detail::concat("HLLM trainer: the gradient is not finite at epoch ", epoch, " step ", s + 1,
                                                 " (the weights were not updated)"));
        }
        if (config_.clip_norm > 0.0) {
          if (norm > config_.clip_norm) {
            const T factor = static_cast<T>(config_.clip_norm / (norm + 1e-6));
            params.flat_grads() *= factor;
            grad_log_scale *= factor;
          }
        }
        const double lr = schedule(step);
        adam_.step(params, adam_state, lr);
        adam_scalar(log_scale_, grad_log_scale, scale_m, scale_v, adam_state.step, lr);
        log_scale_ = static_cast<T>(config_.loss.clamp_log_scale(static_cast<double>(log_scale_)));
        ++step;
        loss_sum += static_cast<double>(value);
        accuracy_sum += stats.accuracy;
        kept_sum += stats.surviving_negatives;
        if (config_.log_every_steps > 0 && (s + 1) % config_.log_every_steps == 0) {
          progress.step(epoch, s + 1, steps_per_epoch, loss_sum / static_cast<double>(s + 1),
                        std::chrono::duration<double>(Clock::now() - start).count());
        }
      }
      record.seconds = std::chrono::duration<double>(Clock::now() - start).count();
      record.loss = loss_sum / static_cast<double>(steps_per_epoch);
      record.accuracy = accuracy_sum / static_cast<double>(steps_per_epoch);
      record.kept_negatives = kept_sum / static_cast<double>(steps_per_epoch);
      record.scale = std::exp(config_.loss.clamp_log_scale(static_cast<double>(log_scale_)));
      record.sequences_per_second = static_cast<double>(examples) / std::max(record.seconds, 1e-9);

      bool improved = false;
      if (config_.eval_every > 0 && (epoch % config_.eval_every == 0 || epoch == config_.epochs)) {
        const auto vstart = Clock::now();
        model_.refresh_item_table();
        record.validation = eval::evaluate_full_ranking(model_, split_, eval::EvalSplit::kValid, config_.validation);
        record.validation_seconds = std::chrono::duration<double>(Clock::now() - vstart).count();
        const double score = record.validation->value(config_.selection_metric);
        if (score > best_score) {
          best_score = score;
          best_epoch = epoch;
          since_best = 0;
          improved = true;
          best_values.assign(params.values(), params.values() + params.buffer_size());
          best_log_scale = log_scale_;
        } else {
          ++since_best;
        }
      }
      print_epoch(progress, record, improved);
      history.push_back(std::move(record));
      if (config_.patience > 0 && since_best >= config_.patience) {
        progress.line(distillrec::detail::concat("early stop: no better ", config_.selection_metric, " for ", since_best,
                                                 " validations; best epoch ", best_epoch));
        break;
      }
    }
    if (!best_values.empty()) {
      std::copy(best_values.begin(), best_values.end(), params.values());
      log_scale_ = best_log_scale;
    }
    model_.refresh_item_table();
    best_epoch_ = best_epoch;
    return history;
  }

  /// The epoch whose weights fit() kept (0: no validation ran; the last epoch's are kept).
  Index best_epoch() const { return best_epoch_; }

 private:
  // The temperature's own Adam update (the same coefficients and step count as the weights').
  void adam_scalar(T& value, T grad, T& m, T& v, long step, double lr) const {
    const auto& c = config_.adam;
    m = static_cast<T>(c.beta1 * m + (1.0 - c.beta1) * grad);
    v = static_cast<T>(c.beta2 * v + (1.0 - c.beta2) * grad * grad);
    const double m_hat = m / (1.0 - std::pow(c.beta1, static_cast<double>(step)));
    const double v_hat = v / (1.0 - std::pow(c.beta2, static_cast<double>(step)));
    value = static_cast<T>(value - lr * m_hat / (std::sqrt(v_hat) + c.eps));
  }

  void print_epoch(ProgressPrinter& progress, const HllmEpochRecord& r, bool improved) const {
    char buffer[320];
    std::snprintf(buffer, sizeof(buffer), "epoch %3ld/%ld  InfoNCE %.4f  accuracy %.3f  negatives kept %.0f  scale %.1f  %.2fs (%.0f seq/s)",
                  static_cast<long>(r.epoch), static_cast<long>(config_.epochs), r.loss, r.accuracy, r.kept_negatives, r.scale,
                  r.seconds, r.sequences_per_second);
    std::string text = buffer;
    if (r.validation) {
      std::snprintf(buffer, sizeof(buffer), "  valid %s %.4f (%.2fs)%s", config_.selection_metric.c_str(),
                    r.validation->value(config_.selection_metric), r.validation_seconds, improved ? " *" : "");
      text += buffer;
    }
    progress.line(text);
  }

  models::Hllm<T>& model_;
  data::ExampleSplit split_;
  HllmTrainerConfig config_;
  loss::InfoNce<T> nce_;
  optim::Adam adam_;
  std::vector<ItemId> negative_candidates_;
  T log_scale_ = 0;
  Index best_epoch_ = 0;
};

}  // namespace distillrec::train
