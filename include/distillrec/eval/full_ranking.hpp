// distillrec/eval/full_ranking.hpp
//
// Full-ranking evaluation, the protocol this library reports first: the target of every
// validation or test example (data/examples.hpp) is ranked against ALL items 1..N by the
// model's scores through its output head (the serving path, serve/scoring.hpp). Items of the
// input history are masked by default (they cannot be recommended again; if the target itself
// is in the history it is masked too and counts as a miss, as HLLM's evaluation does);
// `mask_history = false` keeps them. Ties are pessimistic.
//
// With leave-one-out examples (methods.md §4.2) validation ranks valid[u] from train[u] and test
// ranks test[u] from train[u] + valid[u]; every-prefix and temporal splits bring their own
// examples. A NaN score anywhere is an error, never a silent rank. Examples are processed in
// blocks in parallel, each thread with its own workspace; results do not depend on the thread
// count.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/collective.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/metrics.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/serve/item_scorer.hpp"
#include "distillrec/serve/scoring.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace distillrec::eval {

enum class EvalSplit { kValid, kTest };

inline std::string to_string(EvalSplit split) { return split == EvalSplit::kValid ? "valid" : "test"; }

inline data::Part to_part(EvalSplit split) { return split == EvalSplit::kValid ? data::Part::kValid : data::Part::kTest; }

/// The input history of a user for a leave-one-out split (train, or train + valid).
inline Sequence evaluation_history(const data::LeaveOneOutSplit& split, Index user, EvalSplit which) {
  return which == EvalSplit::kValid ? split.valid_history(user) : split.test_history(user);
}

inline ItemId evaluation_target(const data::LeaveOneOutSplit& split, Index user, EvalSplit which) {
  return which == EvalSplit::kValid ? split.valid[static_cast<std::size_t>(user)] : split.test[static_cast<std::size_t>(user)];
}

struct FullRankingOptions {
  bool mask_history = true;
  Index block_users = 256;
  std::vector<Index> cutoffs = {1, 5, 10, 20};
  Index max_users = 0;  // > 0: only the first max_users examples (quick checks)
  /// How items are scored (serve/item_scorer.hpp): the serving policy, so what is measured is
  /// what is served. By default fp32 over the whole catalogue at once; under int8 the rank is
  /// the served one: the shortlist (for k = the largest cutoff) re-scored in fp32 first, then
  /// the other items in their approximate order.
  serve::ScoringPolicy scoring = whole_catalogue_fp32();
  /// Data-parallel (core/collective.hpp): each process ranks every size()-th block of
  /// block_users examples, and the ranks are summed across the processes, so every process gets
  /// the metrics of all examples, equal to one process's (the same blocks are encoded alike).
  Collective* collective = nullptr;

  static serve::ScoringPolicy whole_catalogue_fp32() {
    serve::ScoringPolicy policy;
    policy.item_block = 0;
    return policy;
  }
};

/// 0-based pessimistic rank of `target` (1..N) in one row of item scores; -1 if it is masked.
/// A NaN score anywhere in the row is an Error naming the item: a NaN would otherwise compare
/// false and silently rank the target above it.
template <typename T>
Index rank_of_target(const T* scores, Index num_items, ItemId target) {
  const T target_score = scores[target - 1];
  Index at_least = 0, nan = -1;
  for (Index j = 0; j < num_items; ++j) {
    at_least += scores[j] >= target_score;
    if (scores[j] != scores[j]) nan = j;
  }
  if (nan >= 0) throw Error(detail::concat("evaluation: NaN score for item ", nan + 1));
  if (target_score == -std::numeric_limits<T>::infinity()) return -1;
  return at_least - 1;  // the target itself
}

/// Encodes the histories of `examples` (of `split`) in parallel blocks of `block_examples`, each
/// thread with its own workspace, and calls body(begin, end, histories, output_vectors, scores)
/// for every block [begin, end) of `examples`; `scores` is per-thread scratch the body may size
/// and use. Exceptions thrown inside are re-thrown after the parallel region.
template <typename Model, typename Body>
void for_each_encoded_block(const Model& model, const data::ExampleSplit& split, const std::vector<data::Example>& examples,
                            Index block_examples, Body&& body, int shard = 0, int shards = 1) {
  static_assert(models::check_scoring_model<Model>());
  using T = typename Model::Scalar;
  const Index num_examples = static_cast<Index>(examples.size());
  const Index block = std::max<Index>(1, block_examples);
  const Index num_blocks = (num_examples + block - 1) / block;
  const Index width = model.output_weights().dim();
  parallel::ExceptionCollector errors;
#pragma omp parallel if (num_blocks > 1 && !parallel::in_parallel())
  {
    typename Model::Workspace ws;
    Matrix<T> user_vectors, scores;
    std::vector<Sequence> histories;
#pragma omp for schedule(dynamic, 1)
    for (Index bi = 0; bi < num_blocks; ++bi) errors.run([&] {
      if (bi % shards != shard) return;
      const Index begin = bi * block, end = std::min(num_examples, begin + block);
      histories.clear();
      for (Index i = begin; i < end; ++i) histories.push_back(split.history(examples[static_cast<std::size_t>(i)]));
      user_vectors.resize(end - begin, width);
      model.encode(histories, user_vectors, ws);
      body(begin, end, histories, user_vectors, scores);
    });
  }
  errors.rethrow();
}

/// Ranks every validation or test example's target against all N items.
template <typename Model>
EvaluationResult evaluate_full_ranking(const Model& model, const data::ExampleSplit& split, EvalSplit which,
                                       const FullRankingOptions& options = {}) {
  static_assert(models::check_scoring_model<Model>());
  using T = typename Model::Scalar;
  if (split.num_items != model.num_items()) {
    throw ShapeError(detail::concat("evaluation: the data has ", split.num_items, " items but the model scores ",
                                    model.num_items()));
  }
  std::vector<data::Example> examples = split.examples(to_part(which));
  if (options.max_users > 0 && static_cast<Index>(examples.size()) > options.max_users) {
    examples.resize(static_cast<std::size_t>(options.max_users));
  }
  if (examples.empty()) throw ConfigError(detail::concat("evaluation: the ", to_string(which), " set of ", split.source, " is empty"));
  const Index num_examples = static_cast<Index>(examples.size());
  const Index num_items = model.num_items();
  std::vector<Index> ranks(static_cast<std::size_t>(num_examples));
  const auto head = model.output_weights();
  const serve::ItemScorer<T> scorer(head, options.scoring);
  const bool int8 = options.scoring.precision == serve::Precision::kInt8;
  const Index max_cutoff = options.cutoffs.empty() ? 1 : *std::max_element(options.cutoffs.begin(), options.cutoffs.end());
  const Index shortlist = std::min(options.scoring.shortlist_for(max_cutoff), num_items);
  struct PerThread {
    typename serve::ItemScorer<T>::Workspace scoring;
    std::vector<serve::ScoredItem> candidates;
  };
  std::vector<PerThread> per_thread(static_cast<std::size_t>(std::max(1, parallel::max_threads())));
  const int shards = options.collective != nullptr ? options.collective->size() : 1;
  const int shard = options.collective != nullptr ? options.collective->rank() : 0;
  const Index block = std::max<Index>(1, options.block_users);
  for_each_encoded_block(model, split, examples, options.block_users,
                         [&](Index begin, Index end, const std::vector<Sequence>& histories,
                             const Matrix<T>& user_vectors, Matrix<T>& scores) {
                           PerThread& local = per_thread[static_cast<std::size_t>(parallel::thread_index())];
                           scores.resize(end - begin, num_items);
                           scorer.score_all(user_vectors, scores, local.scoring);
                           for (Index i = begin; i < end; ++i) {
                             const Index row = i - begin;
                             const ItemId target = split.target(examples[static_cast<std::size_t>(i)]);
                             if (options.mask_history) serve::mask_items<T>(scores, row, histories[static_cast<std::size_t>(row)]);
                             Index rank = rank_of_target(scores.row(row).data(), num_items, target);
                             if (int8 && rank >= 0 && rank < shortlist) {
                               // Served order: the shortlist re-scored exactly comes first.
                               serve::top_k<T>(scores.row(row).data(), num_items, shortlist, local.candidates);
                               std::vector<serve::ScoredItem> unused;
                               scorer.rescore(user_vectors.row(row), 0, local.candidates, unused);
                               const auto it = std::find_if(local.candidates.begin(), local.candidates.end(),
                                                            [&](const serve::ScoredItem& c) { return c.item == target; });
                               if (it != local.candidates.end()) {
                                 rank = static_cast<Index>(std::count_if(local.candidates.begin(), local.candidates.end(),
                                                                         [&](const serve::ScoredItem& c) { return c.score >= it->score; })) - 1;
                               }
                             }
                             ranks[static_cast<std::size_t>(i)] = rank;
                           }
                         }, shard, shards);
  if (shards > 1) {
    // Every example was ranked by one process: sum (rank + 2; 0 elsewhere) across them.
    std::vector<double> encoded(ranks.size(), 0.0);
    for (Index bi = shard; bi * block < num_examples; bi += shards) {
      for (Index i = bi * block; i < std::min(num_examples, (bi + 1) * block); ++i) {
        encoded[static_cast<std::size_t>(i)] = static_cast<double>(ranks[static_cast<std::size_t>(i)] + 2);
      }
    }
    options.collective->sum(encoded.data(), encoded.size());
    for (std::size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<Index>(encoded[i]) - 2;
  }

  RankingMetrics metrics(options.cutoffs);
  for (Index r : ranks) metrics.add(r);
  EvaluationResult result;
  result.split = to_string(which);
  result.protocol = "full";
  result.description = detail::concat("full ranking: all ", num_items, " items, history ",
                                      options.mask_history ? "masked" : "kept", ", pessimistic ties; ", num_examples,
                                      split.protocol == "leave-one-out" ? " users" : " examples",
                                      options.scoring.precision == serve::Precision::kFp32 ? "" : "; scoring " + scorer.description());
  result.num_users = num_examples;
  result.metrics = metrics.values();
  return result;
}

}  // namespace distillrec::eval
