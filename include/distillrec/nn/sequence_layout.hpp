// distillrec/nn/sequence_layout.hpp
//
// Packed variable-length sequences. A batch of B sequences is stored as one matrix of T token
// rows (T = sum of lengths), sequence s occupying rows [begin(s), end(s)). Padding is never
// materialised: a left-padded window of 50 with 7 real items costs 7 rows, not 50, and masking
// padding keys and queries is implied by construction (the attention tests check this against
// an explicitly masked padded computation).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <vector>

namespace distillrec::nn {

class SequenceLayout {
 public:
  SequenceLayout() = default;

  /// Layout of sequences with the given lengths (each >= 1).
  explicit SequenceLayout(const std::vector<Index>& lengths) {
    for (Index length : lengths) add(length);
  }

  void clear() { offsets_.assign(1, 0); }

  /// Appends a sequence of `length` tokens.
  void add(Index length) {
    if (length <= 0) {
      throw ShapeError(detail::concat("SequenceLayout: sequence ", num_sequences(),
                                      " is empty; every sequence needs at least one token"));
    }
    offsets_.push_back(offsets_.back() + length);
  }

  Index num_sequences() const { return static_cast<Index>(offsets_.size()) - 1; }
  Index num_tokens() const { return offsets_.back(); }
  Index begin(Index s) const { return offsets_[static_cast<std::size_t>(s)]; }
  Index end(Index s) const { return offsets_[static_cast<std::size_t>(s) + 1]; }
  Index length(Index s) const { return end(s) - begin(s); }
  /// Row of the last token of sequence s.
  Index last(Index s) const { return end(s) - 1; }
  Index max_length() const {
    Index longest = 0;
    for (Index s = 0; s < num_sequences(); ++s) longest = std::max(longest, length(s));
    return longest;
  }
  const std::vector<Index>& offsets() const { return offsets_; }

 private:
  std::vector<Index> offsets_{0};
};

}  // namespace distillrec::nn
