#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <sstream>

using namespace distillrec;

namespace {

models::GRU4RecConfig tiny_config(nn::HeadKind head, Index layers = 1) {
  models::GRU4RecConfig config;
  config.num_items = 12;
  config.embedding_dim = 6;
  config.hidden_size = head == nn::HeadKind::kTied ? 6 : 7;
  config.num_layers = layers;
  config.max_length = 5;
  config.dropout = 0.3;
  config.head = head;
  return config;
}

}  // namespace

static_assert(models::is_sequence_model_v<models::GRU4Rec<float>>, "GRU4Rec conforms to the model contract");
static_assert(models::is_sequence_model_v<models::GRU4Rec<double>>, "GRU4Rec conforms to the model contract");

TEST_CASE("GRU4Rec gradients match finite differences, tied and untied heads, one and two layers",
          "[models][gru4rec][gradcheck]") {
  for (auto head : {nn::HeadKind::kUntied, nn::HeadKind::kTied}) {
    for (Index layers : {1, 2}) {
      CAPTURE(nn::to_string(head), layers);
      const auto config = tiny_config(head, layers);
      models::GRU4Rec<double> model(config);
      Rng rng(1);
      model.initialize(rng);
      auto& params = model.parameters();
      // The N(0, 0.01^2) item table makes tiny inputs: scale it up so every gradient matters.
      params.value(params.find("item_embedding.weight")) *= 50.0;
      params.value(params.find("item_embedding.weight")).row(0).setZero();
      const auto batch = test::tiny_batch(config.max_length);
      models::GRU4Rec<double>::Workspace ws;
      Matrix<double> r;
      // L = sum(outputs * R) + the base BCE through the head (so the head's gradients are checked).
      loss::SampledBinaryCrossEntropy<double> bce;
      loss::SampledBinaryCrossEntropy<double>::Workspace bce_ws;
      Matrix<double> grad_h;
      auto loss = [&](bool with_grads) {
        Rng dropout_rng(77);
        const auto h = model.forward_train(batch, dropout_rng, ws);
        if (r.size() == 0) r = test::random_matrix<double>(h.rows(), h.cols(), rng);
        grad_h.resize(h.rows(), h.cols());
        std::vector<ItemId> negatives(ws.targets.size(), 11);
        const double l = bce(h, model.output_weights(), ws.targets, negatives, 1, grad_h,
                             with_grads ? model.output_gradients() : nn::HeadGradients<double>{}, bce_ws);
        return (h.array() * r.array()).sum() + l;
      };
      loss(false);
      REQUIRE(ws.layout.num_tokens() == 5 + 2 + 1);
      params.zero_grad();
      loss(true);
      grad_h += r;
      model.backward(grad_h, ws);
      const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
      const double error =
          test::max_gradient_error<double>([&] { return loss(false); }, params.values(), grads.data(), params.buffer_size(), 800);
      CHECK(error < 1e-6);
      CHECK(params.grad(params.find("item_embedding.weight")).row(0).isZero());
      if (head == nn::HeadKind::kUntied) CHECK(params.grad(params.find("output.bias")).cwiseAbs().maxCoeff() > 0.0);
    }
  }
}

TEST_CASE("GRU4Rec encode equals the last positions of a forward pass without dropout", "[models][gru4rec]") {
  for (Index layers : {1, 2}) {
    auto config = tiny_config(nn::HeadKind::kUntied, layers);
    config.dropout = 0.0;
    models::GRU4Rec<double> model(config);
    Rng rng(9);
    model.initialize(rng);
    const auto batch = test::tiny_batch(config.max_length);
    models::GRU4Rec<double>::Workspace ws;
    Rng unused(1);
    const Matrix<double> full = model.forward_train(batch, unused, ws);
    const nn::SequenceLayout layout = ws.layout;
    std::vector<Sequence> histories;
    for (Index row = 0; row < batch.size(); ++row) {
      Sequence h;
      for (Index j = 0; j < batch.length(); ++j) {
        if (batch.inputs()(row, j) != 0) h.push_back(batch.inputs()(row, j));
      }
      histories.push_back(h);
    }
    Matrix<double> users(3, config.hidden_size);
    model.encode(histories, users, ws);
    for (Index s = 0; s < 3; ++s) REQUIRE((users.row(s) - full.row(layout.last(s))).cwiseAbs().maxCoeff() < 1e-12);
    // Histories longer than max_length keep the newest items; bad ids and empty histories are errors.
    Matrix<double> one(1, config.hidden_size), cut(1, config.hidden_size);
    model.encode({{1, 2, 3, 4, 5, 6, 7}}, one, ws);
    model.encode({{3, 4, 5, 6, 7}}, cut, ws);
    REQUIRE((one - cut).cwiseAbs().maxCoeff() == 0.0);
    REQUIRE_THROWS_AS(model.encode({{}}, one, ws), ShapeError);
    REQUIRE_THROWS_AS(model.encode({{13}}, one, ws), ShapeError);
  }
}

TEST_CASE("GRU4Rec configuration validates, round-trips through JSON and names its tensors", "[models][gru4rec]") {
  const auto config = tiny_config(nn::HeadKind::kUntied, 2);
  REQUIRE(models::GRU4RecConfig::from_json(config.to_json()).to_json() == config.to_json());
  auto bad = tiny_config(nn::HeadKind::kTied);
  bad.hidden_size = 8;  // a tied head needs hidden_size == embedding_dim
  REQUIRE_THROWS_WITH(bad.validate(), Catch::Matchers::Contains("must equal embedding_dim"));
  bad = config;
  bad.dropout = 1.0;
  REQUIRE_THROWS_AS(bad.validate(), ConfigError);
  REQUIRE_THROWS_AS(models::GRU4RecConfig::from_json(nlohmann::json{{"model", "sasrec"}, {"num_items", 3}}), ConfigError);
  models::GRU4Rec<float> model(config);
  const auto& p = model.parameters();
  const auto shape = [&](const std::string& name) {
    const auto id = p.find(name);
    REQUIRE(id >= 0);
    return std::make_pair(p.info(id).rows, p.info(id).cols);
  };
  REQUIRE(shape("item_embedding.weight") == std::make_pair(Index(13), Index(6)));
  REQUIRE(shape("gru.0.weight_ih") == std::make_pair(Index(21), Index(6)));
  REQUIRE(shape("gru.1.weight_ih") == std::make_pair(Index(21), Index(7)));
  REQUIRE(shape("gru.1.weight_hh") == std::make_pair(Index(21), Index(7)));
  REQUIRE(shape("gru.0.bias_hh") == std::make_pair(Index(1), Index(21)));
  REQUIRE(shape("output.weight") == std::make_pair(Index(12), Index(7)));
  REQUIRE(shape("output.bias") == std::make_pair(Index(1), Index(12)));
  models::GRU4Rec<float> tied(tiny_config(nn::HeadKind::kTied));
  REQUIRE(tied.parameters().find("output.weight") == -1);
  REQUIRE(tied.output_weights().num_items() == 12);
}

TEST_CASE("GRU4Rec trains with every objective and both heads, beats popularity, and round-trips through a checkpoint",
          "[models][gru4rec][train]") {
  const auto split = test::small_synthetic_split();
  models::Popularity<float> popularity(split.train, split.num_items);
  const double popularity_ndcg = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  struct Case {
    train::Objective objective;
    nn::HeadKind head;
    double learning_rate;
  };
  // The tied head scores with the small N(0, 0.01^2) item table and learns more slowly.
  for (const Case c : {Case{train::Objective::kBce, nn::HeadKind::kUntied, 5e-3}, Case{train::Objective::kSoftmax, nn::HeadKind::kUntied, 5e-3},
                       Case{train::Objective::kSampledSoftmax, nn::HeadKind::kUntied, 5e-3},
                       Case{train::Objective::kSoftmax, nn::HeadKind::kTied, 1e-2}}) {
    CAPTURE(train::to_string(c.objective), nn::to_string(c.head));
    models::GRU4RecConfig config;
    config.num_items = split.num_items;
    config.embedding_dim = 32;
    config.hidden_size = 32;
    config.max_length = 20;
    config.head = c.head;
    models::GRU4Rec<float> model(config);
    Rng rng(1);
    model.initialize(rng);
    train::TrainerConfig training;
    training.epochs = 10;
    training.batch_size = 64;
    training.objective.objective = c.objective;
    training.objective.sampled_negatives = 64;
    training.adam.learning_rate = c.learning_rate;
    training.eval_every = 0;
    training.log = nullptr;
    train::Trainer<models::GRU4Rec<float>> trainer(model, split, training);
    const auto summary = trainer.fit();
    CHECK(summary.epochs.back().loss < 0.9 * summary.epochs.front().loss);
    const auto result = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest);
    CHECK(result.value("NDCG@10") > 1.5 * popularity_ndcg);
    if (c.objective == train::Objective::kSoftmax && c.head == nn::HeadKind::kUntied) {
      const auto dir = test::temp_dir("gru4rec");
      const std::string path = (dir / "gru4rec.safetensors").string();
      io::save_checkpoint(model, path);
      auto loaded = io::load_checkpoint<models::GRU4Rec<float>>(path);
      CHECK(eval::evaluate_full_ranking(loaded, split, eval::EvalSplit::kTest).value("NDCG@10") == result.value("NDCG@10"));
      // It serves like any model: the recommender scores through the untied head.
      auto shared = std::make_shared<const models::GRU4Rec<float>>(std::move(loaded));
      serve::Recommender<models::GRU4Rec<float>> recommender(shared);
      const auto top = recommender.recommend(split.test_history(split.evaluable_users[0]), {5});
      REQUIRE(top.size() == 5);
      std::filesystem::remove_all(dir);
    }
  }
}
