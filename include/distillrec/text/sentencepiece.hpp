// distillrec/text/sentencepiece.hpp
//
// Tokenizers for item text through SentencePiece (Debian: libsentencepiece-dev), the library
// LLaMA-family checkpoints ship their `tokenizer.model` for. Opt-in: link the CMake target
// distillrec::text (present where SentencePiece is found); not in the umbrella header.
//
//   auto tok = text::Tokenizer::load("tokenizer.model");     // a LLaMA tokenizer, or one saved here
//   std::vector<int> ids = tok.encode("title: ...", /*add_bos=*/true);
//
//   text::TokenizerTraining config;                            // or train one on the item texts
//   config.vocab_size = 8000;
//   auto trained = text::train_tokenizer(texts, config);      // BPE with byte fallback, as LLaMA's
//   trained.save("items.model");                              // atomically
//
// encode() and decode() are const and may be called from many threads at once (SentencePiece's
// processor is immutable once loaded). Errors are distillrec::FormatError (a file that is missing
// or not a SentencePiece model, named) or ConfigError (bad training settings, with
// SentencePiece's own message).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/io/atomic_file.hpp"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace distillrec::text {

class Tokenizer {
 public:
  /// An empty tokenizer (every use throws until one is loaded into it by assignment).
  Tokenizer() = default;

  /// Loads a SentencePiece model file (e.g. a LLaMA checkpoint's tokenizer.model).
  static Tokenizer load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(path, 0, "cannot open the tokenizer model");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw FormatError(path, 0, "cannot read the tokenizer model");
    return from_serialized(std::move(bytes), path);
  }

  /// A model from its serialized bytes (what save() writes); `source` names it in errors.
  static Tokenizer from_serialized(std::string bytes, const std::string& source = "tokenizer") {
    Tokenizer t;
    t.source_ = source;
    if (bytes.empty()) throw FormatError(source, 0, "the tokenizer model is empty");
    auto processor = std::make_shared<sentencepiece::SentencePieceProcessor>();
    const auto status = processor->LoadFromSerializedProto(bytes);
    if (!status.ok()) {
      throw FormatError(source, 0, "not a SentencePiece model (" + status.ToString() + ")");
    }
    t.processor_ = std::move(processor);
    t.bytes_ = std::move(bytes);
    return t;
  }

  /// Token ids of `text` (UTF-8); with add_bos the beginning-of-sentence id first (LLaMA
  /// tokenizers, and HLLM's item texts through them, start with it).
  std::vector<int> encode(std::string_view text, bool add_bos = false) const {
    std::vector<int> ids;
    const auto status = processor().Encode(absl::string_view(text.data(), text.size()), &ids);
    if (!status.ok()) throw FormatError(source_, 0, "cannot encode a text (" + status.ToString() + ")");
    if (add_bos) {
      if (bos_id() < 0) throw ConfigError(source_ + ": this tokenizer has no beginning-of-sentence token");
      ids.insert(ids.begin(), bos_id());
    }
    return ids;
  }

  /// The text of token ids (special tokens dropped).
  std::string decode(const std::vector<int>& ids) const {
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size()) {
        throw ConfigError(distillrec::detail::concat(source_, ": token id ", ids[i], " at position ", i, " is outside 0..",
                                                     vocab_size() - 1));
      }
    }
    std::string out;
    const auto status = processor().Decode(ids, &out);
    if (!status.ok()) throw FormatError(source_, 0, "cannot decode (" + status.ToString() + ")");
    return out;
  }

  int vocab_size() const { return processor().GetPieceSize(); }
  int bos_id() const { return processor().bos_id(); }
  int eos_id() const { return processor().eos_id(); }
  int unk_id() const { return processor().unk_id(); }
  int pad_id() const { return processor().pad_id(); }  // -1 where the model has none (LLaMA's)
  std::string piece(int id) const {
    if (id < 0 || id >= vocab_size()) throw ConfigError(distillrec::detail::concat(source_, ": no token ", id));
    return processor().IdToPiece(id);
  }
  const std::string& source() const { return source_; }

  /// The model's bytes (a SentencePiece ModelProto), as save() writes them.
  const std::string& serialized() const { return bytes_; }
  /// Writes the model file atomically (a reader never sees half a file).
  void save(const std::string& path) const {
    io::write_file_atomic(path, bytes_);
  }

 private:
  const sentencepiece::SentencePieceProcessor& processor() const {
    if (!processor_) throw ConfigError("tokenizer: not loaded");
    return *processor_;
  }

  std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor_;
  std::string bytes_;
  std::string source_;
};

/// Settings of train_tokenizer(); the defaults make a LLaMA-like tokenizer: BPE, digits split,
/// unknown characters as UTF-8 bytes (byte fallback), <unk> 0, <s> 1, </s> 2, no padding token.
struct TokenizerTraining {
  int vocab_size = 8000;
  std::string model_type = "bpe";        // bpe, unigram, char or word
  double character_coverage = 0.9995;
  bool byte_fallback = true;
  bool split_digits = true;
  int max_sentence_length = 16384;       // bytes; longer texts are skipped by SentencePiece's trainer
  int threads = 1;                       // 1: the same model on every machine
  std::string normalization = "identity"; // LLaMA's: no Unicode normalisation
  bool verbose = false;                  // SentencePiece's own progress output on stderr

  std::unordered_map<std::string, std::string> arguments() const {
    return {{"vocab_size", std::to_string(vocab_size)},
            {"model_type", model_type},
            {"character_coverage", std::to_string(character_coverage)},
            {"byte_fallback", byte_fallback ? "true" : "false"},
            {"split_digits", split_digits ? "true" : "false"},
            {"max_sentence_length", std::to_string(max_sentence_length)},
            {"num_threads", std::to_string(threads)},
            {"normalization_rule_name", normalization},
            {"unk_id", "0"},
            {"bos_id", "1"},
            {"eos_id", "2"},
            {"pad_id", "-1"},
            {"hard_vocab_limit", "false"},
            {"minloglevel", verbose ? "0" : "2"}};
  }
};

namespace detail {

class TextIterator : public sentencepiece::SentenceIterator {
 public:
  explicit TextIterator(const std::vector<std::string>& texts) : texts_(texts) {}
  bool done() const override { return index_ >= texts_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return texts_[index_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  const std::vector<std::string>& texts_;
  std::size_t index_ = 0;
};

}  // namespace detail

/// Trains a SentencePiece tokenizer on `texts` (e.g. every item's HLLM text), in memory.
inline Tokenizer train_tokenizer(const std::vector<std::string>& texts, const TokenizerTraining& config = {}) {
  if (texts.empty()) throw ConfigError("train_tokenizer: no texts");
  if (config.vocab_size < 16) throw ConfigError(distillrec::detail::concat("train_tokenizer: vocab_size ", config.vocab_size, " is too small"));
  detail::TextIterator iterator(texts);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(config.arguments(), &iterator, &model);
  if (!status.ok()) throw ConfigError("train_tokenizer: SentencePiece refused the training (" + status.ToString() + ")");
  return Tokenizer::from_serialized(std::move(model), "trained tokenizer");
}

}  // namespace distillrec::text
