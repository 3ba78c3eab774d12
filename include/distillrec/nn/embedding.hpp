// distillrec/nn/embedding.hpp
//
// Lookup table: row i of "<name>.weight" [num_embeddings, dim] is the vector of id i.
// With padding (the default) row 0 is the padding vector: initialised to zero and never
// updated, since its gradient is never written (PyTorch's padding_idx=0, SASRec's constant row).
//
// Row offsets (optional): a table Δ of the same shape added to every lookup,
//   y.row(i) = scale * (table.row(ids[i]) + Δ.row(ids[i])),
// with the lookup's gradient also added to a gradient table of Δ. Collaborative embedding
// distillation (distill/embedding_distillation.hpp) feeds a teacher's projected item embeddings
// in this way without touching the model; its owner sets, updates and removes them (shared, so
// they live as long as any copy of the layer uses them).
#pragma once

#include "distillrec/core/error.hpp"

#include <memory>
#include "distillrec/core/params.hpp"
#include "distillrec/nn/init.hpp"

#include <string>
#include <utility>
#include <vector>

namespace distillrec::nn {

template <typename T>
class Embedding {
 public:
  using Scalar = T;

  Embedding(Parameters<T>& params, const std::string& name, Index num_embeddings, Index dim,
            bool padding_row_zero = true)
      : params_(&params), rows_(num_embeddings), dim_(dim), padding_(padding_row_zero) {
    weight_ = params.declare(name + ".weight", num_embeddings, dim);
  }

  /// Xavier-normal table (PyTorch's xavier_normal_ on the [rows, dim] table), padding row zeroed.
  void initialize(Rng& rng) {
    init_xavier_normal(params_->value(weight_), rng);
    if (padding_) params_->value(weight_).row(0).setZero();
  }

  Index num_embeddings() const { return rows_; }
  Index dim() const { return dim_; }
  Index weight_id() const { return weight_; }
  bool has_padding_row() const { return padding_; }
  ConstMatrixMap<T> table() const { return std::as_const(*params_).value(weight_); }
  MatrixMap<T> table_grad() { return params_->grad(weight_); }

  /// Adds `offsets` [num_embeddings, dim] to every lookup from now on; `offset_grads` (same
  /// shape, or nullptr) receives the lookups' gradients. The padding row of offsets must be zero.
  void set_offsets(std::shared_ptr<const Matrix<T>> offsets, std::shared_ptr<Matrix<T>> offset_grads) {
    if (!offsets || offsets->rows() != rows_ || offsets->cols() != dim_ ||
        (offset_grads && (offset_grads->rows() != rows_ || offset_grads->cols() != dim_))) {
      throw ShapeError(detail::concat("Embedding offsets: expected [", rows_, ", ", dim_, "] tables"));
    }
    offsets_ = std::move(offsets);
    offset_grads_ = std::move(offset_grads);
  }
  void clear_offsets() {
    offsets_.reset();
    offset_grads_.reset();
  }
  bool has_offsets() const { return offsets_ != nullptr; }

  /// y.row(i) = scale * (table.row(ids[i]) [+ offsets.row(ids[i])]). Ids must be in
  /// [0, num_embeddings) (not checked here: validated at the data boundary).
  void forward(const std::vector<ItemId>& ids, MatrixRef<T> y, T scale = T(1)) const {
    require_shape(y, static_cast<Index>(ids.size()), dim_, "Embedding output");
    const auto w = table();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      DISTILLREC_ASSERT(ids[i] >= 0 && ids[i] < rows_);
      if (offsets_) {
        y.row(static_cast<Index>(i)) = scale * (w.row(ids[i]) + offsets_->row(ids[i]));
      } else {
        y.row(static_cast<Index>(i)) = scale * w.row(ids[i]);
      }
    }
  }

  /// table_grad.row(ids[i]) += scale * dy.row(i); the padding row receives nothing.
  void accumulate_grad(const std::vector<ItemId>& ids, const ConstMatrixRef<T>& dy, T scale = T(1)) {
    require_shape(dy, static_cast<Index>(ids.size()), dim_, "Embedding output gradient");
    const bool trainable = params_->info(weight_).trainable;  // a frozen table gets no gradient
    if (!trainable && !offset_grads_) return;
    auto g = params_->grad(weight_);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (padding_ && ids[i] == kPaddingId) continue;
      if (trainable) g.row(ids[i]) += scale * dy.row(static_cast<Index>(i));
      if (offset_grads_) offset_grads_->row(ids[i]) += scale * dy.row(static_cast<Index>(i));
    }
  }

 private:
  Parameters<T>* params_;
  Index rows_, dim_;
  bool padding_;
  Index weight_ = -1;
  std::shared_ptr<const Matrix<T>> offsets_;
  std::shared_ptr<Matrix<T>> offset_grads_;
};

}  // namespace distillrec::nn
