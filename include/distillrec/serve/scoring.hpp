// distillrec/serve/scoring.hpp
//
// The one scoring path shared by recommendation and evaluation, so that what is evaluated is
// exactly what is served:
//   score_items       scores [B, N] of every item through the model's output head
//                     (nn/output_head.hpp; column j is item j + 1)
//   mask_items        scores of excluded items (e.g. the user's history) set to -inf
//   score_candidates  scores [B, C] of given candidate items only (sampled evaluation)
//   top_k             the k best items of one score row, highest first, ties to the lower id
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/nn/output_head.hpp"

#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace distillrec::serve {

/// One recommended item and its score.
struct ScoredItem {
  ItemId item = kPaddingId;
  float score = 0.0f;
  bool operator==(const ScoredItem& other) const { return item == other.item && score == other.score; }
};

/// scores [B, N] = users [B, d] scored through the output head (W [N, d], optional bias).
template <typename T>
void score_items(const ConstMatrixRef<T>& users, const nn::HeadWeights<T>& head, MatrixRef<T> scores) {
  const Index num_items = head.num_items();
  require_shape(scores, users.rows(), num_items, "item scores");
  if (users.cols() != head.dim()) {
    throw ShapeError(distillrec::detail::concat("scoring: output vectors have ", users.cols(), " columns, the output head ", head.dim()));
  }
  backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), users, head.weight, T(0), scores);
  if (head.bias != nullptr) {
    // Row by row (contiguous, vectorised), on the library's threads when large; Eigen's
    // rowwise() broadcast on these maps is a scalar loop.
    const Eigen::Map<const RowVector<T>> bias(head.bias, num_items);
    parallel::for_each(scores.rows(), scores.size() > 100000 && !parallel::in_parallel(),
                       [&](Index r, int) { scores.row(r) += bias; });
  }
}

/// Sets the score of every item in excluded[b] (ids 1..N; 0 and out-of-range ids are ignored)
/// to -inf in row b.
template <typename T>
void mask_items(MatrixRef<T> scores, Index row, const Sequence& excluded) {
  const Index num_items = scores.cols();
  for (ItemId item : excluded) {
    if (item >= 1 && item <= num_items) scores(row, item - 1) = -std::numeric_limits<T>::infinity();
  }
}

/// scores(b, c) = the head's score of item candidates(b, c) for users.row(b).
template <typename T>
void score_candidates(const ConstMatrixRef<T>& users, const nn::HeadWeights<T>& head, const Matrix<ItemId>& candidates,
                      MatrixRef<T> scores) {
  require_shape(scores, candidates.rows(), candidates.cols(), "candidate scores");
  require_shape(users, candidates.rows(), head.dim(), "candidate output vectors");
  for (Index b = 0; b < candidates.rows(); ++b) {
    for (Index c = 0; c < candidates.cols(); ++c) {
      const ItemId item = candidates(b, c);
      if (item < 1 || item > head.num_items()) {
        throw ShapeError(distillrec::detail::concat("scoring: candidate item ", item, " is outside 1..", head.num_items()));
      }
      scores(b, c) = head.score(users.row(b), item);
    }
  }
}

/// The k highest-scoring items of one row of item scores (column j = item j + 1), best first;
/// equal scores rank the lower item id first; -inf (masked) items are never returned, so fewer
/// than k items come back when fewer are unmasked. NaN scores throw.
namespace detail {

// detail::concat written in this namespace means the library-wide helper.
using distillrec::detail::concat;

/// The selection order: "better" first (higher score, then lower id): a strict total order.
inline bool better(const ScoredItem& a, const ScoredItem& b) { return a.score > b.score || (a.score == b.score && a.item < b.item); }

struct Better {
  bool operator()(const ScoredItem& a, const ScoredItem& b) const { return better(a, b); }
};

/// Keeps the best k of `candidates` (the k best by `better`, in no particular order) and
/// returns the entry bar for later items: the k-th best score once k are kept, else -inf.
template <typename T>
T prune_candidates(std::vector<ScoredItem>& candidates, Index k) {
  if (static_cast<Index>(candidates.size()) > k) {
    // The k-th best lands at k - 1, the better ones before it: it is the bar.
    std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end(), Better{});
    candidates.resize(static_cast<std::size_t>(k));
    return static_cast<T>(candidates.back().score);
  }
  if (static_cast<Index>(candidates.size()) < k) return -std::numeric_limits<T>::infinity();
  return static_cast<T>(std::max_element(candidates.begin(), candidates.end(), Better{})->score);
}

/// The selection's result: the best k of `candidates`, best first.
inline void finish_candidates(std::vector<ScoredItem>& candidates, Index k) {
  if (k <= 0) {
    candidates.clear();
    return;
  }
  prune_candidates<float>(candidates, k);
  std::sort(candidates.begin(), candidates.end(), Better{});
}

/// Scans the scores of items first_item .. first_item + count - 1 (scores[j], plus bias[j] when
/// kBias) into `candidates`, a running selection of the best k: items strictly better than the
/// entry bar `threshold` are appended, and whenever 2k have gathered the best k are kept
/// (prune_candidates), which raises the bar. Amortised O(1) per entering item, where a heap
/// costs O(log k) comparisons through unpredictable branches. Scanning a row in consecutive
/// pieces, in increasing item order, selects the same items as scanning it whole (an item tying
/// the bar has a higher id than the one it ties, so it is rightly left out); finish_candidates
/// sorts the result. Start with an empty vector and threshold -inf.
template <bool kBias, typename T>
void scan_into_selection(const T* scores, const T* bias, Index count, ItemId first_item, Index k, std::vector<ScoredItem>& candidates,
                    T& threshold) {
  if (k <= 0) return;
  auto value = [&](Index j) {
    if constexpr (kBias) {
      return scores[j] + bias[j];
    } else {
      return scores[j];
    }
  };
  const auto limit = static_cast<std::size_t>(2 * k);
  // Most items do not enter: whole SIMD vectors at or below the bar are skipped with one
  // comparison; NaN scores are an error, never silently skipped.
  auto scalar = [&](Index begin, Index end) {
    for (Index j = begin; j < end; ++j) {
      const T s = value(j);
      if (s > threshold) {
        candidates.push_back(ScoredItem{static_cast<ItemId>(first_item + j), static_cast<float>(s)});
        if (candidates.size() >= limit) threshold = prune_candidates<T>(candidates, k);
      } else if (s != s) {
        throw Error(distillrec::detail::concat("scoring: NaN score for item ", first_item + j));
      }
    }
  };
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same<T, float>::value) {
    // One entering item at a time, re-checked against the bar (a prune may have raised it).
    auto enter = [&](Index j) {
      const T s = value(j);
      if (s > threshold) {
        candidates.push_back(ScoredItem{static_cast<ItemId>(first_item + j), static_cast<float>(s)});
        if (candidates.size() >= limit) threshold = prune_candidates<T>(candidates, k);
      }
    };
    // The lanes above the bar as a bit mask: only those items are visited.
#if defined(__AVX512F__)
    constexpr Index W = 16;
    auto above = [&](Index j, std::uint32_t& nan) -> std::uint32_t {
      __m512 v = _mm512_loadu_ps(scores + j);
      if constexpr (kBias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));
      nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      return _mm512_cmp_ps_mask(v, _mm512_set1_ps(threshold), _CMP_GT_OQ);
    };
#else
    constexpr Index W = 8;
    auto above = [&](Index j, std::uint32_t& nan) -> std::uint32_t {
      __m256 v = _mm256_loadu_ps(scores + j);
      if constexpr (kBias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
      nan = static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
      return static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(threshold), _CMP_GT_OQ)));
    };
#endif
    const Index vec_end = count - count % W;
    for (Index j = 0; j < vec_end; j += W) {
      std::uint32_t nan = 0;
      std::uint32_t mask = above(j, nan);
      if (nan != 0) scalar(j, j + W);  // throws naming the item
      while (mask != 0) {
        enter(j + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
    scalar(vec_end, count);
    return;
  }
#endif
  using B = xsimd::batch<T>;
  constexpr Index W = static_cast<Index>(B::size);
  const Index vec_end = count - count % W;
  for (Index j = 0; j < vec_end; j += W) {
    B v = B::load_unaligned(scores + j);
    if constexpr (kBias) v += B::load_unaligned(bias + j);
    if (xsimd::any(v > B(threshold)) || xsimd::any(xsimd::isnan(v))) scalar(j, j + W);
  }
  scalar(vec_end, count);
}

template <bool kBias, typename T>
void top_k_impl(const T* scores, const T* bias, Index num_items, Index k, std::vector<ScoredItem>& out) {
  out.clear();
  if (k <= 0) return;
  out.reserve(static_cast<std::size_t>(std::min(k, num_items)) * 2);
  T threshold = -std::numeric_limits<T>::infinity();
  scan_into_selection<kBias>(scores, bias, num_items, ItemId{1}, k, out, threshold);
  finish_candidates(out, k);
}

}  // namespace detail

template <typename T>
void top_k(const T* scores, Index num_items, Index k, std::vector<ScoredItem>& out) {
  detail::top_k_impl<false>(scores, static_cast<const T*>(nullptr), num_items, k, out);
}

/// The same for the scores plus a bias per item (scores[j] + bias[j]), added on the fly: a caller
/// that only needs the top k never writes the biased row.
template <typename T>
void top_k(const T* scores, const T* bias, Index num_items, Index k, std::vector<ScoredItem>& out) {
  if (bias == nullptr) {
    detail::top_k_impl<false>(scores, bias, num_items, k, out);
  } else {
    detail::top_k_impl<true>(scores, bias, num_items, k, out);
  }
}

}  // namespace distillrec::serve
