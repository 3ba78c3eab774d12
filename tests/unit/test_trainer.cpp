#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <sstream>

using namespace distillrec;

namespace {

data::LeaveOneOutSplit synthetic_split() {
  data::SyntheticConfig config;
  config.num_users = 1200;
  config.num_items = 300;
  config.num_clusters = 10;
  config.max_length = 20;
  config.seed = 5;
  return data::leave_one_out(data::generate_synthetic(config));
}

models::SASRecConfig small_model(ItemId num_items) {
  models::SASRecConfig config;
  config.num_items = num_items;
  config.hidden_size = 32;
  config.num_blocks = 2;
  config.num_heads = 2;
  config.max_length = 20;
  config.dropout = 0.2;
  return config;
}

}  // namespace

TEST_CASE("SASRec training lowers the loss and beats popularity on held-out data, for every objective",
          "[train][trainer][sasrec]") {
  const auto split = synthetic_split();
  models::Popularity<float> popularity(split.train, split.num_items);
  const double popularity_ndcg =
      eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  for (auto objective : {train::Objective::kBce, train::Objective::kSoftmax, train::Objective::kSampledSoftmax}) {
    CAPTURE(train::to_string(objective));
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(1);
    model.initialize(rng);
    train::TrainerConfig config;
    config.epochs = 12;
    config.batch_size = 64;
    config.objective.objective = objective;
    config.objective.sampled_negatives = 64;
    config.adam.learning_rate = 3e-3;
    config.eval_every = 3;
    config.patience = 0;
    std::ostringstream log;
    config.log = &log;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    const auto summary = trainer.fit();
    REQUIRE(summary.epochs.size() == 12);
    CHECK(summary.epochs.back().loss < 0.8 * summary.epochs.front().loss);
    const double ndcg = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10");
    CHECK(ndcg > 1.5 * popularity_ndcg);
    CHECK(log.str().find("epoch  12/12") != std::string::npos);
    CHECK(log.str().find("ETA") != std::string::npos);
  }
}

TEST_CASE("Trainer keeps the best validation epoch, stops early and is deterministic", "[train][trainer]") {
  const auto split = synthetic_split();
  auto run = [&](Index patience) {
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(2);
    model.initialize(rng);
    train::TrainerConfig config;
    config.epochs = 30;
    config.adam.learning_rate = 2e-2;  // high on purpose: validation quality peaks early
    config.eval_every = 1;
    config.patience = patience;
    config.log = nullptr;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    auto summary = trainer.fit();
    const double restored = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid).value("NDCG@10");
    return std::make_pair(summary, restored);
  };
  const auto [summary, restored] = run(2);
  REQUIRE(summary.best_epoch >= 1);
  // The parameters of the best epoch are restored.
  REQUIRE(restored == Approx(summary.best_score).epsilon(1e-9));
  for (const auto& e : summary.epochs) REQUIRE(e.validation->value("NDCG@10") <= summary.best_score);
  if (summary.stopped_early) REQUIRE(static_cast<Index>(summary.epochs.size()) == summary.best_epoch + 2);
  const auto [again, restored_again] = run(2);
  REQUIRE(again.epochs.size() == summary.epochs.size());
  for (std::size_t i = 0; i < again.epochs.size(); ++i) REQUIRE(again.epochs[i].loss == summary.epochs[i].loss);
  REQUIRE(restored_again == restored);
}

TEST_CASE("Trainer rejects bad configurations and diverging runs", "[train][trainer]") {
  const auto split = synthetic_split();
  models::SASRec<float> model(small_model(split.num_items));
  Rng rng(3);
  model.initialize(rng);
  train::TrainerConfig config;
  config.log = nullptr;
  config.epochs = 0;
  REQUIRE_THROWS_AS((train::Trainer<models::SASRec<float>>(model, split, config)), ConfigError);
  config.epochs = 1;
  config.adam.beta2 = 1.5;
  REQUIRE_THROWS_AS((train::Trainer<models::SASRec<float>>(model, split, config)), ConfigError);
  config.adam.beta2 = 0.98;
  models::SASRec<float> wrong(small_model(split.num_items + 1));
  REQUIRE_THROWS_AS((train::Trainer<models::SASRec<float>>(wrong, split, config)), ShapeError);
  // NaN weights make the loss non-finite: training stops with a clear error.
  model.parameters().value(model.parameters().find("final_norm.weight"))(0, 0) = std::numeric_limits<float>::quiet_NaN();
  train::Trainer<models::SASRec<float>> trainer(model, split, config);
  REQUIRE_THROWS_WITH(trainer.fit(), Catch::Matchers::Contains("diverged"));
  REQUIRE_THROWS_AS(train::parse_objective("hinge"), ConfigError);
}
