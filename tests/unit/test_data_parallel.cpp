// Data-parallel training without MPI: processes simulated by threads of this process
// (tests/data_parallel_support.hpp), so sharding, global-batch normalisation, per-example random
// streams and failure agreement are checked in every build, sanitizers included. The same runs
// on real processes under mpirun are in tests/mpi/.
#include "data_parallel_support.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <exception>
#include <fstream>
#include <iterator>
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
      CHECK(dp::relative_grad_difference(single, stepped.results[0]) <= 1e-5);
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
    CHECK(dp::relative_grad_difference(single, group.results[1]) <= 1e-5);  // the last step's shard 0 holds no example
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

TEST_CASE("A run resumed from its state file ends where the uninterrupted run ends", "[train][resume]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  const auto dir = test::temp_dir("resume");
  for (dp::Kind kind : {dp::Kind::kSASRec, dp::Kind::kLLMRecStudent}) {
    INFO(dp::name(kind));
    dp::RunOptions options;
    options.epochs = 4;
    options.eval_every = 1;  // the best epoch and its parameters are part of the state
    options.streams = train::RandomStreams::kSequential;  // the generator's state is part of it too
    const auto whole = dp::run(kind, options);
    dp::RunOptions first = options;
    first.state_path = (dir / "state.safetensors").string();
    first.stop_after_epoch = 2;
    const auto interrupted = dp::run(kind, first);
    REQUIRE(interrupted.summary.epochs.size() == 2);
    dp::RunOptions second = options;
    second.resume_from = first.state_path;
    const auto resumed = dp::run(kind, second);
    CHECK(resumed.values == whole.values);  // bit for bit: the same steps from the same state
    CHECK(resumed.summary.best_epoch == whole.summary.best_epoch);
    CHECK(resumed.summary.best_score == whole.summary.best_score);
    REQUIRE(resumed.summary.epochs.size() == 4);
    CHECK(resumed.summary.epochs[1].loss == whole.summary.epochs[1].loss);  // the history came with the state
    CHECK(resumed.summary.epochs[3].loss == whole.summary.epochs[3].loss);
  }
  parallel::set_num_threads(2);
}

TEST_CASE("A data-parallel run resumes on another number of processes", "[train][resume][data-parallel]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  const auto dir = test::temp_dir("resume_processes");
  dp::RunOptions options;
  options.epochs = 4;
  const auto whole = dp::run(dp::Kind::kSASRec, options);  // one process, per-example streams
  dp::RunOptions other_seed = options;
  other_seed.seed += 1;
  const double seed_difference = dp::max_difference(whole.values, dp::run(dp::Kind::kSASRec, other_seed).values);
  dp::RunOptions first = options;
  first.state_path = (dir / "state.safetensors").string();
  first.stop_after_epoch = 2;
  const auto group = run_group(dp::Kind::kSASRec, 2, first);  // 2 processes, then 1
  REQUIRE(group.errors[0].empty());
  REQUIRE(group.errors[1].empty());
  dp::RunOptions second = options;
  second.resume_from = first.state_path;
  const auto resumed = dp::run(dp::Kind::kSASRec, second);
  CHECK(resumed.steps + group.results[0].steps == whole.steps);
  CHECK(dp::max_difference(resumed.values, whole.values) < 0.25 * seed_difference);
}

TEST_CASE("Resuming from a state that does not fit the run is a clear error", "[train][resume]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  const auto dir = test::temp_dir("resume_errors");
  dp::RunOptions first;
  first.epochs = 1;
  first.state_path = (dir / "state.safetensors").string();
  dp::run(dp::Kind::kSASRec, first);
  dp::RunOptions other = first;
  other.state_path.clear();
  other.resume_from = first.state_path;
  other.seed += 1;
  CHECK_THROWS_WITH(dp::run(dp::Kind::kSASRec, other), Catch::Contains("state.safetensors") && Catch::Contains("differs in seed"));
  other.seed = first.seed;
  other.batch_size = 32;
  CHECK_THROWS_WITH(dp::run(dp::Kind::kSASRec, other), Catch::Contains("differs in batch_size"));
  // A truncated file and a model checkpoint are not states.
  {
    std::ifstream in(first.state_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out((dir / "truncated.safetensors").string(), std::ios::binary);
    out << bytes.substr(0, bytes.size() / 2);
  }
  other.batch_size = first.batch_size;
  other.resume_from = (dir / "truncated.safetensors").string();
  CHECK_THROWS_AS(dp::run(dp::Kind::kSASRec, other), FormatError);
  models::SASRecConfig c;
  c.num_items = 10;
  c.hidden_size = 8;
  c.max_length = 5;
  io::save_checkpoint(models::SASRec<float>(c), (dir / "model.safetensors").string());
  other.resume_from = (dir / "model.safetensors").string();
  CHECK_THROWS_WITH(dp::run(dp::Kind::kSASRec, other), Catch::Contains("not a distillrec training state"));
  parallel::set_num_threads(2);
}
