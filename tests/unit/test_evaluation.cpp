#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/metrics.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/models/popularity.hpp"

#include "support.hpp"

#include <cstdint>
#include <limits>

using namespace distillrec;

namespace {

// A fixed scorer: user vector = one-hot of the last history item's parity; item table chosen so
// scores are known exactly.
struct FixedModel {
  using Scalar = float;
  struct Workspace {};
  Matrix<float> table;  // [N + 1, 1], row 0 unused (item ids index it directly)
  std::vector<float> bias;  // empty, or [N]: an untied head's bias
  ItemId num_items() const { return static_cast<ItemId>(table.rows() - 1); }
  nn::HeadWeights<float> output_weights() const {
    return nn::HeadWeights<float>{ConstMatrixMap<float>(table.data() + 1, table.rows() - 1, 1), bias.empty() ? nullptr : bias.data()};
  }
  void encode(const std::vector<Sequence>& histories, MatrixRef<float> out, Workspace&) const {
    for (std::size_t i = 0; i < histories.size(); ++i) {
      if (histories[i].empty()) throw ShapeError("empty history");
      out(static_cast<Index>(i), 0) = 1.0f;
    }
  }
};

data::LeaveOneOutSplit toy_split() {
  // 6 items; scores are 6, 5, 4, 3, 2, 1 for items 1..6.
  auto log = data::make_log({{1, 2, 3, 4}, {5, 6, 1}, {2, 3}}, 6, "toy");
  return data::leave_one_out(log);
}

}  // namespace

TEST_CASE("Ranking metrics follow the shared definitions", "[eval][metrics]") {
  eval::RankingMetrics metrics({1, 5, 10});
  metrics.add(0);
  metrics.add(4);
  metrics.add(12);
  metrics.add(-1);
  const auto v = metrics.values();
  REQUIRE(v.at("HR@1") == Approx(0.25));
  REQUIRE(v.at("HR@5") == Approx(0.5));
  REQUIRE(v.at("HR@10") == Approx(0.5));
  REQUIRE(v.at("NDCG@5") == Approx((1.0 + 1.0 / std::log2(6.0)) / 4));
  REQUIRE(v.at("MRR") == Approx((1.0 + 0.2 + 1.0 / 13) / 4));
  REQUIRE_THROWS_AS(eval::RankingMetrics({0}), ConfigError);
}

TEST_CASE("Full ranking ranks against all items, masks history, ties pessimistic", "[eval][full_ranking]") {
  FixedModel model;
  model.table.resize(7, 1);
  model.table << 0, 6, 5, 4, 3, 2, 1;
  const auto split = toy_split();
  REQUIRE(split.evaluable_users == std::vector<Index>({0, 1}));
  // User 0: train {1, 2}, valid 3, test 4. User 1: train {5}, valid 6, test 1.
  // Valid, history masked: user 0 ranks item 3 behind 4..6? No: scores 6,5,4,... item 3 has
  // score 4; unmasked better items: none of {1, 2} (masked) -> rank 0. User 1: item 6 (score 1)
  // behind items 1, 2, 3, 4 (5 masked) -> rank 4.
  auto valid = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid);
  REQUIRE(valid.protocol == "full");
  REQUIRE(valid.num_users == 2);
  REQUIRE(valid.value("HR@1") == Approx(0.5));
  REQUIRE(valid.value("MRR") == Approx((1.0 + 1.0 / 5) / 2));
  eval::FullRankingOptions keep;
  keep.mask_history = false;
  auto unmasked = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid, keep);
  // User 0: items 1, 2 now ahead -> rank 2; user 1: items 1..5 ahead -> rank 5.
  REQUIRE(unmasked.value("MRR") == Approx((1.0 / 3 + 1.0 / 6) / 2));
  // All-equal scores: pessimistic ties put the target last among the unmasked items.
  model.table.setConstant(1.0f);
  auto tied = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest);
  REQUIRE(tied.value("HR@1") == 0.0);
  REQUIRE(tied.summary().find("test [full ranking") == 0);
  REQUIRE_THROWS_AS(tied.value("HR@1000"), ConfigError);
}

TEST_CASE("A head's bias takes part in the ranking", "[eval][full_ranking]") {
  FixedModel model;
  model.table.resize(7, 1);
  model.table << 0, 6, 5, 4, 3, 2, 1;
  // A bias that reverses the order: scores 6, 5.5, 5, 4.5, 4, 3.5 -> items 1..6 still ordered,
  // then one that makes item 6 the best.
  model.bias = {0, 0.5f, 1, 1.5f, 2, 10};
  const auto split = toy_split();
  const auto valid = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid);
  // User 1's valid target is item 6 (score 11): first. User 0's item 3 (score 5) behind 6 -> rank 1.
  REQUIRE(valid.value("MRR") == Approx((1.0 / 2 + 1.0) / 2));
}

TEST_CASE("A NaN score anywhere in a row is an error, not a silent rank", "[eval][full_ranking][errors]") {
  FixedModel model;
  model.table.resize(7, 1);
  model.table << 0, 6, 5, 4, 3, 2, 1;
  model.table(5, 0) = std::numeric_limits<float>::quiet_NaN();  // item 5, never a target here
  const auto split = toy_split();
  REQUIRE_THROWS_WITH(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid),
                      Catch::Matchers::Contains("NaN score for item 5"));
  const float scores[] = {1.0f, std::numeric_limits<float>::quiet_NaN(), 0.5f};
  REQUIRE_THROWS_AS(eval::rank_of_target(scores, 3, 1), Error);
}

TEST_CASE("Popularity baseline is evaluated on the same path", "[eval][full_ranking]") {
  const auto split = toy_split();
  models::Popularity<float> popularity(split.train, split.num_items);
  REQUIRE(popularity.count(1) == 1);  // item 1 once in training
  const auto result = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest);
  REQUIRE(result.num_users == 2);
  // Counting what a split's training examples read gives the same counts.
  const models::Popularity<float> from_examples{data::ExampleSplit(split)};
  for (ItemId i = 1; i <= split.num_items; ++i) REQUIRE(from_examples.count(i) == popularity.count(i));
}

TEST_CASE("Popularity keeps counting beyond 2^24 occurrences", "[eval][popularity]") {
  // Item 1 occurs 2^24 + 1 times, item 2 exactly 2^24 times: a float count would tie them.
  const std::int64_t big = std::int64_t{1} << 24;
  std::vector<Sequence> train(2);
  train[0].assign(static_cast<std::size_t>(big + 1), 1);
  train[1].assign(static_cast<std::size_t>(big), 2);
  train[1].push_back(3);
  const models::Popularity<float> popularity(train, 3);
  REQUIRE(popularity.count(1) == big + 1);
  REQUIRE(popularity.count(2) == big);
  const auto head = popularity.output_weights();
  REQUIRE(head.weight(0, 0) > head.weight(1, 0));  // item 1 strictly above item 2
  REQUIRE(head.weight(1, 0) > head.weight(2, 0));
}

TEST_CASE("Sampled candidates are seeded, exclude the user's items and round-trip through a file",
          "[eval][sampled]") {
  auto log = data::make_log({{1, 2, 3, 4, 5}, {6, 7, 8}, {9, 10, 11, 12}}, 400, "toy");
  const auto split = data::leave_one_out(log);
  const auto a = eval::SampledCandidates::generate(split, eval::EvalSplit::kTest, 100, 7);
  const auto b = eval::SampledCandidates::generate(split, eval::EvalSplit::kTest, 100, 7);
  const auto c = eval::SampledCandidates::generate(split, eval::EvalSplit::kTest, 100, 8);
  REQUIRE(a.items == b.items);
  REQUIRE(a.items != c.items);
  REQUIRE(a.items.cols() == 101);
  for (Index r = 0; r < a.items.rows(); ++r) {
    const Index user = a.users[static_cast<std::size_t>(r)];
    REQUIRE(a.items(r, 0) == split.test[static_cast<std::size_t>(user)]);
    std::vector<ItemId> negatives(a.items.row(r).data() + 1, a.items.row(r).data() + 101);
    std::sort(negatives.begin(), negatives.end());
    REQUIRE(std::adjacent_find(negatives.begin(), negatives.end()) == negatives.end());
    for (ItemId item : log.sequences[static_cast<std::size_t>(user)]) {
      REQUIRE(!std::binary_search(negatives.begin(), negatives.end(), item));
    }
  }
  const auto dir = test::temp_dir("candidates");
  const std::string path = (dir / "test.npy").string();
  a.save(path);
  const auto loaded = eval::SampledCandidates::load(path, split, eval::EvalSplit::kTest);
  REQUIRE(loaded.items == a.items);
  REQUIRE(loaded.users == a.users);
  // Candidates for the test split do not fit the validation split (different targets).
  REQUIRE_THROWS_AS(eval::SampledCandidates::load(path, split, eval::EvalSplit::kValid), FormatError);
  // Too few items left to sample from.
  auto small = data::leave_one_out(data::make_log({{1, 2, 3}}, 50, "small"));
  REQUIRE_THROWS_AS(eval::SampledCandidates::generate(small, eval::EvalSplit::kTest, 100, 1), ConfigError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Sampled evaluation ranks the target among its candidates", "[eval][sampled]") {
  auto log = data::make_log({{1, 2, 3, 4, 5}, {6, 7, 8}}, 300, "toy");
  const auto split = data::leave_one_out(log);
  FixedModel model;
  model.table.resize(301, 1);
  for (Index i = 0; i <= 300; ++i) model.table(i, 0) = static_cast<float>(i);  // higher id, higher score
  const auto candidates = eval::SampledCandidates::generate(split, eval::EvalSplit::kTest, 100, 3);
  const auto result = eval::evaluate_sampled(model, split, eval::EvalSplit::kTest, candidates);
  REQUIRE(result.protocol == "sampled-100");
  // Expected ranks: number of negatives with a larger id than the target.
  eval::RankingMetrics expected({1, 5, 10});
  for (Index r = 0; r < candidates.items.rows(); ++r) {
    Index rank = 0;
    for (Index c = 1; c < 101; ++c) rank += candidates.items(r, c) >= candidates.items(r, 0);
    expected.add(rank);
  }
  REQUIRE(result.value("MRR") == Approx(expected.values().at("MRR")));
  REQUIRE_THROWS_AS(eval::evaluate_sampled(model, split, eval::EvalSplit::kValid, candidates), ConfigError);
}

TEST_CASE("Errors inside the parallel evaluation reach the caller as exceptions", "[eval][full_ranking]") {
  struct ThrowingModel : FixedModel {
    void encode(const std::vector<Sequence>& histories, MatrixRef<float> out, Workspace& ws) const {
      for (const auto& h : histories) {
        if (std::find(h.begin(), h.end(), 250) != h.end()) throw ShapeError("item 250 rejected");
      }
      FixedModel::encode(histories, out, ws);
    }
  };
  std::vector<Sequence> sequences;
  for (int u = 0; u < 600; ++u) {
    sequences.push_back(u == 517 ? Sequence{250, 2, 3, 4} : Sequence{1 + u % 200, 2 + u % 200, 3 + u % 200, 4});
  }
  const auto split = data::leave_one_out(data::make_log(sequences, 300, "many"));
  ThrowingModel model;
  model.table = Matrix<float>::Ones(301, 1);
  eval::FullRankingOptions options;
  options.block_users = 16;  // many blocks, in parallel
  REQUIRE_THROWS_WITH(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, options),
                      Catch::Matchers::Contains("item 250 rejected"));
}

namespace {

// A scoring model with a Gaussian item table and user vectors drawn from a hash of the history:
// enough structure for ranks to spread over the whole catalogue.
struct GaussianModel {
  using Scalar = float;
  struct Workspace {};
  Matrix<float> table;
  ItemId num_items() const { return static_cast<ItemId>(table.rows()); }
  nn::HeadWeights<float> output_weights() const { return {ConstMatrixMap<float>(table.data(), table.rows(), table.cols()), nullptr}; }
  void encode(const std::vector<Sequence>& histories, MatrixRef<float> out, Workspace&) const {
    for (std::size_t i = 0; i < histories.size(); ++i) {
      // Close to the last item's row, so targets (the next item) rank near the top sometimes.
      out.row(static_cast<Index>(i)) = table.row(histories[i].back() - 1);
      Rng rng(static_cast<std::uint64_t>(histories[i].size() * 7919 + static_cast<std::size_t>(histories[i].back())));
      for (Index c = 0; c < out.cols(); ++c) out(static_cast<Index>(i), c) += static_cast<float>(0.2 * rng.normal());
    }
  }
};

}  // namespace

TEST_CASE("Full ranking under a scoring policy ranks as the policy serves", "[eval][full_ranking]") {
  Rng rng(31);
  const Index n = 3000, d = 24;
  // Neighbouring ids have similar rows (an AR(1) walk over ids) and sequences step to a
  // neighbour: the model ranks the target near the top often, not only by chance.
  GaussianModel model{test::random_matrix<float>(n, d, rng)};
  for (Index j = 1; j < n; ++j) model.table.row(j) = 0.95f * model.table.row(j - 1) + 0.31f * model.table.row(j);
  std::vector<Sequence> sequences(400);
  for (auto& s : sequences) {
    ItemId item = static_cast<ItemId>(1 + rng.uniform_int(std::uint64_t{3000}));
    for (int j = 0; j < 6; ++j) {
      s.push_back(item);
      item = static_cast<ItemId>(1 + (item + static_cast<ItemId>(rng.uniform_int(std::uint64_t{3}))) % n);  // a neighbour follows
    }
  }
  const auto split = data::leave_one_out(data::make_log(sequences, n, "gaussian"));
  const auto fp32 = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest);
  REQUIRE(fp32.metrics.at("HR@10") > 0.2);
  auto options = [](serve::Precision precision, Index block, Index shortlist) {
    eval::FullRankingOptions o;
    o.scoring.precision = precision;
    o.scoring.item_block = block;
    o.scoring.shortlist = shortlist;
    return o;
  };
  // fp32 in blocks of items: the same ranks.
  const auto blocked = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, options(serve::Precision::kFp32, 256, 0));
  for (const auto& [name, value] : fp32.metrics) CHECK(blocked.metrics.at(name) == Approx(value).margin(1e-12));
  // int8 with a shortlist of the whole catalogue re-scores every item exactly: fp32's ranks.
  const auto exact = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, options(serve::Precision::kInt8, 512, n));
  for (const auto& [name, value] : fp32.metrics) CHECK(exact.metrics.at(name) == Approx(value).margin(1e-9));
  CHECK_THAT(exact.description, Catch::Contains("scoring int8"));
  // The default policies stay close to fp32 on every metric.
  for (auto precision : {serve::Precision::kBf16, serve::Precision::kInt8}) {
    const auto approx = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, options(precision, 1000, 0));
    CAPTURE(serve::to_string(precision));
    for (const auto& [name, value] : fp32.metrics) CHECK(approx.metrics.at(name) == Approx(value).epsilon(0.02).margin(1e-3));
  }
  // A tiny shortlist changes ranks beyond it only: HR@1 still comes from exact scores.
  const auto tiny = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, options(serve::Precision::kInt8, 1000, 20));
  CHECK(tiny.metrics.at("HR@1") == Approx(fp32.metrics.at("HR@1")).epsilon(0.05));
}
