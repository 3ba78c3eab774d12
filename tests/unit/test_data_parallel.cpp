// Data-parallel training without MPI: processes simulated by threads of this process
// (tests/data_parallel_support.hpp), so sharding, global-batch normalisation, per-example random
// streams and failure agreement are checked in every build, sanitizers included. The same runs
// on real processes under mpirun are in tests/mpi/.
#include "data_parallel_support.hpp"
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/train/gradient_exchange.hpp"
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
  GroupRun out;
  out.results.resize(static_cast<std::size_t>(size));
  out.errors = dp::on_members(size, [&](const std::shared_ptr<dp::ThreadGroup::Member>& member) {
    dp::RunOptions mine = options;
    mine.collective = member;
    out.results[static_cast<std::size_t>(member->rank())] = dp::run(kind, mine);
  });
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
      for (int r = 1; r < size; ++r) CHECK(dp::bitwise_equal(group.results[0].values, group.results[static_cast<std::size_t>(r)].values));
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
    CHECK(dp::bitwise_equal(group.results[0].values, group.results[1].values));
    CHECK(dp::relative_grad_difference(single, group.results[1]) <= 1e-5);  // the last step's shard 0 holds no example
    CHECK(group.results[1].steps == single.steps);
  }
  parallel::set_num_threads(2);
}

TEST_CASE("A member that fails inside a step stops every member with an error, never a hang", "[train][data-parallel]") {
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  for (Index sparse_rows : {Index(0), Index(50)}) {  // the flag in the gradient sum, or in the OR of touched rows
    INFO("sparse_rows " << sparse_rows);
    dp::RunOptions options;
    options.fail_on_rank = 1;
    options.fail_at_step = 3;
    options.sparse_rows = sparse_rows;
    const auto group = run_group(dp::Kind::kSASRec, 2, options);
    CHECK_THAT(group.errors[1], Catch::Contains("rank 1 failed deliberately at step 3"));
    CHECK_THAT(group.errors[0], Catch::Contains("another process failed"));
    CHECK_THAT(group.errors[0], Catch::Contains("step 3"));
  }
  parallel::set_num_threads(2);
}

TEST_CASE("Item tables exchanged by touched rows train exactly as with the dense exchange, for every model kind", "[train][data-parallel]") {
  // Every table of this 120-item catalogue goes by rows with sparse_rows 50 (SASRec's tied table
  // under BCE, GRU4Rec's input table and untied head under sampled softmax, the LLMRec student's
  // table under full softmax): every step's summed gradient, and so the model, bit for bit.
  using namespace data_parallel_unit;
  parallel::set_num_threads(1);
  for (dp::Kind kind : {dp::Kind::kSASRec, dp::Kind::kGRU4Rec, dp::Kind::kLLMRecStudent}) {
    INFO(dp::name(kind));
    dp::RunOptions options;
    options.epochs = 1;
    options.sparse_rows = 0;
    const auto dense = run_group(kind, 2, options);
    options.sparse_rows = 50;
    const auto rows = run_group(kind, 2, options);
    for (int r = 0; r < 2; ++r) {
      REQUIRE(dense.errors[static_cast<std::size_t>(r)].empty());
      REQUIRE(rows.errors[static_cast<std::size_t>(r)].empty());
    }
    REQUIRE(rows.results[0].step_grads.size() == dense.results[0].step_grads.size());
    for (std::size_t k = 0; k < dense.results[0].step_grads.size(); ++k) {
      CHECK(dp::bitwise_equal(dense.results[0].step_grads[k], rows.results[0].step_grads[k]));
    }
    CHECK(dp::bitwise_equal(dense.results[0].values, rows.results[1].values));
    const auto& dense_epoch = dense.results[0].summary.epochs.at(0);
    const auto& rows_epoch = rows.results[0].summary.epochs.at(0);
    CHECK(dense_epoch.exchanged_bytes_per_step > 0.0);
    CHECK(rows_epoch.exchanged_bytes_per_step > 0.0);
  }
  parallel::set_num_threads(2);
}

namespace data_parallel_unit {

/// Two parameter groups with tables of 200 and 300 rows between small dense tensors.
struct ExchangeGroups {
  Parameters<float> first, second;
  ExchangeGroups() {
    first.declare("dense.a", 5, 3);
    first.declare("table", 200, 8);
    first.declare("dense.b", 2, 2);
    first.allocate();
    second.declare("other_table", 300, 4);
    second.allocate();
  }
  std::vector<Parameters<float>*> groups() { return {&first, &second}; }
  std::vector<float> grads() const {
    std::vector<float> out(first.grads(), first.grads() + first.buffer_size());
    out.insert(out.end(), second.grads(), second.grads() + second.buffer_size());
    return out;
  }
};

/// Member r's gradients: every dense value, and rows r, r+3, r+6, ... of both tables up to row
/// 60 + 10 r (so members touch different rows, some rows by several).
void fill_member_gradients(ExchangeGroups& g, int r, Index reach = 1) {
  Rng rng(static_cast<std::uint64_t>(100 + r));
  for (const char* name : {"dense.a", "dense.b"}) {
    auto m = g.first.grad(g.first.find(name));
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.normal());
  }
  for (auto* group : g.groups()) {
    auto table = group->grad(group->count() > 1 ? group->find("table") : group->find("other_table"));
    const Index end = std::min<Index>(table.rows(), (60 + 10 * r) * reach);
    for (Index row = r; row < end; row += 3) {
      for (Index c = 0; c < table.cols(); ++c) table(row, c) = static_cast<float>(rng.normal());
    }
  }
}

struct ExchangeRun {
  std::vector<std::vector<float>> grads;
  std::vector<train::GradientExchange<float>::Outcome> outcomes;
  std::vector<train::GradientExchange<float>::Statistics> statistics;
  std::vector<std::string> errors;
};

ExchangeRun run_exchange(int size, Index sparse_rows, int failing = -1, Index reach = 1) {
  ExchangeRun out;
  out.grads.resize(static_cast<std::size_t>(size));
  out.outcomes.resize(static_cast<std::size_t>(size));
  out.statistics.resize(static_cast<std::size_t>(size));
  out.errors = dp::on_members(size, [&](const std::shared_ptr<dp::ThreadGroup::Member>& member) {
    const int r = member->rank();
    ExchangeGroups g;
    fill_member_gradients(g, r, reach);
    train::GradientExchange<float> exchange;
    exchange.configure(g.groups(), member.get(), sparse_rows);
    out.outcomes[static_cast<std::size_t>(r)] = exchange.exchange(static_cast<float>(r + 1), r == failing);
    out.grads[static_cast<std::size_t>(r)] = g.grads();
    out.statistics[static_cast<std::size_t>(r)] = exchange.statistics();
  });
  return out;
}

}  // namespace data_parallel_unit

TEST_CASE("The gradient exchange sums dense tensors whole and large tables by the rows any member touched", "[train][data-parallel]") {
  using namespace data_parallel_unit;
  const int size = 3;
  std::vector<float> expected;
  for (int r = 0; r < size; ++r) {
    ExchangeGroups g;
    fill_member_gradients(g, r);
    const auto mine = g.grads();
    if (expected.empty()) expected.assign(mine.size(), 0.0f);
    for (std::size_t i = 0; i < mine.size(); ++i) expected[i] += mine[i];
  }
  const auto dense = run_exchange(size, 0);
  const auto rows = run_exchange(size, 100);  // both tables by rows
  for (int r = 0; r < size; ++r) {
    INFO("member " << r);
    REQUIRE(dense.errors[static_cast<std::size_t>(r)].empty());
    REQUIRE(rows.errors[static_cast<std::size_t>(r)].empty());
    CHECK(dense.grads[static_cast<std::size_t>(r)] == expected);
    CHECK(rows.grads[static_cast<std::size_t>(r)] == expected);
    CHECK(dense.outcomes[static_cast<std::size_t>(r)].loss == 6.0f);
    CHECK(rows.outcomes[static_cast<std::size_t>(r)].loss == 6.0f);
    CHECK_FALSE(rows.outcomes[static_cast<std::size_t>(r)].failed_elsewhere);
  }
  // The union: rows 0..59 and 61,64,67 and 62,65,..,77 of each table (members touch 0,3,..,57;
  // 1,4,..,67; 2,5,..,77): 69 of 200 and 69 of 300.
  const auto& stats = rows.statistics[0];
  CHECK(stats.item_rows == 2.0 * 69.0);
  CHECK(stats.item_rows_total == 500.0);
  const double dense_bytes = dense.statistics[0].bytes;
  // Dense: adjacent tensors in one run with the alignment padding between them (dense.a's 15
  // values + 1), none after the last (dense.b's 4), + loss and flag.
  CHECK(dense_bytes == Approx(4.0 * (16 + 200 * 8 + 4 + 300 * 4 + 2)));
  CHECK(stats.bytes < 0.5 * dense_bytes);
  CHECK(stats.bytes == Approx(8.0 * (1 + 4 + 5) + 4.0 * (15 + 4 + 69 * 8 + 69 * 4 + 2)));

  // A member that failed: no gradient changes anywhere, and the others learn it (from the OR
  // when there is one, before any gradient moves).
  for (Index sparse_rows : {Index(0), Index(100)}) {
    const auto failed = run_exchange(size, sparse_rows, 1);
    CHECK_FALSE(failed.outcomes[1].failed_elsewhere);
    CHECK(failed.outcomes[0].failed_elsewhere);
    CHECK(failed.outcomes[2].failed_elsewhere);
    ExchangeGroups own;
    fill_member_gradients(own, 0);
    CHECK(failed.grads[0] == own.grads());
  }
  CHECK_THROWS_WITH(train::GradientExchange<float>().exchange(1.0f, false), Catch::Contains("before configure"));

  // A union over half of a table: the table goes whole (a straight copy), still exactly.
  std::vector<float> wide;
  for (int r = 0; r < size; ++r) {
    ExchangeGroups g;
    fill_member_gradients(g, r, 3);
    const auto mine = g.grads();
    if (wide.empty()) wide.assign(mine.size(), 0.0f);
    for (std::size_t i = 0; i < mine.size(); ++i) wide[i] += mine[i];
  }
  const auto whole = run_exchange(size, 100, -1, 3);
  for (int r = 0; r < size; ++r) {
    REQUIRE(whole.errors[static_cast<std::size_t>(r)].empty());
    CHECK(whole.grads[static_cast<std::size_t>(r)] == wide);
  }
  CHECK(whole.statistics[0].item_rows == 500.0);
}

TEST_CASE("Processes whose parameters differ stop at the exchange's set-up with a clear error", "[train][data-parallel]") {
  using namespace data_parallel_unit;
  for (const bool other_rows : {false, true}) {  // another sparse_rows, or another model on one member
    const auto errors = dp::on_members(3, [&](const std::shared_ptr<dp::ThreadGroup::Member>& member) {
      ExchangeGroups g;
      Parameters<float> extra;
      extra.declare("extra", 3, 3);
      extra.allocate();
      std::vector<Parameters<float>*> groups = g.groups();
      if (!other_rows && member->rank() == 2) groups.push_back(&extra);
      train::GradientExchange<float> exchange;
      exchange.configure(groups, member.get(), other_rows && member->rank() == 1 ? 0 : 100);
    });
    for (const auto& e : errors) CHECK_THAT(e, Catch::Contains("the processes' parameters differ"));
  }
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

TEST_CASE("Teacher signals and rankings computed on several members equal one process's", "[distill][data-parallel]") {
  using namespace data_parallel_unit;
  const auto log = dp::small_log();
  const data::ExampleSplit split(data::leave_one_out(log));
  models::LLMRec<float> teacher(dp::small_llmrec_config(split.num_items, 2, 0.0));
  Rng init(5);
  teacher.initialize(init);
  const std::vector<Index> layers{1, 2};
  const Index block = 64;  // 8 blocks of the 500 examples: every member gets several
  for (auto positions : {distill::AlignPositions::kLast, distill::AlignPositions::kAll}) {
    const auto single = distill::compute_teacher_signals(teacher, layers, split, positions, nullptr, block);
    for (int size : {2, 3}) {
      INFO("members " << size << ", positions " << distill::to_string(positions));
      std::vector<std::vector<float>> got(static_cast<std::size_t>(size));
      const auto errors = dp::on_members(size, [&](const std::shared_ptr<dp::ThreadGroup::Member>& member) {
        got[static_cast<std::size_t>(member->rank())] =
            distill::compute_teacher_signals(teacher, layers, split, positions, nullptr, block, member.get()).data();
      });
      for (int r = 0; r < size; ++r) {
        REQUIRE(errors[static_cast<std::size_t>(r)].empty());
        CHECK(dp::bitwise_equal(got[static_cast<std::size_t>(r)], single.data()));
      }
    }
  }
  const auto ranking = distill::compute_ranking_signals(teacher, split, 10, data::Part::kTrain, true, block);
  std::vector<std::vector<ItemId>> items(3);
  std::vector<std::vector<float>> scores(3);
  const auto errors = dp::on_members(3, [&](const std::shared_ptr<dp::ThreadGroup::Member>& member) {
    const auto mine = distill::compute_ranking_signals(teacher, split, 10, data::Part::kTrain, true, block, member.get());
    const auto r = static_cast<std::size_t>(member->rank());
    items[r].assign(mine.items(0), mine.items(0) + mine.num_examples() * 10);
    scores[r].assign(mine.scores(0), mine.scores(0) + mine.num_examples() * 10);
  });
  for (std::size_t r = 0; r < 3; ++r) {
    REQUIRE(errors[r].empty());
    CHECK(items[r] == std::vector<ItemId>(ranking.items(0), ranking.items(0) + ranking.num_examples() * 10));
    CHECK(dp::bitwise_equal(scores[r], std::vector<float>(ranking.scores(0), ranking.scores(0) + ranking.num_examples() * 10)));
  }
}

TEST_CASE("A sharded computation that fails on one member fails on every member", "[data-parallel]") {
  using namespace data_parallel_unit;
  const auto errors = dp::on_members(3, [](const std::shared_ptr<dp::ThreadGroup::Member>& member) {
    run_agreeing_on_failure(member.get(), "teacher signals", [&] {
      if (member->rank() == 1) throw ShapeError("bad window on member 1");
    });
    member->sum(static_cast<float*>(nullptr), 0);  // a later collective call: reached by nobody
  });
  CHECK_THAT(errors[1], Catch::Contains("bad window on member 1") && !Catch::Contains("another process"));
  CHECK_THAT(errors[0], Catch::Contains("teacher signals: another process failed"));
  CHECK_THAT(errors[2], Catch::Contains("teacher signals: another process failed"));
}
