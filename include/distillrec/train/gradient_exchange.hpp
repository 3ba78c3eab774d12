// distillrec/train/gradient_exchange.hpp
//
// How data-parallel training sums gradients across processes (TrainerConfig::collective): every
// parameter group's gradients, the loss and a failure flag, in one sum per step; item tables
// optionally by rows.
//
// Dense: the gradients of every trainable tensor travel in one sum (2 (P-1)/P of their bytes per
// process with a ring allreduce), whatever the step touched; frozen tensors (ParameterInfo::
// trainable false: a LoRA model's base weights, fixed tables) have no gradient and stay home.
//
// Sparse rows: a step's gradient of an item table (the input embedding, an untied output head)
// is non-zero only in the rows of the items the global batch saw: its inputs, targets and drawn
// negatives (every row under a full-catalogue softmax). Tensors with at least `sparse_rows`
// rows are therefore exchanged in two calls: one bitwise OR of a bit per row (set where this
// process's gradient row is non-zero), which gives every process the same union of touched
// rows; then the one sum carries the dense gradients plus only the union's rows, compacted in
// ascending row order (or the whole table, when the union covers more than half of it), and
// every process writes them back. A row that no process touched is zero
// on every process, so the result is the dense sum's (bit for bit wherever the collective adds in
// the same order for both message sizes, as on 2 processes). The OR costs rows/8 bytes (1/(32 d) of the table's fp32 gradient), the scan for
// non-zero rows one read of the table: below the switch-over (measured in bench/
// data_parallel_exchange.cpp, README "Training on several processes") dense is cheaper.
//
// The failure flag travels in the first call of a step (the OR when there is one): when any
// process failed, no process sends gradients and every one learns it at the same call.
#pragma once

#include "distillrec/core/collective.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <type_traits>
#include <string>
#include <vector>

namespace distillrec::train {

template <typename T>
class GradientExchange {
 public:
  /// What one exchange returned: the loss summed over the processes, and whether another
  /// process reported a failure (then no gradients were summed).
  struct Outcome {
    T loss = T(0);
    bool failed_elsewhere = false;
  };

  /// Cumulative figures since the last reset (per process).
  struct Statistics {
    long steps = 0;
    double seconds = 0.0;        // inside the collective calls
    double bytes = 0.0;          // passed to the collective calls (each process's buffers)
    double item_rows = 0.0;      // rows of the row-exchanged tables sent (union of touched rows)
    double item_rows_total = 0.0;  // their rows in all
  };

  GradientExchange() = default;

  /// Plans the exchange of `groups` (their buffers must not move afterwards): tensors with at
  /// least `sparse_rows` rows go by rows (0: none, everything dense).
  void configure(const std::vector<Parameters<T>*>& groups, Collective* collective, Index sparse_rows) {
    if (collective == nullptr) throw ConfigError("GradientExchange: needs a collective");
    if (sparse_rows < 0) throw ConfigError(detail::concat("GradientExchange: sparse_rows must be >= 0, got ", sparse_rows));
    groups_ = groups;
    collective_ = collective;
    tables_.clear();
    segments_.clear();
    std::size_t capacity = 2;
    std::size_t words = 1;  // the failure flag
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const Parameters<T>& group = *groups[g];
      // Dense segments: runs of trainable tensors (with the alignment padding between them,
      // which stays zero); frozen tensors (a LoRA model's base, fixed tables) have no gradient
      // and do not travel.
      for (const auto& info : group.infos()) {
        if (!info.trainable) continue;
        const auto offset = static_cast<std::size_t>(info.offset), size = static_cast<std::size_t>(info.size());
        if (sparse_rows > 0 && info.rows >= sparse_rows) {
          Table table;
          table.group = g;
          table.offset = offset;
          table.rows = static_cast<std::size_t>(info.rows);
          table.cols = static_cast<std::size_t>(info.cols);
          table.name = info.name;
          table.first_word = words;
          words += (table.rows + 63) / 64;
          tables_.push_back(std::move(table));
          capacity += size;
          continue;
        }
        const std::size_t padding = static_cast<std::size_t>(Parameters<T>::kAlignElements);
        if (!segments_.empty() && segments_.back().group == g && segments_.back().offset + segments_.back().count <= offset &&
            offset - (segments_.back().offset + segments_.back().count) < padding) {
          segments_.back().count = offset + size - segments_.back().offset;
        } else {
          segments_.push_back(Segment{g, offset, size});
        }
        capacity += size + padding;
      }
    }
    dense_values_ = 0;
    for (const auto& s : segments_) dense_values_ += s.count;
    bits_.assign(tables_.empty() ? 0 : words, 0);
    staging_.assign(capacity, T(0));  // sized once: steady-state steps allocate nothing
    check_same_plan_everywhere();
    configured_ = true;
  }

  bool configured() const { return configured_; }
  bool has_row_tables() const { return !tables_.empty(); }

  /// Values in the sum of a step with every row of the row tables touched (the dense size).
  std::size_t dense_values() const {
    std::size_t n = dense_values_ + 2;
    for (const auto& t : tables_) n += t.rows * t.cols;
    return n;
  }

  /// One line for progress output: what a step sends.
  std::string description() const {
    const double mb = static_cast<double>(dense_values() * sizeof(T)) / 1e6;
    if (tables_.empty()) return detail::concat("one sum of ", dense_values(), " values (", mb, " MB) per step");
    std::string names;
    std::size_t rows = 0;
    for (const auto& t : tables_) {
      names += (names.empty() ? "" : ", ") + t.name;
      rows += t.rows;
    }
    return detail::concat("item rows by touch (", names, "): an OR of ", rows, " bits, then one sum of ", dense_values_ + 2,
                          " values plus the touched rows (", mb, " MB if every row is touched) per step");
  }

  /// Sums the groups' gradients, the loss and the failure flags across the processes; the
  /// gradients are left summed in the groups (untouched when any process failed).
  Outcome exchange(T loss, bool failed) {
    if (!configured_) throw ConfigError("GradientExchange::exchange() before configure()");
    Outcome outcome;
    ++stats_.steps;
    std::size_t at = 0;
    if (!tables_.empty()) {
      std::fill(bits_.begin(), bits_.end(), std::uint64_t{0});
      bits_[0] = failed ? 1U : 0U;
      if (!failed) {
        for (const auto& t : tables_) mark_touched_rows(t);
      }
      timed([&] { collective_->bitwise_or(bits_.data(), bits_.size()); }, bits_.size() * sizeof(std::uint64_t));
      if (bits_[0] != 0) {
        outcome.failed_elsewhere = !failed;
        return outcome;
      }
    }
    for (const auto& s : segments_) {
      const T* from = groups_[s.group]->grads() + s.offset;
      std::copy(from, from + s.count, staging_.data() + at);
      at += s.count;
    }
    for (const auto& t : tables_) at = gather_rows(t, at);
    staging_[at] = failed ? T(0) : loss;
    staging_[at + 1] = failed ? T(1) : T(0);
    const std::size_t values = at + 2;
    timed([&] { collective_->sum(staging_.data(), values); }, values * sizeof(T));
    if (staging_[at + 1] != T(0)) {
      outcome.failed_elsewhere = !failed;
      return outcome;
    }
    outcome.loss = staging_[at];
    at = 0;
    for (const auto& s : segments_) {
      std::copy(staging_.data() + at, staging_.data() + at + s.count, groups_[s.group]->grads() + s.offset);
      at += s.count;
    }
    for (const auto& t : tables_) at = scatter_rows(t, at);
    return outcome;
  }

  /// Sets bit r of `words` (rows/64 words, rounded up; bits are only set, never cleared) when
  /// row r of the row-major [rows, cols] `grads` has a value with any bit set (-0.0 counts:
  /// sending it changes no sum). OR-ing the bit patterns without an early exit vectorises: one
  /// read of the table.
  static void touched_rows(const T* grads, std::size_t rows, std::size_t cols, std::uint64_t* words) {
    using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    for (std::size_t r = 0; r < rows; ++r) {
      const T* row = grads + r * cols;
      Bits any = 0;
      for (std::size_t c = 0; c < cols; ++c) {
        Bits bits;
        std::memcpy(&bits, row + c, sizeof(T));
        any |= bits;
      }
      if (any != 0) words[r / 64] |= std::uint64_t{1} << (r % 64);
    }
  }

  const Statistics& statistics() const { return stats_; }
  void reset_statistics() { stats_ = Statistics{}; }

 private:
  struct Table {
    std::size_t group = 0, offset = 0, rows = 0, cols = 0;
    std::string name;
    std::size_t first_word = 0;  // in bits_
  };
  struct Segment {
    std::size_t group = 0, offset = 0, count = 0;
  };

  /// Processes that built different models, loss terms or sparse_rows would pass buffers of
  /// different sizes to the same collective call (a hang or garbage): every process compares
  /// its plan with rank 0's, and all throw if any differs. A collective call itself.
  void check_same_plan_everywhere() {
    if (collective_->size() == 1) return;
    const double mine[4] = {static_cast<double>(staging_.size()), static_cast<double>(bits_.size()), static_cast<double>(dense_values_),
                            static_cast<double>(tables_.size())};
    double root[4] = {mine[0], mine[1], mine[2], mine[3]};
    collective_->broadcast(root, sizeof(root));
    const bool differs = !std::equal(std::begin(mine), std::end(mine), std::begin(root));
    if (collective_->any(differs)) {
      throw ConfigError(detail::concat(
          "data-parallel training: the processes' parameters differ (this process: ", mine[0] - 2, " gradient values, ", mine[3],
          " tables by rows; rank 0: ", root[0] - 2, " and ", root[3],
          "); every process must build the same model and loss terms, with the same sparse_rows"));
    }
  }

  template <typename Call>
  void timed(Call&& call, std::size_t bytes) {
    const auto start = std::chrono::steady_clock::now();
    call();
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stats_.bytes += static_cast<double>(bytes);
  }

  const T* table_grads(const Table& t) const { return groups_[t.group]->grads() + t.offset; }
  T* table_grads(const Table& t) { return groups_[t.group]->grads() + t.offset; }

  void mark_touched_rows(const Table& t) { touched_rows(table_grads(t), t.rows, t.cols, bits_.data() + t.first_word); }

  /// Rows of `t` in the union (after the OR).
  std::size_t union_rows(const Table& t) const {
    std::size_t n = 0;
    for (std::size_t w = 0; w * 64 < t.rows; ++w) n += static_cast<std::size_t>(__builtin_popcountll(bits_[t.first_word + w]));
    return n;
  }

  /// Whether `t` goes whole this step: when the union covers more than half of its rows,
  /// compacting saves little and a straight copy is cheaper. Every process sees the same union,
  /// so all decide alike.
  bool whole_table(const Table& t) const { return 2 * union_rows(t) > t.rows; }

  /// Appends the union's rows of `t` (or all of it, see whole_table) to the staging buffer at
  /// `at`; returns the new end.
  std::size_t gather_rows(const Table& t, std::size_t at) {
    const T* g = table_grads(t);
    stats_.item_rows_total += static_cast<double>(t.rows);
    if (whole_table(t)) {
      std::copy(g, g + t.rows * t.cols, staging_.data() + at);
      stats_.item_rows += static_cast<double>(t.rows);
      return at + t.rows * t.cols;
    }
    const std::uint64_t* words = bits_.data() + t.first_word;
    std::size_t sent = 0;
    for (std::size_t w = 0; w * 64 < t.rows; ++w) {
      for (std::uint64_t word = words[w]; word != 0; word &= word - 1) {
        const std::size_t r = w * 64 + static_cast<std::size_t>(__builtin_ctzll(word));
        std::copy(g + r * t.cols, g + (r + 1) * t.cols, staging_.data() + at);
        at += t.cols;
        ++sent;
      }
    }
    stats_.item_rows += static_cast<double>(sent);
    return at;
  }

  std::size_t scatter_rows(const Table& t, std::size_t at) {
    T* g = table_grads(t);
    if (whole_table(t)) {
      std::copy(staging_.data() + at, staging_.data() + at + t.rows * t.cols, g);
      return at + t.rows * t.cols;
    }
    const std::uint64_t* words = bits_.data() + t.first_word;
    for (std::size_t w = 0; w * 64 < t.rows; ++w) {
      for (std::uint64_t word = words[w]; word != 0; word &= word - 1) {
        const std::size_t r = w * 64 + static_cast<std::size_t>(__builtin_ctzll(word));
        std::copy(staging_.data() + at, staging_.data() + at + t.cols, g + r * t.cols);
        at += t.cols;
      }
    }
    return at;
  }

  std::vector<Parameters<T>*> groups_;
  Collective* collective_ = nullptr;
  std::vector<Table> tables_;
  std::vector<Segment> segments_;
  std::size_t dense_values_ = 0;
  std::vector<std::uint64_t> bits_;  // [failure flag word, each table's row bits]
  std::vector<T> staging_;
  Statistics stats_;
  bool configured_ = false;
};

}  // namespace distillrec::train
