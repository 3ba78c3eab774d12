// distillrec/serve/recommender.hpp
//
// Thread-safe top-K recommendation on a CPU. The Recommender holds the model through a
// shared_ptr to const: weights are immutable while it serves, so any number of threads may
// call recommend() at once. Each call borrows a workspace (activations, score buffer) from a
// small pool, so steady-state serving does not allocate.
//
//   recommend(history, k)        top-k items for one chronological history (an overload fills a
//                                caller's vector: once warm, such a call allocates nothing)
//   recommend_batch(histories)   the same for many users, in parallel blocks (OpenMP)
// History items are excluded from the results unless `exclude_history` is false. Scores are
// the model's (through its output head), computed on the same path as evaluation. Any scoring
// model of the model contract (models/model.hpp) serves.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/serve/scoring.hpp"

#include <memory>
#include <mutex>
#include <vector>

namespace distillrec::serve {

struct RecommendOptions {
  Index k = 10;
  bool exclude_history = true;
};

template <typename Model>
class Recommender {
  static_assert(models::check_scoring_model<Model>());

 public:
  using T = typename Model::Scalar;

  explicit Recommender(std::shared_ptr<const Model> model) : model_(std::move(model)) {
    if (!model_) throw ConfigError("Recommender: no model");
  }

  const Model& model() const { return *model_; }

  /// Top-k for one history (non-empty, ids in 1..N). Safe to call from many threads at once.
  std::vector<ScoredItem> recommend(const Sequence& history, const RecommendOptions& options = {}) const {
    std::vector<ScoredItem> out;
    recommend(history, options, out);
    return out;
  }

  /// The same into `out` (reused: once warm, a call allocates nothing).
  void recommend(const Sequence& history, const RecommendOptions& options, std::vector<ScoredItem>& out) const {
    auto lease = acquire();
    Slot& slot = *lease;
    slot.histories.resize(1);
    slot.histories[0].assign(history.begin(), history.end());
    try {
      score_and_select(slot, 0, options, out);
    } catch (...) {
      release(std::move(lease));
      throw;
    }
    release(std::move(lease));
  }

  /// Top-k for every history, in parallel blocks of `block_users` (> 0) on the library's threads.
  std::vector<std::vector<ScoredItem>> recommend_batch(const std::vector<Sequence>& histories,
                                                       const RecommendOptions& options = {},
                                                       Index block_users = 128) const {
    if (block_users <= 0) {
      throw ConfigError(distillrec::detail::concat("Recommender::recommend_batch: block_users must be positive, got ", block_users));
    }
    const Index n = static_cast<Index>(histories.size());
    std::vector<std::vector<ScoredItem>> results(static_cast<std::size_t>(n));
    const Index num_blocks = (n + block_users - 1) / block_users;
    parallel::ExceptionCollector errors;
#pragma omp parallel if (num_blocks > 1 && !parallel::in_parallel())
    {
      auto lease = acquire();
#pragma omp for schedule(dynamic, 1)
      for (Index b = 0; b < num_blocks; ++b) errors.run([&] {
        const Index begin = b * block_users, end = std::min(n, begin + block_users);
        lease->histories.assign(histories.begin() + begin, histories.begin() + end);
        encode(*lease);
        for (Index i = begin; i < end; ++i) select(*lease, i - begin, options, results[static_cast<std::size_t>(i)]);
      });
      release(std::move(lease));
    }
    errors.rethrow();
    return results;
  }

 private:
  struct Slot {
    typename Model::Workspace workspace;
    std::vector<Sequence> histories;
    Matrix<T> user_vectors, scores;
  };

  std::unique_ptr<Slot> acquire() const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!pool_.empty()) {
        auto slot = std::move(pool_.back());
        pool_.pop_back();
        return slot;
      }
    }
    return std::make_unique<Slot>();
  }

  void release(std::unique_ptr<Slot> slot) const {
    std::lock_guard<std::mutex> lock(mutex_);
    pool_.push_back(std::move(slot));
  }

  void encode(Slot& slot) const {
    const Index rows = static_cast<Index>(slot.histories.size());
    const auto head = model_->output_weights();
    slot.user_vectors.resize(rows, head.dim());
    slot.scores.resize(rows, head.num_items());
    model_->encode(slot.histories, slot.user_vectors, slot.workspace);
    score_items<T>(slot.user_vectors, head, slot.scores);
  }

  void select(Slot& slot, Index row, const RecommendOptions& options, std::vector<ScoredItem>& out) const {
    if (options.exclude_history) mask_items<T>(slot.scores, row, slot.histories[static_cast<std::size_t>(row)]);
    top_k<T>(slot.scores.row(row).data(), slot.scores.cols(), options.k, out);
  }

  void score_and_select(Slot& slot, Index row, const RecommendOptions& options, std::vector<ScoredItem>& out) const {
    encode(slot);
    select(slot, row, options, out);
  }

  std::shared_ptr<const Model> model_;
  mutable std::mutex mutex_;
  mutable std::vector<std::unique_ptr<Slot>> pool_;
};

}  // namespace distillrec::serve
