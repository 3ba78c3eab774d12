// distillrec/data/batcher.hpp
//
// Training batches in SASRec's protocol (kang205 `sampler.py`, pmixer `utils.py`; methods.md
// §4.5), with pmixer's shuffled pass over the users rather than kang205's draws with replacement.
// Every user with at least 2 training items is one row per epoch:
//
//   inputs    B x L        the last L items of train[:-1], left-padded with 0
//   targets   B x L        the next item at each position (train[1:]), 0 exactly where inputs is 0
//   negatives B x (L*K)    K negatives per position, columns [t*K, (t+1)*K) for position t, each
//                          uniform over 1..N minus the user's training items; 0 where target is 0
//
// with L = max_length and K = num_negatives. So for train = [a b c d] and L = 5:
//   inputs = [0 0 a b c], targets = [0 0 b c d].
//
// Determinism: the epoch's user order comes from (seed, epoch) and a user's negatives from
// (seed, epoch, user), so they do not depend on batch size, batch order or threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/negative_sampler.hpp"

namespace distillrec::data {

namespace detail {
using distillrec::detail::concat;
}  // namespace detail

struct BatcherConfig {
  Index batch_size = 128;
  Index max_length = 50;    // L: positions per row
  Index num_negatives = 1;  // K: negatives per non-padding position
  bool shuffle = true;      // shuffle the users every epoch (else ascending user order)
  std::uint64_t seed = 42;
};

struct TrainingBatch {
  std::vector<Index> users;  // dense user index per row
  Matrix<ItemId> inputs;     // B x max_length, left-padded with 0
  Matrix<ItemId> targets;    // B x max_length, next item, 0 exactly where inputs is 0
  Matrix<ItemId> negatives;  // B x (max_length * num_negatives), 0 where the target is 0

  Index size() const { return inputs.rows(); }
  Index num_targets() const { return (targets.array() != kPaddingId).count(); }
};

class SequenceBatcher {
 public:
  /// Keeps the last max_length + 1 items and the sorted distinct items of every training user's
  /// sequence. Throws ConfigError for non-positive sizes or num_items, or if a user's history
  /// contains every item (no negative left), and ShapeError for an id outside 1..num_items.
  SequenceBatcher(const std::vector<Sequence>& train, ItemId num_items, BatcherConfig config)
      : config_(config), sampler_(checked_num_items(num_items)) {
    check_positive(config.batch_size, "batch_size");
    check_positive(config.max_length, "max_length");
    check_positive(config.num_negatives, "num_negatives");
    const auto window_capacity = static_cast<std::size_t>(config.max_length) + 1;
    window_offsets_.push_back(0);
    excluded_offsets_.push_back(0);
    for (std::size_t user = 0; user < train.size(); ++user) {
      const Sequence& sequence = train[user];
      for (std::size_t position = 0; position < sequence.size(); ++position) {
        if (sequence[position] < 1 || sequence[position] > num_items) {
          throw ShapeError(detail::concat("SequenceBatcher: user ", user, " position ", position,
                                          " has item id ", sequence[position], ", expected 1..",
                                          num_items));
        }
      }
      if (sequence.size() < 2) continue;
      users_.push_back(static_cast<Index>(user));
      const std::size_t window = std::min(sequence.size(), window_capacity);
      windows_.insert(windows_.end(), sequence.end() - static_cast<std::ptrdiff_t>(window),
                      sequence.end());
      window_offsets_.push_back(static_cast<Index>(windows_.size()));
      const std::vector<ItemId> distinct = sorted_unique(sequence);
      if (static_cast<ItemId>(distinct.size()) == num_items) {
        throw ConfigError(detail::concat("SequenceBatcher: user ", user,
                                         " has interacted with all ", num_items,
                                         " items, so no negative can be drawn"));
      }
      excluded_.insert(excluded_.end(), distinct.begin(), distinct.end());
      excluded_offsets_.push_back(static_cast<Index>(excluded_.size()));
    }
    start_epoch(0);
  }

  /// Restarts at the first batch of `epoch`, with users shuffled from (seed, epoch).
  void start_epoch(std::uint64_t epoch) {
    epoch_ = epoch;
    epoch_rng_ = Rng(config_.seed).derive(epoch);
    order_.resize(users_.size());
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
    const auto rows = static_cast<Index>(
        std::min(order_.size() - cursor_, static_cast<std::size_t>(config_.batch_size)));
    batch.users.resize(static_cast<std::size_t>(rows));
    batch.inputs.setZero(rows, length);
    batch.targets.setZero(rows, length);
    batch.negatives.setZero(rows, length * negatives);
    for (Index row = 0; row < rows; ++row) {
      const std::size_t slot = order_[cursor_ + static_cast<std::size_t>(row)];
      const Index user = users_[slot];
      batch.users[static_cast<std::size_t>(row)] = user;
      const ItemId* window = windows_.data() + window_offsets_[slot];
      const Index count = window_offsets_[slot + 1] - window_offsets_[slot] - 1;
      const Index start = length - count;
      ItemId* inputs = batch.inputs.data() + row * length;
      ItemId* targets = batch.targets.data() + row * length;
      for (Index t = 0; t < count; ++t) {
        inputs[start + t] = window[t];
        targets[start + t] = window[t + 1];
      }
      // Row-major: the negatives of positions start..L-1 are contiguous.
      Rng rng = epoch_rng_.derive(static_cast<std::uint64_t>(user));
      sampler_.sample(excluded_.data() + excluded_offsets_[slot],
                      excluded_.data() + excluded_offsets_[slot + 1], count * negatives,
                      batch.negatives.data() + row * length * negatives + start * negatives, rng);
    }
    cursor_ += static_cast<std::size_t>(rows);
    return true;
  }

  Index batches_per_epoch() const {
    return (num_training_users() + config_.batch_size - 1) / config_.batch_size;
  }
  Index num_training_users() const { return static_cast<Index>(users_.size()); }
  /// Dense indices of the users with at least 2 training items, ascending.
  const std::vector<Index>& training_users() const { return users_; }
  const BatcherConfig& config() const { return config_; }
  std::uint64_t epoch() const { return epoch_; }

 private:
  // Stream of the epoch generator used for the shuffle; user streams are the user indices.
  static constexpr std::uint64_t kShuffleStream = ~std::uint64_t{0};

  static ItemId checked_num_items(ItemId num_items) {
    if (num_items < 1) {
      throw ConfigError(
          detail::concat("SequenceBatcher: num_items must be at least 1, got ", num_items));
    }
    return num_items;
  }

  static void check_positive(Index value, const char* name) {
    if (value <= 0) {
      throw ConfigError(detail::concat("BatcherConfig.", name, " must be positive, got ", value));
    }
  }

  BatcherConfig config_;
  NegativeSampler sampler_;
  std::vector<Index> users_;             // training users, ascending
  std::vector<Index> window_offsets_;    // user slot s: windows_[offsets[s], offsets[s+1])
  std::vector<ItemId> windows_;          // last min(n, max_length + 1) training items per user
  std::vector<Index> excluded_offsets_;  // user slot s: excluded_[offsets[s], offsets[s+1])
  std::vector<ItemId> excluded_;         // sorted distinct training items per user
  std::vector<std::size_t> order_;       // user slots in this epoch's order
  std::size_t cursor_ = 0;               // next position in order_
  std::uint64_t epoch_ = 0;
  Rng epoch_rng_;
};

}  // namespace distillrec::data
