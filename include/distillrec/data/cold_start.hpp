// distillrec/data/cold_start.hpp
//
// A cold-start protocol for models that can score items nobody has interacted with (from their
// text: HLLM, models/hllm.hpp): a fixed fraction of the items is held out of training entirely.
//
//   auto cs = data::cold_start_split(log, 0.1, /*seed=*/42);
//   // train and validate on cs.warm (leave-one-out of the log with every cold-item interaction
//   // removed, the catalogue unchanged: cold items keep their ids and are ranked like any other);
//   // score cs.cold's test examples: each interaction with a cold item that follows at least one
//   // warm interaction of its user, the history being the user's warm items before it.
//
// The cold items are drawn by a seeded shuffle of 1..N (the same set for the same log, fraction
// and seed). No interaction of a cold item is in cs.warm, not even in a history, so a model
// trained on it has seen them only through their side information. An ID-based model (SASRec)
// has no trained row for them; popularity gives them a count of zero.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace distillrec::data {

struct ColdStartSplit {
  ExampleSplit warm;                // leave-one-out without the cold items' interactions
  ExampleSplit cold;                // test examples whose targets are cold items
  std::vector<ItemId> cold_items;   // ascending
  std::vector<char> is_cold;        // [N + 1]: 1 for a cold item
};

/// Holds out round(fraction * N) items (at least one) of `log`; ConfigError for a fraction
/// outside (0, 1), FormatError when no cold example or no evaluable warm user remains.
inline ColdStartSplit cold_start_split(const InteractionLog& log, double fraction, std::uint64_t seed = 42,
                                       Index min_interactions = 3) {
  if (!(fraction > 0.0 && fraction < 1.0)) {
    throw ConfigError(distillrec::detail::concat("cold start: the fraction of held-out items must be in (0, 1), got ", fraction));
  }
  const ItemId n = log.num_items;
  if (n < 2) throw ConfigError(distillrec::detail::concat(log.source, ": cold start needs at least 2 items, got ", n));
  ColdStartSplit out;
  std::vector<ItemId> items(static_cast<std::size_t>(n));
  std::iota(items.begin(), items.end(), ItemId{1});
  Rng rng(seed);
  for (ItemId k = n - 1; k > 0; --k) {
    std::swap(items[static_cast<std::size_t>(k)], items[static_cast<std::size_t>(rng.uniform_int(static_cast<std::uint64_t>(k + 1)))]);
  }
  const auto count = std::clamp<ItemId>(static_cast<ItemId>(std::llround(fraction * static_cast<double>(n))), 1, n - 1);
  out.cold_items.assign(items.begin(), items.begin() + count);
  std::sort(out.cold_items.begin(), out.cold_items.end());
  out.is_cold.assign(static_cast<std::size_t>(n) + 1, 0);
  for (ItemId i : out.cold_items) out.is_cold[static_cast<std::size_t>(i)] = 1;

  InteractionLog warm_log = log;
  warm_log.times.clear();
  warm_log.source = log.source + " (warm items)";
  auto cold_sequences = std::make_shared<std::vector<Sequence>>();
  for (std::size_t u = 0; u < log.sequences.size(); ++u) {
    Sequence warm;
    for (ItemId item : log.sequences[u]) {
      if (item < 1 || item > n) {
        throw ShapeError(distillrec::detail::concat(log.source, ": user ", u, " has item id ", item, ", expected 1..", n));
      }
      if (out.is_cold[static_cast<std::size_t>(item)]) {
        if (!warm.empty()) {
          Sequence example = warm;
          example.push_back(item);
          cold_sequences->push_back(std::move(example));
        }
      } else {
        warm.push_back(item);
      }
    }
    warm_log.sequences[u] = std::move(warm);
  }
  out.warm = ExampleSplit(leave_one_out(warm_log, min_interactions));
  if (cold_sequences->empty()) {
    throw FormatError(distillrec::detail::concat(log.source, ": no interaction with the ", count,
                                                 " held-out items follows a warm one; nothing to evaluate"));
  }
  out.cold.num_items = n;
  out.cold.source = log.source + " (cold items)";
  out.cold.protocol = "cold-start";
  for (std::size_t k = 0; k < cold_sequences->size(); ++k) {
    const Example e{static_cast<Index>(k), static_cast<Index>((*cold_sequences)[k].size()) - 1, static_cast<std::int64_t>(k), 0};
    out.cold.test.push_back(e);
  }
  out.cold.sequences = std::move(cold_sequences);
  return out;
}

}  // namespace distillrec::data
