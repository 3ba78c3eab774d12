#include "distillrec/models/llama.hpp"

#include "support.hpp"

#include <nlohmann/json.hpp>

using namespace distillrec;

namespace {

models::LlamaConfig tiny_llama_config(bool item_token) {
  models::LlamaConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.max_positions = 16;
  c.item_token = item_token;
  return c;
}

}  // namespace

TEST_CASE("LLaMA item model: item embeddings' gradients of every weight and the [ITEM] token match finite differences",
          "[models][llama][gradcheck]") {
  models::LlamaModel<double> model(tiny_llama_config(true));
  Rng rng(3);
  model.initialize(rng);
  const std::vector<std::vector<int>> texts{{1, 3, 5}, {1, 2}, {1, 7, 7, 9, 12}, {0}};
  const Matrix<double> r = test::random_matrix<double>(4, 8, rng);
  models::LlamaModel<double>::Workspace ws;
  Matrix<double> items(4, 8);
  auto loss = [&]() {
    model.encode_items(texts, items, ws);
    return (items.array() * r.array()).sum();
  };
  auto& params = model.parameters();
  params.zero_grad();
  loss();
  model.backward_items(r, ws);
  const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
  CHECK(grads.cwiseAbs().maxCoeff() > 0.0);
  CHECK(params.grad(params.find("item_token.weight")).cwiseAbs().maxCoeff() > 0.0);
  CHECK(test::max_gradient_error<double>(loss, params.values(), grads.data(), params.buffer_size(), 600) < 1e-6);
  // Each text's embedding is the same alone as packed with the others.
  Matrix<double> alone(1, 8);
  models::LlamaModel<double>::Workspace ws2;
  model.encode_items({texts[2]}, alone, ws2);
  model.encode_items(texts, items, ws);
  CHECK((alone.row(0) - items.row(2)).cwiseAbs().maxCoeff() < 1e-12);
  // The [ITEM] token is learned: different tokens give different embeddings of the same text.
  params.value(params.find("item_token.weight")).array() += 0.5;
  Matrix<double> moved(1, 8);
  model.encode_items({texts[2]}, moved, ws2);
  CHECK((moved - alone).cwiseAbs().maxCoeff() > 1e-3);
}

TEST_CASE("LLaMA model: bad token sequences and configurations are refused by name", "[models][llama]") {
  models::LlamaModel<float> plain(tiny_llama_config(false));
  Rng rng(4);
  plain.initialize(rng);
  models::LlamaModel<float>::Workspace ws;
  Matrix<float> out(1, 8);
  CHECK_THROWS_WITH(plain.encode_items({{1, 2}}, out, ws), Catch::Contains("needs the [ITEM] token"));
  CHECK_THROWS_WITH(plain.forward({{1, 13}}, ws), Catch::Contains("token 13 at position 1 of sequence 0 is outside 0..12"));
  CHECK_THROWS_WITH(plain.forward({{}}, ws), Catch::Contains("token sequence 0 is empty"));
  models::LlamaModel<float> items(tiny_llama_config(true));
  CHECK_THROWS_WITH(items.encode_items({std::vector<int>(16, 1)}, out, ws), Catch::Contains("(+ [ITEM]), more than max_position_embeddings 16"));
  CHECK_THROWS_AS(items.encode_items({{1}, {2}}, out, ws), ShapeError);  // out has one row for two texts
  CHECK_THROWS_AS(plain.hidden_state(ws, 3), ShapeError);

  const nlohmann::json good = {{"vocab_size", 32000}, {"hidden_size", 2048}, {"intermediate_size", 5632},
                               {"num_hidden_layers", 22}, {"num_attention_heads", 32}, {"num_key_value_heads", 4},
                               {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-5}, {"hidden_act", "silu"},
                               {"rope_scaling", nullptr}, {"rope_theta", 10000.0}};  // TinyLlama-1.1B, HLLM-1B's LLM
  const auto c = models::LlamaConfig::from_hf_json(good, "config.json");
  CHECK(c.num_layers == 22);
  CHECK(c.effective_kv_heads() == 4);
  CHECK(c.rms_norm_eps == 1e-5);
  auto with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    return j;
  };
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("rope_scaling", {{"type", "dynamic"}}), "c.json"),
                    Catch::Contains("c.json") && Catch::Contains("rope_scaling"));
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("hidden_act", "gelu"), "c.json"), Catch::Contains("hidden_act \"gelu\""));
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("attention_bias", true), "c.json"), Catch::Contains("biased projections"));
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("sliding_window", 4096), "c.json"), Catch::Contains("sliding-window"));
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("num_key_value_heads", 5), "c.json"), Catch::Contains("must divide"));
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("hidden_size", "big"), "c.json"), Catch::Contains("not a LLaMA configuration"));
  nlohmann::json missing = good;
  missing.erase("vocab_size");
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(missing, "c.json"), Catch::Contains("vocab_size"));
}
