// distillrec/data/examples.hpp
//
// Examples, not users: what training, validation, testing and teacher signals consume. An
// example reads one user's chronological sequence up to a position,
//
//   history = sequence[user][0, end)     (a model reads its newest max_length items)
//   target  = sequence[user][end]        end >= 1
//   id      = the example's key          (teacher signals, reference files)
//
// and an ExampleSplit holds the users' sequences once (shared, so copies are cheap) with three
// example sets: train, valid, test. Three ways to build one:
//
//   leave_one_out (data/split.hpp)  SASRec's protocol: per user, the last item tests, the one
//                                   before validates, one training example per user reads the
//                                   rest (a LeaveOneOutSplit converts implicitly). Ids: the
//                                   user's id in the log.
//   every_prefix                    the same validation and test examples, and one training
//                                   example per position of each user's training sequence (as
//                                   DLLM2Rec's and BIGRec's data are laid out). Ids: the row in
//                                   its set.
//   temporal_split                  one example per position of every sequence, split globally
//                                   by the time of the target: cut-off timestamps, or fractions
//                                   of all examples in time order (DLLM2Rec's 80/10/10). Ids: the
//                                   row in its set.
//
// Every set is ordered by user, then position. `supervision` says where training predicts:
// kEveryPosition (each window position predicts the next item, SASRec's training: for history
// [a b c] and target d the window predicts b, c, d) or kNewestPosition (only the example's target
// at its newest position; one row per prefix, DLLM2Rec's training).
//
// `stream` numbers each training example's random stream (its negatives, data/batcher.hpp): the
// user index plus num_users times the number of that user's training examples after it, so the
// newest training example of a user always has stream = user, whatever the builder.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::data {

enum class Supervision { kEveryPosition, kNewestPosition };

inline std::string to_string(Supervision s) { return s == Supervision::kEveryPosition ? "every-position" : "newest-position"; }

inline Supervision parse_supervision(const std::string& name) {
  if (name == "every-position" || name == "every") return Supervision::kEveryPosition;
  if (name == "newest-position" || name == "newest") return Supervision::kNewestPosition;
  throw ConfigError("unknown supervision \"" + name + "\" (expected every-position or newest-position)");
}

struct Example {
  Index user = 0;            // dense user index: the sequence the example reads
  Index end = 0;             // history = sequence[0, end), target = sequence[end]
  std::int64_t id = 0;       // the example's key
  std::uint64_t stream = 0;  // random stream of a training example (see the header comment)
};

/// Which example set of a split.
enum class Part { kTrain, kValid, kTest };

inline std::string to_string(Part part) {
  return part == Part::kTrain ? "train" : part == Part::kValid ? "valid" : "test";
}

struct ExampleSplit {
  std::shared_ptr<const std::vector<Sequence>> sequences = std::make_shared<const std::vector<Sequence>>();
  ItemId num_items = 0;
  std::string source;
  std::string protocol;  // "leave-one-out", "every-prefix", "temporal"
  Supervision supervision = Supervision::kEveryPosition;
  std::vector<Example> train, valid, test;

  ExampleSplit() = default;

  /// A leave-one-out split as examples (implicit, so code written for LeaveOneOutSplit trains
  /// and evaluates unchanged): one training example per user with at least 2 training items,
  /// every-position supervision; the validation and test examples of its evaluable users.
  ExampleSplit(const LeaveOneOutSplit& split)  // NOLINT(google-explicit-constructor)
      : num_items(split.num_items), source(split.source), protocol("leave-one-out") {
    auto full = std::make_shared<std::vector<Sequence>>(split.train);
    for (Index u : split.evaluable_users) {
      auto& s = (*full)[static_cast<std::size_t>(u)];
      s.push_back(split.valid[static_cast<std::size_t>(u)]);
      s.push_back(split.test[static_cast<std::size_t>(u)]);
    }
    sequences = std::move(full);
    auto id_of = [&](Index u) {
      return split.user_ids.empty() ? static_cast<std::int64_t>(u) : split.user_ids.at(static_cast<std::size_t>(u));
    };
    for (Index u = 0; u < split.num_users(); ++u) {
      const auto n = static_cast<Index>(split.train[static_cast<std::size_t>(u)].size());
      if (n >= 2) train.push_back(Example{u, n - 1, id_of(u), static_cast<std::uint64_t>(u)});
    }
    for (Index u : split.evaluable_users) {
      const auto n = static_cast<Index>(split.train[static_cast<std::size_t>(u)].size());
      valid.push_back(Example{u, n, id_of(u), 0});
      test.push_back(Example{u, n + 1, id_of(u), 0});
    }
  }

  Index num_users() const { return static_cast<Index>(sequences->size()); }
  const Sequence& sequence(Index user) const { return (*sequences)[static_cast<std::size_t>(user)]; }

  const std::vector<Example>& examples(Part part) const {
    return part == Part::kTrain ? train : part == Part::kValid ? valid : test;
  }

  ItemId target(const Example& e) const { return sequence(e.user)[static_cast<std::size_t>(e.end)]; }
  const ItemId* history_begin(const Example& e) const { return sequence(e.user).data(); }
  const ItemId* history_end(const Example& e) const { return sequence(e.user).data() + e.end; }
  /// The example's whole history (a copy).
  Sequence history(const Example& e) const { return Sequence(history_begin(e), history_end(e)); }
  /// Its newest `max_length` history items (a copy): the window a model reads.
  Sequence window(const Example& e, Index max_length) const {
    const Index len = std::min(e.end, max_length);
    return Sequence(history_end(e) - len, history_end(e));
  }

  /// How often each item (index = id, [0] = 0) occurs in the training part of the data: each
  /// user's sequence before its first validation or test target (all of it for a user that is
  /// never evaluated). For leave-one-out, the training sequences. Popularity baselines and
  /// sampling proposals count these.
  std::vector<std::int64_t> training_item_counts() const {
    std::vector<Index> reach(static_cast<std::size_t>(num_users()));
    for (Index u = 0; u < num_users(); ++u) reach[static_cast<std::size_t>(u)] = static_cast<Index>(sequence(u).size());
    for (const auto* set : {&valid, &test}) {
      for (const auto& e : *set) {
        auto& r = reach[static_cast<std::size_t>(e.user)];
        r = std::min(r, e.end);
      }
    }
    std::vector<std::int64_t> counts(static_cast<std::size_t>(num_items) + 1, 0);
    for (Index u = 0; u < num_users(); ++u) {
      const auto& s = sequence(u);
      for (Index k = 0; k < reach[static_cast<std::size_t>(u)]; ++k) {
        const ItemId item = s[static_cast<std::size_t>(k)];
        if (item >= 1 && item <= num_items) ++counts[static_cast<std::size_t>(item)];
      }
    }
    return counts;
  }

  /// Checks ids against the catalogue and every example against its sequence; ShapeError naming
  /// the set, example and user.
  void validate() const {
    if (num_items <= 0) throw ConfigError(distillrec::detail::concat(source, ": examples need a positive num_items, got ", num_items));
    for (Index u = 0; u < num_users(); ++u) {
      for (ItemId item : sequence(u)) {
        if (item < 1 || item > num_items) {
          throw ShapeError(distillrec::detail::concat(source, ": user ", u, " has item id ", item, ", expected 1..", num_items));
        }
      }
    }
    for (Part part : {Part::kTrain, Part::kValid, Part::kTest}) {
      const auto& set = examples(part);
      for (std::size_t i = 0; i < set.size(); ++i) {
        const Example& e = set[i];
        if (e.user < 0 || e.user >= num_users() || e.end < 1 || e.end >= static_cast<Index>(sequence(e.user).size())) {
          throw ShapeError(distillrec::detail::concat(source, ": ", to_string(part), " example ", i, " (id ", e.id, ") reads user ",
                                                      e.user, " up to position ", e.end,
                                                      ", outside the data (every example needs a history and a target)"));
        }
      }
    }
  }
};

namespace detail {

/// Streams of training examples: user + num_users * (the user's training examples after it).
inline void number_streams(std::vector<Example>& train, Index num_users) {
  std::vector<std::uint64_t> later(static_cast<std::size_t>(num_users), 0);
  for (auto it = train.rbegin(); it != train.rend(); ++it) {  // sets are ordered by user, then position
    auto& count = later[static_cast<std::size_t>(it->user)];
    it->stream = static_cast<std::uint64_t>(it->user) + static_cast<std::uint64_t>(num_users) * count;
    ++count;
  }
}

inline void number_rows(std::vector<Example>& set) {
  for (std::size_t i = 0; i < set.size(); ++i) set[i].id = static_cast<std::int64_t>(i);
}

}  // namespace detail

/// Every-prefix examples: validation and test as leave_one_out(log, min_interactions); one
/// training example per position of each user's training sequence whose history has at least
/// `min_history` items. Newest-position supervision. Ids: the row in each set.
inline ExampleSplit every_prefix(const InteractionLog& log, Index min_interactions = 3, Index min_history = 1) {
  if (min_history < 1) throw ConfigError(distillrec::detail::concat("every_prefix: min_history must be at least 1, got ", min_history));
  ExampleSplit split(leave_one_out(log, min_interactions));
  split.protocol = "every-prefix";
  split.supervision = Supervision::kNewestPosition;
  split.train.clear();
  for (Index u = 0; u < split.num_users(); ++u) {
    // The training part of the sequence: all but the validation and test targets when evaluated.
    const bool evaluated = static_cast<Index>(log.sequences[static_cast<std::size_t>(u)].size()) >= min_interactions;
    const Index train_length = static_cast<Index>(split.sequence(u).size()) - (evaluated ? 2 : 0);
    for (Index end = min_history; end < train_length; ++end) split.train.push_back(Example{u, end, 0, 0});
  }
  detail::number_rows(split.train);
  detail::number_rows(split.valid);
  detail::number_rows(split.test);
  detail::number_streams(split.train, split.num_users());
  return split;
}

struct TemporalSplitConfig {
  // Cut-offs as times: a target at or after valid_from validates, at or after test_from tests.
  std::optional<double> valid_from, test_from;
  // Otherwise as fractions of all examples in time order (ties by user and position).
  double valid_fraction = 0.1;
  double test_fraction = 0.1;
  Index min_history = 1;  // items an example's history needs at least
};

/// A global temporal split of one example per position of every sequence, by the time of the
/// target (log.times: timestamps of a CSV log, file order of a text log). Newest-position
/// supervision; ids: the row in each set.
inline ExampleSplit temporal_split(const InteractionLog& log, const TemporalSplitConfig& config = {}) {
  if (log.times.size() != log.sequences.size()) {
    throw ConfigError(log.source + ": a temporal split needs the time of every interaction, and this log has none");
  }
  if (config.min_history < 1) throw ConfigError("temporal_split: min_history must be at least 1");
  if (config.valid_from.has_value() != config.test_from.has_value()) {
    throw ConfigError("temporal_split: give both valid_from and test_from, or neither (fractions)");
  }
  if (config.valid_from && !(*config.valid_from <= *config.test_from)) {
    throw ConfigError("temporal_split: valid_from must not be after test_from");
  }
  if (!config.valid_from && !(config.valid_fraction >= 0.0 && config.test_fraction >= 0.0 &&
                              config.valid_fraction + config.test_fraction < 1.0)) {
    throw ConfigError(distillrec::detail::concat("temporal_split: fractions ", config.valid_fraction, " and ", config.test_fraction,
                                                 " must be >= 0 and leave some examples for training"));
  }
  ExampleSplit split;
  split.sequences = std::make_shared<const std::vector<Sequence>>(log.sequences);
  split.num_items = log.num_items;
  split.source = log.source;
  split.protocol = "temporal";
  split.supervision = Supervision::kNewestPosition;
  struct Candidate {
    double time;
    Index user, end;
  };
  std::vector<Candidate> all;
  for (Index u = 0; u < log.num_users(); ++u) {
    const auto& times = log.times[static_cast<std::size_t>(u)];
    if (times.size() != log.sequences[static_cast<std::size_t>(u)].size()) {
      throw ShapeError(distillrec::detail::concat(log.source, ": user ", u, " has ", times.size(), " interaction times for ",
                                                  log.sequences[static_cast<std::size_t>(u)].size(), " interactions"));
    }
    for (Index end = config.min_history; end < static_cast<Index>(times.size()); ++end) {
      all.push_back(Candidate{times[static_cast<std::size_t>(end)], u, end});
    }
  }
  if (all.empty()) throw FormatError(log.source + ": no sequence is long enough for a temporal split");
  std::vector<int> part(all.size(), 0);  // 0 train, 1 valid, 2 test
  if (config.valid_from) {
    for (std::size_t i = 0; i < all.size(); ++i) part[i] = all[i].time >= *config.test_from ? 2 : all[i].time >= *config.valid_from ? 1 : 0;
  } else {
    std::vector<std::size_t> order(all.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return all[a].time < all[b].time; });
    const auto n = static_cast<double>(all.size());
    const auto test_begin = static_cast<std::size_t>(n * (1.0 - config.test_fraction));
    const auto valid_begin = static_cast<std::size_t>(n * (1.0 - config.test_fraction - config.valid_fraction));
    for (std::size_t r = 0; r < order.size(); ++r) part[order[r]] = r >= test_begin ? 2 : r >= valid_begin ? 1 : 0;
  }
  for (std::size_t i = 0; i < all.size(); ++i) {
    const Example e{all[i].user, all[i].end, 0, 0};
    (part[i] == 0 ? split.train : part[i] == 1 ? split.valid : split.test).push_back(e);
  }
  if (split.train.empty()) throw FormatError(log.source + ": the temporal split leaves no training examples");
  detail::number_rows(split.train);
  detail::number_rows(split.valid);
  detail::number_rows(split.test);
  detail::number_streams(split.train, split.num_users());
  return split;
}

}  // namespace distillrec::data
