#include "distillrec/data/item_text.hpp"
#include "distillrec/text/sentencepiece.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

using namespace distillrec;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("distillrec_text_" + std::to_string(::getpid()) + "_" + name)).string();
}

/// Product-like texts from a fixed vocabulary (the built-in corpus: no file needed).
std::vector<std::string> built_in_texts() {
  const std::vector<std::string> nouns{"relay", "capacitor", "staple", "glove", "beaker", "thermometer", "valve", "fastener", "tube", "sensor"};
  const std::vector<std::string> adjectives{"heavy-duty", "stainless", "narrow", "digital", "sterile", "industrial", "compact", "precision"};
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) {
    const std::string& a = adjectives[static_cast<std::size_t>(i * 7 % 8)];
    const std::string& n = nouns[static_cast<std::size_t>(i * 3 % 10)];
    const std::string& m = nouns[static_cast<std::size_t>(i * 11 % 10)];
    texts.push_back(std::string(data::kHllmItemPrompt) + "title: " + a + " " + n + " kit, " + std::to_string(100 + i) +
                    " count.brand: Acme " + m + " Co.description: A " + a + " " + n + " for the " + m + "; rated " +
                    std::to_string(i % 17) + "." + std::to_string(i % 9) + " V.");
  }
  return texts;
}

/// Runs tests/text/sp_encode.py on the model and texts; false (the caller skips) where Python's
/// sentencepiece module is missing.
bool python_encode(const text::Tokenizer& tok, const std::vector<std::string>& texts, nlohmann::json& out) {
  const std::string model = temp_path("model.model"), in = temp_path("texts.json"), result = temp_path("ids.json");
  tok.save(model);
  std::ofstream(in) << nlohmann::json(texts).dump();
  const std::string command = "/usr/bin/python3 " + std::string(DISTILLREC_SOURCE_DIR) + "/tests/text/sp_encode.py " + model + " " +
                              in + " " + result;
  const int status = std::system(command.c_str());
  std::remove(model.c_str());
  std::remove(in.c_str());
  if (status != 0) {
    REQUIRE(WEXITSTATUS(status) == 3);  // anything but "module missing" is a failure
    return false;
  }
  std::ifstream(result) >> out;
  std::remove(result.c_str());
  return true;
}

void check_against_python(const text::Tokenizer& tok, const std::vector<std::string>& texts) {
  nlohmann::json py;
  if (!python_encode(tok, texts, py)) {
    WARN("skipped: Python's sentencepiece module is missing (Debian: python3-sentencepiece)");
    return;
  }
  CHECK(py["vocab_size"].get<int>() == tok.vocab_size());
  CHECK(py["bos_id"].get<int>() == tok.bos_id());
  CHECK(py["eos_id"].get<int>() == tok.eos_id());
  CHECK(py["unk_id"].get<int>() == tok.unk_id());
  CHECK(py["pad_id"].get<int>() == tok.pad_id());
  std::size_t same = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const auto plain = tok.encode(texts[i]), bos = tok.encode(texts[i], true);
    const bool equal = plain == py["plain"][i].get<std::vector<int>>() && bos == py["bos"][i].get<std::vector<int>>() &&
                       tok.decode(plain) == py["decoded"][i].get<std::string>();
    if (!equal) FAIL_CHECK("text " << i << " encodes differently: " << texts[i]);
    same += equal;
  }
  CHECK(same == texts.size());
}

}  // namespace

TEST_CASE("SentencePiece: a LLaMA-like tokenizer trained on item texts encodes as python3-sentencepiece does",
          "[text][sentencepiece]") {
  const auto texts = built_in_texts();
  text::TokenizerTraining config;
  config.vocab_size = 300;
  const auto tok = text::train_tokenizer(texts, config);
  CHECK(tok.vocab_size() == 300);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.pad_id() == -1);
  // Round trip, the BOS id first, digits split one by one.
  const auto ids = tok.encode(texts[5]);
  CHECK(tok.decode(ids) == texts[5]);
  const auto with_bos = tok.encode(texts[5], true);
  REQUIRE(with_bos.size() == ids.size() + 1);
  CHECK(with_bos.front() == 1);
  std::size_t digits = 0;
  for (int id : tok.encode("2024")) {
    const std::string piece = tok.piece(id);
    const auto in_piece = static_cast<std::size_t>(std::count_if(piece.begin(), piece.end(), [](char c) { return c >= '0' && c <= '9'; }));
    CHECK(in_piece <= 1);
    digits += in_piece;
  }
  CHECK(digits == 4);
  // Characters never seen in training come back exactly through byte fallback (no <unk>).
  const std::string unseen = "Größe 日本 ✓";
  const auto unseen_ids = tok.encode(unseen);
  for (int id : unseen_ids) CHECK(id != tok.unk_id());
  CHECK(tok.decode(unseen_ids) == unseen);
  // Training is deterministic: the same texts and settings give the same model.
  CHECK(text::train_tokenizer(texts, config).serialized() == tok.serialized());
  // Saved and loaded (atomically written file), the same ids.
  const std::string path = temp_path("saved.model");
  tok.save(path);
  const auto loaded = text::Tokenizer::load(path);
  CHECK(loaded.serialized() == tok.serialized());
  CHECK(loaded.encode(texts[7], true) == tok.encode(texts[7], true));
  std::remove(path.c_str());
  std::vector<std::string> checked(texts.begin(), texts.begin() + 50);
  checked.push_back(unseen);
  checked.push_back("");
  check_against_python(tok, checked);
}

TEST_CASE("SentencePiece: a tokenizer on the Amazon Scientific item texts (HLLM's prompt) matches Python's ids",
          "[text][sentencepiece][real]") {
  const std::string path = std::string(DISTILLREC_TEST_DATA_DIR) + "/amazon-scientific-items.csv";
  if (!std::filesystem::exists(path)) {
    WARN("skipped: " << path << " is absent");
    return;
  }
  const auto items = data::read_item_texts(path);
  std::vector<std::string> texts;
  for (ItemId i = 1; i <= items.num_items(); ++i) texts.push_back(data::hllm_item_text(items, i, {"title", "brand", "categories", "description"}));
  text::TokenizerTraining config;
  config.vocab_size = 4000;
  const auto tok = text::train_tokenizer(texts, config);
  CHECK(tok.vocab_size() == 4000);
  double tokens = 0;
  for (const auto& t : texts) tokens += static_cast<double>(tok.encode(t).size());
  const double mean = tokens / static_cast<double>(texts.size());
  CAPTURE(mean);
  CHECK(mean > 20.0);  // a real description is dozens of tokens
  std::vector<std::string> checked;
  for (std::size_t i = 0; i < texts.size(); i += 20) checked.push_back(texts[i]);
  check_against_python(tok, checked);
}

TEST_CASE("SentencePiece: missing or corrupt models and bad settings are refused, named", "[text][sentencepiece]") {
  CHECK_THROWS_WITH(text::Tokenizer::load("/nonexistent/tokenizer.model"),
                    Catch::Contains("/nonexistent/tokenizer.model") && Catch::Contains("cannot open"));
  const std::string garbage = temp_path("garbage.model");
  std::ofstream(garbage, std::ios::binary) << "this is not a protobuf \x01\x02\x03";
  CHECK_THROWS_WITH(text::Tokenizer::load(garbage), Catch::Contains(garbage) && Catch::Contains("not a SentencePiece model"));
  std::ofstream(garbage, std::ios::binary | std::ios::trunc).flush();
  CHECK_THROWS_WITH(text::Tokenizer::load(garbage), Catch::Contains("empty"));
  std::remove(garbage.c_str());
  CHECK_THROWS_WITH(text::train_tokenizer({}), Catch::Contains("no texts"));
  text::TokenizerTraining small;
  small.vocab_size = 8;
  CHECK_THROWS_WITH(text::train_tokenizer({"a b c"}, small), Catch::Contains("too small"));
  text::TokenizerTraining bad_type;
  bad_type.model_type = "transformer";
  CHECK_THROWS_WITH(text::train_tokenizer(built_in_texts(), bad_type), Catch::Contains("SentencePiece refused"));
  text::TokenizerTraining config;
  config.vocab_size = 300;
  const auto tok = text::train_tokenizer(built_in_texts(), config);
  CHECK_THROWS_WITH(tok.decode({5, 300}), Catch::Contains("token id 300 at position 1 is outside 0..299"));
  CHECK_THROWS_AS(tok.piece(-1), ConfigError);
  text::Tokenizer empty;
  CHECK_THROWS_WITH(empty.encode("x"), Catch::Contains("not loaded"));
}
