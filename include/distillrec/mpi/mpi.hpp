// distillrec/mpi/mpi.hpp
//
// Data-parallel training on MPI: the Collective the trainer and the evaluation need (core/collective.hpp),
// implemented with MPI_Allreduce and MPI_Bcast on a duplicate of a communicator, and the
// start-up and failure handling of a program that runs under `mpirun -np N` or `srun`.
// Opt-in: link the CMake target distillrec::mpi (it brings MPI and defines
// DISTILLREC_WITH_MPI); nothing else in the library needs MPI.
//
//   distillrec::mpi::Environment env(argc, argv);   // MPI_Init_thread (funneled) ... MPI_Finalize
//   auto world = std::make_shared<distillrec::mpi::Communicator>();
//   config.collective = world;                      // train::TrainerConfig
//   config.log = world->rank() == 0 ? &std::cout : nullptr;
//
// Thread policy: MPI is called from the thread that runs the trainer only (MPI_THREAD_FUNNELED);
// each process runs its own OpenMP team (set its size with OMP_NUM_THREADS or the programs'
// --threads; ranks x threads should not exceed the cores).
//
// Errors: every MPI call returns its error (MPI_ERRORS_RETURN on the communicator) and becomes
// a distillrec::Error naming the call. A process that fails outside the trainer's steps should
// call abort_all(): MPI_Abort ends every process of the job, so none waits forever.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/collective.hpp"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>

namespace distillrec::mpi {

namespace detail {

inline void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  throw Error(distillrec::detail::concat("MPI: ", call, " failed: ", std::string(text, static_cast<std::size_t>(std::max(length, 0)))));
}

/// Elements per MPI call (counts are int).
constexpr std::size_t kChunk = static_cast<std::size_t>(INT_MAX / 2);

}  // namespace detail

/// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun): programs that
/// can run either way initialise MPI only then.
inline bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

/// MPI for the lifetime of this object: initialises it (unless already initialised) and
/// finalises it if it did.
class Environment {
 public:
  Environment(int& argc, char**& argv) {
    int initialized = 0;
    detail::check(MPI_Initialized(&initialized), "MPI_Initialized");
    if (initialized) return;
    int provided = 0;
    detail::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owns_ = true;
    if (provided < MPI_THREAD_FUNNELED) {
      MPI_Finalize();
      owns_ = false;
      throw Error("MPI: the library provides no MPI_THREAD_FUNNELED support (needed: OpenMP threads inside each process)");
    }
  }
  ~Environment() {
    int finalized = 0;
    if (owns_ && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

 private:
  bool owns_ = false;
};

/// The processes of a communicator (by default all of the job's) as the trainer's collective.
class Communicator final : public Collective {
 public:
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD) {
    detail::check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    detail::check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    detail::check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    detail::check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~Communicator() override {
    int finalized = 0;
    if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Comm_free(&comm_);
  }
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm comm() const { return comm_; }

  void sum(float* data, std::size_t count) override { allreduce(data, count, MPI_FLOAT); }
  void sum(double* data, std::size_t count) override { allreduce(data, count, MPI_DOUBLE); }
  void bitwise_or(std::uint64_t* data, std::size_t count) override { allreduce(data, count, MPI_UINT64_T, MPI_BOR); }

  void broadcast(void* data, std::size_t bytes) override {
    auto* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes || (bytes == 0 && done == 0); done += detail::kChunk) {
      const std::size_t n = std::min(detail::kChunk, bytes - done);
      detail::check(MPI_Bcast(p + done, static_cast<int>(n), MPI_BYTE, 0, comm_), "MPI_Bcast");
      if (bytes == 0) break;
    }
  }

  /// Waits until every process has arrived.
  void barrier() { detail::check(MPI_Barrier(comm_), "MPI_Barrier"); }

  std::string description() const override {
    return distillrec::detail::concat("MPI, ", size_, size_ == 1 ? " process" : " processes");
  }

  /// Ends every process of the job with `code` (after a failure that the others cannot see).
  [[noreturn]] void abort_all(int code = 1) const {
    MPI_Abort(comm_, code);
    std::abort();
  }

 private:
  void allreduce(void* data, std::size_t count, MPI_Datatype type, MPI_Op op = MPI_SUM) {
    int type_size = 0;
    detail::check(MPI_Type_size(type, &type_size), "MPI_Type_size");
    auto* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < count; done += detail::kChunk) {
      const std::size_t n = std::min(detail::kChunk, count - done);
      detail::check(MPI_Allreduce(MPI_IN_PLACE, p + done * static_cast<std::size_t>(type_size), static_cast<int>(n), type, op, comm_),
                    "MPI_Allreduce");
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

}  // namespace distillrec::mpi
