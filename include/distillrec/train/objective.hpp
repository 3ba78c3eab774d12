// distillrec/train/objective.hpp
//
// The base next-item training objective, applied to a sequence model's outputs at the positions
// that have a target, scored through the model's output head (nn/output_head.hpp):
//   bce              SASRec's binary cross-entropy, k sampled negatives per position
//                    (loss/bce.hpp; the negatives come with the batch)
//   softmax          full-softmax cross-entropy over all N items (loss/softmax_ce.hpp)
//   sampled-softmax  softmax over the positive and m negatives shared by the batch, drawn from
//                    popularity^alpha, with logQ correction (loss/sampled_softmax.hpp)
// compute() returns the loss (the mean over the rows given, or over a data-parallel global
// batch's count of them), writes dL/dH and adds the head's
// gradients. The trainer runs it before any loss term (train/loss_term.hpp).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/loss/bce.hpp"
#include "distillrec/loss/sampled_softmax.hpp"
#include "distillrec/loss/softmax_ce.hpp"

#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace distillrec::train {

enum class Objective { kBce, kSoftmax, kSampledSoftmax };

inline std::string to_string(Objective objective) {
  switch (objective) {
    case Objective::kBce: return "bce";
    case Objective::kSoftmax: return "softmax";
    case Objective::kSampledSoftmax: return "sampled-softmax";
  }
  return "?";
}

inline Objective parse_objective(const std::string& name) {
  if (name == "bce") return Objective::kBce;
  if (name == "softmax" || name == "ce") return Objective::kSoftmax;
  if (name == "sampled-softmax") return Objective::kSampledSoftmax;
  throw ConfigError("unknown objective \"" + name + "\" (expected bce, softmax or sampled-softmax)");
}

struct ObjectiveConfig {
  Objective objective = Objective::kBce;
  Index sampled_negatives = 256;   // sampled-softmax: negatives shared by a batch
  double proposal_alpha = 0.75;    // sampled-softmax: proposal proportional to count^alpha
  double temperature = 1.0;        // sampled-softmax: logits / temperature
  /// softmax: precision of the catalogue GEMMs (logits and both gradients); bf16 rounds their
  /// inputs to bfloat16 and accumulates in fp32 (loss/softmax_ce.hpp), float models only.
  backend::MatmulPrecision catalogue_precision = backend::MatmulPrecision::kFp32;
};

template <typename T>
class NextItemObjective {
 public:
  /// item_counts[i]: training occurrences of item i (needed by sampled-softmax only).
  NextItemObjective(const ObjectiveConfig& config, const std::vector<double>& item_counts) : config_(config) {
    if (config.catalogue_precision == backend::MatmulPrecision::kBf16 && !std::is_same<T, float>::value) {
      throw ConfigError("objective: bf16 catalogue GEMMs need a float model");
    }
    if (config.catalogue_precision == backend::MatmulPrecision::kBf16 && config.objective != Objective::kSoftmax) {
      throw ConfigError("objective: bf16 catalogue GEMMs apply to the full softmax only, not to " + to_string(config.objective));
    }
    softmax_.precision = config.catalogue_precision;
    if (config.objective == Objective::kSampledSoftmax) {
      if (config.sampled_negatives <= 0) throw ConfigError("sampled-softmax needs at least one negative");
      proposal_.emplace(item_counts, config.proposal_alpha);
    }
  }

  const ObjectiveConfig& config() const { return config_; }

  /// h [n, d]: output vectors; positives [n]; negatives [n * num_negatives] (bce only).
  /// denominator > 0: divide by it instead of n (a data-parallel shard: its global batch's count).
  T compute(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, const std::vector<ItemId>& positives,
            const std::vector<ItemId>& negatives, Index num_negatives, MatrixRef<T> grad_h, nn::HeadGradients<T> grad_head,
            Rng& rng, Index denominator = 0) {
    shared_negatives_.clear();
    bce_.denominator = softmax_.denominator = sampled_.denominator = denominator;
    switch (config_.objective) {
      case Objective::kBce: {
        if (num_negatives <= 0) throw ConfigError("bce objective: the batch carries no negatives");
        return bce_(h, head, positives, negatives, num_negatives, grad_h, grad_head, bce_ws_);
      }
      case Objective::kSoftmax:
        return softmax_(h, head, positives, grad_h, grad_head, softmax_ws_);
      case Objective::kSampledSoftmax: {
        const auto m = static_cast<std::size_t>(config_.sampled_negatives);
        shared_negatives_.resize(m);
        log_q_negatives_.resize(m);
        for (std::size_t j = 0; j < m; ++j) {
          shared_negatives_[j] = proposal_->sample(rng);
          log_q_negatives_[j] = static_cast<T>(proposal_->log_probability(shared_negatives_[j]));
        }
        log_q_positives_.resize(positives.size());
        for (std::size_t i = 0; i < positives.size(); ++i) {
          const ItemId p = positives[i];
          if (p < 1 || p > proposal_->num_items()) {
            throw ShapeError(distillrec::detail::concat("sampled softmax: positive item ", p, " is outside 1..", proposal_->num_items()));
          }
          log_q_positives_[i] = static_cast<T>(proposal_->log_probability(p));
        }
        sampled_.temperature = static_cast<T>(config_.temperature);
        return sampled_(h, head, positives, log_q_positives_, shared_negatives_, log_q_negatives_, grad_h, grad_head,
                        sampled_ws_);
      }
    }
    throw ConfigError("unknown objective");
  }

  /// What the full softmax's catalogue GEMMs ran on (bf16: oneDNN's kernel or the portable path).
  std::string catalogue_description() const {
    return config_.catalogue_precision == backend::MatmulPrecision::kBf16 ? "bf16, " + softmax_ws_.gemm.description() : "fp32";
  }

  /// The negatives sampled-softmax drew for the last batch (empty for the other objectives).
  const std::vector<ItemId>& shared_negatives() const { return shared_negatives_; }

 private:
  ObjectiveConfig config_;
  std::optional<loss::PopularityProposal> proposal_;
  loss::SampledBinaryCrossEntropy<T> bce_;
  typename loss::SampledBinaryCrossEntropy<T>::Workspace bce_ws_;
  loss::CatalogueSoftmaxCrossEntropy<T> softmax_;
  typename loss::CatalogueSoftmaxCrossEntropy<T>::Workspace softmax_ws_;
  loss::SampledSoftmaxCrossEntropy<T> sampled_;
  typename loss::SampledSoftmaxCrossEntropy<T>::Workspace sampled_ws_;
  std::vector<ItemId> shared_negatives_;
  std::vector<T> log_q_negatives_, log_q_positives_;
};

}  // namespace distillrec::train
