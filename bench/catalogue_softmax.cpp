// The full-catalogue softmax cross-entropy (loss/softmax_ce.hpp) and the GEMMs under it, timed
// side by side in one process (rounds interleave the variants; medians reported):
//   1. the three catalogue products of one block of rows, each in both operand layouts: with the
//      item table W [N, d] as stored and with it transposed to [d, N] (the loss uses the faster
//      layout of each; this table is why);
//   2. the whole loss (forward and backward, untied head with a bias) per call, and what that
//      comes to per epoch for a given number of training positions (the default, 182,242, is
//      amazon-games.txt's every-position GRU4Rec training set at window 50).
//
//   ./build/bench/catalogue_softmax [--items 23715] [--dim 64] [--rows 760] [--rounds 21]
#include "bench_support.hpp"

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/loss/softmax_ce.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <random>

using namespace distillrec;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

Matrix<float> random_matrix(Index rows, Index cols, std::mt19937& gen, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  Matrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Full-catalogue softmax cross-entropy: GEMM layouts and the whole loss, side by side"};
  Index items = 23715, dim = 64, rows = 760, block = 256, epoch_rows = 182242;
  int rounds = 21, threads = 2;
  std::string json_path;
  app.add_option("--items", items, "Catalogue size N")->check(CLI::PositiveNumber);
  app.add_option("--dim", dim, "Output width d")->check(CLI::PositiveNumber);
  app.add_option("--rows", rows, "Output vectors per loss call (a batch's positions)")->check(CLI::PositiveNumber);
  app.add_option("--block", block, "Rows per block (the loss's block_rows)")->check(CLI::PositiveNumber);
  app.add_option("--epoch-rows", epoch_rows, "Training positions per epoch, to state a call's cost per epoch")
      ->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "Rounds; every variant runs once per round")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "Threads")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Write the results as JSON");
  CLI11_PARSE(app, argc, argv);
  parallel::set_num_threads(threads);
  bench::print_machine();
  std::printf("catalogue %ld items, d %ld, %ld rows per call in blocks of %ld, %d threads, %d rounds\n", static_cast<long>(items),
              static_cast<long>(dim), static_cast<long>(rows), static_cast<long>(block), threads, rounds);

  std::mt19937 gen(7);
  const Matrix<float> w = random_matrix(items, dim, gen, 0.1f), w_t = w.transpose();
  const Matrix<float> bias = random_matrix(1, items, gen, 0.1f);
  const Matrix<float> h = random_matrix(rows, dim, gen, 1.0f);
  const Index b = std::min(block, rows);
  const Matrix<float> hb = h.topRows(b);
  Matrix<float> z = random_matrix(b, items, gen, 1e-4f), gh(b, dim), gw = Matrix<float>::Zero(items, dim),
                gw_t = Matrix<float>::Zero(dim, items);

  using backend::Trans;
  struct Variant {
    const char* name;
    std::function<void()> run;
    std::vector<double> seconds;
  };
  std::vector<Variant> gemms = {
      {"logits h W^T, W as stored [N, d]", [&] { backend::gemm(Trans::kNo, Trans::kYes, 1.0f, hb, w, 0.0f, z); }, {}},
      {"logits h W^T, W transposed [d, N]", [&] { backend::gemm(Trans::kNo, Trans::kNo, 1.0f, hb, w_t, 0.0f, z); }, {}},
      {"grad h = dz W, W as stored", [&] { backend::gemm(Trans::kNo, Trans::kNo, 1.0f, z, w, 0.0f, gh); }, {}},
      {"grad h = dz W, W transposed", [&] { backend::gemm(Trans::kNo, Trans::kYes, 1.0f, z, w_t, 0.0f, gh); }, {}},
      {"grad W += dz^T h, [N, d]", [&] { backend::gemm(Trans::kYes, Trans::kNo, 1.0f, z, hb, 1.0f, gw); }, {}},
      {"grad W^T += h^T dz, [d, N]", [&] { backend::gemm(Trans::kYes, Trans::kNo, 1.0f, hb, z, 1.0f, gw_t); }, {}},
  };

  std::vector<ItemId> targets(static_cast<std::size_t>(rows));
  for (auto& t : targets) t = static_cast<ItemId>(1 + gen() % static_cast<unsigned>(items));
  loss::CatalogueSoftmaxCrossEntropy<float> ce;
  ce.block_rows = block;
  loss::CatalogueSoftmaxCrossEntropy<float>::Workspace ws;
  Matrix<float> grad_h(rows, dim), grad_w = Matrix<float>::Zero(items, dim), grad_b = Matrix<float>::Zero(1, items);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(w.data(), items, dim), bias.data()};
  std::vector<double> loss_seconds;
  float last_loss = 0.0f;

  for (int round = 0; round < rounds + 1; ++round) {  // round 0 warms up and is not counted
    for (auto& v : gemms) {
      const auto start = std::chrono::steady_clock::now();
      v.run();
      if (round > 0) v.seconds.push_back(seconds_since(start));
    }
    const auto start = std::chrono::steady_clock::now();
    last_loss = ce(h, head, targets, grad_h, nn::HeadGradients<float>{MatrixMap<float>(grad_w.data(), items, dim), grad_b.data()}, ws);
    if (round > 0) loss_seconds.push_back(seconds_since(start));
  }

  const double block_flop = 2.0 * static_cast<double>(b) * static_cast<double>(items) * static_cast<double>(dim);
  nlohmann::json out{{"machine", bench::machine_json()}, {"items", items}, {"dim", dim}, {"rows", rows}, {"block", block},
                     {"threads", threads}, {"rounds", rounds}};
  std::printf("\none block of %ld rows (median of %d):\n", static_cast<long>(b), rounds);
  for (const auto& v : gemms) {
    const double s = bench::percentile(v.seconds, 0.5);
    std::printf("  %-36s %8.3f ms  %6.1f GFLOP/s\n", v.name, s * 1e3, block_flop / s / 1e9);
    out["gemm"].push_back({{"name", v.name}, {"ms", s * 1e3}, {"gflops", block_flop / s / 1e9}});
  }
  const double call = bench::percentile(loss_seconds, 0.5);
  const double call_flop = 3.0 * block_flop / static_cast<double>(b) * static_cast<double>(rows);
  const double per_epoch = call / static_cast<double>(rows) * static_cast<double>(epoch_rows);
  std::printf("\nthe loss, forward and backward (untied head with a bias), %ld rows: %.2f ms per call (median), "
              "%.1f GFLOP/s counting its three products; %.2f s per %ld training positions (loss %.4f)\n",
              static_cast<long>(rows), call * 1e3, call_flop / call / 1e9, per_epoch, static_cast<long>(epoch_rows),
              static_cast<double>(last_loss));
  out["loss"] = {{"ms_per_call", call * 1e3}, {"gflops", call_flop / call / 1e9}, {"epoch_rows", epoch_rows},
                 {"seconds_per_epoch_rows", per_epoch}};
  if (!json_path.empty()) {
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}
