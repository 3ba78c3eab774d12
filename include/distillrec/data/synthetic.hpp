// distillrec/data/synthetic.hpp
//
// Synthetic interaction logs with learnable sequential structure: the default data of the
// examples and of most tests, small enough to train on in seconds, and built so that a
// sequential model clearly beats popularity (the next item is predictable from the previous one)
// while popularity clearly beats random (there is a global popularity skew).
//
// The generative story, all draws from Rng(seed):
//   - items 1..N are shuffled and cut into `num_clusters` clusters of near-equal size; within a
//     cluster the item of rank r has popularity 1 / (r + 1)^popularity_exponent;
//   - clusters themselves are Zipf-popular (cluster c has weight 1 / (c + 1)), so an item's global
//     popularity is P(cluster) * P(item | cluster);
//   - every item has `successors_per_item` distinct fixed successors, each drawn uniformly from
//     its own cluster with probability kSuccessorInClusterProbability, else from all items;
//   - a user has a preferred cluster (Zipf draw) and, with probability kSecondClusterProbability,
//     a second one; the sequence length is uniform in [min_length, max_length];
//   - the first item is a popularity-weighted item of the preferred cluster; each next item is,
//     with noise_probability, a globally popularity-weighted item; otherwise, with
//     transition_probability, a successor of the previous item (successor j with weight 2^-j, so
//     the first is the likeliest); otherwise a popularity-weighted item of the user's clusters
//     (the preferred one with probability kPreferredClusterShare). An item already in the
//     sequence is redrawn, so no item repeats within a user;
//   - with context_groups = G > 1, every item also falls into one of G context groups (uniform),
//     and every item has its own successors for each group: a transition from the previous item
//     follows the successors of (previous item, group of the item before it), so predicting the
//     next item needs the last two items together, not the last one alone (the first transition
//     of a sequence uses group 0). G = 0 or 1 draws exactly the log of the first-order story.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/interactions.hpp"

namespace distillrec::data {

namespace detail {
using distillrec::detail::concat;
}  // namespace detail

struct SyntheticConfig {
  Index num_users = 3000;
  ItemId num_items = 1000;
  Index num_clusters = 20;
  double popularity_exponent = 1.0;  // Zipf exponent of item popularity within a cluster
  Index min_length = 5;              // sequence lengths are uniform in [min_length, max_length]
  Index max_length = 30;
  double transition_probability = 0.6;  // next item is a successor of the previous one
  Index successors_per_item = 3;
  double noise_probability = 0.05;  // next item is a globally popularity-weighted one
  Index context_groups = 0;         // > 1: successors depend on the group of the item two back
  std::uint64_t seed = 42;
};

/// Probability that a successor is drawn from the item's own cluster (else from all items).
inline constexpr double kSuccessorInClusterProbability = 0.8;
/// Probability that a user has a second preferred cluster.
inline constexpr double kSecondClusterProbability = 0.3;
/// Share of cluster draws that go to the preferred cluster when a user has two.
inline constexpr double kPreferredClusterShare = 0.7;

/// Throws ConfigError naming the first invalid field of the config.
inline void validate(const SyntheticConfig& config) {
  auto fail = [](const char* field, const std::string& expected, const auto& found) {
    throw ConfigError(
        detail::concat("SyntheticConfig.", field, " must be ", expected, ", got ", found));
  };
  auto is_probability = [](double p) { return std::isfinite(p) && p >= 0.0 && p <= 1.0; };
  if (config.num_users < 1) fail("num_users", "at least 1", config.num_users);
  if (config.num_items < 1) fail("num_items", "at least 1", config.num_items);
  if (config.num_clusters < 1 || config.num_clusters > config.num_items) {
    fail("num_clusters", detail::concat("in [1, num_items = ", config.num_items, "]"),
         config.num_clusters);
  }
  if (!std::isfinite(config.popularity_exponent) || config.popularity_exponent < 0.0) {
    fail("popularity_exponent", "finite and non-negative", config.popularity_exponent);
  }
  if (config.min_length < 1) fail("min_length", "at least 1", config.min_length);
  if (config.max_length < config.min_length || config.max_length > config.num_items) {
    fail("max_length",
         detail::concat("in [min_length = ", config.min_length, ", num_items = ", config.num_items,
                        "] (items do not repeat within a user)"),
         config.max_length);
  }
  if (!is_probability(config.transition_probability)) {
    fail("transition_probability", "in [0, 1]", config.transition_probability);
  }
  if (config.successors_per_item < 0 || config.successors_per_item > config.num_items - 1) {
    fail("successors_per_item",
         detail::concat("in [0, num_items - 1 = ", config.num_items - 1, "]"),
         config.successors_per_item);
  }
  if (config.successors_per_item == 0 && config.transition_probability > 0.0) {
    fail("successors_per_item", "at least 1 when transition_probability > 0",
         config.successors_per_item);
  }
  if (!is_probability(config.noise_probability)) {
    fail("noise_probability", "in [0, 1]", config.noise_probability);
  }
  if (config.context_groups < 0 || config.context_groups > config.num_items) {
    fail("context_groups", detail::concat("in [0, num_items = ", config.num_items, "]"), config.context_groups);
  }
}

namespace detail {

/// Draws items with probability proportional to their weights (inverse CDF, binary search).
class WeightedItems {
 public:
  void add(ItemId item, double weight) {
    items_.push_back(item);
    cumulative_.push_back((cumulative_.empty() ? 0.0 : cumulative_.back()) + weight);
  }

  ItemId draw(Rng& rng) const {
    const double u = rng.uniform() * cumulative_.back();
    const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
    const auto index = std::min<std::size_t>(static_cast<std::size_t>(it - cumulative_.begin()),
                                             items_.size() - 1);
    return items_[index];
  }

  const std::vector<ItemId>& items() const { return items_; }

 private:
  std::vector<ItemId> items_;
  std::vector<double> cumulative_;
};

}  // namespace detail

/// A log drawn from the story above; identical for identical configs (seed included).
inline InteractionLog generate_synthetic(const SyntheticConfig& config) {
  validate(config);
  // Redraws of an item already in the sequence before falling back to a uniform unused item.
  constexpr int kMaxRedraws = 64;

  const ItemId num_items = config.num_items;
  const auto num_clusters = static_cast<std::size_t>(config.num_clusters);
  const auto num_successors = static_cast<std::size_t>(config.successors_per_item);
  const Rng root(config.seed);
  Rng structure_rng = root.derive(0);

  // Clusters: a random permutation cut into near-equal chunks; rank = position in the chunk.
  std::vector<ItemId> permutation(static_cast<std::size_t>(num_items));
  for (ItemId i = 0; i < num_items; ++i) permutation[static_cast<std::size_t>(i)] = i + 1;
  for (std::size_t i = permutation.size(); i > 1; --i) {
    std::swap(permutation[i - 1], permutation[structure_rng.uniform_int(i)]);
  }
  std::vector<double> cluster_weights(num_clusters);
  double cluster_total = 0.0;
  for (std::size_t c = 0; c < num_clusters; ++c) {
    cluster_weights[c] = 1.0 / static_cast<double>(c + 1);
    cluster_total += cluster_weights[c];
  }
  std::vector<detail::WeightedItems> cluster_items(num_clusters);
  std::vector<std::size_t> item_cluster(static_cast<std::size_t>(num_items) + 1, 0);
  detail::WeightedItems clusters;  // cluster index + 1 as the "item", weighted by popularity
  detail::WeightedItems global_items;
  const std::size_t base_size = permutation.size() / num_clusters;
  const std::size_t larger = permutation.size() % num_clusters;
  std::size_t next = 0;
  for (std::size_t c = 0; c < num_clusters; ++c) {
    const std::size_t size = base_size + (c < larger ? 1 : 0);
    double within_total = 0.0;
    for (std::size_t rank = 0; rank < size; ++rank) {
      within_total += std::pow(static_cast<double>(rank + 1), -config.popularity_exponent);
    }
    for (std::size_t rank = 0; rank < size; ++rank) {
      const ItemId item = permutation[next++];
      const double weight = std::pow(static_cast<double>(rank + 1), -config.popularity_exponent);
      cluster_items[c].add(item, weight);
      global_items.add(item, cluster_weights[c] / cluster_total * weight / within_total);
      item_cluster[static_cast<std::size_t>(item)] = c;
    }
    clusters.add(static_cast<ItemId>(c + 1), cluster_weights[c]);
  }

  // Fixed successors, distinct and different from the item itself; per context group g, the
  // block g * (num_items + 1) * num_successors (group 0 first, so G <= 1 draws as before).
  const auto num_groups = static_cast<std::size_t>(std::max<Index>(1, config.context_groups));
  const std::size_t group_stride = static_cast<std::size_t>(num_items + 1) * num_successors;
  std::vector<ItemId> successors(group_stride * num_groups, kPaddingId);
  for (std::size_t slot = 1; slot < num_groups * static_cast<std::size_t>(num_items + 1); ++slot) {
    const auto item = static_cast<ItemId>(slot % static_cast<std::size_t>(num_items + 1));
    if (item == kPaddingId) continue;
    ItemId* own = successors.data() + slot * num_successors;
    const auto& members = cluster_items[item_cluster[static_cast<std::size_t>(item)]].items();
    for (std::size_t j = 0; j < num_successors; ++j) {
      const bool in_cluster = structure_rng.bernoulli(kSuccessorInClusterProbability);
      ItemId candidate = kPaddingId;
      for (int attempt = 0; attempt < kMaxRedraws && in_cluster; ++attempt) {
        const ItemId drawn = members[structure_rng.uniform_int(members.size())];
        if (drawn != item && std::find(own, own + j, drawn) == own + j) {
          candidate = drawn;
          break;
        }
      }
      while (candidate == kPaddingId) {  // terminates: successors_per_item < num_items
        const auto drawn = static_cast<ItemId>(
            1 + structure_rng.uniform_int(static_cast<std::uint64_t>(num_items)));
        if (drawn != item && std::find(own, own + j, drawn) == own + j) candidate = drawn;
      }
      own[j] = candidate;
    }
  }
  std::vector<std::size_t> item_group(static_cast<std::size_t>(num_items) + 1, 0);
  if (num_groups > 1) {
    for (ItemId item = 1; item <= num_items; ++item) {
      item_group[static_cast<std::size_t>(item)] = static_cast<std::size_t>(structure_rng.uniform_int(num_groups));
    }
  }
  std::vector<double> successor_cumulative(num_successors);
  for (std::size_t j = 0; j < num_successors; ++j) {
    const double weight = std::ldexp(1.0, -static_cast<int>(j));  // 2^-j
    successor_cumulative[j] = (j == 0 ? 0.0 : successor_cumulative[j - 1]) + weight;
  }

  std::vector<Sequence> sequences(static_cast<std::size_t>(config.num_users));
  std::vector<std::uint8_t> used(static_cast<std::size_t>(num_items) + 1, 0);
  for (Index user = 0; user < config.num_users; ++user) {
    Rng rng = root.derive(static_cast<std::uint64_t>(user) + 1);
    const auto primary = static_cast<std::size_t>(clusters.draw(rng) - 1);
    std::size_t secondary = primary;
    if (num_clusters > 1 && rng.bernoulli(kSecondClusterProbability)) {
      for (int attempt = 0; attempt < kMaxRedraws && secondary == primary; ++attempt) {
        secondary = static_cast<std::size_t>(clusters.draw(rng) - 1);
      }
      if (secondary == primary) secondary = (primary + 1) % num_clusters;
    }
    const auto length =
        static_cast<std::size_t>(rng.uniform_int(static_cast<std::int64_t>(config.min_length),
                                                 static_cast<std::int64_t>(config.max_length)));
    Sequence& sequence = sequences[static_cast<std::size_t>(user)];
    sequence.reserve(length);

    auto draw_next = [&]() -> ItemId {
      if (sequence.empty()) return cluster_items[primary].draw(rng);
      if (rng.bernoulli(config.noise_probability)) return global_items.draw(rng);
      if (num_successors > 0 && rng.bernoulli(config.transition_probability)) {
        const double u = rng.uniform() * successor_cumulative.back();
        const auto j = std::min<std::size_t>(
            static_cast<std::size_t>(
                std::upper_bound(successor_cumulative.begin(), successor_cumulative.end(), u) -
                successor_cumulative.begin()),
            num_successors - 1);
        const std::size_t group = sequence.size() >= 2 ? item_group[static_cast<std::size_t>(sequence[sequence.size() - 2])] : 0;
        return successors[group * group_stride + static_cast<std::size_t>(sequence.back()) * num_successors + j];
      }
      const bool use_primary = secondary == primary || rng.bernoulli(kPreferredClusterShare);
      return cluster_items[use_primary ? primary : secondary].draw(rng);
    };

    while (sequence.size() < length) {
      ItemId item = kPaddingId;
      for (int attempt = 0; attempt < kMaxRedraws; ++attempt) {
        const ItemId candidate = draw_next();
        if (used[static_cast<std::size_t>(candidate)] == 0) {
          item = candidate;
          break;
        }
      }
      while (item == kPaddingId) {  // terminates: max_length <= num_items leaves an unused item
        const auto candidate =
            static_cast<ItemId>(1 + rng.uniform_int(static_cast<std::uint64_t>(num_items)));
        if (used[static_cast<std::size_t>(candidate)] == 0) item = candidate;
      }
      used[static_cast<std::size_t>(item)] = 1;
      sequence.push_back(item);
    }
    for (const ItemId item : sequence) used[static_cast<std::size_t>(item)] = 0;
  }
  return make_log(std::move(sequences), num_items,
                  detail::concat("synthetic(seed=", config.seed, ")"));
}

}  // namespace distillrec::data
