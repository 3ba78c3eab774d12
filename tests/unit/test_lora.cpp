#include "distillrec/core/collective.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/hllm.hpp"
#include "distillrec/models/llama.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/nn/linear.hpp"
#include "distillrec/nn/lora.hpp"
#include "distillrec/optim/adam.hpp"
#include "distillrec/train/gradient_exchange.hpp"
#include "distillrec/train/hllm_trainer.hpp"

#include "support.hpp"

#include <fstream>
#include <sstream>
#include <unistd.h>

using namespace distillrec;

namespace {

// Finite-difference check of the gradient of one parameter tensor (by name).
double lora_param_error(Parameters<double>& params, const std::string& name, const std::function<double()>& loss) {
  const Index id = params.find(name);
  REQUIRE(id >= 0);
  const Matrix<double> analytic = params.grad(id);
  return test::max_gradient_error<double>(loss, params.value(id).data(), analytic.data(), analytic.size());
}

double lora_resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return -1.0;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// One process: what a run without distribution passes to GradientExchange.
class SoloCollective final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void sum(float*, std::size_t) override {}
  void sum(double*, std::size_t) override {}
  void broadcast(void*, std::size_t) override {}
  std::string description() const override { return "one process"; }
};

models::LlamaConfig lora_llama_config(Index rank) {
  models::LlamaConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.max_positions = 16;
  c.item_token = true;
  c.lora.rank = rank;
  c.lora.alpha = 8.0;
  return c;
}

// Gives every adapter's B random values (fresh adapters start at zero and change nothing).
template <typename T>
void perturb_lora_b(Parameters<T>& params, Rng& rng, double stddev = 0.3) {
  for (Index id = 0; id < params.count(); ++id) {
    if (nn::ends_with(params.info(id).name, ".lora_b.weight")) nn::init_normal(params.value(id), stddev, rng);
  }
}

}  // namespace

TEST_CASE("LoRA linear layer: output is W x + b + s B A x, gradients of A, B and the input match finite differences, "
          "the frozen base gets none",
          "[nn][lora][gradcheck]") {
  for (const double dropout : {0.0, 0.3}) {
    DYNAMIC_SECTION("adapter dropout " << dropout) {
      Parameters<double> params;
      nn::LoraOptions lora;
      lora.rank = 3;
      lora.alpha = 6.0;  // scale 2
      lora.dropout = dropout;
      nn::Linear<double> layer(params, "proj", 5, 4, /*bias=*/true, lora);
      params.allocate();
      REQUIRE(layer.has_adapter());
      REQUIRE(params.find("proj.lora_a.weight") >= 0);
      REQUIRE(params.info(params.find("proj.lora_b.weight")).rows == 4);
      Rng rng(11);
      layer.initialize(rng);
      CHECK(params.value(params.find("proj.lora_b.weight")).isZero());  // starts equal to its base
      perturb_lora_b(params, rng);
      nn::freeze_all_but_lora(params, "");
      CHECK_FALSE(params.info(layer.weight_id()).trainable);
      CHECK_FALSE(params.info(layer.bias_id()).trainable);
      CHECK(params.num_trainable_scalars() == 3 * 5 + 4 * 3);

      const Matrix<double> x = test::random_matrix<double>(6, 5, rng);
      const Matrix<double> r = test::random_matrix<double>(6, 4, rng);
      nn::Linear<double>::Workspace ws;
      Matrix<double> y(6, 4);
      // Training mode with a generator re-seeded on every call: the same dropout mask each time.
      auto run = [&](const Matrix<double>& input) {
        Rng mask_rng(99);
        layer.forward(input, y, ws, nn::RunMode::train(mask_rng));
        return (y.array() * r.array()).sum();
      };
      Matrix<double> input = x;
      run(input);
      // The base path never sees the dropout: y - (x W^T + b) is the adapter's part alone.
      const auto w = params.value(layer.weight_id());
      const auto b = params.value(layer.bias_id());
      const auto A = params.value(params.find("proj.lora_a.weight"));
      const auto B = params.value(params.find("proj.lora_b.weight"));
      Matrix<double> base = x * w.transpose();
      base.rowwise() += b.row(0);
      if (dropout == 0.0) {
        const Matrix<double> expected = base + 2.0 * (x * A.transpose()) * B.transpose();
        CHECK((y - expected).cwiseAbs().maxCoeff() < 1e-12);
      } else {
        const Matrix<double> mask = ws.dropout.mask.map();
        CHECK(mask.minCoeff() == 0.0);  // some inputs dropped
        const Matrix<double> expected = base + 2.0 * (x.cwiseProduct(mask) * A.transpose()) * B.transpose();
        CHECK((y - expected).cwiseAbs().maxCoeff() < 1e-12);
        // Inference applies no dropout.
        Matrix<double> y_inference(6, 4);
        layer.forward(x, y_inference, ws, nn::RunMode::inference());
        CHECK((y_inference - (base + 2.0 * (x * A.transpose()) * B.transpose())).cwiseAbs().maxCoeff() < 1e-12);
        run(input);
      }
      // A sentinel in the frozen base's gradient: zero_grad() and backward leave it alone.
      params.zero_grad();
      params.grad(layer.weight_id()).setConstant(7.0);
      params.grad(layer.bias_id()).setConstant(7.0);
      params.zero_grad();
      CHECK(params.grad(layer.weight_id()).minCoeff() == 7.0);
      Matrix<double> dx = Matrix<double>::Random(6, 5);
      const Matrix<double> before = dx;
      layer.accumulate_grad(input, r, ws);
      layer.backward(r, dx, ws, nn::InputGrad::kAccumulate);
      CHECK(params.grad(layer.weight_id()).minCoeff() == 7.0);
      CHECK(params.grad(layer.weight_id()).maxCoeff() == 7.0);
      CHECK(params.grad(layer.bias_id()).maxCoeff() == 7.0);
      const Matrix<double> grad_x = dx - before;
      CHECK(test::max_gradient_error<double>([&] { return run(input); }, input.data(), grad_x.data(), input.size()) < 1e-7);
      auto loss = [&] { return run(input); };
      CHECK(lora_param_error(params, "proj.lora_a.weight", loss) < 1e-7);
      CHECK(lora_param_error(params, "proj.lora_b.weight", loss) < 1e-7);
      CHECK(params.grad(params.find("proj.lora_a.weight")).cwiseAbs().maxCoeff() > 0.0);

      // The overloads without a workspace are for adapter-free layers.
      CHECK_THROWS_WITH(layer.forward(x, y), Catch::Contains("proj") && Catch::Contains("LoRA adapter"));
    }
  }
}

TEST_CASE("LoRA: options are checked, and a trainable base still gets its gradient beside the adapter", "[nn][lora]") {
  nn::LoraOptions bad;
  bad.rank = -1;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("rank must be >= 0"));
  bad.rank = 4;
  bad.alpha = 0.0;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("alpha must be positive"));
  bad.alpha = 8.0;
  bad.dropout = 1.0;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("dropout must be in [0, 1)"));
  bad.dropout = 0.1;
  bad.attention = bad.feed_forward = false;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("neither"));
  Parameters<double> throwaway;
  CHECK_THROWS_AS(nn::Linear<double>(throwaway, "x", 3, 3, true, bad), ConfigError);
  // JSON round trip.
  nn::LoraOptions o;
  o.rank = 8;
  o.alpha = 32.0;
  o.dropout = 0.05;
  o.feed_forward = false;
  const auto back = nn::lora_options_from_json(nn::to_json(o), "test");
  CHECK(back.rank == 8);
  CHECK(back.alpha == 32.0);
  CHECK(back.dropout == 0.05);
  CHECK_FALSE(back.feed_forward);
  CHECK(back.scale() == 4.0);
  CHECK_THROWS_WITH(nn::lora_options_from_json(nlohmann::json{{"rank", 2}, {"dropout", 2.0}}, "config.json lora"),
                    Catch::Contains("config.json lora") && Catch::Contains("dropout"));

  // Full fine-tuning with an adapter: base and adapter both learn.
  Parameters<double> params;
  nn::LoraOptions lora;
  lora.rank = 2;
  nn::Linear<double> layer(params, "both", 4, 3, true, lora);
  params.allocate();
  Rng rng(5);
  layer.initialize(rng);
  perturb_lora_b(params, rng);
  const Matrix<double> x = test::random_matrix<double>(5, 4, rng);
  const Matrix<double> r = test::random_matrix<double>(5, 3, rng);
  nn::Linear<double>::Workspace ws;
  Matrix<double> y(5, 3);
  auto loss = [&] {
    layer.forward(x, y, ws, nn::RunMode::inference());
    return (y.array() * r.array()).sum();
  };
  loss();
  params.zero_grad();
  layer.accumulate_grad(x, r, ws);
  CHECK(lora_param_error(params, "both.weight", loss) < 1e-7);
  CHECK(lora_param_error(params, "both.bias", loss) < 1e-7);
  CHECK(lora_param_error(params, "both.lora_a.weight", loss) < 1e-7);
  CHECK(lora_param_error(params, "both.lora_b.weight", loss) < 1e-7);
}

TEST_CASE("LoRA on a LLaMA model: only the adapters and the [ITEM] token train, their gradients match finite differences, "
          "and merging gives the same states without adapters",
          "[models][llama][lora][gradcheck]") {
  const auto config = lora_llama_config(/*rank=*/2);
  models::LlamaModel<double> model(config);
  Rng rng(3);
  model.initialize(rng);
  perturb_lora_b(model.parameters(), rng);
  auto& params = model.parameters();
  Index adapters = 0;
  for (const auto& info : params.infos()) {
    const bool lora = nn::is_lora_parameter(info.name);
    adapters += lora ? 1 : 0;
    INFO(info.name);
    CHECK(info.trainable == (lora || info.name == "item_token.weight"));
  }
  CHECK(adapters == 2 * 7 * 2);  // 2 layers x (q, k, v, o, gate, up, down) x (A, B)

  const std::vector<std::vector<int>> texts{{1, 3, 5}, {1, 2}, {1, 7, 7, 9, 12}, {0}};
  const Matrix<double> r = test::random_matrix<double>(4, 8, rng);
  models::LlamaModel<double>::Workspace ws;
  Matrix<double> items(4, 8);
  auto loss = [&]() {
    model.encode_items(texts, items, ws);
    return (items.array() * r.array()).sum();
  };
  params.zero_grad();
  loss();
  model.backward_items(r, ws);
  double worst = 0.0;
  for (const auto& info : params.infos()) {
    if (!info.trainable) {
      CHECK(params.grad(params.find(info.name)).isZero());  // nothing computed for the base
      continue;
    }
    worst = std::max(worst, lora_param_error(params, info.name, loss));
  }
  CHECK(worst < 1e-6);

  // Merged: no adapters, the same item embeddings.
  loss();  // the gradient check left the last evaluation at a shifted value
  const Matrix<double> adapted = items;
  auto merged = models::merge_lora(model);
  CHECK_FALSE(merged.config().lora.enabled());
  for (const auto& info : merged.parameters().infos()) CHECK_FALSE(nn::is_lora_parameter(info.name));
  models::LlamaModel<double>::Workspace merged_ws;
  Matrix<double> merged_items(4, 8);
  merged.encode_items(texts, merged_items, merged_ws);
  CHECK((merged_items - adapted).cwiseAbs().maxCoeff() < 1e-12);
  // An adapted model's base alone (B = 0) differs: the adapters did something.
  for (Index id = 0; id < params.count(); ++id) {
    if (nn::ends_with(params.info(id).name, ".lora_b.weight")) params.value(id).setZero();
  }
  loss();
  CHECK((items - adapted).cwiseAbs().maxCoeff() > 1e-3);

  // The configuration carries the options.
  const auto back = models::llama_config_from_json(models::to_json(config), "test");
  CHECK(back.lora.rank == 2);
  CHECK(back.lora.alpha == 8.0);
}

TEST_CASE("LoRA: frozen tensors have no resident gradient or optimiser state and do not travel in the gradient exchange",
          "[nn][lora][memory]") {
  Parameters<float> params;
  const auto frozen = params.declare("base.weight", 4096, 2048);  // 32 MiB of values
  const auto a = params.declare("base.lora_a.weight", 8, 2048);
  const auto b = params.declare("base.lora_b.weight", 4096, 8);
  params.allocate();
  params.value(frozen).setConstant(0.5f);  // loaded weights: resident
  nn::freeze_all_but_lora(params, "");
  const double before = lora_resident_mib();
  optim::Adam adam(optim::AdamConfig{});
  auto state = adam.make_state(params);
  for (int step = 0; step < 3; ++step) {
    params.zero_grad();
    params.grad(a).setConstant(0.1f);
    params.grad(b).setConstant(0.1f);
    adam.step(params, state);
  }
  CHECK(params.value(frozen).minCoeff() == 0.5f);
  CHECK(params.value(frozen).maxCoeff() == 0.5f);
  CHECK(params.value(a).maxCoeff() < 0.0f);
  const double after = lora_resident_mib();
  if (before >= 0) {
    INFO("resident before " << before << " MiB, after " << after << " MiB");
    CHECK(after - before < 8.0);  // not the 96 MiB of a gradient and two moments of the base
  } else {
    WARN("no /proc/self/statm: residency not checked");
  }

  SoloCollective solo;
  train::GradientExchange<float> exchange;
  exchange.configure({&params}, &solo, 0);
  INFO(exchange.description());
  CHECK(exchange.dense_values() < static_cast<std::size_t>(params.info(a).size() + params.info(b).size() + 64));
  params.grad(a).setConstant(0.25f);
  const auto outcome = exchange.exchange(1.5f, false);
  CHECK_FALSE(outcome.failed_elsewhere);
  CHECK(outcome.loss == 1.5f);
  CHECK(params.grad(a).maxCoeff() == 0.25f);
}

TEST_CASE("HLLM with LoRA on its item LLM: the base stays frozen, training beats popularity, the merged model scores the same and "
          "checkpoints keep the adapters",
          "[models][hllm][lora][train]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 600;
  synthetic.num_items = 60;
  synthetic.num_clusters = 6;
  synthetic.min_length = 6;
  synthetic.max_length = 14;
  const auto split = data::leave_one_out(data::generate_synthetic(synthetic));
  std::vector<std::vector<int>> texts;
  for (ItemId i = 1; i <= split.num_items; ++i) texts.push_back({1, 3 + static_cast<int>(i), 3 + static_cast<int>(i % 3)});
  auto config = models::HllmConfig::small(split.num_items, split.num_items + 4, /*hidden=*/16, /*item_layers=*/1, /*user_layers=*/1,
                                          /*heads=*/2);
  config.max_length = 14;
  config.max_text_tokens = 4;
  config.item_llm.lora.rank = 4;
  config.item_llm.lora.alpha = 8.0;
  config.item_llm.lora.dropout = 0.05;
  models::Hllm<float> hllm(config);
  Rng rng(42);
  hllm.initialize(rng);
  hllm.set_item_tokens(texts);
  const auto& params = hllm.parameters();
  // What trains: the item LLM's adapters and [ITEM] token, the whole user LLM.
  std::vector<std::pair<Index, Matrix<float>>> frozen;
  for (Index id = 0; id < params.count(); ++id) {
    const auto& name = params.info(id).name;
    const bool item_base = name.rfind("item_llm.", 0) == 0 && !nn::is_lora_parameter(name) && name != "item_llm.item_token.weight";
    INFO(name);
    const bool table = name == "item_table.weight" || name == "item_norms.weight";
    CHECK(params.info(id).trainable == (!item_base && !table));
    if (item_base) frozen.emplace_back(id, params.value(id));
  }
  REQUIRE(frozen.size() > 5);

  train::HllmTrainerConfig training;
  training.epochs = 12;
  training.batch_size = 32;
  training.negatives = 48;
  training.adam.learning_rate = 1e-2;
  training.eval_every = 4;
  training.patience = 0;
  training.validation.max_users = 200;
  std::ostringstream log;
  training.log = &log;
  train::HllmTrainer<float> trainer(hllm, split, training);
  trainer.fit();
  INFO(log.str());
  hllm.refresh_item_table();
  for (const auto& [id, value] : frozen) CHECK((hllm.parameters().value(id) - value).cwiseAbs().maxCoeff() == 0.0f);
  models::Popularity<float> popularity(split.train, split.num_items);
  const double baseline = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  const double ndcg = eval::evaluate_full_ranking(hllm, split, eval::EvalSplit::kTest).value("NDCG@10");
  INFO("HLLM (LoRA item LLM) NDCG@10 " << ndcg << ", popularity " << baseline);
  CHECK(ndcg > 1.3 * baseline);

  // Merged for serving: no adapters, the same scores (the table recomputed from merged weights
  // agrees with the adapted model's).
  auto merged = models::merge_lora(hllm);
  REQUIRE(merged.item_table_ready());
  for (const auto& info : merged.parameters().infos()) CHECK_FALSE(nn::is_lora_parameter(info.name));
  typename models::Hllm<float>::Workspace ws;
  Matrix<float> a(2, 16), b(2, 16);
  hllm.encode({{1, 2, 3}, {7, 9}}, a, ws);
  merged.encode({{1, 2, 3}, {7, 9}}, b, ws);
  CHECK((a - b).cwiseAbs().maxCoeff() < 1e-6f);
  const Matrix<float> table_before = merged.parameters().value(merged.parameters().find("item_table.weight"));
  merged.refresh_item_table();
  CHECK((merged.parameters().value(merged.parameters().find("item_table.weight")) - table_before).cwiseAbs().maxCoeff() < 1e-4f);

  // A checkpoint of the adapted model keeps its adapters and options.
  const auto dir = test::temp_dir("hllm_lora");
  io::save_checkpoint(hllm, (dir / "adapted").string());
  auto loaded = io::load_checkpoint<models::Hllm<float>>((dir / "adapted").string());
  CHECK(loaded.config().item_llm.lora.rank == 4);
  CHECK(loaded.config().item_llm.lora.dropout == Approx(0.05));
  loaded.encode({{1, 2, 3}, {7, 9}}, b, ws);
  CHECK((a - b).cwiseAbs().maxCoeff() == 0.0f);
  std::filesystem::remove_all(dir);
}

TEST_CASE("LLMRec with LoRA: the blocks' base is frozen, the adapters' gradients match finite differences under dropout, "
          "a trained model becomes the base and merging keeps its scores",
          "[models][llm_rec][lora][gradcheck]") {
  models::LLMRecConfig config;
  config.num_items = 12;
  config.item_dim = 6;
  config.hidden_size = 8;
  config.num_layers = 2;
  config.num_heads = 2;
  config.num_kv_heads = 1;
  config.ffn_size = 10;
  config.max_length = 5;
  config.dropout = 0.2;
  models::LLMRec<double> base(config);
  Rng rng(3);
  base.initialize(rng);

  auto tuned_config = config;
  tuned_config.lora.rank = 2;
  tuned_config.lora.alpha = 4.0;
  tuned_config.lora.dropout = 0.1;
  models::LLMRec<double> tuned(tuned_config);
  tuned.initialize(rng);
  nn::copy_base_weights(base.parameters(), tuned.parameters());
  perturb_lora_b(tuned.parameters(), rng);
  auto& params = tuned.parameters();
  for (const auto& info : params.infos()) {
    INFO(info.name);
    const bool block_base = (info.name.rfind("blocks.", 0) == 0 || info.name.rfind("final_norm.", 0) == 0) && !nn::is_lora_parameter(info.name);
    CHECK(info.trainable == !block_base);
  }
  const auto batch = test::tiny_batch(config.max_length);
  models::LLMRec<double>::Workspace ws;
  Matrix<double> r;
  auto loss = [&]() {
    Rng dropout_rng(77);  // the same masks every time (model dropout and adapter dropout)
    const auto u = tuned.forward_train(batch, dropout_rng, ws);
    if (r.size() == 0) r = test::random_matrix<double>(u.rows(), u.cols(), rng);
    return (u.array() * r.array()).sum();
  };
  loss();
  params.zero_grad();
  tuned.backward(r, ws);
  double worst = 0.0;
  for (const auto& info : params.infos()) {
    if (!info.trainable) {
      CHECK(params.grad(params.find(info.name)).isZero());
      continue;
    }
    worst = std::max(worst, lora_param_error(params, info.name, loss));
  }
  CHECK(worst < 1e-6);

  // Merged: the adapted model's scores without adapters; the options survive a JSON round trip.
  const auto merged = models::merge_lora(tuned);
  for (const auto& info : merged.parameters().infos()) CHECK_FALSE(nn::is_lora_parameter(info.name));
  models::LLMRec<double>::Workspace a_ws, b_ws;
  Matrix<double> a(2, 6), b(2, 6), c(2, 6);
  tuned.encode({{1, 2, 3}, {4}}, a, a_ws);
  merged.encode({{1, 2, 3}, {4}}, b, b_ws);
  base.encode({{1, 2, 3}, {4}}, c, b_ws);
  CHECK((a - b).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((a - c).cwiseAbs().maxCoeff() > 1e-3);
  const auto back = models::LLMRecConfig::from_json(tuned_config.to_json());
  CHECK(back.lora.rank == 2);
  CHECK(back.lora.dropout == 0.1);
  // A base of another shape is refused by name.
  auto wider = config;
  wider.hidden_size = 12;
  models::LLMRec<double> other(wider);
  CHECK_THROWS_WITH(nn::copy_base_weights(other.parameters(), tuned.parameters()), Catch::Contains("input_adapter.weight"));
}
