// distillrec/train/trainer.hpp
//
// The training loop for any sequence model of the model contract (models/model.hpp): epochs of
// shuffled batches of training examples (data/batcher.hpp over data/examples.hpp) -> the loss
// terms' before_forward -> forward_train -> base objective (train/objective.hpp) at the
// positions with a target -> the loss terms (train/loss_term.hpp; e.g. distillation) ->
// backward -> the terms' after_backward -> hooks after backward -> optional gradient clipping ->
// Adam step under a learning-rate schedule -> hooks after the step. Every `eval_every` epochs
// (after the terms' before_evaluation) the model is evaluated on the validation examples with full
// ranking; the best parameters by `selection_metric` (the model's and every loss term's) are
// kept and restored at the end; training stops early after `patience` validations without
// improvement. The test set is never looked at here.
//
// The trainer owns (shares) its data: the ExampleSplit is taken by value (its sequences are
// shared, so a copy is cheap, and a temporary is safe to pass); a LeaveOneOutSplit converts.
// Parameter groups: the model's parameters first, then those of every loss term that has some;
// the optimiser, clipping (one global norm), the best-epoch snapshot and save_checkpoint()
// handle them all.
//
// Progress goes to `log` (per epoch: loss, loss-term components, seconds, steps/s, validation
// metrics, ETA; with log_every_steps > 0 also within an epoch). A non-finite loss stops
// training with an Error naming the epoch and step. After its first steps a training step
// allocates no memory.
//
// Data-parallel training (TrainerConfig::collective, e.g. mpi::Communicator over MPI): every
// process runs this same trainer on the same data and seed. Each global batch of batch_size
// examples is cut into one contiguous shard per process (data/batcher.hpp); the losses divide
// by the global batch's counts, and after the backward pass one sum across the processes (the
// first thing after the loss terms' after_backward, before the after_backward hooks) turns
// every process's gradients into the global batch's, with the step's loss and a failure flag in
// the same call (item tables of at least sparse_rows rows go by the rows some process touched,
// after one OR of a bit per row: train/gradient_exchange.hpp). Random draws are keyed per example (random_streams), so the masks, and so
// the model after k steps, do not depend on the number of processes. Every process then takes
// the same optimiser step, validates the same model (each process ranks a share of the
// validation examples, and the ranks are summed: identical metrics everywhere, so best-epoch and
// early-stopping decisions agree without a message), and only rank 0 writes checkpoints. A
// process that fails inside a step (bad input on its shard, a non-finite loss) makes every
// process throw at that step instead of leaving the others waiting.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/optim/adam.hpp"
#include "distillrec/optim/clip.hpp"
#include "distillrec/optim/schedule.hpp"
#include "distillrec/core/collective.hpp"
#include "distillrec/train/gradient_exchange.hpp"
#include "distillrec/train/hooks.hpp"
#include "distillrec/train/loss_term.hpp"
#include "distillrec/train/objective.hpp"
#include "distillrec/train/progress.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::train {

/// Where the random draws inside a step come from (dropout masks, a loss term's draws per
/// example): one generator in sequence (the masks depend on how the batch was packed), or
/// streams keyed by (seed, step, example), which do not depend on which examples share a batch
/// or a process. Auto: sequential in one process, per example with a collective.
enum class RandomStreams { kAuto, kSequential, kPerExample };

inline RandomStreams parse_random_streams(const std::string& name) {
  if (name == "auto") return RandomStreams::kAuto;
  if (name == "sequential") return RandomStreams::kSequential;
  if (name == "per-example") return RandomStreams::kPerExample;
  throw ConfigError("unknown random streams \"" + name + "\" (expected auto, sequential or per-example)");
}

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
  RandomStreams random_streams = RandomStreams::kAuto;
  /// Resuming: after every epoch (and its validation) the trainer writes its whole state here,
  /// atomically (the parameters, Adam's moments, the generator, the epoch, the best epoch's
  /// parameters and the history; in data-parallel training rank 0 writes); "" writes none.
  std::string state_path;
  /// Continue the run whose state this file holds (see state_path): fit() starts after its
  /// epoch and ends where the uninterrupted run would have. The data, seed, batch size and
  /// parameter shapes must match (checked); the number of processes may differ.
  std::string resume_from;
  /// Data-parallel training across processes (see the header comment); nullptr: one process.
  std::shared_ptr<Collective> collective;
  /// Data-parallel: parameter tensors with at least this many rows (the item tables) exchange
  /// only the rows some process's step touched (train/gradient_exchange.hpp); 0 sums every
  /// tensor whole. The default is this machine's measured switch-over (README).
  Index sparse_rows = kDefaultSparseRows;
  static constexpr Index kDefaultSparseRows = 16384;

  /// Whether steps draw from per-example streams.
  bool per_example_streams() const {
    return random_streams == RandomStreams::kPerExample || (random_streams == RandomStreams::kAuto && collective != nullptr);
  }
  bool data_parallel() const { return collective != nullptr && collective->size() > 1; }

  void validate() const {
    if (epochs <= 0) throw ConfigError(detail::concat("trainer: epochs must be positive, got ", epochs));
    if (batch_size <= 0) throw ConfigError(detail::concat("trainer: batch size must be positive, got ", batch_size));
    if (num_negatives <= 0) throw ConfigError("trainer: num_negatives must be positive");
    if (eval_every < 0 || patience < 0 || warmup_steps < 0) {
      throw ConfigError("trainer: eval_every, patience and warmup_steps must be >= 0");
    }
    if (!(clip_norm >= 0.0)) throw ConfigError("trainer: clip_norm must be >= 0");
    if (sparse_rows < 0) throw ConfigError(detail::concat("trainer: sparse_rows must be >= 0, got ", sparse_rows));
    if (collective != nullptr && collective->size() > 1 && random_streams == RandomStreams::kSequential) {
      throw ConfigError("trainer: data-parallel training needs per-example random streams (sequential masks depend on the shard)");
    }
    if (collective != nullptr && collective->size() > batch_size) {
      throw ConfigError(detail::concat("trainer: ", collective->size(), " processes share batches of ", batch_size,
                                       " examples; use a batch size of at least the number of processes"));
    }
    adam.validate();
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

/// Training occurrences of every item (index = item id), from what a split's training examples read.
inline std::vector<double> item_counts(const data::ExampleSplit& split) {
  const auto counts = split.training_item_counts();
  return std::vector<double>(counts.begin(), counts.end());
}

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
  static_assert(models::check_sequence_model<Model>());

 public:
  using T = typename Model::Scalar;
  using Term = LossTerm<Model>;

  Trainer(Model& model, data::ExampleSplit split, TrainerConfig config)
      : model_(model), split_(std::move(split)), config_(std::move(config)), adam_(config_.adam),
        objective_(config_.objective, item_counts(split_)), rng_(config_.seed) {
    config_.validate();
    if (split_.num_items != model.num_items()) {
      throw ShapeError(detail::concat("trainer: the data has ", split_.num_items, " items, the model ", model.num_items()));
    }
    if (split_.train.empty()) {
      throw ConfigError("trainer: " + split_.source + " has no training examples (no user has at least 2 training items)");
    }
    data::BatcherConfig batcher;
    batcher.batch_size = config_.batch_size;
    batcher.max_length = model.max_length();
    batcher.num_negatives = config_.objective.objective == Objective::kBce ? config_.num_negatives : 1;
    batcher.seed = config_.seed;
    if (config_.collective) {
      batcher.shard_index = config_.collective->rank();
      batcher.shard_count = config_.collective->size();
    }
    batcher_.emplace(split_, batcher);
    if (config_.data_parallel()) config_.validation.collective = config_.collective.get();  // each process ranks a share
    total_steps_ = config_.epochs * batcher_->batches_per_epoch();
    rebuild_groups();
  }

  /// Adds a loss term computed after the base objective at every step (before fit()); its
  /// parameters, if any, join the optimiser, clipping, snapshots and checkpoints.
  void add_term(std::shared_ptr<Term> term) {
    if (!term) throw ConfigError("trainer: add_term(nullptr)");
    for (const auto& t : terms_) {
      if (t->name() == term->name()) throw ConfigError("trainer: two loss terms are named \"" + term->name() + "\"");
    }
    terms_.push_back(std::move(term));
    rebuild_groups();
  }
  const std::vector<std::shared_ptr<Term>>& terms() const { return terms_; }

  /// Callbacks inside the loop (train/hooks.hpp).
  TrainingHooks<T>& hooks() { return hooks_; }
  /// Shorthand for hooks().on_epoch_end: called after every epoch; return false to stop.
  void on_epoch_end(std::function<bool(const EpochRecord&)> callback) { hooks_.on_epoch_end.push_back(std::move(callback)); }

  const TrainerConfig& config() const { return config_; }
  /// The base objective (e.g. what its catalogue GEMMs ran on: objective().catalogue_description()).
  const NextItemObjective<T>& objective() const { return objective_; }
  const data::ExampleSplit& split() const { return split_; }
  Index steps_per_epoch() const { return batcher_->batches_per_epoch(); }
  /// The model's parameters, then each loss term's (those that have some).
  const std::vector<Parameters<T>*>& parameter_groups() const { return groups_; }

  /// Writes the model's checkpoint (io/checkpoint.hpp) with every loss term's parameters added
  /// as "terms.<name>.<parameter>" tensors (a model loads from it and ignores them). In
  /// data-parallel training only rank 0 writes (the others return at once).
  void save_checkpoint(const std::string& path, const std::map<std::string, std::string>& metadata = {}) const {
    if (config_.collective && config_.collective->rank() != 0) return;
    std::vector<std::pair<std::string, const Parameters<T>*>> extra;
    for (const auto& term : terms_) {
      if (const auto* p = term->parameters()) extra.emplace_back("terms." + term->name() + ".", p);
    }
    io::save_checkpoint(model_, path, metadata, extra);
  }

  /// Writes the run's state after `epoch` (see TrainerConfig::state_path); in data-parallel
  /// training only rank 0 writes.
  void save_state(const std::string& path, Index epoch) const {
    if (config_.collective && config_.collective->rank() != 0) return;
    io::SafetensorsWriter writer;
    writer.set_metadata("format", "distillrec-training-state");
    writer.set_metadata("version", "1");
    writer.set_metadata("epoch", std::to_string(epoch));
    writer.set_metadata("global_step", std::to_string(global_step_));
    const auto rng = rng_.state();
    writer.set_metadata("rng", nlohmann::json(std::vector<std::string>{std::to_string(rng[0]), std::to_string(rng[1]),
                                                                        std::to_string(rng[2]), std::to_string(rng[3])}).dump());
    writer.set_metadata("fingerprint", fingerprint().dump());
    writer.set_metadata("best_epoch", std::to_string(summary_.best_epoch));
    writer.set_metadata("best_score", nlohmann::json(summary_.best_score).dump());
    writer.set_metadata("stale_validations", std::to_string(stale_validations_));
    writer.set_metadata("summary", summary_.to_json().dump());
    std::vector<float> buffer;
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const std::string prefix = "group." + std::to_string(g) + ".";
      const auto n = static_cast<std::size_t>(groups_[g]->buffer_size());
      auto add = [&](const std::string& name, const T* data) {
        buffer.assign(data, data + n);
        writer.add(prefix + name, buffer.data(), {static_cast<std::int64_t>(n)});
      };
      add("values", groups_[g]->values());
      add("adam_m", adam_states_[g].first_moment.data());
      add("adam_v", adam_states_[g].second_moment.data());
      writer.add(prefix + "adam_step", std::vector<std::int64_t>{adam_states_[g].step});
      if (!best_.empty()) add("best", best_[g].values());
    }
    writer.write(path);
  }

  /// Restores the state written by save_state(); returns its epoch.
  Index load_state(const std::string& path) {
    const io::SafetensorsReader reader(path);
    const auto& meta = reader.metadata();
    auto field = [&](const std::string& key) -> const std::string& {
      const auto it = meta.find(key);
      if (it == meta.end()) throw FormatError(path + ": not a distillrec training state (no \"" + key + "\" in its metadata)");
      return it->second;
    };
    if (field("format") != "distillrec-training-state") throw FormatError(path + ": not a distillrec training state");
    if (field("version") != "1") throw FormatError(path + ": training state version " + field("version") + " (this library reads 1)");
    try {
      const auto theirs = nlohmann::json::parse(field("fingerprint"));
      const auto ours = fingerprint();
      for (const auto& [key, value] : ours.items()) {
        if (!theirs.contains(key) || theirs.at(key) != value) {
          throw ConfigError(detail::concat(path, ": the run differs in ", key, " (state: ", theirs.contains(key) ? theirs.at(key).dump() : "none",
                                           ", this run: ", value.dump(), ")"));
        }
      }
      const Index epoch = std::stol(field("epoch"));
      global_step_ = std::stol(field("global_step"));
      const auto rng = nlohmann::json::parse(field("rng")).template get<std::vector<std::string>>();
      if (rng.size() != 4) throw FormatError(path + ": the generator state needs 4 words");
      std::array<std::uint64_t, 4> words{};
      for (std::size_t i = 0; i < 4; ++i) words[i] = static_cast<std::uint64_t>(std::stoull(rng[i]));
      rng_ = Rng::from_state(words);
      summary_.best_epoch = std::stol(field("best_epoch"));
      summary_.best_score = nlohmann::json::parse(field("best_score")).template get<double>();
      stale_validations_ = std::stol(field("stale_validations"));
      const auto history = nlohmann::json::parse(field("summary"));
      summary_.epochs.clear();
      for (const auto& e : history.at("epochs")) summary_.epochs.push_back(EpochRecord::from_json(e));
      summary_.train_seconds = history.at("train_seconds").template get<double>();
      summary_.validation_seconds = history.at("validation_seconds").template get<double>();
      best_.clear();
      for (std::size_t g = 0; g < groups_.size(); ++g) {
        const std::string prefix = "group." + std::to_string(g) + ".";
        const auto n = static_cast<std::size_t>(groups_[g]->buffer_size());
        auto read = [&](const std::string& name, T* out) {
          const auto values = reader.read_floats(prefix + name);
          if (values.size() != n) {
            throw ShapeError(detail::concat(path, ": tensor ", prefix, name, " holds ", values.size(), " values, this run's group ", g, " ", n));
          }
          std::copy(values.begin(), values.end(), out);
        };
        read("values", groups_[g]->values());
        read("adam_m", adam_states_[g].first_moment.data());
        read("adam_v", adam_states_[g].second_moment.data());
        const auto step = reader.read_integers(prefix + "adam_step");
        if (step.size() != 1) throw FormatError(path + ": " + prefix + "adam_step must hold one value");
        adam_states_[g].step = static_cast<long>(step[0]);
        if (reader.contains(prefix + "best")) {
          best_.push_back(*groups_[g]);
          read("best", best_.back().values());
        }
      }
      if (!best_.empty() && best_.size() != groups_.size()) throw FormatError(path + ": the best epoch's parameters are incomplete");
      return epoch;
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(path + ": malformed training state metadata: " + e.what());
    } catch (const std::logic_error& e) {  // std::stol and friends (the library's errors are runtime_errors)
      throw FormatError(path + ": malformed training state metadata: " + e.what());
    }
  }

  /// Trains, validates, keeps and finally restores the best parameters.
  TrainingSummary fit() {
    TrainingSummary& summary = summary_;
    summary = TrainingSummary{};
    summary.selection_metric = config_.selection_metric;
    Index& validations_without_improvement = stale_validations_;
    validations_without_improvement = 0;
    std::vector<Parameters<T>>& best = best_;
    best.clear();
    Index first_epoch = 1;
    ProgressPrinter progress(config_.log);
    if (!config_.resume_from.empty()) {
      first_epoch = load_state(config_.resume_from) + 1;
      progress.line(detail::concat("resumed ", config_.resume_from, " after epoch ", first_epoch - 1, " (global step ", global_step_, ")"));
    }
    std::string term_names;
    for (const auto& term : terms_) term_names += (term_names.empty() ? ", loss terms: " : " + ") + term->name();
    const std::string processes = config_.collective ? ", " + config_.collective->description() + ", per process" : "";
    progress.line(detail::concat("training: ", batcher_->num_training_examples(), " ", split_.protocol, " examples (",
                                 data::to_string(split_.supervision), " targets), ", steps_per_epoch(),
                                 " steps per epoch, objective ", to_string(config_.objective.objective), term_names, processes, ", ",
                                 parallel::max_threads(), " threads", config_.per_example_streams() ? ", per-example random streams" : ""));
    if (config_.data_parallel()) {
      exchange_.configure(groups_, config_.collective.get(), config_.sparse_rows);
      progress.line(detail::concat("data-parallel: global batches of ", config_.batch_size, " examples over ", config_.collective->size(),
                                   " processes; ", exchange_.description()));
      // Every process starts from rank 0's parameters (they agree already when built from the
      // same seed; this makes it so whatever the caller did).
      for (auto* group : groups_) config_.collective->broadcast(group->values(), static_cast<std::size_t>(group->buffer_size()) * sizeof(T));
    }
    for (Index epoch = first_epoch; epoch <= config_.epochs; ++epoch) {
      for (auto& hook : hooks_.on_epoch_begin) hook(epoch);
      EpochRecord record = train_epoch(epoch, progress);
      summary.train_seconds += record.seconds;
      const bool validate_now = config_.eval_every > 0 && (epoch % config_.eval_every == 0 || epoch == config_.epochs);
      bool stop = false;
      if (validate_now) {
        const auto start = std::chrono::steady_clock::now();
        for (const auto& term : terms_) term->before_evaluation(model_);
        record.validation = eval::evaluate_full_ranking(model_, split_, eval::EvalSplit::kValid, config_.validation);
        summary.validation_seconds += seconds_since(start);
        const double score = record.validation->value(config_.selection_metric);
        if (summary.best_epoch == 0 || score > summary.best_score) {
          summary.best_epoch = epoch;
          summary.best_score = score;
          if (best.empty()) {
            for (const auto* g : groups_) best.push_back(*g);
          } else {
            for (std::size_t i = 0; i < groups_.size(); ++i) best[i].copy_values_from(*groups_[i]);
          }
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
      if (!config_.state_path.empty()) save_state(config_.state_path, epoch);
      for (auto& hook : hooks_.on_epoch_end) {
        if (!hook(record)) stop = true;
      }
      if (stop) {
        summary.stopped_early = epoch < config_.epochs;
        if (summary.stopped_early) {
          progress.line(detail::concat("early stop: no improvement of ", config_.selection_metric, " in ",
                                       validations_without_improvement, " validations"));
        }
        break;
      }
    }
    if (!best.empty()) {
      for (std::size_t i = 0; i < groups_.size(); ++i) groups_[i]->copy_values_from(best[i]);
      for (const auto& term : terms_) term->before_evaluation(model_);
      progress.line(detail::concat("restored the best epoch ", summary.best_epoch, " (valid ", config_.selection_metric,
                                   " ", summary.best_score, ")"));
    } else {
      summary.best_epoch = static_cast<Index>(summary.epochs.size());
      for (const auto& term : terms_) term->before_evaluation(model_);
    }
    return summary;
  }

  /// One pass over the training examples; returns the epoch's record (no validation).
  EpochRecord train_epoch(Index epoch, ProgressPrinter& progress) {
    const auto start = std::chrono::steady_clock::now();
    batcher_->start_epoch(static_cast<std::uint64_t>(epoch - 1));
    exchange_.reset_statistics();
    for (const auto& term : terms_) term->take_report();  // components from now on
    double loss_sum = 0.0;
    Index steps = 0;
    double lr = config_.adam.learning_rate;
    while (batcher_->next(batch_)) {
      ++steps;
      lr = learning_rate(global_step_);
      const StepInfo info = train_step(epoch, steps, lr);
      loss_sum += info.loss;
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
    const auto& exchanged = exchange_.statistics();
    record.communication_seconds = exchanged.seconds;
    if (exchanged.steps > 0) record.exchanged_bytes_per_step = exchanged.bytes / static_cast<double>(exchanged.steps);
    for (const auto& term : terms_) {
      for (const auto& [component, value] : term->take_report()) record.terms[term->name() + "." + component] = value;
    }
    return record;
  }

 private:
  /// Forward, base objective, loss terms, backward, hooks, clipping and the optimiser step for
  /// the batch in batch_.
  StepInfo train_step(Index epoch, Index step, double lr) {
    for (auto* group : groups_) group->zero_grad();
    batch_.per_example_streams = config_.per_example_streams();
    batch_.step_seed = Rng(config_.seed ^ 0xd1b54a32d192ed03ULL).derive(static_cast<std::uint64_t>(global_step_)).next();
    T loss = T(0);
    if (!config_.data_parallel()) {
      loss = local_step(epoch, step);
      if (!std::isfinite(static_cast<double>(loss))) throw diverged(loss, epoch, step);
    } else {
      // One sum across the processes: every group's gradients, the loss, a failure flag.
      std::exception_ptr failure;
      try {
        loss = local_step(epoch, step);
      } catch (...) {
        failure = std::current_exception();
      }
      if (!exchange_.configured()) exchange_.configure(groups_, config_.collective.get(), config_.sparse_rows);
      const auto outcome = exchange_.exchange(failure ? T(0) : loss, failure != nullptr);
      if (failure) std::rethrow_exception(failure);
      if (outcome.failed_elsewhere) {
        throw Error(detail::concat("training stopped at epoch ", epoch, ", step ", step, ": another process failed (its error is in its output)"));
      }
      loss = outcome.loss;
      if (!std::isfinite(static_cast<double>(loss))) throw diverged(loss, epoch, step);
    }
    StepInfo info;
    info.epoch = epoch;
    info.step = step;
    info.steps_per_epoch = steps_per_epoch();
    info.global_step = global_step_;
    info.loss = static_cast<double>(loss);
    info.learning_rate = lr;
    info.predictions = batch_.totals.predictions;
    for (auto& hook : hooks_.after_backward) hook(info, groups_);
    if (config_.clip_norm > 0.0) optim::clip_gradient_norm(groups_, config_.clip_norm);
    for (std::size_t i = 0; i < groups_.size(); ++i) adam_.step(*groups_[i], adam_states_[i], lr);
    ++global_step_;
    for (auto& hook : hooks_.after_step) hook(info);
    return info;
  }

  static Error diverged(T loss, Index epoch, Index step) {
    return Error(detail::concat("training diverged: loss is ", loss, " at epoch ", epoch, ", step ", step,
                                " (lower the learning rate, or enable gradient clipping)"));
  }

  /// This process's part of a step: forward, base objective, loss terms, backward; returns the
  /// loss (in data-parallel training, this shard's part of the global batch's loss).
  T local_step(Index epoch, Index step) {
    auto& ws = workspace_;
    for (const auto& term : terms_) term->before_forward(model_, batch_, split_);
    const auto outputs = model_.forward_train(batch_, rng_, ws);
    buffers_.begin(outputs, ws, /*with_newest=*/!terms_.empty());
    const Index k = ws.num_negatives;
    const auto head = model_.output_weights();
    T loss;
    // The mean divides by the global batch's positions with a target (this batch's own count in
    // one process), so the shards' gradients sum to the global batch's.
    const Index denominator = batch_.totals.predictions;
    if (buffers_.every_position_predicts()) {  // every-position supervision: score the outputs in place
      loss = objective_.compute(outputs, head, ws.targets, ws.negatives, k, buffers_.grad_outputs(), model_.output_gradients(), rng_,
                                denominator);
    } else {  // score the positions that predict and scatter their gradients back
      buffers_.gather_predictions(outputs, ws, k);
      loss = objective_.compute(buffers_.prediction_outputs(), head, buffers_.targets(), buffers_.negatives(), k,
                                buffers_.prediction_grads(), model_.output_gradients(), rng_, denominator);
      buffers_.scatter_prediction_grads();
    }
    if (!terms_.empty()) {
      auto ctx = buffers_.context(model_, ws, batch_, split_, outputs, rng_, config_.objective.objective == Objective::kBce ? k : 0,
                                  &objective_.shared_negatives(), epoch, step);
      ctx.collective = config_.collective.get();
      for (const auto& term : terms_) loss += term->compute(ctx);
      buffers_.finish(ws);
    }
    if (!config_.data_parallel() && !std::isfinite(static_cast<double>(loss))) return loss;  // the caller stops
    model_.backward(buffers_.grad_outputs(), ws);
    for (const auto& term : terms_) term->after_backward(model_);
    return loss;
  }

  void rebuild_groups() {
    exchange_ = GradientExchange<T>();  // planned again over the new groups at the next step
    groups_.assign(1, &model_.parameters());
    for (const auto& term : terms_) {
      if (auto* p = term->parameters()) groups_.push_back(p);
    }
    while (adam_states_.size() < groups_.size()) adam_states_.push_back(adam_.make_state(*groups_[adam_states_.size()]));
  }

  /// What a resumed run must share with the one that wrote the state.
  nlohmann::json fingerprint() const {
    nlohmann::json groups = nlohmann::json::array();
    for (const auto* g : groups_) groups.push_back(g->buffer_size());
    return nlohmann::json{{"seed", config_.seed},
                          {"batch_size", config_.batch_size},
                          {"training_examples", batcher_->num_training_examples()},
                          {"num_items", split_.num_items},
                          {"objective", to_string(config_.objective.objective)},
                          {"per_example_streams", config_.per_example_streams()},
                          {"parameter_groups", groups}};
  }

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
  data::ExampleSplit split_;
  TrainerConfig config_;
  optim::Adam adam_;
  std::vector<optim::AdamState<T>> adam_states_;
  NextItemObjective<T> objective_;
  Rng rng_;
  std::optional<data::ExampleBatcher> batcher_;
  data::TrainingBatch batch_;
  typename Model::Workspace workspace_;
  StepBuffers<Model> buffers_;
  std::vector<std::shared_ptr<Term>> terms_;
  std::vector<Parameters<T>*> groups_;
  GradientExchange<T> exchange_;  // data-parallel: the gradients, loss and failure flag of every step
  // fit()'s progress (members so that a state file can hold them)
  TrainingSummary summary_;
  std::vector<Parameters<T>> best_;  // the best epoch's parameters, one per group
  Index stale_validations_ = 0;
  TrainingHooks<T> hooks_;
  long global_step_ = 0;
  Index total_steps_ = 0;
};

}  // namespace distillrec::train
