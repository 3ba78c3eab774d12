// Shared by the data-parallel tests: the in-process unit test (tests/unit/test_data_parallel.cpp,
// processes simulated by threads) and the MPI test (tests/mpi/, real processes under mpirun).
// Each run trains one model from a fixed initialisation on small synthetic data and returns
// every trainable value (the model's, then the loss terms'), so runs on different numbers of
// processes can be compared value by value.
#pragma once

#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/distill/layer_map.hpp"
#include "distillrec/distill/slmrec.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/core/collective.hpp"
#include "distillrec/train/trainer.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace distillrec::test::data_parallel {

enum class Kind {
  kSASRec,         // BCE, leave-one-out (every position predicts), dropout in every layer
  kGRU4Rec,        // sampled softmax (shared negatives), every-prefix examples (newest position)
  kLLMRecStudent,  // full softmax + SLMRec (alignment and supervision heads with their own parameters)
};

inline const char* name(Kind kind) {
  switch (kind) {
    case Kind::kSASRec: return "SASRec";
    case Kind::kGRU4Rec: return "GRU4Rec";
    case Kind::kLLMRecStudent: return "LLMRec student + SLMRec";
  }
  return "?";
}

struct RunOptions {
  Index epochs = 2;
  Index batch_size = 64;  // 0: one that leaves a last batch of one example (an empty shard)
  train::RandomStreams streams = train::RandomStreams::kPerExample;
  std::shared_ptr<distillrec::Collective> collective;
  Index fail_on_rank = -1;  // this rank's loss term throws at fail_at_step
  Index fail_at_step = 3;
  std::uint64_t seed = 21;  // of batches, negatives and dropout (the initialisation is fixed)
  double dropout = -1.0;    // >= 0: instead of the model's default
  std::string state_path, resume_from;  // TrainerConfig's
  Index stop_after_epoch = 0;           // > 0: interrupt the run after this epoch
  Index eval_every = 0;
  Index sparse_rows = -1;  // >= 0: TrainerConfig::sparse_rows (tables of at least this many rows exchanged by rows)
  /// Replay: after step k the parameters are set to (*replay)[k] (another run's after its step
  /// k), so every step's gradient is computed at that run's parameters and can be compared.
  const std::vector<std::vector<float>>* replay = nullptr;
};

struct RunResult {
  std::vector<float> values;                    // every group's parameters after training, in order
  std::vector<std::vector<float>> step_values;  // ... after every step
  std::vector<std::vector<float>> step_grads;   // every group's gradients at every step (after the sum across processes)
  std::vector<double> step_losses;
  Index steps = 0;
  train::TrainingSummary summary;
};

namespace run_detail {
template <typename T>
std::vector<float> flat(const std::vector<Parameters<T>*>& groups, bool grads) {
  std::vector<float> out;
  for (const auto* g : groups) {
    const T* p = grads ? g->grads() : g->values();
    out.insert(out.end(), p, p + g->buffer_size());
  }
  return out;
}
}  // namespace run_detail

inline data::InteractionLog small_log() {
  data::SyntheticConfig config;
  config.num_users = 500;
  config.num_items = 120;
  config.num_clusters = 6;
  config.max_length = 14;
  config.seed = 11;
  return data::generate_synthetic(config);
}

/// A small LLMRec for small_log(): width 16, 2 heads, windows of 14.
inline models::LLMRecConfig small_llmrec_config(Index num_items, Index layers, double dropout) {
  models::LLMRecConfig c;
  c.num_items = num_items;
  c.item_dim = 16;
  c.hidden_size = 16;
  c.num_heads = 2;
  c.max_length = 14;
  c.dropout = dropout;
  c.num_layers = layers;
  return c;
}

/// The smallest batch size >= 16 whose last batch holds one example.
inline Index batch_with_single_last(Index examples) {
  for (Index b = 16; b < examples; ++b) {
    if (examples % b == 1) return b;
  }
  throw std::runtime_error("no batch size leaves one example");
}

/// A loss term that adds nothing, except on one rank at one step, where it throws (a shard
/// with bad input).
template <typename Model>
class FailingTerm final : public train::LossTerm<Model> {
 public:
  FailingTerm(Index rank, Index step) : rank_(rank), step_(step) {}
  std::string name() const override { return "failing"; }
  typename Model::Scalar compute(train::StepContext<Model>& ctx) override {
    const Index rank = ctx.collective != nullptr ? ctx.collective->rank() : 0;
    if (rank == rank_ && ctx.step == step_) {
      throw ShapeError(detail::concat("rank ", rank, " failed deliberately at step ", ctx.step, " (bad input on its shard)"));
    }
    return 0;
  }

 private:
  Index rank_, step_;
};

template <typename Model>
RunResult fit(Model& model, const data::ExampleSplit& split, train::TrainerConfig config, const RunOptions& options,
              const std::vector<std::shared_ptr<train::LossTerm<Model>>>& terms = {}) {
  config.epochs = options.epochs;
  config.batch_size = options.batch_size > 0 ? options.batch_size : batch_with_single_last(static_cast<Index>(split.train.size()));
  config.eval_every = options.eval_every;
  config.patience = 0;
  config.log = nullptr;
  config.state_path = options.state_path;
  config.resume_from = options.resume_from;
  config.random_streams = options.streams;
  config.collective = options.collective;
  if (options.sparse_rows >= 0) config.sparse_rows = options.sparse_rows;
  train::Trainer<Model> trainer(model, split, config);
  for (const auto& term : terms) trainer.add_term(term);
  if (options.fail_on_rank >= 0) trainer.add_term(std::make_shared<FailingTerm<Model>>(options.fail_on_rank, options.fail_at_step));
  RunResult result;
  trainer.hooks().after_backward.push_back([&](const train::StepInfo& info, const std::vector<Parameters<typename Model::Scalar>*>& groups) {
    result.step_losses.push_back(info.loss);
    result.step_grads.push_back(run_detail::flat(groups, true));
  });
  trainer.hooks().after_step.push_back([&](const train::StepInfo&) {
    const auto& groups = trainer.parameter_groups();
    if (options.replay != nullptr && static_cast<std::size_t>(result.steps) < options.replay->size()) {
      const auto& v = (*options.replay)[static_cast<std::size_t>(result.steps)];
      std::size_t at = 0;
      for (auto* g : groups) {
        std::copy(v.begin() + static_cast<std::ptrdiff_t>(at), v.begin() + static_cast<std::ptrdiff_t>(at + static_cast<std::size_t>(g->buffer_size())), g->values());
        at += static_cast<std::size_t>(g->buffer_size());
      }
    }
    result.step_values.push_back(run_detail::flat(groups, false));
    ++result.steps;
  });
  if (options.stop_after_epoch > 0) {
    trainer.on_epoch_end([&](const train::EpochRecord& record) { return record.epoch < options.stop_after_epoch; });
  }
  result.summary = trainer.fit();
  result.values = run_detail::flat(trainer.parameter_groups(), false);
  return result;
}

inline RunResult run(Kind kind, const RunOptions& options) {
  const auto log = small_log();
  train::TrainerConfig config;
  config.adam.learning_rate = 3e-3;
  config.seed = options.seed;
  Rng init(3);
  switch (kind) {
    case Kind::kSASRec: {
      const data::ExampleSplit split(data::leave_one_out(log));
      models::SASRecConfig c;
      c.num_items = split.num_items;
      c.hidden_size = 24;
      c.num_blocks = 2;
      c.num_heads = 2;
      c.max_length = 14;
      c.dropout = options.dropout >= 0 ? options.dropout : 0.3;
      models::SASRec<float> model(c);
      model.initialize(init);
      config.objective.objective = train::Objective::kBce;
      config.num_negatives = 2;
      return fit(model, split, config, options);
    }
    case Kind::kGRU4Rec: {
      const data::ExampleSplit split = data::every_prefix(log);
      models::GRU4RecConfig c;
      c.num_items = split.num_items;
      c.embedding_dim = 24;
      c.hidden_size = 24;
      c.max_length = 14;
      c.dropout = options.dropout >= 0 ? options.dropout : 0.3;
      models::GRU4Rec<float> model(c);
      model.initialize(init);
      config.objective.objective = train::Objective::kSampledSoftmax;
      config.objective.sampled_negatives = 32;
      return fit(model, split, config, options);
    }
    case Kind::kLLMRecStudent: {
      const data::ExampleSplit split(data::leave_one_out(log));
      models::LLMRecConfig c = small_llmrec_config(split.num_items, 4, options.dropout >= 0 ? options.dropout : 0.2);
      models::LLMRec<float> teacher(c);
      teacher.initialize(init);
      const auto map = distill::make_layer_map(4, 2, 2);
      const auto signals = std::make_shared<const distill::TeacherSignals<float>>(
          distill::compute_teacher_signals(teacher, map.teacher_indices(), split, distill::AlignPositions::kLast));
      c.num_layers = 2;
      models::LLMRec<float> student(c);
      student.initialize(init);
      distill::SLMRecConfig slm;
      slm.blocks = 2;
      auto term = std::make_shared<distill::SLMRecDistillation<float>>(slm, map, signals, split, student);
      term->initialize(init);
      config.objective.objective = train::Objective::kSoftmax;
      return fit(student, split, config, options, {term});
    }
  }
  throw std::runtime_error("unknown kind");
}

/// Largest absolute value.
inline double max_abs(const std::vector<float>& a) {
  double worst = 0.0;
  for (float v : a) worst = std::max(worst, std::abs(static_cast<double>(v)));
  return worst;
}

/// Largest absolute difference between two runs' values (infinity if their sizes differ or a
/// value is not a number).
inline double max_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return INFINITY;
    worst = std::max(worst, d);
  }
  return worst;
}

/// Whether two runs' values are the same bit for bit (-0.0 and +0.0 differ; NaN equals only
/// the same NaN).
inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// Largest difference between two runs' gradients over all steps, relative to the largest gradient.
inline double relative_grad_difference(const RunResult& a, const RunResult& b) {
  if (a.step_grads.size() != b.step_grads.size()) return INFINITY;
  double worst = 0.0;
  for (std::size_t k = 0; k < a.step_grads.size(); ++k) {
    worst = std::max(worst, max_difference(a.step_grads[k], b.step_grads[k]) / std::max(max_abs(a.step_grads[k]), 1e-30));
  }
  return worst;
}

/// Processes simulated by threads of one process (tests only): sums and broadcasts meet at a
/// barrier; the last to arrive combines the contributions in rank order and writes the result
/// into every member's buffer before releasing them.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), buffers_(static_cast<std::size_t>(size), nullptr) {}

  class Member final : public distillrec::Collective {
   public:
    Member(std::shared_ptr<ThreadGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return group_->size_; }
    void sum(float* data, std::size_t count) override { group_->meet(rank_, data, count, &ThreadGroup::sum_into<float>); }
    void sum(double* data, std::size_t count) override { group_->meet(rank_, data, count, &ThreadGroup::sum_into<double>); }
    void broadcast(void* data, std::size_t bytes) override { group_->meet(rank_, data, bytes, &ThreadGroup::copy_root); }
    std::string description() const override { return detail::concat("threads, ", group_->size_, " members"); }

   private:
    std::shared_ptr<ThreadGroup> group_;
    int rank_;
  };

 private:
  using Combine = void (*)(const std::vector<void*>&, std::size_t);

  template <typename U>
  static void sum_into(const std::vector<void*>& buffers, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      U total = static_cast<U*>(buffers[0])[i];  // not 0 + ...: -0.0 stays -0.0, as in MPI's sum
      for (std::size_t r = 1; r < buffers.size(); ++r) total += static_cast<U*>(buffers[r])[i];
      for (void* b : buffers) static_cast<U*>(b)[i] = total;
    }
  }
  static void copy_root(const std::vector<void*>& buffers, std::size_t bytes) {
    for (std::size_t r = 1; r < buffers.size(); ++r) std::copy_n(static_cast<const char*>(buffers[0]), bytes, static_cast<char*>(buffers[r]));
  }

  /// Every member passes its buffer and count; the last to arrive combines them. Counts that
  /// differ (a real collective's undefined behaviour) make every member throw.
  void meet(int rank, void* data, std::size_t count, Combine combine) {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    buffers_[static_cast<std::size_t>(rank)] = data;
    counts_[static_cast<std::size_t>(rank)] = count;
    if (++arrived_ == size_) {
      mismatch_ = std::any_of(counts_.begin(), counts_.end(), [&](std::size_t c) { return c != count; });
      if (!mismatch_) combine(buffers_, count);
      arrived_ = 0;
      ++generation_;
      released_.notify_all();
    } else {
      released_.wait(lock, [&] { return generation_ != generation; });
    }
    // Read before this member can arrive again, so no later call overwrites it first.
    if (mismatch_) throw std::logic_error("thread group: members passed different counts to one collective call");
  }

  int size_;
  std::vector<void*> buffers_;
  std::vector<std::size_t> counts_ = std::vector<std::size_t>(static_cast<std::size_t>(size_), 0);
  bool mismatch_ = false;
  std::mutex mutex_;
  std::condition_variable released_;
  int arrived_ = 0;
  long generation_ = 0;
};

/// Runs `work(member)` on `size` members of a new thread group, one thread each (member: a
/// std::shared_ptr<ThreadGroup::Member>); returns each member's error message ("" if none).
template <typename Work>
std::vector<std::string> on_members(int size, Work work) {
  auto group = std::make_shared<ThreadGroup>(size);
  std::vector<std::string> errors(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        work(std::make_shared<ThreadGroup::Member>(group, r));
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace distillrec::test::data_parallel
