// Shared helpers of the example programs: data loading (a real log or the built-in synthetic
// data), result tables, inference latency, peak memory. Examples are programs a user copies from, so these stay
// small and plain.
#pragma once

#include "distillrec/data/examples.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/metrics.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#ifdef DISTILLREC_WITH_MPI
#include "distillrec/mpi/mpi.hpp"
#endif

#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace examples {

/// How a training program runs: as one process, or, when it was built with distillrec::mpi and
/// started by an MPI launcher (mpirun, srun), as one of the processes of data-parallel training.
/// Then rank 0 alone prints (the others' standard output goes to /dev/null; errors still reach
/// standard error) and writes files, and a failure ends every process of the job.
class Processes {
 public:
  Processes(int& argc, char**& argv) {
#ifdef DISTILLREC_WITH_MPI
    if (distillrec::mpi::launched_by_mpi()) {
      env_.emplace(argc, argv);
      world_ = std::make_shared<distillrec::mpi::Communicator>();
      if (world_->rank() != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) std::cerr << "rank " << world_->rank() << ": cannot silence stdout\n";
    }
#else
    (void)argc;
    (void)argv;
#endif
  }

  /// The trainer's collective (TrainerConfig::collective): nullptr for one process.
  std::shared_ptr<distillrec::Collective> collective() const {
#ifdef DISTILLREC_WITH_MPI
    return world_;
#else
    return nullptr;
#endif
  }
  int rank() const { return collective() ? collective()->rank() : 0; }
  int size() const { return collective() ? collective()->size() : 1; }
  /// Whether this process prints and writes files.
  bool is_root() const { return rank() == 0; }
  /// Waits for every process (e.g. until rank 0 has written a file the others read).
  void barrier() const {
#ifdef DISTILLREC_WITH_MPI
    if (world_) world_->barrier();
#endif
  }

  /// Reports a failure; in a job of several processes ends all of them (none waits forever).
  int fail(const std::exception& e) const {
    if (size() > 1) {
      std::cerr << "error (rank " << rank() << " of " << size() << "): " << e.what() << std::endl;
#ifdef DISTILLREC_WITH_MPI
      world_->abort_all(1);
#endif
    }
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }

 private:
#ifdef DISTILLREC_WITH_MPI
  std::optional<distillrec::mpi::Environment> env_;
  std::shared_ptr<distillrec::mpi::Communicator> world_;
#endif
};

/// A real log when a path is given (SASRec text or CSV by extension), else the synthetic data.
inline distillrec::data::InteractionLog load_data(const std::string& path, const std::string& format,
                                                  const distillrec::data::SyntheticConfig& synthetic) {
  using distillrec::data::LogFormat;
  if (path.empty()) return distillrec::data::generate_synthetic(synthetic);
  LogFormat f = LogFormat::kAuto;
  if (format == "text") f = LogFormat::kSasrecText;
  if (format == "csv") f = LogFormat::kCsv;
  return distillrec::data::read_log(path, f);
}

/// The example sets a program trains and evaluates on: "leave-one-out" (SASRec's protocol: one
/// training example per user, every position predicts), "every-prefix" (the same validation and
/// test, one training example per prefix, the newest position predicts: DLLM2Rec's layout) or
/// "temporal" (DLLM2Rec's global 80/10/10 split by time).
inline distillrec::data::ExampleSplit make_split(const distillrec::data::InteractionLog& log, const std::string& protocol) {
  if (protocol == "leave-one-out") return distillrec::data::ExampleSplit(distillrec::data::leave_one_out(log));
  if (protocol == "every-prefix") return distillrec::data::every_prefix(log);
  if (protocol == "temporal") return distillrec::data::temporal_split(log);
  throw distillrec::ConfigError("unknown split \"" + protocol + "\" (expected leave-one-out, every-prefix or temporal)");
}

/// "a,b,,c" -> {"a", "b", "c"}: a comma-separated flag value, empty entries dropped.
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::string item;
  for (char c : text + ",") {
    if (c != ',') {
      item += c;
    } else if (!item.empty()) {
      out.push_back(std::move(item));
      item.clear();
    }
  }
  return out;
}

/// Median of a list (0 for an empty one).
inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

/// Median single-thread time in milliseconds of one user's top-10 over the whole catalogue (the
/// history excluded), over `histories`; a first pass warms caches and workspaces. Runs on one
/// thread and sets `threads` again afterwards.
template <typename Model>
double top10_ms(const Model& model, const std::vector<distillrec::Sequence>& histories, int threads) {
  distillrec::parallel::set_num_threads(1);
  distillrec::serve::Recommender<Model> recommender(std::shared_ptr<const Model>(&model, [](const Model*) {}));
  std::vector<double> times;
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& h : histories) {
      const auto start = std::chrono::steady_clock::now();
      const auto items = recommender.recommend(h, {10, true});
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (pass == 1 && !items.empty()) times.push_back(t);
    }
  }
  distillrec::parallel::set_num_threads(threads);
  return median(times);
}

/// One model's results in an example program's table and JSON: trained (its best validation
/// epoch, history and median seconds per epoch) or loaded (seconds_per_epoch 0), tested once.
struct RunResult {
  std::string name;
  std::uint64_t seed = 0;
  distillrec::Index layers = 0;  // 0: not reported
  distillrec::Index parameters = 0;
  double seconds_per_epoch = 0.0;  // 0: not trained here
  double top10_ms = 0.0;           // one user's top-10 over the catalogue, 1 thread, median
  distillrec::Index best_epoch = 0;
  double validation = 0.0;  // NDCG@10 on the validation split
  distillrec::eval::EvaluationResult test;
  nlohmann::json history = nlohmann::json::array();  // every epoch: loss, terms, validation

  nlohmann::json to_json() const {
    nlohmann::json j{{"name", name},         {"seed", seed},           {"parameters", parameters}, {"seconds_per_epoch", seconds_per_epoch},
                     {"top10_ms_per_user", top10_ms}, {"best_epoch", best_epoch}, {"validation_ndcg10", validation},
                     {"test", test.to_json()}, {"history", history}};
    if (layers > 0) j["layers"] = layers;
    return j;
  }
};

/// Tests `model` once on the test split, times its top-10 and prints one line. `summary`: its
/// training (nullptr: a model loaded, not trained here; its validation NDCG@10 is computed).
/// With a collective (under mpirun) each process ranks a share of the examples.
template <typename Model>
RunResult test_run(const Model& model, const std::string& name, std::uint64_t seed, const distillrec::train::TrainingSummary* summary,
                   const distillrec::data::ExampleSplit& split, const std::vector<distillrec::Sequence>& latency_histories, int threads,
                   distillrec::Index layers = 0, distillrec::Collective* collective = nullptr) {
  using namespace distillrec;
  eval::FullRankingOptions full;
  full.collective = collective;
  RunResult run;
  run.name = name;
  run.seed = seed;
  run.layers = layers;
  run.parameters = model.parameters().num_scalars();
  if (summary != nullptr) {
    run.seconds_per_epoch = summary->median_epoch_seconds();
    run.best_epoch = summary->best_epoch;
    run.validation = summary->best_score;
    run.history = summary->to_json()["epochs"];
  } else {
    run.validation = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid, full).value("NDCG@10");
  }
  run.test = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, full);
  run.top10_ms = top10_ms(model, latency_histories, threads);
  char training[64] = "not trained here";
  if (summary != nullptr) std::snprintf(training, sizeof(training), "best epoch %ld; %.2f s/epoch", static_cast<long>(run.best_epoch), run.seconds_per_epoch);
  std::printf("%s (seed %lu): valid NDCG@10 %.4f; test [%s] HR@10 %.4f NDCG@10 %.4f MRR %.4f; %s; %.3f ms/user (top-10)\n", name.c_str(),
              static_cast<unsigned long>(seed), run.validation, run.test.protocol.c_str(), run.test.value("HR@10"), run.test.value("NDCG@10"),
              run.test.value("MRR"), training, run.top10_ms);
  std::fflush(stdout);
  return run;
}

/// Mean and sample standard deviation over seeds.
struct Stats {
  double mean = 0.0, std = 0.0;
};

inline Stats stats(const std::vector<double>& v) {
  Stats s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    for (double x : v) s.std += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(s.std / static_cast<double>(v.size() - 1));
  }
  return s;
}

/// "mean ± std" with a printf format for each.
inline std::string fmt(const Stats& s, const char* f) {
  char a[64], b[64];
  std::snprintf(a, sizeof(a), f, s.mean);
  std::snprintf(b, sizeof(b), f, s.std);
  return std::string(a) + " ± " + b;
}

/// Peak resident memory of this process so far, in MiB (Linux ru_maxrss is in KiB).
inline double peak_memory_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

/// Prints evaluation results as a table, one row per result, the protocol named in each row.
inline void print_results(const std::vector<std::pair<std::string, distillrec::eval::EvaluationResult>>& rows,
                          const std::vector<std::string>& metrics = {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"}) {
  std::printf("%-22s %-6s %-12s %7s", "model", "split", "protocol", "users");
  for (const auto& m : metrics) std::printf(" %8s", m.c_str());
  std::printf("\n");
  for (const auto& [name, result] : rows) {
    std::printf("%-22s %-6s %-12s %7ld", name.c_str(), result.split.c_str(), result.protocol.c_str(),
                static_cast<long>(result.num_users));
    for (const auto& m : metrics) {
      const auto it = result.metrics.find(m);
      if (it == result.metrics.end()) {
        std::printf(" %8s", "-");
      } else {
        std::printf(" %8.4f", it->second);
      }
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

}  // namespace examples
