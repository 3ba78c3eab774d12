// distillrec/nn/run_mode.hpp
//
// Whether a forward pass trains (dropout active, random masks) or infers (deterministic, no
// randomness, safe to run from many threads on shared weights).
//
// Training draws its masks in one of two ways:
//   sequential   from the given generator, site after site, in the order the layers run: the
//                masks depend on how the batch was packed (the library's default)
//   per example  every mask row keyed by what it belongs to: the step's seed, the dropout site
//                (the n-th dropout call of the forward pass), and the packed row's key (its
//                training example and window position; for attention, the sequence's example
//                and the head). A row's mask is then the same whatever else is in the batch, so
//                training sharded over processes (data-parallel) draws exactly the masks one
//                process would (train/trainer.hpp, TrainerConfig::dropout_streams).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"

#include <cstdint>

namespace distillrec::nn {

struct RunMode {
  bool training = false;
  Rng* rng = nullptr;  // required when training

  // Per-example masks (keyed): set when row_keys is not null.
  const std::uint64_t* row_keys = nullptr;       // one per packed token row
  Index num_rows = 0;
  const std::uint64_t* sequence_keys = nullptr;  // one per packed sequence
  Index num_sequences = 0;
  std::uint64_t step_seed = 0;
  mutable std::uint64_t site = 0;                // keyed mode: dropout sites drawn so far

  static RunMode inference() { return RunMode{}; }
  static RunMode train(Rng& rng) {
    RunMode mode;
    mode.training = true;
    mode.rng = &rng;
    return mode;
  }
  /// Training with per-example masks: keys of the packed token rows and sequences (kept alive by
  /// the caller for the whole forward pass) and the step's seed.
  static RunMode train_keyed(Rng& rng, const std::uint64_t* row_keys, Index num_rows, const std::uint64_t* sequence_keys,
                             Index num_sequences, std::uint64_t step_seed) {
    RunMode mode = train(rng);
    mode.row_keys = row_keys;
    mode.num_rows = num_rows;
    mode.sequence_keys = sequence_keys;
    mode.num_sequences = num_sequences;
    mode.step_seed = step_seed;
    return mode;
  }

  bool keyed() const { return row_keys != nullptr; }

  /// The generator for random masks; throws if training without one.
  Rng& generator() const {
    if (rng == nullptr) throw ConfigError("training forward pass needs a random generator");
    return *rng;
  }

  /// Keyed mode: the seed of the next dropout site (sites are numbered in call order, which is
  /// fixed by the model's structure, not by the batch).
  std::uint64_t next_site_seed() const {
    return Rng(step_seed).derive(site++).next();
  }

  /// Keyed mode: the generator of one row (or sequence) key at a site.
  static Rng keyed_stream(std::uint64_t site_seed, std::uint64_t key) { return Rng(site_seed).derive(key); }
};

}  // namespace distillrec::nn
