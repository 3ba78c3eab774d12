// distillrec/models/llama.hpp
//
// A LLaMA-family text model (token embedding, the library's LLaMA-style blocks, final RMSNorm)
// and its loading from a Hugging Face checkpoint directory: the item model of HLLM reads item
// text through one (methods.md §3.3).
//
//   auto llama = models::load_hf_llama<float>("TinyLlama-1.1B/");   // config.json + safetensors
//   models::LlamaModel<float>::Workspace ws;
//   auto states = llama.forward({tokenizer.encode(text, true)}, ws); // [tokens, hidden], final norm
//
// With LlamaConfig::item_token (load_hf_llama(dir, true)) it is HLLM's item model:
// encode_items(texts, E, ws) appends the learned [ITEM] token to every text and returns its
// final-norm state as the item's embedding; backward_items(dE, ws) adds the gradients of every
// weight (the token table, the blocks, the norms, the [ITEM] token) for end-to-end training.
// forward_embeddings(E, layout, ws) runs it as HLLM's user model, over item embeddings instead
// of tokens (backward_embeddings returns the gradient of those embeddings).
//
// The blocks are the ones LLMRec runs (nn::TransformerBlock<PreNorm, RMSNorm, SwiGLU> with
// rotary positions in HF's rotate-half layout and grouped-query heads), so HF's weights map one
// to one (HF [out, in] matrices, as this library stores them):
//
//   model.embed_tokens.weight                      embed_tokens.weight [vocab, hidden]
//   model.layers.{i}.input_layernorm.weight        blocks.{i}.attention_norm.weight
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight  blocks.{i}.attention.{query,key,value,output}.weight
//   model.layers.{i}.post_attention_layernorm.weight  blocks.{i}.ffn_norm.weight
//   model.layers.{i}.mlp.{gate,up,down}_proj.weight   blocks.{i}.ffn.{gate,up,down}.weight
//   model.norm.weight                              final_norm.weight
//
// lm_head.weight (the language-model head: HLLM reads hidden states, not next-token logits) and
// rotary inverse-frequency buffers of older exports are not loaded. Checkpoints: config.json with
// `model.safetensors`, or shards listed by `model.safetensors.index.json`; tensors in F32, F16
// or BF16, converted to the model's scalar; files are mapped, not read whole. Unsupported
// configurations (rope_scaling, biased projections, an activation other than SiLU) are refused
// by name rather than loaded wrong.
//
// Sequences are packed (no padding); attention is causal within each, and rotary positions
// count from each sequence's first token (HF counts from the first padded slot of a left-padded
// batch, which gives the same attention: rotary scores depend on distances only).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/nn/block_stack.hpp"
#include "distillrec/nn/embedding.hpp"
#include "distillrec/nn/feed_forward.hpp"
#include "distillrec/nn/lora.hpp"
#include "distillrec/nn/rms_norm.hpp"
#include "distillrec/nn/run_mode.hpp"
#include "distillrec/nn/sequence_layout.hpp"
#include "distillrec/nn/transformer_block.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace distillrec::models {

struct LlamaConfig {
  Index vocab_size = 0;        // 0: no token table (a model over vectors: HLLM's user model)
  Index hidden_size = 0;
  Index intermediate_size = 0;
  Index num_layers = 0;
  Index num_heads = 0;
  Index num_kv_heads = 0;      // 0: num_heads
  Index max_positions = 2048;  // longest sequence (the rotary table's size)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  /// HLLM's [ITEM] token: a learned input vector ("item_token.weight" [1, hidden], drawn from
  /// N(0, 0.02) by initialize() or initialize_item_token()) that encode_items() appends to every
  /// text; the item's embedding is the final-norm state there. Not part of an HF checkpoint.
  bool item_token = false;
  /// LoRA adapters on every block's attention and feed-forward projections (nn/lora.hpp); with
  /// rank > 0 every base weight (token table, blocks, norms) is frozen and only the adapters
  /// (and the [ITEM] token) train. Not part of an HF checkpoint.
  nn::LoraOptions lora;
  /// Backward recomputes the attention probabilities instead of keeping them from forward
  /// (nn/attention.hpp): memory one len x len matrix per thread instead of heads x len^2 per
  /// sequence, for one more Q K^T product per head. Results are identical.
  bool recompute_attention = false;

  Index effective_kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }

  void validate() const {
    if (vocab_size < 0 || hidden_size <= 0 || intermediate_size <= 0 || num_layers <= 0 || num_heads <= 0 || max_positions <= 0 ||
        num_kv_heads < 0) {
      throw ConfigError(distillrec::detail::concat("LLaMA: vocab_size (", vocab_size, "), hidden_size (", hidden_size, "), intermediate_size (",
                                       intermediate_size, "), num_hidden_layers (", num_layers, "), num_attention_heads (", num_heads,
                                       ") and max_position_embeddings (", max_positions, ") must be positive (vocab_size 0: a model over vectors)"));
    }
    if (hidden_size % num_heads != 0 || (hidden_size / num_heads) % 2 != 0) {
      throw ConfigError(distillrec::detail::concat("LLaMA: hidden_size ", hidden_size, " must split into ", num_heads, " heads of even size"));
    }
    if (num_heads % effective_kv_heads() != 0) {
      throw ConfigError(distillrec::detail::concat("LLaMA: num_key_value_heads ", num_kv_heads, " must divide num_attention_heads ", num_heads));
    }
    if (!(rms_norm_eps > 0.0)) throw ConfigError("LLaMA: rms_norm_eps must be positive");
    if (!(rope_theta > 1.0)) throw ConfigError("LLaMA: rope_theta must be > 1");
    lora.validate();
  }

  /// From a Hugging Face config.json (LlamaForCausalLM and the same architecture under other
  /// names: Mistral without sliding windows, TinyLlama). `source` names the file in errors.
  static LlamaConfig from_hf_json(const nlohmann::json& j, const std::string& source) {
    LlamaConfig c;
    auto fail = [&](const std::string& message) { throw ConfigError(source + ": " + message); };
    try {
      c.vocab_size = j.at("vocab_size").get<Index>();
      if (c.vocab_size <= 0) fail(distillrec::detail::concat("vocab_size must be positive, got ", c.vocab_size));
      c.hidden_size = j.at("hidden_size").get<Index>();
      c.intermediate_size = j.at("intermediate_size").get<Index>();
      c.num_layers = j.at("num_hidden_layers").get<Index>();
      c.num_heads = j.at("num_attention_heads").get<Index>();
      c.num_kv_heads = j.value("num_key_value_heads", c.num_heads);
      c.max_positions = j.value("max_position_embeddings", c.max_positions);
      c.rms_norm_eps = j.value("rms_norm_eps", c.rms_norm_eps);
      c.rope_theta = j.value("rope_theta", c.rope_theta);
      if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
        fail("rope_scaling " + j.at("rope_scaling").dump() + " is not supported (plain rotary positions only)");
      }
      if (j.value("hidden_act", std::string("silu")) != "silu") {
        fail("hidden_act \"" + j.at("hidden_act").get<std::string>() + "\" is not supported (LLaMA's SwiGLU uses silu)");
      }
      if (j.value("attention_bias", false) || j.value("mlp_bias", false)) fail("biased projections are not supported");
      if (j.contains("head_dim") && !j.at("head_dim").is_null() && j.at("head_dim").get<Index>() * c.num_heads != c.hidden_size) {
        fail(distillrec::detail::concat("head_dim ", j.at("head_dim").get<Index>(), " x ", c.num_heads, " heads differs from hidden_size ",
                            c.hidden_size, " (not supported)"));
      }
      if (j.contains("sliding_window") && !j.at("sliding_window").is_null()) fail("sliding-window attention is not supported");
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("not a LLaMA configuration: ") + e.what());
    }
    try {
      c.validate();
    } catch (const ConfigError& e) {
      fail(e.what());
    }
    return c;
  }
};

/// The library's own JSON of a LlamaConfig (what checkpoints of models built on it carry).
inline nlohmann::json to_json(const LlamaConfig& c) {
  return nlohmann::json{{"vocab_size", c.vocab_size},       {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                        {"num_layers", c.num_layers},       {"num_heads", c.num_heads},     {"num_kv_heads", c.num_kv_heads},
                        {"max_positions", c.max_positions}, {"rms_norm_eps", c.rms_norm_eps}, {"rope_theta", c.rope_theta},
                        {"item_token", c.item_token},       {"lora", nn::to_json(c.lora)},
                        {"recompute_attention", c.recompute_attention}};
}

/// Parses to_json()'s output (missing keys keep their defaults); ConfigError naming `what`.
inline LlamaConfig llama_config_from_json(const nlohmann::json& j, const std::string& what) {
  LlamaConfig c;
  try {
    c.vocab_size = j.value("vocab_size", c.vocab_size);
    c.hidden_size = j.at("hidden_size").get<Index>();
    c.intermediate_size = j.at("intermediate_size").get<Index>();
    c.num_layers = j.at("num_layers").get<Index>();
    c.num_heads = j.at("num_heads").get<Index>();
    c.num_kv_heads = j.value("num_kv_heads", c.num_kv_heads);
    c.max_positions = j.value("max_positions", c.max_positions);
    c.rms_norm_eps = j.value("rms_norm_eps", c.rms_norm_eps);
    c.rope_theta = j.value("rope_theta", c.rope_theta);
    c.item_token = j.value("item_token", c.item_token);
    if (j.contains("lora")) c.lora = nn::lora_options_from_json(j.at("lora"), what + " lora");
    c.recompute_attention = j.value("recompute_attention", c.recompute_attention);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(what + ": " + e.what());
  }
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(what + ": " + e.what());
  }
  return c;
}

template <typename T = float>
class LlamaModel {
 public:
  using Scalar = T;
  using Config = LlamaConfig;
  using Block = nn::TransformerBlock<T, nn::PreNorm, nn::RMSNorm<T>, nn::SwiGLU<T>>;
  using Stack = nn::BlockStack<Block>;

  struct Workspace {
    nn::SequenceLayout layout;
    std::vector<ItemId> tokens;   // per packed row; -1 marks the [ITEM] token
    bool items = false;           // filled by encode_items() (what backward_items() needs)
    typename Stack::Workspace stack;
    ScratchMatrix<T> normed;      // [tokens, hidden]: the last layer after the final norm
    ScratchMatrix<T> grad_normed;
    typename nn::RMSNorm<T>::Workspace final_norm;
  };

  /// Owns its parameters (names as in the table at the top).
  explicit LlamaModel(const LlamaConfig& config) : config_(config), owned_(std::make_unique<Parameters<T>>()), params_(owned_.get()) {
    declare("");
    params_->allocate();
  }

  /// Declares its parameters in `params` (not yet allocated; the caller allocates it once every
  /// part has declared), each name preceded by `prefix`: a model made of several (HLLM's item
  /// and user models) keeps one flat buffer. `params` must outlive this model and keep its
  /// address.
  LlamaModel(const LlamaConfig& config, Parameters<T>& params, const std::string& prefix)
      : config_(config), params_(&params), prefix_(prefix) {
    declare(prefix_);
  }

  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;
  LlamaModel(LlamaModel&&) = default;
  LlamaModel& operator=(LlamaModel&&) = default;

  /// Fresh weights (Xavier-normal matrices, unit norms; the [ITEM] token from N(0, 0.02)).
  void initialize(Rng& rng) {
    if (embed_tokens_) embed_tokens_->initialize(rng);
    stack_->initialize(rng);
    final_norm_->initialize(rng);
    initialize_item_token(rng);
  }

  /// The [ITEM] token from N(0, 0.02), as HLLM initialises it (after loading a checkpoint).
  void initialize_item_token(Rng& rng) {
    if (item_token_ < 0) return;
    auto v = params_->value(item_token_);
    for (Index j = 0; j < v.cols(); ++j) v(0, j) = static_cast<T>(0.02 * rng.normal());
  }

  const LlamaConfig& config() const { return config_; }
  Parameters<T>& parameters() { return *params_; }
  const Parameters<T>& parameters() const { return *params_; }
  Index hidden_size() const { return config_.hidden_size; }
  Index num_layers() const { return config_.num_layers; }
  /// What every parameter name of this model starts with ("" for a model of its own).
  const std::string& prefix() const { return prefix_; }

  /// Runs token sequences (each non-empty, at most max_positions long, ids in 0..vocab-1),
  /// causal within each; returns the last layer's states after the final norm, [tokens, hidden]
  /// packed in order (ws.layout says where each sequence starts). Thread-safe for distinct
  /// workspaces.
  ConstMatrixMap<T> forward(const std::vector<std::vector<int>>& sequences, Workspace& ws) const {
    require_tokens("forward");
    pack(sequences, ws, /*item_token=*/false);
    const Index n = ws.layout.num_tokens();
    embed_tokens_->forward(ws.tokens, stack_->input(ws.stack, n));
    const auto top = stack_->forward(ws.layout, ws.stack, nn::RunMode::inference());
    auto normed = ws.normed.resize(n, hidden_size());
    final_norm_->forward(top, normed, ws.final_norm);
    return ConstMatrixMap<T>(normed.data(), n, hidden_size());
  }

  /// HLLM's item embeddings: each text (token ids, non-empty, BOS first as the tokenizer gives
  /// it) followed by the [ITEM] token runs through the model; out [texts, hidden] = the
  /// final-norm state at [ITEM]. Keeps what backward_items() needs. Needs config.item_token.
  /// `mode`: training mode applies the LoRA adapters' dropout (the blocks have no other).
  void encode_items(const std::vector<std::vector<int>>& texts, MatrixRef<T> out, Workspace& ws,
                    const nn::RunMode& mode = nn::RunMode::inference()) const {
    if (item_token_ < 0) throw ConfigError("LLaMA: encode_items needs the [ITEM] token (LlamaConfig::item_token)");
    require_tokens("encode_items");
    require_shape(out, static_cast<Index>(texts.size()), hidden_size(), "LLaMA item embeddings");
    pack(texts, ws, /*item_token=*/true);
    const Index n = ws.layout.num_tokens();
    auto x = stack_->input(ws.stack, n);
    const auto table = embed_tokens_->table();
    const auto token = params_->value(item_token_);
    for (Index i = 0; i < n; ++i) {
      const ItemId id = ws.tokens[static_cast<std::size_t>(i)];
      if (id < 0) {
        x.row(i) = token.row(0);
      } else {
        x.row(i) = table.row(id);
      }
    }
    const auto top = stack_->forward(ws.layout, ws.stack, mode);
    auto normed = ws.normed.resize(n, hidden_size());
    final_norm_->forward(top, normed, ws.final_norm);
    for (Index s = 0; s < ws.layout.num_sequences(); ++s) out.row(s) = normed.row(ws.layout.last(s));
    ws.items = true;
  }

  /// Adds to parameters().grads() the gradients of a loss with dL/d(item embeddings) =
  /// grad_items [texts, hidden], through the encode_items() call that filled ws.
  void backward_items(const ConstMatrixRef<T>& grad_items, Workspace& ws) {
    if (item_token_ < 0) throw ConfigError("LLaMA: backward_items needs the [ITEM] token (LlamaConfig::item_token)");
    if (!ws.items) throw ConfigError("LLaMA: backward_items needs the workspace of an encode_items() call");
    const Index n = ws.layout.num_tokens(), h = hidden_size();
    require_shape(grad_items, ws.layout.num_sequences(), h, "LLaMA item embedding gradient");
    auto grad_normed = ws.grad_normed.zeros(n, h);
    for (Index s = 0; s < ws.layout.num_sequences(); ++s) grad_normed.row(ws.layout.last(s)) = grad_items.row(s);
    final_norm_->accumulate_grad(grad_normed, ws.final_norm);
    final_norm_->backward(grad_normed, stack_->output_grad(ws.stack, n), ws.final_norm);
    const auto grad_input = stack_->backward(ws.layout, ws.stack);
    auto table_grad = params_->grad(embed_tokens_->weight_id());
    auto token_grad = params_->grad(item_token_);
    const bool table_trainable = params_->info(embed_tokens_->weight_id()).trainable;  // frozen under LoRA
    const bool token_trainable = params_->info(item_token_).trainable;
    for (Index i = 0; i < n; ++i) {
      const ItemId id = ws.tokens[static_cast<std::size_t>(i)];
      if (id < 0) {
        if (token_trainable) token_grad.row(0) += grad_input.row(i);
      } else if (table_trainable) {
        table_grad.row(id) += grad_input.row(i);
      }
    }
  }

  /// HLLM's user model: runs input vectors instead of tokens (HF's inputs_embeds; no projection,
  /// so they have the model's width), packed by `layout` (causal within each sequence); returns
  /// the final-norm states [tokens, hidden] and keeps what backward_embeddings() needs. The
  /// token table is not used.
  ConstMatrixMap<T> forward_embeddings(const ConstMatrixRef<T>& inputs, const nn::SequenceLayout& layout, Workspace& ws,
                                       const nn::RunMode& mode = nn::RunMode::inference()) const {
    const Index n = layout.num_tokens();
    require_shape(inputs, n, hidden_size(), "LLaMA input vectors");
    for (Index s = 0; s < layout.num_sequences(); ++s) {
      if (layout.length(s) > config_.max_positions) {
        throw ShapeError(distillrec::detail::concat("LLaMA: sequence ", s, " has ", layout.length(s),
                                                    " vectors, more than max_position_embeddings ", config_.max_positions));
      }
    }
    ws.layout = layout;
    ws.tokens.clear();
    ws.items = false;
    stack_->input(ws.stack, n) = inputs;
    const auto top = stack_->forward(ws.layout, ws.stack, mode);
    auto normed = ws.normed.resize(n, hidden_size());
    final_norm_->forward(top, normed, ws.final_norm);
    return ConstMatrixMap<T>(normed.data(), n, hidden_size());
  }

  /// Given dL/d(states) [tokens, hidden] of the forward_embeddings() call that filled ws, adds
  /// the weights' gradients and returns dL/d(inputs) (a view into ws).
  ConstMatrixMap<T> backward_embeddings(const ConstMatrixRef<T>& grad_states, Workspace& ws) {
    const Index n = ws.layout.num_tokens();
    require_shape(grad_states, n, hidden_size(), "LLaMA state gradient");
    final_norm_->accumulate_grad(grad_states, ws.final_norm);
    final_norm_->backward(grad_states, stack_->output_grad(ws.stack, n), ws.final_norm);
    const auto grad_input = stack_->backward(ws.layout, ws.stack);
    return ConstMatrixMap<T>(grad_input.data(), grad_input.rows(), grad_input.cols());
  }

  /// Hidden state k of the last forward (0 = the token embeddings, 1..L-1 after block k, L =
  /// after the final norm: HF's output_hidden_states), [tokens, hidden].
  ConstMatrixMap<T> hidden_state(const Workspace& ws, Index k) const {
    if (k < 0 || k > config_.num_layers) {
      throw ShapeError(distillrec::detail::concat("LLaMA: hidden-state index ", k, " is outside 0..", config_.num_layers));
    }
    return k < config_.num_layers ? stack_->hidden(ws.stack, k) : ws.normed.map();
  }

  /// HF tensor name -> this model's parameter name, for every parameter.
  std::vector<std::pair<std::string, std::string>> hf_names() const {
    std::vector<std::pair<std::string, std::string>> names;
    if (embed_tokens_) names.emplace_back("model.embed_tokens.weight", prefix_ + "embed_tokens.weight");
    static const char* const kBlock[][2] = {{"input_layernorm.weight", "attention_norm.weight"},
                                            {"self_attn.q_proj.weight", "attention.query.weight"},
                                            {"self_attn.k_proj.weight", "attention.key.weight"},
                                            {"self_attn.v_proj.weight", "attention.value.weight"},
                                            {"self_attn.o_proj.weight", "attention.output.weight"},
                                            {"post_attention_layernorm.weight", "ffn_norm.weight"},
                                            {"mlp.gate_proj.weight", "ffn.gate.weight"},
                                            {"mlp.up_proj.weight", "ffn.up.weight"},
                                            {"mlp.down_proj.weight", "ffn.down.weight"}};
    for (Index i = 0; i < config_.num_layers; ++i) {
      for (const auto& pair : kBlock) {
        names.emplace_back(distillrec::detail::concat("model.layers.", i, ".", pair[0]), distillrec::detail::concat(prefix_, "blocks.", i, ".", pair[1]));
      }
    }
    names.emplace_back("model.norm.weight", prefix_ + "final_norm.weight");
    return names;
  }

 private:
  // Checks and packs token sequences (with item_token, each followed by the [ITEM] row, id -1).
  void pack(const std::vector<std::vector<int>>& sequences, Workspace& ws, bool item_token) const {
    ws.layout.clear();
    ws.tokens.clear();
    ws.items = false;
    const Index extra = item_token ? 1 : 0;
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      const auto& seq = sequences[s];
      if (seq.empty()) throw ShapeError(distillrec::detail::concat("LLaMA: token sequence ", s, " is empty"));
      if (static_cast<Index>(seq.size()) + extra > config_.max_positions) {
        throw ShapeError(distillrec::detail::concat("LLaMA: token sequence ", s, " has ", seq.size(), " tokens", item_token ? " (+ [ITEM])" : "",
                                                    ", more than max_position_embeddings ", config_.max_positions));
      }
      for (std::size_t j = 0; j < seq.size(); ++j) {
        if (seq[j] < 0 || seq[j] >= config_.vocab_size) {
          throw ShapeError(distillrec::detail::concat("LLaMA: token ", seq[j], " at position ", j, " of sequence ", s, " is outside 0..",
                                                      config_.vocab_size - 1));
        }
        ws.tokens.push_back(static_cast<ItemId>(seq[j]));
      }
      if (item_token) ws.tokens.push_back(ItemId{-1});
      ws.layout.add(static_cast<Index>(seq.size()) + extra);
    }
  }

  void declare(const std::string& prefix) {
    config_.validate();
    auto& p = *params_;
    const Index h = config_.hidden_size;
    if (config_.vocab_size > 0) embed_tokens_.emplace(p, prefix + "embed_tokens", config_.vocab_size, h, /*padding_row_zero=*/false);
    nn::TransformerBlockConfig block;
    block.dim = h;
    block.num_heads = config_.num_heads;
    block.ffn_dim = config_.intermediate_size;
    block.attention_output_projection = true;
    block.norm_eps = config_.rms_norm_eps;
    block.attention.bias = false;
    block.attention.rope = true;
    block.attention.rope_theta = config_.rope_theta;
    block.attention.num_kv_heads = config_.effective_kv_heads();
    block.attention.max_positions = config_.max_positions;
    block.attention.recompute_probabilities = config_.recompute_attention;
    block.lora = config_.lora;
    stack_.emplace(p, prefix + "blocks", config_.num_layers, block);
    final_norm_.emplace(p, prefix + "final_norm", h, config_.rms_norm_eps);
    if (config_.item_token) item_token_ = p.declare(prefix + "item_token.weight", 1, h);
    if (config_.lora.enabled()) {  // the base is frozen: adapters and the [ITEM] token train
      const std::string token = prefix + "item_token.weight";
      nn::freeze_all_but_lora(p, prefix, [&](const std::string& name) { return name == token; });
    }
  }

  void require_tokens(const char* what) const {
    if (!embed_tokens_) {
      throw ConfigError(distillrec::detail::concat("LLaMA: ", what, " needs a token table (vocab_size is 0: this model reads vectors)"));
    }
  }

  LlamaConfig config_;
  std::unique_ptr<Parameters<T>> owned_;
  Parameters<T>* params_ = nullptr;
  std::string prefix_;
  std::optional<nn::Embedding<T>> embed_tokens_;
  std::optional<Stack> stack_;
  std::optional<nn::RMSNorm<T>> final_norm_;
  typename Parameters<T>::Id item_token_ = -1;
};

/// The LlamaConfig of a Hugging Face checkpoint directory's config.json (FormatError naming the
/// file when it is missing or not JSON; ConfigError for unsupported settings).
inline LlamaConfig read_hf_llama_config(const std::string& directory) {
  const std::string config_path = (std::filesystem::path(directory) / "config.json").string();
  nlohmann::json config_json;
  std::ifstream in(config_path);
  if (!in) throw FormatError(config_path, 0, "cannot open the checkpoint's config.json");
  try {
    in >> config_json;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(config_path, 0, std::string("not valid JSON: ") + e.what());
  }
  return LlamaConfig::from_hf_json(config_json, config_path);
}

/// Overwrites `model`'s base weights (token table, blocks, final norm) with a Hugging Face
/// checkpoint's (see the top); the [ITEM] token and LoRA adapters are left as they are. The
/// model's architecture must be the checkpoint's (a model without a token table, such as HLLM's
/// user LLM, takes the blocks and final norm only); ConfigError naming config.json otherwise.
/// FormatError naming the file for anything missing, malformed or of the wrong shape.
template <typename T>
void load_hf_llama_weights(const std::string& directory, LlamaModel<T>& model) {
  namespace fs = std::filesystem;
  const fs::path dir(directory);
  const LlamaConfig hf = read_hf_llama_config(directory);
  const LlamaConfig& ours = model.config();
  if ((ours.vocab_size != 0 && ours.vocab_size != hf.vocab_size) || ours.hidden_size != hf.hidden_size ||
      ours.intermediate_size != hf.intermediate_size || ours.num_layers != hf.num_layers || ours.num_heads != hf.num_heads ||
      ours.effective_kv_heads() != hf.effective_kv_heads() || ours.rms_norm_eps != hf.rms_norm_eps || ours.rope_theta != hf.rope_theta) {
    throw ConfigError(distillrec::detail::concat(
        (dir / "config.json").string(), ": the checkpoint (vocab ", hf.vocab_size, ", hidden ", hf.hidden_size, ", intermediate ",
        hf.intermediate_size, ", ", hf.num_layers, " layers, ", hf.num_heads, "/", hf.effective_kv_heads(),
        " heads, rms_norm_eps ", hf.rms_norm_eps, ", rope_theta ", hf.rope_theta, ") differs from the model it is loaded into (vocab ",
        ours.vocab_size, ", hidden ", ours.hidden_size, ", intermediate ", ours.intermediate_size, ", ", ours.num_layers, " layers, ",
        ours.num_heads, "/", ours.effective_kv_heads(), " heads, rms_norm_eps ", ours.rms_norm_eps, ", rope_theta ", ours.rope_theta, ")"));
  }

  // Which file holds each tensor: one model.safetensors, or the shards of an index.
  std::map<std::string, std::string> file_of;
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  const auto names = model.hf_names();
  if (fs::exists(single)) {
    for (const auto& [hf_name, our_name] : names) file_of[hf_name] = single.string();
  } else if (fs::exists(index)) {
    nlohmann::json index_json;
    std::ifstream in(index.string());
    try {
      in >> index_json;
      for (const auto& entry : index_json.at("weight_map").items()) file_of[entry.key()] = (dir / entry.value().template get<std::string>()).string();
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(index.string(), 0, std::string("not a safetensors index (expected a \"weight_map\" object): ") + e.what());
    }
  } else {
    throw FormatError(directory, 0, "no model.safetensors or model.safetensors.index.json in the checkpoint directory");
  }

  std::map<std::string, std::unique_ptr<io::SafetensorsReader>> readers;
  auto reader_of = [&](const std::string& file) -> io::SafetensorsReader& {
    auto& reader = readers[file];
    if (!reader) reader = std::make_unique<io::SafetensorsReader>(file, io::FileAccess::kMap);
    return *reader;
  };
  // Every tensor of the checkpoint is loaded or known to be unused (the language-model head,
  // rotary buffers of older exports, the token table for a model over vectors): anything else
  // (biases, other architectures' weights) would otherwise be dropped silently.
  {
    std::set<std::string> expected;
    for (const auto& [hf_name, our_name] : names) expected.insert(hf_name);
    auto check = [&](const std::string& name, const std::string& file) {
      const bool known_unused = name == "lm_head.weight" || name.find("rotary_emb.inv_freq") != std::string::npos ||
                                (ours.vocab_size == 0 && name == "model.embed_tokens.weight");
      if (expected.count(name) == 0 && !known_unused) {
        throw FormatError(file, 0, "tensor \"" + name + "\" is not part of a LLaMA model as configured (biases, or another architecture?)");
      }
    };
    if (fs::exists(single)) {
      for (const auto& name : reader_of(single.string()).names()) check(name, single.string());
    } else {
      for (const auto& [name, file] : file_of) check(name, index.string());
    }
  }
  auto& params = model.parameters();
  for (const auto& [hf_name, our_name] : names) {
    const auto where = file_of.find(hf_name);
    if (where == file_of.end()) throw FormatError(index.string(), 0, "the weight map lists no file for tensor \"" + hf_name + "\"");
    const auto id = params.find(our_name);
    auto value = params.value(id);
    value = reader_of(where->second).read_matrix(hf_name, value.rows(), value.cols()).template cast<T>();
  }
}

/// Loads a Hugging Face LLaMA checkpoint directory (see the top) into a model of its own. With
/// item_token, the model carries HLLM's [ITEM] token, drawn from N(0, 0.02) with `seed`; with
/// LoRA options of rank > 0, adapters (A drawn with the same generator, B zero: the model starts
/// equal to the checkpoint) and a frozen base.
template <typename T = float>
LlamaModel<T> load_hf_llama(const std::string& directory, bool item_token = false, std::uint64_t seed = 2020,
                            const nn::LoraOptions& lora = {}) {
  LlamaConfig config = read_hf_llama_config(directory);
  config.item_token = item_token;
  config.lora = lora;
  LlamaModel<T> model(config);
  Rng rng(seed);
  model.initialize_item_token(rng);
  nn::initialize_lora(model.parameters(), rng);
  load_hf_llama_weights(directory, model);
  return model;
}

/// The same model with every LoRA adapter folded into its base weight (nn/lora.hpp): a model of
/// its own (names without a prefix), no adapters, every weight trainable.
template <typename T>
LlamaModel<T> merge_lora(const LlamaModel<T>& model) {
  LlamaConfig config = model.config();
  const double scale = config.lora.scale();
  config.lora = nn::LoraOptions{};
  LlamaModel<T> merged(config);
  nn::copy_merging_lora(model.parameters(), merged.parameters(), [&](const std::string&) { return scale; }, model.prefix());
  return merged;
}

}  // namespace distillrec::models
