#include <algorithm>
#include <numeric>
#include <vector>

#include "distillrec/data/negative_sampler.hpp"
#include "support.hpp"

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

namespace {

/// Draws `draws` items and returns the chi-square statistic of their counts against the uniform
/// distribution over the allowed items; fails if an excluded or out-of-range item is drawn.
double chi_square_of_draws(ItemId num_items, const std::vector<ItemId>& excluded, Index draws,
                           std::uint64_t seed) {
  const NegativeSampler sampler(num_items);
  Rng rng(seed);
  std::vector<Index> counts(static_cast<std::size_t>(num_items) + 1, 0);
  std::vector<ItemId> out(static_cast<std::size_t>(draws));
  sampler.sample(excluded, draws, out.data(), rng);
  for (const ItemId item : out) {
    REQUIRE(item >= 1);
    REQUIRE(item <= num_items);
    ++counts[static_cast<std::size_t>(item)];
  }
  const auto allowed = static_cast<double>(num_items) - static_cast<double>(excluded.size());
  const double expected = static_cast<double>(draws) / allowed;
  double chi_square = 0.0;
  for (ItemId item = 1; item <= num_items; ++item) {
    const bool is_excluded = std::binary_search(excluded.begin(), excluded.end(), item);
    const auto count = static_cast<double>(counts[static_cast<std::size_t>(item)]);
    if (is_excluded) {
      REQUIRE(count == 0);
    } else {
      chi_square += (count - expected) * (count - expected) / expected;
    }
  }
  return chi_square;
}

}  // namespace

TEST_CASE("sorted_unique sorts and deduplicates a sequence", "[data][sampler]") {
  REQUIRE(sorted_unique({5, 3, 5, 1, 3}) == std::vector<ItemId>{1, 3, 5});
  REQUIRE(sorted_unique({}).empty());
}

TEST_CASE("NegativeSampler draws uniformly over the allowed items", "[data][sampler]") {
  // Few exclusions (rejection path): 16 allowed items, 15 degrees of freedom. The 0.1% critical
  // value of chi-square(15) is 37.7; 50 leaves room for seeds and still catches a real bias.
  const double rejection = chi_square_of_draws(20, {3, 7, 8, 15}, 160000, 1);
  CHECK(rejection < 50.0);
  // Most items excluded (direct path), including the first and last ids: allowed 5..8, 11, 12.
  const double direct =
      chi_square_of_draws(20, {1, 2, 3, 4, 9, 10, 13, 14, 15, 16, 17, 18, 19, 20}, 60000, 2);
  CHECK(direct < 30.0);  // 5 degrees of freedom: 0.1% critical value 20.5
  // No exclusions at all.
  CHECK(chi_square_of_draws(50, {}, 100000, 3) < 100.0);  // 49 dof: 0.1% critical value 85.4
}

TEST_CASE("NegativeSampler respects exclusions when 99% of the items are excluded",
          "[data][sampler]") {
  const ItemId num_items = 10000;
  Rng rng(11);
  std::vector<ItemId> all(static_cast<std::size_t>(num_items));
  std::iota(all.begin(), all.end(), 1);
  std::vector<ItemId> allowed;
  for (int i = 0; i < 100; ++i) {  // 100 random allowed items, the rest excluded
    const auto j = static_cast<std::size_t>(rng.uniform_int(all.size()));
    allowed.push_back(all[j]);
    all.erase(all.begin() + static_cast<std::ptrdiff_t>(j));
  }
  std::sort(all.begin(), all.end());
  const std::vector<ItemId>& excluded = all;
  REQUIRE(excluded.size() == 9900);
  // 99 degrees of freedom: 0.1% critical value 148.
  CHECK(chi_square_of_draws(num_items, excluded, 100000, 5) < 170.0);

  // Single draws too, and a single allowed item.
  const NegativeSampler sampler(num_items);
  for (int i = 0; i < 1000; ++i) {
    const ItemId item = sampler.sample(excluded, rng);
    REQUIRE(std::find(allowed.begin(), allowed.end(), item) != allowed.end());
  }
  std::vector<ItemId> all_but_one(static_cast<std::size_t>(num_items) - 1);
  std::iota(all_but_one.begin(), all_but_one.end(), 1);  // 1..9999: only 10000 is allowed
  for (int i = 0; i < 100; ++i) REQUIRE(sampler.sample(all_but_one, rng) == num_items);
  all_but_one.back() = num_items;  // 1..9998, 10000: only 9999 is allowed
  for (int i = 0; i < 100; ++i) REQUIRE(sampler.sample(all_but_one, rng) == num_items - 1);
}

TEST_CASE("NegativeSampler ignores excluded ids outside 1..num_items", "[data][sampler]") {
  const NegativeSampler sampler(4);
  Rng rng(3);
  // 0 (padding) and 7 are not items; 1, 2, 3 are excluded, so 4 is the only choice.
  for (int i = 0; i < 50; ++i) REQUIRE(sampler.sample({0, 1, 2, 3, 7}, rng) == 4);
}

TEST_CASE("NegativeSampler errors: no items, everything excluded, negative count",
          "[data][sampler][errors]") {
  REQUIRE_THROWS_AS(NegativeSampler(0), ConfigError);
  const NegativeSampler sampler(3);
  Rng rng(1);
  REQUIRE_THROWS_AS(sampler.sample({1, 2, 3}, rng), ConfigError);
  REQUIRE_THROWS_WITH(sampler.sample({1, 2, 3}, rng), Contains("all 3 items are excluded"));
  ItemId out[2] = {0, 0};
  REQUIRE_THROWS_AS(sampler.sample({1, 2, 3}, 2, out, rng), ConfigError);
  REQUIRE_THROWS_AS(sampler.sample({}, -1, out, rng), ConfigError);
  REQUIRE_NOTHROW(sampler.sample({}, 0, out, rng));
  const NegativeSampler single(1);
  REQUIRE(single.sample({}, rng) == 1);
  REQUIRE_THROWS_AS(single.sample({1}, rng), ConfigError);
}

TEST_CASE("NegativeSampler is deterministic given the generator", "[data][sampler]") {
  const NegativeSampler sampler(1000);
  const std::vector<ItemId> few = {10, 20, 30};
  std::vector<ItemId> many(900);
  std::iota(many.begin(), many.end(), 50);
  for (const std::vector<ItemId>* excluded :
       {&few, static_cast<const std::vector<ItemId>*>(&many)}) {
    Rng a(9), b(9), c(10);
    std::vector<ItemId> xa(200), xb(200), xc(200);
    sampler.sample(*excluded, 200, xa.data(), a);
    sampler.sample(*excluded, 200, xb.data(), b);
    sampler.sample(*excluded, 200, xc.data(), c);
    REQUIRE(xa == xb);
    REQUIRE(xa != xc);
  }
}
