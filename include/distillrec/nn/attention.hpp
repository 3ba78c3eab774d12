// distillrec/nn/attention.hpp
//
// Causal multi-head self-attention over packed sequences (Vaswani et al., 2017; SASRec,
// Kang & McAuley, 2018):
//   Q = xq Wq^T + bq,  K = xkv Wk^T + bk,  V = xkv Wv^T + bv           [n, dim]
//   per sequence and head h (head_dim = dim / heads):
//     A_h = Dropout(softmax(Q_h K_h^T / sqrt(head_dim) + causal mask))  [len, len]
//     ctx_h = A_h V_h
//   y = ctx (no output projection, SASRec's original) or ctx Wo^T + bo.
// Queries and keys/values may come from different inputs: SASRec's original block queries with
// the normalised input and attends over the raw one.
//
// Options for LLaMA-style attention (AttentionOptions): no biases; rotary position embedding
// applied to Q and K after the projections (nn/rope.hpp); grouped-query attention (Ainslie et
// al., 2023) with num_kv_heads dividing num_heads: K and V have num_kv_heads heads of the same
// size, query head h reads key/value head h / (num_heads / num_kv_heads); num_kv_heads =
// num_heads is ordinary multi-head attention.
//
// Sequences are packed (see SequenceLayout): a token attends to itself and the earlier tokens
// of its own sequence only. This is exactly a padded batch with a key-padding mask, a query
// mask and a causal mask, without computing the padded rows at all.
//
// Parameters "<name>.query|key|value[.output].{weight,bias}" (weights [dim, dim], key and value
// [num_kv_heads * head_dim, dim]; no biases with bias = false); with AttentionOptions::lora
// (rank > 0, attention on) each projection carries a LoRA adapter (nn/lora.hpp), whose
// activations live in the workspace like the rest. Sequences are processed in
// parallel (OpenMP); dropout masks come from a generator derived per sequence, so results do
// not depend on the thread count.
//
// Memory: forward keeps every head's probability matrix (len x len per sequence and head) for
// backward, unless AttentionOptions::recompute_probabilities: then backward recomputes them from
// the kept queries and keys (and the dropout masks from their seeds), bit for bit, and the
// memory is one len x len scratch per thread (long item texts: heads x len^2 per item otherwise).
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/linear.hpp"
#include "distillrec/nn/rope.hpp"
#include "distillrec/nn/run_mode.hpp"
#include "distillrec/nn/sequence_layout.hpp"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::nn {

struct AttentionOptions {
  Index num_kv_heads = 0;       // 0: num_heads (no grouping)
  bool bias = true;             // biases on the projections (SASRec: yes, LLaMA: no)
  bool rope = false;            // rotary position embedding on Q and K
  double rope_theta = 10000.0;
  Index max_positions = 512;    // size of the rotary table (longest sequence)
  LoraOptions lora;             // adapters on the projections when lora.rank > 0 and lora.attention
  /// Keep no attention probabilities for backward: backward recomputes them from the stored
  /// queries and keys (and regenerates the dropout masks from their seeds). Memory per layer
  /// drops from heads x len^2 per sequence to len^2 per thread, for one more Q K^T product and
  /// softmax per head in backward; results are the same bit for bit.
  bool recompute_probabilities = false;
};

template <typename T>
class MultiHeadAttention {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> query, key, value;   // projections                     [n, dim]
    ScratchMatrix<T> context;              // merged heads (pre-projection)   [n, dim]
    ScratchMatrix<T> grad_query, grad_key, grad_value, grad_context;
    typename Linear<T>::Workspace query_projection, key_projection, value_projection, output_projection;  // adapters
    std::vector<T> probs;                  // softmax per (sequence, head): len x len, packed
    std::vector<T> mask;                   // dropout mask, same layout (training only)
    std::vector<Index> prob_offsets;       // start of sequence s in probs (heads consecutive)
    PerThreadScratch<T> scratch;           // per-sequence temporaries of the parallel loops
    bool dropout_active = false;
    // What regenerates the dropout masks when probabilities are recomputed: the call's seed and,
    // with per-example masks, each sequence's key.
    std::uint64_t call_seed = 0;
    bool keyed = false;
    std::vector<std::uint64_t> sequence_keys;
  };

  MultiHeadAttention(Parameters<T>& params, const std::string& name, Index dim, Index num_heads,
                     double attention_dropout, bool output_projection, const AttentionOptions& options = {})
      : query_(params, name + ".query", dim, dim, options.bias, options.lora.where(options.lora.attention)),
        key_(params, name + ".key", dim, checked_kv_dim(dim, num_heads, options.num_kv_heads), options.bias,
             options.lora.where(options.lora.attention)),
        value_(params, name + ".value", dim, kv_dim(dim, num_heads, options.num_kv_heads), options.bias,
               options.lora.where(options.lora.attention)),
        dim_(dim),
        heads_(num_heads), kv_heads_(options.num_kv_heads > 0 ? options.num_kv_heads : num_heads),
        dropout_(attention_dropout), recompute_(options.recompute_probabilities) {
    if (options.rope) rope_.emplace(dim / num_heads, options.max_positions, options.rope_theta);
    if (!(attention_dropout >= 0.0 && attention_dropout < 1.0)) {
      throw ConfigError(detail::concat("attention dropout must be in [0, 1), got ", attention_dropout));
    }
    if (output_projection) output_.emplace(params, name + ".output", dim, dim, options.bias, options.lora.where(options.lora.attention));
  }

  void initialize(Rng& rng) {
    query_.initialize(rng);
    key_.initialize(rng);
    value_.initialize(rng);
    if (output_) output_->initialize(rng);
  }

  Index dim() const { return dim_; }
  Index num_heads() const { return heads_; }
  Index head_dim() const { return dim_ / heads_; }
  Index num_kv_heads() const { return kv_heads_; }
  /// Width of the keys and values (num_kv_heads * head_dim).
  Index kv_dim() const { return kv_heads_ * head_dim(); }
  bool has_rope() const { return rope_.has_value(); }
  bool has_output_projection() const { return output_.has_value(); }
  bool recomputes_probabilities() const { return recompute_; }

  /// y = Attn(xq, xkv) over every token (training or inference).
  void forward(const ConstMatrixRef<T>& xq, const ConstMatrixRef<T>& xkv, const SequenceLayout& layout,
               MatrixRef<T> y, Workspace& ws, const RunMode& mode) const {
    const Index n = layout.num_tokens();
    require_shape(xq, n, dim_, "attention query input");
    require_shape(xkv, n, dim_, "attention key/value input");
    require_shape(y, n, dim_, "attention output");
    project(xq, xkv, layout, /*queries_at_newest_only=*/false, ws, mode);
    const auto q = ws.query.map();
    const auto k = ws.key.map();
    const auto v = ws.value.map();

    const Index num_seq = layout.num_sequences();
    ws.prob_offsets.resize(static_cast<std::size_t>(num_seq) + 1);
    ws.prob_offsets[0] = 0;
    for (Index s = 0; s < num_seq; ++s) {
      ws.prob_offsets[static_cast<std::size_t>(s) + 1] =
          ws.prob_offsets[static_cast<std::size_t>(s)] + heads_ * layout.length(s) * layout.length(s);
    }
    const auto total = static_cast<std::size_t>(ws.prob_offsets.back());
    ws.dropout_active = mode.training && dropout_ > 0.0;
    if (!recompute_) {  // kept for backward; recomputed there otherwise
      if (ws.probs.size() < total) ws.probs.resize(total);
      if (ws.dropout_active && ws.mask.size() < total) ws.mask.resize(total);
    }
    // Sequential masks: one seed per call from the generator, one stream per packed sequence.
    // Per-example masks: the site's seed, one stream per sequence key (its training example).
    const bool keyed = ws.dropout_active && mode.keyed();
    if (keyed && mode.num_sequences != num_seq) {
      throw ShapeError(detail::concat("attention: per-example masks need one key per sequence: ", num_seq, " sequences, ",
                                      mode.num_sequences, " keys"));
    }
    const std::uint64_t call_seed = !ws.dropout_active ? 0 : keyed ? mode.next_site_seed() : mode.generator().next();
    ws.call_seed = call_seed;
    ws.keyed = keyed;
    if (keyed && recompute_) ws.sequence_keys.assign(mode.sequence_keys, mode.sequence_keys + num_seq);

    auto ctx = ws.context.resize(n, dim_);
    const T scale = T(1) / std::sqrt(static_cast<T>(head_dim()));
    const Index dh = head_dim();
    const Index group = heads_ / kv_heads_;
    const bool parallel_loop = num_seq > 1 && n > 64 && !parallel::in_parallel();
    // Per thread: the dropped probabilities (and, recomputing, the probabilities and the mask).
    const Index max_square = layout.max_length() * layout.max_length();
    ws.scratch.prepare(parallel_loop ? parallel::max_threads() : 1, static_cast<std::size_t>((recompute_ ? 3 : 1) * max_square));

    parallel::for_each(num_seq, parallel_loop, [&](Index s, int thread) {
      const Index b = layout.begin(s), len = layout.length(s);
      Rng rng = keyed ? RunMode::keyed_stream(call_seed, mode.sequence_keys[s]) : Rng(call_seed).derive(static_cast<std::uint64_t>(s));
      T* buffer = ws.scratch.get(thread, static_cast<std::size_t>((recompute_ ? 3 : 1) * len * len));
      for (Index h = 0; h < heads_; ++h) {
        T* p_data = recompute_ ? buffer + len * len : ws.probs.data() + ws.prob_offsets[static_cast<std::size_t>(s)] + h * len * len;
        MatrixMap<T> p(p_data, len, len);
        const Index g = h / group;
        const auto qh = q.block(b, h * dh, len, dh);
        const auto kh = k.block(b, g * dh, len, dh);
        const auto vh = v.block(b, g * dh, len, dh);
        p.noalias() = qh * kh.transpose();
        for (Index i = 0; i < len; ++i) {
          backend::kernels::softmax<T>(p.row(i).data(), i + 1, scale);
          p.row(i).tail(len - i - 1).setZero();
        }
        auto out = ctx.block(b, h * dh, len, dh);
        if (ws.dropout_active) {
          T* m_data = recompute_ ? buffer + 2 * len * len : ws.mask.data() + ws.prob_offsets[static_cast<std::size_t>(s)] + h * len * len;
          backend::kernels::dropout_mask(m_data, len * len, dropout_, rng);
          MatrixMap<T> pd(buffer, len, len);
          pd = p.cwiseProduct(MatrixMap<T>(m_data, len, len));
          out.noalias() = pd * vh;
        } else {
          out.noalias() = p * vh;
        }
      }
    }, /*dynamic_chunk=*/4);
    if (output_) {
      output_->forward(ctx, y, ws.output_projection, mode);
    } else {
      y = ctx;
    }
  }

  /// Inference for the newest token of every sequence only (what a user vector needs):
  /// xq_last [sequences, dim] holds the query inputs at the last token of each sequence, xkv
  /// [tokens, dim] the key/value inputs of all tokens; y_last [sequences, dim]. Equal to the
  /// last rows of forward() at inference, at a fraction of its cost.
  void forward_last(const ConstMatrixRef<T>& xq_last, const ConstMatrixRef<T>& xkv, const SequenceLayout& layout,
                    MatrixRef<T> y_last, Workspace& ws) const {
    const Index n = layout.num_tokens(), num_seq = layout.num_sequences();
    require_shape(xq_last, num_seq, dim_, "attention last-token query input");
    require_shape(xkv, n, dim_, "attention key/value input");
    require_shape(y_last, num_seq, dim_, "attention last-token output");
    project(xq_last, xkv, layout, /*queries_at_newest_only=*/true, ws, RunMode::inference());
    const auto q = ws.query.map();
    const auto k = ws.key.map();
    const auto v = ws.value.map();
    auto ctx = ws.context.resize(num_seq, dim_);
    const T scale = T(1) / std::sqrt(static_cast<T>(head_dim()));
    const Index dh = head_dim();
    const Index group = heads_ / kv_heads_;
    const bool parallel_loop = num_seq > 8 && n > 256 && !parallel::in_parallel();
    ws.scratch.prepare(parallel_loop ? parallel::max_threads() : 1, static_cast<std::size_t>(layout.max_length()));
    parallel::for_each(num_seq, parallel_loop, [&](Index s, int thread) {
      const Index b = layout.begin(s), len = layout.length(s);
      Eigen::Map<RowVector<T>> p(ws.scratch.get(thread, static_cast<std::size_t>(len)), len);
      for (Index h = 0; h < heads_; ++h) {
        const Index g = h / group;
        p.noalias() = q.row(s).segment(h * dh, dh) * k.block(b, g * dh, len, dh).transpose();
        backend::kernels::softmax<T>(p.data(), len, scale);
        ctx.row(s).segment(h * dh, dh).noalias() = p * v.block(b, g * dh, len, dh);
      }
    });
    if (output_) {
      output_->forward(ctx, y_last, ws.output_projection, RunMode::inference());
    } else {
      y_last = ctx;
    }
  }

  /// Inference for one new token at `position` (0 = the oldest of its sequence) given the keys
  /// and values of the earlier tokens: k_cache and v_cache [>= position + 1, kv_dim()] hold rows
  /// 0..position-1 (rotated keys, values) and receive row `position`; xq, xkv, y [1, dim]. Equal
  /// to the newest row of forward() over the whole sequence at inference (incremental sessions).
  void forward_cached(const ConstMatrixRef<T>& xq, const ConstMatrixRef<T>& xkv, Index position, T* k_cache, T* v_cache,
                      MatrixRef<T> y, Workspace& ws) const {
    require_shape(xq, 1, dim_, "attention cached query input");
    require_shape(xkv, 1, dim_, "attention cached key/value input");
    require_shape(y, 1, dim_, "attention cached output");
    if (position < 0) throw ShapeError(detail::concat("attention: cached position ", position, " is negative"));
    const Index kvd = kv_dim(), len = position + 1;
    auto q = ws.query.resize(1, dim_);
    const RunMode inference = RunMode::inference();
    query_.forward(xq, q, ws.query_projection, inference);
    MatrixMap<T> k_all(k_cache, len, kvd), v_all(v_cache, len, kvd);
    key_.forward(xkv, k_all.row(position), ws.key_projection, inference);
    value_.forward(xkv, v_all.row(position), ws.value_projection, inference);
    if (rope_) {
      rope_->rotate_row(q, 0, position);
      rope_->rotate_row(k_all, position, position);
    }
    auto ctx = ws.context.resize(1, dim_);
    const T scale = T(1) / std::sqrt(static_cast<T>(head_dim()));
    const Index dh = head_dim(), group = heads_ / kv_heads_;
    ws.scratch.prepare(1, static_cast<std::size_t>(len));
    Eigen::Map<RowVector<T>> p(ws.scratch.get(0, static_cast<std::size_t>(len)), len);
    for (Index h = 0; h < heads_; ++h) {
      const Index g = h / group;
      p.noalias() = q.row(0).segment(h * dh, dh) * k_all.block(0, g * dh, len, dh).transpose();
      backend::kernels::softmax<T>(p.data(), len, scale);
      ctx.row(0).segment(h * dh, dh).noalias() = p * v_all.block(0, g * dh, len, dh);
    }
    if (output_) {
      output_->forward(ctx, y, ws.output_projection, inference);
    } else {
      y = ctx;
    }
  }

  /// Propagates dy to both inputs (dxq and dxkv written as q_mode and kv_mode say, see
  /// nn/backward.hpp) and adds the parameter gradients. dxq and dxkv may be the same matrix when
  /// xq and xkv are: then pass kv_mode = kAccumulate so the key/value part adds onto the query part.
  void backward(const ConstMatrixRef<T>& xq, const ConstMatrixRef<T>& xkv, const SequenceLayout& layout,
                const ConstMatrixRef<T>& dy, MatrixRef<T> dxq, MatrixRef<T> dxkv, Workspace& ws,
                InputGrad q_mode = InputGrad::kOverwrite, InputGrad kv_mode = InputGrad::kOverwrite) {
    const Index n = layout.num_tokens();
    require_shape(dy, n, dim_, "attention output gradient");
    auto dctx = ws.grad_context.resize(n, dim_);
    if (output_) {
      output_->accumulate_grad(ws.context.map(), dy, ws.output_projection);
      output_->backward(dy, dctx, ws.output_projection);
    } else {
      dctx = dy;
    }
    const auto q = ws.query.map();
    const auto k = ws.key.map();
    const auto v = ws.value.map();
    const Index kvd = kv_heads_ * head_dim();
    auto dq = ws.grad_query.resize(n, dim_);
    auto dk = ws.grad_key.resize(n, kvd);
    auto dv = ws.grad_value.resize(n, kvd);
    const T scale = T(1) / std::sqrt(static_cast<T>(head_dim()));
    const Index dh = head_dim();
    const Index group = heads_ / kv_heads_;
    const Index num_seq = layout.num_sequences();
    const bool parallel_loop = num_seq > 1 && n > 64 && !parallel::in_parallel();
    const Index per_thread = (recompute_ ? 4 : 2) * layout.max_length() * layout.max_length();
    ws.scratch.prepare(parallel_loop ? parallel::max_threads() : 1, static_cast<std::size_t>(per_thread));

    parallel::for_each(num_seq, parallel_loop, [&](Index s, int thread) {
      const Index b = layout.begin(s), len = layout.length(s);
      T* buffer = ws.scratch.get(thread, static_cast<std::size_t>((recompute_ ? 4 : 2) * len * len));
      MatrixMap<T> pd(buffer, len, len);                 // dropped probabilities
      MatrixMap<T> dp(buffer + len * len, len, len);     // gradient w.r.t. probabilities
      dk.middleRows(b, len).setZero();  // key/value heads shared by a group add up
      dv.middleRows(b, len).setZero();
      // Recomputing: the forward's generator for this sequence, whose masks come head by head.
      Rng rng = !(recompute_ && ws.dropout_active) ? Rng(0)
                : ws.keyed ? RunMode::keyed_stream(ws.call_seed, ws.sequence_keys[static_cast<std::size_t>(s)])
                           : Rng(ws.call_seed).derive(static_cast<std::uint64_t>(s));
      for (Index h = 0; h < heads_; ++h) {
        const Index g = h / group;
        const auto qh = q.block(b, h * dh, len, dh);
        const auto kh = k.block(b, g * dh, len, dh);
        const auto vh = v.block(b, g * dh, len, dh);
        const Index offset = ws.prob_offsets[static_cast<std::size_t>(s)] + h * len * len;
        const T* p_data = recompute_ ? nullptr : ws.probs.data() + offset;
        const T* m_data = ws.dropout_active && !recompute_ ? ws.mask.data() + offset : nullptr;
        if (recompute_) {  // the forward's probabilities (and mask), exactly as it made them
          MatrixMap<T> p_again(buffer + 2 * len * len, len, len);
          p_again.noalias() = qh * kh.transpose();
          for (Index i = 0; i < len; ++i) {
            backend::kernels::softmax<T>(p_again.row(i).data(), i + 1, scale);
            p_again.row(i).tail(len - i - 1).setZero();
          }
          p_data = p_again.data();
          if (ws.dropout_active) {
            T* m_again = buffer + 3 * len * len;
            backend::kernels::dropout_mask(m_again, len * len, dropout_, rng);
            m_data = m_again;
          }
        }
        ConstMatrixMap<T> p(p_data, len, len);
        const auto dctx_h = dctx.block(b, h * dh, len, dh);
        if (m_data != nullptr) {
          pd = p.cwiseProduct(ConstMatrixMap<T>(m_data, len, len));
          dv.block(b, g * dh, len, dh).noalias() += pd.transpose() * dctx_h;
        } else {
          dv.block(b, g * dh, len, dh).noalias() += p.transpose() * dctx_h;
        }
        dp.noalias() = dctx_h * vh.transpose();
        if (m_data != nullptr) dp = dp.cwiseProduct(ConstMatrixMap<T>(m_data, len, len));
        for (Index i = 0; i < len; ++i) {
          // Gradient w.r.t. the raw scores q k^T (softmax and 1/sqrt(d) scale), causal part only.
          backend::kernels::softmax_backward<T>(p.row(i).data(), dp.row(i).data(), dp.row(i).data(), i + 1, scale);
          dp.row(i).tail(len - i - 1).setZero();
        }
        dq.block(b, h * dh, len, dh).noalias() = dp * kh;
        dk.block(b, g * dh, len, dh).noalias() += dp.transpose() * qh;
      }
    }, /*dynamic_chunk=*/4);
    if (rope_) {  // back from the rotated Q and K to the projections
      rope_->rotate(dq, layout, /*inverse=*/true);
      rope_->rotate(dk, layout, /*inverse=*/true);
    }
    query_.accumulate_grad(xq, dq, ws.query_projection);
    key_.accumulate_grad(xkv, dk, ws.key_projection);
    value_.accumulate_grad(xkv, dv, ws.value_projection);
    query_.backward(dq, dxq, ws.query_projection, q_mode);
    key_.backward(dk, dxkv, ws.key_projection, kv_mode);
    value_.backward(dv, dxkv, ws.value_projection, InputGrad::kAccumulate);
  }

 private:
  /// Q from xq, K and V from xkv, with rotary positions applied: the one projection of both
  /// forward paths. Queries at every token, or (queries_at_newest_only) one row per sequence at
  /// its newest token.
  void project(const ConstMatrixRef<T>& xq, const ConstMatrixRef<T>& xkv, const SequenceLayout& layout,
               bool queries_at_newest_only, Workspace& ws, const RunMode& mode) const {
    const Index n = layout.num_tokens(), kvd = kv_heads_ * head_dim();
    auto q = ws.query.resize(xq.rows(), dim_);
    auto k = ws.key.resize(n, kvd);
    auto v = ws.value.resize(n, kvd);
    query_.forward(xq, q, ws.query_projection, mode);
    key_.forward(xkv, k, ws.key_projection, mode);
    value_.forward(xkv, v, ws.value_projection, mode);
    if (rope_) {
      if (queries_at_newest_only) {
        for (Index s = 0; s < layout.num_sequences(); ++s) rope_->rotate_row(q, s, layout.length(s) - 1);
      } else {
        rope_->rotate(q, layout);
      }
      rope_->rotate(k, layout);
    }
  }

  static Index kv_dim(Index dim, Index num_heads, Index num_kv_heads) {
    return (num_kv_heads > 0 ? num_kv_heads : num_heads) * (num_heads > 0 ? dim / num_heads : 0);
  }
  static Index checked_kv_dim(Index dim, Index num_heads, Index num_kv_heads) {
    if (num_heads <= 0 || dim % num_heads != 0) {
      throw ConfigError(detail::concat("attention: hidden size ", dim,
                                       " must be a positive multiple of the number of heads (", num_heads, ")"));
    }
    if (num_kv_heads < 0 || (num_kv_heads > 0 && num_heads % num_kv_heads != 0)) {
      throw ConfigError(detail::concat("attention: the number of key/value heads (", num_kv_heads,
                                       ") must divide the number of heads (", num_heads, ")"));
    }
    return kv_dim(dim, num_heads, num_kv_heads);
  }

  Linear<T> query_, key_, value_;
  std::optional<Linear<T>> output_;
  std::optional<RotaryEmbedding<T>> rope_;
  Index dim_, heads_, kv_heads_;
  double dropout_;
  bool recompute_ = false;
};

}  // namespace distillrec::nn
