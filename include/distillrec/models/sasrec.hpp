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
//   score(t, i) = F_t . E[i]                        tied item table, no output bias
//
// Sequences are packed (no padded rows are computed; see nn/sequence_layout.hpp). The model
// produces hidden states; the training objective (BCE with sampled negatives, full softmax,
// sampled softmax) is chosen by the trainer, which scores F against item_table().
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
                          {"layer_norm_eps", layer_norm_eps}};
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
  static constexpr const char* kModelName = "sasrec";

 private:
  template <typename Placement, typename Activation>
  using Block = nn::TransformerBlock<T, Placement, nn::LayerNorm<T>, nn::PointwiseFeedForward<T, Activation>>;
  template <typename Placement, typename Activation>
  using Stack = std::vector<Block<Placement, Activation>>;
  template <typename Placement, typename Activation>
  using StackWorkspace = std::vector<typename Block<Placement, Activation>::Workspace>;

 public:
  using Scalar = T;
  using BlockStack = std::variant<Stack<nn::SASRecNorm, nn::Relu>, Stack<nn::PreNorm, nn::Relu>,
                                  Stack<nn::PostNorm, nn::Relu>, Stack<nn::SASRecNorm, nn::Gelu>,
                                  Stack<nn::PreNorm, nn::Gelu>, Stack<nn::PostNorm, nn::Gelu>>;
  using BlockWorkspaces =
      std::variant<std::monostate, StackWorkspace<nn::SASRecNorm, nn::Relu>, StackWorkspace<nn::PreNorm, nn::Relu>,
                   StackWorkspace<nn::PostNorm, nn::Relu>, StackWorkspace<nn::SASRecNorm, nn::Gelu>,
                   StackWorkspace<nn::PreNorm, nn::Gelu>, StackWorkspace<nn::PostNorm, nn::Gelu>>;

  /// Per-call memory of a forward (and backward) pass. One per thread; reusable across calls.
  /// The packed tokens (layout, items, positions, targets, negatives) come from PackedTokens.
  struct Workspace : PackedTokens {
    std::vector<ScratchMatrix<T>> hidden;  // hidden[b] = input of block b; hidden[B] = last block's output
    ScratchMatrix<T> output;        // final norm output F                    [tokens, d]
    ScratchMatrix<T> grad_a, grad_b;
    typename nn::Dropout<T>::Workspace embedding_dropout;
    typename nn::LayerNorm<T>::Workspace final_norm;
    BlockWorkspaces blocks;
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
        gelu ? make_blocks<nn::SASRecNorm, nn::Gelu>(block) : make_blocks<nn::SASRecNorm, nn::Relu>(block);
        break;
      case BlockStyle::kPreNorm:
        gelu ? make_blocks<nn::PreNorm, nn::Gelu>(block) : make_blocks<nn::PreNorm, nn::Relu>(block);
        break;
      case BlockStyle::kPostNorm:
        gelu ? make_blocks<nn::PostNorm, nn::Gelu>(block) : make_blocks<nn::PostNorm, nn::Relu>(block);
        break;
    }
    final_norm_.emplace(p, "final_norm", d, config_.layer_norm_eps);
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
    std::visit([&](auto& blocks) { for (auto& b : blocks) b.initialize(rng); }, blocks_);
    final_norm_->initialize(rng);
  }

  /// Called after weights were loaded from outside (checkpoints): re-establishes the invariants
  /// training relies on (the padding row of the item table is zero).
  void after_load() { params_->value(item_embedding_->weight_id()).row(0).setZero(); }

  const SASRecConfig& config() const { return config_; }
  Parameters<T>& parameters() { return *params_; }
  const Parameters<T>& parameters() const { return *params_; }
  Index hidden_size() const { return config_.hidden_size; }
  ItemId num_items() const { return config_.num_items; }

  /// The item table [(N+1), d] that scores hidden states (row 0 = padding, zero).
  ConstMatrixMap<T> item_table() const { return item_embedding_->table(); }
  /// Its gradient, for losses that score against it.
  MatrixMap<T> item_table_grad() { return item_embedding_->table_grad(); }

  // ---- inference -------------------------------------------------------------------------

  /// User vectors for histories (chronological, ids in 1..N, each non-empty): the final hidden
  /// state at the newest item, from the last max_length items. out [histories, d].
  /// Thread-safe for distinct workspaces (weights are only read).
  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& ws) const {
    require_shape(out, static_cast<Index>(histories.size()), hidden_size(), "SASRec::encode output");
    pack_histories(histories, packing_rules(), ws);
    // All blocks but the last over every token; the last block and the final norm only at the
    // newest token of each history (the only rows a user vector needs).
    forward_packed(ws, nn::RunMode::inference(), /*last_block_only_last_tokens=*/true);
    final_norm_->forward(ws.hidden[static_cast<std::size_t>(config_.num_blocks)].map(), out, ws.final_norm);
  }

  // ---- training --------------------------------------------------------------------------

  /// Forward pass over a training batch (dropout active). Returns the final hidden states, one
  /// row per non-padding position, packed; ws.targets / ws.negatives hold the matching positive
  /// and negative items.
  ConstMatrixMap<T> forward_train(const data::TrainingBatch& batch, Rng& rng, Workspace& ws) const {
    pack_batch(batch, packing_rules(), ws);
    return forward_packed(ws, nn::RunMode::train(rng));
  }

  /// Adds the gradients of a loss with dL/dF = grad_output (as returned by forward_train) to
  /// parameters().grads(). Needs the workspace of the matching forward_train call.
  void backward(const ConstMatrixRef<T>& grad_output, Workspace& ws) {
    const Index n = ws.layout.num_tokens(), d = hidden_size();
    require_shape(grad_output, n, d, "SASRec::backward output gradient");
    auto grad_a = ws.grad_a.resize(n, d);
    auto grad_b = ws.grad_b.resize(n, d);
    MatrixMap<T>* ga = &grad_a;  // gradient w.r.t. the current block's output
    MatrixMap<T>* gb = &grad_b;  // ... and w.r.t. its input
    const Index num_blocks = config_.num_blocks;
    final_norm_->accumulate_grad(grad_output, ws.final_norm);
    final_norm_->backward(grad_output, *ga, ws.final_norm);
    std::visit(
        [&](auto& blocks) {
          using BlockT = typename std::decay_t<decltype(blocks)>::value_type;
          auto& wss = std::get<std::vector<typename BlockT::Workspace>>(ws.blocks);
          for (Index b = num_blocks - 1; b >= 0; --b) {
            blocks[static_cast<std::size_t>(b)].backward(ws.hidden[static_cast<std::size_t>(b)].map(), ws.layout, *ga, *gb,
                                                          wss[static_cast<std::size_t>(b)]);
            std::swap(ga, gb);
          }
        },
        blocks_);
    // *ga = dL/d(dropout output) of the embeddings.
    embedding_dropout_->backward(*ga, *ga, ws.embedding_dropout);
    item_embedding_->accumulate_grad(ws.items, *ga, std::sqrt(static_cast<T>(d)));
    position_embedding_->accumulate_grad(ws.positions, *ga);
  }

 private:
  template <typename Placement, typename Activation>
  void make_blocks(const nn::TransformerBlockConfig& block) {
    Stack<Placement, Activation> blocks;
    blocks.reserve(static_cast<std::size_t>(config_.num_blocks));
    for (Index b = 0; b < config_.num_blocks; ++b) {
      blocks.emplace_back(*params_, "blocks." + std::to_string(b), block);
    }
    blocks_ = std::move(blocks);
  }

  PackingRules packing_rules() const {
    return PackingRules{"SASRec", config_.num_items, config_.max_length, true};
  }

  /// Embeddings, blocks and final norm over ws.items / ws.positions / ws.layout.
  ConstMatrixMap<T> forward_packed(Workspace& ws, const nn::RunMode& mode, bool last_block_only_last_tokens = false) const {
    const Index n = ws.layout.num_tokens(), d = hidden_size();
    const Index num_blocks = config_.num_blocks;
    ws.hidden.resize(static_cast<std::size_t>(num_blocks) + 1);
    auto x = ws.hidden[0].resize(n, d);
    item_embedding_->forward(ws.items, x, std::sqrt(static_cast<T>(d)));
    const auto positions = position_embedding_->table();
    for (Index t = 0; t < n; ++t) x.row(t) += positions.row(ws.positions[static_cast<std::size_t>(t)]);
    embedding_dropout_->forward(x, x, ws.embedding_dropout, mode);
    std::visit(
        [&](const auto& blocks) {
          using BlockT = typename std::decay_t<decltype(blocks)>::value_type;
          using WsVector = std::vector<typename BlockT::Workspace>;
          if (!std::holds_alternative<WsVector>(ws.blocks)) ws.blocks.template emplace<WsVector>();
          auto& wss = std::get<WsVector>(ws.blocks);
          wss.resize(static_cast<std::size_t>(num_blocks));
          for (Index b = 0; b < num_blocks; ++b) {
            const auto& block = blocks[static_cast<std::size_t>(b)];
            const auto input = ws.hidden[static_cast<std::size_t>(b)].map();
            auto& block_ws = wss[static_cast<std::size_t>(b)];
            if (last_block_only_last_tokens && b == num_blocks - 1) {
              auto out = ws.hidden[static_cast<std::size_t>(b) + 1].resize(ws.layout.num_sequences(), d);
              block.forward_last(input, ws.layout, out, block_ws);
            } else {
              auto out = ws.hidden[static_cast<std::size_t>(b) + 1].resize(n, d);
              block.forward(input, ws.layout, out, block_ws, mode);
            }
          }
        },
        blocks_);
    if (last_block_only_last_tokens) return ConstMatrixMap<T>(nullptr, 0, d);
    auto out = ws.output.resize(n, d);
    final_norm_->forward(ws.hidden[static_cast<std::size_t>(num_blocks)].map(), out, ws.final_norm);
    return ConstMatrixMap<T>(out.data(), n, d);
  }

  SASRecConfig config_;
  std::unique_ptr<Parameters<T>> params_;
  std::optional<nn::Embedding<T>> item_embedding_, position_embedding_;
  std::optional<nn::Dropout<T>> embedding_dropout_;
  BlockStack blocks_;
  std::optional<nn::LayerNorm<T>> final_norm_;
};

}  // namespace distillrec::models
