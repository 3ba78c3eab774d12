// distillrec/nn/rope.hpp
//
// Rotary position embedding (Su et al., RoFormer, 2021; LLaMA). Queries and keys are rotated
// per head by angles proportional to the token's position, so q_m . k_n depends on m - n only.
// Layout of HF LLaMA ("rotate half"): in a head of size d, the pair (x_j, x_{j+d/2}),
// j < d/2, is rotated by pos * theta^(-2j/d). Position = index of the token in its sequence
// (0 = oldest); padding never takes a position, which is equivalent to HF's absolute positions
// of a left-padded window because attention scores depend on differences only.
//
// RotaryEmbedding holds the cos/sin tables [max_positions, d/2]; rotate() applies it in place to
// [tokens, heads * d] matrices, inverse = true undoes it (the backward pass: the rotation is
// orthogonal, its Jacobian transpose is the inverse rotation). No parameters.
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/nn/sequence_layout.hpp"

#include <cmath>
#include <vector>

namespace distillrec::nn {

template <typename T>
class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;

  RotaryEmbedding(Index head_dim, Index max_positions, double theta = 10000.0)
      : half_(head_dim / 2), max_positions_(max_positions) {
    if (head_dim <= 0 || head_dim % 2 != 0) {
      throw ConfigError(detail::concat("rotary embedding: the head size must be even and positive, got ", head_dim));
    }
    if (max_positions <= 0) throw ConfigError("rotary embedding: max_positions must be positive");
    if (!(theta > 1.0)) throw ConfigError(detail::concat("rotary embedding: theta must be > 1, got ", theta));
    cos_.resize(static_cast<std::size_t>(max_positions * half_));
    sin_.resize(cos_.size());
    for (Index p = 0; p < max_positions; ++p) {
      for (Index j = 0; j < half_; ++j) {
        const double angle = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
        cos_[static_cast<std::size_t>(p * half_ + j)] = static_cast<T>(std::cos(angle));
        sin_[static_cast<std::size_t>(p * half_ + j)] = static_cast<T>(std::sin(angle));
      }
    }
  }

  Index head_dim() const { return 2 * half_; }
  Index max_positions() const { return max_positions_; }

  /// Rotates row `row` of x ([*, heads * head_dim]) as position `position`.
  void rotate_row(MatrixRef<T> x, Index row, Index position, bool inverse = false) const {
    check_position(position);
    const T* c = cos_.data() + position * half_;
    const T* s = sin_.data() + position * half_;
    const Index heads = x.cols() / (2 * half_);
    for (Index h = 0; h < heads; ++h) {
      backend::kernels::rope_rotate<T>(x.row(row).data() + h * 2 * half_, c, s, half_, inverse ? T(-1) : T(1));
    }
  }

  /// Rotates every token of packed sequences (position = index within its sequence).
  void rotate(MatrixRef<T> x, const SequenceLayout& layout, bool inverse = false) const {
    if (x.cols() % (2 * half_) != 0) {
      throw ShapeError(detail::concat("rotary embedding: ", x.cols(), " columns are not a multiple of the head size ", 2 * half_));
    }
    for (Index s = 0; s < layout.num_sequences(); ++s) {
      for (Index t = layout.begin(s); t < layout.end(s); ++t) rotate_row(x, t, t - layout.begin(s), inverse);
    }
  }

  void check_position(Index position) const {
    if (position < 0 || position >= max_positions_) {
      throw ShapeError(detail::concat("rotary embedding: position ", position, " is outside the table of ", max_positions_,
                                      " positions (raise max_positions)"));
    }
  }

 private:
  Index half_ = 0, max_positions_ = 0;
  std::vector<T> cos_, sin_;
};

}  // namespace distillrec::nn
