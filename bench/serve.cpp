// serve: the inference engine's latency, throughput and quality under each scoring policy
// (fp32, bf16, int8), measured side by side in one run:
//   latency     one user's top-10 on one thread, p50 and p99, for histories cut to 10, 50 and
//               200 items; the policies take turns in blocks of 50 queries, so each is timed in
//               the steady state of serving it and all see the same stretches of machine time
//   throughput  recommend_batch over every test history, 1 and 2 threads, blocks of --block
//               users; users/s, the median of --repeats runs
//   quality     top-10 overlap with fp32 over the test users, and full-ranking NDCG@10 / HR@10
//               under each policy (what is measured is what is served)
// With --checkpoint the model is a trained checkpoint of any of the library's models; with
// --synthetic-items N a SASRec (d = --dim) with random weights over N items is served instead
// (speed and memory of large catalogues; quality is then not reported). Peak memory is the
// process's resident set size at the end. Prints the CPU and what each policy runs on.
//
//   serve --data ../shared/data/amazon-games.txt --checkpoint sasrec.safetensors --json out.json
//   serve --data ../shared/data/amazon-games.txt --synthetic-items 1000000
// Sessions: appending one event (the 50th: the cached path where the model has one; and past the
// window, where every model re-encodes) and a session's top-10 (scoring only).
// --torch: then the PyTorch reference (bench/pytorch/serve_reference.py, SASRec or LLMRec; eager
// and TorchScript) on the same histories and machine, printed side by side, with its top-10
// agreement with the library's fp32 results.
#include "distillrec/backend/parallel.hpp"
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/models/registry.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"

#include "bench_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <memory>
#include <vector>

using namespace distillrec;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string data_path, checkpoint, json_path;
  Index synthetic_items = 0, dim = 50, queries = 2000, block = 128, item_block = 4096, shortlist = 0, batch_users = 0;
  int repeats = 3, threads = 2;
  bool no_quality = false, torch = false;
  std::vector<serve::Precision> precisions;
  std::string torch_script = "bench/pytorch/serve_reference.py";
};


template <typename Model>
nlohmann::json run(std::shared_ptr<const Model> model, const data::LeaveOneOutSplit& split, const Options& o, bool quality) {
  const std::vector<serve::Precision>& kPrecisions = o.precisions;
  quality = quality && kPrecisions.front() == serve::Precision::kFp32;  // compared against fp32
  std::vector<std::unique_ptr<serve::Recommender<Model>>> recommenders;
  nlohmann::json out;
  for (auto precision : kPrecisions) {
    serve::RecommenderConfig config;
    config.scoring.precision = precision;
    config.scoring.item_block = o.item_block;
    config.scoring.shortlist = o.shortlist;
    recommenders.push_back(std::make_unique<serve::Recommender<Model>>(model, config));
    std::printf("%s: %s\n", serve::to_string(precision).c_str(), recommenders.back()->scorer().description().c_str());
    out["policies"][serve::to_string(precision)] = recommenders.back()->scorer().description();
  }
  std::vector<Sequence> histories;
  for (Index user : split.evaluable_users) histories.push_back(split.test_history(user));
  const std::size_t np = recommenders.size();

  // Latency: one user, one thread, the policies taking turns in blocks of queries.
  parallel::set_num_threads(1);
  std::printf("\none user's top-10, 1 thread (%ld queries per cell), ms:\n%-10s", static_cast<long>(o.queries), "history");
  for (auto p : kPrecisions) std::printf("  %8s p50  %8s p99", serve::to_string(p).c_str(), serve::to_string(p).c_str());
  std::printf("\n");
  for (Index length : {Index{10}, Index{50}, Index{200}}) {
    // Users with at least `length` items, their newest `length`; cycled when fewer than queries.
    std::vector<Sequence> pool;
    for (const auto& h : histories) {
      if (static_cast<Index>(h.size()) >= length) pool.emplace_back(h.end() - length, h.end());
    }
    if (pool.empty()) {  // a synthetic catalogue: histories of random items
      Rng rng(static_cast<std::uint64_t>(length));
      for (int u = 0; u < 500; ++u) {
        Sequence h;
        for (Index j = 0; j < length; ++j) h.push_back(static_cast<ItemId>(1 + rng.uniform_int(static_cast<std::uint64_t>(model->num_items()))));
        pool.push_back(std::move(h));
      }
    }
    std::vector<std::vector<double>> times(np);
    std::vector<serve::ScoredItem> top;
    // Blocks of kBlock queries, the policies taking turns block by block: each policy is timed in
    // the steady state of serving it (its table warm in the caches, as in a service), and
    // every policy sees the same stretches of machine time.
    constexpr Index kBlock = 50;
    for (Index b0 = -kBlock; b0 < o.queries; b0 += kBlock) {
      for (std::size_t p = 0; p < np; ++p) {
        for (Index q = b0; q < std::min(b0 + kBlock, o.queries); ++q) {
          const auto& h = pool[static_cast<std::size_t>(q + kBlock) % pool.size()];
          const auto t0 = Clock::now();
          recommenders[p]->recommend(h, {10, true}, top);
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          if (top.size() != 10) throw Error("serve benchmark: fewer than 10 recommendations");
          if (q >= 0) times[p].push_back(ms);
        }
      }
    }
    std::printf("%-10ld", static_cast<long>(length));
    for (std::size_t p = 0; p < np; ++p) {
      const double p50 = bench::percentile(times[p], 0.5), p99 = bench::percentile(times[p], 0.99);
      std::printf("  %12.4f  %12.4f", p50, p99);
      out["latency_ms"][serve::to_string(kPrecisions[p])][std::to_string(length)] = {{"p50", p50}, {"p99", p99}, {"users", pool.size()}};
    }
    std::printf("\n");
    std::fflush(stdout);
  }

  // Sessions: appending the 50th event to a session of 49 (the cached path where the model has
  // one), appending to a session that has slid past the window (every model re-encodes), and a
  // session's top-10 (scoring only), on one thread.
  {
    const Index window = model->max_length();
    const Index fill = std::min<Index>(50, window);
    std::vector<Sequence> pool;
    for (const auto& h : histories) {
      if (static_cast<Index>(h.size()) >= fill) pool.emplace_back(h.end() - fill, h.end());
    }
    if (pool.empty()) {
      Rng rng(7);
      for (int u = 0; u < 200; ++u) {
        Sequence h;
        for (Index j = 0; j < fill; ++j) h.push_back(static_cast<ItemId>(1 + rng.uniform_int(static_cast<std::uint64_t>(model->num_items()))));
        pool.push_back(std::move(h));
      }
    }
    const auto& r0 = *recommenders[0];
    using SessionT = decltype(r0.start_session());
    std::vector<SessionT> before, full, slid;  // fill - 1 events, fill events, past the window
    for (const auto& h : pool) {
      before.push_back(r0.start_session(Sequence(h.begin(), h.end() - 1)));
      full.push_back(before.back());
      r0.append(full.back(), h.back());
      slid.push_back(full.back());
      while (static_cast<Index>(slid.back().events) <= window) r0.append(slid.back(), h.front());
    }
    std::vector<double> append_ms, slid_ms;
    std::vector<std::vector<double>> session_ms(np);
    std::vector<serve::ScoredItem> top;
    const std::size_t n = pool.size();
    const Index rounds = std::max<Index>(1, o.queries / static_cast<Index>(n));
    for (Index round = 0; round < rounds; ++round) {
      for (std::size_t i = 0; i < n; ++i) {  // appends into copies (the copies are not timed)
        auto session = before[i];
        const auto t0 = Clock::now();
        r0.append(session, pool[i].back());
        append_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        session = slid[i];
        const auto t1 = Clock::now();
        r0.append(session, pool[i].back());
        slid_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t1).count());
      }
      for (std::size_t b0 = 0; b0 < n; b0 += 50) {  // session top-10s, blocks of 50 per policy
        for (std::size_t p = 0; p < np; ++p) {
          for (std::size_t i = b0; i < std::min(b0 + 50, n); ++i) {
            const auto t2 = Clock::now();
            recommenders[p]->recommend_session(full[i], {10, true}, top);
            session_ms[p].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t2).count());
          }
        }
      }
    }
    const bool cached = models::contract::has_session_append<Model>::value;
    std::printf("\nsessions, 1 thread (%zu appends): append the %ldth event %s p50 %.4f p99 %.4f ms; "
                "append past the window (re-encode) p50 %.4f ms\nsession top-10 (scoring only), ms:",
                append_ms.size(), static_cast<long>(fill), cached ? "(cached)" : "(re-encodes the window)",
                bench::percentile(append_ms, 0.5), bench::percentile(append_ms, 0.99), bench::percentile(slid_ms, 0.5));
    out["session"] = {{"append_ms", bench::p50_p99(append_ms)},
                      {"append_event", fill},
                      {"cached", cached},
                      {"append_past_window_ms", bench::p50_p99(slid_ms)}};
    for (std::size_t p = 0; p < np; ++p) {
      const double p50 = bench::percentile(session_ms[p], 0.5), p99 = bench::percentile(session_ms[p], 0.99);
      std::printf("  %s p50 %.4f p99 %.4f", serve::to_string(kPrecisions[p]).c_str(), p50, p99);
      out["session"]["top10_ms"][serve::to_string(kPrecisions[p])] = {{"p50", p50}, {"p99", p99}};
    }
    std::printf("\n");
    std::fflush(stdout);
  }

  // Throughput: every test history (or --batch-users of them), blocks of users, 1 and
  // --threads threads. A synthetic catalogue has users of 50 random items.
  std::vector<Sequence> batch = histories;
  const auto wanted = static_cast<std::size_t>(o.batch_users > 0 ? o.batch_users : (quality ? 0 : 20000));
  if (wanted > 0 && batch.size() > wanted) batch.resize(wanted);
  if (batch.size() < wanted) {
    Rng rng(99);
    while (batch.size() < wanted) {
      Sequence h;
      for (int j = 0; j < 50; ++j) h.push_back(static_cast<ItemId>(1 + rng.uniform_int(static_cast<std::uint64_t>(model->num_items()))));
      batch.push_back(std::move(h));
    }
  }
  std::printf("\nbatch top-10 (%zu users, blocks of %ld), users/s:\n", batch.size(), static_cast<long>(o.block));
  for (int threads : {1, o.threads}) {
    parallel::set_num_threads(threads);
    std::printf("%d thread(s):", threads);
    for (std::size_t p = 0; p < np; ++p) {
      recommenders[p]->recommend_batch(std::vector<Sequence>(batch.begin(), batch.begin() + 500), {10, true}, o.block);
      std::vector<double> rates;
      for (int r = 0; r < o.repeats; ++r) {
        const auto t0 = Clock::now();
        const auto results = recommenders[p]->recommend_batch(batch, {10, true}, o.block);
        rates.push_back(static_cast<double>(results.size()) / std::chrono::duration<double>(Clock::now() - t0).count());
      }
      const double rate = bench::percentile(rates, 0.5);
      std::printf("  %s %.0f", serve::to_string(kPrecisions[p]).c_str(), rate);
      out["users_per_second"][serve::to_string(kPrecisions[p])][std::to_string(threads)] = rate;
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  out["peak_rss_mib_after_batches"] = bench::peak_rss_mib();

  if (quality) {
    parallel::set_num_threads(o.threads);
    std::printf("\nquality against fp32 (test users):\n");
    const auto reference = recommenders[0]->recommend_batch(histories, {10, true}, o.block);
    for (std::size_t p = 0; p < np; ++p) {
      const auto results = recommenders[p]->recommend_batch(histories, {10, true}, o.block);
      double overlap = 0.0;
      for (std::size_t i = 0; i < results.size(); ++i) {
        for (const auto& s : results[i]) {
          overlap += static_cast<double>(std::count_if(reference[i].begin(), reference[i].end(),
                                                       [&](const serve::ScoredItem& r) { return r.item == s.item; }));
        }
      }
      overlap /= 10.0 * static_cast<double>(results.size());
      eval::FullRankingOptions options;
      options.scoring = recommenders[p]->scorer().policy();
      const auto metrics = eval::evaluate_full_ranking(*model, split, eval::EvalSplit::kTest, options);
      std::printf("%s: top-10 overlap with fp32 %.4f; full ranking NDCG@10 %.5f HR@10 %.5f\n", serve::to_string(kPrecisions[p]).c_str(),
                  overlap, metrics.metrics.at("NDCG@10"), metrics.metrics.at("HR@10"));
      out["quality"][serve::to_string(kPrecisions[p])] = {{"top10_overlap_with_fp32", overlap},
                                                          {"test_full", metrics.metrics},
                                                          {"description", metrics.description}};
    }
  }
  out["peak_rss_mib"] = bench::peak_rss_mib();
  std::printf("\npeak resident memory: %.0f MiB\n", bench::peak_rss_mib());

  if (o.torch) {
    // The PyTorch reference on the same histories, right after (bench/pytorch/serve_reference.py).
    const std::string kind = Model::kModelName;
    if ((kind != "sasrec" && kind != "llm_rec") || o.checkpoint.empty()) {
      std::printf("\nPyTorch reference: implemented for SASRec and LLMRec checkpoints only\n");
      return out;
    }
    const auto tmp = std::filesystem::temp_directory_path();
    const std::string tag = std::to_string(static_cast<long long>(::getpid()));
    const std::string hist_path = (tmp / ("distillrec_serve_histories_" + tag + ".txt")).string();
    const std::string expect_path = (tmp / ("distillrec_serve_expect_" + tag + ".txt")).string();
    const std::string torch_json = (tmp / ("distillrec_serve_torch_" + tag + ".json")).string();
    {
      std::ofstream f(hist_path);
      for (const auto& h : histories) {
        for (std::size_t j = 0; j < h.size(); ++j) f << (j ? " " : "") << h[j];
        f << "\n";
      }
      if (!f) throw Error("serve benchmark: cannot write " + hist_path);
    }
    if constexpr (models::contract::has_max_length<Model>::value) {
      // The library's fp32 top-10 of the first 500 histories' windows: the reference reports its
      // agreement, so both sides are known to serve the same model.
      serve::Recommender<Model> fp32(model);
      std::ofstream f(expect_path);
      const auto window = static_cast<std::ptrdiff_t>(model->max_length());
      for (std::size_t i = 0; i < std::min<std::size_t>(500, histories.size()); ++i) {
        const auto& h = histories[i];
        const Sequence cut(h.end() - std::min<std::ptrdiff_t>(window, static_cast<std::ptrdiff_t>(h.size())), h.end());
        const auto top = fp32.recommend(cut, {10});
        for (std::size_t j = 0; j < top.size(); ++j) f << (j ? " " : "") << top[j].item;
        f << "\n";
      }
      if (!f) throw Error("serve benchmark: cannot write " + expect_path);
    }
    const std::string cmd = "/usr/bin/python3 " + o.torch_script + " --checkpoint '" + o.checkpoint + "' --histories '" + hist_path +
                            "' --expect '" + expect_path + "' --queries " + std::to_string(o.queries) + " --batch " +
                            std::to_string(o.block) + " --threads " + std::to_string(o.threads) + " --repeats " +
                            std::to_string(o.repeats) + " --json '" + torch_json + "'";
    std::printf("\nPyTorch reference, the same histories on the same machine:\n$ %s\n", cmd.c_str());
    std::fflush(stdout);
    if (std::system(cmd.c_str()) != 0) throw Error("serve benchmark: the PyTorch reference failed: " + cmd);
    {
      std::ifstream in(torch_json);
      out["pytorch"] = nlohmann::json::parse(in);
    }
    std::filesystem::remove(hist_path);
    std::filesystem::remove(expect_path);
    std::filesystem::remove(torch_json);
    std::printf("\nside by side (ms, users/s):\n%-22s", "");
    for (auto p : kPrecisions) std::printf(" %10s", serve::to_string(p).c_str());
    std::printf(" %10s %12s\n", "eager", "torchscript");
    for (const char* length : {"10", "50", "200"}) {
      if (!out["latency_ms"][serve::to_string(kPrecisions.front())].contains(length) || !out["pytorch"]["latency_ms"]["eager"].contains(length)) continue;
      std::printf("top-10 p50, history %-3s", length);
      for (auto p : kPrecisions) std::printf(" %10.4f", out["latency_ms"][serve::to_string(p)][length]["p50"].get<double>());
      std::printf(" %10.4f %12.4f\n", out["pytorch"]["latency_ms"]["eager"][length]["p50"].get<double>(),
                  out["pytorch"]["latency_ms"]["torchscript"][length]["p50"].get<double>());
    }
    const std::string t = std::to_string(o.threads);
    std::printf("batch, %s threads          ", t.c_str());
    for (auto p : kPrecisions) std::printf(" %10.0f", out["users_per_second"][serve::to_string(p)][t].get<double>());
    std::printf(" %10.0f %12.0f\n", out["pytorch"]["users_per_second"]["eager"][t].get<double>(),
                out["pytorch"]["users_per_second"]["torchscript"][t].get<double>());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Latency, throughput and quality of the serving engine under fp32, bf16 and int8 scoring."};
  Options o;
  app.add_option("--data", o.data_path, "Interaction log: the users' histories (and the quality's test set)")->required();
  app.add_option("--checkpoint", o.checkpoint, "A trained checkpoint of any of the library's models");
  app.add_option("--synthetic-items", o.synthetic_items, "Serve a random SASRec over this many items instead of a checkpoint");
  app.add_option("--dim", o.dim, "Hidden size of the synthetic SASRec");
  app.add_option("--queries", o.queries, "Single-user queries timed per history length and policy");
  app.add_option("--block", o.block, "Users per block in batch queries");
  app.add_option("--item-block", o.item_block, "Items scored per step (the scoring policy's item_block)");
  app.add_option("--shortlist", o.shortlist, "int8: items re-scored in fp32 per query (0: the policy's default)");
  app.add_option("--batch-users", o.batch_users, "Users of the throughput runs (default: every test history; 20,000 synthetic)");
  app.add_option("--threads", o.threads, "Threads of the multi-threaded batch run");
  app.add_option("--repeats", o.repeats, "Batch runs per cell (median)");
  app.add_flag("--no-quality", o.no_quality, "Skip the overlap and NDCG comparison");
  std::vector<std::string> precision_names{"fp32", "bf16", "int8"};
  app.add_option("--precisions", precision_names, "Policies to build and measure (fp32 first for the quality comparison)")
      ->delimiter(',')
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  app.add_flag("--torch", o.torch, "Then run the PyTorch reference (eager, TorchScript) on the same histories (SASRec, LLMRec)");
  app.add_option("--torch-script", o.torch_script, "Path of bench/pytorch/serve_reference.py");
  app.add_option("--json", o.json_path, "Write every figure as JSON here");
  CLI11_PARSE(app, argc, argv);
  for (const auto& name : precision_names) o.precisions.push_back(serve::parse_precision(name));
  bench::print_machine();
  try {
    if (o.checkpoint.empty() == (o.synthetic_items == 0)) throw ConfigError("give exactly one of --checkpoint and --synthetic-items");
    const auto log = data::read_log(o.data_path);
    nlohmann::json result;
    if (o.synthetic_items > 0) {
      // The log's histories only give realistic lengths; the synthetic run draws random items.
      models::SASRecConfig config;
      config.num_items = static_cast<ItemId>(o.synthetic_items);
      config.hidden_size = o.dim;
      auto model = std::make_shared<models::SASRec<float>>(config);
      Rng rng(1);
      model->initialize(rng);
      std::printf("synthetic SASRec: %ld items, d = %ld, random weights\n", static_cast<long>(o.synthetic_items), static_cast<long>(o.dim));
      data::LeaveOneOutSplit empty = data::leave_one_out(data::make_log({{1, 2, 3}}, config.num_items, "synthetic"));
      result = run<models::SASRec<float>>(model, empty, o, false);
      result["model"] = {{"synthetic_items", o.synthetic_items}, {"dim", o.dim}};
    } else {
      const auto split = data::leave_one_out(log);
      result = models::with_checkpoint_model(o.checkpoint, [&](auto model) {
        using Model = typename decltype(model)::element_type;
        std::printf("checkpoint %s: %s, %d items\n", o.checkpoint.c_str(), Model::kModelName, static_cast<int>(model->num_items()));
        auto r = run<Model>(std::shared_ptr<const Model>(model), split, o, !o.no_quality);
        r["model"] = {{"checkpoint", o.checkpoint}, {"type", Model::kModelName}};
        return r;
      });
    }
    result["machine"] = bench::machine_json();
    if (!o.json_path.empty()) io::write_file_atomic(o.json_path, result.dump(2) + "\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve: %s\n", e.what());
    return 1;
  }
  return 0;
}
