// distillrec/data/negative_sampler.hpp
//
// Uniform negative items: draws from 1..num_items excluding a sorted list of unique ids (usually
// the user's history), as SASRec's `random_neq` does (kang205 `sampler.py`, methods.md §4.5).
//
// When at most half of the items are excluded, an item is drawn and redrawn while it is excluded
// (rejection, as SASRec; under 2 draws on average). Otherwise, or if rejection fails 32 times in
// a row, the k-th allowed item is found directly with a binary search over the excluded list, so
// no draw loops for long even when 99% of the items are excluded. Both paths give exactly the
// uniform distribution over the allowed items.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"

namespace distillrec::data {

namespace detail {
using distillrec::detail::concat;
}  // namespace detail

/// The distinct items of a sequence in ascending order: the exclusion list of NegativeSampler.
inline std::vector<ItemId> sorted_unique(const Sequence& sequence) {
  std::vector<ItemId> items(sequence.begin(), sequence.end());
  std::sort(items.begin(), items.end());
  items.erase(std::unique(items.begin(), items.end()), items.end());
  return items;
}

class NegativeSampler {
 public:
  /// Rejection sampling is used while the excluded items are at most this fraction of all items.
  static constexpr double kMaxRejectionExcludedFraction = 0.5;
  /// Rejections in a row before switching to the direct draw.
  static constexpr int kMaxRejections = 32;

  explicit NegativeSampler(ItemId num_items) : num_items_(num_items) {
    if (num_items < 1) {
      throw ConfigError(
          detail::concat("NegativeSampler: num_items must be at least 1, got ", num_items));
    }
  }

  ItemId num_items() const { return num_items_; }

  /// One item of 1..num_items not in `sorted_excluded` (ascending, unique; ids outside
  /// 1..num_items are ignored). Throws ConfigError if every item is excluded.
  ItemId sample(const std::vector<ItemId>& sorted_excluded, Rng& rng) const {
    ItemId item = kPaddingId;
    sample(sorted_excluded, 1, &item, rng);
    return item;
  }

  /// `count` independent draws into out[0..count).
  void sample(const std::vector<ItemId>& sorted_excluded, Index count, ItemId* out,
              Rng& rng) const {
    sample(sorted_excluded.data(), sorted_excluded.data() + sorted_excluded.size(), count, out,
           rng);
  }

  /// The same with the exclusion list given as a range [excluded_begin, excluded_end), for lists
  /// stored back to back in one array (the batcher's per-user histories).
  void sample(const ItemId* excluded_begin, const ItemId* excluded_end, Index count, ItemId* out,
              Rng& rng) const {
    if (count < 0) {
      throw ConfigError(detail::concat("NegativeSampler: negative sample count ", count));
    }
    DISTILLREC_ASSERT(std::adjacent_find(excluded_begin, excluded_end,
                                         std::greater_equal<ItemId>()) == excluded_end);
    // The part of the list that lies inside 1..num_items.
    const ItemId* first = std::lower_bound(excluded_begin, excluded_end, ItemId{1});
    const ItemId* last = excluded_end;
    last = std::upper_bound(first, last, num_items_);
    const auto num_excluded = static_cast<std::uint64_t>(last - first);
    const std::uint64_t num_allowed = static_cast<std::uint64_t>(num_items_) - num_excluded;
    if (num_allowed == 0) {
      throw ConfigError(detail::concat("NegativeSampler: all ", num_items_,
                                       " items are excluded, no negative can be drawn"));
    }
    const bool rejection = static_cast<double>(num_excluded) <=
                           kMaxRejectionExcludedFraction * static_cast<double>(num_items_);
    for (Index i = 0; i < count; ++i) {
      out[i] = rejection ? draw_by_rejection(first, last, num_allowed, rng)
                         : draw_directly(first, last, num_allowed, rng);
    }
  }

 private:
  ItemId draw_by_rejection(const ItemId* first, const ItemId* last, std::uint64_t num_allowed,
                           Rng& rng) const {
    for (int attempt = 0; attempt < kMaxRejections; ++attempt) {
      const auto item =
          static_cast<ItemId>(1 + rng.uniform_int(static_cast<std::uint64_t>(num_items_)));
      if (!std::binary_search(first, last, item)) return item;
    }
    return draw_directly(first, last, num_allowed, rng);
  }

  /// The k-th allowed item (k uniform in [0, num_allowed)): below excluded[j] lie
  /// excluded[j] - 1 - j allowed items, a non-decreasing count, so the number j of excluded items
  /// before the answer is found by binary search and the answer is k + 1 + j.
  static ItemId draw_directly(const ItemId* first, const ItemId* last, std::uint64_t num_allowed,
                              Rng& rng) {
    const auto k = static_cast<std::int64_t>(rng.uniform_int(num_allowed));
    const ItemId* lo = first;
    std::ptrdiff_t length = last - first;
    while (length > 0) {  // first position j with excluded[j] - 1 - j > k
      const std::ptrdiff_t half = length / 2;
      const ItemId* middle = lo + half;
      if (static_cast<std::int64_t>(*middle) - 1 - (middle - first) > k) {
        length = half;
      } else {
        lo = middle + 1;
        length -= half + 1;
      }
    }
    return static_cast<ItemId>(k + 1 + (lo - first));
  }

  ItemId num_items_;
};

}  // namespace distillrec::data
