// dllm2rec_overhead: what DLLM2Rec's ranking distillation adds to a student's seconds per epoch,
// measured side by side in one process so that a noisy, shared machine affects every
// configuration alike.
//
// For each student (SASRec, GRU4Rec) one trainer per configuration is built on the same data
// and the same teacher rankings:
//   plain            the student alone (BCE, one sampled negative)
//   ranking (γ_o 0)  + ranking distillation, the library's default weights without the
//                    consistency weight
//   ranking (γ_o x)  + ranking distillation with the consistency weight on (--gamma-consistency,
//                    the reference's 0.1: the student's own top-K over the whole catalogue at
//                    every step; 0 leaves this configuration out)
// After one untimed warm-up epoch each, the trainers take turns, one epoch at a time, for
// --rounds rounds (the order rotates every round). Printed per configuration: the median epoch
// time, its ratio to plain's median, and the median of the per-round ratios.
//
//   dllm2rec_overhead --data ../shared/data/amazon-games.txt --rounds 5 --json out.json
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/trainer.hpp"

#include "bench_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace distillrec;

namespace {

struct Options {
  std::string data_path, json_path, students = "sasrec,gru4rec";
  Index hidden = 64, max_length = 50, teacher_epochs = 1, rounds = 5;
  double gamma_consistency = 0.1;
  int threads = 2;
  std::uint64_t seed = 1;
};

struct Measured {
  std::string name;
  std::vector<double> seconds;
};

template <typename Model>
nlohmann::json measure(const std::string& student, const typename Model::Config& config, const data::ExampleSplit& split,
                       const std::shared_ptr<const distill::RankingSignals>& signals, const Options& o) {
  train::TrainerConfig training;
  training.objective.objective = train::Objective::kBce;
  training.adam.learning_rate = 1e-3;
  training.seed = o.seed;
  training.epochs = o.rounds + 1;
  training.log = nullptr;

  distill::RankingDistillationConfig without_consistency;  // the library's defaults, γ_o = 0
  without_consistency.weights.gamma_consistency = 0.0;
  distill::RankingDistillationConfig with_consistency;
  with_consistency.weights.gamma_consistency = o.gamma_consistency;
  with_consistency.validate();

  struct Run {
    std::string name;
    std::unique_ptr<Model> model;
    std::unique_ptr<train::Trainer<Model>> trainer;
    std::vector<double> seconds;
  };
  std::vector<Run> runs;
  auto add = [&](const std::string& name, const distill::RankingDistillationConfig* rd) {
    Run run;
    run.name = name;
    run.model = std::make_unique<Model>(config);
    Rng rng(o.seed + 1000);
    run.model->initialize(rng);
    run.trainer = std::make_unique<train::Trainer<Model>>(*run.model, split, training);
    if (rd) run.trainer->add_term(std::make_shared<distill::RankingDistillation<Model>>(signals, split, *rd));
    runs.push_back(std::move(run));
  };
  add("plain", nullptr);
  add("ranking (γ_o 0)", &without_consistency);
  if (o.gamma_consistency > 0) add(detail::concat("ranking (γ_o ", o.gamma_consistency, ")"), &with_consistency);

  train::ProgressPrinter quiet(nullptr);
  for (auto& run : runs) run.trainer->train_epoch(1, quiet);  // warm-up: workspaces, page faults
  const std::size_t n = runs.size();
  for (Index round = 0; round < o.rounds; ++round) {
    for (std::size_t i = 0; i < n; ++i) {
      auto& run = runs[(i + static_cast<std::size_t>(round)) % n];
      const auto record = run.trainer->train_epoch(round + 2, quiet);
      run.seconds.push_back(record.seconds);
    }
    std::printf("  %s round %ld/%ld:", student.c_str(), static_cast<long>(round + 1), static_cast<long>(o.rounds));
    for (const auto& run : runs) std::printf("  %s %.3f s", run.name.c_str(), run.seconds.back());
    std::printf("\n");
    std::fflush(stdout);
  }

  nlohmann::json out = nlohmann::json::array();
  const double plain = bench::percentile(runs[0].seconds, 0.5);
  for (const auto& run : runs) {
    std::vector<double> ratios;
    for (std::size_t r = 0; r < run.seconds.size(); ++r) ratios.push_back(run.seconds[r] / runs[0].seconds[r]);
    const double median = bench::percentile(run.seconds, 0.5);
    std::printf("%-8s %-20s median %.3f s/epoch (min %.3f, max %.3f)   x%.2f of plain (median of per-round ratios x%.2f)\n", student.c_str(),
                run.name.c_str(), median, *std::min_element(run.seconds.begin(), run.seconds.end()),
                *std::max_element(run.seconds.begin(), run.seconds.end()), median / plain, bench::percentile(ratios, 0.5));
    out.push_back({{"student", student},
                   {"configuration", run.name},
                   {"seconds_per_epoch", run.seconds},
                   {"median_seconds", median},
                   {"ratio_of_medians", median / plain},
                   {"median_round_ratio", bench::percentile(ratios, 0.5)}});
  }
  std::fflush(stdout);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DLLM2Rec ranking distillation's cost per epoch, side by side with the plain student"};
  Options o;
  app.add_option("--data", o.data_path, "Interaction log (SASRec text or CSV)")->required();
  app.add_option("--students", o.students, "Comma-separated: sasrec, gru4rec");
  app.add_option("--hidden", o.hidden, "Students' hidden size");
  app.add_option("--max-length", o.max_length, "Longest history");
  app.add_option("--teacher-epochs", o.teacher_epochs, "Epochs of the SASRec teacher whose top-10 lists are distilled (quality does not matter here)");
  app.add_option("--rounds", o.rounds, "Timed epochs per configuration (after one warm-up epoch)")->check(CLI::PositiveNumber);
  app.add_option("--gamma-consistency", o.gamma_consistency, "γ_o of the extra configuration with the consistency weight on (the reference's 0.1)");
  app.add_option("--threads", o.threads, "Threads");
  app.add_option("--seed", o.seed, "Seed");
  app.add_option("--json", o.json_path, "Write every epoch time and the ratios here");
  CLI11_PARSE(app, argc, argv);
  try {
    parallel::set_num_threads(o.threads);
    bench::print_machine();
    const auto log = data::read_log(o.data_path);
    const data::ExampleSplit split(data::leave_one_out(log));
    std::printf("data: %s: %ld users, %ld items, %zu training examples; %d threads\n", o.data_path.c_str(), static_cast<long>(log.num_users()),
                static_cast<long>(split.num_items), split.train.size(), o.threads);

    models::SASRecConfig teacher_config;
    teacher_config.num_items = split.num_items;
    teacher_config.hidden_size = 64;
    teacher_config.max_length = o.max_length;
    models::SASRec<float> teacher(teacher_config);
    Rng rng(o.seed);
    teacher.initialize(rng);
    if (o.teacher_epochs > 0) {
      train::TrainerConfig tc;
      tc.objective.objective = train::Objective::kSoftmax;
      tc.epochs = o.teacher_epochs;
      tc.eval_every = 0;
      tc.log = nullptr;
      train::Trainer<models::SASRec<float>>(teacher, split, tc).fit();
    }
    distill::RankingDistillationConfig defaults;
    auto signals = std::make_shared<const distill::RankingSignals>(
        distill::compute_ranking_signals(teacher, split, defaults.candidates, data::Part::kTrain, false));

    nlohmann::json results = nlohmann::json::array();
    std::stringstream list(o.students);
    std::string student;
    while (std::getline(list, student, ',')) {
      if (student == "sasrec") {
        models::SASRecConfig c;
        c.num_items = split.num_items;
        c.hidden_size = o.hidden;
        c.max_length = o.max_length;
        c.dropout = 0.1;  // the students of distill_dllm2rec
        c.head = nn::HeadKind::kUntied;  // DLLM2Rec's SASRec
        for (auto& r : measure<models::SASRec<float>>("SASRec", c, split, signals, o)) results.push_back(r);
      } else if (student == "gru4rec") {
        models::GRU4RecConfig c;
        c.num_items = split.num_items;
        c.embedding_dim = o.hidden;
        c.hidden_size = o.hidden;
        c.max_length = o.max_length;
        c.dropout = 0.1;
        c.head = nn::HeadKind::kUntied;
        for (auto& r : measure<models::GRU4Rec<float>>("GRU4Rec", c, split, signals, o)) results.push_back(r);
      } else {
        throw ConfigError("--students: unknown student \"" + student + "\" (sasrec, gru4rec)");
      }
    }
    std::printf("peak memory %.0f MiB\n", bench::peak_rss_mib());
    if (!o.json_path.empty()) {
      nlohmann::json j{{"machine", bench::machine_json()}, {"data", o.data_path}, {"threads", o.threads}, {"rounds", o.rounds}, {"results", results}};
      io::write_file_atomic(o.json_path, j.dump(2) + "\n");
    }
  } catch (const std::exception& e) {
    std::cerr << "dllm2rec_overhead: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
