// train_sasrec: trains SASRec on an interaction log and reports its quality.
//
//   train_sasrec                                   built-in synthetic data (a minute or two)
//   train_sasrec --data ../shared/data/amazon-games.txt --epochs 200 --eval-every 5
//
// Progress per epoch (loss, steps/s, ETA), validation with full ranking and early stopping,
// test at the best epoch with full ranking (all items, history masked) and the legacy sampled
// protocol (target + 100 sampled items), a popularity baseline beside it, the checkpoint saved
// atomically, and with --json FILE the configuration, the per-epoch history and the final
// metrics as JSON. Exits non-zero on any error.
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/trainer.hpp"

#include "example_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <iostream>

using namespace distillrec;

int main(int argc, char** argv) {
  CLI::App app{"Train SASRec (Kang & McAuley, 2018) on an interaction log and evaluate it."};
  std::string data_path, format = "auto", checkpoint = "sasrec.safetensors", json_path, candidates_dir, write_data;
  data::SyntheticConfig synthetic;
  models::SASRecConfig model_config;
  train::TrainerConfig trainer_config;
  std::string block_style = "sasrec", objective = "bce";
  int threads = 2;
  bool keep_history = false, skip_sampled = false;
  double lr = trainer_config.adam.learning_rate, beta2 = trainer_config.adam.beta2;
  Index sampled_candidates = 100;
  std::uint64_t init_seed = 1;

  app.add_option("--data", data_path, "Interaction log: SASRec text (\"user item\" lines) or CSV (user,item,timestamp); default: synthetic data");
  app.add_option("--format", format, "Log format: auto (by extension), text or csv")->check(CLI::IsMember({"auto", "text", "csv"}));
  app.add_option("--synthetic-users", synthetic.num_users, "Synthetic data: number of users");
  app.add_option("--synthetic-items", synthetic.num_items, "Synthetic data: number of items");
  app.add_option("--write-data", write_data, "Write the data (e.g. the synthetic log) to this file in the SASRec text format and train on what is read back");
  app.add_option("--hidden", model_config.hidden_size, "Hidden size d");
  app.add_option("--blocks", model_config.num_blocks, "Transformer blocks");
  app.add_option("--heads", model_config.num_heads, "Attention heads");
  app.add_option("--max-length", model_config.max_length, "Longest history the model reads");
  app.add_option("--dropout", model_config.dropout, "Dropout rate");
  app.add_option("--block-style", block_style, "Block: sasrec (original), pre-ln or post-ln")->check(CLI::IsMember({"sasrec", "pre-ln", "post-ln"}));
  app.add_option("--activation", model_config.activation, "Feed-forward activation")->check(CLI::IsMember({"relu", "gelu"}));
  app.add_option("--objective", objective, "bce (SASRec), softmax (full catalogue) or sampled-softmax")->check(CLI::IsMember({"bce", "softmax", "ce", "sampled-softmax"}));
  app.add_option("--negatives", trainer_config.num_negatives, "bce: negatives per position");
  app.add_option("--sampled-negatives", trainer_config.objective.sampled_negatives, "sampled-softmax: shared negatives per batch");
  app.add_option("--epochs", trainer_config.epochs, "Maximum number of epochs");
  app.add_option("--batch-size", trainer_config.batch_size, "Users per batch");
  app.add_option("--lr", lr, "Adam learning rate");
  app.add_option("--beta2", beta2, "Adam beta2");
  app.add_option("--weight-decay", trainer_config.adam.weight_decay, "AdamW weight decay (decoupled)");
  app.add_option("--clip-norm", trainer_config.clip_norm, "Gradient-norm clipping (0: off)");
  app.add_option("--eval-every", trainer_config.eval_every, "Validate every k epochs (full ranking)");
  app.add_option("--patience", trainer_config.patience, "Stop after this many validations without improvement (0: never)");
  app.add_option("--metric", trainer_config.selection_metric, "Validation metric that selects the best epoch");
  app.add_flag("--keep-history", keep_history, "Full ranking: do not mask the user's history items");
  app.add_flag("--no-sampled", skip_sampled, "Skip the legacy sampled evaluation");
  app.add_option("--sampled-candidates", sampled_candidates, "Legacy sampled evaluation: negatives per user");
  app.add_option("--candidates-dir", candidates_dir, "Save the sampled candidates (valid.npy, test.npy) here, to judge another implementation on the same ones");
  app.add_option("--threads", threads, "Threads");
  app.add_option("--seed", trainer_config.seed, "Seed of batches, negatives and dropout");
  app.add_option("--init-seed", init_seed, "Seed of the weight initialisation");
  app.add_option("--checkpoint", checkpoint, "Where to save the trained model (safetensors; empty: do not save)");
  app.add_option("--json", json_path, "Write configuration, per-epoch history and metrics as JSON here");
  CLI11_PARSE(app, argc, argv);

  try {
    parallel::set_num_threads(threads);
    const auto start = std::chrono::steady_clock::now();
    auto log = examples::load_data(data_path, format, synthetic);
    if (!write_data.empty()) {
      data::write_sasrec_text(log, write_data);
      log = data::read_sasrec_text(write_data);
      std::cout << "wrote the data to " << write_data << "\n";
    }
    const auto split = data::leave_one_out(log);
    std::cout << "data: " << log.source << ": " << log.num_users() << " users, " << log.num_items << " items, "
              << log.num_interactions() << " interactions; " << split.evaluable_users.size() << " users evaluated\n";

    model_config.num_items = split.num_items;
    model_config.block_style = models::parse_block_style(block_style);
    models::SASRec<float> model(model_config);
    Rng init_rng(init_seed);
    model.initialize(init_rng);
    std::cout << "model: SASRec " << model_config.to_json().dump() << ", " << model.parameters().num_scalars()
              << " parameters\n";

    trainer_config.objective.objective = train::parse_objective(objective);
    trainer_config.adam.learning_rate = lr;
    trainer_config.adam.beta2 = beta2;
    trainer_config.adam.decoupled_weight_decay = trainer_config.adam.weight_decay > 0.0;
    trainer_config.validation.mask_history = !keep_history;
    train::Trainer<models::SASRec<float>> trainer(model, split, trainer_config);
    const auto summary = trainer.fit();

    eval::FullRankingOptions full;
    full.mask_history = !keep_history;
    std::vector<std::pair<std::string, eval::EvaluationResult>> rows;
    rows.emplace_back("SASRec", eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid, full));
    rows.emplace_back("SASRec", eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, full));
    if (!skip_sampled) {
      const auto valid_candidates = eval::SampledCandidates::generate(split, eval::EvalSplit::kValid, sampled_candidates);
      const auto test_candidates = eval::SampledCandidates::generate(split, eval::EvalSplit::kTest, sampled_candidates);
      if (!candidates_dir.empty()) {
        std::filesystem::create_directories(candidates_dir);
        valid_candidates.save((std::filesystem::path(candidates_dir) / "valid.npy").string());
        test_candidates.save((std::filesystem::path(candidates_dir) / "test.npy").string());
      }
      rows.emplace_back("SASRec", eval::evaluate_sampled(model, split, eval::EvalSplit::kTest, test_candidates));
    }
    models::Popularity<float> popularity(split.train, split.num_items);
    rows.emplace_back("popularity (baseline)", eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest, full));

    std::cout << "\nresults (best epoch " << summary.best_epoch << " of " << summary.epochs.size()
              << " by valid " << summary.selection_metric << "; full = all " << split.num_items
              << " items ranked, history " << (keep_history ? "kept" : "masked") << "; sampled-"
              << sampled_candidates << " = legacy protocol, not comparable to full)\n";
    examples::print_results(rows);
    std::printf("\ntraining: %.2f s per epoch (median), %.1f s in all, validation %.1f s; peak memory %.0f MiB; %d threads\n",
                summary.median_epoch_seconds(), summary.train_seconds, summary.validation_seconds,
                examples::peak_memory_mib(), threads);

    if (!checkpoint.empty()) {
      io::save_checkpoint(model, checkpoint, {{"data", log.source}, {"best_epoch", std::to_string(summary.best_epoch)}});
      std::cout << "saved " << checkpoint << "\n";
    }
    if (!json_path.empty()) {
      nlohmann::json out;
      out["implementation"] = "distillrec";
      out["data"] = {{"source", log.source}, {"users", log.num_users()}, {"items", log.num_items},
                     {"interactions", log.num_interactions()}, {"evaluated_users", split.evaluable_users.size()}};
      out["model"] = model_config.to_json();
      out["parameters"] = model.parameters().num_scalars();
      out["trainer"] = {{"epochs", trainer_config.epochs}, {"batch_size", trainer_config.batch_size},
                        {"objective", train::to_string(trainer_config.objective.objective)},
                        {"negatives", trainer_config.num_negatives}, {"lr", lr}, {"beta2", beta2},
                        {"seed", trainer_config.seed}, {"init_seed", init_seed}, {"threads", threads}};
      out["training"] = summary.to_json();
      nlohmann::json results = nlohmann::json::array();
      for (const auto& [name, result] : rows) {
        auto r = result.to_json();
        r["model"] = name;
        results.push_back(r);
      }
      out["results"] = results;
      out["peak_memory_mib"] = examples::peak_memory_mib();
      out["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      io::write_file_atomic(json_path, out.dump(2) + "\n");
      std::cout << "wrote " << json_path << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
