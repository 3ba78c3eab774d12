// distillrec/core/collective.hpp
//
// What data-parallel work needs from a communication layer, and nothing more: the process's
// rank among `size` processes, in-place sums across all of them (an allreduce), a broadcast
// from rank 0, and agreement on failure. The trainer (train/trainer.hpp, TrainerConfig::
// collective) shards every global batch over the processes, sums the gradients with one call
// of sum() per step, and keeps every decision (best epoch, early stop) identical everywhere;
// full-ranking evaluation (eval/full_ranking.hpp, FullRankingOptions::collective) ranks a share
// of the examples on each process and sums the ranks.
//
// The library's implementation runs on MPI (distillrec/mpi/mpi.hpp, CMake target
// distillrec::mpi); without a collective the trainer is a single process. Every call is
// collective: all processes make the same calls in the same order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace distillrec {

class Collective {
 public:
  virtual ~Collective() = default;

  /// This process's rank in 0..size()-1, and the number of processes.
  virtual int rank() const = 0;
  virtual int size() const = 0;

  /// In-place elementwise sums across all processes (every process gets the same result).
  virtual void sum(float* data, std::size_t count) = 0;
  virtual void sum(double* data, std::size_t count) = 0;

  /// Rank 0's bytes copied to every process (same count everywhere).
  virtual void broadcast(void* data, std::size_t bytes) = 0;

  /// Whether any process passes true (every process gets the same answer): how a failure on one
  /// shard stops all of them instead of leaving the others waiting.
  virtual bool any(bool flag) {
    double v = flag ? 1.0 : 0.0;
    sum(&v, 1);
    return v > 0.0;
  }

  /// A short description for progress output ("MPI, 2 processes").
  virtual std::string description() const = 0;
};

}  // namespace distillrec
