// distillrec/nn/run_mode.hpp
//
// Whether a forward pass trains (dropout active, random masks drawn from the given generator)
// or infers (deterministic, no randomness, safe to run from many threads on shared weights).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"

namespace distillrec::nn {

struct RunMode {
  bool training = false;
  Rng* rng = nullptr;  // required when training

  static RunMode inference() { return RunMode{false, nullptr}; }
  static RunMode train(Rng& rng) { return RunMode{true, &rng}; }

  /// The generator for random masks; throws if training without one.
  Rng& generator() const {
    if (rng == nullptr) throw ConfigError("training forward pass needs a random generator");
    return *rng;
  }
};

}  // namespace distillrec::nn
