#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"

#include "support.hpp"

#include <thread>

using namespace distillrec;

namespace {

std::shared_ptr<const models::SASRec<float>> make_model() {
  models::SASRecConfig config;
  config.num_items = 500;
  config.hidden_size = 16;
  config.num_heads = 2;
  config.max_length = 10;
  auto model = std::make_shared<models::SASRec<float>>(config);
  Rng rng(1);
  model->initialize(rng);
  return model;
}

std::vector<Sequence> random_histories(Index count, Rng& rng) {
  std::vector<Sequence> histories(static_cast<std::size_t>(count));
  for (auto& h : histories) {
    const auto length = 1 + rng.uniform_int(std::uint64_t{15});
    for (std::uint64_t i = 0; i < length; ++i) h.push_back(static_cast<ItemId>(1 + rng.uniform_int(std::uint64_t{500})));
  }
  return histories;
}

}  // namespace

TEST_CASE("Recommender returns the top-k of the model's scores, excluding the history", "[serve][recommender]") {
  auto model = make_model();
  serve::Recommender<models::SASRec<float>> recommender(model);
  const Sequence history = {5, 17, 42, 17};
  const auto top = recommender.recommend(history, {10, true});
  REQUIRE(top.size() == 10);
  for (const auto& item : top) REQUIRE(std::find(history.begin(), history.end(), item.item) == history.end());
  for (std::size_t i = 1; i < top.size(); ++i) REQUIRE(top[i - 1].score >= top[i].score);
  // Scores are the dot products of the encoded user with the item table.
  models::SASRec<float>::Workspace ws;
  Matrix<float> user(1, 16);
  model->encode({history}, user, ws);
  REQUIRE(top[0].score == Approx(user.row(0).dot(model->item_table().row(top[0].item))).epsilon(1e-5));
  const auto with_seen = recommender.recommend(history, {500, false});
  REQUIRE(with_seen.size() == 500);
  REQUIRE_THROWS_AS(recommender.recommend({}, {}), ShapeError);
  REQUIRE_THROWS_AS(recommender.recommend({501}, {}), ShapeError);
}

TEST_CASE("Recommender: batch equals single calls; concurrent calls are safe and identical", "[serve][recommender]") {
  auto model = make_model();
  serve::Recommender<models::SASRec<float>> recommender(model);
  Rng rng(4);
  const auto histories = random_histories(300, rng);
  const auto batch = recommender.recommend_batch(histories, {10, true}, 32);
  REQUIRE(batch.size() == histories.size());
  // Blocks of users go through differently shaped GEMMs than single users, so scores may differ
  // in the last bits; items and scores must agree up to that.
  for (std::size_t i = 0; i < histories.size(); i += 7) {
    const auto single = recommender.recommend(histories[i], {10, true});
    REQUIRE(single.size() == batch[i].size());
    for (std::size_t j = 0; j < single.size(); ++j) {
      REQUIRE(single[j].score == Approx(batch[i][j].score).epsilon(1e-5).margin(1e-6));
      if (j + 1 < single.size() && std::abs(single[j].score - single[j + 1].score) > 1e-4f) {
        REQUIRE(single[j].item == batch[i][j].item);
      }
    }
  }
  const auto singles = [&] {
    std::vector<std::vector<serve::ScoredItem>> out;
    for (const auto& h : histories) out.push_back(recommender.recommend(h, {10, true}));
    return out;
  }();

  std::vector<std::vector<std::vector<serve::ScoredItem>>> per_thread(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (const auto& h : histories) per_thread[static_cast<std::size_t>(t)].push_back(recommender.recommend(h, {10, true}));
    });
  }
  for (auto& th : threads) th.join();
  // Concurrent single calls are bitwise identical to sequential ones.
  for (const auto& results : per_thread) REQUIRE(results == singles);
  REQUIRE_THROWS_AS(serve::Recommender<models::SASRec<float>>(nullptr), ConfigError);
}

TEST_CASE("Recommender rejects a block size of 0 instead of returning empty lists", "[serve][recommender][errors]") {
  serve::Recommender<models::SASRec<float>> recommender(make_model());
  Rng rng(3);
  const auto histories = random_histories(5, rng);
  REQUIRE_THROWS_WITH(recommender.recommend_batch(histories, {10, true}, 0), Catch::Matchers::Contains("block_users must be positive"));
  REQUIRE_THROWS_AS(recommender.recommend_batch(histories, {10, true}, -4), ConfigError);
  // A failing query returns its workspace to the pool: the next query still works.
  REQUIRE_THROWS_AS(recommender.recommend({0}), ShapeError);
  REQUIRE(recommender.recommend({1, 2}, {3, true}).size() == 3);
}
