// End-to-end on the real Amazon Games log (../shared/data/amazon-games.txt). Skipped, not
// failed, where the file is absent.
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("SASRec on the Amazon Games log beats popularity after a few epochs and survives a checkpoint",
          "[integration][real-data]") {
  const std::string path = test::real_data_path("amazon-games.txt");
  if (path.empty()) {
    WARN("amazon-games.txt not found; skipping");
    return;
  }
  const auto split = data::leave_one_out(data::read_log(path));
  REQUIRE(split.num_items == 23715);
  models::Popularity<float> popularity(split.train, split.num_items);
  const auto popularity_full = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest);

  models::SASRecConfig config;
  config.num_items = split.num_items;
  auto model = std::make_shared<models::SASRec<float>>(config);
  Rng rng(1);
  model->initialize(rng);
  train::TrainerConfig training;
  training.epochs = 5;
  training.eval_every = 0;
  training.log = nullptr;
  train::Trainer<models::SASRec<float>> trainer(*model, split, training);
  const auto summary = trainer.fit();
  REQUIRE(summary.epochs.back().loss < summary.epochs.front().loss);

  const auto full = eval::evaluate_full_ranking(*model, split, eval::EvalSplit::kTest);
  const auto candidates = eval::SampledCandidates::generate(split, eval::EvalSplit::kTest);
  const auto sampled = eval::evaluate_sampled(*model, split, eval::EvalSplit::kTest, candidates);
  INFO(full.summary());
  INFO(sampled.summary());
  INFO(popularity_full.summary());
  CHECK(full.value("NDCG@10") > popularity_full.value("NDCG@10"));
  CHECK(full.value("HR@10") > popularity_full.value("HR@10"));
  CHECK(sampled.value("HR@10") > 0.5);

  const auto dir = test::temp_dir("real_checkpoint");
  const std::string file = (dir / "sasrec.safetensors").string();
  io::save_checkpoint(*model, file);
  auto loaded = std::make_shared<models::SASRec<float>>(io::load_checkpoint<models::SASRec<float>>(file));
  serve::Recommender<models::SASRec<float>> a(model), b(loaded);
  for (Index i = 0; i < 50; ++i) {
    const Index user = split.evaluable_users[static_cast<std::size_t>(i * 97)];
    REQUIRE(a.recommend(split.test_history(user)) == b.recommend(split.test_history(user)));
  }
  std::filesystem::remove_all(dir);
}
