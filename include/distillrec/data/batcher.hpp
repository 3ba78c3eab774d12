// distillrec/data/batcher.hpp
//
// Training batches over the training examples of an ExampleSplit (data/examples.hpp), in
// SASRec's layout (kang205 `sampler.py`, pmixer `utils.py`; methods.md §4.5) with pmixer's
// shuffled pass rather than kang205's draws with replacement. Every training example is one row
// per epoch:
//
//   inputs    B x L        the example's newest L history items, left-padded with 0
//   targets   B x L        what each position predicts: with every-position supervision the next
//                          item (the following history item, the example's target at the newest
//                          position), with newest-position supervision only the newest position
//                          (the target); 0 elsewhere
//   negatives B x (L*K)    K negatives per target, columns [t*K, (t+1)*K) for position t, each
//                          uniform over 1..N minus the example's history and target; 0 where the
//                          target is 0
//
// with L = max_length and K = num_negatives. So for a leave-one-out example with training
// sequence [a b c d] (history [a b c], target d) and L = 5: inputs = [0 0 a b c],
// targets = [0 0 b c d] (newest-position: [0 0 0 0 d]).
//
// Determinism: the epoch's example order comes from (seed, epoch) and an example's negatives
// from (seed, epoch, example stream), so they do not depend on batch size, batch order or
// threads. Batches keep their memory: after the first full batch, filling one allocates nothing.
//
// Shards (data-parallel training): with shard_count > 1 the batcher still walks the global
// batches of batch_size examples, in the same order, but fills only its shard's rows: the
// contiguous slice [rows * shard_index / shard_count, rows * (shard_index + 1) / shard_count)
// of each global batch. The batch's totals describe the whole global batch (rows, tokens,
// positions with a target), which is what losses divide by so that the shards' gradients sum to
// the global batch's. A shard may be empty (a last batch with fewer rows than shards).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/negative_sampler.hpp"

namespace distillrec::data {

namespace detail {
using distillrec::detail::concat;
}  // namespace detail

struct BatcherConfig {
  Index batch_size = 128;
  Index max_length = 50;    // L: positions per row
  Index num_negatives = 1;  // K: negatives per target
  bool shuffle = true;      // shuffle the examples every epoch (else in set order)
  std::uint64_t seed = 42;
  Index shard_index = 0;    // this process's shard of every global batch (see the header comment)
  Index shard_count = 1;
};

/// Counts over the global batch a TrainingBatch belongs to (itself unless it is a shard).
struct BatchTotals {
  Index rows = 0;         // training examples
  Index tokens = 0;       // non-padding positions
  Index predictions = 0;  // positions with a target
};

/// One batch of training rows (see the header comment). The matrices are views of vectors that
/// only grow, so refilling a batch does not allocate.
struct TrainingBatch {
  std::vector<Index> examples;  // per row: index of the example in the training set
  BatchTotals totals;           // of the global batch (the batcher fills them)
  // Per-example random streams, set by the trainer for each step (TrainerConfig::
  // random_streams): dropout masks (nn/run_mode.hpp) and any draw a loss term makes for an
  // example are keyed by (step_seed, example, ...) instead of drawn in sequence, so they do
  // not depend on which other examples share the batch (data-parallel shards).
  bool per_example_streams = false;
  std::uint64_t step_seed = 0;

  Index size() const { return static_cast<Index>(examples.size()); }
  Index length() const { return length_; }
  Index num_negatives() const { return num_negatives_; }

  Eigen::Map<Matrix<ItemId>> inputs() { return {input_data_.data(), size(), length_}; }
  Eigen::Map<const Matrix<ItemId>> inputs() const { return {input_data_.data(), size(), length_}; }
  Eigen::Map<Matrix<ItemId>> targets() { return {target_data_.data(), size(), length_}; }
  Eigen::Map<const Matrix<ItemId>> targets() const { return {target_data_.data(), size(), length_}; }
  Eigen::Map<Matrix<ItemId>> negatives() { return {negative_data_.data(), size(), length_ * num_negatives_}; }
  Eigen::Map<const Matrix<ItemId>> negatives() const { return {negative_data_.data(), size(), length_ * num_negatives_}; }

  /// Sizes the batch (rows x length, num_negatives per position) filled with 0 (padding).
  void reset(Index rows, Index length, Index num_negatives) {
    if (rows < 0 || length < 0 || num_negatives < 0) {
      throw ShapeError(detail::concat("TrainingBatch: negative size ", rows, "x", length, " with ", num_negatives, " negatives"));
    }
    examples.assign(static_cast<std::size_t>(rows), 0);
    length_ = length;
    num_negatives_ = num_negatives;
    input_data_.assign(static_cast<std::size_t>(rows * length), kPaddingId);
    target_data_.assign(static_cast<std::size_t>(rows * length), kPaddingId);
    negative_data_.assign(static_cast<std::size_t>(rows * length * num_negatives), kPaddingId);
  }

  Index num_targets() const { return static_cast<Index>(std::count_if(target_data_.begin(), target_data_.end(), [](ItemId t) { return t != kPaddingId; })); }

 private:
  Index length_ = 0, num_negatives_ = 0;
  std::vector<ItemId> input_data_, target_data_, negative_data_;
};

class ExampleBatcher {
 public:
  /// Batches over split.train (validated: ShapeError for an id outside 1..num_items or an example
  /// outside its sequence). ConfigError for non-positive sizes, or if an example's history and
  /// target hold every item (no negative left).
  ExampleBatcher(const ExampleSplit& split, BatcherConfig config)
      : split_(split), config_(config), sampler_(checked_num_items(split.num_items)) {
    check_positive(config.batch_size, "batch_size");
    check_positive(config.max_length, "max_length");
    check_positive(config.num_negatives, "num_negatives");
    check_positive(config.shard_count, "shard_count");
    if (config.shard_index < 0 || config.shard_index >= config.shard_count) {
      throw ConfigError(detail::concat("BatcherConfig.shard_index must be in 0..", config.shard_count - 1, ", got ", config.shard_index));
    }
    split_.validate();
    for (const Example& e : split_.train) {
      if (e.end + 1 >= static_cast<Index>(split_.num_items)) {
        // Only then can the history and target cover the catalogue: check exactly.
        Sequence items(split_.history_begin(e), split_.history_end(e) + 1);
        if (static_cast<ItemId>(sorted_unique(items).size()) == split_.num_items) {
          throw ConfigError(detail::concat("ExampleBatcher: example ", e.id, " (user ", e.user, ") holds all ", split_.num_items,
                                           " items, so no negative can be drawn"));
        }
      }
    }
    start_epoch(0);
  }

  /// Restarts at the first batch of `epoch`, with the examples shuffled from (seed, epoch).
  void start_epoch(std::uint64_t epoch) {
    epoch_ = epoch;
    epoch_rng_ = Rng(config_.seed).derive(epoch);
    order_.resize(split_.train.size());
    std::iota(order_.begin(), order_.end(), std::size_t{0});
    if (config_.shuffle) {
      Rng rng = epoch_rng_.derive(kShuffleStream);
      for (std::size_t i = order_.size(); i > 1; --i) {
        std::swap(order_[i - 1], order_[static_cast<std::size_t>(rng.uniform_int(i))]);
      }
    }
    cursor_ = 0;
  }

  /// Fills the next batch of the epoch (the last one may be smaller); false once the epoch is
  /// done, until start_epoch() is called. The constructor starts epoch 0.
  bool next(TrainingBatch& batch) {
    if (cursor_ >= order_.size()) return false;
    const Index length = config_.max_length;
    const Index negatives = config_.num_negatives;
    const bool every = split_.supervision == Supervision::kEveryPosition;
    const auto global_rows = static_cast<Index>(std::min(order_.size() - cursor_, static_cast<std::size_t>(config_.batch_size)));
    const Index first_row = global_rows * config_.shard_index / config_.shard_count;
    const Index rows = global_rows * (config_.shard_index + 1) / config_.shard_count - first_row;
    batch.reset(rows, length, negatives);
    batch.totals = BatchTotals{global_rows, 0, 0};
    for (Index row = 0; row < global_rows; ++row) {
      const Example& e = split_.train[order_[cursor_ + static_cast<std::size_t>(row)]];
      const Index count = std::min(e.end, length);
      batch.totals.tokens += count;
      batch.totals.predictions += every ? count : 1;
    }
    auto inputs = batch.inputs();
    auto targets = batch.targets();
    auto negative_out = batch.negatives();
    for (Index row = 0; row < rows; ++row) {
      const std::size_t index = order_[cursor_ + static_cast<std::size_t>(first_row + row)];
      const Example& e = split_.train[index];
      batch.examples[static_cast<std::size_t>(row)] = static_cast<Index>(index);
      const ItemId* history = split_.history_begin(e);
      const Index count = std::min(e.end, length);     // window length
      const Index start = length - count;              // first non-padding column
      const ItemId* window = history + (e.end - count);
      for (Index t = 0; t < count; ++t) {
        inputs(row, start + t) = window[t];
        if (every || t + 1 == count) targets(row, start + t) = window[t + 1];  // window[count] is the target
      }
      // Excluded: the distinct items of the whole history and the target.
      excluded_.assign(history, history + e.end + 1);
      std::sort(excluded_.begin(), excluded_.end());
      excluded_.erase(std::unique(excluded_.begin(), excluded_.end()), excluded_.end());
      Rng rng = epoch_rng_.derive(e.stream);
      const Index first = every ? start : length - 1;  // first position with a target
      // Row-major: the negatives of positions first..L-1 are contiguous.
      sampler_.sample(excluded_.data(), excluded_.data() + excluded_.size(), (length - first) * negatives,
                      negative_out.data() + row * length * negatives + first * negatives, rng);
    }
    cursor_ += static_cast<std::size_t>(global_rows);
    return true;
  }

  Index batches_per_epoch() const { return (num_training_examples() + config_.batch_size - 1) / config_.batch_size; }
  Index num_training_examples() const { return static_cast<Index>(split_.train.size()); }
  const BatcherConfig& config() const { return config_; }
  const ExampleSplit& split() const { return split_; }
  std::uint64_t epoch() const { return epoch_; }

 private:
  // Stream of the epoch generator used for the shuffle; example streams are theirs.
  static constexpr std::uint64_t kShuffleStream = ~std::uint64_t{0};

  static ItemId checked_num_items(ItemId num_items) {
    if (num_items < 1) throw ConfigError(detail::concat("ExampleBatcher: num_items must be at least 1, got ", num_items));
    return num_items;
  }

  static void check_positive(Index value, const char* name) {
    if (value <= 0) throw ConfigError(detail::concat("BatcherConfig.", name, " must be positive, got ", value));
  }

  ExampleSplit split_;                // shares the sequences; owns its example sets
  BatcherConfig config_;
  NegativeSampler sampler_;
  std::vector<std::size_t> order_;    // training examples in this epoch's order
  std::size_t cursor_ = 0;            // next position in order_
  std::vector<ItemId> excluded_;      // scratch: sorted distinct items of one example
  std::uint64_t epoch_ = 0;
  Rng epoch_rng_;
};

}  // namespace distillrec::data
