#include <algorithm>
#include <chrono>
#include <map>
#include <numeric>
#include <set>

#include "distillrec/data/batcher.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "support.hpp"

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

namespace {

/// Leave-one-out training examples of per-user training sequences (no evaluation examples).
ExampleSplit training_examples(const std::vector<Sequence>& train, ItemId num_items) {
  LeaveOneOutSplit split;
  split.train = train;
  split.num_items = num_items;
  split.valid.assign(train.size(), kPaddingId);
  split.test.assign(train.size(), kPaddingId);
  split.source = "test";
  return ExampleSplit(split);
}

/// The users of a batch's rows.
std::vector<Index> users_of(const ExampleBatcher& batcher, const TrainingBatch& batch) {
  std::vector<Index> users;
  for (Index e : batch.examples) users.push_back(batcher.split().train[static_cast<std::size_t>(e)].user);
  return users;
}

/// All batches of one epoch.
std::vector<TrainingBatch> run_epoch(ExampleBatcher& batcher, std::uint64_t epoch) {
  batcher.start_epoch(epoch);
  std::vector<TrainingBatch> batches;
  TrainingBatch batch;
  while (batcher.next(batch)) batches.push_back(batch);
  return batches;
}

/// Per user: (inputs row, targets row, negatives row) of one epoch.
using Rows = std::map<Index, std::vector<ItemId>>;
Rows rows_by_user(const std::vector<TrainingBatch>& batches) {
  Rows rows;
  for (const auto& batch : batches) {
    for (Index r = 0; r < batch.size(); ++r) {
      std::vector<ItemId> row;
      for (const auto& m : {batch.inputs(), batch.targets(), batch.negatives()}) {
        row.insert(row.end(), m.row(r).data(), m.row(r).data() + m.cols());
      }
      rows[batch.examples[static_cast<std::size_t>(r)]] = row;
    }
  }
  return rows;
}

/// Checks every protocol invariant of one epoch against the training sequences.
void check_epoch(const std::vector<Sequence>& train, ItemId num_items, const BatcherConfig& config,
                 const std::vector<TrainingBatch>& batches) {
  std::vector<Index> user_of_example;
  for (const auto& e : training_examples(train, num_items).train) user_of_example.push_back(e.user);
  const Index length = config.max_length;
  const Index k = config.num_negatives;
  std::vector<int> seen(train.size(), 0);
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const TrainingBatch& batch = batches[b];
    REQUIRE(batch.size() >= 1);
    REQUIRE(batch.size() <= config.batch_size);
    if (b + 1 < batches.size()) REQUIRE(batch.size() == config.batch_size);
    REQUIRE(static_cast<Index>(batch.examples.size()) == batch.size());
    REQUIRE(batch.inputs().cols() == length);
    REQUIRE(batch.targets().rows() == batch.size());
    REQUIRE(batch.targets().cols() == length);
    REQUIRE(batch.negatives().rows() == batch.size());
    REQUIRE(batch.negatives().cols() == length * k);
    Index targets = 0;
    for (Index r = 0; r < batch.size(); ++r) {
      const Index user = batch.examples[static_cast<std::size_t>(r)] >= 0 ? user_of_example[static_cast<std::size_t>(batch.examples[static_cast<std::size_t>(r)])] : -1;
      ++seen[static_cast<std::size_t>(user)];
      const Sequence& sequence = train[static_cast<std::size_t>(user)];
      REQUIRE(sequence.size() >= 2);
      const std::set<ItemId> history(sequence.begin(), sequence.end());
      // Expected rows: the last `length` of sequence[:-1] and of sequence[1:], left-padded.
      const auto n = static_cast<Index>(sequence.size());
      const Index count = std::min(n - 1, length);
      for (Index t = 0; t < length; ++t) {
        const Index offset = t - (length - count);  // index into the last `count` items
        const ItemId input =
            offset < 0 ? 0 : sequence[static_cast<std::size_t>(n - 1 - count + offset)];
        const ItemId target =
            offset < 0 ? 0 : sequence[static_cast<std::size_t>(n - count + offset)];
        REQUIRE(batch.inputs()(r, t) == input);
        REQUIRE(batch.targets()(r, t) == target);
        REQUIRE((batch.inputs()(r, t) == 0) == (batch.targets()(r, t) == 0));
        if (t + 1 < length && batch.inputs()(r, t) != 0) {
          REQUIRE(batch.inputs()(r, t + 1) == batch.targets()(r, t));  // targets = inputs shifted
        }
        for (Index j = 0; j < k; ++j) {
          const ItemId negative = batch.negatives()(r, t * k + j);
          if (target == 0) {
            REQUIRE(negative == 0);
          } else {
            REQUIRE(negative >= 1);
            REQUIRE(negative <= num_items);
            REQUIRE(history.count(negative) == 0);
          }
        }
        targets += target != 0 ? 1 : 0;
      }
      REQUIRE(batch.targets()(r, length - 1) == sequence.back());
    }
    REQUIRE(batch.num_targets() == targets);
  }
  for (std::size_t user = 0; user < train.size(); ++user) {
    CAPTURE(user);
    REQUIRE(seen[user] == (train[user].size() >= 2 ? 1 : 0));
  }
}

}  // namespace

TEST_CASE("ExampleBatcher builds left-padded rows with shifted targets", "[data][batcher]") {
  const std::vector<Sequence> train = {{1, 2, 3, 4}, {5}, {}, {6, 7}};
  BatcherConfig config;
  config.batch_size = 2;
  config.max_length = 5;
  config.num_negatives = 2;
  config.shuffle = false;
  ExampleBatcher batcher(training_examples(train, 10), config);
  REQUIRE(batcher.num_training_examples() == 2);
  REQUIRE(batcher.batches_per_epoch() == 1);
  REQUIRE(batcher.config().num_negatives == 2);

  TrainingBatch batch;
  REQUIRE(batcher.next(batch));
  REQUIRE(users_of(batcher, batch) == std::vector<Index>{0, 3});
  REQUIRE(batch.examples == std::vector<Index>{0, 1});
  REQUIRE(batch.size() == 2);
  Matrix<ItemId> inputs(2, 5), targets(2, 5);
  inputs << 0, 0, 1, 2, 3,  //
      0, 0, 0, 0, 6;
  targets << 0, 0, 2, 3, 4,  //
      0, 0, 0, 0, 7;
  REQUIRE(batch.inputs() == inputs);
  REQUIRE(batch.targets() == targets);
  REQUIRE(batch.num_targets() == 4);
  REQUIRE(batch.negatives().rows() == 2);
  REQUIRE(batch.negatives().cols() == 10);
  // Row 0: positions 2..4 have negatives (columns 4..9), row 1: position 4 (columns 8, 9).
  for (Index c = 0; c < 10; ++c) {
    const ItemId a = batch.negatives()(0, c);
    const ItemId b = batch.negatives()(1, c);
    if (c < 4) REQUIRE(a == 0);
    if (c >= 4) REQUIRE((a >= 5 && a <= 10));
    if (c < 8) REQUIRE(b == 0);
    if (c >= 8) REQUIRE((b >= 1 && b <= 10 && b != 6 && b != 7));
  }
  REQUIRE_FALSE(batcher.next(batch));
  REQUIRE_FALSE(batcher.next(batch));
  check_epoch(train, 10, config, run_epoch(batcher, 3));
}

TEST_CASE("ExampleBatcher keeps the most recent max_length items", "[data][batcher]") {
  Sequence long_sequence(60);
  std::iota(long_sequence.begin(), long_sequence.end(), 1);  // 1..60
  const std::vector<Sequence> train = {long_sequence, {61, 62, 63}};
  BatcherConfig config;
  config.max_length = 50;
  ExampleBatcher batcher(training_examples(train, 100), config);
  for (std::uint64_t epoch = 0; epoch < 20; ++epoch) {
    for (const auto& batch : run_epoch(batcher, epoch)) {
      for (Index r = 0; r < batch.size(); ++r) {
        if (users_of(batcher, batch)[static_cast<std::size_t>(r)] != 0) continue;
        for (Index t = 0; t < 50; ++t) {
          REQUIRE(batch.inputs()(r, t) == 10 + t);   // train[:-1][-50:] = 10..59
          REQUIRE(batch.targets()(r, t) == 11 + t);  // train[1:][-50:] = 11..60
          // Negatives avoid the whole history, not only the window: never 1..60.
          REQUIRE(batch.negatives()(r, t) > 60);
        }
      }
    }
  }
}

TEST_CASE("ExampleBatcher epochs cover every training user once, with valid negatives",
          "[data][batcher]") {
  SyntheticConfig synthetic;
  synthetic.num_users = 500;
  synthetic.num_items = 200;
  synthetic.min_length = 1;
  synthetic.max_length = 40;
  const LeaveOneOutSplit split = leave_one_out(generate_synthetic(synthetic));
  BatcherConfig config;
  config.batch_size = 64;
  config.max_length = 20;
  config.num_negatives = 3;
  ExampleBatcher batcher(split, config);
  Index expected_users = 0;
  for (const auto& sequence : split.train) expected_users += sequence.size() >= 2 ? 1 : 0;
  REQUIRE(batcher.num_training_examples() == expected_users);
  REQUIRE(expected_users < split.num_users());  // some users are too short to train on
  REQUIRE(batcher.batches_per_epoch() == (expected_users + 63) / 64);
  for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
    const auto batches = run_epoch(batcher, epoch);
    REQUIRE(static_cast<Index>(batches.size()) == batcher.batches_per_epoch());
    check_epoch(split.train, split.num_items, config, batches);
  }
}

TEST_CASE("ExampleBatcher is deterministic per seed and epoch", "[data][batcher]") {
  SyntheticConfig synthetic;
  synthetic.num_users = 300;
  synthetic.num_items = 300;
  const LeaveOneOutSplit split = leave_one_out(generate_synthetic(synthetic));
  BatcherConfig config;
  config.batch_size = 32;
  config.max_length = 10;
  config.num_negatives = 2;
  ExampleBatcher a(split, config);
  ExampleBatcher b(split, config);
  const auto a0 = run_epoch(a, 0);
  const auto b0 = run_epoch(b, 0);
  REQUIRE(a0.size() == b0.size());
  for (std::size_t i = 0; i < a0.size(); ++i) {
    REQUIRE(a0[i].examples == b0[i].examples);
    REQUIRE(a0[i].inputs() == b0[i].inputs());
    REQUIRE(a0[i].targets() == b0[i].targets());
    REQUIRE(a0[i].negatives() == b0[i].negatives());
  }
  // Restarting an epoch replays it; the first batch from the constructor is epoch 0.
  TrainingBatch first;
  ExampleBatcher fresh(split, config);
  REQUIRE(fresh.next(first));
  REQUIRE(first.examples == a0[0].examples);
  REQUIRE(first.negatives() == a0[0].negatives());
  REQUIRE(rows_by_user(run_epoch(a, 0)) == rows_by_user(a0));

  // Another epoch: another user order and other negatives, same inputs and targets.
  const auto a1 = run_epoch(a, 1);
  REQUIRE(a1[0].examples != a0[0].examples);
  const Rows rows0 = rows_by_user(a0);
  const Rows rows1 = rows_by_user(a1);
  REQUIRE(rows0.size() == rows1.size());
  REQUIRE(rows0 != rows1);

  // An example's negatives depend on (seed, epoch, example stream) only, not on the batch size or
  // the order.
  BatcherConfig other = config;
  other.batch_size = 7;
  other.shuffle = false;
  ExampleBatcher c(split, other);
  REQUIRE(rows_by_user(run_epoch(c, 1)) == rows1);

  // Unshuffled epochs go through the examples in set order (users ascending).
  std::vector<Index> order, users;
  for (const auto& batch : run_epoch(c, 5)) {
    order.insert(order.end(), batch.examples.begin(), batch.examples.end());
    const auto u = users_of(c, batch);
    users.insert(users.end(), u.begin(), u.end());
  }
  std::vector<Index> all(static_cast<std::size_t>(c.num_training_examples()));
  std::iota(all.begin(), all.end(), Index{0});
  REQUIRE(order == all);
  REQUIRE(std::is_sorted(users.begin(), users.end()));

  // Another seed: other negatives.
  BatcherConfig reseeded = config;
  reseeded.seed = 7;
  ExampleBatcher d(split, reseeded);
  REQUIRE(rows_by_user(run_epoch(d, 0)) != rows0);
}

TEST_CASE("ExampleBatcher validates its configuration and data", "[data][batcher][errors]") {
  const std::vector<Sequence> train = {{1, 2, 3}, {2, 3}};
  BatcherConfig config;
  REQUIRE_NOTHROW(ExampleBatcher(training_examples(train, 4), config));
  REQUIRE_THROWS_AS(ExampleBatcher(training_examples(train, 0), config), ConfigError);
  for (Index BatcherConfig::*field :
       {&BatcherConfig::batch_size, &BatcherConfig::max_length, &BatcherConfig::num_negatives}) {
    BatcherConfig bad = config;
    bad.*field = 0;
    REQUIRE_THROWS_AS(ExampleBatcher(training_examples(train, 4), bad), ConfigError);
    bad.*field = -3;
    REQUIRE_THROWS_AS(ExampleBatcher(training_examples(train, 4), bad), ConfigError);
  }
  config.max_length = 0;
  REQUIRE_THROWS_WITH(ExampleBatcher(training_examples(train, 4), config),
                      Contains("BatcherConfig.max_length must be positive, got 0"));
  config.max_length = 50;
  REQUIRE_THROWS_AS(ExampleBatcher(training_examples({{1, 5}}, 4), config), ShapeError);
  REQUIRE_THROWS_AS(ExampleBatcher(training_examples({{1}, {0, 2}}, 4), config), ShapeError);
  // An example whose history and target hold every item leaves no negative to draw.
  REQUIRE_THROWS_AS(ExampleBatcher(training_examples({{1, 2}, {3, 1, 2}}, 3), config), ConfigError);
  REQUIRE_THROWS_WITH(ExampleBatcher(training_examples({{1, 2}, {3, 1, 2}}, 3), config), Contains("holds all 3 items"));
  // An example that reads outside its sequence.
  ExampleSplit broken = training_examples(train, 4);
  broken.train[0].end = 3;
  REQUIRE_THROWS_WITH(ExampleBatcher(broken, config), Contains("train example 0"));
  // No training example at all: an empty epoch, not an error.
  ExampleBatcher empty(training_examples({{1}, {}}, 4), config);
  TrainingBatch batch;
  REQUIRE(empty.num_training_examples() == 0);
  REQUIRE(empty.batches_per_epoch() == 0);
  REQUIRE_FALSE(empty.next(batch));
}

TEST_CASE("ExampleBatcher with newest-position supervision predicts each example's target only", "[data][batcher]") {
  // Every prefix of [1 2 3 4 5] (training part [1 2 3]) and of [6 7 8 9] (training part [6 7]).
  const auto log = make_log({{1, 2, 3, 4, 5}, {6, 7, 8, 9}}, 12, "prefix");
  const ExampleSplit split = every_prefix(log);
  REQUIRE(split.supervision == Supervision::kNewestPosition);
  BatcherConfig config;
  config.batch_size = 8;
  config.max_length = 2;
  config.num_negatives = 2;
  config.shuffle = false;
  ExampleBatcher batcher(split, config);
  TrainingBatch batch;
  REQUIRE(batcher.next(batch));
  REQUIRE(batch.size() == 3);  // [1]->2, [1 2]->3, [6]->7
  Matrix<ItemId> inputs(3, 2), targets(3, 2);
  inputs << 0, 1,  //
      1, 2,        //
      0, 6;
  targets << 0, 2,  //
      0, 3,         //
      0, 7;
  REQUIRE(batch.inputs() == inputs);
  REQUIRE(batch.targets() == targets);
  REQUIRE(batch.num_targets() == 3);
  for (Index r = 0; r < 3; ++r) {
    for (Index c = 0; c < 2; ++c) REQUIRE(batch.negatives()(r, c) == 0);  // position 0 predicts nothing
    for (Index c = 2; c < 4; ++c) {
      const ItemId n = batch.negatives()(r, c);
      REQUIRE((n >= 1 && n <= 12));
      // Never the example's history or target.
      const auto& e = split.train[static_cast<std::size_t>(batch.examples[static_cast<std::size_t>(r)])];
      for (Index k = 0; k <= e.end; ++k) REQUIRE(n != split.sequence(e.user)[static_cast<std::size_t>(k)]);
    }
  }
  // The newest training example of a user draws from the same stream as its leave-one-out
  // example, whatever else the set holds.
  const ExampleSplit loo = leave_one_out(log);
  REQUIRE(split.train[1].stream == loo.train[0].stream);
  REQUIRE(split.train[2].stream == loo.train[1].stream);
  REQUIRE(split.train[0].stream != split.train[1].stream);
}

TEST_CASE("ExampleBatcher runs an epoch of the Amazon Games log", "[data][batcher][real]") {
  const std::string path = test::real_data_path("amazon-games.txt");
  if (path.empty()) {
    WARN("amazon-games.txt not found; skipping");
    return;
  }
  const LeaveOneOutSplit split = leave_one_out(read_log(path));
  ExampleBatcher batcher(split, BatcherConfig{});
  Index expected_users = 0;
  for (const auto& sequence : split.train) expected_users += sequence.size() >= 2 ? 1 : 0;
  REQUIRE(batcher.num_training_examples() == expected_users);

  TrainingBatch batch;
  Index rows = 0;
  Index targets = 0;
  while (batcher.next(batch)) {
    rows += batch.size();
    targets += batch.num_targets();
  }
  REQUIRE(rows == expected_users);
  Index expected_targets = 0;
  for (const auto& sequence : split.train) {
    if (sequence.size() >= 2) expected_targets += std::min<Index>(50, sequence.size() - 1);
  }
  REQUIRE(targets == expected_targets);
}
