// distillrec/core/collective.hpp
//
// What data-parallel work needs from a communication layer, and nothing more: the process's
// rank among `size` processes, in-place sums across all of them (an allreduce), a bitwise OR,
// a broadcast from rank 0, and agreement on failure. The trainer (train/trainer.hpp, TrainerConfig::
// collective) shards every global batch over the processes, sums the gradients with one call
// of sum() per step, and keeps every decision (best epoch, early stop) identical everywhere;
// full-ranking evaluation (eval/full_ranking.hpp, FullRankingOptions::collective) ranks a share
// of the examples on each process and sums the ranks.
//
// The library's implementation runs on MPI (distillrec/mpi/mpi.hpp, CMake target
// distillrec::mpi); without a collective the trainer is a single process. Every call is
// collective: all processes make the same calls in the same order.
#pragma once

#include "distillrec/core/error.hpp"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

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

  /// In-place elementwise bitwise OR across all processes: which rows of a table any process
  /// touched (the sparse item-row gradient exchange, train/gradient_exchange.hpp). This default
  /// goes through sum() one bit at a time (64 doubles per word, allocated per call: the
  /// trainer's steady-state steps then allocate); implementations with a native OR (MPI_BOR)
  /// override it.
  virtual void bitwise_or(std::uint64_t* data, std::size_t count) {
    std::vector<double> bits(count * 64);
    for (std::size_t w = 0; w < count; ++w)
      for (std::size_t b = 0; b < 64; ++b) bits[w * 64 + b] = (data[w] >> b) & 1U ? 1.0 : 0.0;
    sum(bits.data(), bits.size());
    for (std::size_t w = 0; w < count; ++w) {
      std::uint64_t word = 0;
      for (std::size_t b = 0; b < 64; ++b) word |= bits[w * 64 + b] > 0.0 ? std::uint64_t{1} << b : 0;
      data[w] = word;
    }
  }

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

/// Runs `work` (a process's share of a sharded computation) and then agrees with the other
/// processes on whether every share succeeded, so that a failure on one process stops all of them
/// before the next collective call instead of leaving them waiting in it: rethrows this process's
/// own error, or throws one naming `task` when another process failed. Without a collective (or
/// with one process) it just runs `work`.
template <typename Work>
void run_agreeing_on_failure(Collective* collective, const std::string& task, Work&& work) {
  if (collective == nullptr || collective->size() == 1) {
    work();
    return;
  }
  std::exception_ptr failure;
  try {
    work();
  } catch (...) {
    failure = std::current_exception();
  }
  const bool any_failed = collective->any(failure != nullptr);
  if (failure) std::rethrow_exception(failure);
  if (any_failed) throw Error(task + ": another process failed (its error is in its output)");
}

}  // namespace distillrec
