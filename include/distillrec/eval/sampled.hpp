// distillrec/eval/sampled.hpp
//
// Sampled evaluation, the LEGACY protocol of the SASRec paper (Kang & McAuley, 2018), kept so
// published numbers can be reproduced and always labelled "sampled-100" next to its metrics:
// each evaluable user's held-out item is ranked among itself and 100 negatives drawn uniformly
// from the items the user never interacted with (train, valid and test items are all excluded;
// the negatives are distinct). Sampled metrics are much higher than full-ranking ones and are
// not comparable to them.
//
// The candidates are drawn once from a seed and can be saved, so two models (or this library
// and a PyTorch reference) are judged on exactly the same candidates. File format (.npy,
// int64, shape [users, 2 + negatives]): column 0 the dense user index, column 1 the target
// item, then the negatives.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/data/negative_sampler.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/metrics.hpp"
#include "distillrec/io/npy.hpp"
#include "distillrec/serve/scoring.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace distillrec::eval {

struct SampledCandidates {
  EvalSplit split = EvalSplit::kTest;
  std::vector<Index> users;  // dense user indices, one row each
  Matrix<ItemId> items;      // [users, 1 + negatives]: column 0 the target, then the negatives

  Index num_negatives() const { return items.cols() - 1; }

  /// Draws `num_negatives` distinct negatives per evaluable user from `seed` (each user's draw
  /// comes from its own derived stream, so the candidates of a user do not depend on others).
  static SampledCandidates generate(const data::LeaveOneOutSplit& data_split, EvalSplit which,
                                    Index num_negatives = 100, std::uint64_t seed = 2018) {
    if (num_negatives <= 0) throw ConfigError("sampled evaluation: number of negatives must be positive");
    SampledCandidates c;
    c.split = which;
    c.users = data_split.evaluable_users;
    c.items.resize(static_cast<Index>(c.users.size()), 1 + num_negatives);
    const data::NegativeSampler sampler(data_split.num_items);
    const Rng base(seed ^ (which == EvalSplit::kValid ? 0x76616c6964ULL : 0x74657374ULL));
    for (std::size_t row = 0; row < c.users.size(); ++row) {
      const Index user = c.users[row];
      Sequence all_items = data_split.test_history(user);
      all_items.push_back(data_split.test[static_cast<std::size_t>(user)]);
      std::vector<ItemId> excluded = data::sorted_unique(all_items);
      if (data_split.num_items - static_cast<Index>(excluded.size()) < num_negatives) {
        throw ConfigError(detail::concat("sampled evaluation: user ", user, " has only ",
                                         data_split.num_items - static_cast<Index>(excluded.size()),
                                         " items left to sample ", num_negatives, " negatives from"));
      }
      Rng rng = base.derive(static_cast<std::uint64_t>(user));
      c.items(static_cast<Index>(row), 0) = evaluation_target(data_split, user, which);
      for (Index j = 0; j < num_negatives; ++j) {
        const ItemId negative = sampler.sample(excluded, rng);
        c.items(static_cast<Index>(row), 1 + j) = negative;
        excluded.insert(std::upper_bound(excluded.begin(), excluded.end(), negative), negative);
      }
    }
    return c;
  }

  void save(const std::string& path) const {
    Matrix<std::int64_t> table(items.rows(), items.cols() + 1);
    for (Index r = 0; r < items.rows(); ++r) {
      table(r, 0) = users[static_cast<std::size_t>(r)];
      for (Index c = 0; c < items.cols(); ++c) table(r, c + 1) = items(r, c);
    }
    io::write_npy(path, table);
  }

  /// Loads candidates saved by save() (or by another tool in the same format) and checks them
  /// against the split: same users in the same order, same targets, negatives in 1..N.
  static SampledCandidates load(const std::string& path, const data::LeaveOneOutSplit& data_split, EvalSplit which) {
    const io::NpyArray array = io::read_npy(path);
    if (array.shape.size() != 2 || array.shape[1] < 3) {
      throw FormatError(path + ": expected an int64 array [users, 2 + negatives] of sampled candidates");
    }
    const std::vector<std::int64_t> values = io::npy_to_integers(array, path);
    const Index rows = array.shape[0], cols = array.shape[1];
    if (rows != static_cast<Index>(data_split.evaluable_users.size())) {
      throw FormatError(detail::concat(path, ": has candidates for ", rows, " users, the split has ",
                                       data_split.evaluable_users.size(), " evaluable users"));
    }
    SampledCandidates c;
    c.split = which;
    c.users.resize(static_cast<std::size_t>(rows));
    c.items.resize(rows, cols - 1);
    for (Index r = 0; r < rows; ++r) {
      const std::int64_t user = values[static_cast<std::size_t>(r * cols)];
      if (user != data_split.evaluable_users[static_cast<std::size_t>(r)]) {
        throw FormatError(detail::concat(path, ": row ", r, " is for user ", user, ", expected user ",
                                         data_split.evaluable_users[static_cast<std::size_t>(r)]));
      }
      c.users[static_cast<std::size_t>(r)] = static_cast<Index>(user);
      for (Index col = 1; col < cols; ++col) {
        const std::int64_t item = values[static_cast<std::size_t>(r * cols + col)];
        if (item < 1 || item > data_split.num_items) {
          throw FormatError(detail::concat(path, ": row ", r, " column ", col, " holds item ", item,
                                           ", outside 1..", data_split.num_items));
        }
        c.items(r, col - 1) = static_cast<ItemId>(item);
      }
      const ItemId target = evaluation_target(data_split, static_cast<Index>(user), which);
      if (c.items(r, 0) != target) {
        throw FormatError(detail::concat(path, ": row ", r, " (user ", user, ") has target ", c.items(r, 0), " but the ",
                                         to_string(which), " target is ", target));
      }
    }
    return c;
  }
};

/// Ranks each target among its candidates (pessimistic ties) with the serving scores.
template <typename Model>
EvaluationResult evaluate_sampled(const Model& model, const data::LeaveOneOutSplit& data_split, EvalSplit which,
                                  const SampledCandidates& candidates, std::vector<Index> cutoffs = {1, 5, 10},
                                  Index block_users = 256) {
  static_assert(models::check_scoring_model<Model>());
  using T = typename Model::Scalar;
  if (candidates.split != which) throw ConfigError("sampled evaluation: candidates were drawn for the other split");
  const Index num_users = static_cast<Index>(candidates.users.size());
  if (num_users == 0) throw ConfigError("sampled evaluation: no candidates");
  const Index width = candidates.items.cols();
  const data::ExampleSplit examples(data_split);
  std::vector<data::Example> rows;
  rows.reserve(candidates.users.size());
  for (Index user : candidates.users) {
    const Index end = static_cast<Index>(data_split.train.at(static_cast<std::size_t>(user)).size()) + (which == EvalSplit::kTest ? 1 : 0);
    rows.push_back(data::Example{user, end, 0, 0});
  }
  std::vector<Index> ranks(static_cast<std::size_t>(num_users));
  const auto head = model.output_weights();
  for_each_encoded_block(model, examples, rows, block_users,
                         [&](Index begin, Index end, const std::vector<Sequence>& /*histories*/,
                             const Matrix<T>& user_vectors, Matrix<T>& scores) {
                           const Matrix<ItemId> block_items = candidates.items.middleRows(begin, end - begin);
                           scores.resize(end - begin, width);
                           serve::score_candidates<T>(user_vectors, head, block_items, scores);
                           for (Index i = begin; i < end; ++i) {
                             const auto row = scores.row(i - begin);
                             const T target = row(0);
                             if (target != target) throw Error("sampled evaluation: NaN score");
                             Index rank = 0;
                             for (Index c = 1; c < width; ++c) {
                               if (row(c) != row(c)) throw Error("sampled evaluation: NaN score");
                               rank += row(c) >= target;
                             }
                             ranks[static_cast<std::size_t>(i)] = rank;
                           }
                         });
  RankingMetrics metrics(std::move(cutoffs));
  for (Index r : ranks) metrics.add(r);
  EvaluationResult result;
  result.split = to_string(which);
  result.protocol = "sampled-" + std::to_string(candidates.num_negatives());
  result.description = detail::concat("sampled (legacy): target + ", candidates.num_negatives(),
                                      " random unseen items, pessimistic ties; ", num_users, " users");
  result.num_users = num_users;
  result.metrics = metrics.values();
  return result;
}

}  // namespace distillrec::eval
