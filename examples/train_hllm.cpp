// train_hllm: HLLM on an interaction log with item text, against ID-based models and text-free
// and text-only baselines, on warm items and on cold-start items.
//
//   train_hllm --data ../shared/data/amazon-scientific.txt --items ../shared/data/amazon-scientific-items.csv
//   train_hllm ... --cold-items 0.1        hold 10% of the items out of training entirely
//   train_hllm ... --tokenizer tokenizer.model      a LLaMA-family tokenizer instead of training one
//
// Steps: the item texts (CSV, HLLM's prompt + "column: value" fields) are tokenised by
// SentencePiece (a BPE trained on the texts with --vocab pieces, or --tokenizer); HLLM
// (models/hllm.hpp, sizes from the flags) trains end to end with InfoNCE (train/hllm_trainer.hpp)
// on leave-one-out, validated every epoch by full ranking, best epoch kept. With --cold-items F a
// fixed fraction F of the items (seeded) is removed from every training sequence
// (data/cold_start.hpp) and each interaction with one of them that follows a warm one becomes a
// cold test example. Reported, full ranking with the history masked: HLLM, SASRec and GRU4Rec
// (full-softmax cross-entropy, --compare), popularity, and a text-similarity baseline (TF-IDF of
// the items' tokens; a history's profile is the mean of its items' unit vectors, items ranked by
// cosine) on the warm test users, and every one of them on the cold examples (an ID-based model
// has never seen a cold item: its row is its initialisation, only ever pushed down by the softmax).
// The tokenizer and the TF-IDF weights are fitted on every item's text, the held-out items'
// included (their text, never their interactions: text is what a new item arrives with). Also: parameters, seconds per epoch,
// training sequences/s, item encoding items/s, peak memory; --json FILE writes all of it.
// --from-llama DIR starts the item LLM from a LLaMA-family checkpoint (Hugging Face layout:
// config.json, safetensors, tokenizer.model), its sizes then the checkpoint's; --user-from-llama
// starts the user LLM from it too. Every weight is fine-tuned, or with --lora-rank R only LoRA
// adapters (nn/lora.hpp) on the pretrained LLMs' projections, their base frozen; --checkpoint
// then saves the adapters merged into the base (--keep-adapters: as they are).
// --export-signals FILE makes HLLM a DLLM2Rec teacher: its top-K for every training example and
// its item embeddings, in the file distill_dllm2rec --teacher-signals reads.
#include "distillrec/data/cold_start.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/item_text.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/hllm.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/text/sentencepiece.hpp"
#include "distillrec/train/hllm_trainer.hpp"
#include "distillrec/train/trainer.hpp"

#include "example_support.hpp"
#include "../bench/bench_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

using namespace distillrec;

namespace {

/// The text-similarity baseline: items as L2-normalised TF-IDF vectors over token ids; a
/// history's profile is the normalised mean of its newest items' vectors; scores are cosines.
/// A scoring model (models/model.hpp), so it is evaluated like the others.
class TextSimilarity {
 public:
  using Scalar = float;
  struct Workspace {};

  TextSimilarity(const std::vector<std::vector<int>>& tokens, Index vocab_size, Index max_length)
      : table_(static_cast<Index>(tokens.size()), vocab_size), max_length_(max_length) {
    std::vector<double> df(static_cast<std::size_t>(vocab_size), 0.0);
    for (const auto& t : tokens) {
      std::vector<int> unique(t.begin(), t.end());
      std::sort(unique.begin(), unique.end());
      unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
      for (int id : unique) df[static_cast<std::size_t>(id)] += 1.0;
    }
    const double n = static_cast<double>(tokens.size());
    table_.setZero();
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      for (int id : tokens[i]) table_(static_cast<Index>(i), id) += static_cast<float>(std::log(n / df[static_cast<std::size_t>(id)]));
      const float norm = table_.row(static_cast<Index>(i)).norm();
      if (norm > 0.0f) table_.row(static_cast<Index>(i)) /= norm;
    }
  }

  ItemId num_items() const { return table_.rows(); }
  void encode(const std::vector<Sequence>& histories, MatrixRef<float> out, Workspace&) const {
    for (std::size_t s = 0; s < histories.size(); ++s) {
      auto row = out.row(static_cast<Index>(s));
      row.setZero();
      const auto& h = histories[s];
      const std::size_t len = std::min<std::size_t>(h.size(), static_cast<std::size_t>(max_length_));
      for (std::size_t k = h.size() - len; k < h.size(); ++k) row += table_.row(h[k] - 1);
      const float norm = row.norm();
      if (norm > 0.0f) row /= norm;
    }
  }
  nn::HeadWeights<float> output_weights() const {
    return nn::HeadWeights<float>{ConstMatrixMap<float>(table_.data(), table_.rows(), table_.cols()), nullptr};
  }

 private:
  Matrix<float> table_;
  Index max_length_;
};

nlohmann::json metrics_json(const eval::EvaluationResult& r) {
  nlohmann::json j;
  for (const auto& [name, value] : r.metrics) j[name] = value;
  j["users"] = r.num_users;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Trains HLLM (item LLM over item text + user LLM, InfoNCE) and compares it with ID-based and text baselines"};
  std::string data_path, items_path, tokenizer_path, save_tokenizer, checkpoint, json_path, columns_text, prompt = data::kHllmItemPrompt;
  std::string compare = "sasrec,gru4rec", signals_path, from_llama;
  bool user_from_llama = false, keep_adapters = false, recompute_attention = false;
  nn::LoraOptions lora;
  Index signals_k = 50;
  int vocab = 4000;
  Index hidden = 64, item_layers = 2, user_layers = 2, heads = 4, max_length = 50, max_text_tokens = 64, max_users = 0;
  Index baseline_epochs = 200;
  double cold_fraction = 0.0;
  bool allow_missing_text = false;
  train::HllmTrainerConfig training;
  training.epochs = 10;
  app.add_option("--data", data_path, "Interaction log (SASRec text 'user item' lines, or CSV user,item,timestamp)")->required();
  app.add_option("--items", items_path, "Item-text CSV (an 'item' id column and text columns)")->required();
  app.add_option("--columns", columns_text, "Text columns, comma-separated, in prompt order (default: every column of the file)");
  app.add_option("--prompt", prompt, "Text put before every item's fields (HLLM's prompt)");
  app.add_flag("--allow-missing-text", allow_missing_text,
               "Give items the CSV does not list an empty text (HLLM's behaviour) instead of refusing the file");
  app.add_option("--tokenizer", tokenizer_path, "A SentencePiece tokenizer.model to use (default: train a BPE on the item texts)");
  app.add_option("--vocab", vocab, "Pieces of the BPE trained on the item texts")->check(CLI::Range(300, 1 << 20));
  app.add_option("--save-tokenizer", save_tokenizer, "Write the trained tokenizer here");
  app.add_option("--hidden", hidden, "Width of both LLMs")->check(CLI::PositiveNumber);
  app.add_option("--item-layers", item_layers, "Item LLM layers")->check(CLI::PositiveNumber);
  app.add_option("--user-layers", user_layers, "User LLM layers")->check(CLI::PositiveNumber);
  app.add_option("--heads", heads, "Attention heads of both LLMs")->check(CLI::PositiveNumber);
  app.add_option("--max-length", max_length, "Newest items of a history read")->check(CLI::PositiveNumber);
  app.add_option("--max-text-tokens", max_text_tokens, "Tokens kept of each item text")->check(CLI::PositiveNumber);
  app.add_option("--epochs", training.epochs, "HLLM epochs")->check(CLI::PositiveNumber);
  app.add_option("--batch", training.batch_size, "Training windows per step")->check(CLI::PositiveNumber);
  app.add_option("--negatives", training.negatives, "Shared negatives per step")->check(CLI::PositiveNumber);
  app.add_option("--lr", training.adam.learning_rate, "AdamW peak learning rate");
  app.add_option("--weight-decay", training.adam.weight_decay, "AdamW weight decay");
  app.add_option("--warmup", training.warmup_fraction, "Fraction of the steps spent warming up");
  app.add_option("--patience", training.patience, "Validations without improvement before stopping (0: never)");
  app.add_option("--seed", training.seed, "Seed of every random choice (weights, batches, negatives, cold items)");
  app.add_option("--cold-items", cold_fraction, "Fraction of the items held out of training (cold start); 0: none")->check(CLI::Range(0.0, 0.9));
  app.add_option("--compare", compare, "ID-based models trained on the same split (sasrec,gru4rec; empty: none)");
  app.add_option("--baseline-epochs", baseline_epochs, "Largest epochs of the ID-based models (early stopping on validation)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-users", max_users, "Keep only the first N users of the log (quick runs)")->check(CLI::NonNegativeNumber);
  app.add_option("--from-llama", from_llama,
                 "Start the item LLM from this LLaMA-family checkpoint directory (config.json, safetensors; its tokenizer.model unless "
                 "--tokenizer); --hidden, --item-layers and --heads then come from it");
  app.add_flag("--user-from-llama", user_from_llama, "Start the user LLM from the --from-llama checkpoint too (its layers)");
  app.add_option("--lora-rank", lora.rank,
                 "Train LoRA adapters of this rank on the LLMs started from the checkpoint, their base frozen (0: fine-tune every weight)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--lora-alpha", lora.alpha, "LoRA scale numerator (the update is scaled by alpha / rank)");
  app.add_option("--lora-dropout", lora.dropout, "Dropout on the LoRA adapters' input while training")->check(CLI::Range(0.0, 0.9));
  app.add_flag("--keep-adapters", keep_adapters, "Save the checkpoint with its LoRA adapters instead of merged into the base");
  app.add_flag("--recompute-attention", recompute_attention,
               "Recompute both LLMs' attention probabilities in backward instead of keeping them (less memory for long texts)");
  app.add_option("--checkpoint", checkpoint, "Save HLLM (with its item table) here, atomically");
  app.add_option("--json", json_path, "Write configuration, history and results as JSON");
  app.add_option("--export-signals", signals_path,
                 "Write HLLM's top-K for every training example and its item embeddings as DLLM2Rec teacher signals "
                 "(distill_dllm2rec --teacher-signals; without --cold-items, the students' leave-one-out split)");
  app.add_option("--signals-k", signals_k, "Items per example in the exported rankings")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    using Clock = std::chrono::steady_clock;
    lora.validate();
    if (lora.enabled() && from_llama.empty()) {
      throw ConfigError("--lora-rank trains adapters on a pretrained base: it needs --from-llama DIR");
    }
    if (user_from_llama && from_llama.empty()) throw ConfigError("--user-from-llama needs --from-llama DIR");
    std::optional<models::LlamaConfig> pretrained;
    if (!from_llama.empty()) {
      pretrained = models::read_hf_llama_config(from_llama);
      if (tokenizer_path.empty()) {
        tokenizer_path = (std::filesystem::path(from_llama) / "tokenizer.model").string();
        if (!std::filesystem::exists(tokenizer_path)) {
          throw ConfigError(from_llama + ": no tokenizer.model in the checkpoint directory (pass the checkpoint's tokenizer with --tokenizer)");
        }
      }
    }
    if (!signals_path.empty() && (cold_fraction > 0.0 || max_users > 0)) {
      throw ConfigError("--export-signals needs the whole log's leave-one-out split (the students'): no --cold-items, no --max-users");
    }
    bench::print_machine();
    auto log = data::read_log(data_path);
    if (max_users > 0 && log.num_users() > max_users) {
      std::vector<Sequence> kept(log.sequences.begin(), log.sequences.begin() + max_users);
      std::vector<std::int64_t> raw = log.item_raw_ids;
      log = data::make_log(std::move(kept), log.num_items, log.source + " (first " + std::to_string(max_users) + " users)");
      log.item_raw_ids = std::move(raw);
    }
    const auto texts = data::read_item_texts(items_path);
    const std::vector<std::string> columns = columns_text.empty() ? texts.columns() : examples::split_list(columns_text);
    std::vector<std::string> item_texts;
    Index missing = 0;
    for (ItemId i = 1; i <= log.num_items; ++i) {
      const std::int64_t raw_id = log.item_raw_ids[static_cast<std::size_t>(i)];
      // The CSV's ids are at most 100 million (data/item_text.hpp): a larger log id has no text.
      const auto raw = raw_id >= 1 && raw_id <= 100'000'000 ? static_cast<ItemId>(raw_id) : ItemId{0};
      if (!texts.has(raw)) {
        if (!allow_missing_text) {
          throw FormatError(items_path + ": no text for item " + std::to_string(raw_id) + " of " + log.source +
                            " (--allow-missing-text gives such items an empty text)");
        }
        ++missing;
      }
      item_texts.push_back(data::hllm_item_text(texts, raw, columns, prompt));
    }
    std::printf("data: %s, %ld users, %ld items, %ld interactions; texts: %s (%ld items without text)\n", log.source.c_str(),
                static_cast<long>(log.num_users()), static_cast<long>(log.num_items), static_cast<long>(log.num_interactions()),
                items_path.c_str(), static_cast<long>(missing));

    const auto tokenizer_start = Clock::now();
    text::Tokenizer tokenizer = [&] {
      if (!tokenizer_path.empty()) return text::Tokenizer::load(tokenizer_path);
      text::TokenizerTraining t;
      t.vocab_size = vocab;
      return text::train_tokenizer(item_texts, t);
    }();
    if (!save_tokenizer.empty()) tokenizer.save(save_tokenizer);
    std::vector<std::vector<int>> tokens;
    double token_total = 0.0;
    Index cut = 0;
    for (const auto& t : item_texts) {
      tokens.push_back(tokenizer.encode(t, /*add_bos=*/true));
      token_total += static_cast<double>(tokens.back().size());
      cut += static_cast<Index>(tokens.back().size()) > max_text_tokens ? 1 : 0;
    }
    std::printf("tokenizer: %s, %d pieces, %.0f tokens per item text (%ld of %ld cut to %ld), %.1fs\n",
                tokenizer_path.empty() ? "BPE trained on the item texts" : tokenizer_path.c_str(), tokenizer.vocab_size(),
                token_total / static_cast<double>(tokens.size()), static_cast<long>(cut), static_cast<long>(tokens.size()),
                static_cast<long>(max_text_tokens), std::chrono::duration<double>(Clock::now() - tokenizer_start).count());
    {
      // Items whose kept tokens are the same have the same embedding: the model cannot tell them
      // apart (and InfoNCE drops them as each other's negatives).
      std::set<std::vector<int>> distinct;
      for (const auto& t : tokens) {
        distinct.insert(std::vector<int>(t.begin(), t.begin() + std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(t.size()), max_text_tokens)));
      }
      const auto same = static_cast<long>(tokens.size() - distinct.size());
      if (same > 0) {
        std::printf("warning: %ld items have the same first %ld tokens as another item (indistinguishable to HLLM): raise "
                    "--max-text-tokens, shorten --prompt or choose other --columns\n",
                    same, static_cast<long>(max_text_tokens));
      }
    }

    std::optional<data::ColdStartSplit> cold;
    data::ExampleSplit split;
    if (cold_fraction > 0.0) {
      cold = data::cold_start_split(log, cold_fraction, training.seed);
      split = cold->warm;
      std::printf("cold start: %zu items held out of training, %zu cold test examples\n", cold->cold_items.size(), cold->cold.test.size());
    } else {
      split = data::ExampleSplit(data::leave_one_out(log));
    }

    auto config = models::HllmConfig::small(log.num_items, tokenizer.vocab_size(), hidden, item_layers, user_layers, heads);
    if (pretrained) {
      if (tokenizer.vocab_size() > pretrained->vocab_size) {
        throw ConfigError(distillrec::detail::concat(tokenizer_path, " has ", tokenizer.vocab_size(), " pieces, more than the ",
                                                     pretrained->vocab_size, " tokens of ", from_llama, " (not its tokenizer?)"));
      }
      config.item_llm = *pretrained;
      config.item_llm.lora = lora;
      const Index user_depth = user_from_llama ? pretrained->num_layers : user_layers;
      config.user_llm = *pretrained;
      config.user_llm.num_layers = user_depth;
      config.user_llm.lora = user_from_llama ? lora : nn::LoraOptions{};
      config.normalise();
    }
    config.max_length = max_length;
    config.max_text_tokens = max_text_tokens;
    config.item_llm.recompute_attention = config.user_llm.recompute_attention = recompute_attention;
    if (!pretrained) config.item_llm.max_positions = std::max<Index>(config.item_llm.max_positions, max_text_tokens + 1);
    config.user_llm.max_positions = std::max<Index>(config.user_llm.max_positions, max_length);
    models::Hllm<float> hllm(config);
    Rng rng(training.seed);
    hllm.initialize(rng);
    if (pretrained) {
      models::load_hf_llama_weights(from_llama, hllm.item_llm());
      if (user_from_llama) models::load_hf_llama_weights(from_llama, hllm.user_llm());
    }
    hllm.set_item_tokens(tokens);
    const auto& item_config = config.item_llm;
    const auto& user_config = config.user_llm;
    std::printf("HLLM: item LLM %ld x %ld (vocab %ld, %s), user LLM %ld x %ld (%s), %ld heads, max_length %ld, %ld text tokens\n",
                static_cast<long>(item_config.num_layers), static_cast<long>(item_config.hidden_size),
                static_cast<long>(item_config.vocab_size), pretrained ? from_llama.c_str() : "from scratch",
                static_cast<long>(user_config.num_layers), static_cast<long>(user_config.hidden_size),
                user_from_llama ? from_llama.c_str() : "from scratch", static_cast<long>(item_config.num_heads), static_cast<long>(max_length),
                static_cast<long>(max_text_tokens));
    if (lora.enabled()) {
      std::printf("LoRA: rank %ld, alpha %g, dropout %g on the projections of the %s, base frozen: %ld of %ld parameters train\n",
                  static_cast<long>(lora.rank), lora.alpha, lora.dropout, user_from_llama ? "item and user LLMs" : "item LLM",
                  static_cast<long>(hllm.parameters().num_trainable_scalars()), static_cast<long>(hllm.parameters().num_scalars()));
    }
    train::HllmTrainer<float> trainer(hllm, split, training);
    const auto history = trainer.fit();
    const auto encode_start = Clock::now();
    hllm.refresh_item_table();
    const double encode_seconds = std::chrono::duration<double>(Clock::now() - encode_start).count();
    if (!checkpoint.empty()) {
      if (lora.enabled() && !keep_adapters) {
        io::save_checkpoint(models::merge_lora(hllm), checkpoint);
        std::printf("checkpoint: LoRA adapters merged into the base -> %s\n", checkpoint.c_str());
      } else {
        io::save_checkpoint(hllm, checkpoint);
      }
    }
    if (!signals_path.empty()) {
      const auto start = Clock::now();
      const auto ranking = distill::compute_ranking_signals(hllm, split, signals_k, data::Part::kTrain);
      const auto embeddings = distill::model_item_embeddings(hllm);
      distill::save_ranking_signals(signals_path, &ranking, &embeddings, distill::ItemIdMap(log.item_raw_ids),
                                    {{"teacher", "hllm"}, {"split", "leave-one-out"}, {"data", log.source}, {"history_masked", "false"}});
      std::printf("teacher signals: top-%ld of %ld training examples and item embeddings [%ld, %ld] -> %s (%.1fs)\n",
                  static_cast<long>(signals_k), static_cast<long>(ranking.num_examples()), static_cast<long>(embeddings.num_items()),
                  static_cast<long>(embeddings.dim()), signals_path.c_str(), std::chrono::duration<double>(Clock::now() - start).count());
    }

    std::vector<std::pair<std::string, eval::EvaluationResult>> warm_rows, cold_rows;
    nlohmann::json results, sizes;
    // Inference per user: one user's top-10 over the whole catalogue on one thread (the serving
    // engine, serve::Recommender), median over test histories.
    std::vector<Sequence> latency_histories;
    for (const auto& e : split.test) {
      if (latency_histories.size() >= 300) break;
      latency_histories.push_back(split.history(e));
    }
    std::map<std::string, double> top10;
    auto evaluate = [&](const std::string& name, const auto& model, Index parameters) {
      auto r = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest);
      warm_rows.emplace_back(name, r);
      results["warm"][name] = metrics_json(r);
      top10[name] = examples::top10_ms(model, latency_histories, parallel::max_threads());
      results["warm"][name]["top10_ms_one_thread"] = top10[name];
      sizes[name] = parameters;
      if (cold) {
        auto c = eval::evaluate_full_ranking(model, cold->cold, eval::EvalSplit::kTest);
        cold_rows.emplace_back(name, c);
        results["cold"][name] = metrics_json(c);
      }
    };
    // HLLM's size: both LLMs (with LoRA: base and adapters), not the item table (a cache of
    // their output).
    const Index hllm_size = hllm.parameters().num_scalars() - hllm.parameters().info(hllm.parameters().find("item_table.weight")).size() -
                            hllm.parameters().info(hllm.parameters().find("item_norms.weight")).size();
    evaluate("HLLM", hllm, hllm_size);
    models::Popularity<float> popularity(split);
    evaluate("popularity", popularity, 0);
    TextSimilarity text_similarity(tokens, tokenizer.vocab_size(), max_length);
    evaluate("text TF-IDF", text_similarity, 0);

    nlohmann::json baselines = nlohmann::json::object();
    for (const auto& name : examples::split_list(compare)) {
      train::TrainerConfig t;
      t.epochs = baseline_epochs;
      t.objective.objective = train::Objective::kSoftmax;
      t.patience = 5;
      t.seed = training.seed;
      t.log = nullptr;
      auto run = [&](auto& model, const std::string& label) {
        Rng r(training.seed);
        model.initialize(r);
        train::Trainer<std::decay_t<decltype(model)>> baseline_trainer(model, split, t);
        const auto start = Clock::now();
        const auto fitted = baseline_trainer.fit();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        const auto epochs = static_cast<double>(fitted.epochs.size());
        std::printf("%s: %zu epochs (best %ld), %.2f s/epoch\n", label.c_str(), fitted.epochs.size(), static_cast<long>(fitted.best_epoch),
                    seconds / std::max(1.0, epochs));
        baselines[label] = {{"epochs", fitted.epochs.size()}, {"best_epoch", fitted.best_epoch}, {"seconds_per_epoch", seconds / std::max(1.0, epochs)}};
        evaluate(label, model, model.parameters().num_trainable_scalars());
      };
      if (name == "sasrec") {
        models::SASRecConfig c;
        c.num_items = log.num_items;
        c.hidden_size = hidden;
        c.max_length = max_length;
        models::SASRec<float> model(c);
        run(model, "SASRec (CE)");
      } else if (name == "gru4rec") {
        models::GRU4RecConfig c;
        c.num_items = log.num_items;
        c.hidden_size = hidden;
        c.embedding_dim = hidden;
        c.max_length = max_length;
        models::GRU4Rec<float> model(c);
        run(model, "GRU4Rec (CE)");
      } else {
        throw ConfigError("--compare: unknown model \"" + name + "\" (sasrec, gru4rec)");
      }
    }

    double train_seconds = 0.0, sequences_per_second = 0.0;
    for (const auto& r : history) {
      train_seconds += r.seconds;
      sequences_per_second += r.sequences_per_second;
    }
    sequences_per_second /= static_cast<double>(history.size());
    std::printf("\nwarm items, test (full ranking, history masked):\n");
    examples::print_results(warm_rows, {"HR@10", "NDCG@10", "MRR"});
    std::printf("\n%-22s %12s %14s\n", "model", "parameters", "top-10 ms/user");
    for (const auto& [name, ms] : top10) {
      std::printf("%-22s %12ld %14.3f\n", name.c_str(), static_cast<long>(sizes[name].get<Index>()), ms);
    }
    if (cold) {
      std::printf("\ncold-start items (never seen in training), their interactions scored from text:\n");
      examples::print_results(cold_rows, {"HR@10", "NDCG@10", "MRR"});
    }
    std::printf("\nHLLM: %ld trainable parameters, best epoch %ld, %.1f s/epoch (%.0f sequences/s), item encoding %.0f items/s, "
                "peak memory %.0f MiB\n",
                static_cast<long>(hllm.parameters().num_trainable_scalars()), static_cast<long>(trainer.best_epoch()),
                train_seconds / static_cast<double>(history.size()), sequences_per_second,
                static_cast<double>(log.num_items) / encode_seconds, examples::peak_memory_mib());

    if (!json_path.empty()) {
      nlohmann::json j;
      j["machine"] = bench::machine_json();
      j["data"] = {{"log", data_path}, {"items", items_path}, {"users", log.num_users()}, {"num_items", log.num_items},
                   {"interactions", log.num_interactions()}, {"cold_fraction", cold_fraction}};
      j["tokenizer"] = {{"source", tokenizer_path.empty() ? "trained BPE" : tokenizer_path}, {"pieces", tokenizer.vocab_size()},
                        {"tokens_per_item", token_total / static_cast<double>(tokens.size())}};
      j["config"] = hllm.config().to_json();
      j["from_llama"] = from_llama;
      j["user_from_llama"] = user_from_llama;
      j["trainable_parameters"] = hllm.parameters().num_trainable_scalars();
      j["training"] = {{"epochs", training.epochs}, {"batch", training.batch_size}, {"negatives", training.negatives},
                       {"lr", training.adam.learning_rate}, {"weight_decay", training.adam.weight_decay},
                       {"warmup", training.warmup_fraction}, {"seed", training.seed}, {"best_epoch", trainer.best_epoch()}};
      nlohmann::json epochs = nlohmann::json::array();
      for (const auto& r : history) {
        nlohmann::json e = {{"epoch", r.epoch}, {"loss", r.loss}, {"accuracy", r.accuracy}, {"kept_negatives", r.kept_negatives},
                            {"scale", r.scale}, {"seconds", r.seconds}, {"sequences_per_second", r.sequences_per_second}};
        if (r.validation) e["valid"] = metrics_json(*r.validation);
        epochs.push_back(e);
      }
      j["history"] = epochs;
      j["results"] = results;
      j["parameters"] = sizes;
      j["baselines"] = baselines;
      j["throughput"] = {{"seconds_per_epoch", train_seconds / static_cast<double>(history.size())},
                         {"sequences_per_second", sequences_per_second},
                         {"items_encoded_per_second", static_cast<double>(log.num_items) / encode_seconds},
                         {"peak_memory_mib", examples::peak_memory_mib()}};
      io::write_file_atomic(json_path, j.dump(2) + "\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "train_hllm: " << e.what() << "\n";
    return 1;
  }
}
