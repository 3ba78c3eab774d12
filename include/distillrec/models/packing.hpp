// distillrec/models/packing.hpp
//
// Turning a call's input into packed tokens (nn/sequence_layout.hpp), shared by the sequence
// models: users' histories at inference, left-padded training windows in training. Every item
// id is checked against the catalogue on the way, so a model never indexes its table with an
// id it does not have; the errors name the model, the sequence and the id.
//
//   histories (inference)        the newest min(|h|, max_length) items of each history; an
//                                empty history is an error (there is nothing to encode)
//   training windows             each row's items after its left padding, with the row's
//                                targets (0 where a position predicts nothing) and negatives
//                                token by token; an all-padding row contributes nothing
//
// A token's position is its column in a left-padded max_length window (the newest item is
// always at max_length - 1), which is what learned position tables index; models with rotary
// positions use the position within the packed sequence instead and ignore it.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/nn/run_mode.hpp"
#include "distillrec/nn/sequence_layout.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace distillrec::models {

/// The packed tokens of one call. Model workspaces derive from it.
struct PackedTokens {
  nn::SequenceLayout layout;
  std::vector<ItemId> items;         // input item per token
  std::vector<ItemId> positions;     // column of the token in a left-padded max_length window
  std::vector<Index> sequence_rows;  // history index (inference) or batch row (training) per sequence
  // Training only, aligned with the tokens.
  std::vector<ItemId> targets;     // the next item each token predicts, 0 where it predicts none
  std::vector<ItemId> negatives;  // [tokens, num_negatives]
  Index num_negatives = 0;
  // Training with per-example dropout masks only (nn/run_mode.hpp): the key of every token
  // (its training example and window position) and of every sequence (its example).
  std::vector<std::uint64_t> row_keys, sequence_keys;
};

/// What a model accepts.
struct PackingRules {
  const char* model = "";         // named in errors (a string literal: packing is on every call's path)
  ItemId num_items = 0;            // valid ids are 1..num_items
  Index max_length = 0;            // longest window
  bool full_width_batches = true;  // training windows must be exactly max_length wide
};

}  // namespace distillrec::models

namespace distillrec::detail {

inline void check_packed_item(const models::PackingRules& rules, ItemId item, Index sequence) {
  if (item < 1 || item > rules.num_items) {
    throw ShapeError(concat(rules.model, ": item id ", item, " in sequence ", sequence, " is outside 1..", rules.num_items));
  }
}

inline void clear_packed(models::PackedTokens& packed) {
  packed.layout.clear();
  packed.items.clear();
  packed.positions.clear();
  packed.sequence_rows.clear();
  packed.targets.clear();
  packed.negatives.clear();
  packed.num_negatives = 0;
}

}  // namespace distillrec::detail

namespace distillrec::models {

/// Packs the newest max_length items of every history.
inline void pack_histories(const std::vector<Sequence>& histories, const PackingRules& rules, PackedTokens& packed) {
  detail::clear_packed(packed);
  const Index max_len = rules.max_length;
  for (std::size_t s = 0; s < histories.size(); ++s) {
    const Sequence& h = histories[s];
    if (h.empty()) {
      throw ShapeError(distillrec::detail::concat(rules.model, ": history ", s,
                                                  " is empty; a user vector needs at least one item"));
    }
    const Index len = std::min<Index>(static_cast<Index>(h.size()), max_len);
    const std::size_t first = h.size() - static_cast<std::size_t>(len);
    for (Index j = 0; j < len; ++j) {
      const ItemId item = h[first + static_cast<std::size_t>(j)];
      detail::check_packed_item(rules, item, static_cast<Index>(s));
      packed.items.push_back(item);
      packed.positions.push_back(static_cast<ItemId>(max_len - len + j));
    }
    packed.layout.add(len);
    packed.sequence_rows.push_back(static_cast<Index>(s));
  }
}

/// Packs the non-padding tokens of a training batch with their targets (0 where a position
/// predicts nothing) and negatives.
inline void pack_batch(const data::TrainingBatch& batch, const PackingRules& rules, PackedTokens& packed) {
  const auto inputs = batch.inputs();
  const auto targets = batch.targets();
  const auto negatives = batch.negatives();
  const Index rows = inputs.rows(), width = inputs.cols();
  if (rules.full_width_batches ? width != rules.max_length : width > rules.max_length) {
    throw ShapeError(distillrec::detail::concat(rules.model, ": batch windows have ", width, " columns but max_length is ",
                                                rules.max_length));
  }
  detail::clear_packed(packed);
  const Index k = batch.num_negatives();  // targets and negatives have the inputs' shape by construction
  packed.num_negatives = k;
  const Index offset = rules.max_length - width;
  for (Index r = 0; r < rows; ++r) {
    Index first = 0;
    while (first < width && inputs(r, first) == kPaddingId) ++first;
    if (first == width) continue;  // an all-padding row contributes nothing
    for (Index j = first; j < width; ++j) {
      const ItemId item = inputs(r, j);
      detail::check_packed_item(rules, item, r);
      packed.items.push_back(item);
      packed.positions.push_back(static_cast<ItemId>(offset + j));
      packed.targets.push_back(targets(r, j));
      for (Index m = 0; m < k; ++m) packed.negatives.push_back(negatives(r, j * k + m));
    }
    packed.layout.add(width - first);
    packed.sequence_rows.push_back(r);
  }
}

/// The run mode of a training forward pass over a packed batch: masks drawn in sequence from
/// `rng`, or, when the batch asks for per-example masks, keyed by each token's training example
/// and window position (the keys are kept in `packed`, which must outlive the forward pass).
inline nn::RunMode training_mode(const data::TrainingBatch& batch, PackedTokens& packed, Rng& rng) {
  if (!batch.per_example_streams) return nn::RunMode::train(rng);
  const Index num_seq = packed.layout.num_sequences();
  const auto width = static_cast<std::uint64_t>(std::max<Index>(batch.length(), 1));
  packed.sequence_keys.resize(static_cast<std::size_t>(num_seq));
  packed.row_keys.resize(static_cast<std::size_t>(packed.layout.num_tokens()));
  for (Index s = 0; s < num_seq; ++s) {
    const auto example = static_cast<std::uint64_t>(batch.examples[static_cast<std::size_t>(packed.sequence_rows[static_cast<std::size_t>(s)])]);
    packed.sequence_keys[static_cast<std::size_t>(s)] = example;
    for (Index t = packed.layout.begin(s); t < packed.layout.end(s); ++t) {
      packed.row_keys[static_cast<std::size_t>(t)] = example * width + static_cast<std::uint64_t>(packed.positions[static_cast<std::size_t>(t)]);
    }
  }
  return nn::RunMode::train_keyed(rng, packed.row_keys.data(), packed.layout.num_tokens(), packed.sequence_keys.data(), num_seq,
                                  batch.step_seed);
}

}  // namespace distillrec::models
