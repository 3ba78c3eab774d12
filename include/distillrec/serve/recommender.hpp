// distillrec/serve/recommender.hpp
//
// Thread-safe top-K recommendation on a CPU. The Recommender holds the model through a
// shared_ptr to const: weights are immutable while it serves, so any number of threads may
// call recommend() at once. Each call borrows a workspace (activations, score buffer) from a
// small pool, so steady-state serving does not allocate.
//
//   recommend(history, k)        top-k items for one chronological history
//   recommend_batch(histories)   the same for many users, in parallel blocks (OpenMP)
// History items are excluded from the results unless `exclude_history` is false. Scores are
// the model's (dot products with the item table), computed on the same path as evaluation.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
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
 public:
  using T = typename Model::Scalar;

  explicit Recommender(std::shared_ptr<const Model> model) : model_(std::move(model)) {
    if (!model_) throw ConfigError("Recommender: no model");
  }

  const Model& model() const { return *model_; }

  /// Top-k for one history (non-empty, ids in 1..N). Safe to call from many threads at once.
  std::vector<ScoredItem> recommend(const Sequence& history, const RecommendOptions& options = {}) const {
    auto lease = acquire();
    Slot& slot = *lease;
    slot.histories.assign(1, history);
    std::vector<ScoredItem> out;
    score_and_select(slot, 0, options, out);
    release(std::move(lease));
    return out;
  }

  /// Top-k for every history, in parallel blocks of `block_users` on the library's threads.
  std::vector<std::vector<ScoredItem>> recommend_batch(const std::vector<Sequence>& histories,
                                                       const RecommendOptions& options = {},
                                                       Index block_users = 128) const {
    const Index n = static_cast<Index>(histories.size());
    std::vector<std::vector<ScoredItem>> results(static_cast<std::size_t>(n));
    const Index num_blocks = (n + block_users - 1) / std::max<Index>(1, block_users);
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
    slot.user_vectors.resize(rows, model_->item_table().cols());
    slot.scores.resize(rows, model_->num_items());
    model_->encode(slot.histories, slot.user_vectors, slot.workspace);
    score_items<T>(slot.user_vectors, model_->item_table(), slot.scores);
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
