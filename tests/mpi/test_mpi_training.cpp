// Data-parallel training on real processes: run under `mpirun -np 2` by CTest
// (tests/CMakeLists.txt). A plain program rather than a Catch2 one, so that every process runs
// the same code and the exit status says whether all checks held.
//
//   test_mpi_training equality   for SASRec, GRU4Rec and an LLMRec student distilled with
//                                SLMRec: (1) step by step (parameters reset after every step to
//                                a one-process run's) every summed gradient equals the
//                                one-process gradient up to float rounding; (2) free-running for
//                                at least 100 steps, every process holds the same model bit for
//                                bit, and it differs from the one-process model only by rounding
//                                that training amplified (printed; far below another seed's);
//                                (3) item tables exchanged by touched rows give the dense
//                                exchange's model bit for bit
//   test_mpi_training resume DIR 2 processes train 2 epochs and write their state (rank 0),
//                                2 processes resume it for 2 more: the model equals the
//                                uninterrupted 2-process run's bit for bit
//   test_mpi_training fail       rank 1 fails inside step 3 (dense and row exchange); every
//                                process must stop at that step with an error: rank 1 with its own, the others saying
//                                that another process failed (a hang ends in CTest's timeout)
#include "data_parallel_support.hpp"

#include "distillrec/mpi/mpi.hpp"

#include <cstdio>
#include <iostream>
#include <string>

using namespace distillrec;
namespace dp = distillrec::test::data_parallel;

namespace {

int failures = 0;

void check(bool ok, const std::string& what, int rank) {
  if (!ok) {
    ++failures;
    std::cerr << "rank " << rank << ": FAILED: " << what << std::endl;
  }
}

int equality(const std::shared_ptr<mpi::Communicator>& world) {
  const int rank = world->rank();
  for (dp::Kind kind : {dp::Kind::kSASRec, dp::Kind::kGRU4Rec, dp::Kind::kLLMRecStudent}) {
    dp::RunOptions options;
    const auto probe = dp::run(kind, options);  // one process, 2 epochs: the steps per epoch
    const Index per_epoch = probe.steps / options.epochs;
    options.epochs = (100 + per_epoch - 1) / per_epoch;  // at least 100 steps
    const auto single = dp::run(kind, options);
    dp::RunOptions other_seed = options;
    other_seed.seed += 1;
    const double seed_difference = dp::max_difference(single.values, dp::run(kind, other_seed).values);

    dp::RunOptions replay = options;
    replay.collective = world;
    replay.replay = &single.step_values;
    const auto stepped = dp::run(kind, replay);
    const double grad_difference = dp::relative_grad_difference(single, stepped);
    check(grad_difference <= 1e-5, std::string(dp::name(kind)) + ": step-by-step gradients equal one process's", rank);

    dp::RunOptions free = options;
    free.collective = world;
    const auto sharded = dp::run(kind, free);
    auto root_values = sharded.values;  // every process compares its model with rank 0's
    world->broadcast(root_values.data(), root_values.size() * sizeof(float));
    check(dp::bitwise_equal(root_values, sharded.values), std::string(dp::name(kind)) + ": every process holds the same model", rank);
    check(sharded.steps == single.steps, std::string(dp::name(kind)) + ": same number of steps", rank);
    const double difference = dp::max_difference(single.values, sharded.values);
    check(difference < 0.25 * seed_difference, std::string(dp::name(kind)) + ": the sharded model is the one-process model", rank);
    // Item tables exchanged by touched rows (every table of this catalogue) instead of whole.
    dp::RunOptions by_rows = free;
    by_rows.sparse_rows = 50;
    const auto rows = dp::run(kind, by_rows);
    check(dp::bitwise_equal(rows.values, sharded.values),
          std::string(dp::name(kind)) + ": item rows exchanged by touch give the dense exchange's model bit for bit", rank);
    if (rank == 0) {
      std::printf("%s on %d processes: gradients step by step within %.2g (relative) of one process; after %ld steps the largest "
                  "parameter difference is %.3g (another seed: %.3g)\n",
                  dp::name(kind), world->size(), grad_difference, static_cast<long>(single.steps), difference, seed_difference);
      std::fflush(stdout);
    }
  }
  return failures == 0 ? 0 : 1;
}

int resume(const std::shared_ptr<mpi::Communicator>& world, const std::string& dir) {
  const int rank = world->rank();
  for (dp::Kind kind : {dp::Kind::kSASRec, dp::Kind::kLLMRecStudent}) {
    dp::RunOptions options;
    options.collective = world;
    options.epochs = 4;
    options.eval_every = 1;
    const auto whole = dp::run(kind, options);
    dp::RunOptions first = options;
    first.state_path = dir + "/mpi_state.safetensors";
    first.stop_after_epoch = 2;
    dp::run(kind, first);
    world->barrier();  // rank 0 has written the state
    dp::RunOptions second = options;
    second.resume_from = first.state_path;
    const auto resumed = dp::run(kind, second);
    const double difference = dp::max_difference(whole.values, resumed.values);
    check(difference == 0.0, std::string(dp::name(kind)) + ": resumed equals uninterrupted", rank);
    check(resumed.summary.best_epoch == whole.summary.best_epoch, std::string(dp::name(kind)) + ": same best epoch", rank);
    if (rank == 0) {
      std::printf("%s on %d processes: resumed after epoch 2 of 4, largest parameter difference from the uninterrupted run %.3g\n",
                  dp::name(kind), world->size(), difference);
      std::fflush(stdout);
    }
    world->barrier();
  }
  return failures == 0 ? 0 : 1;
}

int fail(const std::shared_ptr<mpi::Communicator>& world) {
  // The failure flag travels in the gradient sum (dense) or in the OR of touched rows (sparse).
  // Both runs always happen on every process (a process that returned early would leave the
  // other waiting in the second run).
  bool ok = true;
  for (Index sparse_rows : {Index(0), Index(50)}) {
    dp::RunOptions options;
    options.collective = world;
    options.fail_on_rank = 1;
    options.fail_at_step = 3;
    options.sparse_rows = sparse_rows;
    try {
      dp::run(dp::Kind::kSASRec, options);
      std::printf("rank %d: training did not stop\n", world->rank());
      ok = false;
    } catch (const std::exception& e) {
      // Every process must stop at step 3: rank 1 with its own error, the others told why.
      const std::string message = e.what();
      std::printf("rank %d stopped (%s exchange): %s\n", world->rank(), sparse_rows > 0 ? "row" : "dense", e.what());
      std::fflush(stdout);
      const bool expected = world->rank() == 1 ? message.find("rank 1 failed deliberately at step 3") != std::string::npos
                                               : message.find("step 3: another process failed") != std::string::npos;
      if (!expected) ok = false;
    }
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    mpi::Environment env(argc, argv);
    auto world = std::make_shared<mpi::Communicator>();
    parallel::set_num_threads(1);
    const std::string mode = argc > 1 ? argv[1] : "equality";
    if (world->size() < 2) {
      std::fprintf(stderr, "run me with mpirun -np 2 or more\n");
      return 1;
    }
    int status = mode == "fail" ? fail(world) : mode == "resume" ? resume(world, argc > 2 ? argv[2] : ".") : equality(world);
    double worst = status;
    world->sum(&worst, 1);  // the job passes only if every process passed
    if (world->rank() == 0) std::printf("%s: %s\n", mode.c_str(), worst == 0 ? "passed on every process" : "FAILED");
    return worst == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
