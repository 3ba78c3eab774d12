// distillrec/models/model.hpp
//
// The model contract: everything the trainer, the evaluator, the recommender and checkpoint IO
// ask of a sequence model, and nothing more. A new model is a header that provides these
// pieces; nothing else in the library changes. SASRec, LLMRec and GRU4Rec conform; the README's
// "Writing a model" walks through it with GRU4Rec.
//
// A SCORING model (what evaluation and serving need; the popularity baseline is one):
//
//   using Scalar = float;                     // or double (gradient checks)
//   struct Workspace;                         // per-call memory, default-constructible; one per
//                                             // thread, reused across calls
//   ItemId num_items() const;                 // items are 1..num_items
//   void encode(const std::vector<Sequence>& histories, MatrixRef<Scalar> out,
//               Workspace& ws) const;         // output vectors at each history's newest item,
//                                             // out [histories, d]; thread-safe for distinct
//                                             // workspaces (weights only read)
//   nn::HeadWeights<Scalar> output_weights() const;
//                                             // the output head scoring those vectors
//                                             // (nn/output_head.hpp: tied table or untied
//                                             // linear with bias); d = output_weights().dim()
//
// A SEQUENCE model (what training and checkpoints need) is a scoring model that also has:
//
//   struct Config {                           // hyper-parameters; from_json validates and throws
//     nlohmann::json to_json() const;         // ConfigError; the JSON travels in checkpoints
//     static Config from_json(const nlohmann::json&);
//   };
//   static constexpr const char* kModelName;  // checkpoint "model" metadata ("sasrec", ...)
//   explicit Model(const Config&);            // declares and allocates its parameters
//   const Config& config() const;
//   Parameters<Scalar>& parameters();         // one flat buffer (core/params.hpp); names are
//   const Parameters<Scalar>& parameters() const;  // the checkpoint tensor names
//   void initialize(Rng& rng);                // fresh weights from a seeded generator
//   void after_load();                        // re-establish invariants after loading weights
//   Index max_length() const;                 // longest window it reads
//   ConstMatrixMap<Scalar> forward_train(const data::TrainingBatch& batch, Rng& rng,
//                                        Workspace& ws) const;
//                                             // packs the batch into ws (Workspace derives from
//                                             // models::PackedTokens: layout, targets, ...) and
//                                             // returns the output vectors at EVERY packed token
//                                             // [tokens, d], dropout drawn from rng
//   void backward(const ConstMatrixRef<Scalar>& grad_outputs, Workspace& ws);
//                                             // adds dL/dparameters for dL/doutputs (parameter
//                                             // gradients accumulate, nn/backward.hpp)
//   nn::HeadGradients<Scalar> output_gradients();
//                                             // where losses add the head's gradients
//
// Optional, asked for by the features that need it (each checks with a readable message):
//
//   void check_saveable() const;              // throws if the model's state must not be saved
//                                             // as it is (HLLM: an item table older than its
//                                             // weights); save_checkpoint calls it
//
//   nn::Embedding<Scalar>& input_item_embedding();
//                                             // the item lookup of the input, for collaborative
//                                             // embedding distillation's row offsets
//                                             // (distill/embedding_distillation.hpp)
//   Index session_cache_size() const;         // incremental sessions (serve/session.hpp): the
//   void session_append(Scalar* cache, Index position, ItemId item,
//                       MatrixRef<Scalar> out, Workspace& ws) const;
//                                             // cache's scalars, and one appended event at
//                                             // `position` (the items before it): the cache
//                                             // advanced in place, out [1, d] equal to encode()
//                                             // of the items so far, for as long as they fit
//                                             // max_length (a model without these re-encodes
//                                             // its window on every append)
//
// check_scoring_model<Model>() and check_sequence_model<Model>() state each requirement as a
// static_assert whose message names the missing piece; the trainer, the evaluator, the
// recommender and checkpoint IO call them, so a model that misses something fails to compile
// with "distillrec model contract: ..." rather than deep inside a template.
#pragma once

#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/models/packing.hpp"
#include "distillrec/nn/embedding.hpp"
#include "distillrec/nn/output_head.hpp"

#include <nlohmann/json.hpp>

#include <type_traits>
#include <utility>
#include <vector>

namespace distillrec::models {

namespace contract {

template <typename...>
using void_t = void;

#define DISTILLREC_CONTRACT_TRAIT(name, expression)                          \
  template <typename M, typename = void>                                     \
  struct name : std::false_type {};                                          \
  template <typename M>                                                      \
  struct name<M, void_t<decltype(expression)>> : std::true_type {}

template <typename M>
using S = typename M::Scalar;
template <typename M>
using W = typename M::Workspace;

DISTILLREC_CONTRACT_TRAIT(has_scalar, std::declval<typename M::Scalar>());
DISTILLREC_CONTRACT_TRAIT(has_workspace, W<M>{});
DISTILLREC_CONTRACT_TRAIT(has_num_items, static_cast<ItemId>(std::declval<const M&>().num_items()));
DISTILLREC_CONTRACT_TRAIT(has_encode, std::declval<const M&>().encode(std::declval<const std::vector<Sequence>&>(),
                                                                      std::declval<MatrixRef<S<M>>>(), std::declval<W<M>&>()));
DISTILLREC_CONTRACT_TRAIT(has_output_weights,
                          static_cast<nn::HeadWeights<S<M>>>(std::declval<const M&>().output_weights()));
DISTILLREC_CONTRACT_TRAIT(has_config_json, static_cast<nlohmann::json>(std::declval<const typename M::Config&>().to_json()));
DISTILLREC_CONTRACT_TRAIT(has_config_from_json,
                          static_cast<typename M::Config>(M::Config::from_json(std::declval<const nlohmann::json&>())));
DISTILLREC_CONTRACT_TRAIT(has_model_name, static_cast<const char*>(M::kModelName));
DISTILLREC_CONTRACT_TRAIT(has_config_constructor, M(std::declval<const typename M::Config&>()));
DISTILLREC_CONTRACT_TRAIT(has_config, static_cast<const typename M::Config&>(std::declval<const M&>().config()));
DISTILLREC_CONTRACT_TRAIT(has_parameters, (static_cast<Parameters<S<M>>&>(std::declval<M&>().parameters()),
                                           static_cast<const Parameters<S<M>>&>(std::declval<const M&>().parameters())));
DISTILLREC_CONTRACT_TRAIT(has_initialize, std::declval<M&>().initialize(std::declval<Rng&>()));
DISTILLREC_CONTRACT_TRAIT(has_after_load, std::declval<M&>().after_load());
DISTILLREC_CONTRACT_TRAIT(has_max_length, static_cast<Index>(std::declval<const M&>().max_length()));
DISTILLREC_CONTRACT_TRAIT(has_forward_train,
                          static_cast<ConstMatrixMap<S<M>>>(std::declval<const M&>().forward_train(
                              std::declval<const data::TrainingBatch&>(), std::declval<Rng&>(), std::declval<W<M>&>())));
DISTILLREC_CONTRACT_TRAIT(has_backward,
                          std::declval<M&>().backward(std::declval<const ConstMatrixRef<S<M>>&>(), std::declval<W<M>&>()));
DISTILLREC_CONTRACT_TRAIT(has_output_gradients, static_cast<nn::HeadGradients<S<M>>>(std::declval<M&>().output_gradients()));
DISTILLREC_CONTRACT_TRAIT(has_input_item_embedding, static_cast<nn::Embedding<S<M>>&>(std::declval<M&>().input_item_embedding()));
DISTILLREC_CONTRACT_TRAIT(has_session_append,
                          (static_cast<Index>(std::declval<const M&>().session_cache_size()),
                           std::declval<const M&>().session_append(std::declval<S<M>*>(), Index{}, ItemId{}, std::declval<MatrixRef<S<M>>>(),
                                                                   std::declval<W<M>&>())));

DISTILLREC_CONTRACT_TRAIT(has_check_saveable, std::declval<const M&>().check_saveable());

#undef DISTILLREC_CONTRACT_TRAIT

template <typename M, typename = void>
struct workspace_packs_tokens : std::false_type {};
template <typename M>
struct workspace_packs_tokens<M, void_t<W<M>>> : std::is_base_of<PackedTokens, W<M>> {};

template <typename M, typename = void>
struct floating_scalar : std::false_type {};
template <typename M>
struct floating_scalar<M, void_t<S<M>>> : std::is_floating_point<S<M>> {};

}  // namespace contract

/// True when Model provides everything evaluation and serving use.
template <typename Model>
inline constexpr bool is_scoring_model_v =
    contract::floating_scalar<Model>::value && contract::has_workspace<Model>::value &&
    contract::has_num_items<Model>::value && contract::has_encode<Model>::value && contract::has_output_weights<Model>::value;

/// True when Model also provides everything training and checkpoints use.
template <typename Model>
inline constexpr bool is_sequence_model_v =
    is_scoring_model_v<Model> && contract::has_config_json<Model>::value && contract::has_config_from_json<Model>::value &&
    contract::has_model_name<Model>::value && contract::has_config_constructor<Model>::value &&
    contract::has_config<Model>::value && contract::has_parameters<Model>::value && contract::has_initialize<Model>::value &&
    contract::has_after_load<Model>::value && contract::has_max_length<Model>::value &&
    contract::has_forward_train<Model>::value && contract::has_backward<Model>::value &&
    contract::has_output_gradients<Model>::value && contract::workspace_packs_tokens<Model>::value;

/// Compile-time check of the scoring contract; each missing piece is its own error message.
template <typename Model>
constexpr bool check_scoring_model() {
  static_assert(contract::has_scalar<Model>::value,
                "distillrec model contract: the model must declare `using Scalar = float;` (or double)");
  static_assert(contract::floating_scalar<Model>::value, "distillrec model contract: Model::Scalar must be float or double");
  static_assert(contract::has_workspace<Model>::value,
                "distillrec model contract: the model must declare a default-constructible `struct Workspace` (per-call memory)");
  static_assert(contract::has_num_items<Model>::value, "distillrec model contract: missing `ItemId num_items() const`");
  static_assert(contract::has_encode<Model>::value,
                "distillrec model contract: missing `void encode(const std::vector<Sequence>& histories, "
                "MatrixRef<Scalar> out, Workspace& ws) const`");
  static_assert(contract::has_output_weights<Model>::value,
                "distillrec model contract: missing `nn::HeadWeights<Scalar> output_weights() const` (the output head)");
  return true;
}

/// Compile-time check of what checkpoint IO asks (io/checkpoint.hpp): a scoring model with a
/// JSON configuration, a checkpoint name, a constructor from its configuration, its parameters
/// and after_load(). Every sequence model has these; so does a model trained by a trainer of
/// its own (models/hllm.hpp).
template <typename Model>
constexpr bool check_checkpoint_model() {
  check_scoring_model<Model>();
  static_assert(contract::has_config_json<Model>::value,
                "distillrec model contract: missing `struct Config` with `nlohmann::json to_json() const`");
  static_assert(contract::has_config_from_json<Model>::value,
                "distillrec model contract: missing `static Config Config::from_json(const nlohmann::json&)`");
  static_assert(contract::has_model_name<Model>::value,
                "distillrec model contract: missing `static constexpr const char* kModelName` (checkpoint model name)");
  static_assert(contract::has_config_constructor<Model>::value,
                "distillrec model contract: missing the constructor `explicit Model(const Config&)`");
  static_assert(contract::has_config<Model>::value, "distillrec model contract: missing `const Config& config() const`");
  static_assert(contract::has_parameters<Model>::value,
                "distillrec model contract: missing `Parameters<Scalar>& parameters()` and its const overload");
  static_assert(contract::has_after_load<Model>::value, "distillrec model contract: missing `void after_load()`");
  return true;
}

/// Compile-time check of the whole sequence-model contract.
template <typename Model>
constexpr bool check_sequence_model() {
  check_checkpoint_model<Model>();
  static_assert(contract::has_initialize<Model>::value, "distillrec model contract: missing `void initialize(Rng& rng)`");
  static_assert(contract::has_max_length<Model>::value, "distillrec model contract: missing `Index max_length() const`");
  static_assert(contract::has_forward_train<Model>::value,
                "distillrec model contract: missing `ConstMatrixMap<Scalar> forward_train(const data::TrainingBatch& batch, "
                "Rng& rng, Workspace& ws) const`");
  static_assert(contract::has_backward<Model>::value,
                "distillrec model contract: missing `void backward(const ConstMatrixRef<Scalar>& grad_outputs, Workspace& ws)`");
  static_assert(contract::has_output_gradients<Model>::value,
                "distillrec model contract: missing `nn::HeadGradients<Scalar> output_gradients()`");
  static_assert(contract::workspace_packs_tokens<Model>::value,
                "distillrec model contract: Model::Workspace must derive from models::PackedTokens (the packed batch the "
                "trainer reads: layout, targets, negatives)");
  return true;
}

}  // namespace distillrec::models
