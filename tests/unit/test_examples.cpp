#include "distillrec/data/examples.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"

#include "support.hpp"

#include <filesystem>
#include <fstream>

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

namespace {

// User 0: [1 2 3 4 5], user 1: [6 7], user 2: [8 9 10].
InteractionLog toy_log() { return make_log({{1, 2, 3, 4, 5}, {6, 7}, {8, 9, 10}}, 10, "toy"); }

std::vector<std::pair<Index, Index>> user_ends(const std::vector<Example>& set) {
  std::vector<std::pair<Index, Index>> out;
  for (const auto& e : set) out.emplace_back(e.user, e.end);
  return out;
}

}  // namespace

TEST_CASE("Leave-one-out examples: one training window per user, the last two items evaluate", "[data][examples]") {
  auto log = toy_log();
  log.user_raw_ids = {100, 200, 300};
  const ExampleSplit split = leave_one_out(log);
  REQUIRE(split.protocol == "leave-one-out");
  REQUIRE(split.supervision == Supervision::kEveryPosition);
  // Training: user 0 reads [1 2] -> 3 (its training part [1 2 3]), user 1 [6] -> 7 (too short to
  // evaluate: trains on everything); user 2 has one training item and does not train.
  REQUIRE(user_ends(split.train) == std::vector<std::pair<Index, Index>>{{0, 2}, {1, 1}});
  REQUIRE(user_ends(split.valid) == std::vector<std::pair<Index, Index>>{{0, 3}, {2, 1}});
  REQUIRE(user_ends(split.test) == std::vector<std::pair<Index, Index>>{{0, 4}, {2, 2}});
  REQUIRE(split.target(split.valid[0]) == 4);
  REQUIRE(split.history(split.test[0]) == Sequence{1, 2, 3, 4});
  REQUIRE(split.window(split.test[0], 2) == Sequence{3, 4});
  // Ids are the users' ids in the log; streams the dense user index.
  REQUIRE(split.train[0].id == 100);
  REQUIRE(split.test[1].id == 300);
  REQUIRE(split.train[1].stream == 1);
  REQUIRE_NOTHROW(split.validate());
  // What training reads: the training sequences.
  const auto counts = split.training_item_counts();
  REQUIRE(counts[3] == 1);
  REQUIRE(counts[4] == 0);
  REQUIRE(counts[7] == 1);
  REQUIRE(counts[8] == 1);  // user 2 trains on nothing, but [8] is its training part
  REQUIRE(counts[9] == 0);
}

TEST_CASE("Every-prefix examples: one training example per position of the training sequences", "[data][examples]") {
  const ExampleSplit split = every_prefix(toy_log());
  REQUIRE(split.protocol == "every-prefix");
  REQUIRE(split.supervision == Supervision::kNewestPosition);
  REQUIRE(user_ends(split.train) == std::vector<std::pair<Index, Index>>{{0, 1}, {0, 2}, {1, 1}});
  REQUIRE(user_ends(split.valid) == user_ends(ExampleSplit(leave_one_out(toy_log())).valid));
  for (std::size_t i = 0; i < split.train.size(); ++i) REQUIRE(split.train[i].id == static_cast<std::int64_t>(i));
  // Streams: a user's newest example has stream = user, older ones user + num_users * k.
  REQUIRE(split.train[1].stream == 0);
  REQUIRE(split.train[0].stream == 3);
  REQUIRE(split.train[2].stream == 1);
  REQUIRE(every_prefix(toy_log(), 3, 2).train.size() == 1);  // histories of at least 2 items: [1 2] -> 3
  REQUIRE_THROWS_AS(every_prefix(toy_log(), 3, 0), ConfigError);
}

TEST_CASE("Temporal split: examples split globally by the time of their target", "[data][examples]") {
  const auto dir = test::temp_dir("temporal");
  const std::string path = (dir / "log.csv").string();
  {
    std::ofstream out(path);
    out << "user,item,timestamp\n"
           "1,10,1\n1,11,2\n1,12,7\n1,13,9\n"
           "2,20,3\n2,21,4\n2,22,8\n"
           "3,30,5\n3,31,6\n";
  }
  const auto log = read_log(path);
  REQUIRE(log.has_timestamps);
  REQUIRE(log.times[0] == std::vector<double>{1, 2, 7, 9});
  // Candidates (target time): u0: 2, 7, 9; u1: 4, 8; u2: 6. Cut-offs by time: valid from 7, test from 9.
  TemporalSplitConfig config;
  config.valid_from = 7;
  config.test_from = 9;
  const ExampleSplit split = temporal_split(log, config);
  REQUIRE(split.protocol == "temporal");
  REQUIRE(split.supervision == Supervision::kNewestPosition);
  REQUIRE(user_ends(split.train) == std::vector<std::pair<Index, Index>>{{0, 1}, {1, 1}, {2, 1}});
  REQUIRE(user_ends(split.valid) == std::vector<std::pair<Index, Index>>{{0, 2}, {1, 2}});
  REQUIRE(user_ends(split.test) == std::vector<std::pair<Index, Index>>{{0, 3}});
  REQUIRE(split.history(split.test[0]).size() == 3);  // a test example reads everything before it
  // By fractions of the examples in time order: 6 examples, test 1/6 -> the last one, valid the one before.
  TemporalSplitConfig fractions;
  fractions.valid_fraction = 1.0 / 6;
  fractions.test_fraction = 1.0 / 6;
  const ExampleSplit by_fraction = temporal_split(log, fractions);
  REQUIRE(user_ends(by_fraction.test) == std::vector<std::pair<Index, Index>>{{0, 3}});
  REQUIRE(user_ends(by_fraction.valid) == std::vector<std::pair<Index, Index>>{{1, 2}});
  REQUIRE(by_fraction.train.size() == 4);
  // Errors: no times, inconsistent cut-offs, fractions that leave nothing to train on.
  REQUIRE_THROWS_WITH(temporal_split(make_log({{1, 2}}, 2, "memory")), Contains("memory: a temporal split needs the time"));
  TemporalSplitConfig bad;
  bad.valid_from = 5;
  REQUIRE_THROWS_AS(temporal_split(log, bad), ConfigError);
  bad.test_from = 4;
  REQUIRE_THROWS_AS(temporal_split(log, bad), ConfigError);
  TemporalSplitConfig greedy;
  greedy.valid_fraction = 0.5;
  greedy.test_fraction = 0.5;
  REQUIRE_THROWS_AS(temporal_split(log, greedy), ConfigError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("A text log orders interactions by their line in the file", "[data][examples]") {
  const auto dir = test::temp_dir("text_times");
  const std::string path = (dir / "log.txt").string();
  {
    std::ofstream out(path);
    out << "1 5\n2 6\n1 7\n2 8\n";
  }
  const auto log = read_log(path);
  REQUIRE_FALSE(log.has_timestamps);
  REQUIRE(log.times[0] == std::vector<double>{0, 2});
  REQUIRE(log.times[1] == std::vector<double>{1, 3});
  std::filesystem::remove_all(dir);
}

TEST_CASE("Example splits reject examples outside their sequences", "[data][examples][errors]") {
  ExampleSplit split = leave_one_out(toy_log());
  split.valid[0].end = 5;  // no target after the last item
  REQUIRE_THROWS_WITH(split.validate(), Contains("valid example 0"));
  split = leave_one_out(toy_log());
  split.train[0].end = 0;  // no history
  REQUIRE_THROWS_AS(split.validate(), ShapeError);
  split = leave_one_out(toy_log());
  split.num_items = 4;  // ids beyond the catalogue
  REQUIRE_THROWS_WITH(split.validate(), Contains("item id 5"));
}
