// A Hugging Face LLaMA checkpoint written by PyTorch (tests/integration/write_tiny_llama.py, a
// LLaMA forward of its own: Debian has no transformers) loads into models::LlamaModel, whose
// hidden states equal the script's within 1e-4 relative, for F32, F16 and BF16 weights, in one
// file or in shards. Skipped, not failed, where Python or PyTorch is absent.
#include "distillrec/io/safetensors.hpp"
#include "distillrec/models/llama.hpp"
#include "distillrec/optim/adam.hpp"

#include "support.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

using namespace distillrec;

namespace {

bool hf_llama_python_available() { return std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0; }

std::string write_tiny_llama(const std::string& name, const std::string& options) {
  const auto dir = test::temp_dir("hf_llama_" + name);
  const std::string command = "/usr/bin/python3 " DISTILLREC_SOURCE_DIR "/tests/integration/write_tiny_llama.py " + dir.string() + " " +
                              options + " > " + (dir / "script.log").string() + " 2>&1";
  REQUIRE(std::system(command.c_str()) == 0);
  return dir.string();
}

std::vector<std::vector<int>> hf_llama_tokens(const std::string& dir) {
  nlohmann::json j;
  std::ifstream(dir + "/tokens.json") >> j;
  return j.get<std::vector<std::vector<int>>>();
}

}  // namespace

TEST_CASE("A Hugging Face LLaMA checkpoint from PyTorch gives PyTorch's hidden states, for F32, F16 and BF16 weights in one file or in shards",
          "[integration][pytorch][llama]") {
  if (!hf_llama_python_available()) {
    WARN("python3 with torch not found; skipping");
    return;
  }
  struct Case {
    const char* name;
    const char* options;
  };
  for (const Case c : {Case{"f32", "--dtype F32"}, Case{"bf16_shards", "--dtype BF16 --shards 3"}, Case{"f16_shards", "--dtype F16 --shards 2"}}) {
    CAPTURE(c.name);
    const std::string dir = write_tiny_llama(c.name, c.options);
    const auto model = models::load_hf_llama<float>(dir);
    CHECK(model.config().vocab_size == 97);
    CHECK(model.config().num_layers == 3);
    CHECK(model.config().effective_kv_heads() == 2);
    const auto sequences = hf_llama_tokens(dir);
    const io::SafetensorsReader reference(dir + "/reference.safetensors");
    models::LlamaModel<float>::Workspace ws;
    const Matrix<float> packed = model.forward(sequences, ws);  // every sequence at once, packed
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      CAPTURE(s);
      const Index len = static_cast<Index>(sequences[s].size());
      const Matrix<float> expected = reference.read_matrix("states." + std::to_string(s), len, model.hidden_size());
      const Matrix<float> got = packed.middleRows(ws.layout.begin(static_cast<Index>(s)), len);
      const double error = (got - expected).cwiseAbs().maxCoeff() / expected.cwiseAbs().maxCoeff();
      CAPTURE(error);
      CHECK(error < 1e-4);
      // Alone, a sequence gives the same states as packed with the others.
      models::LlamaModel<float>::Workspace alone;
      const Matrix<float> single = model.forward({sequences[s]}, alone);
      CHECK((single - got).cwiseAbs().maxCoeff() <= 1e-5 * expected.cwiseAbs().maxCoeff());
    }
    CHECK(model.hidden_state(ws, 3).rows() == packed.rows());
    CHECK_THROWS_WITH(model.forward({{1, 97}}, ws), Catch::Contains("token 97 at position 1 of sequence 0 is outside 0..96"));
    CHECK_THROWS_WITH(model.forward({{1}, {}}, ws), Catch::Contains("token sequence 1 is empty"));
    CHECK_THROWS_WITH(model.forward({std::vector<int>(65, 3)}, ws), Catch::Contains("more than max_position_embeddings 64"));
  }
}

TEST_CASE("Hugging Face LLaMA checkpoints: missing, malformed and unsupported ones are refused by name", "[integration][pytorch][llama]") {
  if (!hf_llama_python_available()) {
    WARN("python3 with torch not found; skipping");
    return;
  }
  namespace fs = std::filesystem;
  const std::string dir = write_tiny_llama("bad", "--dtype F32 --shards 2");
  auto rewrite_config = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j;
    std::ifstream(dir + "/config.json") >> j;
    edit(j);
    std::ofstream(dir + "/config.json") << j.dump();
  };
  nlohmann::json original;
  std::ifstream(dir + "/config.json") >> original;
  rewrite_config([](nlohmann::json& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; });
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("config.json") && Catch::Contains("rope_scaling"));
  rewrite_config([](nlohmann::json& j) { j["rope_scaling"] = nullptr; j["hidden_act"] = "gelu"; });
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("hidden_act \"gelu\""));
  rewrite_config([](nlohmann::json& j) { j["hidden_act"] = "silu"; j["hidden_size"] = 48; j["num_attention_heads"] = 4; });
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("expected shape [97, 48]"));
  rewrite_config([&](nlohmann::json& j) { j = original; j.erase("num_hidden_layers"); });
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("not a LLaMA configuration"));
  std::ofstream(dir + "/config.json") << original.dump();
  CHECK_NOTHROW(models::load_hf_llama<float>(dir));
  // A tensor the model would not load (a bias) is refused, not dropped.
  nlohmann::json index;
  std::ifstream(dir + "/model.safetensors.index.json") >> index;
  const nlohmann::json original_index = index;
  index["weight_map"]["model.layers.0.self_attn.q_proj.bias"] = "model-00001-of-00002.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("q_proj.bias") && Catch::Contains("not part of a LLaMA model"));
  std::ofstream(dir + "/model.safetensors.index.json") << original_index.dump();
  CHECK_NOTHROW(models::load_hf_llama<float>(dir));
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("model-00002-of-00002.safetensors"));
  fs::remove(dir + "/model.safetensors.index.json");
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("no model.safetensors or model.safetensors.index.json"));
  fs::remove(dir + "/config.json");
  CHECK_THROWS_WITH(models::load_hf_llama<float>(dir), Catch::Contains("config.json") && Catch::Contains("cannot open"));
}

TEST_CASE("A Hugging Face LLaMA checkpoint with LoRA adapters: starts at PyTorch's states, trains only the adapters, merges back, "
          "weights load into a model only where the architecture agrees",
          "[integration][pytorch][llama][lora]") {
  if (!hf_llama_python_available()) {
    WARN("python3 with torch not found; skipping");
    return;
  }
  const std::string dir = write_tiny_llama("lora", "--dtype F32");
  nn::LoraOptions lora;
  lora.rank = 4;
  lora.alpha = 8.0;
  auto model = models::load_hf_llama<float>(dir, /*item_token=*/true, /*seed=*/5, lora);
  auto& params = model.parameters();
  Index trainable_tensors = 0;
  for (const auto& info : params.infos()) {
    INFO(info.name);
    CHECK(info.trainable == (nn::is_lora_parameter(info.name) || info.name == "item_token.weight"));
    trainable_tensors += info.trainable ? 1 : 0;
  }
  CHECK(trainable_tensors == 3 * 7 * 2 + 1);
  CHECK(params.num_trainable_scalars() < params.num_scalars() / 5);
  // Fresh adapters (B = 0) change nothing: PyTorch's hidden states.
  const auto sequences = hf_llama_tokens(dir);
  const io::SafetensorsReader reference(dir + "/reference.safetensors");
  models::LlamaModel<float>::Workspace ws;
  const Matrix<float> packed = model.forward(sequences, ws);
  const Index len = static_cast<Index>(sequences[0].size());
  const Matrix<float> expected = reference.read_matrix("states.0", len, model.hidden_size());
  CHECK((packed.topRows(len) - expected).cwiseAbs().maxCoeff() < 1e-4 * expected.cwiseAbs().maxCoeff());
  // After a few steps of Adam on the item embeddings: the base is bit for bit the checkpoint's,
  // the adapters moved, and the merged model computes the adapted one's embeddings.
  const auto q = params.find("blocks.0.attention.query.weight");
  const Matrix<float> base_before = params.value(q);
  const std::vector<std::vector<int>> texts{{1, 5, 9}, {1, 2, 3, 4}, {1, 7}};
  Rng rng(9);
  const Matrix<float> target = test::random_matrix<float>(3, model.hidden_size(), rng);
  optim::Adam adam(optim::AdamConfig{});
  auto state = adam.make_state(params);
  Matrix<float> items(3, model.hidden_size());
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 20; ++step) {
    params.zero_grad();
    model.encode_items(texts, items, ws);
    const Matrix<float> diff = items - target;
    const double loss = diff.squaredNorm();
    (step == 0 ? first : last) = loss;
    model.backward_items(2.0f * diff, ws);
    adam.step(params, state, 1e-2);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < first);
  CHECK((params.value(q) - base_before).cwiseAbs().maxCoeff() == 0.0f);
  CHECK(params.value(params.find("blocks.0.attention.query.lora_b.weight")).cwiseAbs().maxCoeff() > 0.0f);
  model.encode_items(texts, items, ws);
  const auto merged = models::merge_lora(model);
  models::LlamaModel<float>::Workspace merged_ws;
  Matrix<float> merged_items(3, model.hidden_size());
  merged.encode_items(texts, merged_items, merged_ws);
  CHECK((merged_items - items).cwiseAbs().maxCoeff() < 1e-4f);

  // Loading into a model of another shape is refused by config.json.
  models::LlamaConfig other = model.config();
  other.num_layers = 2;
  models::LlamaModel<float> shallower(other);
  CHECK_THROWS_WITH(models::load_hf_llama_weights(dir, shallower), Catch::Contains("config.json") && Catch::Contains("differs from the model"));
  // A model over vectors (no token table) takes the blocks and the norm.
  models::LlamaConfig vectors = model.config();
  vectors.vocab_size = 0;
  vectors.item_token = false;
  vectors.lora = nn::LoraOptions{};
  models::LlamaModel<float> user(vectors);
  models::load_hf_llama_weights(dir, user);
  CHECK((user.parameters().value(user.parameters().find("blocks.0.attention.query.weight")) - base_before).cwiseAbs().maxCoeff() == 0.0f);
}
