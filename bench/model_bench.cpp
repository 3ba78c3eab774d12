// model_bench: training and inference speed (and the quality reached) of SASRec or GRU4Rec on a
// real log, the C++ side of bench/compare_pytorch.py. Same protocol as the PyTorch references
// (bench/pytorch/sasrec_reference.py, bench/pytorch/gru4rec_reference.py):
//   training   fixed number of epochs, no validation in between; seconds per epoch (median)
//   quality    valid and test, full ranking (history masked) and the legacy sampled-100 protocol
//              (candidates saved with --candidates-dir so the reference is judged on the same ones)
//   latency    one user's top-10 over all items from a 50-item history, one thread: p50/p90/mean
//              over --latency-users calls cycling through the users with >= 50 history items
//   throughput top-10 for every evaluable user (test histories), --threads threads, users/s,
//              median of 3 repeats
//   memory     peak resident memory after training
// Results are printed and, with --json, written in the reference scripts' JSON schema, with the
// CPU model and the instruction set the kernels were compiled for.
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#include "bench_support.hpp"

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

nlohmann::json metrics_json(const eval::EvaluationResult& result) {
  nlohmann::json j = result.metrics;
  j["users"] = result.num_users;
  return j;
}

struct Options {
  std::string data_path, json_path, candidates_dir, objective = "bce";
  train::TrainerConfig trainer;
  int threads = 2;
  Index latency_users = 2000, serve_block = 128;
  bool no_speed = false;
};

template <typename Model>
int run(const typename Model::Config& base_config, const Options& o) {
  typename Model::Config model_config = base_config;
  train::TrainerConfig trainer_config = o.trainer;
  const int threads = o.threads;
  parallel::set_num_threads(threads);
  bench::print_machine();
  const auto log = data::read_log(o.data_path);
  const auto split = data::leave_one_out(log);
  model_config.num_items = split.num_items;
  auto model = std::make_shared<Model>(model_config);
  Rng init(trainer_config.seed);
  model->initialize(init);
  trainer_config.objective.objective = train::parse_objective(o.objective);
  train::Trainer<Model> trainer(*model, split, trainer_config);
  const auto summary = trainer.fit();
  const double peak_after_training = bench::peak_rss_mib();

  nlohmann::json metrics;
  for (auto which : {eval::EvalSplit::kValid, eval::EvalSplit::kTest}) {
    const auto full = eval::evaluate_full_ranking(*model, split, which);
    const auto candidates = eval::SampledCandidates::generate(split, which);
    if (!o.candidates_dir.empty()) {
      std::filesystem::create_directories(o.candidates_dir);
      candidates.save((std::filesystem::path(o.candidates_dir) / (eval::to_string(which) + ".npy")).string());
    }
    const auto sampled = eval::evaluate_sampled(*model, split, which, candidates);
    std::cout << full.summary() << "\n" << sampled.summary() << "\n";
    metrics[eval::to_string(which)] = {{"full", metrics_json(full)}, {"sampled-100", metrics_json(sampled)}};
  }

  nlohmann::json latency = nullptr;
  double users_per_second = 0.0;
  if (!o.no_speed) {
    serve::Recommender<Model> recommender(model);
    std::vector<Sequence> long_histories, all_histories;
    const Index max_length = model->max_length();
    for (Index user : split.evaluable_users) {
      Sequence h = split.test_history(user);
      if (static_cast<Index>(h.size()) >= max_length) long_histories.emplace_back(h.end() - max_length, h.end());
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
    std::vector<serve::ScoredItem> top;
    for (Index i = 0; i < o.latency_users; ++i) {
      const auto& h = long_histories[static_cast<std::size_t>(i) % long_histories.size()];
      const auto t0 = Clock::now();
      recommender.recommend(h, {10, true}, top);
      times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      if (top.size() != 10) throw Error("latency benchmark: fewer than 10 recommendations");
    }
    latency = {{"p50", bench::percentile(times, 0.5)}, {"p90", bench::percentile(times, 0.9)},
               {"mean", std::accumulate(times.begin(), times.end(), 0.0) / static_cast<double>(times.size())},
               {"users", o.latency_users}, {"distinct_users", long_histories.size()}, {"padded_users", 0}};
    parallel::set_num_threads(threads);
    recommender.recommend_batch(std::vector<Sequence>(all_histories.begin(), all_histories.begin() + std::min<std::size_t>(1000, all_histories.size())),
                                {10, true}, o.serve_block);
    std::vector<double> rates;
    for (int repeat = 0; repeat < 3; ++repeat) {
      const auto t0 = Clock::now();
      const auto results = recommender.recommend_batch(all_histories, {10, true}, o.serve_block);
      rates.push_back(static_cast<double>(results.size()) / std::chrono::duration<double>(Clock::now() - t0).count());
    }
    users_per_second = bench::percentile(rates, 0.5);
    std::printf("latency 1 user, 1 thread (%ld calls over %zu users with %ld-item histories): p50 %.3f ms  p90 %.3f ms\n",
                static_cast<long>(o.latency_users), long_histories.size(), static_cast<long>(max_length),
                latency["p50"].get<double>(), latency["p90"].get<double>());
    std::printf("batch top-10, %d threads: %.0f users/s\n", threads, users_per_second);
  }
  std::printf("training: %.3f s per epoch (median of %zu), peak memory %.0f MiB\n", summary.median_epoch_seconds(),
              summary.epochs.size(), peak_after_training);

  if (!o.json_path.empty()) {
    nlohmann::json epochs = nlohmann::json::array();
    for (const auto& e : summary.epochs) epochs.push_back({{"epoch", e.epoch}, {"loss", e.loss}, {"seconds", e.seconds}});
    nlohmann::json out{{"implementation", "distillrec"},
                       {"machine", bench::machine_json()},
                       {"gemm_backend", backend::kHasOneDnn ? "oneDNN" : "Eigen"},
                       {"threads", threads},
                       {"config", {{"model", model_config.to_json()}, {"epochs", trainer_config.epochs},
                                   {"batch_size", trainer_config.batch_size}, {"objective", o.objective},
                                   {"lr", trainer_config.adam.learning_rate}, {"beta2", trainer_config.adam.beta2}, {"lazy_adam_rows", trainer_config.adam.lazy_rows},
                                   {"seed", trainer_config.seed}}},
                       {"epochs", epochs},
                       {"seconds_per_epoch_median", summary.median_epoch_seconds()},
                       {"metrics", metrics},
                       {"latency_ms", latency},
                       {"batch_users_per_second", users_per_second},
                       {"peak_rss_mib", peak_after_training}};
    io::write_file_atomic(o.json_path, out.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SASRec / GRU4Rec speed and quality benchmark (C++ side of bench/compare_pytorch.py)"};
  Options o;
  std::string model = "sasrec", block_style = "sasrec", head = "untied";
  models::SASRecConfig sasrec;
  models::GRU4RecConfig gru4rec;
  Index hidden = 0, layers = 0, max_length = 50;
  double dropout = -1.0;
  o.trainer.epochs = 20;
  o.trainer.eval_every = 0;
  app.add_option("--model", model, "sasrec or gru4rec")->check(CLI::IsMember({"sasrec", "gru4rec"}));
  app.add_option("--data", o.data_path, "Interaction log (SASRec text format)")->required();
  app.add_option("--epochs", o.trainer.epochs, "Training epochs");
  app.add_option("--hidden", hidden, "Hidden size (default: SASRec 50, GRU4Rec 64)");
  app.add_option("--blocks,--layers", layers, "SASRec blocks / GRU4Rec layers");
  app.add_option("--heads", sasrec.num_heads, "SASRec heads");
  app.add_option("--embedding-dim", gru4rec.embedding_dim, "GRU4Rec item table width");
  app.add_option("--head", head, "GRU4Rec head: untied or tied")->check(CLI::IsMember({"tied", "untied"}));
  app.add_option("--max-length", max_length, "Max length");
  app.add_option("--dropout", dropout, "Dropout (default: SASRec 0.5, GRU4Rec 0.1)");
  app.add_option("--block-style", block_style, "SASRec: sasrec, pre-ln or post-ln");
  app.add_option("--objective", o.objective, "bce, softmax or sampled-softmax");
  app.add_option("--negatives", o.trainer.num_negatives, "bce: negatives per position");
  app.add_option("--batch-size", o.trainer.batch_size, "Batch size");
  app.add_option("--lr", o.trainer.adam.learning_rate, "Learning rate");
  app.add_option("--beta2", o.trainer.adam.beta2, "Adam beta2");
  app.add_option("--lazy-adam-rows", o.trainer.adam.lazy_rows, "Adam updates only the touched rows of tensors this tall (0: dense)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", o.trainer.seed, "Seed");
  app.add_option("--threads", o.threads, "Threads for training and batch inference");
  app.add_option("--latency-users", o.latency_users, "Single-user calls timed");
  app.add_option("--serve-block", o.serve_block, "Users per block in batch inference");
  app.add_option("--candidates-dir", o.candidates_dir, "Write the sampled-100 candidates (valid.npy, test.npy) here");
  app.add_flag("--no-speed", o.no_speed, "Skip latency and throughput");
  app.add_option("--json", o.json_path, "Write results as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    if (model == "sasrec") {
      if (hidden > 0) sasrec.hidden_size = hidden;
      if (layers > 0) sasrec.num_blocks = layers;
      if (dropout >= 0.0) sasrec.dropout = dropout;
      sasrec.max_length = max_length;
      sasrec.block_style = models::parse_block_style(block_style);
      return run<models::SASRec<float>>(sasrec, o);
    }
    if (hidden > 0) gru4rec.hidden_size = hidden;
    if (app.count("--embedding-dim") == 0) gru4rec.embedding_dim = gru4rec.hidden_size;
    if (layers > 0) gru4rec.num_layers = layers;
    if (dropout >= 0.0) gru4rec.dropout = dropout;
    gru4rec.max_length = max_length;
    gru4rec.head = nn::parse_head_kind(head);
    return run<models::GRU4Rec<float>>(gru4rec, o);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
