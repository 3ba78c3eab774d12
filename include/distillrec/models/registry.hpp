// distillrec/models/registry.hpp
//
// The library's sequence models by checkpoint name, for programs that handle whichever model a
// file or a flag names:
//
//   with_model_type<T>(name, visitor)        calls visitor(ModelTag<M>{}) for the sequence model M
//                                            (trained by train::Trainer) whose kModelName is
//                                            `name` ("sasrec", "gru4rec", "llm_rec"); ConfigError
//                                            naming the known ones
//   with_checkpoint_model<T>(path, visitor)  loads the checkpoint as the model its metadata names
//                                            (those, or "hllm": models/hllm.hpp, trained by its
//                                            own trainer) and calls visitor(std::shared_ptr<M>);
//                                            the visitor may use the scoring contract, config()
//                                            and parameters() (models/model.hpp)
//
// A new model joins by adding its type to ModelTypes (a sequence model) or to CheckpointModelTypes
// (a model with the checkpoint part of the contract only) below.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/hllm.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/models/sasrec.hpp"

#include <memory>
#include <string>
#include <utility>

namespace distillrec::models {

template <typename Model>
struct ModelTag {
  using type = Model;
};

template <typename... Models>
struct TypeList {};

/// The sequence models a checkpoint may hold, with scalar T.
template <typename T>
using ModelTypes = TypeList<SASRec<T>, GRU4Rec<T>, LLMRec<T>>;

/// Every model a checkpoint may hold and a program may load to evaluate or serve.
template <typename T>
using CheckpointModelTypes = TypeList<SASRec<T>, GRU4Rec<T>, LLMRec<T>, Hllm<T>>;

namespace detail {

// detail::concat written in this namespace means the library-wide helper.
using distillrec::detail::concat;

template <typename Visitor, typename First, typename... Rest>
decltype(auto) dispatch(const std::string& name, Visitor&& visitor, TypeList<First, Rest...>, const std::string& known) {
  static_assert(check_checkpoint_model<First>());
  if (name == First::kModelName) return visitor(ModelTag<First>{});
  const std::string names = known.empty() ? std::string(First::kModelName) : known + ", " + First::kModelName;
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch(name, std::forward<Visitor>(visitor), TypeList<Rest...>{}, names);
  } else {
    throw ConfigError("unknown model \"" + name + "\" (known: " + names + ")");
    return visitor(ModelTag<First>{});  // unreachable; fixes the return type
  }
}

}  // namespace detail

/// Calls visitor(ModelTag<M>{}) for the sequence model named `name`; every branch must return the
/// same type.
template <typename T = float, typename Visitor>
decltype(auto) with_model_type(const std::string& name, Visitor&& visitor) {
  static_assert(check_sequence_model<SASRec<T>>() && check_sequence_model<GRU4Rec<T>>() && check_sequence_model<LLMRec<T>>());
  return detail::dispatch(name, std::forward<Visitor>(visitor), ModelTypes<T>{}, "");
}

/// Loads a checkpoint of any of the library's models (the type from its metadata) and calls
/// visitor(std::shared_ptr<M>) with it.
template <typename T = float, typename Visitor>
decltype(auto) with_checkpoint_model(const std::string& path, Visitor&& visitor) {
  const std::string name = io::checkpoint_model_name(io::SafetensorsReader(path));
  return detail::dispatch(name, [&](auto tag) -> decltype(auto) {
    using Model = typename decltype(tag)::type;
    return visitor(std::make_shared<Model>(io::load_checkpoint<Model>(path)));
  }, CheckpointModelTypes<T>{}, "");
}

}  // namespace distillrec::models
