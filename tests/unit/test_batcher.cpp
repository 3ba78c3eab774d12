#include <algorithm>
#include <chrono>
#include <map>
#include <numeric>
#include <set>

#include "distillrec/data/batcher.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "support.hpp"

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

namespace {

/// All batches of one epoch.
std::vector<TrainingBatch> run_epoch(SequenceBatcher& batcher, std::uint64_t epoch) {
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
      for (const auto* m : {&batch.inputs, &batch.targets, &batch.negatives}) {
        row.insert(row.end(), m->row(r).data(), m->row(r).data() + m->cols());
      }
      rows[batch.users[static_cast<std::size_t>(r)]] = row;
    }
  }
  return rows;
}

/// Checks every protocol invariant of one epoch against the training sequences.
void check_epoch(const std::vector<Sequence>& train, ItemId num_items, const BatcherConfig& config,
                 const std::vector<TrainingBatch>& batches) {
  const Index length = config.max_length;
  const Index k = config.num_negatives;
  std::vector<int> seen(train.size(), 0);
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const TrainingBatch& batch = batches[b];
    REQUIRE(batch.size() >= 1);
    REQUIRE(batch.size() <= config.batch_size);
    if (b + 1 < batches.size()) REQUIRE(batch.size() == config.batch_size);
    REQUIRE(static_cast<Index>(batch.users.size()) == batch.size());
    REQUIRE(batch.inputs.cols() == length);
    REQUIRE(batch.targets.rows() == batch.size());
    REQUIRE(batch.targets.cols() == length);
    REQUIRE(batch.negatives.rows() == batch.size());
    REQUIRE(batch.negatives.cols() == length * k);
    Index targets = 0;
    for (Index r = 0; r < batch.size(); ++r) {
      const Index user = batch.users[static_cast<std::size_t>(r)];
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
        REQUIRE(batch.inputs(r, t) == input);
        REQUIRE(batch.targets(r, t) == target);
        REQUIRE((batch.inputs(r, t) == 0) == (batch.targets(r, t) == 0));
        if (t + 1 < length && batch.inputs(r, t) != 0) {
          REQUIRE(batch.inputs(r, t + 1) == batch.targets(r, t));  // targets = inputs shifted
        }
        for (Index j = 0; j < k; ++j) {
          const ItemId negative = batch.negatives(r, t * k + j);
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
      REQUIRE(batch.targets(r, length - 1) == sequence.back());
    }
    REQUIRE(batch.num_targets() == targets);
  }
  for (std::size_t user = 0; user < train.size(); ++user) {
    CAPTURE(user);
    REQUIRE(seen[user] == (train[user].size() >= 2 ? 1 : 0));
  }
}

}  // namespace

TEST_CASE("SequenceBatcher builds left-padded rows with shifted targets", "[data][batcher]") {
  const std::vector<Sequence> train = {{1, 2, 3, 4}, {5}, {}, {6, 7}};
  BatcherConfig config;
  config.batch_size = 2;
  config.max_length = 5;
  config.num_negatives = 2;
  config.shuffle = false;
  SequenceBatcher batcher(train, 10, config);
  REQUIRE(batcher.num_training_users() == 2);
  REQUIRE(batcher.training_users() == std::vector<Index>{0, 3});
  REQUIRE(batcher.batches_per_epoch() == 1);
  REQUIRE(batcher.config().num_negatives == 2);

  TrainingBatch batch;
  REQUIRE(batcher.next(batch));
  REQUIRE(batch.users == std::vector<Index>{0, 3});
  REQUIRE(batch.size() == 2);
  Matrix<ItemId> inputs(2, 5), targets(2, 5);
  inputs << 0, 0, 1, 2, 3,  //
      0, 0, 0, 0, 6;
  targets << 0, 0, 2, 3, 4,  //
      0, 0, 0, 0, 7;
  REQUIRE(batch.inputs == inputs);
  REQUIRE(batch.targets == targets);
  REQUIRE(batch.num_targets() == 4);
  REQUIRE(batch.negatives.rows() == 2);
  REQUIRE(batch.negatives.cols() == 10);
  // Row 0: positions 2..4 have negatives (columns 4..9), row 1: position 4 (columns 8, 9).
  for (Index c = 0; c < 10; ++c) {
    const ItemId a = batch.negatives(0, c);
    const ItemId b = batch.negatives(1, c);
    if (c < 4) REQUIRE(a == 0);
    if (c >= 4) REQUIRE((a >= 5 && a <= 10));
    if (c < 8) REQUIRE(b == 0);
    if (c >= 8) REQUIRE((b >= 1 && b <= 10 && b != 6 && b != 7));
  }
  REQUIRE_FALSE(batcher.next(batch));
  REQUIRE_FALSE(batcher.next(batch));
  check_epoch(train, 10, config, run_epoch(batcher, 3));
}

TEST_CASE("SequenceBatcher keeps the most recent max_length items", "[data][batcher]") {
  Sequence long_sequence(60);
  std::iota(long_sequence.begin(), long_sequence.end(), 1);  // 1..60
  const std::vector<Sequence> train = {long_sequence, {61, 62, 63}};
  BatcherConfig config;
  config.max_length = 50;
  SequenceBatcher batcher(train, 100, config);
  for (std::uint64_t epoch = 0; epoch < 20; ++epoch) {
    for (const auto& batch : run_epoch(batcher, epoch)) {
      for (Index r = 0; r < batch.size(); ++r) {
        if (batch.users[static_cast<std::size_t>(r)] != 0) continue;
        for (Index t = 0; t < 50; ++t) {
          REQUIRE(batch.inputs(r, t) == 10 + t);   // train[:-1][-50:] = 10..59
          REQUIRE(batch.targets(r, t) == 11 + t);  // train[1:][-50:] = 11..60
          // Negatives avoid the whole history, not only the window: never 1..60.
          REQUIRE(batch.negatives(r, t) > 60);
        }
      }
    }
  }
}

TEST_CASE("SequenceBatcher epochs cover every training user once, with valid negatives",
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
  SequenceBatcher batcher(split.train, split.num_items, config);
  Index expected_users = 0;
  for (const auto& sequence : split.train) expected_users += sequence.size() >= 2 ? 1 : 0;
  REQUIRE(batcher.num_training_users() == expected_users);
  REQUIRE(expected_users < split.num_users());  // some users are too short to train on
  REQUIRE(batcher.batches_per_epoch() == (expected_users + 63) / 64);
  for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
    const auto batches = run_epoch(batcher, epoch);
    REQUIRE(static_cast<Index>(batches.size()) == batcher.batches_per_epoch());
    check_epoch(split.train, split.num_items, config, batches);
  }
}

TEST_CASE("SequenceBatcher is deterministic per seed and epoch", "[data][batcher]") {
  SyntheticConfig synthetic;
  synthetic.num_users = 300;
  synthetic.num_items = 300;
  const LeaveOneOutSplit split = leave_one_out(generate_synthetic(synthetic));
  BatcherConfig config;
  config.batch_size = 32;
  config.max_length = 10;
  config.num_negatives = 2;
  SequenceBatcher a(split.train, split.num_items, config);
  SequenceBatcher b(split.train, split.num_items, config);
  const auto a0 = run_epoch(a, 0);
  const auto b0 = run_epoch(b, 0);
  REQUIRE(a0.size() == b0.size());
  for (std::size_t i = 0; i < a0.size(); ++i) {
    REQUIRE(a0[i].users == b0[i].users);
    REQUIRE(a0[i].inputs == b0[i].inputs);
    REQUIRE(a0[i].targets == b0[i].targets);
    REQUIRE(a0[i].negatives == b0[i].negatives);
  }
  // Restarting an epoch replays it; the first batch from the constructor is epoch 0.
  TrainingBatch first;
  SequenceBatcher fresh(split.train, split.num_items, config);
  REQUIRE(fresh.next(first));
  REQUIRE(first.users == a0[0].users);
  REQUIRE(first.negatives == a0[0].negatives);
  REQUIRE(rows_by_user(run_epoch(a, 0)) == rows_by_user(a0));

  // Another epoch: another user order and other negatives, same inputs and targets.
  const auto a1 = run_epoch(a, 1);
  REQUIRE(a1[0].users != a0[0].users);
  const Rows rows0 = rows_by_user(a0);
  const Rows rows1 = rows_by_user(a1);
  REQUIRE(rows0.size() == rows1.size());
  REQUIRE(rows0 != rows1);

  // A user's negatives depend on (seed, epoch, user) only, not on the batch size or the order.
  BatcherConfig other = config;
  other.batch_size = 7;
  other.shuffle = false;
  SequenceBatcher c(split.train, split.num_items, other);
  REQUIRE(rows_by_user(run_epoch(c, 1)) == rows1);

  // Unshuffled epochs go through the users in ascending order.
  std::vector<Index> order;
  for (const auto& batch : run_epoch(c, 5)) {
    order.insert(order.end(), batch.users.begin(), batch.users.end());
  }
  REQUIRE(order == c.training_users());
  REQUIRE(std::is_sorted(order.begin(), order.end()));

  // Another seed: other negatives.
  BatcherConfig reseeded = config;
  reseeded.seed = 7;
  SequenceBatcher d(split.train, split.num_items, reseeded);
  REQUIRE(rows_by_user(run_epoch(d, 0)) != rows0);
}

TEST_CASE("SequenceBatcher validates its configuration and data", "[data][batcher][errors]") {
  const std::vector<Sequence> train = {{1, 2, 3}, {2, 3}};
  BatcherConfig config;
  REQUIRE_NOTHROW(SequenceBatcher(train, 4, config));
  REQUIRE_THROWS_AS(SequenceBatcher(train, 0, config), ConfigError);
  for (Index BatcherConfig::*field :
       {&BatcherConfig::batch_size, &BatcherConfig::max_length, &BatcherConfig::num_negatives}) {
    BatcherConfig bad = config;
    bad.*field = 0;
    REQUIRE_THROWS_AS(SequenceBatcher(train, 4, bad), ConfigError);
    bad.*field = -3;
    REQUIRE_THROWS_AS(SequenceBatcher(train, 4, bad), ConfigError);
  }
  config.max_length = 0;
  REQUIRE_THROWS_WITH(SequenceBatcher(train, 4, config),
                      Contains("BatcherConfig.max_length must be positive, got 0"));
  config.max_length = 50;
  REQUIRE_THROWS_AS(SequenceBatcher({{1, 5}}, 4, config), ShapeError);
  REQUIRE_THROWS_AS(SequenceBatcher({{1}, {0, 2}}, 4, config), ShapeError);
  // A user who has seen every item leaves no negative to draw.
  REQUIRE_THROWS_AS(SequenceBatcher({{1, 2}, {3, 1, 2}}, 3, config), ConfigError);
  REQUIRE_THROWS_WITH(SequenceBatcher({{1, 2}, {3, 1, 2}}, 3, config),
                      Contains("user 1 has interacted with all 3 items"));
  // No training user at all: an empty epoch, not an error.
  SequenceBatcher empty({{1}, {}}, 4, config);
  TrainingBatch batch;
  REQUIRE(empty.num_training_users() == 0);
  REQUIRE(empty.batches_per_epoch() == 0);
  REQUIRE_FALSE(empty.next(batch));
}

TEST_CASE("SequenceBatcher runs an epoch of the Amazon Games log quickly",
          "[data][batcher][real]") {
  const std::string path = test::real_data_path("amazon-games.txt");
  if (path.empty()) {
    WARN("amazon-games.txt not found; skipping");
    return;
  }
  const LeaveOneOutSplit split = leave_one_out(read_log(path));
  SequenceBatcher batcher(split.train, split.num_items, BatcherConfig{});
  Index expected_users = 0;
  for (const auto& sequence : split.train) expected_users += sequence.size() >= 2 ? 1 : 0;
  REQUIRE(batcher.num_training_users() == expected_users);

  TrainingBatch batch;
  (void)batcher.next(batch);  // warm-up allocation of the batch matrices
  batcher.start_epoch(1);
  const auto start = std::chrono::steady_clock::now();
  Index rows = 0;
  Index targets = 0;
  while (batcher.next(batch)) {
    rows += batch.size();
    targets += batch.num_targets();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
#ifdef __OPTIMIZE__
  CHECK(seconds < 0.2);
#else
  CHECK(seconds < 5.0);
#endif
  REQUIRE(rows == expected_users);
  Index expected_targets = 0;
  for (const auto& sequence : split.train) {
    if (sequence.size() >= 2) expected_targets += std::min<Index>(50, sequence.size() - 1);
  }
  REQUIRE(targets == expected_targets);
}
