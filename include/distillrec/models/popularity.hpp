// distillrec/models/popularity.hpp
//
// The popularity baseline: every user gets the items ranked by how often they occur in the
// training data. It is a scoring model (models/model.hpp) with one-dimensional output vectors
// (always 1) and a one-column untied head whose weights are the items' popularity ranks, so it
// is evaluated and served by exactly the same code as the neural models; equal counts tie, and
// ties are pessimistic.
//
// Counts are kept as 64-bit integers and scored by their dense rank among the distinct counts
// (1 = least popular), which a float represents exactly for up to 2^24 distinct counts: a
// float count would stop growing at 2^24 occurrences and merge items with different counts.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/nn/output_head.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace distillrec::models {

template <typename T = float>
class Popularity {
 public:
  using Scalar = T;
  struct Workspace {};

  /// Counts every item of the training sequences (ids in 1..num_items).
  Popularity(const std::vector<Sequence>& train, ItemId num_items) : num_items_(num_items) {
    if (num_items <= 0) throw ConfigError("Popularity: num_items must be positive");
    std::vector<std::int64_t> counts(static_cast<std::size_t>(num_items), 0);
    for (const auto& sequence : train) {
      for (ItemId item : sequence) {
        if (item < 1 || item > num_items) throw ShapeError(detail::concat("Popularity: item ", item, " outside 1..", num_items));
        ++counts[static_cast<std::size_t>(item - 1)];
      }
    }
    set_counts(counts);
  }

  /// Counts the items the training examples of a split read: each example's history and target
  /// (every item a model could have learned from; for a leave-one-out split, the training
  /// sequences).
  explicit Popularity(const data::ExampleSplit& split) : num_items_(split.num_items) {
    if (num_items_ <= 0) throw ConfigError("Popularity: num_items must be positive");
    const auto counts = split.training_item_counts();
    set_counts(std::vector<std::int64_t>(counts.begin() + 1, counts.end()));
  }

  ItemId num_items() const { return num_items_; }
  Index hidden_size() const { return 1; }
  /// Occurrences of item (1..N) in the training data.
  std::int64_t count(ItemId item) const { return counts_.at(static_cast<std::size_t>(item - 1)); }

  nn::HeadWeights<T> output_weights() const {
    return nn::HeadWeights<T>{ConstMatrixMap<T>(ranks_.data(), ranks_.rows(), 1), nullptr};
  }

  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& /*ws*/) const {
    require_shape(out, static_cast<Index>(histories.size()), 1, "Popularity::encode output");
    out.setOnes();
  }

 private:
  void set_counts(const std::vector<std::int64_t>& counts) {
    counts_ = counts;
    std::vector<std::int64_t> distinct(counts);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    ranks_.resize(static_cast<Index>(counts.size()), 1);
    for (std::size_t i = 0; i < counts.size(); ++i) {
      ranks_(static_cast<Index>(i), 0) =
          static_cast<T>(std::lower_bound(distinct.begin(), distinct.end(), counts[i]) - distinct.begin() + 1);
    }
  }

  ItemId num_items_;
  std::vector<std::int64_t> counts_;
  Matrix<T> ranks_;  // [N, 1]
};

}  // namespace distillrec::models
