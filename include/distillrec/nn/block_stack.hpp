// distillrec/nn/block_stack.hpp
//
// A stack of B transformer blocks over packed sequences: the one forward, newest-token forward
// and backward loop that every transformer model of the library (SASRec, LLMRec, and later
// models) runs, instead of a copy per model.
//
//   hidden(0)          the stack input [tokens, dim] (the caller fills input())
//   hidden(b + 1)      the output of block b, b = 0..B-1 (hidden(B) is the stack output)
//
// forward()       every block over every token (training: dropout from the run mode)
// forward_last()  inference for user vectors: blocks 0..B-2 over every token, the last block
//                 only at the newest token of each sequence; hidden(B) then has one row per
//                 sequence
// forward_cached() inference for one new token of a sequence whose earlier tokens' keys and
//                 values are cached (incremental sessions, serve/session.hpp)
// backward()      the caller writes dL/d(stack output) into output_grad() and calls backward(),
//                 which returns dL/d(stack input) and adds every block's parameter gradients.
//                 Gradients from elsewhere (distillation losses on intermediate states) are
//                 added at hidden(k), 0 <= k < B, through the `extra` callback. Backward follows
//                 the convention of nn/backward.hpp.
//
// Parameters of block b are "<prefix>.<b>.*" (transformer_block.hpp).
#pragma once

#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/run_mode.hpp"
#include "distillrec/nn/sequence_layout.hpp"
#include "distillrec/nn/transformer_block.hpp"

#include <string>
#include <utility>
#include <vector>

namespace distillrec::nn {

template <typename Block>
class BlockStack {
 public:
  using Scalar = typename Block::Scalar;
  using T = Scalar;
  using BlockType = Block;

  struct Workspace {
    std::vector<ScratchMatrix<T>> hidden;  // hidden[0] = input, hidden[b + 1] = output of block b
    std::vector<typename Block::Workspace> blocks;
    ScratchMatrix<T> grad_a, grad_b;       // gradients flowing down, swapped block by block
  };

  BlockStack(Parameters<T>& params, const std::string& prefix, Index num_blocks, const TransformerBlockConfig& config)
      : dim_(config.dim) {
    if (num_blocks <= 0) throw ConfigError(detail::concat("block stack \"", prefix, "\": needs at least one block, got ", num_blocks));
    blocks_.reserve(static_cast<std::size_t>(num_blocks));
    for (Index b = 0; b < num_blocks; ++b) blocks_.emplace_back(params, prefix + "." + std::to_string(b), config);
  }

  void initialize(Rng& rng) {
    for (auto& block : blocks_) block.initialize(rng);
  }

  Index size() const { return static_cast<Index>(blocks_.size()); }
  Index dim() const { return dim_; }
  const Block& block(Index b) const { return blocks_.at(static_cast<std::size_t>(b)); }

  /// The stack input [tokens, dim], to be filled before forward() / forward_last().
  MatrixMap<T> input(Workspace& ws, Index tokens) const {
    ws.hidden.resize(static_cast<std::size_t>(size()) + 1);
    ws.blocks.resize(static_cast<std::size_t>(size()));
    return ws.hidden[0].resize(tokens, dim_);
  }

  /// hidden(b) of the last forward pass (see the header comment).
  ConstMatrixMap<T> hidden(const Workspace& ws, Index b) const {
    DISTILLREC_ASSERT(b >= 0 && b <= size());
    const auto& h = ws.hidden[static_cast<std::size_t>(b)];
    return ConstMatrixMap<T>(h.data(), h.rows(), h.cols());
  }

  /// Every block over every token; returns the stack output [tokens, dim].
  ConstMatrixMap<T> forward(const SequenceLayout& layout, Workspace& ws, const RunMode& mode) const {
    return run(layout, ws, mode, /*last_block_at_newest_only=*/false);
  }

  /// Inference: the stack output at the newest token of every sequence, [sequences, dim].
  ConstMatrixMap<T> forward_last(const SequenceLayout& layout, Workspace& ws) const {
    return run(layout, ws, RunMode::inference(), /*last_block_at_newest_only=*/true);
  }

  /// Scalars of the key/value cache of `positions` tokens: per block, keys then values, each
  /// [positions, kv_dim].
  Index cache_size(Index positions) const {
    Index n = 0;
    for (const auto& block : blocks_) n += 2 * positions * block.kv_dim();
    return n;
  }

  /// Inference for one new token at `position` of its sequence: x [1, dim] the stack input of
  /// that token, `cache` (cache_size(positions) scalars, positions > position) holding the
  /// earlier tokens' keys and values and receiving the new token's. Returns the stack output
  /// [1, dim], equal to the newest row of forward() over the whole sequence at inference.
  ConstMatrixMap<T> forward_cached(const ConstMatrixRef<T>& x, Index position, T* cache, Index positions, Workspace& ws) const {
    if (position < 0 || position >= positions) {
      throw ShapeError(detail::concat("block stack: cached position ", position, " is outside 0..", positions - 1));
    }
    ws.hidden.resize(static_cast<std::size_t>(size()) + 1);
    ws.blocks.resize(static_cast<std::size_t>(size()));
    ws.hidden[0].resize(1, dim_) = x;
    for (Index b = 0; b < size(); ++b) {
      const auto& block = blocks_[static_cast<std::size_t>(b)];
      const Index kv = positions * block.kv_dim();
      auto out = ws.hidden[static_cast<std::size_t>(b) + 1].resize(1, dim_);
      block.forward_cached(ws.hidden[static_cast<std::size_t>(b)].map(), position, cache, cache + kv, out,
                           ws.blocks[static_cast<std::size_t>(b)]);
      cache += 2 * kv;
    }
    const auto& top = ws.hidden.back();
    return ConstMatrixMap<T>(top.data(), 1, dim_);
  }

  /// Where the caller writes dL/d(stack output) [tokens, dim] before backward().
  MatrixMap<T> output_grad(Workspace& ws, Index tokens) const { return ws.grad_a.resize(tokens, dim_); }

  /// Backpropagates output_grad() through the blocks (adding their parameter gradients); extra(k)
  /// returns a matrix to add to the gradient at hidden(k), 0 <= k < size(), or nullptr. Returns
  /// dL/d(stack input), a view into the workspace.
  template <typename ExtraGrad>
  MatrixMap<T> backward(const SequenceLayout& layout, Workspace& ws, ExtraGrad&& extra) {
    const Index n = layout.num_tokens();
    MatrixMap<T> grad_a = ws.grad_a.map();
    MatrixMap<T> grad_b = ws.grad_b.resize(n, dim_);
    require_shape(grad_a, n, dim_, "block stack output gradient");
    MatrixMap<T>* ga = &grad_a;  // gradient w.r.t. the current block's output
    MatrixMap<T>* gb = &grad_b;  // ... and w.r.t. its input
    for (Index b = size() - 1; b >= 0; --b) {
      if (b + 1 < size()) add_extra(*ga, extra(b + 1));
      blocks_[static_cast<std::size_t>(b)].backward(ws.hidden[static_cast<std::size_t>(b)].map(), layout, *ga, *gb,
                                                    ws.blocks[static_cast<std::size_t>(b)]);
      std::swap(ga, gb);
    }
    add_extra(*ga, extra(0));
    return *ga;
  }

  MatrixMap<T> backward(const SequenceLayout& layout, Workspace& ws) {
    return backward(layout, ws, [](Index) -> const ScratchMatrix<T>* { return nullptr; });
  }

 private:
  static void add_extra(MatrixMap<T>& grad, const ScratchMatrix<T>* extra) {
    if (extra != nullptr) grad += extra->map();
  }

  ConstMatrixMap<T> run(const SequenceLayout& layout, Workspace& ws, const RunMode& mode, bool last_block_at_newest_only) const {
    const Index n = layout.num_tokens(), num_blocks = size();
    require_shape(ws.hidden.at(0).map(), n, dim_, "block stack input");
    for (Index b = 0; b < num_blocks; ++b) {
      const auto& block = blocks_[static_cast<std::size_t>(b)];
      const auto in = ws.hidden[static_cast<std::size_t>(b)].map();
      auto& block_ws = ws.blocks[static_cast<std::size_t>(b)];
      if (last_block_at_newest_only && b == num_blocks - 1) {
        auto out = ws.hidden[static_cast<std::size_t>(b) + 1].resize(layout.num_sequences(), dim_);
        block.forward_last(in, layout, out, block_ws);
      } else {
        auto out = ws.hidden[static_cast<std::size_t>(b) + 1].resize(n, dim_);
        block.forward(in, layout, out, block_ws, mode);
      }
    }
    const auto& top = ws.hidden.back();
    return ConstMatrixMap<T>(top.data(), top.rows(), top.cols());
  }

  std::vector<Block> blocks_;
  Index dim_;
};

}  // namespace distillrec::nn
