// llm_rec_latency: inference time per user of LLMRec checkpoints (e.g. a deep teacher and a
// shallow student), measured side by side in one run, one thread:
//   vector   the user's representation (the model's forward pass at the newest item)
//   top-10   the vector, scores for the whole catalogue, history masked, top-10
// The models take turns on every user (interleaved), so both see the same machine state; each
// figure is the median over --repeats passes of --users users' test histories, after a warm-up
// pass. Prints a table and the ratios against the first checkpoint.
//
//   llm_rec_latency --data ../shared/data/amazon-games.txt teacher.safetensors student.safetensors
#include "distillrec/backend/parallel.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/serve/recommender.hpp"

#include "bench_support.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

using namespace distillrec;
using Model = models::LLMRec<float>;
using Clock = std::chrono::steady_clock;

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Inference time per user of LLMRec checkpoints, side by side, one thread."};
  std::string data_path;
  std::vector<std::string> checkpoints;
  Index users = 1000;
  int repeats = 3;
  app.add_option("--data", data_path, "Interaction log the models were trained on")->required();
  app.add_option("--users", users, "Users timed (their test histories)");
  app.add_option("--repeats", repeats, "Timed passes over the users");
  app.add_option("checkpoints", checkpoints, "LLMRec checkpoints (the first is the reference of the ratios)")->required();
  CLI11_PARSE(app, argc, argv);
  bench::print_machine();
  try {
    parallel::set_num_threads(1);
    const auto split = data::leave_one_out(data::read_log(data_path));
    std::vector<Sequence> histories;
    for (Index u : split.evaluable_users) {
      if (static_cast<Index>(histories.size()) >= users) break;
      histories.push_back(split.test_history(u));
    }
    std::vector<std::shared_ptr<const Model>> models;
    for (const auto& path : checkpoints) models.push_back(std::make_shared<const Model>(io::load_checkpoint<Model>(path)));
    std::vector<std::unique_ptr<serve::Recommender<Model>>> recommenders;
    std::vector<Model::Workspace> workspaces(models.size());
    for (const auto& m : models) recommenders.push_back(std::make_unique<serve::Recommender<Model>>(m));
    const std::size_t n = models.size();
    std::vector<std::vector<double>> vector_ms(n), top10_ms(n);
    Matrix<float> u;
    for (int pass = 0; pass <= repeats; ++pass) {
      for (const auto& h : histories) {
        for (std::size_t m = 0; m < n; ++m) {
          u.resize(1, models[m]->item_dim());
          auto start = Clock::now();
          models[m]->encode({h}, u, workspaces[m]);
          const double v = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          start = Clock::now();
          const auto top = recommenders[m]->recommend(h, {10, true});
          const double t = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          if (pass > 0 && top.size() == 10) {
            vector_ms[m].push_back(v);
            top10_ms[m].push_back(t);
          }
        }
      }
    }
    std::printf("one user, 1 thread, median over %d x %zu users (test histories of %s)\n", repeats, histories.size(),
                data_path.c_str());
    std::printf("%-60s %7s %12s %12s %10s %10s\n", "checkpoint", "layers", "vector ms", "top-10 ms", "vector x", "top-10 x");
    for (std::size_t m = 0; m < n; ++m) {
      const double v = median(vector_ms[m]), t = median(top10_ms[m]);
      std::printf("%-60s %7ld %12.4f %12.4f %10.2f %10.2f\n", checkpoints[m].c_str(), static_cast<long>(models[m]->num_layers()), v, t,
                  median(vector_ms[0]) / v, median(top10_ms[0]) / t);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
