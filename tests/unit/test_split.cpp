#include <fstream>
#include <map>

#include "distillrec/data/split.hpp"
#include "support.hpp"

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

TEST_CASE("leave_one_out holds out the last two items of users with enough history",
          "[data][split]") {
  const InteractionLog log =
      make_log({{1, 2, 3, 4, 5}, {6}, {}, {7, 8}, {9, 10, 11}, {2, 4, 6, 8}}, 11, "memory");
  const LeaveOneOutSplit split = leave_one_out(log);
  REQUIRE(split.num_users() == 6);
  REQUIRE(split.num_items == 11);
  REQUIRE(split.source == "memory");
  REQUIRE(split.evaluable_users == std::vector<Index>{0, 4, 5});
  REQUIRE(split.train == std::vector<Sequence>{{1, 2, 3}, {6}, {}, {7, 8}, {9}, {2, 4}});
  REQUIRE(split.valid == std::vector<ItemId>{4, 0, 0, 0, 10, 6});
  REQUIRE(split.test == std::vector<ItemId>{5, 0, 0, 0, 11, 8});
  REQUIRE(split.valid_history(0) == Sequence{1, 2, 3});
  REQUIRE(split.test_history(0) == Sequence{1, 2, 3, 4});
  REQUIRE(split.test_history(4) == Sequence{9, 10});
  // Users that are not evaluated: both histories are their whole (training) sequence.
  REQUIRE(split.valid_history(3) == Sequence{7, 8});
  REQUIRE(split.test_history(3) == Sequence{7, 8});
  REQUIRE(split.test_history(2).empty());
  REQUIRE_THROWS_AS(split.test_history(6), ShapeError);
  REQUIRE_THROWS_AS(split.valid_history(-1), ShapeError);
}

TEST_CASE("leave_one_out with a higher threshold (pmixer's 4)", "[data][split]") {
  const InteractionLog log = make_log({{1, 2, 3}, {1, 2, 3, 4}}, 4, "memory");
  const LeaveOneOutSplit split = leave_one_out(log, 4);
  REQUIRE(split.evaluable_users == std::vector<Index>{1});
  REQUIRE(split.train[0] == Sequence{1, 2, 3});
  REQUIRE(split.valid[0] == kPaddingId);
  REQUIRE(split.train[1] == Sequence{1, 2});
  REQUIRE(split.valid[1] == 3);
  REQUIRE(split.test[1] == 4);
}

TEST_CASE("leave_one_out rejects bad thresholds and logs with nothing to evaluate",
          "[data][split][errors]") {
  const InteractionLog log = make_log({{1, 2}, {3}, {}}, 3, "tiny-log");
  REQUIRE_THROWS_AS(leave_one_out(log, 2), ConfigError);
  REQUIRE_THROWS_WITH(leave_one_out(log, 2), Contains("min_interactions") && Contains("got 2"));
  REQUIRE_THROWS_AS(leave_one_out(log), FormatError);
  REQUIRE_THROWS_WITH(leave_one_out(log),
                      Contains("tiny-log: no user has at least 3 interactions, so nothing can be "
                               "evaluated (3 users, longest sequence has 2)"));
  REQUIRE_THROWS_AS(leave_one_out(make_log({}, 3, "no-users")), FormatError);
}

TEST_CASE("leave_one_out on the Amazon Games log", "[data][split][real]") {
  const std::string path = test::real_data_path("amazon-games.txt");
  if (path.empty()) {
    WARN("amazon-games.txt not found; skipping");
    return;
  }
  // Counted independently from the raw file.
  std::map<std::int64_t, Sequence> raw;
  {
    std::ifstream in(path);
    std::int64_t user = 0, item = 0;
    while (in >> user >> item) raw[user].push_back(static_cast<ItemId>(item));
  }
  Index expected_evaluable = 0;
  for (const auto& entry : raw) expected_evaluable += entry.second.size() >= 3 ? 1 : 0;

  const LeaveOneOutSplit split = leave_one_out(read_log(path));
  REQUIRE(static_cast<Index>(split.evaluable_users.size()) == expected_evaluable);
  CHECK(expected_evaluable == 31013 - 112);  // methods.md §4.1: 112 users have < 3 interactions
  REQUIRE(split.num_items == 23715);
  Index train_items = 0;
  for (const auto& sequence : split.train) train_items += static_cast<Index>(sequence.size());
  REQUIRE(train_items + 2 * expected_evaluable == 287107);
  // Spot checks against the raw sequences (user u is dense index u - 1).
  Index index = 0;
  for (const auto& [user, sequence] : raw) {
    const auto u = static_cast<std::size_t>(index);
    REQUIRE(user == index + 1);
    if (sequence.size() >= 3) {
      REQUIRE(split.test[u] == sequence.back());
      REQUIRE(split.valid[u] == sequence[sequence.size() - 2]);
      REQUIRE(split.test_history(index) == Sequence(sequence.begin(), sequence.end() - 1));
    } else {
      REQUIRE(split.test[u] == kPaddingId);
      REQUIRE(split.train[u] == sequence);
    }
    ++index;
  }
}
