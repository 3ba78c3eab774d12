// A host application built against the installed package: trains a small SASRec on synthetic
// data, checks that it beats popularity, and serves a recommendation.
#include <distillrec/distillrec.hpp>

#include <iostream>

int main() {
  using namespace distillrec;
  data::SyntheticConfig synthetic;
  synthetic.num_users = 1000;
  synthetic.num_items = 200;
  const auto split = data::leave_one_out(data::generate_synthetic(synthetic));
  models::SASRecConfig config;
  config.num_items = split.num_items;
  config.hidden_size = 32;
  config.max_length = 20;
  models::SASRec<float> model(config);
  Rng rng(1);
  model.initialize(rng);
  train::TrainerConfig trainer_config;
  trainer_config.epochs = 15;
  trainer_config.adam.learning_rate = 5e-3;
  trainer_config.eval_every = 0;
  trainer_config.log = nullptr;
  train::Trainer<models::SASRec<float>> trainer(model, split, trainer_config);
  trainer.fit();
  const double ndcg = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10");
  models::Popularity<float> popularity(split.train, split.num_items);
  const double baseline = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  std::cout << "gemm backend: " << (backend::kHasOneDnn ? "oneDNN" : "Eigen") << ", NDCG@10 " << ndcg
            << " (popularity " << baseline << ")\n";
  return ndcg > baseline ? 0 : 1;
}
