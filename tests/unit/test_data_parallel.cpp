// Data-parallel training without MPI: processes simulated by threads of this process
// (tests/data_parallel_support.hpp), so sharding, global-batch normalisation, per-example random
// streams and failure agreement are checked in every build, sanitizers included. The same runs
// on real processes under mpirun are in tests/mpi/.
#include "data_parallel_support.hpp"

#include <catch2/catch.hpp>

#include <exception>
#include <thread>

using namespace distillrec;
namespace dp = distillrec::test::data_parallel;

namespace data_parallel_unit {

/// Runs `size` members of a thread group; each member's result or error.
struct GroupRun {
  std::vector<dp::RunResult> results;
  std::vector<std::string> errors;
};

GroupRun run_group(dp::Kind kind, int size, dp::RunOptions options) {
  auto group = std::make_shared<dp::ThreadGroup>(size);
  GroupRun out;
  out.results.resize(static_cast<std::size_t>(size));
  out.errors.resize(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      dp::RunOptions mine = options;
      mine.collective = std::make_shared<dp::ThreadGroup::Member>(group, r);
      try {
        out.results[static_cast<std::size_t>(r)] = dp::run(kind, mine);
      } catch (const std::exception& e) {
        out.errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace data_parallel_unit

namespace data_parallel_unit {

/// Largest difference between two runs' gradients over all steps, relative to the largest gradient.
double relative_grad_difference(const dp::RunResult& a, const dp::RunResult& b) {
  if (a.step_grads.size() != b.step_grads.size()) return INFINITY;
  double worst = 0.0;
  for (std::size_t k = 0; k < a.step_grads.size(); ++k) {
    worst = std::max(worst, dp::max_difference(a.step_grads[k], b.step_grads[k]) / std::max(dp::max_abs(a.step_grads[k]), 1e-30));
  }
  return worst;
}

}  // namespace data_parallel_unit

TEST_CASE("Data-parallel training on 2 and 3 members takes the steps one process takes, for every model kind", "[train][data-parallel]") {
  // Step by step: the members' parameters are reset after every step to the one-process run's,
  // so each step's summed gradient is computed at the same parameters as that run's, and must
  // equal its gradient up to float rounding. Free-running, every member holds the same model bit
  // for bit, and it differs from the one-process model only by that rounding, which training
  // amplifies (Adam divides by the square root of tiny second moments; ReLU boundaries move):
  // far less than a run with another seed differs.
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  for (dp::Kind kind : {dp::Kind::kSASRec, dp::Kind::kGRU4Rec, dp::Kind::kLLMRecStudent}) {
    INFO(dp::name(kind));
    dp::RunOptions options;
    const auto single = dp::run(kind, options);
    REQUIRE(single.steps > 10);
    dp::RunOptions other_seed = options;
    other_seed.seed += 1;
    const double seed_difference = dp::max_difference(single.values, dp::run(kind, other_seed).values);
    for (int size : {2, 3}) {
      INFO("members: " << size);
      dp::RunOptions replay = options;
      replay.replay = &single.step_values;
      const auto stepped = run_group(kind, size, replay);
      for (int r = 0; r < size; ++r) REQUIRE(stepped.errors[static_cast<std::size_t>(r)].empty());
      CHECK(relative_grad_difference(single, stepped.results[0]) <= 1e-5);
      for (std::size_t k = 0; k < single.step_losses.size(); ++k) {
        CHECK(stepped.results[0].step_losses[k] == Approx(single.step_losses[k]).epsilon(1e-5));
      }
      const auto group = run_group(kind, size, options);
      for (int r = 0; r < size; ++r) REQUIRE(group.errors[static_cast<std::size_t>(r)].empty());
      for (int r = 1; r < size; ++r) CHECK(dp::max_difference(group.results[0].values, group.results[static_cast<std::size_t>(r)].values) == 0.0);
      CHECK(group.results[0].steps == single.steps);
      const double diff = dp::max_difference(single.values, group.results[0].values);
      INFO("largest parameter difference after " << single.steps << " steps: " << diff << " (another seed: " << seed_difference << ")");
      CHECK(diff < 0.25 * seed_difference);
    }
  }
  parallel::set_num_threads(2);
}

TEST_CASE("Per-example random streams are needed for sharding, and the trainer insists on them", "[train][data-parallel]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  dp::RunOptions per_example;
  const auto keyed = dp::run(dp::Kind::kSASRec, per_example);
  dp::RunOptions sequential = per_example;
  sequential.streams = train::RandomStreams::kSequential;
  const auto in_sequence = dp::run(dp::Kind::kSASRec, sequential);
  // The two kinds of streams draw different masks from the first step on.
  CHECK(dp::max_difference(keyed.step_grads[0], in_sequence.step_grads[0]) > 1e-4 * dp::max_abs(keyed.step_grads[0]));
  // Sequential masks depend on the shard: the trainer refuses them with a collective.
  sequential.collective = std::make_shared<dp::ThreadGroup::Member>(std::make_shared<dp::ThreadGroup>(2), 0);
  REQUIRE_THROWS_WITH(dp::run(dp::Kind::kSASRec, sequential), Catch::Contains("per-example random streams"));
  parallel::set_num_threads(2);
}

TEST_CASE("A last batch smaller than the number of members leaves a shard empty, and training still agrees", "[train][data-parallel]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  dp::RunOptions options;
  options.batch_size = 0;  // a batch size whose last batch holds a single example
  for (dp::Kind kind : {dp::Kind::kSASRec, dp::Kind::kLLMRecStudent}) {
    INFO(dp::name(kind));
    const auto single = dp::run(kind, options);
    dp::RunOptions replay = options;
    replay.replay = &single.step_values;
    const auto group = run_group(kind, 2, replay);
    REQUIRE(group.errors[0].empty());
    REQUIRE(group.errors[1].empty());
    CHECK(dp::max_difference(group.results[0].values, group.results[1].values) == 0.0);
    CHECK(relative_grad_difference(single, group.results[1]) <= 1e-5);  // the last step's shard 0 holds no example
    CHECK(group.results[1].steps == single.steps);
  }
  parallel::set_num_threads(2);
}

TEST_CASE("A member that fails inside a step stops every member with an error, never a hang", "[train][data-parallel]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  dp::RunOptions options;
  options.fail_on_rank = 1;
  options.fail_at_step = 3;
  const auto group = run_group(dp::Kind::kSASRec, 2, options);
  CHECK_THAT(group.errors[1], Catch::Contains("rank 1 failed deliberately at step 3"));
  CHECK_THAT(group.errors[0], Catch::Contains("another process failed"));
  CHECK_THAT(group.errors[0], Catch::Contains("step 3"));
  parallel::set_num_threads(2);
}

TEST_CASE("Batcher shards cut every global batch into contiguous slices with the global counts", "[data][batcher][data-parallel]") {
  const auto log = dp::small_log();
  const data::ExampleSplit split(data::leave_one_out(log));
  data::BatcherConfig config;
  config.batch_size = 10;
  config.max_length = 14;
  data::ExampleBatcher whole(split, config);
  std::vector<data::ExampleBatcher> shards;
  for (Index r = 0; r < 3; ++r) {
    auto c = config;
    c.shard_index = r;
    c.shard_count = 3;
    shards.emplace_back(split, c);
  }
  data::TrainingBatch all, part;
  Index batches = 0;
  while (whole.next(all)) {
    ++batches;
    std::vector<Index> joined;
    Index rows = 0;
    for (auto& shard : shards) {
      REQUIRE(shard.next(part));
      CHECK(part.totals.rows == all.size());
      CHECK(part.totals.predictions == all.num_targets());
      CHECK(part.totals.tokens == all.totals.tokens);
      joined.insert(joined.end(), part.examples.begin(), part.examples.end());
      for (Index i = 0; i < part.size(); ++i) {
        const Index global_row = rows + i;
        CHECK(part.inputs().row(i) == all.inputs().row(global_row));
        CHECK(part.negatives().row(i) == all.negatives().row(global_row));
      }
      rows += part.size();
    }
    CHECK(joined == all.examples);
  }
  for (auto& shard : shards) CHECK_FALSE(shard.next(part));
  CHECK(batches == whole.batches_per_epoch());
  auto bad = config;
  bad.shard_count = 2;
  bad.shard_index = 2;
  CHECK_THROWS_AS(data::ExampleBatcher(split, bad), ConfigError);
}

TEST_CASE("Sharded full-ranking evaluation gives every member the one-process metrics", "[eval][data-parallel]") {
  const auto log = dp::small_log();
  const data::ExampleSplit split(data::leave_one_out(log));
  models::SASRecConfig c;
  c.num_items = split.num_items;
  c.hidden_size = 16;
  c.max_length = 14;
  models::SASRec<float> model(c);
  Rng init(4);
  model.initialize(init);
  eval::FullRankingOptions options;
  options.block_users = 16;  // many blocks, shared out round robin
  const auto whole = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, options);
  for (int size : {2, 3}) {
    auto group = std::make_shared<dp::ThreadGroup>(size);
    std::vector<eval::EvaluationResult> results(static_cast<std::size_t>(size));
    std::vector<std::thread> threads;
    for (int r = 0; r < size; ++r) {
      threads.emplace_back([&, r] {
        dp::ThreadGroup::Member member(group, r);
        auto mine = options;
        mine.collective = &member;
        results[static_cast<std::size_t>(r)] = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, mine);
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& result : results) {
      CHECK(result.num_users == whole.num_users);
      CHECK(result.metrics == whole.metrics);  // exactly: every example ranked once, the same way
    }
  }
}
