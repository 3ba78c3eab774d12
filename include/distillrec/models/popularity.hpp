// distillrec/models/popularity.hpp
//
// The popularity baseline: every user gets the items ranked by how often they occur in the
// training sequences. It is written as a model with one-dimensional user vectors (always 1)
// and a one-column item table (the counts), so it is evaluated and served by exactly the same
// code as the neural models; equal counts tie, and ties are pessimistic.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <vector>

namespace distillrec::models {

template <typename T = float>
class Popularity {
 public:
  using Scalar = T;
  struct Workspace {};

  Popularity(const std::vector<Sequence>& train, ItemId num_items)
      : num_items_(num_items), table_(Matrix<T>::Zero(static_cast<Index>(num_items) + 1, 1)) {
    if (num_items <= 0) throw ConfigError("Popularity: num_items must be positive");
    for (const auto& sequence : train) {
      for (ItemId item : sequence) {
        if (item < 1 || item > num_items) throw ShapeError(detail::concat("Popularity: item ", item, " outside 1..", num_items));
        table_(item, 0) += T(1);
      }
    }
  }

  ItemId num_items() const { return num_items_; }
  Index hidden_size() const { return 1; }
  ConstMatrixMap<T> item_table() const { return ConstMatrixMap<T>(table_.data(), table_.rows(), 1); }

  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& /*ws*/) const {
    require_shape(out, static_cast<Index>(histories.size()), 1, "Popularity::encode output");
    out.setOnes();
  }

 private:
  ItemId num_items_;
  Matrix<T> table_;
};

}  // namespace distillrec::models
