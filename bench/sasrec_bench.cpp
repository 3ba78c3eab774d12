// sasrec_bench: SASRec training and inference speed (and the quality reached) on a real log,
// the C++ side of bench/compare_pytorch.py. Same protocol as bench/pytorch/sasrec_reference.py:
//   training   fixed number of epochs, no validation in between; seconds per epoch (median)
//   quality    valid and test, full ranking (history masked) and the legacy sampled-100 protocol
//              (candidates saved with --candidates-dir so the reference is judged on the same ones)
//   latency    one user's top-10 over all items from a 50-item history, one thread: p50/p90/mean
//              over --latency-users calls cycling through the users with >= 50 history items
//   throughput top-10 for every evaluable user (test histories), --threads threads, users/s,
//              median of 3 repeats
//   memory     peak resident memory after training
// Results are printed and, with --json, written in the reference script's JSON schema.
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <numeric>

using namespace distillrec;
using Clock = std::chrono::steady_clock;

namespace {

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const auto low = static_cast<std::size_t>(position);
  const auto high = std::min(low + 1, values.size() - 1);
  return values[low] + (position - static_cast<double>(low)) * (values[high] - values[low]);
}

nlohmann::json metrics_json(const eval::EvaluationResult& result) {
  nlohmann::json j = result.metrics;
  j["users"] = result.num_users;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SASRec speed and quality benchmark (C++ side of bench/compare_pytorch.py)"};
  std::string data_path, json_path, candidates_dir, block_style = "sasrec", objective = "bce";
  models::SASRecConfig model_config;
  train::TrainerConfig trainer_config;
  trainer_config.epochs = 20;
  trainer_config.eval_every = 0;
  int threads = 2;
  Index latency_users = 2000, serve_block = 128;
  bool no_speed = false;
  app.add_option("--data", data_path, "Interaction log (SASRec text format)")->required();
  app.add_option("--epochs", trainer_config.epochs, "Training epochs");
  app.add_option("--hidden", model_config.hidden_size, "Hidden size");
  app.add_option("--blocks", model_config.num_blocks, "Blocks");
  app.add_option("--heads", model_config.num_heads, "Heads");
  app.add_option("--max-length", model_config.max_length, "Max length");
  app.add_option("--dropout", model_config.dropout, "Dropout");
  app.add_option("--block-style", block_style, "sasrec, pre-ln or post-ln");
  app.add_option("--objective", objective, "bce, softmax or sampled-softmax");
  app.add_option("--batch-size", trainer_config.batch_size, "Batch size");
  app.add_option("--lr", trainer_config.adam.learning_rate, "Learning rate");
  app.add_option("--beta2", trainer_config.adam.beta2, "Adam beta2");
  app.add_option("--seed", trainer_config.seed, "Seed");
  app.add_option("--threads", threads, "Threads for training and batch inference");
  app.add_option("--latency-users", latency_users, "Single-user calls timed");
  app.add_option("--serve-block", serve_block, "Users per block in batch inference");
  app.add_option("--candidates-dir", candidates_dir, "Write the sampled-100 candidates (valid.npy, test.npy) here");
  app.add_flag("--no-speed", no_speed, "Skip latency and throughput");
  app.add_option("--json", json_path, "Write results as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    parallel::set_num_threads(threads);
    const auto log = data::read_log(data_path);
    const auto split = data::leave_one_out(log);
    model_config.num_items = split.num_items;
    model_config.block_style = models::parse_block_style(block_style);
    auto model = std::make_shared<models::SASRec<float>>(model_config);
    Rng init(trainer_config.seed);
    model->initialize(init);
    trainer_config.objective.objective = train::parse_objective(objective);
    train::Trainer<models::SASRec<float>> trainer(*model, split, trainer_config);
    const auto summary = trainer.fit();
    const double peak_after_training = peak_rss_mib();

    nlohmann::json metrics;
    for (auto which : {eval::EvalSplit::kValid, eval::EvalSplit::kTest}) {
      const auto full = eval::evaluate_full_ranking(*model, split, which);
      const auto candidates = eval::SampledCandidates::generate(split, which);
      if (!candidates_dir.empty()) {
        std::filesystem::create_directories(candidates_dir);
        candidates.save((std::filesystem::path(candidates_dir) / (eval::to_string(which) + ".npy")).string());
      }
      const auto sampled = eval::evaluate_sampled(*model, split, which, candidates);
      std::cout << full.summary() << "\n" << sampled.summary() << "\n";
      metrics[eval::to_string(which)] = {{"full", metrics_json(full)}, {"sampled-100", metrics_json(sampled)}};
    }

    nlohmann::json latency = nullptr;
    double users_per_second = 0.0;
    if (!no_speed) {
      serve::Recommender<models::SASRec<float>> recommender(model);
      std::vector<Sequence> long_histories, all_histories;
      for (Index user : split.evaluable_users) {
        Sequence h = split.test_history(user);
        if (static_cast<Index>(h.size()) >= model_config.max_length) {
          long_histories.emplace_back(h.end() - model_config.max_length, h.end());
        }
        all_histories.push_back(std::move(h));
      }
      if (long_histories.empty()) throw ConfigError("no user has a history of max_length items");
      Rng order(7);
      for (std::size_t i = long_histories.size(); i > 1; --i) {
        std::swap(long_histories[i - 1], long_histories[order.uniform_int(static_cast<std::uint64_t>(i))]);
      }
      parallel::set_num_threads(1);
      for (Index i = 0; i < 50; ++i) recommender.recommend(long_histories[static_cast<std::size_t>(i) % long_histories.size()]);
      std::vector<double> times;
      for (Index i = 0; i < latency_users; ++i) {
        const auto& h = long_histories[static_cast<std::size_t>(i) % long_histories.size()];
        const auto t0 = Clock::now();
        const auto top = recommender.recommend(h, {10, true});
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        if (top.size() != 10) throw Error("latency benchmark: fewer than 10 recommendations");
      }
      latency = {{"p50", percentile(times, 0.5)}, {"p90", percentile(times, 0.9)},
                 {"mean", std::accumulate(times.begin(), times.end(), 0.0) / static_cast<double>(times.size())},
                 {"users", latency_users}, {"distinct_users", long_histories.size()}, {"padded_users", 0}};
      parallel::set_num_threads(threads);
      recommender.recommend_batch(std::vector<Sequence>(all_histories.begin(), all_histories.begin() + 1000), {10, true}, serve_block);
      std::vector<double> rates;
      for (int repeat = 0; repeat < 3; ++repeat) {
        const auto t0 = Clock::now();
        const auto results = recommender.recommend_batch(all_histories, {10, true}, serve_block);
        rates.push_back(static_cast<double>(results.size()) / std::chrono::duration<double>(Clock::now() - t0).count());
      }
      users_per_second = percentile(rates, 0.5);
      std::printf("latency 1 user, 1 thread (%ld calls over %zu users with 50-item histories): p50 %.3f ms  p90 %.3f ms\n",
                  static_cast<long>(latency_users), long_histories.size(), latency["p50"].get<double>(),
                  latency["p90"].get<double>());
      std::printf("batch top-10, %d threads: %.0f users/s\n", threads, users_per_second);
    }
    std::printf("training: %.3f s per epoch (median of %zu), peak memory %.0f MiB\n", summary.median_epoch_seconds(),
                summary.epochs.size(), peak_after_training);

    if (!json_path.empty()) {
      nlohmann::json epochs = nlohmann::json::array();
      for (const auto& e : summary.epochs) epochs.push_back({{"epoch", e.epoch}, {"loss", e.loss}, {"seconds", e.seconds}});
      nlohmann::json out{{"implementation", "distillrec"},
                         {"gemm_backend", backend::kHasOneDnn ? "oneDNN" : "Eigen"},
                         {"threads", threads},
                         {"config", {{"model", model_config.to_json()}, {"epochs", trainer_config.epochs},
                                     {"batch_size", trainer_config.batch_size}, {"objective", objective},
                                     {"lr", trainer_config.adam.learning_rate}, {"beta2", trainer_config.adam.beta2},
                                     {"seed", trainer_config.seed}}},
                         {"epochs", epochs},
                         {"seconds_per_epoch_median", summary.median_epoch_seconds()},
                         {"metrics", metrics},
                         {"latency_ms", latency},
                         {"batch_users_per_second", users_per_second},
                         {"peak_rss_mib", peak_after_training}};
      io::write_file_atomic(json_path, out.dump(2) + "\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
