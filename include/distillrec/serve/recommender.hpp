// distillrec/serve/recommender.hpp
//
// Thread-safe top-K recommendation on a CPU. The Recommender holds the model through a
// shared_ptr to const: weights are immutable while it serves, so any number of threads may call
// its queries at once (every query is const). Each call borrows a workspace (activations, score
// block, heaps) from a pool, so steady-state serving does not allocate.
//
//   recommend(history, options)          top-k items for one chronological history (an overload
//                                        fills a caller's vector: once warm, an fp32 call
//                                        allocates nothing)
//   recommend_batch(histories, options)  the same for many users, in blocks of users
//   rerank(history, candidates)          the model's scores of a caller's candidate items, best
//                                        first (re-ranking another system's shortlist)
//   user_vector(history)                 the output vector the items are scored against
//   start_session(history), append(session, item), recommend_session(session, options)
//                                        incremental serving (serve/session.hpp): an append
//                                        updates the session's output vector (incrementally
//                                        where the model can), a recommendation only scores
//   save_session(session), load_session(bytes)
//                                        sessions as checked bytes, tied to this model
//
// Scoring follows RecommenderConfig::scoring (serve/item_scorer.hpp: fp32, bf16 or int8, the
// catalogue streamed in blocks of items, so memory per query is bounded whatever its size).
// The history's items are left out of the results unless `exclude_history` is false; `exclude`
// leaves out any further items the caller gives.
//
// Thread policy (RecommenderConfig::threads):
//   kLibrary  recommend_batch splits its users over the library's OpenMP threads
//             (parallel::set_num_threads); a single-user call runs on the calling thread, its
//             GEMMs free to use the library's threads when called outside a parallel region.
//   kSerial   every call runs on the calling thread alone: no OpenMP team is started, inside
//             the library or oneDNN. For hosts that run their own thread pools and call the
//             Recommender from many threads at once.
// Bad input is an exception naming what is wrong (an empty history, an item outside 1..N, k
// outside 1..N); the Recommender stays usable afterwards.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/serve/item_scorer.hpp"
#include "distillrec/serve/scoring.hpp"
#include "distillrec/serve/session.hpp"

#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace distillrec::serve {

enum class ThreadPolicy { kLibrary, kSerial };

/// How a Recommender serves (fixed when it is built).
struct RecommenderConfig {
  ScoringPolicy scoring;
  ThreadPolicy threads = ThreadPolicy::kLibrary;
};

/// One query's options.
struct RecommendOptions {
  Index k = 10;
  bool exclude_history = true;
  const Sequence* exclude = nullptr;  // further items to leave out (ids outside 1..N ignored)
};

template <typename Model>
class Recommender {
  static_assert(models::check_scoring_model<Model>());

 public:
  using T = typename Model::Scalar;

  explicit Recommender(std::shared_ptr<const Model> model, RecommenderConfig config = {})
      : model_(std::move(model)), config_(config) {
    if (!model_) throw ConfigError("Recommender: no model");
    scorer_ = std::make_unique<ItemScorer<T>>(model_->output_weights(), config_.scoring);
  }

  const Model& model() const { return *model_; }
  const RecommenderConfig& config() const { return config_; }
  /// The scoring path in use (ItemScorer::description() says what runs on this machine).
  const ItemScorer<T>& scorer() const { return *scorer_; }
  Index num_items() const { return static_cast<Index>(model_->num_items()); }

  /// Top-k for one history (non-empty, ids in 1..N). Safe to call from many threads at once.
  std::vector<ScoredItem> recommend(const Sequence& history, const RecommendOptions& options = {}) const {
    std::vector<ScoredItem> out;
    recommend(history, options, out);
    return out;
  }

  /// The same into `out` (reused: once warm, an fp32 call allocates nothing).
  void recommend(const Sequence& history, const RecommendOptions& options, std::vector<ScoredItem>& out) const {
    check_k(options.k);
    check_history(history, 0);
    Serial serial(config_.threads == ThreadPolicy::kSerial);
    Lease slot(*this);
    slot->histories.resize(1);
    slot->histories[0].assign(history.begin(), history.end());
    encode(*slot);
    select(*slot, 0, 1, options);
    out.assign(slot->top[0].begin(), slot->top[0].end());
  }

  /// Top-k for every history, in blocks of `block_users` (> 0): across the library's threads
  /// (kLibrary) or on the calling thread (kSerial).
  std::vector<std::vector<ScoredItem>> recommend_batch(const std::vector<Sequence>& histories,
                                                       const RecommendOptions& options = {},
                                                       Index block_users = 128) const {
    if (block_users <= 0) {
      throw ConfigError(distillrec::detail::concat("Recommender::recommend_batch: block_users must be positive, got ", block_users));
    }
    check_k(options.k);
    for (std::size_t i = 0; i < histories.size(); ++i) check_history(histories[i], static_cast<Index>(i));
    const Index n = static_cast<Index>(histories.size());
    std::vector<std::vector<ScoredItem>> results(static_cast<std::size_t>(n));
    const Index num_blocks = (n + block_users - 1) / block_users;
    Serial serial(config_.threads == ThreadPolicy::kSerial);
    auto run_block = [&](Slot& slot, Index b) {
      const Index begin = b * block_users, end = std::min(n, begin + block_users);
      slot.histories.assign(histories.begin() + begin, histories.begin() + end);
      encode(slot);
      select(slot, 0, end - begin, options);
      for (Index i = begin; i < end; ++i) results[static_cast<std::size_t>(i)] = slot.top[static_cast<std::size_t>(i - begin)];
    };
    if (config_.threads == ThreadPolicy::kSerial || num_blocks <= 1 || parallel::in_parallel()) {
      Lease slot(*this);
      for (Index b = 0; b < num_blocks; ++b) run_block(*slot, b);
      return results;
    }
    parallel::ExceptionCollector errors;
#pragma omp parallel
    {
      Lease slot(*this);
#pragma omp for schedule(dynamic, 1)
      for (Index b = 0; b < num_blocks; ++b) errors.run([&] { run_block(*slot, b); });
    }
    errors.rethrow();
    return results;
  }

  /// The model's scores of `candidates` (ids in 1..N) for one history, best first (ties to the
  /// lower id); fp32 whatever the scoring policy. Candidates are scored even if in the history.
  std::vector<ScoredItem> rerank(const Sequence& history, const Sequence& candidates) const {
    check_history(history, 0);
    const auto head = model_->output_weights();
    for (ItemId item : candidates) {
      if (item < 1 || item > head.num_items()) {
        throw ShapeError(distillrec::detail::concat("Recommender::rerank: candidate item ", item, " is outside 1..", head.num_items()));
      }
    }
    Serial serial(config_.threads == ThreadPolicy::kSerial);
    Lease slot(*this);
    slot->histories.resize(1);
    slot->histories[0].assign(history.begin(), history.end());
    encode(*slot);
    std::vector<ScoredItem> out;
    out.reserve(candidates.size());
    for (ItemId item : candidates) {
      const T s = head.score(slot->user_vectors.row(0), item);
      if (s != s) throw Error(distillrec::detail::concat("Recommender::rerank: NaN score for item ", item));
      out.push_back({item, static_cast<float>(s)});
    }
    std::stable_sort(out.begin(), out.end(), detail::better);
    return out;
  }

  /// The output vector of one history (what every item is scored against), length d.
  std::vector<T> user_vector(const Sequence& history) const {
    check_history(history, 0);
    Serial serial(config_.threads == ThreadPolicy::kSerial);
    Lease slot(*this);
    slot->histories.resize(1);
    slot->histories[0].assign(history.begin(), history.end());
    encode(*slot);
    return std::vector<T>(slot->user_vectors.data(), slot->user_vectors.data() + slot->user_vectors.cols());
  }

  // ---- sessions (serve/session.hpp) ---------------------------------------------------------

  /// A session holding `history` (chronological; may be empty).
  Session<T> start_session(const Sequence& history = {}) const {
    static_assert(models::contract::has_max_length<Model>::value, "sessions need a model with `Index max_length() const`");
    if (!history.empty()) check_history(history, 0);
    Session<T> session;
    for (ItemId item : history) append(session, item);
    return session;
  }

  /// Appends one event to `session` (an item in 1..N). On an error the session is unchanged.
  void append(Session<T>& session, ItemId item) const {
    static_assert(models::contract::has_max_length<Model>::value, "sessions need a model with `Index max_length() const`");
    if (item < 1 || item > num_items()) {
      throw ShapeError(distillrec::detail::concat("Recommender::append: item ", item, " is outside 1..", num_items()));
    }
    check_session_shape(session);
    const Index window = model_->max_length(), d = scorer_->dim();
    Serial serial(config_.threads == ThreadPolicy::kSerial);
    Lease slot(*this);
    const bool slides = static_cast<Index>(session.window.size()) >= window;
    if constexpr (models::contract::has_session_append<Model>::value) {
      if (!session.slid && !slides) {
        // Into the slot's copy of the cache, committed only when everything succeeded (the
        // session stays unchanged on any error, out of memory included; a model may advance
        // its cache in place, e.g. GRU4Rec's states). The committed buffer is swapped with the
        // slot's, so steady-state appends allocate nothing.
        if (session.window.capacity() < static_cast<std::size_t>(window) + 1) session.window.reserve(static_cast<std::size_t>(window) + 1);
        const auto size = static_cast<std::size_t>(model_->session_cache_size());
        auto& cache = slot->session_cache;
        if (session.cache.size() == size) {
          cache.assign(session.cache.begin(), session.cache.end());
        } else {
          cache.assign(size, T(0));
        }
        slot->user_vectors.resize(1, d);
        model_->session_append(cache.data(), static_cast<Index>(session.window.size()), item, slot->user_vectors,
                               slot->workspace);
        session.user.assign(slot->user_vectors.data(), slot->user_vectors.data() + d);  // no allocation once sized
        session.cache.swap(cache);
        session.window.push_back(item);  // capacity reserved: cannot throw
        ++session.events;
        return;
      }
    }
    // Re-encode the window with the new item (the newest max_length items).
    auto& h = slot->histories;
    h.resize(1);
    h[0].reserve(static_cast<std::size_t>(window) + 1);  // every window buffer, swapped below, holds a full window
    h[0].assign(session.window.begin() + (slides ? 1 : 0), session.window.end());
    h[0].push_back(item);
    slot->user_vectors.resize(1, d);
    model_->encode(h, slot->user_vectors, slot->workspace);
    session.user.assign(slot->user_vectors.data(), slot->user_vectors.data() + d);  // no allocation once sized
    session.window.swap(h[0]);  // nothing below throws
    if (slides) {
      session.slid = true;
      session.cache.clear();
    }
    ++session.events;
  }

  /// Top-k for a session (at least one event); the window's items are left out unless
  /// `exclude_history` is false. No encoding: the session's output vector is scored.
  void recommend_session(const Session<T>& session, const RecommendOptions& options, std::vector<ScoredItem>& out) const {
    check_k(options.k);
    if (session.empty()) throw ShapeError("Recommender: the session has no events yet");
    check_session_shape(session);
    Serial serial(config_.threads == ThreadPolicy::kSerial);
    Lease slot(*this);
    slot->histories.resize(1);
    slot->histories[0].assign(session.window.begin(), session.window.end());
    slot->user_vectors.resize(1, scorer_->dim());
    std::copy(session.user.begin(), session.user.end(), slot->user_vectors.data());
    select(*slot, 0, 1, options);
    out.assign(slot->top[0].begin(), slot->top[0].end());
  }

  std::vector<ScoredItem> recommend_session(const Session<T>& session, const RecommendOptions& options = {}) const {
    std::vector<ScoredItem> out;
    recommend_session(session, options, out);
    return out;
  }

  /// The session as bytes (serve/session.hpp), loadable by a Recommender of the same model.
  std::string save_session(const Session<T>& session) const {
    check_session_shape(session);
    detail::SessionWriter w;
    w.raw(detail::kSessionMagic, sizeof detail::kSessionMagic);
    w.put(detail::kSessionVersion);
    w.put(static_cast<std::uint8_t>(sizeof(T)));
    w.put(fingerprint());
    w.put(session.events);
    w.put(static_cast<std::uint8_t>(session.slid ? 1 : 0));
    std::vector<std::uint32_t> items(session.window.begin(), session.window.end());
    w.put_vector(items);
    w.put_vector(session.cache);
    w.put_vector(session.user);
    return w.finish();
  }

  /// A session from save_session's bytes; a blob that is truncated, corrupt, of another format
  /// version or made by another model (other weights or configuration) is an Error saying so.
  Session<T> load_session(const std::string& bytes) const {
    detail::SessionReader r(bytes);
    const auto version = r.get<std::uint32_t>("the version");
    if (version != detail::kSessionVersion) {
      detail::SessionReader::fail(distillrec::detail::concat("format version ", version, ", this library reads ", detail::kSessionVersion));
    }
    const auto scalar = r.get<std::uint8_t>("the scalar size");
    if (scalar != sizeof(T)) detail::SessionReader::fail(distillrec::detail::concat("it holds ", int{scalar}, "-byte values, this model ", sizeof(T)));
    if (r.get<std::uint64_t>("the model fingerprint") != fingerprint()) {
      detail::SessionReader::fail("it was made by another model (its fingerprint differs from this model's weights and configuration)");
    }
    Session<T> session;
    session.events = r.get<std::uint64_t>("the event count");
    session.slid = r.get<std::uint8_t>("the slid flag") != 0;
    const auto window = static_cast<std::size_t>(model_->max_length());
    const auto items = r.get_vector<std::uint32_t>("window", window);
    session.window.assign(items.begin(), items.end());
    session.cache = r.get_vector<T>("cache", static_cast<std::size_t>(1) << 28);
    session.user = r.get_vector<T>("output vector", static_cast<std::size_t>(scorer_->dim()));
    r.done();
    try {
      check_session_shape(session);
    } catch (const Error& e) {
      detail::SessionReader::fail(e.what());
    }
    return session;
  }

  /// FNV-1a of the model's name, configuration and weights (computed once, on first use).
  std::uint64_t fingerprint() const {
    std::call_once(fingerprint_once_, [&] {
      detail::Fnv1a h;
      if constexpr (models::contract::has_model_name<Model>::value) h.add(std::string(Model::kModelName));
      if constexpr (models::contract::has_config_json<Model>::value && models::contract::has_config<Model>::value) {
        h.add(model_->config().to_json().dump());
      }
      if constexpr (models::contract::has_parameters<Model>::value) {
        const auto& p = model_->parameters();
        h.add(p.values(), static_cast<std::size_t>(p.buffer_size()) * sizeof(T));
      } else {
        const auto head = model_->output_weights();
        h.add(head.weight.data(), static_cast<std::size_t>(head.weight.size()) * sizeof(T));
        if (head.bias != nullptr) h.add(head.bias, static_cast<std::size_t>(head.num_items()) * sizeof(T));
      }
      fingerprint_ = h.value();
    });
    return fingerprint_;
  }

 private:
  struct Slot {
    typename Model::Workspace workspace;
    typename ItemScorer<T>::Workspace scoring;
    std::vector<Sequence> histories;
    Matrix<T> user_vectors;
    std::vector<std::vector<ScoredItem>> top;
    std::vector<Sequence> merged;
    std::vector<T> session_cache;  // a session's cache while an append runs
  };

  // Borrows a pooled slot for one call and returns it on every path, exceptions included.
  class Lease {
   public:
    explicit Lease(const Recommender& owner) : owner_(owner), slot_(owner.acquire()) {}
    ~Lease() { owner_.release(std::move(slot_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Slot& operator*() const { return *slot_; }
    Slot* operator->() const { return slot_.get(); }

   private:
    const Recommender& owner_;
    std::unique_ptr<Slot> slot_;
  };

  // kSerial: the calling thread's OpenMP thread count is 1 for the call (a per-thread setting,
  // restored afterwards), so neither the library nor oneDNN starts a team.
  class Serial {
   public:
    explicit Serial(bool active) : active_(active && !parallel::in_parallel()) {
      if (active_) {
        saved_ = parallel::max_threads();
        parallel::set_num_threads(1);
      }
    }
    ~Serial() {
      if (active_) parallel::set_num_threads(saved_);
    }
    Serial(const Serial&) = delete;
    Serial& operator=(const Serial&) = delete;

   private:
    bool active_;
    int saved_ = 1;
  };

  std::unique_ptr<Slot> acquire() const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!pool_.empty()) {
        auto slot = std::move(pool_.back());
        pool_.pop_back();
        return slot;
      }
    }
    return std::make_unique<Slot>();
  }

  void release(std::unique_ptr<Slot> slot) const noexcept {
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      pool_.push_back(std::move(slot));
    } catch (...) {  // out of memory growing the pool: the slot is simply freed
    }
  }

  void check_k(Index k) const {
    if (k < 1 || k > num_items()) {
      throw ConfigError(distillrec::detail::concat("Recommender: k must be in 1..", num_items(), " (the catalogue), got ", k));
    }
  }

  void check_history(const Sequence& history, Index index) const {
    if (history.empty()) throw ShapeError(distillrec::detail::concat("Recommender: history ", index, " is empty"));
    for (std::size_t j = 0; j < history.size(); ++j) {
      if (history[j] < 1 || history[j] > num_items()) {
        throw ShapeError(distillrec::detail::concat("Recommender: history ", index, " has item ", history[j], " at position ", j,
                                                    ", outside 1..", num_items()));
      }
    }
  }

  // A session this model could have made: lengths, ids and cache consistent.
  void check_session_shape(const Session<T>& session) const {
    const auto window = static_cast<std::size_t>(model_->max_length());
    const std::size_t n = session.window.size();
    auto bad = [](const std::string& why) { throw ShapeError("Recommender: invalid session: " + why); };
    if (n > window) bad(distillrec::detail::concat("its window has ", n, " items, the model reads ", window));
    if (session.events < n) bad(distillrec::detail::concat("it counts ", session.events, " events but holds ", n));
    if (session.slid && n != window) bad("it has slid but its window is not full");
    if (!session.slid && session.events != n) bad("its event count and window disagree");
    for (std::size_t j = 0; j < n; ++j) {
      if (session.window[j] < 1 || session.window[j] > num_items()) {
        bad(distillrec::detail::concat("item ", session.window[j], " at position ", j, " is outside 1..", num_items()));
      }
    }
    if (session.user.size() != (n == 0 ? 0 : static_cast<std::size_t>(scorer_->dim()))) bad("its output vector has the wrong length");
    std::size_t cache = 0;
    if constexpr (models::contract::has_session_append<Model>::value) {
      if (!session.slid && n > 0) cache = static_cast<std::size_t>(model_->session_cache_size());
    }
    if (session.cache.size() != cache) bad(distillrec::detail::concat("its cache has ", session.cache.size(), " values, expected ", cache));
    for (T v : session.user) {
      if (!std::isfinite(v)) bad("its output vector is not finite");
    }
    for (T v : session.cache) {
      if (!std::isfinite(v)) bad("its cache is not finite");
    }
  }

  void encode(Slot& slot) const {
    slot.user_vectors.resize(static_cast<Index>(slot.histories.size()), scorer_->dim());
    model_->encode(slot.histories, slot.user_vectors, slot.workspace);
  }

  // slot.top[r] = top-k of user rows begin..end-1, leaving out what the options say.
  void select(Slot& slot, Index begin, Index end, const RecommendOptions& options) const {
    const Index rows = end - begin;
    const auto users = slot.user_vectors.middleRows(begin, rows);
    const bool both = options.exclude != nullptr && options.exclude_history;
    if (both) {  // the history and the caller's items: their union per row (slot memory, reused)
      slot.merged.resize(static_cast<std::size_t>(rows));
      for (Index r = 0; r < rows; ++r) {
        auto& m = slot.merged[static_cast<std::size_t>(r)];
        const auto& h = slot.histories[static_cast<std::size_t>(begin + r)];
        m.assign(h.begin(), h.end());
        m.insert(m.end(), options.exclude->begin(), options.exclude->end());
      }
    }
    auto excluded = [&](Index r) -> const Sequence* {
      if (both) return &slot.merged[static_cast<std::size_t>(r)];
      if (options.exclude_history) return &slot.histories[static_cast<std::size_t>(begin + r)];
      return options.exclude;
    };
    scorer_->top_k(users, options.k, excluded, slot.top, slot.scoring, config_.threads == ThreadPolicy::kLibrary);
  }

  std::shared_ptr<const Model> model_;
  RecommenderConfig config_;
  std::unique_ptr<ItemScorer<T>> scorer_;
  mutable std::mutex mutex_;
  mutable std::vector<std::unique_ptr<Slot>> pool_;
  mutable std::once_flag fingerprint_once_;
  mutable std::uint64_t fingerprint_ = 0;
};

}  // namespace distillrec::serve
