#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/sasrec.hpp"

#include "support.hpp"

#include <fstream>

using namespace distillrec;
using Catch::Matchers::Contains;

namespace {

models::SASRecConfig small_config() {
  models::SASRecConfig config;
  config.num_items = 30;
  config.hidden_size = 8;
  config.num_blocks = 2;
  config.num_heads = 2;
  config.max_length = 6;
  config.dropout = 0.2;
  return config;
}

std::string write_model(const std::filesystem::path& dir, const models::SASRec<float>& model) {
  const std::string path = (dir / "model.safetensors").string();
  io::save_checkpoint(model, path, {{"note", "unit test"}});
  return path;
}

}  // namespace

TEST_CASE("SASRec checkpoint round trip restores identical weights and scores", "[io][checkpoint]") {
  const auto dir = test::temp_dir("checkpoint_roundtrip");
  models::SASRec<float> model(small_config());
  Rng rng(1);
  model.initialize(rng);
  const std::string path = write_model(dir, model);
  auto loaded = io::load_checkpoint<models::SASRec<float>>(path);
  REQUIRE(loaded.config().to_json() == model.config().to_json());
  for (Index id = 0; id < model.parameters().count(); ++id) {
    REQUIRE(loaded.parameters().value(id) == model.parameters().value(id));
  }
  models::SASRec<float>::Workspace ws;
  Matrix<float> a(1, 8), b(1, 8);
  model.encode({{3, 4, 5}}, a, ws);
  loaded.encode({{3, 4, 5}}, b, ws);
  REQUIRE(a == b);
  io::SafetensorsReader reader(path);
  REQUIRE(reader.metadata().at("note") == "unit test");
  REQUIRE(reader.metadata().at("model") == "sasrec");
  REQUIRE(reader.info("item_embedding.weight").shape == std::vector<std::int64_t>({31, 8}));
  // No temporary files are left behind by the atomic write.
  REQUIRE(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator{}) == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("A checkpoint written tensor by tensor, as a PyTorch user would, loads", "[io][checkpoint]") {
  const auto dir = test::temp_dir("checkpoint_external");
  auto config = small_config();
  models::SASRec<float> reference(config);
  Rng rng(2);
  reference.initialize(rng);
  io::SafetensorsWriter writer;
  writer.set_metadata("format", "distillrec");
  writer.set_metadata("model", "sasrec");
  writer.set_metadata("config", R"({"num_items": 30, "hidden_size": 8, "num_blocks": 2, "num_heads": 2, "max_length": 6})");
  for (const auto& info : reference.parameters().infos()) {
    writer.add(info.name, Matrix<float>(reference.parameters().value(reference.parameters().find(info.name))));
  }
  const std::string path = (dir / "from_pytorch.safetensors").string();
  writer.write(path);
  auto loaded = io::load_checkpoint<models::SASRec<float>>(path);
  REQUIRE(loaded.config().dropout == 0.5);  // defaults for keys the writer left out
  REQUIRE(loaded.parameters().value(0) == reference.parameters().value(0));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Checkpoint errors name the file and the tensor", "[io][checkpoint]") {
  const auto dir = test::temp_dir("checkpoint_errors");
  models::SASRec<float> model(small_config());
  Rng rng(3);
  model.initialize(rng);
  const std::string good = write_model(dir, model);
  using Model = models::SASRec<float>;

  SECTION("truncated file") {
    std::string bytes;
    {
      std::ifstream in(good, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    const std::string path = (dir / "truncated.safetensors").string();
    std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() - 100);
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(path), Contains("truncated.safetensors") && Contains("truncated"));
  }
  SECTION("corrupt header") {
    std::string bytes;
    {
      std::ifstream in(good, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    bytes[10] = '#';
    bytes[11] = '!';
    const std::string path = (dir / "corrupt.safetensors").string();
    std::ofstream(path, std::ios::binary) << bytes;
    REQUIRE_THROWS_AS(io::load_checkpoint<Model>(path), FormatError);
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(path), Contains("corrupt.safetensors"));
  }
  SECTION("shapes that disagree with the configuration") {
    // Same tensors, but the configuration claims 40 items: item_embedding.weight must be [41, 8].
    io::SafetensorsReader reader(good);
    io::SafetensorsWriter writer;
    for (const auto& [key, value] : reader.metadata()) writer.set_metadata(key, value);
    auto config = small_config();
    config.num_items = 40;
    writer.set_metadata("config", config.to_json().dump());
    for (const auto& name : reader.names()) {
      const auto& info = reader.info(name);
      writer.add(name, reader.read_floats(name).data(), info.shape);
    }
    const std::string path = (dir / "mismatch.safetensors").string();
    writer.write(path);
    REQUIRE_THROWS_AS(io::load_checkpoint<Model>(path), ShapeError);
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(path),
                        Contains("mismatch.safetensors") && Contains("item_embedding.weight") && Contains("41"));
  }
  SECTION("missing and unexpected tensors, bad metadata") {
    io::SafetensorsReader reader(good);
    auto rewrite = [&](const std::string& name, const std::string& skip, bool extra, const std::string& config_json) {
      io::SafetensorsWriter writer;
      for (const auto& [key, value] : reader.metadata()) writer.set_metadata(key, value);
      if (!config_json.empty()) writer.set_metadata("config", config_json);
      for (const auto& tensor : reader.names()) {
        if (tensor == skip) continue;
        writer.add(tensor, reader.read_floats(tensor).data(), reader.info(tensor).shape);
      }
      if (extra) writer.add("head.weight", Matrix<float>::Zero(2, 2));
      const std::string path = (dir / name).string();
      writer.write(path);
      return path;
    };
    const auto missing = rewrite("missing.safetensors", "blocks.1.ffn.fc2.bias", false, "");
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(missing), Contains("missing.safetensors") && Contains("blocks.1.ffn.fc2.bias"));
    const auto extra = rewrite("extra.safetensors", "", true, "");
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(extra), Contains("head.weight"));
    const auto bad_json = rewrite("badjson.safetensors", "", false, "{not json");
    REQUIRE_THROWS_AS(io::load_checkpoint<Model>(bad_json), FormatError);
    const auto bad_config = rewrite("badconfig.safetensors", "", false, R"({"num_items": 30, "hidden_size": 7, "num_heads": 2})");
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(bad_config), Contains("badconfig.safetensors") && Contains("divisible"));
  }
  SECTION("a file that is not a checkpoint") {
    io::SafetensorsWriter writer;
    writer.add("x", Matrix<float>::Zero(1, 1));
    const std::string path = (dir / "plain.safetensors").string();
    writer.write(path);
    REQUIRE_THROWS_WITH(io::load_checkpoint<Model>(path), Contains("not a distillrec checkpoint"));
  }
  std::filesystem::remove_all(dir);
}
