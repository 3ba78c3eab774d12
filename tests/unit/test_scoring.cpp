#include "distillrec/serve/scoring.hpp"

#include "support.hpp"

#include <limits>

using namespace distillrec;

TEST_CASE("top_k returns the best items, best first, ties to the lower id, masked items never", "[serve][scoring]") {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> scores = {0.5f, 2.0f, -inf, 2.0f, 1.0f, 3.0f};  // items 1..6
  std::vector<serve::ScoredItem> top;
  serve::top_k(scores.data(), 6, 3, top);
  REQUIRE(top.size() == 3);
  REQUIRE(top[0].item == 6);
  REQUIRE(top[1].item == 2);
  REQUIRE(top[2].item == 4);
  serve::top_k(scores.data(), 6, 10, top);
  REQUIRE(top.size() == 5);  // item 3 is masked
  REQUIRE(top.back().item == 1);
  serve::top_k(scores.data(), 6, 0, top);
  REQUIRE(top.empty());
  scores[4] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_AS(serve::top_k(scores.data(), 6, 3, top), Error);
}

TEST_CASE("top_k agrees with a full sort on random scores", "[serve][scoring]") {
  Rng rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> scores(1000);
    for (auto& s : scores) s = static_cast<float>(std::round(rng.normal() * 20) / 20);  // many ties
    std::vector<serve::ScoredItem> top;
    serve::top_k(scores.data(), 1000, 25, top);
    std::vector<std::pair<float, int>> all;
    for (int j = 0; j < 1000; ++j) all.emplace_back(-scores[j], j + 1);
    std::sort(all.begin(), all.end());
    for (int i = 0; i < 25; ++i) {
      REQUIRE(top[i].item == all[i].second);
      REQUIRE(top[i].score == -all[i].first);
    }
  }
}

TEST_CASE("score_items, mask_items and score_candidates agree, with and without a bias", "[serve][scoring]") {
  Rng rng(2);
  const Matrix<float> weight = test::random_matrix<float>(5, 3, rng);  // items 1..5
  const Matrix<float> bias = test::random_matrix<float>(1, 5, rng);
  const Matrix<float> users = test::random_matrix<float>(2, 3, rng);
  Matrix<float> scores(2, 5);
  const nn::HeadWeights<float> untied{ConstMatrixMap<float>(weight.data(), 5, 3), bias.data()};
  serve::score_items<float>(users, untied, scores);
  REQUIRE(scores(1, 2) == Approx(users.row(1).dot(weight.row(2)) + bias(0, 2)));
  const nn::HeadWeights<float> table{ConstMatrixMap<float>(weight.data(), 5, 3), nullptr};
  serve::score_items<float>(users, table, scores);
  REQUIRE(scores(1, 2) == Approx(users.row(1).dot(weight.row(2))));
  serve::mask_items<float>(scores, 0, {2, 5, 0, 99});
  REQUIRE(scores(0, 1) == -std::numeric_limits<float>::infinity());
  REQUIRE(scores(0, 4) == -std::numeric_limits<float>::infinity());
  REQUIRE(std::isfinite(scores(0, 0)));
  Matrix<ItemId> candidates(2, 2);
  candidates << 3, 1, 5, 4;
  Matrix<float> candidate_scores(2, 2);
  serve::score_candidates<float>(users, table, candidates, candidate_scores);
  REQUIRE(candidate_scores(1, 0) == Approx(scores(1, 4)));
  serve::score_candidates<float>(users, untied, candidates, candidate_scores);
  REQUIRE(candidate_scores(1, 0) == Approx(users.row(1).dot(weight.row(4)) + bias(0, 4)));
  candidates(0, 0) = 6;
  REQUIRE_THROWS_AS(serve::score_candidates<float>(users, table, candidates, candidate_scores), ShapeError);
  Matrix<float> wrong(2, 4);
  REQUIRE_THROWS_AS(serve::score_items<float>(users, table, wrong), ShapeError);
}
