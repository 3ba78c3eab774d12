#include "distillrec/loss/info_nce.hpp"
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
  CHECK_THROWS_WITH(plain.backward_items(out, ws), Catch::Contains("needs the [ITEM] token"));
  models::LlamaModel<float>::Workspace fresh;
  CHECK_THROWS_WITH(items.backward_items(out, fresh), Catch::Contains("workspace of an encode_items() call"));

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
  CHECK_THROWS_WITH(models::LlamaConfig::from_hf_json(with("vocab_size", 0), "c.json"), Catch::Contains("vocab_size must be positive"));

  // A model over vectors (vocab_size 0) has no token table and refuses token input.
  auto vector_config = tiny_llama_config(true);
  vector_config.vocab_size = 0;
  models::LlamaModel<float> vectors(vector_config);
  CHECK(vectors.parameters().find("embed_tokens.weight") < 0);
  CHECK_THROWS_WITH(vectors.forward({{1}}, ws), Catch::Contains("needs a token table"));
  CHECK_THROWS_WITH(vectors.encode_items({{1}}, out, ws), Catch::Contains("needs a token table"));
  // Several models in one buffer, names prefixed; the library's JSON of a configuration round-trips.
  Parameters<float> shared;
  models::LlamaModel<float> first(tiny_llama_config(true), shared, "a.");
  models::LlamaModel<float> second(vector_config, shared, "b.");
  shared.allocate();
  CHECK(shared.find("a.item_token.weight") >= 0);
  CHECK(shared.find("b.blocks.1.ffn.down.weight") >= 0);
  CHECK(first.hf_names().front().second == "a.embed_tokens.weight");
  CHECK(second.hf_names().front().second == "b.blocks.0.attention_norm.weight");
  const auto round = models::llama_config_from_json(models::to_json(tiny_llama_config(true)), "test");
  CHECK(models::to_json(round) == models::to_json(tiny_llama_config(true)));
  CHECK_THROWS_WITH(models::llama_config_from_json({{"hidden_size", 8}}, "the user LLM"), Catch::Contains("the user LLM"));
}

TEST_CASE("HLLM end to end: item model -> user model -> InfoNCE, gradients of both models and the temperature match finite differences",
          "[models][llama][hllm][gradcheck]") {
  // Items 1..6 with texts; two user sequences; every position but the last predicts the next item
  // against a pool of shared negatives, all embedded by the item model (HLLM, methods.md §3.4-3.6).
  models::LlamaModel<double> item_model(tiny_llama_config(true));
  auto user_config = tiny_llama_config(false);
  user_config.vocab_size = 0;  // the user model reads item embeddings, not tokens
  models::LlamaModel<double> user_model(user_config);
  Rng rng(8);
  item_model.initialize(rng);
  user_model.initialize(rng);
  const std::vector<std::vector<int>> texts{{1, 4}, {1, 5, 6}, {1, 7}, {1, 8, 9, 2}, {1, 10}, {1, 11, 3}};
  const std::vector<std::vector<ItemId>> users{{1, 2, 3}, {4, 5, 2, 6}};
  const std::vector<ItemId> pool{5, 6, 3};
  loss::InfoNce<double> nce;
  double log_scale = 2.0;
  models::LlamaModel<double>::Workspace item_ws, user_ws;
  typename loss::InfoNce<double>::Workspace nce_ws;
  Matrix<double> items(6, 8), grad_items(6, 8);
  double grad_log_scale = 0.0;
  auto run = [&](bool backward) {
    item_model.encode_items(texts, items, item_ws);
    nn::SequenceLayout layout;
    std::vector<ItemId> inputs, next;
    std::vector<Index> query_rows;
    for (const auto& u : users) {
      layout.add(static_cast<Index>(u.size()) - 1);
      for (std::size_t t = 0; t + 1 < u.size(); ++t) {
        query_rows.push_back(static_cast<Index>(inputs.size()));
        inputs.push_back(u[t]);
        next.push_back(u[t + 1]);
      }
    }
    const Index n = static_cast<Index>(inputs.size());
    Matrix<double> x(n, 8), positives(n, 8), negatives(static_cast<Index>(pool.size()), 8);
    for (Index i = 0; i < n; ++i) {
      x.row(i) = items.row(inputs[static_cast<std::size_t>(i)] - 1);
      positives.row(i) = items.row(next[static_cast<std::size_t>(i)] - 1);
    }
    for (std::size_t m = 0; m < pool.size(); ++m) negatives.row(static_cast<Index>(m)) = items.row(pool[m] - 1);
    const Matrix<double> states = user_model.forward_embeddings(x, layout, user_ws);
    Matrix<double> dq(n, 8), dp(n, 8), dn(negatives.rows(), 8);
    const double value = nce(states, positives, negatives, {}, log_scale, dq, dp, dn, &grad_log_scale, nce_ws);
    if (backward) {
      const Matrix<double> dx = user_model.backward_embeddings(dq, user_ws);
      grad_items.setZero();
      for (Index i = 0; i < n; ++i) {
        grad_items.row(inputs[static_cast<std::size_t>(i)] - 1) += dx.row(i);
        grad_items.row(next[static_cast<std::size_t>(i)] - 1) += dp.row(i);
      }
      for (std::size_t m = 0; m < pool.size(); ++m) grad_items.row(pool[m] - 1) += dn.row(static_cast<Index>(m));
      item_model.backward_items(grad_items, item_ws);
    }
    return value;
  };
  auto& ip = item_model.parameters();
  auto& up = user_model.parameters();
  ip.zero_grad();
  up.zero_grad();
  CHECK(run(true) > 0.0);
  const double dl = grad_log_scale;
  const Matrix<double> item_grads = Eigen::Map<const Matrix<double>>(ip.grads(), 1, ip.buffer_size());
  const Matrix<double> user_grads = Eigen::Map<const Matrix<double>>(up.grads(), 1, up.buffer_size());
  auto value = [&]() { return run(false); };
  CHECK(item_grads.cwiseAbs().maxCoeff() > 0.0);
  CHECK(user_grads.cwiseAbs().maxCoeff() > 0.0);
  CHECK(test::max_gradient_error<double>(value, ip.values(), item_grads.data(), ip.buffer_size(), 500) < 1e-6);
  CHECK(test::max_gradient_error<double>(value, up.values(), user_grads.data(), up.buffer_size(), 500) < 1e-6);
  CHECK(test::max_gradient_error<double>(value, &log_scale, &dl, 1) < 1e-6);
  // The user model has no token table.
  CHECK(up.find("embed_tokens.weight") < 0);
  nn::SequenceLayout too_long;
  too_long.add(17);
  Matrix<double> x17(17, 8);
  CHECK_THROWS_WITH(user_model.forward_embeddings(x17, too_long, user_ws), Catch::Contains("more than max_position_embeddings 16"));
}
