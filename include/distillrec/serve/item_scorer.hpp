// distillrec/serve/item_scorer.hpp
//
// Scoring the catalogue under a precision policy, shared by serving and evaluation, so what is
// evaluated is what is served (eval::FullRankingOptions::policy, serve::RecommenderOptions).
//
//   fp32  the head's item table as it is, the library's GEMM (oneDNN sgemm where linked).
//   bf16  a bfloat16 copy of the table (half the bytes to stream), user vectors rounded to
//         bfloat16, fp32 accumulation: oneDNN's bf16 matmul primitive where oneDNN has one for
//         the CPU (native on AVX512-BF16 or AMX); elsewhere (AVX2, or no oneDNN) the same arithmetic by converting
//         tiles of the table to fp32, which is slower than fp32 itself (only the memory saving
//         remains). description() says which path runs.
//   int8  an int8 copy of the table with one scale per item row (max |w| / 127) and user
//         vectors quantised per query to 7 bits around a zero point (so the u8 x s8 products of
//         CPUs without VNNI never saturate), exact integer sums through oneDNN's integer matmul;
//         the best `shortlist` items of that approximate scoring are then re-scored exactly in
//         fp32 and the top k taken from them. Scores returned are the fp32 ones.
//
// bf16 and int8 tables that fit `kernel_max_bytes` are also kept packed for the kernels of
// serve/packed_table.hpp, which run queries of up to `kernel_rows` users: by default every query
// where they use the CPU's dot-product instruction and oneDNN's matmul has no AMX tiles (on such
// CPUs they are faster at every batch size), else queries of up to 4 users.
//
// The catalogue is scored in blocks of `item_block` items with a running selection of the best k per user, so the
// scratch of a query is [users, item_block] whatever the catalogue size. Primitives are created
// once, when the scorer is built, and shared by every thread (their scratchpad is user-managed:
// each ItemScorer::Workspace, one per thread or pooled workspace, holds its own). The scorer reads the head's weights in place (fp32) or keeps
// its own copies (bf16, int8): it must not outlive the model it was built from.
//
// Ranking rules are top_k's (serve/scoring.hpp): best first, equal scores to the lower item id,
// excluded items never returned, NaN scores an error.
#pragma once

#include "distillrec/backend/bf16_gemm.hpp"
#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/nn/output_head.hpp"
#include "distillrec/serve/packed_table.hpp"
#include "distillrec/serve/scoring.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#ifdef DISTILLREC_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace distillrec::serve {

enum class Precision { kFp32, kBf16, kInt8 };

inline std::string to_string(Precision precision) {
  switch (precision) {
    case Precision::kFp32: return "fp32";
    case Precision::kBf16: return "bf16";
    case Precision::kInt8: return "int8";
  }
  return "?";
}

inline Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  if (name == "int8") return Precision::kInt8;
  throw ConfigError("unknown scoring precision \"" + name + "\" (expected fp32, bf16 or int8)");
}

/// How the catalogue is scored.
struct ScoringPolicy {
  Precision precision = Precision::kFp32;
  /// Items scored per step: [users, item_block] floats of scratch per query; 0 = the whole
  /// catalogue in one step (evaluation's default: fp32 then computes exactly what
  /// score_items does).
  Index item_block = 4096;
  /// int8: items of the approximate scoring re-scored in fp32 per query; 0 = max(40, 4 k).
  /// (On Amazon Games' SASRec even 20 gave fp32's exact top-10 for every test user,
  /// bench/serve --shortlist; the default leaves a margin.)
  Index shortlist = 0;
  /// bf16 and int8: queries of at most this many users are scored by the packed-table kernels
  /// (serve/packed_table.hpp: one pass over the table per 8 users, at memory speed for one),
  /// larger ones by oneDNN's matmul (or its fallback). 0 = never. kAutoKernelRows (the
  /// default): every query where the kernels run the CPU's dot-product instruction (AVX512-BF16,
  /// VNNI) and oneDNN's matmul has no matrix unit (AMX) for larger ones, as on AVX-512 CPUs
  /// without AMX, where they were measured at least as fast at 4 and at 128 users (5-10%);
  /// else queries of up to 4 users.
  static constexpr Index kAutoKernelRows = -1;
  Index kernel_rows = kAutoKernelRows;
  /// ... as long as the packed copy has at most this many bytes: a table that fits the caches.
  /// Larger (memory-resident) tables are streamed faster by oneDNN's kernels at one user too
  /// (1,000,000 items x 50: bf16 7.3 ms against 10.1 ms, bench/serve), and keep one copy.
  std::size_t kernel_max_bytes = std::size_t{32} << 20;
  /// bf16 and int8: run the portable paths (the packed kernels on xsimd batches without the
  /// AVX512-BF16 or VNNI instructions; for larger queries, tiles of the table converted to fp32)
  /// even where the CPU or oneDNN has more; the results are the same up to fp32 summation order.
  bool portable = false;

  Index shortlist_for(Index k) const { return shortlist > 0 ? std::max(shortlist, k) : std::max<Index>(40, 4 * k); }

  void validate() const {
    if (item_block < 0) throw ConfigError(distillrec::detail::concat("scoring policy: item_block must be >= 0, got ", item_block));
    if (shortlist < 0) throw ConfigError(distillrec::detail::concat("scoring policy: shortlist must be >= 0, got ", shortlist));
    if (kernel_rows < kAutoKernelRows) {
      throw ConfigError(distillrec::detail::concat("scoring policy: kernel_rows must be >= 0 (or kAutoKernelRows), got ", kernel_rows));
    }
  }
};

namespace detail {

// detail::concat written in this namespace means the library-wide helper.
using distillrec::detail::concat;

/// float to bfloat16, rounding to nearest even (backend/bf16_gemm.hpp).
inline std::uint16_t float_to_bfloat16(float value) { return backend::bf16::from_float(value); }
inline float bfloat16_to_float(std::uint16_t value) { return backend::bf16::to_float(value); }

/// User vectors are quantised to q = round(u / scale) + kInt8ZeroPoint in 1..127.
inline constexpr int kInt8ZeroPoint = 64;
inline constexpr float kInt8UserLevels = 63.0f;

}  // namespace detail

template <typename T>
class ItemScorer {
 public:
  /// Per-thread scratch; grows to the largest query seen, then calls reuse it.
  struct Workspace {
    std::vector<T> block;                     // [rows, width] scores of the current block
    std::vector<T> thresholds;                // entry bar of each row's selection
    std::vector<float> tile;                  // fallback: a block of the table converted to fp32
    std::vector<float> users_f32;             // fallback: users as the fp32 values the policy scores
    std::vector<std::uint16_t> users_bf16;    // [rows, d]
    std::vector<std::uint8_t> users_u8;       // [rows, d]
    std::vector<std::uint32_t> users_packed;  // packed kernels: the users as the table's words
    std::vector<float> user_scale;            // int8: one per row
    std::vector<std::int32_t> sums;           // int8: [rows, width]
    Matrix<float> exact;                      // int8 fallback: the integer sums in fp32
    std::vector<std::vector<ScoredItem>> shortlists;
#ifdef DISTILLREC_WITH_ONEDNN
    std::unique_ptr<dnnl::stream> stream;     // on stream_engine
    std::shared_ptr<const dnnl::engine> stream_engine;
    std::vector<unsigned char> scratchpad;    // the primitives' scratch (user-managed: a
                                              // primitive then runs on many threads at once)
#endif
  };

  /// Builds the scorer for `head` (which must outlive it) under `policy`. bf16 and int8 need
  /// T = float. Weights with NaN or infinity are an error naming the item.
  ItemScorer(const nn::HeadWeights<T>& head, ScoringPolicy policy) : head_(head), policy_(policy) {
    policy_.validate();
    if (policy_.precision != Precision::kFp32 && !std::is_same<T, float>::value) {
      throw ConfigError("scoring policy: " + to_string(policy_.precision) + " scoring needs float weights");
    }
    Index block = policy_.item_block > 0 ? policy_.item_block : head_.num_items();
    // The packed kernels start blocks at whole panels of 16 items.
    if (policy_.precision != Precision::kFp32) block = (block + detail::kPanel - 1) / detail::kPanel * detail::kPanel;
    width_ = std::max<Index>(1, std::min(block, head_.num_items()));
    if (policy_.precision == Precision::kFp32) {
      description_ = backend::kHasOneDnn ? "fp32: oneDNN sgemm" : "fp32: Eigen";
      return;
    }
    if constexpr (std::is_same<T, float>::value) {
      check_finite();
      if (policy_.precision == Precision::kBf16) build_bf16(); else build_int8();
    }
  }

  const ScoringPolicy& policy() const { return policy_; }
  /// Queries of at most this many users run the packed kernels (the policy's kernel_rows
  /// resolved on this machine; 0: none do, e.g. fp32 or a table beyond kernel_max_bytes).
  Index kernel_rows() const { return kernel_rows_; }
  Precision precision() const { return policy_.precision; }
  /// What runs, e.g. "bf16: oneDNN matmul (brg:avx512_core_bf16)" or the fallback's reason.
  const std::string& description() const { return description_; }
  Index num_items() const { return head_.num_items(); }
  Index dim() const { return head_.dim(); }
  const nn::HeadWeights<T>& head() const { return head_; }
  /// Bytes of the table the policy streams per query (the head's own for fp32).
  std::size_t table_bytes() const {
    const auto cells = static_cast<std::size_t>(head_.num_items() * head_.dim());
    switch (policy_.precision) {
      case Precision::kFp32: return cells * sizeof(T);
      case Precision::kBf16: return cells * 2;
      case Precision::kInt8: return cells + static_cast<std::size_t>(head_.num_items()) * 8;
    }
    return 0;
  }

  /// Bytes the scorer holds besides the model (bf16, int8: the row-major copy oneDNN reads,
  /// unless the packed kernels run every query, and the kernels' packed copy; fp32: none).
  std::size_t memory_bytes() const {
    return bf16_.size() * sizeof(std::uint16_t) + int8_.size() + (row_scale_.size() + row_offset_.size()) * sizeof(float) +
           packed_bf16_.bytes() + packed_int8_.bytes();
  }

  /// Calls sink(first, count, block, stride) for consecutive blocks of items first..first+count-1
  /// (0-based), block[r * stride + j] being the policy's score of item first + j + 1 for
  /// users.row(r), bias included (int8: the approximate score).
  template <typename Sink>
  void for_each_block(const ConstMatrixRef<T>& users, Workspace& ws, Sink&& sink) const {
    if (users.cols() != head_.dim()) {
      throw ShapeError(distillrec::detail::concat("scoring: output vectors have ", users.cols(), " columns, the output head ",
                                                  head_.dim()));
    }
    const Index rows = users.rows(), num_items = head_.num_items();
    if (rows == 0 || num_items == 0) return;
    ws.block.resize(static_cast<std::size_t>(rows * width_));
    prepare_users(users, ws);
    for (Index first = 0; first < num_items; first += width_) {
      const Index count = std::min(width_, num_items - first);
      score_block(users, first, count, MatrixMap<T>(ws.block.data(), rows, count), ws);
      sink(first, count, static_cast<T*>(ws.block.data()), count);
    }
  }

  /// scores [rows, N] = the policy's scores of every item (int8: approximate, see rank_of_target).
  /// Written block by block straight into `scores` (no [rows, N] scratch besides it).
  void score_all(const ConstMatrixRef<T>& users, MatrixRef<T> scores, Workspace& ws) const {
    require_shape(scores, users.rows(), head_.num_items(), "policy scores");
    if (users.cols() != head_.dim()) {
      throw ShapeError(distillrec::detail::concat("scoring: output vectors have ", users.cols(), " columns, the output head ",
                                                  head_.dim()));
    }
    const Index num_items = head_.num_items();
    if (users.rows() == 0 || num_items == 0) return;
    prepare_users(users, ws);
    for (Index first = 0; first < num_items; first += width_) {
      const Index count = std::min(width_, num_items - first);
      score_block(users, first, count, scores.middleCols(first, count), ws);
    }
  }

  /// top[r] = the k best items for users.row(r), leaving out the items of *excluded(r) (a
  /// const Sequence*, may be null; ids outside 1..N ignored). Rows are scanned on the library's
  /// threads when `threaded` and the block is large.
  template <typename Excluded>
  void top_k(const ConstMatrixRef<T>& users, Index k, Excluded&& excluded, std::vector<std::vector<ScoredItem>>& top,
             Workspace& ws, bool threaded = true) const {
    if (k < 0) throw ConfigError(distillrec::detail::concat("top-K: k must be >= 0, got ", k));
    const Index rows = users.rows();
    const bool int8 = policy_.precision == Precision::kInt8;
    const Index kept = std::min(int8 ? policy_.shortlist_for(k) : k, head_.num_items());
    auto& selections = int8 ? ws.shortlists : top;
    selections.resize(static_cast<std::size_t>(rows));
    top.resize(static_cast<std::size_t>(rows));
    ws.thresholds.assign(static_cast<std::size_t>(rows), -std::numeric_limits<T>::infinity());
    for (auto& heap : selections) {
      heap.clear();
      heap.reserve(static_cast<std::size_t>(2 * kept));
    }
    if (k == 0 || kept == 0) {
      for (auto& heap : top) heap.clear();
      return;
    }
    const bool parallel_rows = threaded && rows > 1 && !parallel::in_parallel();
    for_each_block(users, ws, [&](Index first, Index count, T* block, Index stride) {
      const auto first_item = static_cast<ItemId>(first + 1);
      parallel::ExceptionCollector errors;  // a NaN score throws from inside the loop
      parallel::for_each(rows, parallel_rows && rows * count > 100000, [&](Index r, int) { errors.run([&] {
        T* row = block + r * stride;
        if (const Sequence* skip = excluded(r)) {
          for (ItemId item : *skip) {
            if (item >= first_item && item < first_item + count) row[item - first_item] = -std::numeric_limits<T>::infinity();
          }
        }
        detail::scan_into_selection<false>(row, static_cast<const T*>(nullptr), count, first_item, kept,
                                      selections[static_cast<std::size_t>(r)], ws.thresholds[static_cast<std::size_t>(r)]);
      }); });
      errors.rethrow();
    });
    for (auto& heap : selections) detail::finish_candidates(heap, kept);
    if (int8) {
      for (Index r = 0; r < rows; ++r) rescore(users.row(r), k, ws.shortlists[static_cast<std::size_t>(r)], top[static_cast<std::size_t>(r)]);
    }
  }

  /// Replaces `candidates` (items) by their exact fp32 scores and writes the best k of them to
  /// `out`, best first (the int8 policy's second stage).
  template <typename Row>
  void rescore(const Row& user, Index k, std::vector<ScoredItem>& candidates, std::vector<ScoredItem>& out) const {
    for (auto& c : candidates) {
      c.score = static_cast<float>(head_.score(user, c.item));
      if (c.score != c.score) throw Error(distillrec::detail::concat("scoring: NaN score for item ", c.item));
    }
    const auto keep = static_cast<std::ptrdiff_t>(std::min<Index>(k, static_cast<Index>(candidates.size())));
    std::partial_sort(candidates.begin(), candidates.begin() + keep, candidates.end(), detail::Better{});
    out.assign(candidates.begin(), candidates.begin() + keep);
  }

 private:
  void check_finite() const {
    for (Index j = 0; j < head_.num_items(); ++j) {
      const bool finite = head_.weight.row(j).allFinite() && (head_.bias == nullptr || std::isfinite(head_.bias[j]));
      if (!finite) throw Error(distillrec::detail::concat("scoring policy: the output head of item ", j + 1, " is not finite"));
    }
  }

  void build_bf16() {
    const Index n = head_.num_items(), d = head_.dim();
    bf16_.resize(static_cast<std::size_t>(n * d));
    for (Index j = 0; j < n; ++j) {
      for (Index c = 0; c < d; ++c) bf16_[static_cast<std::size_t>(j * d + c)] = detail::float_to_bfloat16(static_cast<float>(head_.weight(j, c)));
    }
    packed_native_ = detail::kBf16DotInstruction && !policy_.portable;
    std::string larger = policy_.portable ? "portable path: table converted to fp32 tile by tile"
                                          : "table converted to fp32 tile by tile (no oneDNN bf16 matmul on this machine)";
#ifdef DISTILLREC_WITH_ONEDNN
    if (!policy_.portable && make_primitives(dnnl::memory::data_type::bf16, dnnl::memory::data_type::bf16, dnnl::memory::data_type::f32)) {
      larger = "oneDNN matmul (" + impl_ + ")";
    }
#endif
    resolve_kernel_rows(packed_bytes(2));
    if (use_packed_) packed_bf16_.build(bf16_.data(), n, d);
    describe("bf16", packed_native_ ? "AVX512-BF16" : "xsimd, portable path", larger);
    if (every_query_packed()) {  // nothing reads the row-major copy or the primitives again
      bf16_ = {};
      release_primitives();
    }
  }

  bool every_query_packed() const { return use_packed_ && kernel_rows_ == std::numeric_limits<Index>::max(); }

  // kernel_rows_ and use_packed_ from the policy, once the larger queries' path is known.
  void resolve_kernel_rows(std::size_t packed_size) {
    Index rows = policy_.kernel_rows;
    if (rows == ScoringPolicy::kAutoKernelRows) {
      bool matrix_unit = false;  // oneDNN runs larger queries on AMX tiles
#ifdef DISTILLREC_WITH_ONEDNN
      matrix_unit = native_ && impl_.find("amx") != std::string::npos;
#endif
      rows = packed_native_ && !matrix_unit ? std::numeric_limits<Index>::max() : 4;
    }
    use_packed_ = rows > 0 && packed_size <= policy_.kernel_max_bytes;
    kernel_rows_ = use_packed_ ? rows : 0;
  }

  void release_primitives() {
#ifdef DISTILLREC_WITH_ONEDNN
    full_.reset();
    tail_.reset();
    native_ = false;
    scratchpad_bytes_ = 0;
#endif
  }

  // Bytes of a packed copy whose words hold `per_word` dimensions.
  std::size_t packed_bytes(Index per_word) const {
    const Index words = (head_.dim() + per_word - 1) / per_word;
    return static_cast<std::size_t>(detail::panels_for(head_.num_items()) * detail::kPanel * words) * sizeof(std::uint32_t);
  }

  // "<precision>: packed kernel (...) for up to R users per query, <larger> for more", or "for
  // every query (<larger> has no AMX here)".
  void describe(const char* precision, const char* kernel, const std::string& larger) {
    if (!use_packed_) {
      description_ = std::string(precision) + ": " + larger;
    } else if (every_query_packed()) {
      description_ = distillrec::detail::concat(precision, ": packed kernel (", kernel, ") for every query (", larger,
                                                " would run larger ones: no AMX)");
    } else {
      description_ = distillrec::detail::concat(precision, ": packed kernel (", kernel, ") for up to ", kernel_rows_,
                                                " users per query, ", larger, " for more");
    }
  }

  void build_int8() {
    const Index n = head_.num_items(), d = head_.dim();
    int8_.resize(static_cast<std::size_t>(n * d));
    row_scale_.resize(static_cast<std::size_t>(n));
    row_offset_.resize(static_cast<std::size_t>(n));
    for (Index j = 0; j < n; ++j) {
      const float max_abs = static_cast<float>(head_.weight.row(j).cwiseAbs().maxCoeff());
      const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
      std::int32_t sum = 0;
      for (Index c = 0; c < d; ++c) {
        const float q = std::nearbyint(static_cast<float>(head_.weight(j, c)) / scale);
        const auto v = static_cast<std::int8_t>(std::max(-127.0f, std::min(127.0f, q)));
        int8_[static_cast<std::size_t>(j * d + c)] = v;
        sum += v;
      }
      row_scale_[static_cast<std::size_t>(j)] = scale;
      row_offset_[static_cast<std::size_t>(j)] = scale * static_cast<float>(detail::kInt8ZeroPoint * sum);
    }
    packed_native_ = detail::kVnniInstruction && !policy_.portable;
    std::string larger = policy_.portable ? "portable path: table converted to fp32 tile by tile"
                                          : "table converted to fp32 tile by tile (no oneDNN int8 matmul)";
#ifdef DISTILLREC_WITH_ONEDNN
    if (!policy_.portable && make_primitives(dnnl::memory::data_type::u8, dnnl::memory::data_type::s8, dnnl::memory::data_type::s32)) {
      larger = "oneDNN matmul (" + impl_ + ")";
    }
#endif
    resolve_kernel_rows(packed_bytes(4));
    if (use_packed_) {
      packed_int8_.build(int8_.data(), n, d);
      // The kernels read the scales of whole panels.
      row_scale_.resize(static_cast<std::size_t>(packed_int8_.panels * detail::kPanel), 0.0f);
      row_offset_.resize(row_scale_.size(), 0.0f);
    }
    describe("int8", packed_native_ ? "AVX512-VNNI" : "xsimd, portable path", larger);
    if (every_query_packed()) {
      int8_ = {};
      release_primitives();
    }
    description_ += distillrec::detail::concat(", then fp32 re-score of ", policy_.shortlist > 0 ? distillrec::detail::concat(policy_.shortlist) : std::string("max(40, 4 k)"),
                                   " items per query");
  }

  // Users as the policy sees them: bf16-rounded, or int8 codes with a scale per row.
  void prepare_users(const ConstMatrixRef<T>& users, Workspace& ws) const {
    if (policy_.precision == Precision::kFp32) return;
    const Index rows = users.rows(), d = users.cols();
    const auto cells = static_cast<std::size_t>(rows * d);
    if (policy_.precision == Precision::kBf16) {
      ws.users_bf16.resize(cells);
      for (Index r = 0; r < rows; ++r) {
        for (Index c = 0; c < d; ++c) ws.users_bf16[static_cast<std::size_t>(r * d + c)] = detail::float_to_bfloat16(static_cast<float>(users(r, c)));
      }
    } else {
      ws.users_u8.resize(cells);
      ws.user_scale.resize(static_cast<std::size_t>(rows));
      for (Index r = 0; r < rows; ++r) {
        const float max_abs = static_cast<float>(users.row(r).cwiseAbs().maxCoeff());
        if (!std::isfinite(max_abs)) throw Error(distillrec::detail::concat("scoring: the output vector of row ", r, " is not finite"));
        const float scale = max_abs > 0.0f ? max_abs / detail::kInt8UserLevels : 1.0f;
        ws.user_scale[static_cast<std::size_t>(r)] = scale;
        for (Index c = 0; c < d; ++c) {
          const float q = std::nearbyint(static_cast<float>(users(r, c)) / scale);
          const float clamped = std::max(-detail::kInt8UserLevels, std::min(detail::kInt8UserLevels, q));
          ws.users_u8[static_cast<std::size_t>(r * d + c)] = static_cast<std::uint8_t>(static_cast<int>(clamped) + detail::kInt8ZeroPoint);
        }
      }
    }
    if (packed(rows)) {
      const Index words = policy_.precision == Precision::kBf16 ? packed_bf16_.words_per_item : packed_int8_.words_per_item;
      ws.users_packed.resize(static_cast<std::size_t>(rows * words));
      for (Index r = 0; r < rows; ++r) {
        if (policy_.precision == Precision::kBf16) {
          packed_bf16_.pack_user(ws.users_bf16.data() + r * d, ws.users_packed.data() + r * words);
        } else {
          packed_int8_.pack_user(ws.users_u8.data() + r * d, ws.users_packed.data() + r * words);
        }
      }
    } else if (!native_) {  // the fallback multiplies these values in fp32
      ws.users_f32.resize(cells);
      for (std::size_t i = 0; i < cells; ++i) {
        ws.users_f32[i] = policy_.precision == Precision::kBf16 ? detail::bfloat16_to_float(ws.users_bf16[i])
                                                                : static_cast<float>(ws.users_u8[i]);
      }
    }
  }

  // Whether a query of `rows` users runs the packed kernels.
  bool packed(Index rows) const { return use_packed_ && rows <= kernel_rows_; }

  void add_bias(Index first, Index count, MatrixRef<T>& out) const {
    if (head_.bias == nullptr) return;
    const Eigen::Map<const RowVector<T>> bias(head_.bias + first, count);
    for (Index r = 0; r < out.rows(); ++r) out.row(r) += bias;
  }

  // out [rows, count] (any row stride) = the policy's scores of items first..first+count-1.
  void score_block(const ConstMatrixRef<T>& users, Index first, Index count, MatrixRef<T> out, Workspace& ws) const {
    const Index rows = users.rows(), d = head_.dim();
    if (policy_.precision == Precision::kFp32) {
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), users, head_.weight.middleRows(first, count), T(0), out);
      if (head_.bias != nullptr) {
        const Eigen::Map<const RowVector<T>> bias(head_.bias + first, count);
        for (Index r = 0; r < rows; ++r) out.row(r) += bias;
      }
      return;
    }
    if constexpr (std::is_same<T, float>::value) {
      const bool int8 = policy_.precision == Precision::kInt8;
      if (packed(rows)) {  // blocks start at whole panels (width_ is a multiple of 16)
        if (int8) {
          detail::score_int8_panels(packed_int8_, ws.users_packed.data(), ws.user_scale.data(), row_scale_.data(), row_offset_.data(), rows,
                                    first / detail::kPanel, count, out.data(), out.outerStride(), packed_native_);
        } else {
          detail::score_bf16_panels(packed_bf16_, ws.users_packed.data(), rows, first / detail::kPanel, count, out.data(),
                                    out.outerStride(), packed_native_);
        }
        add_bias(first, count, out);
        return;
      }
      if (int8) ws.sums.resize(static_cast<std::size_t>(rows * count));
      if (native_) {
#ifdef DISTILLREC_WITH_ONEDNN
        if (int8) {
          run_primitive(rows, first, count, ws.sums.data(), count, ws);
        } else {
          run_primitive(rows, first, count, out.data(), out.outerStride(), ws);
        }
#endif
      } else {
        // Convert the block of the table to fp32, a tile of kTile items at a time, and multiply
        // with the users' policy values: the products are exact (bf16 x bf16, or small
        // integers) and the sums fp32 ones (integer sums exact below 2^24, i.e. d < 1040).
        constexpr Index kTile = 512;
        ws.tile.resize(static_cast<std::size_t>(std::min(kTile, count) * d));
        if (int8) ws.exact.resize(rows, count);
        const ConstMatrixMap<float> policy_users(ws.users_f32.data(), rows, d);
        for (Index t0 = 0; t0 < count; t0 += kTile) {
          const Index tn = std::min(kTile, count - t0);
          for (Index j = 0; j < tn; ++j) {
            for (Index c = 0; c < d; ++c) {
              const auto at = static_cast<std::size_t>((first + t0 + j) * d + c);
              ws.tile[static_cast<std::size_t>(j * d + c)] = int8 ? static_cast<float>(int8_[at]) : detail::bfloat16_to_float(bf16_[at]);
            }
          }
          const ConstMatrixMap<float> tile(ws.tile.data(), tn, d);
          if (int8) {
            backend::gemm(backend::Trans::kNo, backend::Trans::kYes, 1.0f, policy_users, tile, 0.0f, ws.exact.middleCols(t0, tn));
          } else {
            backend::gemm(backend::Trans::kNo, backend::Trans::kYes, 1.0f, policy_users, tile, 0.0f, out.middleCols(t0, tn));
          }
        }
        if (int8) {
          for (Index i = 0; i < rows * count; ++i) ws.sums[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(std::lrint(ws.exact.data()[i]));
        }
      }
      if (int8) {
        // sum_c (u_q + z) w_q = sum_c u_q w_q + z * rowsum: remove the zero point's share
        // (row_offset = scale * z * rowsum), scale back.
        const Eigen::Map<const Eigen::ArrayXf> scale(row_scale_.data() + first, count);
        const Eigen::Map<const Eigen::ArrayXf> offset(row_offset_.data() + first, count);
        for (Index r = 0; r < rows; ++r) {
          const Eigen::Map<const Eigen::Array<std::int32_t, Eigen::Dynamic, 1>> s(ws.sums.data() + r * count, count);
          Eigen::Map<Eigen::ArrayXf> row(out.data() + r * out.outerStride(), count);
          row = ws.user_scale[static_cast<std::size_t>(r)] * (scale * s.cast<float>() - offset);
        }
      }
      if (head_.bias != nullptr) {
        const Eigen::Map<const RowVector<float>> bias(head_.bias + first, count);
        for (Index r = 0; r < rows; ++r) out.row(r) += bias;
      }
    }
  }

#ifdef DISTILLREC_WITH_ONEDNN
  bool make_primitives(dnnl::memory::data_type src, dnnl::memory::data_type weights, dnnl::memory::data_type dst) {
    using dnnl::memory;
    try {
      engine_ = std::make_shared<dnnl::engine>(dnnl::engine::kind::cpu, 0);
      const Index n = head_.num_items();
      const Index tail = n % width_;
      full_ = make_matmul(src, weights, dst, width_);
      if (tail > 0) tail_ = make_matmul(src, weights, dst, tail);
      native_ = true;
      return true;
    } catch (const dnnl::error&) {
      native_ = false;  // e.g. bf16 on a CPU without AVX512-BF16: the fallback runs
      full_.reset();
      tail_.reset();
      return false;
    }
  }

  std::shared_ptr<dnnl::matmul> make_matmul(dnnl::memory::data_type src, dnnl::memory::data_type weights,
                                           dnnl::memory::data_type dst, Index width) {
    using dnnl::memory;
    const auto d = static_cast<memory::dim>(head_.dim());
    const memory::desc a({DNNL_RUNTIME_DIM_VAL, d}, src, memory::format_tag::ab);
    const memory::desc b({d, static_cast<memory::dim>(width)}, weights, memory::format_tag::ba);  // the table's rows
    // The output's row stride is a runtime value too: score_all writes straight into the
    // caller's [rows, N] matrix, top_k into a [rows, width] block.
    const memory::desc c({DNNL_RUNTIME_DIM_VAL, static_cast<memory::dim>(width)}, dst,
                         {DNNL_RUNTIME_DIM_VAL, 1});
    // A user-managed scratchpad (one per Workspace): oneDNN's own scratchpad would not allow
    // executing one primitive from several threads at once.
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, *engine_);
    impl_ = pd.impl_info_str();
    scratchpad_bytes_ = std::max(scratchpad_bytes_, pd.scratchpad_desc().get_size());
    return std::make_shared<dnnl::matmul>(pd);
  }

  // out [rows, count] with row stride `ld`: float scores (bf16) or int32 sums (int8).
  void run_primitive(Index rows, Index first, Index count, void* out, Index ld, Workspace& ws) const {
    if (!ws.stream || ws.stream_engine != engine_) {  // a workspace may move between scorers
      ws.stream = std::make_unique<dnnl::stream>(*engine_);
      ws.stream_engine = engine_;
    }
    if (ws.scratchpad.size() < scratchpad_bytes_) ws.scratchpad.resize(scratchpad_bytes_);
    const bool int8 = policy_.precision == Precision::kInt8;
    const Index d = head_.dim();
    void* src = int8 ? static_cast<void*>(ws.users_u8.data()) : static_cast<void*>(ws.users_bf16.data());
    const void* weights = int8 ? static_cast<const void*>(int8_.data() + first * d)
                               : static_cast<const void*>(bf16_.data() + first * d);
    // users [rows, d]; the table's rows as the [d, count] weights (transposed); out [rows, count].
    const dnnl::matmul& primitive = count == width_ ? *full_ : *tail_;
    backend::onednn::execute(primitive, *engine_, *ws.stream,
                             {{DNNL_ARG_SRC, backend::onednn::plain_desc(rows, d, int8 ? dnnl_u8 : dnnl_bf16, d, 1), src},
                              {DNNL_ARG_WEIGHTS, backend::onednn::plain_desc(d, count, int8 ? dnnl_s8 : dnnl_bf16, 1, d), const_cast<void*>(weights)},
                              {DNNL_ARG_DST, backend::onednn::plain_desc(rows, count, int8 ? dnnl_s32 : dnnl_f32, ld, 1), out},
                              {DNNL_ARG_SCRATCHPAD, backend::onednn::bytes_desc(scratchpad_bytes_), ws.scratchpad.data()}});
  }

  std::shared_ptr<const dnnl::engine> engine_;
  std::shared_ptr<dnnl::matmul> full_, tail_;
  std::string impl_;
  std::size_t scratchpad_bytes_ = 0;
#endif

  nn::HeadWeights<T> head_;
  ScoringPolicy policy_;
  Index width_ = 1;
  bool native_ = false;         // oneDNN runs the larger queries
  bool packed_native_ = false;  // the packed kernels use AVX512-BF16 / VNNI
  bool use_packed_ = false;     // small queries (or all) run the packed kernels
  Index kernel_rows_ = 0;       // ... of at most this many users
  std::string description_;
  detail::PackedBf16Table packed_bf16_;
  detail::PackedInt8Table packed_int8_;
  std::vector<std::uint16_t> bf16_;
  std::vector<std::int8_t> int8_;
  std::vector<float> row_scale_;
  std::vector<float> row_offset_;
};

}  // namespace distillrec::serve
