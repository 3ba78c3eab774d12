// One Recommender, many threads: mixed queries and session appends from 8 host threads give
// exactly the results of one thread. CI also runs this executable under ThreadSanitizer.
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"

#include "support.hpp"

#include <atomic>
#include <cstdlib>
#include <thread>

using namespace distillrec;

namespace {

constexpr ItemId kItems = 800;
constexpr int kThreads = 8;

std::vector<Sequence> random_histories(Index count, Rng& rng) {
  std::vector<Sequence> histories(static_cast<std::size_t>(count));
  for (auto& h : histories) {
    const auto length = 1 + rng.uniform_int(std::uint64_t{30});
    for (std::uint64_t i = 0; i < length; ++i) h.push_back(static_cast<ItemId>(1 + rng.uniform_int(std::uint64_t{kItems})));
  }
  return histories;
}

/// Everything one query of kind q % 5 returns, as numbers (compared exactly).
template <typename Model>
std::vector<double> run_query(const serve::Recommender<Model>& recommender, const std::vector<Sequence>& histories, int q) {
  const auto& h = histories[static_cast<std::size_t>(q) % histories.size()];
  std::vector<double> out;
  auto add = [&](const std::vector<serve::ScoredItem>& items) {
    for (const auto& s : items) {
      out.push_back(s.item);
      out.push_back(s.score);
    }
  };
  switch (q % 5) {
    case 0: add(recommender.recommend(h, {10, true})); break;
    case 1: {  // a session: built event by event, saved, loaded, one more event
      auto session = recommender.start_session();
      for (ItemId item : h) recommender.append(session, item);
      auto loaded = recommender.load_session(recommender.save_session(session));
      recommender.append(loaded, static_cast<ItemId>(1 + q % kItems));
      add(recommender.recommend_session(loaded, {5, true}));
      break;
    }
    case 2: add(recommender.rerank(h, {1, 2, 3, static_cast<ItemId>(1 + q % kItems)})); break;
    case 3:
      for (auto v : recommender.user_vector(h)) out.push_back(v);
      break;
    default: {
      const auto batch = recommender.recommend_batch({h, histories[(static_cast<std::size_t>(q) + 1) % histories.size()]}, {3, true}, 1);
      for (const auto& b : batch) add(b);
    }
  }
  return out;
}

template <typename Model>
void check_concurrent(std::shared_ptr<const Model> model, serve::Precision precision, int queries_per_thread,
                      serve::ThreadPolicy policy = serve::ThreadPolicy::kSerial) {
  serve::RecommenderConfig config;
  config.scoring.precision = precision;
  config.scoring.item_block = 256;
  config.threads = policy;
  const serve::Recommender<Model> recommender(model, config);
  Rng rng(17);
  const auto histories = random_histories(97, rng);
  const int total = kThreads * queries_per_thread;
  // The single-threaded answers first (every query kind, every history).
  std::vector<std::vector<double>> expected(static_cast<std::size_t>(total));
  for (int q = 0; q < total; ++q) expected[static_cast<std::size_t>(q)] = run_query(recommender, histories, q);
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        // Each thread walks its own order through all queries.
        for (int i = 0; i < queries_per_thread; ++i) {
          const int q = (t * queries_per_thread + i * 7919) % total;
          if (run_query(recommender, histories, q) != expected[static_cast<std::size_t>(q)]) ++mismatches;
        }
      } catch (...) {
        ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(errors.load() == 0);
  CHECK(mismatches.load() == 0);
}

}  // namespace

// SASRec fp32 runs 10,000 queries per thread, the other policies 1,000.
TEST_CASE("8 threads x 10000 mixed queries and session appends on one Recommender equal one thread's results",
          "[serve][concurrency]") {
  models::SASRecConfig s;
  s.num_items = kItems;
  s.hidden_size = 16;
  s.num_heads = 2;
  s.max_length = 12;
  auto sasrec = std::make_shared<models::SASRec<float>>(s);
  Rng rng(1);
  sasrec->initialize(rng);
  models::GRU4RecConfig g;
  g.num_items = kItems;
  g.embedding_dim = 16;
  g.hidden_size = 16;
  g.max_length = 12;
  auto gru = std::make_shared<models::GRU4Rec<float>>(g);
  gru->initialize(rng);
  // Under ThreadSanitizer (CI sets DISTILLREC_TSAN) everything runs 5-15x slower: fewer queries.
  const bool tsan = std::getenv("DISTILLREC_TSAN") != nullptr;
  SECTION("SASRec fp32") { check_concurrent<models::SASRec<float>>(sasrec, serve::Precision::kFp32, tsan ? 300 : 10000); }
  SECTION("SASRec int8") { check_concurrent<models::SASRec<float>>(sasrec, serve::Precision::kInt8, tsan ? 150 : 1000); }
  SECTION("GRU4Rec bf16") { check_concurrent<models::GRU4Rec<float>>(gru, serve::Precision::kBf16, tsan ? 150 : 1000); }
  // The library's thread policy: OpenMP regions started from many host threads at once
  // (not under ThreadSanitizer, which cannot see libgomp's synchronisation).
  if (!tsan) {
    SECTION("SASRec bf16, library threads") {
      check_concurrent<models::SASRec<float>>(sasrec, serve::Precision::kBf16, 500, serve::ThreadPolicy::kLibrary);
    }
  }
}
