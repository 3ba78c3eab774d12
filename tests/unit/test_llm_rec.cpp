#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/loss/softmax_ce.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/train/trainer.hpp"

#include "distillrec/nn/linear.hpp"

#include "support.hpp"

#include <sstream>

using namespace distillrec;

namespace {

models::LLMRecConfig tiny_config() {
  models::LLMRecConfig config;
  config.num_items = 12;
  config.item_dim = 6;
  config.hidden_size = 8;
  config.num_layers = 3;
  config.num_heads = 2;
  config.num_kv_heads = 1;
  config.ffn_size = 10;
  config.max_length = 5;
  config.dropout = 0.2;
  return config;
}

}  // namespace

TEST_CASE("LLMRec gradients match finite differences, with gradients added at hidden states",
          "[models][llm_rec][gradcheck]") {
  for (bool frozen : {false, true}) {
    CAPTURE(frozen);
    auto config = tiny_config();
    config.freeze_item_table = frozen;
    models::LLMRec<double> model(config);
    Rng rng(3);
    model.initialize(rng);
    auto& params = model.parameters();
    for (const auto& info : params.infos()) {
      if (info.name.find("norm") != std::string::npos) {
        params.value(params.find(info.name)).array() += test::random_matrix<double>(1, info.cols, rng, 0.2).array();
      }
    }
    const auto batch = test::tiny_batch(config.max_length);
    models::LLMRec<double>::Workspace ws;
    Matrix<double> r, r0, r2, r3;
    // A head outside the model (as SLMRec's W_a) reading H_1.
    Parameters<double> head_params;
    nn::Linear<double> head(head_params, "head", 8, 6, false);
    head_params.allocate();
    head.initialize(rng);
    // L = sum(u * r) + sum(H_0 * r0) + sum(H_2 * r2) + sum(F * r3) + CE of the head on H_1.
    loss::CatalogueSoftmaxCrossEntropy<double> ce;
    loss::CatalogueSoftmaxCrossEntropy<double>::Workspace ce_ws;
    auto loss = [&]() {
      Rng dropout_rng(77);
      const auto u = model.forward_train(batch, dropout_rng, ws);
      if (r.size() == 0) {
        r = test::random_matrix<double>(u.rows(), u.cols(), rng);
        r0 = test::random_matrix<double>(u.rows(), 8, rng);
        r2 = test::random_matrix<double>(u.rows(), 8, rng);
        r3 = test::random_matrix<double>(u.rows(), 8, rng);
      }
      const Matrix<double> h1 = model.hidden_state(ws, 1);
      Matrix<double> u1(h1.rows(), 6), gh(h1.rows(), 6);
      head.forward(h1, u1);
      const double ms = ce(u1, model.output_weights(), ws.targets, gh, nn::HeadGradients<double>{}, ce_ws);
      return (u.array() * r.array()).sum() + (model.hidden_state(ws, 0).array() * r0.array()).sum() +
             (model.hidden_state(ws, 2).array() * r2.array()).sum() + (model.hidden_state(ws, 3).array() * r3.array()).sum() + ms;
    };
    loss();
    REQUIRE(ws.layout.num_tokens() == 8);
    params.zero_grad();
    model.hidden_state_grad(ws, 0) = r0;
    model.hidden_state_grad(ws, 2) = r2;
    model.hidden_state_grad(ws, 3) = r3;
    {
      const Matrix<double> h1 = model.hidden_state(ws, 1);
      Matrix<double> u1(h1.rows(), 6), g1(h1.rows(), 6);
      head.forward(h1, u1);
      ce(u1, model.output_weights(), ws.targets, g1, model.output_gradients(), ce_ws);
      head.backward(g1, model.hidden_state_grad(ws, 1), nn::InputGrad::kAccumulate);
    }
    model.backward(r, ws);
    const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
    // A frozen table has no gradient: check the trainable parameters after it.
    const Index first = frozen ? params.info(params.find("input_adapter.weight")).offset : 0;
    const double error = test::max_gradient_error<double>(loss, params.values() + first, grads.data() + first,
                                                          params.buffer_size() - first, 800);
    CHECK(error < 1e-6);
    if (frozen) {
      CHECK(params.grad(params.find("item_embedding.weight")).cwiseAbs().maxCoeff() == 0.0);
      CHECK_FALSE(params.info(params.find("item_embedding.weight")).trainable);
    }
  }
}

TEST_CASE("LLMRec hidden states follow HF indexing and encode equals the last positions", "[models][llm_rec]") {
  auto config = tiny_config();
  models::LLMRec<double> model(config);
  Rng rng(5);
  model.initialize(rng);
  const std::vector<Sequence> histories = {{1, 2, 3}, {4}, {5, 6, 7, 8, 9, 10, 11}};
  models::LLMRec<double>::Workspace ws;
  model.forward_hidden_states(histories, ws);
  const Index n = ws.layout.num_tokens();
  REQUIRE(n == 3 + 1 + 5);  // the third history keeps its last max_length = 5 items
  // Index L is the final norm of the last block's output: recompute it by hand.
  const auto last_block = ws.stack.hidden[3].map();
  const auto& p = model.parameters();
  const auto gamma = p.value(p.find("final_norm.weight"));
  for (Index t = 0; t < n; ++t) {
    const double rms = std::sqrt(last_block.row(t).squaredNorm() / 8 + 1e-6);
    const RowVector<double> expected = last_block.row(t).cwiseProduct(gamma.row(0)) / rms;
    REQUIRE((model.hidden_state(ws, 3).row(t) - expected).cwiseAbs().maxCoeff() < 1e-12);
  }
  REQUIRE((model.hidden_state(ws, 1) - ws.stack.hidden[1].map()).cwiseAbs().maxCoeff() == 0.0);
  const Matrix<double> all_u = ws.output.map();
  Matrix<double> u(3, 6);
  models::LLMRec<double>::Workspace ws2;
  model.encode(histories, u, ws2);
  for (Index s = 0; s < 3; ++s) REQUIRE((u.row(s) - all_u.row(ws.layout.last(s))).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE_THROWS_AS(model.hidden_state(ws, 4), ShapeError);
  REQUIRE_THROWS_AS(model.encode({{1, 13}}, u.topRows(1), ws2), ShapeError);
  REQUIRE_THROWS_AS(model.encode({{}}, u.topRows(1), ws2), ShapeError);
}

TEST_CASE("LLMRec configuration validates, round-trips through JSON and counts block parameters", "[models][llm_rec]") {
  auto config = tiny_config();
  const auto back = models::LLMRecConfig::from_json(config.to_json());
  REQUIRE(back.to_json() == config.to_json());
  models::LLMRecConfig bad = config;
  bad.hidden_size = 6;  // heads of size 3: odd, no rotary embedding
  REQUIRE_THROWS_AS(bad.validate(), ConfigError);
  bad = config;
  bad.num_kv_heads = 3;
  REQUIRE_THROWS_AS(bad.validate(), ConfigError);
  REQUIRE_THROWS_AS(models::LLMRecConfig::from_json(nlohmann::json{{"model", "sasrec"}, {"num_items", 3}}), ConfigError);
  models::LLMRec<float> model(config);
  // Per block: 2 norms (8 each), q and o (8x8), k and v (4x8 with one kv head of size 4), gate/up/down (10x8).
  REQUIRE(model.num_block_parameters() == 3 * (2 * 8 + 2 * 64 + 2 * 32 + 3 * 80));
  REQUIRE(models::LLMRecConfig{}.effective_ffn_size() == 176);  // 8/3 * 64 rounded up to a multiple of 8
  Matrix<float> wrong(5, 6);
  REQUIRE_THROWS_AS(model.set_item_table(wrong), ShapeError);
}

TEST_CASE("LLMRec training lowers the loss, beats popularity and round-trips through a checkpoint",
          "[models][llm_rec][train]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 1200;
  synthetic.num_items = 300;
  synthetic.num_clusters = 10;
  synthetic.max_length = 20;
  synthetic.seed = 5;
  const auto split = data::leave_one_out(data::generate_synthetic(synthetic));
  models::Popularity<float> popularity(split.train, split.num_items);
  const double popularity_ndcg = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");

  models::LLMRecConfig config;
  config.num_items = split.num_items;
  config.item_dim = 32;
  config.hidden_size = 32;
  config.num_layers = 2;
  config.num_heads = 2;
  config.max_length = 20;
  config.dropout = 0.1;
  models::LLMRec<float> model(config);
  Rng rng(1);
  model.initialize(rng);
  train::TrainerConfig training;
  training.epochs = 8;
  training.batch_size = 64;
  training.objective.objective = train::Objective::kSoftmax;
  training.adam.learning_rate = 3e-3;
  training.eval_every = 4;
  training.patience = 0;
  std::ostringstream log;
  training.log = &log;
  train::Trainer<models::LLMRec<float>> trainer(model, split, training);
  const auto summary = trainer.fit();
  CHECK(summary.epochs.back().loss < 0.9 * summary.epochs.front().loss);
  const auto result = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest);
  CHECK(result.value("NDCG@10") > 1.5 * popularity_ndcg);

  const auto dir = test::temp_dir("llm_rec");
  const auto path = (dir / "model.safetensors").string();
  io::save_checkpoint(model, path);
  auto loaded = io::load_checkpoint<models::LLMRec<float>>(path);
  CHECK(loaded.config().to_json() == model.config().to_json());
  CHECK(eval::evaluate_full_ranking(loaded, split, eval::EvalSplit::kTest).value("NDCG@10") == result.value("NDCG@10"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("LLMRec with a frozen item table leaves the table unchanged in training", "[models][llm_rec][train]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 300;
  synthetic.num_items = 80;
  synthetic.max_length = 12;
  const auto split = data::leave_one_out(data::generate_synthetic(synthetic));
  models::LLMRecConfig config;
  config.num_items = split.num_items;
  config.item_dim = 16;
  config.hidden_size = 16;
  config.num_layers = 1;
  config.num_heads = 2;
  config.max_length = 12;
  config.freeze_item_table = true;
  models::LLMRec<float> model(config);
  Rng rng(2);
  model.initialize(rng);
  const Matrix<float> table = test::random_matrix<float>(split.num_items + 1, 16, rng);
  model.set_item_table(table);
  REQUIRE(model.item_table().row(0).isZero());
  const Matrix<float> before = model.item_table();
  train::TrainerConfig training;
  training.epochs = 2;
  training.objective.objective = train::Objective::kSoftmax;
  training.eval_every = 0;
  training.log = nullptr;
  train::Trainer<models::LLMRec<float>> trainer(model, split, training);
  trainer.fit();
  CHECK(Matrix<float>(model.item_table()) == before);
  CHECK(model.parameters().num_trainable_scalars() == model.parameters().num_scalars() - before.size());
}
