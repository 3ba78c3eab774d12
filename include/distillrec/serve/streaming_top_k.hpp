// distillrec/serve/streaming_top_k.hpp
//
// Top-K over the whole catalogue in bounded memory. score_items + top_k need a [users, items]
// score matrix: 128 users x 1,000,000 items is 512 MB. streaming_top_k scores the catalogue in
// blocks of `item_block` items instead ([users, item_block] scratch, whatever the catalogue
// size) and keeps a running heap of the best k per user across blocks.
//
// The result follows top_k's rules for every block size: best first, equal scores ranking the
// lower item id first, excluded items never returned (fewer than k come back when fewer than k
// items are left), NaN scores an error. Given the same scores it equals score_items + mask_items
// + top_k on the whole row exactly; a GEMM over a block may round a score differently from one
// over the whole catalogue in the last bit (another kernel, another summation order), which can
// only swap items whose scores are that close. Blocks are scored with the library's GEMM (oneDNN
// where linked) and scanned row by row on the library's threads.
//
//   serve::StreamingTopKWorkspace<float> ws;            // one per calling thread; reused
//   std::vector<std::vector<serve::ScoredItem>> top;
//   serve::streaming_top_k(users, model.output_weights(), /*k=*/10, histories, top, ws);
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/output_head.hpp"
#include "distillrec/serve/scoring.hpp"

#include <algorithm>
#include <limits>
#include <vector>

namespace distillrec::serve {

/// Items scored at once by default: 4096 x 4 bytes = 16 KiB per user row, small enough for the
/// block to stay in cache between the GEMM that writes it and the scan that reads it.
inline constexpr Index kDefaultItemBlock = 4096;

/// Per-thread scratch of streaming_top_k: grows to the largest [users, item_block] seen, then
/// no call allocates (the result vectors keep their capacity too).
template <typename T>
struct StreamingTopKWorkspace {
  ScratchMatrix<T> block;
  std::vector<T> thresholds;
};

/// top[r] = the k best items for users.row(r) scored through `head`, best first, leaving out
/// the items of excluded[r] (ids outside 1..N are ignored). `excluded` is empty (exclude
/// nothing) or has one entry per user, each a sequence or nullptr.
template <typename T>
void streaming_top_k(const ConstMatrixRef<T>& users, const nn::HeadWeights<T>& head, Index k,
                     const std::vector<const Sequence*>& excluded, std::vector<std::vector<ScoredItem>>& top,
                     StreamingTopKWorkspace<T>& ws, Index item_block = kDefaultItemBlock) {
  const Index rows = users.rows(), num_items = head.num_items();
  if (k < 0) throw ConfigError(distillrec::detail::concat("top-K: k must be >= 0, got ", k));
  if (item_block <= 0) throw ConfigError(distillrec::detail::concat("top-K: the item block must be >= 1, got ", item_block));
  if (users.cols() != head.dim()) {
    throw ShapeError(distillrec::detail::concat("top-K: output vectors have ", users.cols(), " columns, the output head ", head.dim()));
  }
  if (!excluded.empty() && static_cast<Index>(excluded.size()) != rows) {
    throw ShapeError(distillrec::detail::concat("top-K: ", excluded.size(), " exclusion lists for ", rows, " users"));
  }
  top.resize(static_cast<std::size_t>(rows));
  ws.thresholds.assign(static_cast<std::size_t>(rows), -std::numeric_limits<T>::infinity());
  for (auto& heap : top) {
    heap.clear();
    heap.reserve(static_cast<std::size_t>(k));
  }
  if (rows == 0 || k == 0 || num_items == 0) return;
  const Index width = std::min(item_block, num_items);
  const bool threaded = rows > 1 && rows * width > 100000 && !parallel::in_parallel();
  for (Index begin = 0; begin < num_items; begin += width) {
    const Index count = std::min(width, num_items - begin);
    auto block = ws.block.resize(rows, count);
    backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), users, head.weight.middleRows(begin, count), T(0), block);
    const T* bias = head.bias != nullptr ? head.bias + begin : nullptr;
    const auto first = static_cast<ItemId>(begin + 1);
    parallel::ExceptionCollector errors;  // a NaN score throws from inside the loop
    parallel::for_each(rows, threaded, [&](Index r, int) { errors.run([&] {
      T* row = block.row(r).data();
      if (!excluded.empty() && excluded[static_cast<std::size_t>(r)] != nullptr) {
        for (ItemId item : *excluded[static_cast<std::size_t>(r)]) {
          if (item >= first && item < first + count) row[item - first] = -std::numeric_limits<T>::infinity();
        }
      }
      auto& heap = top[static_cast<std::size_t>(r)];
      T& threshold = ws.thresholds[static_cast<std::size_t>(r)];
      if (bias != nullptr) {
        detail::scan_into_heap<true>(row, bias, count, first, k, heap, threshold);
      } else {
        detail::scan_into_heap<false>(row, bias, count, first, k, heap, threshold);
      }
    }); });
    errors.rethrow();
  }
  for (auto& heap : top) std::sort_heap(heap.begin(), heap.end(), detail::better);
}

}  // namespace distillrec::serve
