// distillrec/nn/lora.hpp
//
// LoRA (Hu et al., 2021), as Hugging Face PEFT applies it to a linear layer y = x W^T + b:
//
//   y = x W^T + b + (alpha / r) * Dropout(x) A^T B^T       A [r, in], B [out, r]
//
// A is drawn from U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a = sqrt(5))) and B starts
// at zero, so an adapted model starts out equal to its base. The base W (and b) stay frozen:
// nn::Linear computes no gradient for a frozen parameter, Parameters::zero_grad() never touches
// its gradient slice (so it is never resident), and neither the optimiser's moments nor the
// gradient exchange of distributed training visit it. Dropout acts on the adapter's input only
// (PEFT's lora_dropout); the base path never sees it.
//
// Adapters are options of the LLaMA-style models (LlamaConfig::lora, and through it HLLM's item
// and user LLMs; LLMRecConfig::lora): the attention's query, key, value and output projections
// and the SwiGLU's gate, up and down projections get one each, named
// "<linear>.lora_a.weight" [r, in] and "<linear>.lora_b.weight" [out, r] beside the base
// "<linear>.weight". With a rank > 0 the model freezes every base weight it has (token table,
// norms, projections) and trains the adapters (and what a model adds that no checkpoint has,
// such as HLLM's [ITEM] token).
//
// For serving, merge: W' = W + (alpha / r) B A gives the same function without the adapters'
// two extra products per layer (copy_merging_lora() below; the models' merge_lora()).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/nn/init.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <functional>
#include <string>

namespace distillrec::nn {

struct LoraOptions {
  Index rank = 0;             // 0: no adapters
  double alpha = 16.0;        // the update is scaled by alpha / rank (PEFT's lora_alpha)
  double dropout = 0.0;       // on the adapter's input while training (PEFT's lora_dropout)
  bool attention = true;      // adapters on the query, key, value and output projections
  bool feed_forward = true;   // adapters on the feed-forward projections (gate, up, down)

  bool enabled() const { return rank > 0; }
  double scale() const { return rank > 0 ? alpha / static_cast<double>(rank) : 0.0; }
  /// These options for one projection: unchanged where `applies`, rank 0 (no adapter) otherwise.
  LoraOptions where(bool applies) const {
    LoraOptions o = *this;
    if (!applies) o.rank = 0;
    return o;
  }

  void validate() const {
    if (rank < 0) throw ConfigError(detail::concat("LoRA: rank must be >= 0 (0 = no adapters), got ", rank));
    if (rank == 0) return;
    if (!(alpha > 0.0 && std::isfinite(alpha))) throw ConfigError(detail::concat("LoRA: alpha must be positive, got ", alpha));
    if (!(dropout >= 0.0 && dropout < 1.0)) throw ConfigError(detail::concat("LoRA: dropout must be in [0, 1), got ", dropout));
    if (!attention && !feed_forward) {
      throw ConfigError("LoRA: rank > 0 but neither the attention nor the feed-forward projections get adapters");
    }
  }
};

inline nlohmann::json to_json(const LoraOptions& o) {
  return nlohmann::json{{"rank", o.rank}, {"alpha", o.alpha}, {"dropout", o.dropout}, {"attention", o.attention},
                        {"feed_forward", o.feed_forward}};
}

/// Parses to_json()'s output (missing keys keep their defaults); ConfigError naming `what`.
inline LoraOptions lora_options_from_json(const nlohmann::json& j, const std::string& what) {
  LoraOptions o;
  try {
    o.rank = j.value("rank", o.rank);
    o.alpha = j.value("alpha", o.alpha);
    o.dropout = j.value("dropout", o.dropout);
    o.attention = j.value("attention", o.attention);
    o.feed_forward = j.value("feed_forward", o.feed_forward);
    o.validate();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(what + ": " + e.what());
  } catch (const ConfigError& e) {
    throw ConfigError(what + ": " + e.what());
  }
  return o;
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Whether a parameter name is a LoRA adapter's ("...lora_a.weight" or "...lora_b.weight").
inline bool is_lora_parameter(const std::string& name) {
  return ends_with(name, ".lora_a.weight") || ends_with(name, ".lora_b.weight");
}

/// Fresh adapters for every LoRA parameter whose name starts with `prefix`: A from
/// U(-1/sqrt(in), 1/sqrt(in)), B zero (the adapted model equals its base). What a model loaded
/// from a checkpoint without adapters calls before training them.
template <typename T>
void initialize_lora(Parameters<T>& params, Rng& rng, const std::string& prefix = "") {
  for (Index id = 0; id < params.count(); ++id) {
    const auto& name = params.info(id).name;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    if (ends_with(name, ".lora_a.weight")) {
      init_uniform(params.value(id), 1.0 / std::sqrt(static_cast<double>(params.info(id).cols)), rng);
    } else if (ends_with(name, ".lora_b.weight")) {
      params.value(id).setZero();
    }
  }
}

/// Freezes every parameter whose name starts with `prefix` except the LoRA adapters and the
/// names `keep` accepts; returns how many scalars stay trainable under the prefix.
template <typename T>
Index freeze_all_but_lora(Parameters<T>& params, const std::string& prefix,
                          const std::function<bool(const std::string&)>& keep = nullptr) {
  Index trainable = 0;
  for (Index id = 0; id < params.count(); ++id) {
    const auto& info = params.info(id);
    if (info.name.compare(0, prefix.size(), prefix) != 0) continue;
    const bool train = is_lora_parameter(info.name) || (keep && keep(info.name));
    params.set_trainable(id, train);
    if (train) trainable += info.size();
  }
  return trainable;
}

/// Copies every parameter of `to` from the one of the same name in `from`, folding adapters in:
/// where `from` has "<x>.lora_a.weight" and "<x>.lora_b.weight" beside "<x>.weight", `to`'s
/// "<x>.weight" becomes W + scale_of("<x>.weight") * B A. `to` must have no adapters; every one
/// of its parameters must exist in `from` with its shape (ShapeError naming it otherwise).
/// Trainability is left as `to` has it. `from_prefix` precedes every name looked up in `from`
/// (a model that shares a buffer under a prefix, merged into one of its own); scale_of is asked
/// with `to`'s names.
template <typename T>
void copy_merging_lora(const Parameters<T>& from, Parameters<T>& to, const std::function<double(const std::string&)>& scale_of,
                       const std::string& from_prefix = "") {
  for (Index id = 0; id < to.count(); ++id) {
    const auto& info = to.info(id);
    if (is_lora_parameter(info.name)) {
      throw ConfigError("merging LoRA: the merged model still has the adapter \"" + info.name + "\"");
    }
    const Index src = from.find(from_prefix + info.name);
    if (src < 0) throw ShapeError("merging LoRA: the adapted model has no parameter \"" + info.name + "\"");
    if (from.info(src).rows != info.rows || from.info(src).cols != info.cols) {
      throw ShapeError(detail::concat("merging LoRA: \"", info.name, "\" is ", from.info(src).rows, "x", from.info(src).cols,
                                      " in the adapted model and ", info.rows, "x", info.cols, " in the merged one"));
    }
    auto value = to.value(id);
    value = from.value(src);
    if (!ends_with(info.name, ".weight")) continue;
    const std::string base = info.name.substr(0, info.name.size() - std::string(".weight").size());
    const Index a = from.find(from_prefix + base + ".lora_a.weight"), b = from.find(from_prefix + base + ".lora_b.weight");
    if (a < 0 && b < 0) continue;
    if (a < 0 || b < 0) throw ShapeError("merging LoRA: \"" + base + "\" has only one of its two adapter matrices");
    const auto A = from.value(a);
    const auto B = from.value(b);
    if (A.cols() != info.cols || B.rows() != info.rows || A.rows() != B.cols()) {
      throw ShapeError(detail::concat("merging LoRA: the adapters of \"", base, "\" (", B.rows(), "x", B.cols(), " times ", A.rows(), "x",
                                      A.cols(), ") do not fit its ", info.rows, "x", info.cols, " weight"));
    }
    value.noalias() += static_cast<T>(scale_of(info.name)) * (B * A);
  }
}

/// Copies every base parameter of `to` (all but its LoRA adapters, which keep their values) from
/// the one of the same name in `from`: how a trained model becomes the frozen base of an adapted
/// one (build the model with LoRA options, initialize it, then copy). ShapeError naming a
/// parameter `from` lacks or holds in another shape.
template <typename T>
void copy_base_weights(const Parameters<T>& from, Parameters<T>& to) {
  for (Index id = 0; id < to.count(); ++id) {
    const auto& info = to.info(id);
    if (is_lora_parameter(info.name)) continue;
    const Index src = from.find(info.name);
    if (src < 0) throw ShapeError("copying base weights: the source model has no parameter \"" + info.name + "\"");
    if (from.info(src).rows != info.rows || from.info(src).cols != info.cols) {
      throw ShapeError(detail::concat("copying base weights: \"", info.name, "\" is ", from.info(src).rows, "x", from.info(src).cols,
                                      " in the source and ", info.rows, "x", info.cols, " here"));
    }
    to.value(id) = from.value(src);
  }
}

}  // namespace distillrec::nn
