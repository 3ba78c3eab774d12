// distillrec/models/hllm.hpp
//
// HLLM (methods.md §3): an item LLM reads each item's text and emits one embedding at a trailing
// learned [ITEM] token; a user LLM of the same width reads the sequence of those embeddings (no
// projection) and predicts the next item's embedding; both train end to end with InfoNCE
// (loss/info_nce.hpp) over cosine similarities.
//
//   models::HllmConfig config = models::HllmConfig::small(num_items, tokenizer.vocab_size());
//   models::Hllm<float> hllm(config);
//   hllm.initialize(rng);
//   hllm.set_item_tokens(tokens);          // tokens[i]: item i + 1's text as token ids (BOS first)
//   train::HllmTrainer<float>(hllm, split, training).fit();   // train/hllm_trainer.hpp
//   hllm.refresh_item_table();             // every item's embedding from its text
//   auto result = eval::evaluate_full_ranking(hllm, split, eval::EvalSplit::kTest);
//
// Parameters (one flat buffer, checkpoint names):
//   item_llm.embed_tokens.weight, item_llm.blocks.{i}...., item_llm.final_norm.weight,
//   item_llm.item_token.weight          the item LLM (models/llama.hpp's names after "item_llm.")
//   user_llm.blocks.{i}...., user_llm.final_norm.weight
//                                       the user LLM (no token table: it reads vectors)
//   item_table.weight [N, hidden]       every item's embedding, L2-normalised (not trained:
//   item_norms.weight [N, 1]            written by refresh_item_table()) and its length
//
// Scoring (the model contract's scoring half, so evaluation and serving take it as they take
// SASRec): a history's newest max_length items are looked up in the item table (normalised row
// times its length: the item LLM's output), the user LLM runs over them, and its last state,
// L2-normalised, scores every item by cosine against the normalised table (the output head is
// that tied table). An item with text but no interaction scores like any other: cold start. A
// checkpoint carries the table, so serving needs neither the item LLM's forward nor the texts;
// refresh_item_table() must run after training (encode() refuses a stale table).
//
// Training (train_step(), which train::HllmTrainer drives): every item of a batch (the inputs,
// the targets and the shared negatives) is encoded once from its text by the item LLM; the user
// LLM reads the inputs' embeddings; at every supervised position its output is the query, the
// next item's embedding the positive and the pool the negatives; the gradients of the InfoNCE
// flow through the user LLM into the input embeddings and, with those of the positives and
// negatives, back through the item LLM (its token table, blocks, norms and [ITEM] token).
// LoRA (LlamaConfig::lora on either LLM, nn/lora.hpp): that LLM's base weights are frozen
// and its adapters train (the [ITEM] token too); merge_lora() folds them in for serving.
// Texts longer than max_text_tokens are cut to their first max_text_tokens tokens (HLLM's
// max_text_length), so the item LLM's attention is bounded by (max_text_tokens + 1)^2 per item
// and head.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/loss/info_nce.hpp"
#include "distillrec/models/llama.hpp"
#include "distillrec/nn/output_head.hpp"
#include "distillrec/nn/sequence_layout.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::models {

struct HllmConfig {
  ItemId num_items = 0;
  LlamaConfig item_llm;          // vocab_size: the tokenizer's; the [ITEM] token is always on
  LlamaConfig user_llm;          // hidden_size equal to item_llm's; no token table (vocab_size 0)
  Index max_length = 50;         // newest items of a history the user LLM reads
  Index max_text_tokens = 64;    // tokens kept of each item text (BOS included, [ITEM] added)

  /// Both LLMs `hidden` wide with `heads` heads, SwiGLU of 8/3 hidden rounded up to a multiple
  /// of 8 (LLaMA's ratio), the item LLM `item_layers` deep over `vocab_size` tokens, the user LLM
  /// `user_layers` deep.
  static HllmConfig small(ItemId num_items, Index vocab_size, Index hidden = 64, Index item_layers = 2, Index user_layers = 2,
                          Index heads = 4) {
    HllmConfig c;
    c.num_items = num_items;
    LlamaConfig llama;
    llama.hidden_size = hidden;
    llama.num_heads = heads;
    llama.intermediate_size = (hidden * 8 / 3 + 7) / 8 * 8;
    llama.max_positions = 512;
    c.item_llm = llama;
    c.item_llm.vocab_size = vocab_size;
    c.item_llm.num_layers = item_layers;
    c.user_llm = llama;
    c.user_llm.num_layers = user_layers;
    c.normalise();
    return c;
  }

  /// The settings the model implies: the item LLM carries the [ITEM] token, the user LLM has no
  /// token table.
  void normalise() {
    item_llm.item_token = true;
    user_llm.item_token = false;
    user_llm.vocab_size = 0;
  }

  void validate() const {
    if (num_items <= 0) throw ConfigError(distillrec::detail::concat("HLLM: num_items must be positive, got ", num_items));
    if (max_length <= 0) throw ConfigError(distillrec::detail::concat("HLLM: max_length must be positive, got ", max_length));
    if (max_text_tokens <= 0) {
      throw ConfigError(distillrec::detail::concat("HLLM: max_text_tokens must be positive, got ", max_text_tokens));
    }
    if (item_llm.vocab_size <= 0) throw ConfigError("HLLM: the item LLM needs a token table (item_llm.vocab_size > 0)");
    item_llm.validate();
    user_llm.validate();
    if (item_llm.hidden_size != user_llm.hidden_size) {
      throw ConfigError(distillrec::detail::concat("HLLM: the item LLM is ", item_llm.hidden_size, " wide and the user LLM ",
                                                   user_llm.hidden_size, "; they must be equal (no projection between them)"));
    }
    if (item_llm.max_positions < max_text_tokens + 1) {
      throw ConfigError(distillrec::detail::concat("HLLM: max_text_tokens ", max_text_tokens, " + [ITEM] exceeds the item LLM's ",
                                                   item_llm.max_positions, " positions"));
    }
    if (user_llm.max_positions < max_length) {
      throw ConfigError(distillrec::detail::concat("HLLM: max_length ", max_length, " exceeds the user LLM's ", user_llm.max_positions,
                                                   " positions"));
    }
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"model", "hllm"},          {"num_items", num_items},          {"max_length", max_length},
                          {"max_text_tokens", max_text_tokens}, {"item_llm", models::to_json(item_llm)},
                          {"user_llm", models::to_json(user_llm)}};
  }

  /// Parses to_json()'s output; ConfigError naming what is wrong.
  static HllmConfig from_json(const nlohmann::json& j) {
    HllmConfig c;
    try {
      if (j.contains("model") && j.at("model").get<std::string>() != "hllm") {
        throw ConfigError("configuration is for model \"" + j.at("model").get<std::string>() + "\", not hllm");
      }
      c.num_items = j.at("num_items").get<ItemId>();
      c.max_length = j.value("max_length", c.max_length);
      c.max_text_tokens = j.value("max_text_tokens", c.max_text_tokens);
      c.item_llm = llama_config_from_json(j.at("item_llm"), "HLLM item_llm");
      auto user = j.at("user_llm");
      user["vocab_size"] = 0;
      c.user_llm = llama_config_from_json(user, "HLLM user_llm");
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("HLLM configuration: ") + e.what());
    }
    c.normalise();
    c.validate();
    return c;
  }
};

template <typename T = float>
class Hllm {
 public:
  using Scalar = T;
  using Config = HllmConfig;
  using Llama = LlamaModel<T>;
  static constexpr const char* kModelName = "hllm";

  /// Scoring memory (encode()), one per thread.
  struct Workspace {
    typename Llama::Workspace user;
    nn::SequenceLayout layout;
    ScratchMatrix<T> inputs;
  };

  /// Training memory (train_step()).
  struct TrainWorkspace {
    typename Llama::Workspace item, user;
    std::vector<Index> slot;                // per item id: its row among this step's items, or -1
    std::vector<ItemId> items;              // this step's distinct items, in first-seen order
    std::vector<std::vector<int>> texts;    // their token ids
    std::vector<Index> input_rows, target_rows, negative_rows;
    std::vector<std::uint8_t> supervised;
    nn::SequenceLayout layout;
    ScratchMatrix<T> embeddings, grad_embeddings, inputs, positives, negatives, dq, dp, dn;
    typename loss::InfoNce<T>::Workspace nce;
  };

  explicit Hllm(HllmConfig config) : config_((config.normalise(), config.validate(), config)), params_(std::make_unique<Parameters<T>>()) {
    auto& p = *params_;
    item_llm_.emplace(config_.item_llm, p, "item_llm.");
    user_llm_.emplace(config_.user_llm, p, "user_llm.");
    table_ = p.declare("item_table.weight", config_.num_items, hidden_size());
    norms_ = p.declare("item_norms.weight", config_.num_items, 1);
    p.allocate();
    p.set_trainable(table_, false);
    p.set_trainable(norms_, false);
  }

  Hllm(const Hllm&) = delete;
  Hllm& operator=(const Hllm&) = delete;
  Hllm(Hllm&&) = default;
  Hllm& operator=(Hllm&&) = default;

  const HllmConfig& config() const { return config_; }
  Parameters<T>& parameters() { return *params_; }
  const Parameters<T>& parameters() const { return *params_; }
  ItemId num_items() const { return config_.num_items; }
  Index max_length() const { return config_.max_length; }
  Index hidden_size() const { return config_.item_llm.hidden_size; }
  Llama& item_llm() { return *item_llm_; }
  const Llama& item_llm() const { return *item_llm_; }
  Llama& user_llm() { return *user_llm_; }
  const Llama& user_llm() const { return *user_llm_; }

  /// Fresh weights for both LLMs (models/llama.hpp); the item table is stale until
  /// refresh_item_table().
  void initialize(Rng& rng) {
    item_llm_->initialize(rng);
    user_llm_->initialize(rng);
    params_->value(table_).setZero();
    params_->value(norms_).setZero();
    table_ready_ = false;
  }

  /// After loading weights: the item table must be there (a checkpoint saved after
  /// refresh_item_table()), its rows of unit length and their lengths positive.
  void after_load() {
    const auto norms = parameters().value(norms_);
    const auto table = parameters().value(table_);
    for (Index i = 0; i < norms.rows(); ++i) {
      if (!(norms(i, 0) > T(0))) {
        throw ConfigError(distillrec::detail::concat("HLLM: the loaded item table has no embedding for item ", i + 1,
                                                     " (saved before refresh_item_table()?)"));
      }
      const double length = static_cast<double>(table.row(i).norm());
      if (!(std::abs(length - 1.0) < 1e-3)) {
        throw ConfigError(distillrec::detail::concat("HLLM: row ", i, " of item_table.weight (item ", i + 1, ") has length ", length,
                                                     "; the table holds unit vectors"));
      }
    }
    table_ready_ = true;
  }

  /// save_checkpoint asks this first: a checkpoint must carry an item table made from its
  /// weights (serving reads the table, not the texts).
  void check_saveable() const {
    if (!table_ready_) {
      throw ConfigError("HLLM: the item table is older than the weights; call refresh_item_table() before saving");
    }
  }

  /// Every item's text as token ids: tokens[i] is item i + 1's (non-empty, ids below the item
  /// LLM's vocabulary; cut to max_text_tokens). The texts stay with the model (not in
  /// checkpoints: the table carries what serving needs).
  void set_item_tokens(std::vector<std::vector<int>> tokens) {
    if (static_cast<ItemId>(tokens.size()) != config_.num_items) {
      throw ShapeError(distillrec::detail::concat("HLLM: ", tokens.size(), " item texts for ", config_.num_items, " items"));
    }
    check_and_cut(tokens, 0);
    item_tokens_ = std::move(tokens);
    table_ready_ = false;
  }

  /// This model with texts.size() more items (ids N + 1, N + 2, ... in order), recommendable at
  /// once from their text alone: every weight and every existing item's table row copied, the new
  /// items' rows encoded by the item LLM, nothing retrained. Texts as set_item_tokens() takes
  /// them; the model's table must be fresh. The existing items' texts (where the model has them)
  /// are carried over, so the new model refreshes and trains like any other. Serving: build a
  /// serve::Recommender on the returned model and swap it in for the old one, which keeps
  /// answering meanwhile (models and recommenders are immutable while they serve).
  Hllm with_items(std::vector<std::vector<int>> texts) const {
    if (!table_ready_) throw ConfigError("HLLM: with_items needs a fresh item table (refresh_item_table() or a loaded checkpoint)");
    if (texts.empty()) throw ShapeError("HLLM: with_items needs at least one item text");
    const auto old_items = static_cast<Index>(config_.num_items);
    check_and_cut(texts, old_items);
    HllmConfig config = config_;
    config.num_items = static_cast<ItemId>(old_items + static_cast<Index>(texts.size()));
    Hllm extended(config);
    auto& to = *extended.params_;
    for (Index id = 0; id < to.count(); ++id) {
      const auto from = params_->value(params_->find(to.info(id).name));
      auto value = to.value(id);
      if (id == extended.table_ || id == extended.norms_) {
        value.topRows(old_items) = from;
      } else {
        value = from;
      }
    }
    Matrix<T> embeddings(static_cast<Index>(texts.size()), hidden_size());
    typename Llama::Workspace ws;
    item_llm_->encode_items(texts, embeddings, ws);
    extended.write_table_rows(old_items, embeddings);
    if (!item_tokens_.empty()) {
      extended.item_tokens_ = item_tokens_;
      extended.item_tokens_.insert(extended.item_tokens_.end(), texts.begin(), texts.end());
    }
    extended.table_ready_ = true;
    return extended;
  }

  bool has_item_tokens() const { return !item_tokens_.empty(); }
  const std::vector<std::vector<int>>& item_tokens() const { return item_tokens_; }
  /// Whether the item table matches the current weights (refresh_item_table() since the last
  /// change, or a loaded checkpoint).
  bool item_table_ready() const { return table_ready_; }

  /// Encodes every item's text with the item LLM into the item table, `batch` items per pass.
  void refresh_item_table(Index batch = 256) {
    require_texts("refresh_item_table");
    if (batch <= 0) throw ConfigError(distillrec::detail::concat("HLLM: refresh batch must be positive, got ", batch));
    typename Llama::Workspace ws;
    std::vector<std::vector<int>> texts;
    Matrix<T> embeddings;
    for (Index begin = 0; begin < config_.num_items; begin += batch) {
      const Index end = std::min<Index>(config_.num_items, begin + batch);
      texts.assign(item_tokens_.begin() + begin, item_tokens_.begin() + end);
      embeddings.resize(end - begin, hidden_size());
      item_llm_->encode_items(texts, embeddings, ws);
      write_table_rows(begin, embeddings);
    }
    table_ready_ = true;
  }

  /// The model contract's encode(): each history's user vector (L2-normalised), out
  /// [histories, hidden]. Histories non-empty with ids 1..N; the newest max_length items read.
  void encode(const std::vector<Sequence>& histories, MatrixRef<T> out, Workspace& ws) const {
    if (!table_ready_) throw ConfigError("HLLM: the item table is stale; call refresh_item_table() after changing the weights");
    const Index h = hidden_size();
    require_shape(out, static_cast<Index>(histories.size()), h, "HLLM user vectors");
    ws.layout.clear();
    Index total = 0;
    for (std::size_t s = 0; s < histories.size(); ++s) {
      if (histories[s].empty()) throw ShapeError(distillrec::detail::concat("HLLM: history ", s, " is empty"));
      const Index len = std::min<Index>(static_cast<Index>(histories[s].size()), config_.max_length);
      ws.layout.add(len);
      total += len;
    }
    if (histories.empty()) return;
    auto inputs = ws.inputs.resize(total, h);
    const auto table = parameters().value(table_);
    const auto norms = parameters().value(norms_);
    Index row = 0;
    for (std::size_t s = 0; s < histories.size(); ++s) {
      const auto& history = histories[s];
      const Index len = ws.layout.length(static_cast<Index>(s));
      for (std::size_t k = history.size() - static_cast<std::size_t>(len); k < history.size(); ++k) {
        const ItemId item = history[k];
        check_item(item, "history", static_cast<Index>(s));
        inputs.row(row++) = table.row(item - 1) * norms(item - 1, 0);
      }
    }
    const auto states = user_llm_->forward_embeddings(inputs, ws.layout, ws.user);
    for (Index s = 0; s < ws.layout.num_sequences(); ++s) {
      const auto state = states.row(ws.layout.last(s));
      out.row(s) = state / std::max(state.norm(), static_cast<T>(kEps));
    }
  }

  /// The output head: the normalised item table (cosine scores for normalised user vectors).
  /// ConfigError while the table is stale (see encode()).
  nn::HeadWeights<T> output_weights() const {
    if (!table_ready_) throw ConfigError("HLLM: the item table is stale; call refresh_item_table() after changing the weights");
    return nn::HeadWeights<T>{parameters().value(table_), nullptr};
  }

  /// One training step: `sequences` are windows (2..max_length + 1 items, ids 1..N) whose
  /// positions each predict the next item (every_position) or whose newest position alone does;
  /// `negatives` the shared pool (ids 1..N). Every distinct item is encoded once from its text;
  /// returns the InfoNCE (loss/info_nce.hpp, `nce` with log-scale `log_scale`, mean over the
  /// supervised positions or over `denominator` if > 0) and ADDS the gradients of every weight to
  /// parameters().grads(); *grad_log_scale is overwritten. The item table becomes stale.
  /// `mode`: a training mode draws the LoRA adapters' dropout masks (both LLMs have no other
  /// dropout); inference mode (the default) runs without.
  T train_step(const std::vector<Sequence>& sequences, bool every_position, const std::vector<ItemId>& negatives,
               const loss::InfoNce<T>& nce, T log_scale, T* grad_log_scale, TrainWorkspace& ws,
               loss::InfoNceStats* stats = nullptr, Index denominator = 0, const nn::RunMode& mode = nn::RunMode::inference()) {
    require_texts("train_step");
    if (sequences.empty()) throw ShapeError("HLLM: a training step needs at least one sequence");
    if (negatives.empty()) throw ShapeError("HLLM: a training step needs at least one negative");
    const Index h = hidden_size();
    if (ws.slot.size() != static_cast<std::size_t>(config_.num_items) + 1) ws.slot.assign(static_cast<std::size_t>(config_.num_items) + 1, -1);
    for (ItemId item : ws.items) ws.slot[static_cast<std::size_t>(item)] = -1;  // the last step's
    ws.items.clear();
    auto slot_of = [&](ItemId item) {
      Index& slot = ws.slot[static_cast<std::size_t>(item)];
      if (slot < 0) {
        slot = static_cast<Index>(ws.items.size());
        ws.items.push_back(item);
      }
      return slot;
    };
    ws.layout.clear();
    ws.input_rows.clear();
    ws.target_rows.clear();
    ws.negative_rows.clear();
    ws.supervised.clear();
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      const auto& seq = sequences[s];
      const auto n = static_cast<Index>(seq.size());
      if (n < 2 || n > config_.max_length + 1) {
        throw ShapeError(distillrec::detail::concat("HLLM: training sequence ", s, " has ", n, " items; expected 2..",
                                                    config_.max_length + 1, " (a window and its next item)"));
      }
      for (ItemId item : seq) check_item(item, "training sequence", static_cast<Index>(s));
      ws.layout.add(n - 1);
      for (Index t = 0; t + 1 < n; ++t) {
        ws.input_rows.push_back(slot_of(seq[static_cast<std::size_t>(t)]));
        ws.target_rows.push_back(slot_of(seq[static_cast<std::size_t>(t + 1)]));
        ws.supervised.push_back(every_position || t + 2 == n ? 1 : 0);
      }
    }
    for (std::size_t m = 0; m < negatives.size(); ++m) {
      check_item(negatives[m], "negative", static_cast<Index>(m));
      ws.negative_rows.push_back(slot_of(negatives[m]));
    }
    table_ready_ = false;  // the input is valid: the weights' gradients follow (and the update)
    const auto num_items_here = static_cast<Index>(ws.items.size());
    ws.texts.resize(ws.items.size());
    for (std::size_t k = 0; k < ws.items.size(); ++k) ws.texts[k] = item_tokens_[static_cast<std::size_t>(ws.items[k] - 1)];
    auto embeddings = ws.embeddings.resize(num_items_here, h);
    item_llm_->encode_items(ws.texts, embeddings, ws.item, mode);

    const auto rows = static_cast<Index>(ws.input_rows.size());
    const auto pool = static_cast<Index>(ws.negative_rows.size());
    auto inputs = ws.inputs.resize(rows, h), positives = ws.positives.resize(rows, h), pooled = ws.negatives.resize(pool, h);
    for (Index i = 0; i < rows; ++i) {
      inputs.row(i) = embeddings.row(ws.input_rows[static_cast<std::size_t>(i)]);
      positives.row(i) = embeddings.row(ws.target_rows[static_cast<std::size_t>(i)]);
    }
    for (Index m = 0; m < pool; ++m) pooled.row(m) = embeddings.row(ws.negative_rows[static_cast<std::size_t>(m)]);
    const auto states = user_llm_->forward_embeddings(inputs, ws.layout, ws.user, mode);
    auto dq = ws.dq.resize(rows, h), dp = ws.dp.resize(rows, h), dn = ws.dn.resize(pool, h);
    const T value = nce(states, positives, pooled, ws.supervised, log_scale, dq, dp, dn, grad_log_scale, ws.nce, stats, denominator);

    const auto dx = user_llm_->backward_embeddings(dq, ws.user);
    auto grad = ws.grad_embeddings.zeros(num_items_here, h);
    for (Index i = 0; i < rows; ++i) {
      grad.row(ws.input_rows[static_cast<std::size_t>(i)]) += dx.row(i);
      grad.row(ws.target_rows[static_cast<std::size_t>(i)]) += dp.row(i);
    }
    for (Index m = 0; m < pool; ++m) grad.row(ws.negative_rows[static_cast<std::size_t>(m)]) += dn.row(m);
    item_llm_->backward_items(grad, ws.item);
    return value;
  }

 private:
  static constexpr double kEps = 1e-12;

  // Checks texts given for items first + 1, first + 2, ... (non-empty, ids in the item LLM's
  // vocabulary) and cuts them to max_text_tokens.
  void check_and_cut(std::vector<std::vector<int>>& texts, Index first) const {
    for (std::size_t i = 0; i < texts.size(); ++i) {
      auto& t = texts[i];
      const Index item = first + static_cast<Index>(i) + 1;
      if (t.empty()) throw ShapeError(distillrec::detail::concat("HLLM: item ", item, " has an empty token sequence"));
      if (static_cast<Index>(t.size()) > config_.max_text_tokens) t.resize(static_cast<std::size_t>(config_.max_text_tokens));
      for (int id : t) {
        if (id < 0 || id >= config_.item_llm.vocab_size) {
          throw ShapeError(distillrec::detail::concat("HLLM: item ", item, " has token ", id, ", outside 0..", config_.item_llm.vocab_size - 1));
        }
      }
    }
  }

  // Table rows first.. from item embeddings: unit rows and their lengths.
  void write_table_rows(Index first, const Matrix<T>& embeddings) {
    auto table = params_->value(table_);
    auto norms = params_->value(norms_);
    for (Index r = 0; r < embeddings.rows(); ++r) {
      const T norm = embeddings.row(r).norm();
      if (!std::isfinite(static_cast<double>(norm))) {
        throw Error(distillrec::detail::concat("HLLM: item ", first + r + 1, "'s embedding is not finite"));
      }
      const T length = std::max(norm, static_cast<T>(kEps));
      table.row(first + r) = embeddings.row(r) / length;
      norms(first + r, 0) = length;
    }
  }

  void require_texts(const char* what) const {
    if (item_tokens_.empty()) throw ConfigError(distillrec::detail::concat("HLLM: ", what, " needs the item texts (set_item_tokens)"));
  }

  void check_item(ItemId item, const char* where, Index index) const {
    if (item < 1 || item > config_.num_items) {
      throw ShapeError(distillrec::detail::concat("HLLM: ", where, " ", index, " has item id ", item, ", expected 1..", config_.num_items));
    }
  }

  HllmConfig config_;
  std::unique_ptr<Parameters<T>> params_;
  std::optional<Llama> item_llm_, user_llm_;
  typename Parameters<T>::Id table_ = -1, norms_ = -1;
  std::vector<std::vector<int>> item_tokens_;
  bool table_ready_ = false;
};

/// The same model with every LoRA adapter folded into its base weight (nn/lora.hpp): a model
/// without adapters (every weight trainable again), its item texts, and its item table (still
/// valid: the merged weights compute the same function, up to rounding).
template <typename T>
Hllm<T> merge_lora(const Hllm<T>& model) {
  HllmConfig config = model.config();
  const double item_scale = config.item_llm.lora.scale(), user_scale = config.user_llm.lora.scale();
  config.item_llm.lora = nn::LoraOptions{};
  config.user_llm.lora = nn::LoraOptions{};
  Hllm<T> merged(config);
  nn::copy_merging_lora(model.parameters(), merged.parameters(),
                        [&](const std::string& name) { return name.rfind("item_llm.", 0) == 0 ? item_scale : user_scale; });
  if (model.has_item_tokens()) merged.set_item_tokens(model.item_tokens());
  if (model.item_table_ready()) merged.after_load();
  return merged;
}

}  // namespace distillrec::models
