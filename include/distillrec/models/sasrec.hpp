// distillrec/models/sasrec.hpp
//
// SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), as in the
// authors' code (kang205/SASRec) with the variants of pmixer/SASRec.pytorch:
//
//   x_t = Dropout(E[s_t] * sqrt(d) + P[pos_t])      E [(N+1), d] item table, row 0 padding (zero)
//                                                   P [max_length, d] learned positions; the token
//                                                   in column j of the left-padded window has
//                                                   position j (the newest item is always
//                                                   max_length - 1)
//   x = block_1..B(x)                               TransformerBlock, placement SASRec's original
//                                                   (default), pre-LN or post-LN
//   F = LN(x)                                       final norm
//   score(t, i) = F_t . E[i]                        tied item table, no output bias (the output
//                                                   head, nn/output_head.hpp)
//
// Sequences are packed (no padded rows are computed; see nn/sequence_layout.hpp); the blocks run
// as one nn::BlockStack. The model conforms to the model contract (models/model.hpp): it
// produces output vectors F; the training objective (BCE with sampled negatives, full softmax,
// sampled softmax) and any loss terms are the trainer's, which score F through the head.
//
// Parameter (and checkpoint tensor) names, PyTorch layout [out, in] for weights:
//   item_embedding.weight [N+1, d]        position_embedding.weight [max_length, d]
//   blocks.{b}.attention_norm.{weight,bias} [1, d]
//   blocks.{b}.attention.{query,key,value}.{weight [d, d], bias [1, d]}
//   blocks.{b}.attention.output.{weight,bias}          (only with the output projection)
//   blocks.{b}.ffn_norm.{weight,bias} [1, d]
//   blocks.{b}.ffn.fc1.{weight [f, d], bias [1, f]}    blocks.{b}.ffn.fc2.{weight [d, f], bias [1, d]}
//   final_norm.{weight,bias} [1, d]
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/nn/dropout.hpp"
#include "distillrec/nn/embedding.hpp"
#include "distillrec/nn/layer_norm.hpp"
#include "distillrec/models/packing.hpp"
#include "distillrec/nn/sequence_layout.hpp"
#include "distillrec/nn/block_stack.hpp"
#include "distillrec/nn/output_head.hpp"
#include "distillrec/nn/transformer_block.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace distillrec::models {

enum class BlockStyle { kSASRec, kPreNorm, kPostNorm };

inline std::string to_string(BlockStyle style) {
  switch (style) {
    case BlockStyle::kSASRec: return nn::SASRecNorm::kName;
    case BlockStyle::kPreNorm: return nn::PreNorm::kName;
    case BlockStyle::kPostNorm: return nn::PostNorm::kName;
  }
  return "?";
}

inline BlockStyle parse_block_style(const std::string& name) {
  if (name == nn::SASRecNorm::kName || name == "original") return BlockStyle::kSASRec;
  if (name == nn::PreNorm::kName) return BlockStyle::kPreNorm;
  if (name == nn::PostNorm::kName) return BlockStyle::kPostNorm;
  throw ConfigError("unknown block style \"" + name + "\" (expected sasrec, pre-ln or post-ln)");
}

struct SASRecConfig {
  ItemId num_items = 0;       // items are 1..num_items
  Index hidden_size = 50;
  Index num_blocks = 2;
  Index num_heads = 1;
  Index max_length = 50;
  Index ffn_size = 0;         // 0: hidden_size (SASRec)
  double dropout = 0.5;       // embeddings, attention probabilities, feed-forward
  BlockStyle block_style = BlockStyle::kSASRec;
  std::optional<bool> attention_projection;  // unset: off for sasrec (kang205), on otherwise
  std::string activation = "relu";           // relu | gelu
  double layer_norm_eps = 1e-8;
  nn::HeadKind head = nn::HeadKind::kTied;   // tied (SASRec) or untied linear with bias (DLLM2Rec's SASRec)

  Index effective_ffn_size() const { return ffn_size > 0 ? ffn_size : hidden_size; }
  bool effective_attention_projection() const {
    return attention_projection.value_or(block_style != BlockStyle::kSASRec);
  }

  void validate() const {
    if (num_items <= 0) throw ConfigError(detail::concat("SASRec: num_items must be positive, got ", num_items));
    if (hidden_size <= 0 || num_blocks <= 0 || num_heads <= 0 || max_length <= 0 || ffn_size < 0) {
      throw ConfigError(detail::concat("SASRec: hidden_size (", hidden_size, "), num_blocks (", num_blocks,
                                       "), num_heads (", num_heads, ") and max_length (", max_length,
                                       ") must be positive"));
    }
    if (hidden_size % num_heads != 0) {
      throw ConfigError(detail::concat("SASRec: hidden_size ", hidden_size, " is not divisible by num_heads ", num_heads));
    }
    if (!(dropout >= 0.0 && dropout < 1.0)) throw ConfigError(detail::concat("SASRec: dropout must be in [0, 1), got ", dropout));
    if (activation != "relu" && activation != "gelu") {
      throw ConfigError("SASRec: activation must be relu or gelu, got \"" + activation + "\"");
    }
    if (!(layer_norm_eps > 0.0)) throw ConfigError("SASRec: layer_norm_eps must be positive");
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"model", "sasrec"},
                          {"num_items", num_items},
                          {"hidden_size", hidden_size},
                          {"num_blocks", num_blocks},
                          {"num_heads", num_heads},
                          {"max_length", max_length},
                          {"ffn_size", effective_ffn_size()},
                          {"dropout", dropout},
                          {"block_style", to_string(block_style)},
                          {"attention_projection", effective_attention_projection()},
                          {"activation", activation},
                          {"layer_norm_eps", layer_norm_eps},
                          {"head", nn::to_string(head)}};
  }

  /// Parses to_json()'s output; missing keys keep their defaults, wrong types throw ConfigError.
  static SASRecConfig from_json(const nlohmann::json& j) {
    SASRecConfig c;
    try {
      if (j.contains("model") && j.at("model").get<std::string>() != "sasrec") {
        throw ConfigError("configuration is for model \"" + j.at("model").get<std::string>() + "\", not sasrec");
      }
      c.num_items = j.at("num_items").get<ItemId>();
      c.hidden_size = j.value("hidden_size", c.hidden_size);
      c.num_blocks = j.value("num_blocks", c.num_blocks);
      c.num_heads = j.value("num_heads", c.num_heads);
      c.max_length = j.value("max_length", c.max_length);
      c.ffn_size = j.value("ffn_size", c.ffn_size);
      c.dropout = j.value("dropout", c.dropout);
      if (j.contains("block_style")) c.block_style = parse_block_style(j.at("block_style").get<std::string>());
      if (j.contains("attention_projection")) c.attention_projection = j.at("attention_projection").get<bool>();
      c.activation = j.value("activation", c.activation);
      c.layer_norm_eps = j.value("layer_norm_eps", c.layer_norm_eps);
      if (j.contains("head")) c.head = nn::parse_head_kind(j.at("head").get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("SASRec configuration: ") + e.what());
    }
    c.validate();
    return c;
  }
};

template <typename T = float>
class SASRec {
 public:
  using Config = SASRecConfig;
  using Scalar = T;
  static constexpr const char* kModelName = "sasrec";

 private:
  template <typename Placement, typename Activation>
  using Stack = nn::BlockStack<nn::TransformerBlock<T, Placement, nn::LayerNorm<T>, nn::PointwiseFeedForward<T, Activation>>>;

 public:
  /// The block stack, chosen once at construction (placement x activation).
  using BlockStacks = std::variant<Stack<nn::SASRecNorm, nn::Relu>, Stack<nn::PreNorm, nn::Relu>, Stack<nn::PostNorm, nn::Relu>,
                                   Stack<nn::SASRecNorm, nn::Gelu>, Stack<nn::PreNorm, nn::Gelu>, Stack<nn::PostNorm, nn::Gelu>>;
  using StackWorkspaces =
      std::variant<std::monostate, typename Stack<nn::SASRecNorm, nn::Relu>::Workspace, typename Stack<nn::PreNorm, nn::Relu>::Workspace,
                   typename Stack<nn::PostNorm, nn::Relu>::Workspace, typename Stack<nn::SASRecNorm, nn::Gelu>::Workspace,
                   typename Stack<nn::PreNorm, nn::Gelu>::Workspace, typename Stack<nn::PostNorm, nn::Gelu>::Workspace>;

  /// Per-call memory of a forward (and backward) pass. One per thread; reusable across calls.
  /// The packed tokens (layout, items, positions, targets, negatives) come from PackedTokens.
  struct Workspace : PackedTokens {
    StackWorkspaces stack;
    ScratchMatrix<T> output;        // final norm output F                    [tokens, d]
    typename nn::Dropout<T>::Workspace embedding_dropout;
    typename nn::LayerNorm<T>::Workspace final_norm;
  };

  explicit SASRec(const SASRecConfig& config) : config_(config), params_(std::make_unique<Parameters<T>>()) {
    config_.validate();
    auto& p = *params_;
    const Index d = config_.hidden_size;
    item_embedding_.emplace(p, "item_embedding", static_cast<Index>(config_.num_items) + 1, d, true);
    position_embedding_.emplace(p, "position_embedding", config_.max_length, d, false);
    embedding_dropout_.emplace(config_.dropout);
    nn::TransformerBlockConfig block;
    block.dim = d;
    block.num_heads = config_.num_heads;
    block.ffn_dim = config_.effective_ffn_size();
    block.dropout = config_.dropout;
    block.attention_dropout = config_.dropout;
    block.attention_output_projection = config_.effective_attention_projection();
    block.norm_eps = config_.layer_norm_eps;
    const bool gelu = config_.activation == "gelu";
    switch (config_.block_style) {
      case BlockStyle::kSASRec:
        gelu ? make_stack<nn::SASRecNorm, nn::Gelu>(block) : make_stack<nn::SASRecNorm, nn::Relu>(block);
        break;
      case BlockStyle::kPreNorm:
        gelu ? make_stack<nn::PreNorm, nn::Gelu>(block) : make_stack<nn::PreNorm, nn::Relu>(block);
        break;
      case BlockStyle::kPostNorm:
        gelu ? make_stack<nn::PostNorm, nn::Gelu>(block) : make_stack<nn::PostNorm, nn::Relu>(block);
        break;
    }
    final_norm_.emplace(p, "final_norm", d, config_.layer_norm_eps);
    head_.emplace(config_.head == nn::HeadKind::kTied
                      ? nn::OutputHead<T>::tied(p, item_embedding_->weight_id())
                      : nn::OutputHead<T>::untied(p, "output", config_.num_items, d, /*bias=*/true));
    p.allocate();
  }

  SASRec(const SASRec&) = delete;
  SASRec& operator=(const SASRec&) = delete;
  SASRec(SASRec&&) = default;
  SASRec& operator=(SASRec&&) = default;

  /// Fresh weights: Xavier-normal matrices (item row 0 zero), zero biases, unit norms.
  void initialize(Rng& rng) {
    item_embedding_->initialize(rng);
    position_embedding_->initialize(rng);
    std::visit([&](auto& stack) { stack.initialize(rng); }, *stack_);
    final_norm_->initialize(rng);
    if (config_.head == nn::HeadKind::kUntied) head_->initialize(rng);
  }

  /// Called after weights were loaded from outside (checkpoints): re-establishes the invariants
  /// training relies on (the padding row of the item table is zero).
  void after_load() { params_->value(item_embedding_->weight_id()).row(0).setZero(); }

  const SASRecConfig& config() const { return config_; }
  Parameters<T>& parameters() { return *params_; }
  const Parameters<T>& parameters() const { return *params_; }
  Index hidden_size() const { return config_.hidden_size; }
  ItemId num_items() const { return config_.num_items; }
  Index max_length() const { return config_.max_length; }

  /// The item table [(N+1), d] (row 0 = padding, zero); its rows 1..N are the tied output head.
  ConstMatrixMap<T> item_table() const { return item_embedding_->table(); }
  /// The item lookup of the input (row offsets for embedding distillation: nn/embedding.hpp).
  nn::Embedding<T>& input_item_embedding() { return *item_embedding_; }
  const nn::Embedding<T>& input_item_embedding() const { return *item_embedding_; }
  nn::HeadWeights<T> output_weights() const { return head_->weights(); }
  nn::HeadGradients<T> output_gradients() { return head_->gradients(); }

  // ---- inference -------------------------------------------------------------------------

  /// User vectors for histories (chronological, ids in 1..N, each non-empty): the final hidden
  /// state at the newest item, from the last max_length items. out [histories, d].
  /// Thread-safe for distinct workspaces (weights are only read).
  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& ws) const {
    require_shape(out, static_cast<Index>(histories.size()), hidden_size(), "SASRec::encode output");
    pack_histories(histories, packing_rules(), ws);
    // All blocks but the last over every token; the last block and the final norm only at the
    // newest token of each history (the only rows a user vector needs).
    std::visit(
        [&](const auto& stack) {
          auto& sws = stack_workspace(stack, ws);
          embed(ws, stack.input(sws, ws.layout.num_tokens()), nn::RunMode::inference());
          final_norm_->forward(stack.forward_last(ws.layout, sws), out, ws.final_norm);
        },
        *stack_);
  }

  // ---- training --------------------------------------------------------------------------

  /// Forward pass over a training batch (dropout active). Returns the final hidden states, one
  /// row per non-padding position, packed; ws.targets / ws.negatives hold the matching positive
  /// and negative items.
  ConstMatrixMap<T> forward_train(const data::TrainingBatch& batch, Rng& rng, Workspace& ws) const {
    pack_batch(batch, packing_rules(), ws);
    const nn::RunMode mode = training_mode(batch, ws, rng);
    const Index n = ws.layout.num_tokens(), d = hidden_size();
    auto out = ws.output.resize(n, d);
    std::visit(
        [&](const auto& stack) {
          auto& sws = stack_workspace(stack, ws);
          embed(ws, stack.input(sws, n), mode);
          final_norm_->forward(stack.forward(ws.layout, sws, mode), out, ws.final_norm);
        },
        *stack_);
    return ConstMatrixMap<T>(out.data(), n, d);
  }

  /// Adds the gradients of a loss with dL/dF = grad_output (as returned by forward_train) to
  /// parameters().grads(). Needs the workspace of the matching forward_train call.
  void backward(const ConstMatrixRef<T>& grad_output, Workspace& ws) {
    const Index n = ws.layout.num_tokens(), d = hidden_size();
    require_shape(grad_output, n, d, "SASRec::backward output gradient");
    final_norm_->accumulate_grad(grad_output, ws.final_norm);
    std::visit(
        [&](auto& stack) {
          auto& sws = stack_workspace(stack, ws);
          final_norm_->backward(grad_output, stack.output_grad(sws, n), ws.final_norm);
          auto grad_input = stack.backward(ws.layout, sws);  // dL/d(dropout output) of the embeddings
          embedding_dropout_->backward(grad_input, grad_input, ws.embedding_dropout);
          item_embedding_->accumulate_grad(ws.items, grad_input, std::sqrt(static_cast<T>(d)));
          position_embedding_->accumulate_grad(ws.positions, grad_input);
        },
        *stack_);
  }

 private:
  template <typename Placement, typename Activation>
  void make_stack(const nn::TransformerBlockConfig& block) {
    stack_.emplace(std::in_place_type<Stack<Placement, Activation>>, *params_, "blocks", config_.num_blocks, block);
  }

  /// The workspace of this model's stack type inside ws (created on first use).
  template <typename StackT>
  static typename StackT::Workspace& stack_workspace(const StackT& /*stack*/, Workspace& ws) {
    using StackWs = typename StackT::Workspace;
    if (!std::holds_alternative<StackWs>(ws.stack)) ws.stack.template emplace<StackWs>();
    return std::get<StackWs>(ws.stack);
  }

  PackingRules packing_rules() const {
    return PackingRules{"SASRec", config_.num_items, config_.max_length, true};
  }

  /// x = Dropout(E[items] * sqrt(d) + P[positions]) into the stack input.
  void embed(Workspace& ws, MatrixMap<T> x, const nn::RunMode& mode) const {
    const Index n = ws.layout.num_tokens(), d = hidden_size();
    item_embedding_->forward(ws.items, x, std::sqrt(static_cast<T>(d)));
    const auto positions = position_embedding_->table();
    for (Index t = 0; t < n; ++t) x.row(t) += positions.row(ws.positions[static_cast<std::size_t>(t)]);
    embedding_dropout_->forward(x, x, ws.embedding_dropout, mode);
  }

  SASRecConfig config_;
  std::unique_ptr<Parameters<T>> params_;
  std::optional<nn::Embedding<T>> item_embedding_, position_embedding_;
  std::optional<nn::Dropout<T>> embedding_dropout_;
  std::optional<BlockStacks> stack_;
  std::optional<nn::LayerNorm<T>> final_norm_;
  std::optional<nn::OutputHead<T>> head_;
};

}  // namespace distillrec::models
