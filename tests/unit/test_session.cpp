#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"

#include "support.hpp"

#include <cmath>
#include <cstring>
#include <limits>

using namespace distillrec;

namespace {

constexpr ItemId kItems = 300;
constexpr Index kWindow = 8;

template <typename Model>
std::shared_ptr<const Model> make(typename Model::Config config, std::uint64_t seed) {
  auto model = std::make_shared<Model>(config);
  Rng rng(seed);
  model->initialize(rng);
  return model;
}

std::shared_ptr<const models::SASRec<float>> sasrec(std::uint64_t seed = 1) {
  models::SASRecConfig c;
  c.num_items = kItems;
  c.hidden_size = 16;
  c.num_heads = 2;
  c.max_length = kWindow;
  return make<models::SASRec<float>>(c, seed);
}

std::shared_ptr<const models::GRU4Rec<float>> gru4rec(nn::HeadKind head, std::uint64_t seed = 1) {
  models::GRU4RecConfig c;
  c.num_items = kItems;
  c.embedding_dim = 12;
  c.hidden_size = head == nn::HeadKind::kTied ? 12 : 10;
  c.num_layers = 2;
  c.max_length = kWindow;
  c.head = head;
  return make<models::GRU4Rec<float>>(c, seed);
}

std::shared_ptr<const models::LLMRec<float>> llm_rec(std::uint64_t seed = 1, Index kv_heads = 0) {
  models::LLMRecConfig c;
  c.num_items = kItems;
  c.item_dim = 12;
  c.hidden_size = 16;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = kv_heads;
  c.max_length = kWindow;
  return make<models::LLMRec<float>>(c, seed);
}

/// Appends a long random history event by event; after every append the session's vector equals
/// encoding the whole history so far (the window slides past max_length), and its top-10 equals
/// recommend(history).
template <typename Model>
void check_sessions_equal_reencoding(std::shared_ptr<const Model> model) {
  const serve::Recommender<Model> recommender(model);
  Rng rng(9);
  Sequence history;
  auto session = recommender.start_session();
  CHECK(session.empty());
  for (int event = 0; event < 3 * kWindow; ++event) {
    const auto item = static_cast<ItemId>(1 + rng.uniform_int(std::uint64_t{kItems}));
    history.push_back(item);
    recommender.append(session, item);
    CAPTURE(event);
    REQUIRE(session.events == history.size());
    REQUIRE(static_cast<Index>(session.window.size()) == std::min<Index>(static_cast<Index>(history.size()), kWindow));
    const auto expected = recommender.user_vector(history);
    REQUIRE(session.user.size() == expected.size());
    double scale = 0.0, diff = 0.0;
    for (std::size_t c = 0; c < expected.size(); ++c) {
      scale = std::max(scale, static_cast<double>(std::abs(expected[c])));
      diff = std::max(diff, static_cast<double>(std::abs(expected[c] - session.user[c])));
    }
    REQUIRE(diff <= 1e-5 * scale);
    // Top-10 of the session: the history's (window) items excluded, as recommend(window) does.
    const Sequence window(history.end() - static_cast<std::ptrdiff_t>(session.window.size()), history.end());
    const auto from_session = recommender.recommend_session(session, {10, true});
    const auto from_history = recommender.recommend(window, {10, true});
    REQUIRE(from_session.size() == from_history.size());
    for (std::size_t j = 0; j < from_session.size(); ++j) {
      REQUIRE(from_session[j].score == Approx(from_history[j].score).epsilon(1e-5).margin(1e-6));
    }
  }
  CHECK(session.slid);
  // Starting from a history is the same as appending it.
  const auto started = recommender.start_session(history);
  CHECK(started.window == session.window);
  CHECK(started.events == session.events);
}

}  // namespace

TEST_CASE("Sessions equal re-encoding the whole history, also once the window slides", "[serve][session]") {
  SECTION("SASRec (re-encodes its window)") { check_sessions_equal_reencoding(sasrec()); }
  SECTION("GRU4Rec, tied head (incremental GRU steps)") { check_sessions_equal_reencoding(gru4rec(nn::HeadKind::kTied)); }
  SECTION("GRU4Rec, untied head") { check_sessions_equal_reencoding(gru4rec(nn::HeadKind::kUntied)); }
  SECTION("LLMRec (cached keys and values)") { check_sessions_equal_reencoding(llm_rec()); }
  SECTION("LLMRec, grouped-query heads") { check_sessions_equal_reencoding(llm_rec(1, 2)); }
}

TEST_CASE("LLMRec sessions cache every block's keys and values until the window slides", "[serve][session]") {
  const auto model = llm_rec(3, 2);
  const serve::Recommender<models::LLMRec<float>> recommender(model);
  // 2 blocks x (keys + values) x window x (2 kv heads x head size 4).
  REQUIRE(model->session_cache_size() == 2 * 2 * kWindow * 8);
  auto session = recommender.start_session({4, 5, 6});
  CHECK(session.cache.size() == static_cast<std::size_t>(model->session_cache_size()));
  // The cache survives the round trip through bytes and keeps serving incrementally.
  auto loaded = recommender.load_session(recommender.save_session(session));
  CHECK(loaded.cache == session.cache);
  recommender.append(loaded, 9);
  recommender.append(session, 9);
  CHECK(loaded.user == session.user);
  // A position beyond the window is refused by the model itself.
  std::vector<float> cache(static_cast<std::size_t>(model->session_cache_size()));
  std::vector<float> out(12);
  models::LLMRec<float>::Workspace ws;
  CHECK_THROWS_WITH(model->session_append(cache.data(), kWindow, 1, MatrixMap<float>(out.data(), 1, 12), ws),
                    Catch::Contains("position 8 is outside 0..7"));
  for (int i = 0; i < kWindow; ++i) recommender.append(session, 7);
  CHECK(session.slid);
  CHECK(session.cache.empty());
}

TEST_CASE("GRU4Rec sessions carry the GRU state until the window slides", "[serve][session]") {
  const serve::Recommender<models::GRU4Rec<float>> recommender(gru4rec(nn::HeadKind::kTied));
  auto session = recommender.start_session({4, 5, 6});
  CHECK(session.cache.size() == 2 * 12);  // both layers' states
  CHECK_FALSE(session.slid);
  for (int i = 0; i < kWindow; ++i) recommender.append(session, 7);
  CHECK(session.slid);
  CHECK(session.cache.empty());
}

TEST_CASE("Sessions round-trip through bytes and reject corrupt, truncated or foreign blobs", "[serve][session][errors]") {
  const serve::Recommender<models::GRU4Rec<float>> recommender(gru4rec(nn::HeadKind::kTied));
  auto session = recommender.start_session({3, 1, 4, 1, 5});
  const std::string bytes = recommender.save_session(session);
  auto loaded = recommender.load_session(bytes);
  CHECK(loaded.window == session.window);
  CHECK(loaded.cache == session.cache);
  CHECK(loaded.user == session.user);
  CHECK(loaded.events == session.events);
  // Both continue identically.
  recommender.append(session, 9);
  recommender.append(loaded, 9);
  CHECK(loaded.user == session.user);
  CHECK(recommender.recommend_session(loaded) == recommender.recommend_session(session));
  // An empty session and a slid one round-trip too.
  CHECK(recommender.load_session(recommender.save_session(recommender.start_session())).empty());
  auto slid = recommender.start_session(Sequence(20, 2));
  CHECK(recommender.load_session(recommender.save_session(slid)).slid);

  CHECK_THROWS_WITH(recommender.load_session(""), Catch::Contains("fewer than any session's"));
  CHECK_THROWS_WITH(recommender.load_session(std::string(64, 'x')), Catch::Contains("not a session"));
  CHECK_THROWS_WITH(recommender.load_session(bytes.substr(0, bytes.size() - 3)), Catch::Contains("checksum"));
  std::string flipped = bytes;
  flipped[30] = static_cast<char>(flipped[30] ^ 0x10);
  CHECK_THROWS_WITH(recommender.load_session(flipped), Catch::Contains("checksum"));
  // Another model: same configuration, other weights; and another model type altogether.
  const serve::Recommender<models::GRU4Rec<float>> other(gru4rec(nn::HeadKind::kTied, 2));
  CHECK_THROWS_WITH(other.load_session(bytes), Catch::Contains("made by another model"));
  const serve::Recommender<models::SASRec<float>> sas(sasrec());
  CHECK_THROWS_WITH(sas.load_session(bytes), Catch::Contains("made by another model"));
  // A well-formed blob with a newer version (checksum recomputed) names the version.
  std::string newer = bytes.substr(0, bytes.size() - 8);
  newer[8] = 2;
  serve::detail::Fnv1a h;
  h.add(newer.data(), newer.size());
  const std::uint64_t sum = h.value();
  newer.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  CHECK_THROWS_WITH(recommender.load_session(newer), Catch::Contains("format version 2"));
  // Blobs with a valid checksum but inconsistent contents reach the field checks.
  auto sealed = [](std::string body) {
    serve::detail::Fnv1a hash;
    hash.add(body.data(), body.size());
    const std::uint64_t v = hash.value();
    body.append(reinterpret_cast<const char*>(&v), sizeof v);
    return body;
  };
  const std::string body = bytes.substr(0, bytes.size() - 8);
  CHECK_THROWS_WITH(recommender.load_session(sealed(body.substr(0, 40))), Catch::Contains("ends inside"));
  CHECK_THROWS_WITH(recommender.load_session(sealed(body + "xyz")), Catch::Contains("unexpected bytes at the end"));
  {  // a window longer than the model's: the window length field sits after magic, version,
     // scalar size, fingerprint, event count and slid flag
    std::string longer = body;
    const std::size_t at = 8 + 4 + 1 + 8 + 8 + 1;
    const std::uint32_t n = 99;
    std::memcpy(&longer[at], &n, sizeof n);
    CHECK_THROWS_WITH(recommender.load_session(sealed(longer)), Catch::Contains("more than 8"));
  }
  {  // a NaN in the cache (the last values before the output vector's length and values)
    std::string poisoned = body;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::size_t at = poisoned.size() - (4 + 12 * sizeof(float)) - sizeof(float);
    std::memcpy(&poisoned[at], &nan, sizeof nan);
    CHECK_THROWS_WITH(recommender.load_session(sealed(poisoned)), Catch::Contains("cache is not finite"));
  }
  // The engine and the session are still usable.
  CHECK(recommender.recommend_session(session).size() == 10);
}

TEST_CASE("Session errors leave the session unchanged", "[serve][session][errors]") {
  const serve::Recommender<models::SASRec<float>> recommender(sasrec());
  auto session = recommender.start_session();
  CHECK_THROWS_WITH(recommender.recommend_session(session), Catch::Contains("no events yet"));
  recommender.append(session, 5);
  const auto before = session.user;
  CHECK_THROWS_WITH(recommender.append(session, 0), Catch::Contains("item 0 is outside 1..300"));
  CHECK_THROWS_WITH(recommender.append(session, kItems + 1), Catch::Contains("outside 1..300"));
  CHECK(session.events == 1);
  CHECK(session.user == before);
  CHECK_THROWS_WITH(recommender.start_session({1, 400}), Catch::Contains("item 400 at position 1"));
  // A hand-edited session is refused with its reason.
  auto edited = session;
  edited.window.push_back(7);
  CHECK_THROWS_WITH(recommender.recommend_session(edited), Catch::Contains("it counts 1 events but holds 2"));
  CHECK(recommender.recommend_session(session, {5}).size() == 5);
}
