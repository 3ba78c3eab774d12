// distillrec/data/split.hpp
//
// Leave-one-out split of an interaction log, as in kang205/SASRec `util.py:data_partition`
// (methods.md §4.2): a user with at least `min_interactions` (default 3, kang205's rule)
// interactions gives its last item to test, its second-to-last to validation and the rest to
// training; a shorter user keeps everything for training and is never evaluated.
//
// Validation predicts valid[u] from train[u]; test predicts test[u] from train[u] + valid[u].
// Training, validation and evaluation take a split as example sets (data/examples.hpp), into
// which a LeaveOneOutSplit converts implicitly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/interactions.hpp"

namespace distillrec::data {

namespace detail {
using distillrec::detail::concat;
}  // namespace detail

struct LeaveOneOutSplit {
  std::vector<Sequence> train;         // per user: history used for training
  std::vector<ItemId> valid;           // per user: validation target, kPaddingId if not evaluated
  std::vector<ItemId> test;            // per user: test target, kPaddingId if not evaluated
  std::vector<Index> evaluable_users;  // users with valid and test targets, ascending
  std::vector<std::int64_t> user_ids;  // per user: its id in the log (empty: the dense index)
  ItemId num_items = 0;
  std::string source;

  Index num_users() const { return static_cast<Index>(train.size()); }

  /// Input for predicting valid[user]: train[user].
  Sequence valid_history(Index user) const { return train[checked(user)]; }

  /// Input for predicting test[user]: train[user] followed by valid[user] (when there is one).
  Sequence test_history(Index user) const {
    const std::size_t u = checked(user);
    Sequence history;
    history.reserve(train[u].size() + 1);
    history.insert(history.end(), train[u].begin(), train[u].end());
    if (valid[u] != kPaddingId) history.push_back(valid[u]);
    return history;
  }

 private:
  std::size_t checked(Index user) const {
    if (user < 0 || user >= num_users()) {
      throw ShapeError(
          detail::concat("LeaveOneOutSplit: user index ", user, " outside [0, ", num_users(), ")"));
    }
    return static_cast<std::size_t>(user);
  }
};

/// Splits every user's sequence; throws ConfigError if min_interactions < 3 (a user needs one
/// training item besides its two targets) and FormatError if no user can be evaluated.
inline LeaveOneOutSplit leave_one_out(const InteractionLog& log, Index min_interactions = 3) {
  if (min_interactions < 3) {
    throw ConfigError(detail::concat(
        "leave_one_out: min_interactions must be at least 3 (one training item, one validation "
        "and one test target), got ",
        min_interactions));
  }
  LeaveOneOutSplit split;
  split.num_items = log.num_items;
  split.source = log.source;
  split.user_ids = log.user_raw_ids;
  const std::size_t num_users = log.sequences.size();
  split.train.resize(num_users);
  split.valid.assign(num_users, kPaddingId);
  split.test.assign(num_users, kPaddingId);
  std::size_t longest = 0;
  for (std::size_t user = 0; user < num_users; ++user) {
    const Sequence& sequence = log.sequences[user];
    const std::size_t length = sequence.size();
    longest = std::max(longest, length);
    if (static_cast<Index>(length) < min_interactions) {
      split.train[user] = sequence;
      continue;
    }
    split.train[user].assign(sequence.begin(), sequence.end() - 2);
    split.valid[user] = sequence[length - 2];
    split.test[user] = sequence[length - 1];
    split.evaluable_users.push_back(static_cast<Index>(user));
  }
  if (split.evaluable_users.empty()) {
    throw FormatError(detail::concat(log.source, ": no user has at least ", min_interactions,
                                     " interactions, so nothing can be evaluated (", num_users,
                                     " users, longest sequence has ", longest, ")"));
  }
  return split;
}

}  // namespace distillrec::data
