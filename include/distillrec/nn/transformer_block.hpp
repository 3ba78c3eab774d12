// distillrec/nn/transformer_block.hpp
//
// A transformer block composed statically from policies: the normalisation layer, the
// feed-forward network, the attention, and where the norms sit (the placement):
//
//   SASRecNorm (Kang & McAuley, 2018, the authors' code):
//       q = LN_a(x);  h = q + Attn(q, x, x);  r = LN_f(h);  y = r + FFN(r)
//     (residual taken from the normalised input: neither pre- nor post-LN)
//   PreNorm (GPT-2, LLaMA):
//       h = x + Attn(LN_a(x));  y = h + FFN(LN_f(h))
//   PostNorm (Vaswani et al., 2017; BERT):
//       h = LN_a(x + Attn(x));  y = LN_f(h + FFN(h))
//
// The policies compose SASRec's block (LayerNorm, PointwiseFeedForward<Relu>, MultiHeadAttention
// with biases, SASRecNorm) and LLaMA's (RMSNorm, SwiGLU, MultiHeadAttention without biases, with
// rotary positions and optionally grouped-query attention, PreNorm): see models/llm_rec.hpp.
//
// x, y [n, dim] over packed sequences (SequenceLayout). Parameters:
// "<name>.attention_norm.*", "<name>.attention.*", "<name>.ffn_norm.*", "<name>.ffn.*".
// backward() propagates dy to dx and adds every parameter gradient of the block.
// nn/block_stack.hpp runs a stack of them (forward, newest-token forward, backward) for every
// transformer model.
#pragma once

#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/attention.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/feed_forward.hpp"
#include "distillrec/nn/layer_norm.hpp"
#include "distillrec/nn/rms_norm.hpp"
#include "distillrec/nn/run_mode.hpp"
#include "distillrec/nn/sequence_layout.hpp"

#include <string>
#include <type_traits>

namespace distillrec::nn {

struct SASRecNorm {
  static constexpr const char* kName = "sasrec";
};
struct PreNorm {
  static constexpr const char* kName = "pre-ln";
};
struct PostNorm {
  static constexpr const char* kName = "post-ln";
};

struct TransformerBlockConfig {
  Index dim = 50;
  Index num_heads = 1;
  Index ffn_dim = 50;
  double dropout = 0.0;            // inside the feed-forward network
  double attention_dropout = 0.0;  // on the attention probabilities
  bool attention_output_projection = false;
  double norm_eps = 1e-8;
  AttentionOptions attention;  // biases, rotary positions, grouped-query heads
  LoraOptions lora;            // LoRA adapters (nn/lora.hpp) on the attention and feed-forward projections
};

template <typename T, typename Placement = SASRecNorm, typename Norm = LayerNorm<T>,
          typename FeedForward = PointwiseFeedForward<T, Relu>,
          typename Attention = MultiHeadAttention<T>>
class TransformerBlock {
  static_assert(std::is_same_v<Placement, SASRecNorm> || std::is_same_v<Placement, PreNorm> ||
                    std::is_same_v<Placement, PostNorm>,
                "Placement must be SASRecNorm, PreNorm or PostNorm");

 public:
  using Scalar = T;

  struct Workspace {
    typename Norm::Workspace attention_norm, ffn_norm;
    typename Attention::Workspace attention;
    typename FeedForward::Workspace ffn;
    ScratchMatrix<T> q, a, h, r, f;        // activations kept for backward  [n, dim]
    ScratchMatrix<T> grad_r, grad_h, grad_q;
    ScratchMatrix<T> x_last;               // rows of x at the last token of each sequence
    ScratchMatrix<T> grad_input;           // dx when the caller accumulates
  };

  TransformerBlock(Parameters<T>& params, const std::string& name, const TransformerBlockConfig& config)
      : attention_norm_(params, name + ".attention_norm", config.dim, config.norm_eps),
        attention_(params, name + ".attention", config.dim, config.num_heads, config.attention_dropout,
                   config.attention_output_projection, with_lora(config.attention, config.lora)),
        ffn_norm_(params, name + ".ffn_norm", config.dim, config.norm_eps),
        ffn_(params, name + ".ffn", config.dim, config.ffn_dim, config.dropout, config.lora),
        dim_(config.dim) {}

  void initialize(Rng& rng) {
    attention_norm_.initialize(rng);
    attention_.initialize(rng);
    ffn_norm_.initialize(rng);
    ffn_.initialize(rng);
  }

  Index dim() const { return dim_; }

  /// y = block(x); y must not alias x.
  void forward(const ConstMatrixRef<T>& x, const SequenceLayout& layout, MatrixRef<T> y, Workspace& ws,
               const RunMode& mode) const {
    require_shape(y, x.rows(), dim_, "TransformerBlock output");
    compose(x, y, ws, mode, [&](const ConstMatrixRef<T>& queries, MatrixRef<T> a) {
      attention_.forward(queries, keys_from(x, queries), layout, a, ws.attention, mode);
    });
  }

  /// Inference output at the newest token of every sequence only: y_last [sequences, dim] equals
  /// the last rows of forward() in inference mode. The attention still reads every token.
  void forward_last(const ConstMatrixRef<T>& x, const SequenceLayout& layout, MatrixRef<T> y_last, Workspace& ws) const {
    const Index b = layout.num_sequences();
    require_shape(y_last, b, dim_, "TransformerBlock last-token output");
    auto x_last = ws.x_last.resize(b, dim_);
    for (Index s = 0; s < b; ++s) x_last.row(s) = x.row(layout.last(s));
    compose(x_last, y_last, ws, RunMode::inference(), [&](const ConstMatrixRef<T>& queries, MatrixRef<T> a) {
      if constexpr (std::is_same_v<Placement, PreNorm>) {  // keys and values from every normalised token
        auto keys = ws.grad_q.resize(x.rows(), dim_);
        attention_norm_.forward(x, keys, ws.attention_norm);
        attention_.forward_last(queries, keys, layout, a, ws.attention);
      } else {
        attention_.forward_last(queries, x, layout, a, ws.attention);
      }
    });
  }

  /// Width of the attention's keys and values (what forward_cached caches per token).
  Index kv_dim() const { return attention_.kv_dim(); }

  /// Inference for one new token at `position` of its sequence, x and y [1, dim], with the
  /// attention's keys and values of the earlier tokens cached (MultiHeadAttention::
  /// forward_cached; the new token's are written at row `position`). Equal to the newest row of
  /// forward() over the whole sequence at inference.
  void forward_cached(const ConstMatrixRef<T>& x, Index position, T* k_cache, T* v_cache, MatrixRef<T> y, Workspace& ws) const {
    require_shape(x, 1, dim_, "TransformerBlock cached input");
    require_shape(y, 1, dim_, "TransformerBlock cached output");
    compose(x, y, ws, RunMode::inference(), [&](const ConstMatrixRef<T>& queries, MatrixRef<T> a) {
      attention_.forward_cached(queries, keys_from(x, queries), position, k_cache, v_cache, a, ws.attention);
    });
  }

  /// dx = d(block)/dx^T dy (or dx += ..., see nn/backward.hpp); adds the parameter gradients.
  /// Needs the workspace of the matching forward call and the same input x.
  void backward(const ConstMatrixRef<T>& x, const SequenceLayout& layout, const ConstMatrixRef<T>& dy,
                MatrixRef<T> dx, Workspace& ws, InputGrad mode = InputGrad::kOverwrite) {
    const Index n = x.rows();
    require_shape(dx, n, dim_, "TransformerBlock input gradient");
    if (mode == InputGrad::kAccumulate) {  // the placements below overwrite: go through a scratch
      auto tmp = ws.grad_input.resize(n, dim_);
      backward(x, layout, dy, tmp, ws, InputGrad::kOverwrite);
      dx += ws.grad_input.map();
      return;
    }
    auto grad_r = ws.grad_r.resize(n, dim_);
    auto grad_h = ws.grad_h.resize(n, dim_);
    auto grad_q = ws.grad_q.resize(n, dim_);
    const auto q = ws.q.map();
    const auto h = ws.h.map();
    const auto r = ws.r.map();
    if constexpr (std::is_same_v<Placement, SASRecNorm>) {
      grad_r = dy;                                               // y = r + FFN(r)
      ffn_.backward(r, dy, grad_r, ws.ffn, InputGrad::kAccumulate);
      ffn_norm_.accumulate_grad(grad_r, ws.ffn_norm);            // r = LN_f(h)
      ffn_norm_.backward(grad_r, grad_h, ws.ffn_norm);
      grad_q = grad_h;                                           // h = q + Attn(q, x)
      attention_.backward(q, x, layout, grad_h, grad_q, dx, ws.attention, InputGrad::kAccumulate, InputGrad::kOverwrite);
      attention_norm_.accumulate_grad(grad_q, ws.attention_norm);  // q = LN_a(x)
      attention_norm_.backward(grad_q, dx, ws.attention_norm, InputGrad::kAccumulate);
    } else if constexpr (std::is_same_v<Placement, PreNorm>) {
      grad_h = dy;                                               // y = h + FFN(r)
      ffn_.backward(r, dy, grad_r, ws.ffn);
      ffn_norm_.accumulate_grad(grad_r, ws.ffn_norm);            // r = LN_f(h)
      ffn_norm_.backward(grad_r, grad_h, ws.ffn_norm, InputGrad::kAccumulate);
      attention_.backward(q, q, layout, grad_h, grad_q, grad_q, ws.attention, InputGrad::kOverwrite, InputGrad::kAccumulate);
      dx = grad_h;                                               // h = x + Attn(q, q)
      attention_norm_.accumulate_grad(grad_q, ws.attention_norm);  // q = LN_a(x)
      attention_norm_.backward(grad_q, dx, ws.attention_norm, InputGrad::kAccumulate);
    } else {
      ffn_norm_.accumulate_grad(dy, ws.ffn_norm);                // y = LN_f(r)
      ffn_norm_.backward(dy, grad_r, ws.ffn_norm);
      grad_h = grad_r;                                           // r = h + FFN(h)
      ffn_.backward(h, grad_r, grad_h, ws.ffn, InputGrad::kAccumulate);
      attention_norm_.accumulate_grad(grad_h, ws.attention_norm);  // h = LN_a(q)
      attention_norm_.backward(grad_h, grad_q, ws.attention_norm);
      attention_.backward(x, x, layout, grad_q, dx, dx, ws.attention, InputGrad::kOverwrite, InputGrad::kAccumulate);
      dx += grad_q;                                              // q = x + Attn(x, x)
    }
  }

 private:
  // The placement, written once for forward, forward_last and forward_cached: x_rows [rows, dim]
  // are the block inputs of the rows computed (the residual's source), and attend(queries, a)
  // runs the attention for those rows, writing a [rows, dim]; its queries are LN_a(x_rows)
  // (SASRecNorm, PreNorm) or x_rows (PostNorm). The activations land in ws for backward().
  template <typename Attend>
  void compose(const ConstMatrixRef<T>& x_rows, MatrixRef<T> y, Workspace& ws, const RunMode& mode, Attend&& attend) const {
    const Index rows = x_rows.rows();
    auto q = ws.q.resize(rows, dim_);
    auto a = ws.a.resize(rows, dim_);
    auto h = ws.h.resize(rows, dim_);
    auto r = ws.r.resize(rows, dim_);
    auto f = ws.f.resize(rows, dim_);
    if constexpr (std::is_same_v<Placement, SASRecNorm>) {
      attention_norm_.forward(x_rows, q, ws.attention_norm);
      attend(q, a);
      h = q + a;
      ffn_norm_.forward(h, r, ws.ffn_norm);
      ffn_.forward(r, f, ws.ffn, mode);
      y = r + f;
    } else if constexpr (std::is_same_v<Placement, PreNorm>) {
      attention_norm_.forward(x_rows, q, ws.attention_norm);
      attend(q, a);
      h = x_rows + a;
      ffn_norm_.forward(h, r, ws.ffn_norm);
      ffn_.forward(r, f, ws.ffn, mode);
      y = h + f;
    } else {  // PostNorm: q holds x + Attn(x), h = LN_a(q), r = h + FFN(h), y = LN_f(r)
      attend(x_rows, a);
      q = x_rows + a;
      attention_norm_.forward(q, h, ws.attention_norm);
      ffn_.forward(h, f, ws.ffn, mode);
      r = h + f;
      ffn_norm_.forward(r, y, ws.ffn_norm);
    }
  }

  static AttentionOptions with_lora(AttentionOptions options, const LoraOptions& lora) {
    if (lora.enabled()) options.lora = lora;
    return options;
  }

  // Keys and values of the attention: the raw input for SASRec's block, the queries' source
  // (normalised input, or the input itself for PostNorm) otherwise.
  static const ConstMatrixRef<T>& keys_from(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& queries) {
    if constexpr (std::is_same_v<Placement, SASRecNorm>) {
      return x;
    } else {
      return queries;
    }
  }

  Norm attention_norm_;
  Attention attention_;
  Norm ffn_norm_;
  FeedForward ffn_;
  Index dim_;
};

}  // namespace distillrec::nn
