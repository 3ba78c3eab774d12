#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "support.hpp"

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

TEST_CASE("generate_synthetic is deterministic per seed", "[data][synthetic]") {
  SyntheticConfig config;
  config.num_users = 400;
  const InteractionLog a = generate_synthetic(config);
  const InteractionLog b = generate_synthetic(config);
  REQUIRE(a.sequences == b.sequences);
  REQUIRE(a.source == "synthetic(seed=42)");
  config.seed = 43;
  const InteractionLog c = generate_synthetic(config);
  REQUIRE(c.sequences != a.sequences);
  REQUIRE(c.source == "synthetic(seed=43)");
  // Users are drawn from their own streams: more users leave the first ones unchanged.
  config.seed = 42;
  config.num_users = 500;
  const InteractionLog d = generate_synthetic(config);
  REQUIRE(std::equal(a.sequences.begin(), a.sequences.end(), d.sequences.begin()));
}

TEST_CASE("generate_synthetic with context groups: the next item depends on the last two items",
          "[data][synthetic]") {
  SyntheticConfig config;
  config.num_users = 4000;
  config.num_items = 1000;
  config.num_clusters = 1;  // successors from all items: chains rarely revisit an item within 8 steps
  config.max_length = 8;
  config.transition_probability = 1.0;
  config.noise_probability = 0.0;
  config.successors_per_item = 1;
  // 0 and 1 group draw exactly the first-order log.
  const InteractionLog first_order = generate_synthetic(config);
  config.context_groups = 1;
  REQUIRE(generate_synthetic(config).sequences == first_order.sequences);
  config.context_groups = 4;
  const InteractionLog second_order = generate_synthetic(config);
  REQUIRE(second_order.sequences != first_order.sequences);
  REQUIRE(second_order.num_items == config.num_items);

  // With one successor and no noise, the previous item alone fixes the next one in the
  // first-order log (up to redraws of repeated items), while with four groups the next item
  // varies with the item before the previous one, and the pair fixes it again.
  auto distinct_next = [](const InteractionLog& log, bool by_pair) {
    std::map<std::pair<ItemId, ItemId>, std::set<ItemId>> next;
    for (const Sequence& s : log.sequences) {
      for (std::size_t t = 2; t < s.size(); ++t) next[{s[t - 1], by_pair ? s[t - 2] : 0}].insert(s[t]);
    }
    double total = 0.0;
    for (const auto& [key, items] : next) total += static_cast<double>(items.size());
    return total / static_cast<double>(next.size());
  };
  CHECK(distinct_next(first_order, false) < 1.3);
  CHECK(distinct_next(second_order, false) > 1.5);  // 1.85 here; at most 4
  CHECK(distinct_next(second_order, true) < 1.3);
}

TEST_CASE("generate_synthetic respects lengths, ids and no repeats", "[data][synthetic]") {
  SyntheticConfig config;  // the defaults
  const InteractionLog log = generate_synthetic(config);
  REQUIRE(log.num_users() == config.num_users);
  REQUIRE(log.num_items == config.num_items);
  REQUIRE(log.item_raw_ids.size() == static_cast<std::size_t>(config.num_items) + 1);
  std::set<Index> lengths;
  std::vector<Index> counts(static_cast<std::size_t>(config.num_items) + 1, 0);
  for (const Sequence& sequence : log.sequences) {
    const auto length = static_cast<Index>(sequence.size());
    REQUIRE(length >= config.min_length);
    REQUIRE(length <= config.max_length);
    lengths.insert(length);
    REQUIRE(std::set<ItemId>(sequence.begin(), sequence.end()).size() == sequence.size());
    for (const ItemId item : sequence) {
      REQUIRE(item >= 1);
      REQUIRE(item <= config.num_items);
      ++counts[static_cast<std::size_t>(item)];
    }
  }
  REQUIRE(static_cast<Index>(lengths.size()) == config.max_length - config.min_length + 1);
  // A popularity skew: the 10% most frequent items take well over 10% of the interactions.
  std::sort(counts.begin(), counts.end(), std::greater<Index>());
  const Index top =
      std::accumulate(counts.begin(), counts.begin() + config.num_items / 10, Index{0});
  CHECK(static_cast<double>(top) / static_cast<double>(log.num_interactions()) > 0.3);
}

TEST_CASE("generate_synthetic handles extreme but valid configurations", "[data][synthetic]") {
  SyntheticConfig config;
  config.num_users = 50;
  config.num_items = 10;
  config.num_clusters = 10;  // one item per cluster
  config.min_length = 10;    // every user sees every item exactly once
  config.max_length = 10;
  config.successors_per_item = 9;
  const InteractionLog full = generate_synthetic(config);
  for (const Sequence& sequence : full.sequences) {
    REQUIRE(std::set<ItemId>(sequence.begin(), sequence.end()).size() == 10);
  }
  config.num_clusters = 1;
  config.successors_per_item = 0;
  config.transition_probability = 0.0;
  config.noise_probability = 1.0;
  config.popularity_exponent = 0.0;
  config.min_length = 1;
  config.num_items = 1;
  config.max_length = 1;
  const InteractionLog single = generate_synthetic(config);
  for (const Sequence& sequence : single.sequences) REQUIRE(sequence == Sequence{1});
}

TEST_CASE("generate_synthetic rejects invalid configurations, naming the field",
          "[data][synthetic][errors]") {
  struct Case {
    const char* field;
    std::function<void(SyntheticConfig&)> change;
  };
  const std::vector<Case> cases = {
      {"num_users", [](SyntheticConfig& c) { c.num_users = 0; }},
      {"num_items", [](SyntheticConfig& c) { c.num_items = 0; }},
      {"num_clusters", [](SyntheticConfig& c) { c.num_clusters = 0; }},
      {"num_clusters", [](SyntheticConfig& c) { c.num_clusters = 1001; }},
      {"popularity_exponent", [](SyntheticConfig& c) { c.popularity_exponent = -0.5; }},
      {"popularity_exponent",
       [](SyntheticConfig& c) { c.popularity_exponent = std::numeric_limits<double>::infinity(); }},
      {"min_length", [](SyntheticConfig& c) { c.min_length = 0; }},
      {"max_length", [](SyntheticConfig& c) { c.max_length = 4; }},
      {"max_length", [](SyntheticConfig& c) { c.max_length = 1001; }},
      {"transition_probability", [](SyntheticConfig& c) { c.transition_probability = 1.5; }},
      {"transition_probability", [](SyntheticConfig& c) { c.transition_probability = -0.1; }},
      {"successors_per_item", [](SyntheticConfig& c) { c.successors_per_item = -1; }},
      {"successors_per_item", [](SyntheticConfig& c) { c.successors_per_item = 1000; }},
      {"successors_per_item", [](SyntheticConfig& c) { c.successors_per_item = 0; }},
      {"noise_probability", [](SyntheticConfig& c) { c.noise_probability = 2.0; }},
      {"context_groups", [](SyntheticConfig& c) { c.context_groups = -1; }},
      {"context_groups", [](SyntheticConfig& c) { c.context_groups = 1001; }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.field);
    SyntheticConfig config;
    c.change(config);
    REQUIRE_THROWS_AS(generate_synthetic(config), ConfigError);
    REQUIRE_THROWS_WITH(generate_synthetic(config),
                        Contains(std::string("SyntheticConfig.") + c.field + " must be"));
  }
}

TEST_CASE("synthetic data rewards sequential models: successor > popularity > random",
          "[data][synthetic]") {
  const LeaveOneOutSplit split = leave_one_out(generate_synthetic(SyntheticConfig{}));
  const auto num_items = static_cast<std::size_t>(split.num_items);
  // Counts on the training sequences only.
  std::vector<Index> popularity(num_items + 1, 0);
  std::vector<Index> transitions((num_items + 1) * (num_items + 1), 0);
  for (const Sequence& sequence : split.train) {
    for (std::size_t t = 0; t < sequence.size(); ++t) {
      ++popularity[static_cast<std::size_t>(sequence[t])];
      if (t > 0) {
        ++transitions[static_cast<std::size_t>(sequence[t - 1]) * (num_items + 1) +
                      static_cast<std::size_t>(sequence[t])];
      }
    }
  }
  std::vector<ItemId> by_popularity(num_items);
  std::iota(by_popularity.begin(), by_popularity.end(), 1);
  std::stable_sort(by_popularity.begin(), by_popularity.end(), [&](ItemId a, ItemId b) {
    return popularity[static_cast<std::size_t>(a)] > popularity[static_cast<std::size_t>(b)];
  });

  constexpr std::size_t kTopK = 10;
  Rng rng(5);
  double hits_successor = 0, hits_popularity = 0, hits_random = 0;
  for (const Index user : split.evaluable_users) {
    const Sequence history = split.test_history(user);
    const ItemId target = split.test[static_cast<std::size_t>(user)];
    const std::set<ItemId> seen(history.begin(), history.end());  // items never repeat
    const auto last = static_cast<std::size_t>(history.back());

    // Most frequent successors of the last item, ties and the rest filled by popularity.
    std::vector<ItemId> ranked = by_popularity;
    std::stable_sort(ranked.begin(), ranked.end(), [&](ItemId a, ItemId b) {
      return transitions[last * (num_items + 1) + static_cast<std::size_t>(a)] >
             transitions[last * (num_items + 1) + static_cast<std::size_t>(b)];
    });
    auto hit = [&](const std::vector<ItemId>& order) {
      std::size_t taken = 0;
      for (const ItemId item : order) {
        if (seen.count(item) != 0) continue;
        if (item == target) return 1.0;
        if (++taken == kTopK) break;
      }
      return 0.0;
    };
    hits_successor += hit(ranked);
    hits_popularity += hit(by_popularity);
    std::set<ItemId> random_pick;
    while (random_pick.size() < kTopK) {
      const auto item = static_cast<ItemId>(1 + rng.uniform_int(std::uint64_t{num_items}));
      if (seen.count(item) == 0) random_pick.insert(item);
    }
    hits_random += random_pick.count(target) != 0 ? 1.0 : 0.0;
  }
  const auto users = static_cast<double>(split.evaluable_users.size());
  const double hr_successor = hits_successor / users;
  const double hr_popularity = hits_popularity / users;
  const double hr_random = hits_random / users;
  INFO("HR@10 successor " << hr_successor << ", popularity " << hr_popularity << ", random "
                          << hr_random);
  CHECK(hr_successor > hr_popularity + 0.15);
  CHECK(hr_successor > 2.0 * hr_popularity);
  CHECK(hr_popularity > 3.0 * hr_random);
}
