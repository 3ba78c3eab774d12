// distillrec/models/llm_rec.hpp
//
// LLMRec: a LLaMA-style sequence recommender over item ids, the E4SRec design that SLMRec
// distils (methods.md §1.5), sized for the CPU:
//
//   e_t = E[s_t]                                   item table E [(N+1), d_item], row 0 padding;
//                                                  trainable, or loaded frozen from a trained
//                                                  SASRec as SLMRec does
//   H_0 = Dropout(e W_in^T + b_in)                 input adapter  Linear(d_item -> hidden)
//   H_k = block_k(H_{k-1}),  k = 1..L              TransformerBlock<RMSNorm, SwiGLU, attention
//                                                  with RoPE (and grouped-query heads), PreNorm>
//   F   = RMSNorm(H_L)                             final norm
//   u_t = F_t W_out^T                              output adapter Linear(hidden -> d_item), no bias
//   score(t, i) = u_t . E[i]                       dot product against the item table
//
// Trained with full-softmax cross-entropy over the catalogue (SLMRec's L_ce) at every position
// of the window (the trainer's next-item objective); the reference trains one example per user
// at its last position only, which is what an LLM can afford, not a property of the method.
//
// Hidden states (methods.md §1.5, HF output_hidden_states): hidden_state(ws, k) for
// k = 0..L, index 0 = the block input H_0, 1 <= k < L the residual stream after block k
// (not normalised), L = after the final RMSNorm (F). Distillation adds gradients at any index
// through hidden_state_grad() before backward().
//
// SLMRec's supervision heads (W_a) belong to the distillation (distill/slmrec.hpp), not to the
// model: a distilled student's checkpoint is a plain LLMRec.
//
// Parameter (checkpoint tensor) names, PyTorch layout [out, in]:
//   item_embedding.weight [N+1, d_item]
//   input_adapter.{weight [hidden, d_item], bias [1, hidden]}
//   blocks.{b}.attention_norm.weight [1, hidden]      blocks.{b}.ffn_norm.weight [1, hidden]
//   blocks.{b}.attention.query.weight [hidden, hidden]
//   blocks.{b}.attention.{key,value}.weight [kv_heads * head_dim, hidden]
//   blocks.{b}.attention.output.weight [hidden, hidden]
//   blocks.{b}.ffn.{gate,up}.weight [ffn, hidden]     blocks.{b}.ffn.down.weight [hidden, ffn]
//   final_norm.weight [1, hidden]                     output_adapter.weight [d_item, hidden]
// (HF LLaMA: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, input_layernorm,
// post_attention_layernorm, norm.)
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/nn/dropout.hpp"
#include "distillrec/nn/embedding.hpp"
#include "distillrec/nn/feed_forward.hpp"
#include "distillrec/nn/linear.hpp"
#include "distillrec/nn/lora.hpp"
#include "distillrec/nn/rms_norm.hpp"
#include "distillrec/models/packing.hpp"
#include "distillrec/nn/sequence_layout.hpp"
#include "distillrec/nn/block_stack.hpp"
#include "distillrec/nn/output_head.hpp"
#include "distillrec/nn/transformer_block.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::models {

struct LLMRecConfig {
  ItemId num_items = 0;        // items are 1..num_items
  Index item_dim = 64;         // d_item: width of the item table and of the user vectors
  Index hidden_size = 64;
  Index num_layers = 4;
  Index num_heads = 4;
  Index num_kv_heads = 0;      // 0: num_heads (plain multi-head attention)
  Index ffn_size = 0;          // 0: LLaMA's 8/3 * hidden_size, rounded up to a multiple of 8
  Index max_length = 50;
  double dropout = 0.1;        // input adapter output, attention probabilities, feed-forward output
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool freeze_item_table = false;
  /// LoRA adapters on every block's projections (nn/lora.hpp): with rank > 0 the blocks and the
  /// final norm are frozen and their adapters train, beside the item table (unless frozen) and
  /// the input and output adapters, which stay trainable.
  nn::LoraOptions lora;

  Index effective_ffn_size() const {
    if (ffn_size > 0) return ffn_size;
    const Index f = (8 * hidden_size + 2) / 3;
    return (f + 7) / 8 * 8;
  }
  Index effective_kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }

  void validate() const {
    if (num_items <= 0) throw ConfigError(detail::concat("LLMRec: num_items must be positive, got ", num_items));
    if (item_dim <= 0 || hidden_size <= 0 || num_layers <= 0 || num_heads <= 0 || max_length <= 0 || ffn_size < 0 ||
        num_kv_heads < 0) {
      throw ConfigError(detail::concat("LLMRec: item_dim (", item_dim, "), hidden_size (", hidden_size, "), num_layers (",
                                       num_layers, "), num_heads (", num_heads, ") and max_length (", max_length,
                                       ") must be positive"));
    }
    if (hidden_size % num_heads != 0 || (hidden_size / num_heads) % 2 != 0) {
      throw ConfigError(detail::concat("LLMRec: hidden_size ", hidden_size, " must split into ", num_heads,
                                       " heads of even size (rotary embedding)"));
    }
    if (num_heads % effective_kv_heads() != 0) {
      throw ConfigError(detail::concat("LLMRec: num_kv_heads ", num_kv_heads, " must divide num_heads ", num_heads));
    }
    if (!(dropout >= 0.0 && dropout < 1.0)) throw ConfigError(detail::concat("LLMRec: dropout must be in [0, 1), got ", dropout));
    if (!(rms_norm_eps > 0.0)) throw ConfigError("LLMRec: rms_norm_eps must be positive");
    if (!(rope_theta > 1.0)) throw ConfigError("LLMRec: rope_theta must be > 1");
    lora.validate();
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"model", "llm_rec"},
                          {"num_items", num_items},
                          {"item_dim", item_dim},
                          {"hidden_size", hidden_size},
                          {"num_layers", num_layers},
                          {"num_heads", num_heads},
                          {"num_kv_heads", effective_kv_heads()},
                          {"ffn_size", effective_ffn_size()},
                          {"max_length", max_length},
                          {"dropout", dropout},
                          {"rms_norm_eps", rms_norm_eps},
                          {"rope_theta", rope_theta},
                          {"freeze_item_table", freeze_item_table},
                          {"lora", nn::to_json(lora)}};
  }

  /// Parses to_json()'s output; missing keys keep their defaults, wrong types throw ConfigError.
  static LLMRecConfig from_json(const nlohmann::json& j) {
    LLMRecConfig c;
    try {
      if (j.contains("model") && j.at("model").get<std::string>() != "llm_rec") {
        throw ConfigError("configuration is for model \"" + j.at("model").get<std::string>() + "\", not llm_rec");
      }
      c.num_items = j.at("num_items").get<ItemId>();
      c.item_dim = j.value("item_dim", c.item_dim);
      c.hidden_size = j.value("hidden_size", c.hidden_size);
      c.num_layers = j.value("num_layers", c.num_layers);
      c.num_heads = j.value("num_heads", c.num_heads);
      c.num_kv_heads = j.value("num_kv_heads", c.num_kv_heads);
      c.ffn_size = j.value("ffn_size", c.ffn_size);
      c.max_length = j.value("max_length", c.max_length);
      c.dropout = j.value("dropout", c.dropout);
      c.rms_norm_eps = j.value("rms_norm_eps", c.rms_norm_eps);
      c.rope_theta = j.value("rope_theta", c.rope_theta);
      c.freeze_item_table = j.value("freeze_item_table", c.freeze_item_table);
      if (j.contains("lora")) c.lora = nn::lora_options_from_json(j.at("lora"), "LLMRec configuration lora");
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("LLMRec configuration: ") + e.what());
    }
    c.validate();
    return c;
  }
};

template <typename T = float>
class LLMRec {
 public:
  using Config = LLMRecConfig;
  using Scalar = T;
  static constexpr const char* kModelName = "llm_rec";
  using Block = nn::TransformerBlock<T, nn::PreNorm, nn::RMSNorm<T>, nn::SwiGLU<T>>;
  using Stack = nn::BlockStack<Block>;

  /// Per-call memory of a forward (and backward) pass. One per thread; reusable across calls.
  /// The packed tokens (layout, items, sequence rows, targets, negatives) come from PackedTokens.
  struct Workspace : PackedTokens {
    typename Stack::Workspace stack;        // hidden(0) = H_0, hidden(k) = output of block k
    ScratchMatrix<T> item_inputs;           // E[items]                  [tokens, d_item]
    ScratchMatrix<T> normed;                // F = RMSNorm(H_L)          [tokens, hidden]
    ScratchMatrix<T> output;                // u                         [tokens, d_item]
    ScratchMatrix<T> grad_normed, grad_items;
    std::vector<ScratchMatrix<T>> extra_grads;  // gradients added at hidden states (distillation)
    std::vector<char> has_extra_grad;
    typename nn::Dropout<T>::Workspace input_dropout;
    typename nn::RMSNorm<T>::Workspace final_norm;
  };

  explicit LLMRec(const LLMRecConfig& config) : config_(config), params_(std::make_unique<Parameters<T>>()) {
    config_.validate();
    auto& p = *params_;
    const Index h = config_.hidden_size;
    item_embedding_.emplace(p, "item_embedding", static_cast<Index>(config_.num_items) + 1, config_.item_dim, true);
    input_adapter_.emplace(p, "input_adapter", config_.item_dim, h, true);
    input_dropout_.emplace(config_.dropout);
    nn::TransformerBlockConfig block;
    block.dim = h;
    block.num_heads = config_.num_heads;
    block.ffn_dim = config_.effective_ffn_size();
    block.dropout = config_.dropout;
    block.attention_dropout = config_.dropout;
    block.attention_output_projection = true;
    block.norm_eps = config_.rms_norm_eps;
    block.attention.bias = false;
    block.attention.rope = true;
    block.attention.rope_theta = config_.rope_theta;
    block.attention.num_kv_heads = config_.effective_kv_heads();
    block.attention.max_positions = config_.max_length;
    block.lora = config_.lora;
    stack_.emplace(p, "blocks", config_.num_layers, block);
    final_norm_.emplace(p, "final_norm", h, config_.rms_norm_eps);
    output_adapter_.emplace(p, "output_adapter", h, config_.item_dim, false);
    head_.emplace(nn::OutputHead<T>::tied(p, item_embedding_->weight_id()));
    p.allocate();
    p.set_trainable(item_embedding_->weight_id(), !config_.freeze_item_table);
    if (config_.lora.enabled()) {  // the blocks' base frozen, their adapters train
      nn::freeze_all_but_lora(p, "blocks.");
      nn::freeze_all_but_lora(p, "final_norm.");
    }
  }

  LLMRec(const LLMRec&) = delete;
  LLMRec& operator=(const LLMRec&) = delete;
  LLMRec(LLMRec&&) = default;
  LLMRec& operator=(LLMRec&&) = default;

  /// Fresh weights: Xavier-normal matrices (item row 0 zero), zero biases, unit norms.
  void initialize(Rng& rng) {
    item_embedding_->initialize(rng);
    input_adapter_->initialize(rng);
    stack_->initialize(rng);
    final_norm_->initialize(rng);
    output_adapter_->initialize(rng);
  }

  /// Re-establishes invariants after weights were loaded from outside (padding row zero).
  void after_load() { params_->value(item_embedding_->weight_id()).row(0).setZero(); }

  /// Copies an item table [(N+1), d_item] in (e.g. a trained SASRec's item_embedding.weight);
  /// row 0 is zeroed. Frozen or not as the configuration says.
  void set_item_table(const ConstMatrixRef<T>& table) {
    auto w = params_->value(item_embedding_->weight_id());
    if (table.rows() != w.rows() || table.cols() != w.cols()) {
      throw ShapeError(detail::concat("LLMRec: item table of shape [", table.rows(), ", ", table.cols(), "] given, the model needs [",
                                      w.rows(), ", ", w.cols(), "] (num_items + 1, item_dim)"));
    }
    if (!table.allFinite()) throw ShapeError("LLMRec: the item table given contains NaN or infinite values");
    w = table;
    w.row(0).setZero();
  }

  const LLMRecConfig& config() const { return config_; }
  Parameters<T>& parameters() { return *params_; }
  const Parameters<T>& parameters() const { return *params_; }
  Index hidden_size() const { return config_.hidden_size; }
  Index item_dim() const { return config_.item_dim; }
  Index num_layers() const { return config_.num_layers; }
  ItemId num_items() const { return config_.num_items; }
  Index max_length() const { return config_.max_length; }

  /// Scalars in the transformer blocks only (what SLMRec's layer counts scale).
  Index num_block_parameters() const {
    Index n = 0;
    for (const auto& info : params_->infos()) n += info.name.rfind("blocks.", 0) == 0 ? info.size() : 0;
    return n;
  }

  /// The item table [(N+1), d_item] (row 0 = padding, zero); rows 1..N are the tied output head.
  ConstMatrixMap<T> item_table() const { return item_embedding_->table(); }
  /// The item lookup of the input (row offsets for embedding distillation: nn/embedding.hpp).
  nn::Embedding<T>& input_item_embedding() { return *item_embedding_; }
  const nn::Embedding<T>& input_item_embedding() const { return *item_embedding_; }
  nn::HeadWeights<T> output_weights() const { return head_->weights(); }
  /// The head's gradients; an empty weight when the item table is frozen (losses then skip it).
  nn::HeadGradients<T> output_gradients() { return head_->gradients(); }

  // ---- inference -------------------------------------------------------------------------

  /// User vectors u for histories (chronological, ids in 1..N, each non-empty): the output at
  /// the newest item, from the last max_length items. out [histories, d_item]. Thread-safe for
  /// distinct workspaces.
  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& ws) const {
    require_shape(out, static_cast<Index>(histories.size()), config_.item_dim, "LLMRec::encode output");
    pack_histories(histories, packing_rules(), ws);
    embed(ws, nn::RunMode::inference());
    const auto last = stack_->forward_last(ws.layout, ws.stack);
    auto normed = ws.normed.resize(ws.layout.num_sequences(), hidden_size());
    final_norm_->forward(last, normed, ws.final_norm);
    output_adapter_->forward(normed, out);
  }

  // ---- incremental sessions (serve/session.hpp) ---------------------------------------------

  /// Scalars of a session's cache: every block's rotated keys and values of up to max_length
  /// tokens (2 * layers * max_length * kv_heads * head_dim).
  Index session_cache_size() const { return stack_->cache_size(config_.max_length); }

  /// Appends `item` as the token at `position` (the number of items before it, < max_length):
  /// `cache` holds the keys and values of those items and receives the new token's; out [1,
  /// d_item] = the output vector, equal to encode() of the items so far plus `item`. Rotary
  /// positions count from the oldest item, so nothing cached moves while the window fills.
  void session_append(T* cache, Index position, ItemId item, MatrixRef<T> out, Workspace& ws) const {
    if (item < 1 || item > config_.num_items) {
      throw ShapeError(detail::concat("LLMRec: session item ", item, " is outside 1..", config_.num_items));
    }
    if (position < 0 || position >= config_.max_length) {
      throw ShapeError(detail::concat("LLMRec: session position ", position, " is outside 0..", config_.max_length - 1));
    }
    require_shape(out, 1, config_.item_dim, "LLMRec session output");
    auto items = ws.item_inputs.resize(1, config_.item_dim);
    items = item_embedding_->table().row(item);  // inference: no dropout
    auto x = ws.output.resize(1, hidden_size());
    input_adapter_->forward(items, x);
    const auto top = stack_->forward_cached(x, position, cache, config_.max_length, ws.stack);
    auto normed = ws.normed.resize(1, hidden_size());
    final_norm_->forward(top, normed, ws.final_norm);
    output_adapter_->forward(normed, out);
  }

  /// Inference over every token of the histories, keeping all hidden states: afterwards
  /// hidden_state(ws, k) holds them, packed by ws.layout (a teacher's signals).
  void forward_hidden_states(const std::vector<Sequence>& histories, Workspace& ws) const {
    pack_histories(histories, packing_rules(), ws);
    forward_packed(ws, nn::RunMode::inference());
  }

  /// Hidden state k of the last forward pass (0 = block input, 1..L-1 after block k, L = after
  /// the final norm), [tokens, hidden].
  ConstMatrixMap<T> hidden_state(const Workspace& ws, Index k) const {
    check_hidden_index(k);
    return k < config_.num_layers ? stack_->hidden(ws.stack, k) : ws.normed.map();
  }

  // ---- training --------------------------------------------------------------------------

  /// Forward pass over a training batch (dropout active). Returns the user vectors u, one row
  /// per non-padding position, packed; ws.targets hold the next items, ws.sequence_rows the batch
  /// row of every packed sequence.
  ConstMatrixMap<T> forward_train(const data::TrainingBatch& batch, Rng& rng, Workspace& ws) const {
    pack_batch(batch, packing_rules(), ws);
    return forward_packed(ws, training_mode(batch, ws, rng));
  }

  /// A zeroed [tokens, hidden] matrix whose contents backward() adds to the gradient w.r.t.
  /// hidden_state(ws, k). Call between forward_train and backward; cleared by backward.
  MatrixMap<T> hidden_state_grad(Workspace& ws, Index k) const {
    check_hidden_index(k);
    const auto slots = static_cast<std::size_t>(config_.num_layers) + 1;
    if (ws.extra_grads.size() != slots) {
      ws.extra_grads.resize(slots);
      ws.has_extra_grad.assign(slots, 0);
    }
    auto& flag = ws.has_extra_grad[static_cast<std::size_t>(k)];
    auto& m = ws.extra_grads[static_cast<std::size_t>(k)];
    if (!flag) {
      m.zeros(ws.layout.num_tokens(), hidden_size());
      flag = 1;
    }
    return m.map();
  }

  /// Adds the gradients of a loss with dL/du = grad_output (plus any hidden_state_grad) to
  /// parameters().grads(). Needs the workspace of the matching forward_train call.
  void backward(const ConstMatrixRef<T>& grad_output, Workspace& ws) {
    const Index n = ws.layout.num_tokens(), h = hidden_size(), L = config_.num_layers;
    require_shape(grad_output, n, config_.item_dim, "LLMRec::backward output gradient");
    auto extra = [&](Index k) -> const ScratchMatrix<T>* {
      const auto i = static_cast<std::size_t>(k);
      return i < ws.has_extra_grad.size() && ws.has_extra_grad[i] ? &ws.extra_grads[i] : nullptr;
    };
    auto grad_normed = ws.grad_normed.resize(n, h);
    output_adapter_->accumulate_grad(ws.normed.map(), grad_output);
    output_adapter_->backward(grad_output, grad_normed);
    if (const auto* e = extra(L)) grad_normed += e->map();
    final_norm_->accumulate_grad(grad_normed, ws.final_norm);
    final_norm_->backward(grad_normed, stack_->output_grad(ws.stack, n), ws.final_norm);
    auto grad_input = stack_->backward(ws.layout, ws.stack, extra);
    input_dropout_->backward(grad_input, grad_input, ws.input_dropout);
    input_adapter_->accumulate_grad(ws.item_inputs.map(), grad_input);
    if (!config_.freeze_item_table) {
      auto grad_items = ws.grad_items.resize(n, config_.item_dim);
      input_adapter_->backward(grad_input, grad_items);
      item_embedding_->accumulate_grad(ws.items, grad_items);
    }
    std::fill(ws.has_extra_grad.begin(), ws.has_extra_grad.end(), 0);
  }

 private:
  void check_hidden_index(Index k) const {
    if (k < 0 || k > config_.num_layers) {
      throw ShapeError(detail::concat("LLMRec: hidden-state index ", k, " is outside 0..", config_.num_layers));
    }
  }

  PackingRules packing_rules() const {
    return PackingRules{"LLMRec", config_.num_items, config_.max_length, false};
  }

  /// Item lookup, input adapter and dropout into the stack input H_0.
  void embed(Workspace& ws, const nn::RunMode& mode) const {
    const Index n = ws.layout.num_tokens();
    std::fill(ws.has_extra_grad.begin(), ws.has_extra_grad.end(), 0);  // a new pass invalidates them
    auto items = ws.item_inputs.resize(n, config_.item_dim);
    item_embedding_->forward(ws.items, items);
    auto x = stack_->input(ws.stack, n);
    input_adapter_->forward(items, x);
    input_dropout_->forward(x, x, ws.input_dropout, mode);
  }

  ConstMatrixMap<T> forward_packed(Workspace& ws, const nn::RunMode& mode) const {
    embed(ws, mode);
    const auto top = stack_->forward(ws.layout, ws.stack, mode);
    const Index n = ws.layout.num_tokens();
    auto normed = ws.normed.resize(n, hidden_size());
    final_norm_->forward(top, normed, ws.final_norm);
    auto out = ws.output.resize(n, config_.item_dim);
    output_adapter_->forward(normed, out);
    return ConstMatrixMap<T>(out.data(), n, config_.item_dim);
  }

  LLMRecConfig config_;
  std::unique_ptr<Parameters<T>> params_;
  std::optional<nn::Embedding<T>> item_embedding_;
  std::optional<nn::Linear<T>> input_adapter_;
  std::optional<nn::Dropout<T>> input_dropout_;
  std::optional<Stack> stack_;
  std::optional<nn::RMSNorm<T>> final_norm_;
  std::optional<nn::Linear<T>> output_adapter_;
  std::optional<nn::OutputHead<T>> head_;
};

/// The same model with every LoRA adapter folded into its base weight (nn/lora.hpp): no
/// adapters, every weight trainable (the item table as freeze_item_table says).
template <typename T>
LLMRec<T> merge_lora(const LLMRec<T>& model) {
  LLMRecConfig config = model.config();
  const double scale = config.lora.scale();
  config.lora = nn::LoraOptions{};
  LLMRec<T> merged(config);
  nn::copy_merging_lora(model.parameters(), merged.parameters(), [&](const std::string&) { return scale; });
  return merged;
}

}  // namespace distillrec::models
