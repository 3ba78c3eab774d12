#include "distillrec/loss/bce.hpp"
#include "distillrec/models/sasrec.hpp"

#include "support.hpp"

using namespace distillrec;

namespace {

models::SASRecConfig tiny_config(models::BlockStyle style) {
  models::SASRecConfig config;
  config.num_items = 12;
  config.hidden_size = 8;
  config.num_blocks = 2;
  config.num_heads = 2;
  config.max_length = 5;
  config.dropout = 0.3;
  config.block_style = style;
  config.layer_norm_eps = 1e-5;
  return config;
}

}  // namespace

TEST_CASE("SASRec gradients match finite differences for every block style", "[models][sasrec][gradcheck]") {
  for (auto style : {models::BlockStyle::kSASRec, models::BlockStyle::kPreNorm, models::BlockStyle::kPostNorm}) {
    for (const char* activation : {"relu", "gelu"}) {
      CAPTURE(models::to_string(style), activation);
      auto config = tiny_config(style);
      config.activation = activation;
      models::SASRec<double> model(config);
      Rng rng(1);
      model.initialize(rng);
      auto& params = model.parameters();
      // Perturb norms so that their gradients matter.
      for (const auto& info : params.infos()) {
        if (info.name.find("norm") != std::string::npos) {
          params.value(params.find(info.name)).array() += test::random_matrix<double>(1, info.cols, rng, 0.2).array();
        }
      }
      const auto batch = test::tiny_batch(config.max_length);
      models::SASRec<double>::Workspace ws;
      Matrix<double> r;
      auto loss = [&]() {
        Rng dropout_rng(77);
        const auto f = model.forward_train(batch, dropout_rng, ws);
        if (r.size() == 0) r = test::random_matrix<double>(f.rows(), f.cols(), rng);
        return (f.array() * r.array()).sum();
      };
      loss();
      REQUIRE(ws.layout.num_tokens() == 5 + 2 + 1);
      REQUIRE(ws.targets == std::vector<ItemId>({2, 3, 4, 5, 6, 4, 7, 5}));
      params.zero_grad();
      model.backward(r, ws);
      const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
      const double error = test::max_gradient_error<double>(loss, params.values(), grads.data(), params.buffer_size(), 600);
      CHECK(error < 1e-6);
      // The padding row of the item table never receives a gradient.
      CHECK(params.grad(params.find("item_embedding.weight")).row(0).isZero());
    }
  }
}

TEST_CASE("SASRec encode returns the last position of an inference forward pass", "[models][sasrec]") {
  auto config = tiny_config(models::BlockStyle::kSASRec);
  models::SASRec<float> model(config);
  Rng rng(2);
  model.initialize(rng);
  models::SASRec<float>::Workspace ws;
  // Histories longer than max_length keep only the newest items.
  const std::vector<Sequence> histories = {{1, 2, 3}, {4, 5, 6, 7, 8, 9, 10}, {11}};
  Matrix<float> users(3, 8);
  model.encode(histories, users, ws);
  Matrix<float> alone(1, 8);
  model.encode({{6, 7, 8, 9, 10}}, alone, ws);
  REQUIRE((users.row(1) - alone.row(0)).cwiseAbs().maxCoeff() < 1e-5f);
  model.encode({{1, 2, 3}}, alone, ws);
  REQUIRE((users.row(0) - alone.row(0)).cwiseAbs().maxCoeff() < 1e-5f);
  // Deterministic at inference.
  Matrix<float> again(3, 8);
  model.encode(histories, again, ws);
  REQUIRE(users == again);
  REQUIRE_THROWS_AS(model.encode({{}}, alone, ws), ShapeError);
  REQUIRE_THROWS_AS(model.encode({{13}}, alone, ws), ShapeError);
  REQUIRE_THROWS_AS(model.encode({{0}}, alone, ws), ShapeError);
}

TEST_CASE("SASRec configuration validates and round-trips through JSON", "[models][sasrec]") {
  auto config = tiny_config(models::BlockStyle::kPreNorm);
  const auto back = models::SASRecConfig::from_json(config.to_json());
  REQUIRE(back.to_json() == config.to_json());
  REQUIRE(back.effective_attention_projection());
  models::SASRecConfig bad = config;
  bad.hidden_size = 9;
  REQUIRE_THROWS_AS(bad.validate(), ConfigError);
  bad = config;
  bad.num_items = 0;
  REQUIRE_THROWS_AS(models::SASRec<float>(bad), ConfigError);
  REQUIRE_THROWS_AS(models::parse_block_style("sideways"), ConfigError);
  auto j = config.to_json();
  j["num_heads"] = "two";
  REQUIRE_THROWS_AS(models::SASRecConfig::from_json(j), ConfigError);
}

TEST_CASE("SASRec parameter names follow the documented checkpoint schema", "[models][sasrec]") {
  auto config = tiny_config(models::BlockStyle::kSASRec);
  models::SASRec<float> model(config);
  const auto& params = model.parameters();
  const auto shape = [&](const std::string& name) {
    const auto id = params.find(name);
    REQUIRE(id >= 0);
    return std::make_pair(params.info(id).rows, params.info(id).cols);
  };
  REQUIRE(shape("item_embedding.weight") == std::make_pair(Index(13), Index(8)));
  REQUIRE(shape("position_embedding.weight") == std::make_pair(Index(5), Index(8)));
  REQUIRE(shape("blocks.1.attention.query.weight") == std::make_pair(Index(8), Index(8)));
  REQUIRE(shape("blocks.0.ffn.fc1.bias") == std::make_pair(Index(1), Index(8)));
  REQUIRE(shape("final_norm.weight") == std::make_pair(Index(1), Index(8)));
  REQUIRE(params.find("blocks.0.attention.output.weight") == -1);  // kang205: no output projection
}

TEST_CASE("SASRec encode equals the last positions of a full forward pass without dropout", "[models][sasrec]") {
  for (auto style : {models::BlockStyle::kSASRec, models::BlockStyle::kPreNorm, models::BlockStyle::kPostNorm}) {
    auto config = tiny_config(style);
    config.dropout = 0.0;
    models::SASRec<double> model(config);
    Rng rng(9);
    model.initialize(rng);
    const auto batch = test::tiny_batch(config.max_length);
    models::SASRec<double>::Workspace ws;
    Rng unused(1);
    const Matrix<double> full = model.forward_train(batch, unused, ws);
    const nn::SequenceLayout layout = ws.layout;
    // The same windows as histories: row r's non-padding inputs.
    std::vector<Sequence> histories;
    for (Index r = 0; r < batch.inputs().rows(); ++r) {
      Sequence h;
      for (Index j = 0; j < batch.inputs().cols(); ++j) {
        if (batch.inputs()(r, j) != 0) h.push_back(batch.inputs()(r, j));
      }
      histories.push_back(h);
    }
    Matrix<double> users(3, 8);
    model.encode(histories, users, ws);
    for (Index s = 0; s < 3; ++s) REQUIRE((users.row(s) - full.row(layout.last(s))).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("SASRec with an untied output head: gradients, parameter names and JSON", "[models][sasrec][gradcheck]") {
  auto config = tiny_config(models::BlockStyle::kSASRec);
  config.head = nn::HeadKind::kUntied;
  models::SASRec<double> model(config);
  Rng rng(3);
  model.initialize(rng);
  auto& params = model.parameters();
  REQUIRE(params.find("output.weight") >= 0);
  REQUIRE(params.find("output.bias") >= 0);
  CHECK(model.output_weights().weight.data() != model.item_table().data() + model.item_table().cols());  // not the table
  CHECK(model.output_weights().bias != nullptr);
  const auto batch = test::tiny_batch(config.max_length);
  models::SASRec<double>::Workspace ws;
  Matrix<double> r, grad_h;
  loss::SampledBinaryCrossEntropy<double> bce;
  loss::SampledBinaryCrossEntropy<double>::Workspace bce_ws;
  auto loss = [&](bool with_grads) {
    Rng dropout_rng(77);
    const auto f = model.forward_train(batch, dropout_rng, ws);
    if (r.size() == 0) r = test::random_matrix<double>(f.rows(), f.cols(), rng);
    grad_h.resize(f.rows(), f.cols());
    const double l = bce(f, model.output_weights(), ws.targets, ws.negatives, 1, grad_h,
                         with_grads ? model.output_gradients() : nn::HeadGradients<double>{}, bce_ws);
    return (f.array() * r.array()).sum() + l;
  };
  params.zero_grad();
  loss(true);
  grad_h += r;
  model.backward(grad_h, ws);
  const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
  CHECK(test::max_gradient_error<double>([&] { return loss(false); }, params.values(), grads.data(), params.buffer_size(), 600) < 1e-6);
  CHECK(params.grad(params.find("output.bias")).cwiseAbs().maxCoeff() > 0.0);
  const auto back = models::SASRecConfig::from_json(config.to_json());
  CHECK(back.head == nn::HeadKind::kUntied);
  auto j = config.to_json();
  j.erase("head");  // checkpoints written before the option read as tied
  CHECK(models::SASRecConfig::from_json(j).head == nn::HeadKind::kTied);
  j["head"] = "sideways";
  CHECK_THROWS_AS(models::SASRecConfig::from_json(j), ConfigError);
}
