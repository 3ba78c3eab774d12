// distillrec/models/gru4rec.hpp
//
// GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016), as
// DLLM2Rec's student uses it (methods.md §2.3), written only against the model contract
// (models/model.hpp), with the library's shared pieces:
//
//   e_t = Dropout(E[s_t])                 item table E [(N+1), d], row 0 padding (zero); rows
//                                         1..N drawn from N(0, 0.01^2) as DLLM2Rec does
//   h_t = GRU_L(...GRU_1(e_t))            num_layers GRU layers (nn/gru.hpp), h_{-1} = 0
//   score(t, i) = h_t . W[i] + b[i]       the output head (nn/output_head.hpp): untied, a
//                                         Linear(H -> N) with bias as DLLM2Rec's s_fc
//                                         (default), or tied to E (then H must equal d)
//
// Its output vector at a position is the last layer's state after that item; encode() returns
// the state after each history's newest item. Sequences are packed (nn/sequence_layout.hpp):
// the recurrence never runs over padding, as torch.nn.utils.rnn.pack_padded_sequence.
//
// Parameter (checkpoint tensor) names, PyTorch layout:
//   item_embedding.weight [N+1, d]
//   gru.{l}.weight_ih [3H, in]   gru.{l}.weight_hh [3H, H]   gru.{l}.bias_ih [1, 3H]
//   gru.{l}.bias_hh [1, 3H]      (torch.nn.GRU's weight_ih_l{l}, ...; gates r, z, n)
//   output.weight [N, H]   output.bias [1, N]                (untied head only)
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/models/packing.hpp"
#include "distillrec/nn/dropout.hpp"
#include "distillrec/nn/embedding.hpp"
#include "distillrec/nn/gru.hpp"
#include "distillrec/nn/init.hpp"
#include "distillrec/nn/output_head.hpp"

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace distillrec::models {

struct GRU4RecConfig {
  ItemId num_items = 0;          // items are 1..num_items
  Index embedding_dim = 64;      // d
  Index hidden_size = 64;        // H
  Index num_layers = 1;
  Index max_length = 50;         // longest window read
  double dropout = 0.1;          // on the item embeddings
  nn::HeadKind head = nn::HeadKind::kUntied;

  void validate() const {
    if (num_items <= 0) throw ConfigError(detail::concat("GRU4Rec: num_items must be positive, got ", num_items));
    if (embedding_dim <= 0 || hidden_size <= 0 || num_layers <= 0 || max_length <= 0) {
      throw ConfigError(detail::concat("GRU4Rec: embedding_dim (", embedding_dim, "), hidden_size (", hidden_size,
                                       "), num_layers (", num_layers, ") and max_length (", max_length, ") must be positive"));
    }
    if (!(dropout >= 0.0 && dropout < 1.0)) throw ConfigError(detail::concat("GRU4Rec: dropout must be in [0, 1), got ", dropout));
    if (head == nn::HeadKind::kTied && hidden_size != embedding_dim) {
      throw ConfigError(detail::concat("GRU4Rec: a tied head scores the GRU state with the item table, so hidden_size (",
                                       hidden_size, ") must equal embedding_dim (", embedding_dim, ")"));
    }
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"model", "gru4rec"},        {"num_items", num_items},   {"embedding_dim", embedding_dim},
                          {"hidden_size", hidden_size}, {"num_layers", num_layers}, {"max_length", max_length},
                          {"dropout", dropout},         {"head", nn::to_string(head)}};
  }

  /// Parses to_json()'s output; missing keys keep their defaults, wrong types throw ConfigError.
  static GRU4RecConfig from_json(const nlohmann::json& j) {
    GRU4RecConfig c;
    try {
      if (j.contains("model") && j.at("model").get<std::string>() != "gru4rec") {
        throw ConfigError("configuration is for model \"" + j.at("model").get<std::string>() + "\", not gru4rec");
      }
      c.num_items = j.at("num_items").get<ItemId>();
      c.embedding_dim = j.value("embedding_dim", c.embedding_dim);
      c.hidden_size = j.value("hidden_size", c.hidden_size);
      c.num_layers = j.value("num_layers", c.num_layers);
      c.max_length = j.value("max_length", c.max_length);
      c.dropout = j.value("dropout", c.dropout);
      if (j.contains("head")) c.head = nn::parse_head_kind(j.at("head").get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("GRU4Rec configuration: ") + e.what());
    }
    c.validate();
    return c;
  }
};

template <typename T = float>
class GRU4Rec {
 public:
  using Config = GRU4RecConfig;
  using Scalar = T;
  static constexpr const char* kModelName = "gru4rec";

  /// Per-call memory of a forward (and backward) pass. One per thread; reusable across calls.
  struct Workspace : PackedTokens {
    ScratchMatrix<T> embedded;                       // Dropout(E[items])        [tokens, d]
    std::vector<ScratchMatrix<T>> states;            // states[l]: layer l's output [tokens, H]
    std::vector<typename nn::GRU<T>::Workspace> gru;
    ScratchMatrix<T> grad_a, grad_b;                 // gradients flowing down through the layers
    typename nn::Dropout<T>::Workspace dropout;
  };

  explicit GRU4Rec(const GRU4RecConfig& config) : config_(config), params_(std::make_unique<Parameters<T>>()) {
    config_.validate();
    auto& p = *params_;
    item_embedding_.emplace(p, "item_embedding", static_cast<Index>(config_.num_items) + 1, config_.embedding_dim, true);
    dropout_.emplace(config_.dropout);
    grus_.reserve(static_cast<std::size_t>(config_.num_layers));
    for (Index l = 0; l < config_.num_layers; ++l) {
      grus_.emplace_back(p, "gru." + std::to_string(l), l == 0 ? config_.embedding_dim : config_.hidden_size, config_.hidden_size);
    }
    head_.emplace(config_.head == nn::HeadKind::kTied
                      ? nn::OutputHead<T>::tied(p, item_embedding_->weight_id())
                      : nn::OutputHead<T>::untied(p, "output", config_.num_items, config_.hidden_size, /*bias=*/true));
    p.allocate();
  }

  GRU4Rec(const GRU4Rec&) = delete;
  GRU4Rec& operator=(const GRU4Rec&) = delete;
  GRU4Rec(GRU4Rec&&) = default;
  GRU4Rec& operator=(GRU4Rec&&) = default;

  /// Fresh weights: item table N(0, 0.01^2) (row 0 zero), GRUs and an untied head as PyTorch.
  void initialize(Rng& rng) {
    nn::init_normal(params_->value(item_embedding_->weight_id()), 0.01, rng);
    params_->value(item_embedding_->weight_id()).row(0).setZero();
    for (auto& gru : grus_) gru.initialize(rng);
    head_->initialize(rng);
  }

  /// Re-establishes invariants after loading weights (the padding row is zero).
  void after_load() { params_->value(item_embedding_->weight_id()).row(0).setZero(); }

  const GRU4RecConfig& config() const { return config_; }
  Parameters<T>& parameters() { return *params_; }
  const Parameters<T>& parameters() const { return *params_; }
  ItemId num_items() const { return config_.num_items; }
  Index max_length() const { return config_.max_length; }
  Index hidden_size() const { return config_.hidden_size; }
  ConstMatrixMap<T> item_table() const { return item_embedding_->table(); }
  /// The item lookup of the input (row offsets for embedding distillation: nn/embedding.hpp).
  nn::Embedding<T>& input_item_embedding() { return *item_embedding_; }
  const nn::Embedding<T>& input_item_embedding() const { return *item_embedding_; }
  nn::HeadWeights<T> output_weights() const { return head_->weights(); }
  nn::HeadGradients<T> output_gradients() { return head_->gradients(); }
  const nn::GRU<T>& gru(Index layer) const { return grus_.at(static_cast<std::size_t>(layer)); }

  // ---- inference -------------------------------------------------------------------------

  /// The state after each history's newest item (histories chronological, ids in 1..N, each
  /// non-empty; the newest max_length items are read), out [histories, H]. Thread-safe for
  /// distinct workspaces.
  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& ws) const {
    require_shape(out, static_cast<Index>(histories.size()), hidden_size(), "GRU4Rec::encode output");
    pack_histories(histories, packing_rules(), ws);
    embed(ws, nn::RunMode::inference());
    prepare(ws);
    const Index L = config_.num_layers;
    for (Index l = 0; l + 1 < L; ++l) {
      auto y = ws.states[static_cast<std::size_t>(l)].resize(ws.layout.num_tokens(), hidden_size());
      grus_[static_cast<std::size_t>(l)].forward(input_of(ws, l), ws.layout, y, ws.gru[static_cast<std::size_t>(l)]);
    }
    grus_.back().forward_last(input_of(ws, L - 1), ws.layout, out, ws.gru.back());
  }

  // ---- incremental sessions (serve/session.hpp) ---------------------------------------------

  /// Scalars of a session's cache: the state of every layer after the session's items.
  Index session_cache_size() const { return config_.num_layers * hidden_size(); }

  /// Appends `item` to a session: `cache` holds the layers' states after the items so far
  /// (zeros for none) and is advanced in place; out [1, H] = the output vector, equal to
  /// encode() of the items so far plus `item` as long as they fit the window (max_length).
  /// The state carries everything: `position` (the items before) is not needed.
  void session_append(T* cache, Index /*position*/, ItemId item, MatrixRef<T> out, Workspace& ws) const {
    if (item < 1 || item > config_.num_items) {
      throw ShapeError(detail::concat("GRU4Rec: session item ", item, " is outside 1..", config_.num_items));
    }
    require_shape(out, 1, hidden_size(), "GRU4Rec session output");
    prepare(ws);
    const Index H = hidden_size();
    auto x = ws.embedded.resize(1, config_.embedding_dim);
    x = item_embedding_->table().row(item);  // inference: no dropout
    for (Index l = 0; l < config_.num_layers; ++l) {
      MatrixMap<T> h(cache + l * H, 1, H);
      const ConstMatrixMap<T> input = l == 0 ? ConstMatrixMap<T>(ws.embedded.data(), 1, config_.embedding_dim)
                                             : ConstMatrixMap<T>(cache + (l - 1) * H, 1, H);
      grus_[static_cast<std::size_t>(l)].step(input, h, h, ws.gru[static_cast<std::size_t>(l)]);
    }
    out = ConstMatrixMap<T>(cache + (config_.num_layers - 1) * H, 1, H);
  }

  // ---- training --------------------------------------------------------------------------

  /// Forward pass over a training batch (embedding dropout active): the last layer's state at
  /// every packed token [tokens, H].
  ConstMatrixMap<T> forward_train(const data::TrainingBatch& batch, Rng& rng, Workspace& ws) const {
    pack_batch(batch, packing_rules(), ws);
    embed(ws, training_mode(batch, ws, rng));
    prepare(ws);
    const Index n = ws.layout.num_tokens();
    for (Index l = 0; l < config_.num_layers; ++l) {
      auto y = ws.states[static_cast<std::size_t>(l)].resize(n, hidden_size());
      grus_[static_cast<std::size_t>(l)].forward(input_of(ws, l), ws.layout, y, ws.gru[static_cast<std::size_t>(l)]);
    }
    const auto& top = ws.states.back();
    return ConstMatrixMap<T>(top.data(), n, hidden_size());
  }

  /// Adds the gradients of a loss with dL/doutputs = grad_outputs. Needs the workspace of the
  /// matching forward_train call.
  void backward(const ConstMatrixRef<T>& grad_outputs, Workspace& ws) {
    const Index n = ws.layout.num_tokens(), L = config_.num_layers;
    require_shape(grad_outputs, n, hidden_size(), "GRU4Rec::backward output gradient");
    if (L > 1) {
      // Layer l's input gradient is layer l-1's output gradient, carried in grad_a.
      ws.grad_a.resize(n, hidden_size()) = grad_outputs;
      for (Index l = L - 1; l >= 1; --l) {
        ws.grad_b.resize(n, hidden_size());
        grus_[static_cast<std::size_t>(l)].backward(input_of(ws, l), ws.layout, ws.grad_a.map(), ws.grad_b.map(),
                                                    ws.gru[static_cast<std::size_t>(l)]);
        std::swap(ws.grad_a, ws.grad_b);
      }
    }
    auto grad_embedded = ws.grad_b.resize(n, config_.embedding_dim);
    if (L > 1) {
      grus_[0].backward(ws.embedded.map(), ws.layout, ws.grad_a.map(), grad_embedded, ws.gru[0]);
    } else {
      grus_[0].backward(ws.embedded.map(), ws.layout, grad_outputs, grad_embedded, ws.gru[0]);
    }
    dropout_->backward(grad_embedded, grad_embedded, ws.dropout);
    item_embedding_->accumulate_grad(ws.items, grad_embedded);
  }

 private:
  PackingRules packing_rules() const { return PackingRules{"GRU4Rec", config_.num_items, config_.max_length, false}; }

  void prepare(Workspace& ws) const {
    ws.states.resize(static_cast<std::size_t>(config_.num_layers));
    ws.gru.resize(static_cast<std::size_t>(config_.num_layers));
  }

  ConstMatrixMap<T> input_of(const Workspace& ws, Index layer) const {
    const auto& m = layer == 0 ? ws.embedded : ws.states[static_cast<std::size_t>(layer - 1)];
    return ConstMatrixMap<T>(m.data(), m.rows(), m.cols());
  }

  void embed(Workspace& ws, const nn::RunMode& mode) const {
    auto x = ws.embedded.resize(ws.layout.num_tokens(), config_.embedding_dim);
    item_embedding_->forward(ws.items, x);
    dropout_->forward(x, x, ws.dropout, mode);
  }

  GRU4RecConfig config_;
  std::unique_ptr<Parameters<T>> params_;
  std::optional<nn::Embedding<T>> item_embedding_;
  std::optional<nn::Dropout<T>> dropout_;
  std::vector<nn::GRU<T>> grus_;
  std::optional<nn::OutputHead<T>> head_;
};

}  // namespace distillrec::models
