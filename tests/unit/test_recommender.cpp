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

TEST_CASE("Recommender: batch equals single calls, concurrent calls are safe and identical", "[serve][recommender]") {
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

TEST_CASE("Recommender under bf16 and int8 scoring agrees with fp32, serial mode equals the library's threads",
          "[serve][recommender]") {
  const int threads_before = parallel::max_threads();
  auto model = make_model();
  const serve::Recommender<models::SASRec<float>> fp32(model);
  Rng rng(5);
  const auto histories = random_histories(200, rng);
  const auto expected = fp32.recommend_batch(histories, {10, true}, 16);
  for (auto precision : {serve::Precision::kBf16, serve::Precision::kInt8}) {
    serve::RecommenderConfig config;
    config.scoring.precision = precision;
    config.scoring.item_block = 128;  // several blocks of the 500 items
    const serve::Recommender<models::SASRec<float>> recommender(model, config);
    CAPTURE(recommender.scorer().description());
    const auto batch = recommender.recommend_batch(histories, {10, true}, 16);
    double overlap = 0.0, single_overlap = 0.0;
    for (std::size_t i = 0; i < histories.size(); ++i) {
      REQUIRE(batch[i].size() == 10);
      for (const auto& s : batch[i]) {
        REQUIRE(std::find(histories[i].begin(), histories[i].end(), s.item) == histories[i].end());
        overlap += std::count_if(expected[i].begin(), expected[i].end(), [&](const serve::ScoredItem& e) { return e.item == s.item; });
      }
      // A single user's vector may differ from the batch's in the last bit (another GEMM
      // shape), which rounding to bf16 or int8 can turn into a near-tie swap: items agree.
      const auto single = recommender.recommend(histories[i], {10, true});
      for (const auto& s : single) {
        single_overlap += std::count_if(batch[i].begin(), batch[i].end(), [&](const serve::ScoredItem& b) { return b.item == s.item; });
      }
    }
    CHECK(overlap / (10.0 * static_cast<double>(histories.size())) >= 0.95);
    CHECK(single_overlap / (10.0 * static_cast<double>(histories.size())) >= 0.98);
  }
  serve::RecommenderConfig serial_config;
  serial_config.threads = serve::ThreadPolicy::kSerial;
  const serve::Recommender<models::SASRec<float>> serial(model, serial_config);
  REQUIRE(serial.recommend_batch(histories, {10, true}, 16) == expected);
  std::vector<std::thread> threads;
  std::vector<int> same(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      int ok = 1;
      for (std::size_t i = 0; i < histories.size(); ++i) ok &= serial.recommend(histories[i], {10, true}) == fp32.recommend(histories[i], {10, true});
      same[static_cast<std::size_t>(t)] = ok;
    });
  }
  for (auto& th : threads) th.join();
  for (int ok : same) CHECK(ok == 1);
  CHECK(parallel::max_threads() == threads_before);  // serial mode restores the calling thread's setting
}

TEST_CASE("Recommender: caller exclusions, re-ranking and the user vector", "[serve][recommender]") {
  auto model = make_model();
  const serve::Recommender<models::SASRec<float>> recommender(model);
  const Sequence history = {5, 17, 42};
  const auto top = recommender.recommend(history, {10, true});
  // Leave out the first three of them: the rest move up, none of the excluded appears.
  const Sequence blocked = {top[0].item, top[1].item, top[2].item, 9999};
  serve::RecommendOptions options;
  options.exclude = &blocked;
  const auto without = recommender.recommend(history, options);
  REQUIRE(without.size() == 10);
  for (std::size_t i = 0; i < 7; ++i) CHECK(without[i] == top[i + 3]);
  for (const auto& s : without) {
    CHECK(std::find(blocked.begin(), blocked.end(), s.item) == blocked.end());
    CHECK(std::find(history.begin(), history.end(), s.item) == history.end());
  }
  options.exclude_history = false;  // only the caller's items
  const auto keep_history = recommender.recommend(history, options);
  for (const auto& s : keep_history) CHECK(std::find(blocked.begin(), blocked.end(), s.item) == blocked.end());

  // The user vector is the encoder's output; re-ranking scores candidates through the head.
  models::SASRec<float>::Workspace ws;
  Matrix<float> user(1, 16);
  model->encode({history}, user, ws);
  const auto vector = recommender.user_vector(history);
  REQUIRE(vector.size() == 16);
  for (Index c = 0; c < 16; ++c) CHECK(vector[static_cast<std::size_t>(c)] == user(0, c));
  const Sequence candidates = {400, 5, top[4].item, 77, top[0].item};
  const auto reranked = recommender.rerank(history, candidates);
  REQUIRE(reranked.size() == candidates.size());
  CHECK(reranked[0].item == top[0].item);
  CHECK(reranked[1].item == top[4].item);
  for (std::size_t i = 0; i < reranked.size(); ++i) {
    CHECK(reranked[i].score == Approx(user.row(0).dot(model->item_table().row(reranked[i].item))).epsilon(1e-5));
    if (i > 0) CHECK(reranked[i - 1].score >= reranked[i].score);
  }
  CHECK(recommender.rerank(history, {}).empty());
  CHECK_THROWS_WITH(recommender.rerank(history, {3, 501}), Catch::Contains("candidate item 501 is outside 1..500"));
}

TEST_CASE("Recommender: bad queries are clear errors and the engine stays usable", "[serve][recommender][errors]") {
  const serve::Recommender<models::SASRec<float>> recommender(make_model());
  CHECK_THROWS_WITH(recommender.recommend({}, {}), Catch::Contains("history 0 is empty"));
  CHECK_THROWS_WITH(recommender.recommend({3, 0, 7}, {}), Catch::Contains("item 0 at position 1, outside 1..500"));
  CHECK_THROWS_WITH(recommender.recommend({3, 501}, {}), Catch::Contains("item 501 at position 1"));
  CHECK_THROWS_WITH(recommender.recommend({3}, {0}), Catch::Contains("k must be in 1..500"));
  CHECK_THROWS_WITH(recommender.recommend({3}, {501}), Catch::Contains("got 501"));
  CHECK_THROWS_WITH(recommender.recommend_batch({{1}, {2, 3}, {}}, {}), Catch::Contains("history 2 is empty"));
  CHECK_THROWS_WITH(recommender.user_vector({}), Catch::Contains("empty"));
  CHECK_THROWS_AS(recommender.rerank({600}, {1}), ShapeError);
  CHECK(recommender.recommend({1, 2}, {3, true}).size() == 3);
  CHECK(recommender.recommend_batch({{1}, {2, 3}}, {}).size() == 2);
}
