// The full-catalogue softmax cross-entropy (loss/softmax_ce.hpp) and the GEMMs under it, timed
// side by side in one process (rounds interleave the variants; medians reported):
//   1. the three catalogue products of one block of rows, each in both operand layouts: with the
//      item table W [N, d] as stored and with it transposed to [d, N] (the loss keeps the table
//      transposed: faster for the logits and the table's gradient, alike for grad h). The
//      gradient products accumulate (beta 1) here; the loss's first block overwrites (beta 0);
//   2. the machine's fp32 FMA peak on the same threads (independent multiply-add chains in
//      registers, the widest vectors the kernels were compiled for), to state each rate as a
//      fraction of it;
//   3. the whole loss (forward and backward, untied head with a bias) per call for each block
//      height given, and what that comes to per epoch for a given number of training positions
//      (the default, 182,242, is amazon-games.txt's every-position GRU4Rec training set at
//      window 50).
//
//   ./build/bench/catalogue_softmax [--items 23715] [--dim 64] [--rows 760] [--blocks 64,128,256]
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

/// fp32 GFLOP/s of independent fused multiply-adds in registers on `threads` threads (best of 5).
double fma_peak_gflops(int threads) {
  using B = xsimd::batch<float>;
  constexpr int kChains = 10;  // more independent chains than FMA latency x pipes on current cores
  const long iterations = 50'000'000;
  double best = 0.0;
  for (int repeat = 0; repeat < 5; ++repeat) {
    std::vector<float> sink(static_cast<std::size_t>(threads), 0.0f);
    const auto start = std::chrono::steady_clock::now();
    parallel::for_each(threads, threads > 1, [&](long t, int) {
      // Ten named accumulators (an array may be kept in memory, which would measure the stack).
      const float seed = 1.0f + 0.001f * static_cast<float>(t);
      B a0(seed), a1(seed), a2(seed), a3(seed), a4(seed), a5(seed), a6(seed), a7(seed), a8(seed), a9(seed);
      const B m(0.999999f), a(1e-7f);
      for (long i = 0; i < iterations; ++i) {
        a0 = xsimd::fma(a0, m, a);
        a1 = xsimd::fma(a1, m, a);
        a2 = xsimd::fma(a2, m, a);
        a3 = xsimd::fma(a3, m, a);
        a4 = xsimd::fma(a4, m, a);
        a5 = xsimd::fma(a5, m, a);
        a6 = xsimd::fma(a6, m, a);
        a7 = xsimd::fma(a7, m, a);
        a8 = xsimd::fma(a8, m, a);
        a9 = xsimd::fma(a9, m, a);
      }
      const B total = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + (a8 + a9);
      sink[static_cast<std::size_t>(t)] = xsimd::hadd(total);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double flop = 2.0 * static_cast<double>(B::size) * kChains * static_cast<double>(iterations) * threads;
    if (sink[0] > 0.0f) best = std::max(best, flop / seconds / 1e9);
  }
  return best;
}

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
  Index items = 23715, dim = 64, rows = 760, epoch_rows = 182242;
  std::vector<Index> blocks = {256};
  int rounds = 21, threads = 2;
  std::string json_path;
  app.add_option("--items", items, "Catalogue size N")->check(CLI::PositiveNumber);
  app.add_option("--dim", dim, "Output width d")->check(CLI::PositiveNumber);
  app.add_option("--rows", rows, "Output vectors per loss call (a batch's positions)")->check(CLI::PositiveNumber);
  app.add_option("--blocks", blocks, "Rows per block (the loss's block_rows), one loss per value; the first also sizes the GEMMs")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--epoch-rows", epoch_rows, "Training positions per epoch, to state a call's cost per epoch")
      ->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "Rounds; every variant runs once per round")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "Threads")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Write the results as JSON");
  CLI11_PARSE(app, argc, argv);
  parallel::set_num_threads(threads);
  bench::print_machine();
  std::printf("catalogue %ld items, d %ld, %ld rows per call, %d threads, %d rounds\n", static_cast<long>(items),
              static_cast<long>(dim), static_cast<long>(rows), threads, rounds);

  std::mt19937 gen(7);
  const Matrix<float> w = random_matrix(items, dim, gen, 0.1f), w_t = w.transpose();
  const Matrix<float> bias = random_matrix(1, items, gen, 0.1f);
  const Matrix<float> h = random_matrix(rows, dim, gen, 1.0f);
  const Index b = std::min(blocks.front(), rows);
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
  std::vector<loss::CatalogueSoftmaxCrossEntropy<float>> losses(blocks.size());
  std::vector<loss::CatalogueSoftmaxCrossEntropy<float>::Workspace> workspaces(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) losses[i].block_rows = blocks[i];
  Matrix<float> grad_h(rows, dim), grad_w = Matrix<float>::Zero(items, dim), grad_b = Matrix<float>::Zero(1, items);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(w.data(), items, dim), bias.data()};
  std::vector<std::vector<double>> loss_seconds(blocks.size());
  float last_loss = 0.0f;

  for (int round = 0; round < rounds + 1; ++round) {  // round 0 warms up and is not counted
    for (auto& v : gemms) {
      const auto start = std::chrono::steady_clock::now();
      v.run();
      if (round > 0) v.seconds.push_back(seconds_since(start));
    }
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      last_loss = losses[i](h, head, targets, grad_h,
                            nn::HeadGradients<float>{MatrixMap<float>(grad_w.data(), items, dim), grad_b.data()}, workspaces[i]);
      if (round > 0) loss_seconds[i].push_back(seconds_since(start));
    }
  }

  const double peak = fma_peak_gflops(threads);
  const double block_flop = 2.0 * static_cast<double>(b) * static_cast<double>(items) * static_cast<double>(dim);
  nlohmann::json out{{"machine", bench::machine_json()}, {"items", items}, {"dim", dim}, {"rows", rows}, {"gemm_block", b},
                     {"threads", threads}, {"rounds", rounds}};
  std::printf("\nfp32 FMA peak on %d threads (multiply-adds in registers, %s): %.1f GFLOP/s\n", threads, xsimd::default_arch::name(), peak);
  out["fma_peak_gflops"] = peak;
  std::printf("\none block of %ld rows (median of %d):\n", static_cast<long>(b), rounds);
  for (const auto& v : gemms) {
    const double s = bench::percentile(v.seconds, 0.5);
    std::printf("  %-36s %8.3f ms  %6.1f GFLOP/s  %3.0f%% of peak\n", v.name, s * 1e3, block_flop / s / 1e9, 100.0 * block_flop / s / 1e9 / peak);
    out["gemm"].push_back({{"name", v.name}, {"ms", s * 1e3}, {"gflops", block_flop / s / 1e9}});
  }
  const double call_flop = 3.0 * block_flop / static_cast<double>(b) * static_cast<double>(rows);
  std::printf("\nthe loss, forward and backward (untied head with a bias), %ld rows per call (loss %.4f):\n", static_cast<long>(rows),
              static_cast<double>(last_loss));
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const double call = bench::percentile(loss_seconds[i], 0.5);
    const double per_epoch = call / static_cast<double>(rows) * static_cast<double>(epoch_rows);
    std::printf("  blocks of %4ld rows: %8.2f ms per call (median), %6.1f GFLOP/s counting its three products (%.0f%% of peak); "
                "%.2f s per %ld positions\n",
                static_cast<long>(blocks[i]), call * 1e3, call_flop / call / 1e9, 100.0 * call_flop / call / 1e9 / peak, per_epoch,
                static_cast<long>(epoch_rows));
    out["loss"].push_back({{"block_rows", blocks[i]}, {"ms_per_call", call * 1e3}, {"gflops", call_flop / call / 1e9},
                           {"epoch_rows", epoch_rows}, {"seconds_per_epoch_rows", per_epoch}});
  }
  if (!json_path.empty()) {
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}
