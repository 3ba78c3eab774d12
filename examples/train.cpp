// train: trains any sequence model of the library on an interaction log and reports its quality.
//
//   train                                                  SASRec on the built-in synthetic data
//   train --model gru4rec --data ../shared/data/amazon-games.txt --objective softmax
//   train --model sasrec --data ../shared/data/amazon-games.txt --epochs 200 --eval-every 5
//   train --model llmrec --examples prefix ...             every prefix as a training example
//
// Models: sasrec (Kang & McAuley, 2018), gru4rec (Hidasi et al., 2016; DLLM2Rec's student) and
// llmrec (the LLaMA-style E4SRec design SLMRec distils). Examples: loo (leave-one-out, one
// training window per user with a target at every position), prefix (every prefix of a user's
// training sequence, its newest position predicting), temporal (a global split by time).
// Progress per epoch (loss, steps/s, ETA), validation with full ranking and early stopping, test
// at the best epoch with full ranking (all items, history masked) and, for leave-one-out, the
// legacy sampled protocol (target + 100 sampled items), a popularity baseline beside it, the
// checkpoint saved atomically, and with --json FILE the configuration, the per-epoch history
// and the final metrics as JSON. Exits non-zero on any error.
#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/registry.hpp"
#include "distillrec/train/info_nce_term.hpp"
#include "distillrec/train/trainer.hpp"

#include "example_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>

using namespace distillrec;

namespace {

/// Command-line sizes; 0 (or a negative dropout) keeps the model's own default.
struct ModelOptions {
  Index hidden = 0, blocks = 0, heads = 0, kv_heads = 0, ffn = 0, item_dim = 0, max_length = 50;
  double dropout = -1.0;
  std::string block_style = "sasrec", activation = "relu", head = "untied";
};

models::SASRecConfig make_config(models::ModelTag<models::SASRec<float>>, const ModelOptions& o) {
  models::SASRecConfig c;
  if (o.hidden > 0) c.hidden_size = o.hidden;
  if (o.blocks > 0) c.num_blocks = o.blocks;
  if (o.heads > 0) c.num_heads = o.heads;
  if (o.ffn > 0) c.ffn_size = o.ffn;
  if (o.dropout >= 0.0) c.dropout = o.dropout;
  c.max_length = o.max_length;
  c.block_style = models::parse_block_style(o.block_style);
  c.activation = o.activation;
  return c;
}

models::GRU4RecConfig make_config(models::ModelTag<models::GRU4Rec<float>>, const ModelOptions& o) {
  models::GRU4RecConfig c;
  if (o.hidden > 0) c.hidden_size = o.hidden;
  c.embedding_dim = o.item_dim > 0 ? o.item_dim : c.hidden_size;
  if (o.blocks > 0) c.num_layers = o.blocks;
  if (o.dropout >= 0.0) c.dropout = o.dropout;
  c.max_length = o.max_length;
  c.head = nn::parse_head_kind(o.head);
  return c;
}

models::LLMRecConfig make_config(models::ModelTag<models::LLMRec<float>>, const ModelOptions& o) {
  models::LLMRecConfig c;
  if (o.hidden > 0) c.hidden_size = o.hidden;
  if (o.item_dim > 0) c.item_dim = o.item_dim;
  if (o.blocks > 0) c.num_layers = o.blocks;
  if (o.heads > 0) c.num_heads = o.heads;
  if (o.kv_heads > 0) c.num_kv_heads = o.kv_heads;
  if (o.ffn > 0) c.ffn_size = o.ffn;
  if (o.dropout >= 0.0) c.dropout = o.dropout;
  c.max_length = o.max_length;
  return c;
}

std::string display_name(const std::string& model) {
  if (model == "sasrec") return "SASRec";
  if (model == "gru4rec") return "GRU4Rec";
  return "LLMRec";
}

}  // namespace

int main(int argc, char** argv) {
  examples::Processes processes(argc, argv);  // one, or data-parallel under mpirun
  CLI::App app{"Train a sequential recommender (SASRec, GRU4Rec or LLMRec) on an interaction log and evaluate it."};
  std::string model_name = "sasrec", data_path, format = "auto", checkpoint, json_path, candidates_dir, write_data;
  std::string examples_kind = "loo", objective = "bce", matmul_precision = "fp32";
  data::SyntheticConfig synthetic;
  ModelOptions options;
  train::TrainerConfig trainer_config;
  data::TemporalSplitConfig temporal;
  int threads = 2;
  bool keep_history = false, skip_sampled = false;
  double lr = trainer_config.adam.learning_rate, beta2 = trainer_config.adam.beta2;
  train::InfoNceTermConfig info_nce;
  info_nce.weight = 0.0;
  Index sampled_candidates = 100;
  std::uint64_t init_seed = 1;

  app.add_option("--model", model_name, "sasrec, gru4rec or llmrec")->check(CLI::IsMember({"sasrec", "gru4rec", "llmrec"}));
  app.add_option("--data", data_path, "Interaction log: SASRec text (\"user item\" lines) or CSV (user,item,timestamp); default: synthetic data");
  app.add_option("--format", format, "Log format: auto (by extension), text or csv")->check(CLI::IsMember({"auto", "text", "csv"}));
  app.add_option("--examples", examples_kind, "Training examples: loo (leave-one-out), prefix (every prefix) or temporal (global split by time)")
      ->check(CLI::IsMember({"loo", "prefix", "temporal"}));
  app.add_option("--valid-fraction", temporal.valid_fraction, "temporal: share of the examples (latest but the test ones) that validate");
  app.add_option("--test-fraction", temporal.test_fraction, "temporal: share of the latest examples that test");
  app.add_option("--synthetic-users", synthetic.num_users, "Synthetic data: number of users");
  app.add_option("--synthetic-items", synthetic.num_items, "Synthetic data: number of items");
  app.add_option("--write-data", write_data, "Write the data (e.g. the synthetic log) to this file in the SASRec text format and train on what is read back");
  app.add_option("--hidden", options.hidden, "Hidden size (default: the model's: SASRec 50, GRU4Rec and LLMRec 64)");
  app.add_option("--blocks,--layers", options.blocks, "Transformer blocks / GRU layers (default: the model's)");
  app.add_option("--heads", options.heads, "Attention heads (SASRec, LLMRec)");
  app.add_option("--kv-heads", options.kv_heads, "LLMRec: key/value heads (grouped-query attention)");
  app.add_option("--ffn", options.ffn, "Feed-forward width (SASRec, LLMRec)");
  app.add_option("--item-dim", options.item_dim, "Item table width (GRU4Rec: default the hidden size; LLMRec: 64)");
  app.add_option("--max-length", options.max_length, "Longest history the model reads");
  app.add_option("--dropout", options.dropout, "Dropout rate (default: the model's: SASRec 0.5, GRU4Rec and LLMRec 0.1)");
  app.add_option("--block-style", options.block_style, "SASRec block: sasrec (original), pre-ln or post-ln")->check(CLI::IsMember({"sasrec", "pre-ln", "post-ln"}));
  app.add_option("--activation", options.activation, "SASRec feed-forward activation")->check(CLI::IsMember({"relu", "gelu"}));
  app.add_option("--head", options.head, "GRU4Rec output head: untied (Linear with bias, DLLM2Rec) or tied (the item table)")
      ->check(CLI::IsMember({"tied", "untied"}));
  app.add_option("--objective", objective, "bce (SASRec), softmax (full catalogue) or sampled-softmax")->check(CLI::IsMember({"bce", "softmax", "ce", "sampled-softmax"}));
  app.add_option("--matmul-precision", matmul_precision, "softmax: precision of the catalogue GEMMs, fp32 or bf16 (bfloat16 inputs, fp32 accumulation)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--negatives", trainer_config.num_negatives, "bce: negatives per position");
  app.add_option("--sampled-negatives", trainer_config.objective.sampled_negatives, "sampled-softmax: shared negatives per batch");
  app.add_option("--info-nce", info_nce.weight,
                 "Weight of an InfoNCE term beside the objective (HLLM's loss: cosine scores, learnt temperature, a shared pool of "
                 "uniform negatives; 0: off)");
  app.add_option("--info-nce-negatives", info_nce.negatives, "InfoNCE: negatives shared by a step's positions");
  app.add_option("--epochs", trainer_config.epochs, "Maximum number of epochs");
  app.add_option("--batch-size", trainer_config.batch_size, "Training examples per batch");
  app.add_option("--lr", lr, "Adam learning rate");
  app.add_option("--beta2", beta2, "Adam beta2");
  app.add_option("--weight-decay", trainer_config.adam.weight_decay, "AdamW weight decay (decoupled)");
  app.add_option("--lazy-adam-rows", trainer_config.adam.lazy_rows,
                 "Adam updates only the touched rows of tensors with at least this many rows (item tables; 0: dense, as PyTorch)")
      ->check(CLI::NonNegativeNumber);
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
  std::string random_streams = "auto";
  app.add_option("--random-streams", random_streams,
                 "Dropout and per-example draws: sequential, per-example (independent of the batch's other examples and of the "
                 "number of processes) or auto (per-example under mpirun)")
      ->check(CLI::IsMember({"auto", "sequential", "per-example"}));
  app.add_option("--sparse-rows", trainer_config.sparse_rows,
                 "Under mpirun: tensors with at least this many rows (item tables) exchange only the rows a step touched (0: every "
                 "tensor whole)")
      ->capture_default_str();
  app.add_option("--init-seed", init_seed, "Seed of the weight initialisation");
  app.add_option("--checkpoint", checkpoint, "Where to save the trained model (safetensors; default MODEL.safetensors; \"\": do not save)");
  app.add_option("--json", json_path, "Write configuration, per-epoch history and metrics as JSON here");
  app.add_option("--state", trainer_config.state_path, "After every epoch write the training state here (to resume an interrupted run)");
  app.add_option("--resume", trainer_config.resume_from, "Continue the run whose --state file this is (same data, seed and sizes)");
  CLI11_PARSE(app, argc, argv);
  if (app.count("--checkpoint") == 0) checkpoint = model_name + ".safetensors";
  const std::string checkpoint_name = model_name == "llmrec" ? "llm_rec" : model_name;

  try {
    parallel::set_num_threads(threads);
    trainer_config.random_streams = train::parse_random_streams(random_streams);
    trainer_config.collective = processes.collective();
    const auto start = std::chrono::steady_clock::now();
    auto log = examples::load_data(data_path, format, synthetic);
    if (!write_data.empty()) {
      if (processes.is_root()) data::write_sasrec_text(log, write_data);
      processes.barrier();
      log = data::read_sasrec_text(write_data);
      std::cout << "wrote the data to " << write_data << "\n";
    }
    const bool loo = examples_kind == "loo";
    std::optional<data::LeaveOneOutSplit> loo_split;
    data::ExampleSplit split;
    if (loo) {
      loo_split = data::leave_one_out(log);
      split = *loo_split;
    } else if (examples_kind == "prefix") {
      split = data::every_prefix(log);
    } else {
      split = data::temporal_split(log, temporal);
    }
    std::cout << "data: " << log.source << ": " << log.num_users() << " users, " << log.num_items << " items, "
              << log.num_interactions() << " interactions; " << split.protocol << ": " << split.train.size()
              << " training, " << split.valid.size() << " validation, " << split.test.size() << " test examples\n";

    trainer_config.objective.objective = train::parse_objective(objective);
    trainer_config.objective.catalogue_precision = backend::parse_matmul_precision(matmul_precision);
    trainer_config.adam.learning_rate = lr;
    trainer_config.adam.beta2 = beta2;
    trainer_config.adam.decoupled_weight_decay = trainer_config.adam.weight_decay > 0.0;
    trainer_config.validation.mask_history = !keep_history;

    return models::with_model_type<float>(checkpoint_name, [&](auto tag) -> int {
      using Model = typename decltype(tag)::type;
      auto model_config = make_config(tag, options);
      model_config.num_items = split.num_items;
      Model model(model_config);
      Rng init_rng(init_seed);
      model.initialize(init_rng);
      const std::string name = display_name(model_name);
      std::cout << "model: " << name << " " << model_config.to_json().dump() << ", " << model.parameters().num_scalars()
                << " parameters\n";

      train::Trainer<Model> trainer(model, split, trainer_config);
      std::shared_ptr<train::InfoNceTerm<Model>> info_nce_term;
      if (info_nce.weight != 0.0) {  // a negative weight is refused by the term
        info_nce_term = std::make_shared<train::InfoNceTerm<Model>>(info_nce);
        trainer.add_term(info_nce_term);
      }
      const auto summary = trainer.fit();
      if (info_nce_term) std::cout << "InfoNCE: learnt scale " << info_nce_term->scale() << " (temperature " << 1.0 / info_nce_term->scale() << ")\n";

      eval::FullRankingOptions full;
      full.mask_history = !keep_history;
      full.collective = processes.collective().get();  // under mpirun each process ranks a share
      std::vector<std::pair<std::string, eval::EvaluationResult>> rows;
      rows.emplace_back(name, eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid, full));
      rows.emplace_back(name, eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, full));
      if (loo && !skip_sampled) {
        const auto valid_candidates = eval::SampledCandidates::generate(*loo_split, eval::EvalSplit::kValid, sampled_candidates);
        const auto test_candidates = eval::SampledCandidates::generate(*loo_split, eval::EvalSplit::kTest, sampled_candidates);
        if (!candidates_dir.empty() && processes.is_root()) {
          std::filesystem::create_directories(candidates_dir);
          valid_candidates.save((std::filesystem::path(candidates_dir) / "valid.npy").string());
          test_candidates.save((std::filesystem::path(candidates_dir) / "test.npy").string());
        }
        rows.emplace_back(name, eval::evaluate_sampled(model, *loo_split, eval::EvalSplit::kTest, test_candidates));
      }
      const models::Popularity<float> popularity(split);
      rows.emplace_back("popularity (baseline)", eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest, full));

      std::cout << "\nresults (best epoch " << summary.best_epoch << " of " << summary.epochs.size() << " by valid "
                << summary.selection_metric << "; full = all " << split.num_items << " items ranked, history "
                << (keep_history ? "kept" : "masked");
      if (loo && !skip_sampled) std::cout << "; sampled-" << sampled_candidates << " = legacy protocol, not comparable to full";
      std::cout << ")\n";
      examples::print_results(rows);
      std::printf("\ntraining: %.2f s per epoch (median), %.1f s in all, validation %.1f s; peak memory %.0f MiB; %d threads\n",
                  summary.median_epoch_seconds(), summary.train_seconds, summary.validation_seconds, examples::peak_memory_mib(),
                  threads);
      if (trainer_config.objective.objective == train::Objective::kSoftmax) {
        std::cout << "catalogue GEMMs: " << trainer.objective().catalogue_description() << "\n";
      }

      if (!checkpoint.empty()) {
        trainer.save_checkpoint(checkpoint, {{"data", log.source}, {"best_epoch", std::to_string(summary.best_epoch)}});
        std::cout << "saved " << checkpoint << "\n";
      }
      if (!json_path.empty() && processes.is_root()) {
        nlohmann::json out;
        out["implementation"] = "distillrec";
        out["data"] = {{"source", log.source},
                       {"users", log.num_users()},
                       {"items", log.num_items},
                       {"interactions", log.num_interactions()},
                       {"examples", split.protocol},
                       {"training_examples", split.train.size()},
                       {"evaluated_users", split.test.size()}};
        out["model"] = model_config.to_json();
        out["parameters"] = model.parameters().num_scalars();
        out["trainer"] = {{"epochs", trainer_config.epochs},   {"batch_size", trainer_config.batch_size},
                          {"objective", train::to_string(trainer_config.objective.objective)},
                          {"negatives", trainer_config.num_negatives}, {"lr", lr}, {"beta2", beta2}, {"info_nce", info_nce.weight}, {"info_nce_negatives", info_nce.negatives}, {"lazy_adam_rows", trainer_config.adam.lazy_rows},
                          {"matmul_precision", matmul_precision}, {"catalogue_gemm", trainer.objective().catalogue_description()},
                          {"seed", trainer_config.seed},       {"init_seed", init_seed}, {"threads", threads},
                          {"processes", processes.size()},     {"per_example_random_streams", trainer_config.per_example_streams()}};
        out["training"] = summary.to_json();
        nlohmann::json results = nlohmann::json::array();
        for (const auto& [row_name, result] : rows) {
          auto r = result.to_json();
          r["model"] = row_name;
          results.push_back(r);
        }
        out["results"] = results;
        out["peak_memory_mib"] = examples::peak_memory_mib();
        out["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        io::write_file_atomic(json_path, out.dump(2) + "\n");
        std::cout << "wrote " << json_path << "\n";
      }
      return 0;
    });
  } catch (const std::exception& e) {
    return processes.fail(e);
  }
}
