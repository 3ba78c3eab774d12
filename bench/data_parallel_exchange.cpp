// Dense versus sparse-row gradient exchange across processes (train/gradient_exchange.hpp), side
// by side in one run, for item tables of growing size: where exchanging only the rows a step
// touched starts to pay. Run under the MPI launcher:
//
//   mpirun -np 2 build/bench/data_parallel_exchange [--dim 50] [--draws 1400] [--json out.json]
//
// Each process's step touches `draws` item rows drawn uniformly (the worst case for the sparse
// exchange: real logs repeat popular items, so fewer distinct rows) and holds `--dense` other
// gradient values (the rest of a model). Per size and method: the median and 99th-percentile
// time of one exchange (scan for touched rows, OR of the row bits, copies, the sum, the copies
// back) on rank 0, the rows in the union, and the bytes each process passes to the collective.
#include "bench_support.hpp"

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/rng.hpp"

#include "distillrec/mpi/mpi.hpp"
#include "distillrec/optim/adam.hpp"
#include "distillrec/train/gradient_exchange.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <vector>

using namespace distillrec;

namespace {

struct Measured {
  std::vector<double> seconds;
  double bytes = 0.0;
  double union_rows = 0.0;
};

}  // namespace

int main(int argc, char** argv) {
  mpi::Environment env(argc, argv);
  auto world = std::make_shared<mpi::Communicator>();
  CLI::App app{"Dense versus sparse-row gradient exchange (run under mpirun)"};
  Index dim = 50;
  Index draws = 1400;  // amazon-games SASRec, batch 128 on 2 processes: 64 examples x ~7.3 positions x (input, positive, negative)
  Index dense = 100000;
  int repeats = 40;
  std::vector<Index> sizes{1024, 4096, 8192, 16384, 65536, 262144, 1048576};
  std::string json_path;
  app.add_option("--dim", dim, "Columns of the item table")->capture_default_str();
  app.add_option("--draws", draws, "Item rows each process's step touches (drawn uniformly, with repeats)")->capture_default_str();
  app.add_option("--dense", dense, "Other gradient values of the model (always dense)")->capture_default_str();
  app.add_option("--rows", sizes, "Item-table sizes (rows)");
  app.add_option("--repeats", repeats, "Timed exchanges per size and method")->capture_default_str();
  app.add_option("--json", json_path, "Write the results here (rank 0)");
  CLI11_PARSE(app, argc, argv);
  const bool root = world->rank() == 0;
  if (root) {
    bench::print_machine();
    std::printf("%s; item table columns %ld, %ld rows drawn per process and step (uniform), %ld other gradient values; %d "
                "exchanges per size and method, alternating\n\n",
                world->description().c_str(), static_cast<long>(dim), static_cast<long>(draws), static_cast<long>(dense), repeats);
    std::printf("%10s %12s %12s %12s %12s %12s %8s\n", "rows", "union rows", "dense MB", "sparse MB", "dense ms", "sparse ms",
                "sparse/dense");
  }
  nlohmann::json results = nlohmann::json::array();
  Index switch_over = 0;
  for (Index rows : sizes) {
    Parameters<float> params;
    const Index rest = params.declare("model.rest", 1, dense);
    const Index table = params.declare("item_table", rows, dim);
    params.allocate();
    train::GradientExchange<float> dense_exchange, sparse_exchange;
    dense_exchange.configure({&params}, world.get(), 0);
    sparse_exchange.configure({&params}, world.get(), rows);
    Rng rng(static_cast<std::uint64_t>(1000 + world->rank()));
    Measured measured[2];
    for (int r = -2; r < repeats; ++r) {  // two untimed warm-up rounds
      for (int method = 0; method < 2; ++method) {
        params.flat_grads().setZero();
        params.grad(rest).setConstant(1.0f);
        auto g = params.grad(table);
        for (Index i = 0; i < draws; ++i) g.row(static_cast<Index>(rng.uniform_int(static_cast<std::uint64_t>(rows)))).array() += 1.0f;
        auto& exchange = method == 0 ? dense_exchange : sparse_exchange;
        exchange.reset_statistics();
        world->barrier();
        const auto start = std::chrono::steady_clock::now();
        exchange.exchange(1.0f, false);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (r < 0) continue;
        measured[method].seconds.push_back(seconds);
        measured[method].bytes = exchange.statistics().bytes;
        measured[method].union_rows += exchange.statistics().item_rows / repeats;
      }
    }
    const double dense_ms = bench::percentile(measured[0].seconds, 0.5) * 1e3;
    const double sparse_ms = bench::percentile(measured[1].seconds, 0.5) * 1e3;
    if (sparse_ms >= dense_ms) {
      switch_over = 0;  // the switch-over is where sparse rows win at that size and every larger one
    } else if (switch_over == 0) {
      switch_over = rows;
    }
    if (root) {
      std::printf("%10ld %12.0f %12.2f %12.2f %12.3f %12.3f %8.2f\n", static_cast<long>(rows), measured[1].union_rows,
                  measured[0].bytes / 1e6, measured[1].bytes / 1e6, dense_ms, sparse_ms, sparse_ms / dense_ms);
      std::fflush(stdout);
    }
    results.push_back({{"rows", rows},
                       {"union_rows", measured[1].union_rows},
                       {"dense", {{"bytes", measured[0].bytes}, {"seconds", bench::p50_p99(measured[0].seconds)}}},
                       {"sparse", {{"bytes", measured[1].bytes}, {"seconds", bench::p50_p99(measured[1].seconds)}}}});
  }
  // Adam's update of every value (each process updates the whole model every step, whatever the
  // exchange sent): the per-value cost the cost model charges for large catalogues.
  double adam_ns = 0.0, scan_gb_per_s = 0.0;
  {
    Parameters<float> params;
    params.declare("item_table", sizes.back(), dim);
    params.allocate();
    params.flat_grads().setConstant(1e-3f);
    optim::Adam adam;
    auto state = adam.make_state(params);
    std::vector<double> seconds;
    for (int r = -1; r < 10; ++r) {
      const auto start = std::chrono::steady_clock::now();
      adam.step(params, state);
      if (r >= 0) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    adam_ns = bench::percentile(seconds, 0.5) * 1e9 / static_cast<double>(params.buffer_size());
    // The row exchange's scan for touched rows, alone: one read of the table.
    params.flat_grads().setZero();
    std::vector<std::uint64_t> words((static_cast<std::size_t>(sizes.back()) + 63) / 64);
    seconds.clear();
    for (int r = -1; r < 10; ++r) {
      const auto start = std::chrono::steady_clock::now();
      train::GradientExchange<float>::touched_rows(params.grads(), static_cast<std::size_t>(sizes.back()), static_cast<std::size_t>(dim),
                                                   words.data());
      if (r >= 0) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    scan_gb_per_s = static_cast<double>(sizes.back() * dim) * sizeof(float) / bench::percentile(seconds, 0.5) / 1e9;
  }
  if (root) {
    std::printf("\nAdam update: %.2f ns per value (median of 10 steps over %ld x %ld, %d threads); the scan for touched rows "
                "alone: %.1f GB/s\n",
                adam_ns, static_cast<long>(sizes.back()), static_cast<long>(dim), parallel::max_threads(), scan_gb_per_s);
    if (switch_over > 0) {
      std::printf("\nsparse rows faster from %ld rows on (at that size and every larger one measured)\n", static_cast<long>(switch_over));
    } else {
      std::printf("\nsparse rows never faster at the sizes measured\n");
    }
    if (!json_path.empty()) {
      nlohmann::json out{{"machine", bench::machine_json()},
                         {"processes", world->size()},
                         {"dim", dim},
                         {"draws_per_process", draws},
                         {"dense_values", dense},
                         {"sizes", results},
                         {"switch_over_rows", switch_over},
                         {"adam_ns_per_value", adam_ns},
                         {"scan_gb_per_s", scan_gb_per_s}};
      std::ofstream(json_path) << out.dump(2) << "\n";
    }
  }
  return 0;
}
