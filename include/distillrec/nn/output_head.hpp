// distillrec/nn/output_head.hpp
//
// The output head: how a model's output vector h [d] scores the items 1..N. Every loss, the
// evaluator and the recommender score through it, so a model trains, evaluates and serves the
// same way whichever head it has:
//
//   score(h, i) = h . W[i - 1] + b[i - 1],    i = 1..N  (column j of a score row is item j + 1)
//
//   tied     W = rows 1..N of the model's item embedding table E [(N+1), d] (row 0 is padding
//            and never scored); no bias. SASRec and LLMRec.
//   untied   its own "<name>.weight" [N, d] and "<name>.bias" [1, N]: PyTorch's nn.Linear(d, N)
//            with bias, DLLM2Rec's s_fc (GRU4Rec, SASRec students). Initialised as nn.Linear,
//            U(-1/sqrt(d), 1/sqrt(d)) for weight and bias.
//
// HeadWeights is the read-only view scoring takes; HeadGradients is where losses add their
// gradients: its weight has no rows when the weight is frozen (a frozen item table), its bias is
// null when there is none (or it is frozen).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/nn/init.hpp"

#include <cmath>
#include <string>
#include <utility>

namespace distillrec::nn {

enum class HeadKind { kTied, kUntied };

inline std::string to_string(HeadKind kind) { return kind == HeadKind::kTied ? "tied" : "untied"; }

inline HeadKind parse_head_kind(const std::string& name) {
  if (name == "tied") return HeadKind::kTied;
  if (name == "untied") return HeadKind::kUntied;
  throw ConfigError("unknown output head \"" + name + "\" (expected tied or untied)");
}

/// Read-only view of a head: what scoring needs.
template <typename T>
struct HeadWeights {
  ConstMatrixMap<T> weight{nullptr, 0, 0};  // [N, d]: row j scores item j + 1
  const T* bias = nullptr;                  // [N], or nullptr

  Index num_items() const { return weight.rows(); }
  Index dim() const { return weight.cols(); }

  /// The score of item (1..N) for one output vector h [d] (a row expression).
  template <typename Row>
  T score(const Row& h, ItemId item) const {
    const T s = h.dot(weight.row(item - 1));
    return bias != nullptr ? s + bias[item - 1] : s;
  }
};

/// Where losses add the head's gradients.
template <typename T>
struct HeadGradients {
  MatrixMap<T> weight{nullptr, 0, 0};  // [N, d], or no rows when the weight is frozen
  T* bias = nullptr;                   // [N], or nullptr (no bias, or frozen)

  bool has_weight() const { return weight.rows() > 0; }

  /// d score(h, item) = g: weight row += g h, bias += g.
  template <typename Row>
  void add(ItemId item, T g, const Row& h) {
    if (has_weight()) weight.row(item - 1) += g * h;
    if (bias != nullptr) bias[item - 1] += g;
  }
};

template <typename T>
class OutputHead {
 public:
  using Scalar = T;

  /// Scores with rows 1..N of an item table parameter [(N+1), d] (row 0 = padding).
  static OutputHead tied(Parameters<T>& params, Index table_id) {
    OutputHead head(params, HeadKind::kTied);
    head.weight_ = table_id;
    return head;
  }

  /// Declares "<name>.weight" [N, d] and, with bias, "<name>.bias" [1, N].
  static OutputHead untied(Parameters<T>& params, const std::string& name, ItemId num_items, Index dim, bool bias = true) {
    if (num_items <= 0 || dim <= 0) {
      throw ConfigError(detail::concat("output head \"", name, "\": needs positive num_items and dim, got ", num_items, " and ", dim));
    }
    OutputHead head(params, HeadKind::kUntied);
    head.weight_ = params.declare(name + ".weight", num_items, dim);
    if (bias) head.bias_ = params.declare(name + ".bias", 1, num_items);
    return head;
  }

  /// Untied: nn.Linear's default; tied: nothing (the item table initialises itself).
  void initialize(Rng& rng) {
    if (kind_ == HeadKind::kTied) return;
    const double bound = 1.0 / std::sqrt(static_cast<double>(dim()));
    init_uniform(params_->value(weight_), bound, rng);
    if (bias_ >= 0) init_uniform(params_->value(bias_), bound, rng);
  }

  HeadKind kind() const { return kind_; }
  Index weight_id() const { return weight_; }
  Index bias_id() const { return bias_; }
  bool has_bias() const { return bias_ >= 0; }
  Index num_items() const { return rows() - first_row(); }
  Index dim() const { return params_->info(weight_).cols; }

  HeadWeights<T> weights() const {
    const auto w = std::as_const(*params_).value(weight_);
    return HeadWeights<T>{ConstMatrixMap<T>(w.data() + first_row() * w.cols(), num_items(), w.cols()),
                          bias_ >= 0 ? std::as_const(*params_).value(bias_).data() : nullptr};
  }

  HeadGradients<T> gradients() {
    const bool weight_trainable = params_->info(weight_).trainable;
    auto g = params_->grad(weight_);
    T* bias = bias_ >= 0 && params_->info(bias_).trainable ? params_->grad(bias_).data() : nullptr;
    return HeadGradients<T>{MatrixMap<T>(g.data() + first_row() * g.cols(), weight_trainable ? num_items() : 0, g.cols()), bias};
  }

 private:
  OutputHead(Parameters<T>& params, HeadKind kind) : params_(&params), kind_(kind) {}
  Index first_row() const { return kind_ == HeadKind::kTied ? 1 : 0; }
  Index rows() const { return params_->info(weight_).rows; }

  Parameters<T>* params_;
  HeadKind kind_;
  Index weight_ = -1, bias_ = -1;
};

}  // namespace distillrec::nn
