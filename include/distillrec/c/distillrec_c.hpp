// distillrec/c/distillrec_c.hpp
//
// The implementation of the C interface (distillrec/c/distillrec.h). Header-only like the rest
// of the library: exactly one translation unit of a program defines DISTILLREC_C_IMPLEMENTATION
// before including this header, which then emits the extern "C" functions. The package builds
// that unit as the shared library libdistillrec_c.so (CMake target distillrec::c); a C++ host
// may instead compile it into its own binary.
//
// Every entry point catches everything: library exceptions become status codes with their
// message (FormatError -> FORMAT, ShapeError -> OUT_OF_RANGE, ConfigError -> INVALID_ARGUMENT,
// other errors while opening a file -> IO, anything else -> INTERNAL). Handles carry a tag, so a
// session passed where a model is expected (or the reverse, or a freed handle whose memory was
// not reused) is reported instead of misread; a pointer to anything else is undefined.
#pragma once

#include "distillrec/c/distillrec.h"

#ifdef DISTILLREC_C_IMPLEMENTATION

#include "distillrec/models/registry.hpp"
#include "distillrec/serve/recommender.hpp"

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace distillrec::c_api {

inline constexpr std::uint64_t kModelTag = 0x4d444c5244525354ull;    // live model handle
inline constexpr std::uint64_t kSessionTag = 0x5353455344525354ull;  // live session handle

/// The Recommender of whichever model a checkpoint holds, behind one interface.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual Index num_items() const = 0;
  virtual void top_k(const Sequence& history, const serve::RecommendOptions& options, std::vector<serve::ScoredItem>& out) const = 0;
  virtual std::vector<serve::ScoredItem> rerank(const Sequence& history, const Sequence& candidates) const = 0;
  virtual void append(serve::Session<float>& session, ItemId item) const = 0;
  virtual void session_top_k(const serve::Session<float>& session, const serve::RecommendOptions& options,
                             std::vector<serve::ScoredItem>& out) const = 0;
  virtual std::string save(const serve::Session<float>& session) const = 0;
  virtual serve::Session<float> load(const std::string& bytes) const = 0;
};

template <typename Model>
class EngineOf final : public Engine {
 public:
  EngineOf(std::shared_ptr<const Model> model, serve::RecommenderConfig config) : recommender_(std::move(model), config) {}
  Index num_items() const override { return recommender_.num_items(); }
  void top_k(const Sequence& history, const serve::RecommendOptions& options, std::vector<serve::ScoredItem>& out) const override {
    recommender_.recommend(history, options, out);
  }
  std::vector<serve::ScoredItem> rerank(const Sequence& history, const Sequence& candidates) const override {
    return recommender_.rerank(history, candidates);
  }
  void append(serve::Session<float>& session, ItemId item) const override { recommender_.append(session, item); }
  void session_top_k(const serve::Session<float>& session, const serve::RecommendOptions& options,
                     std::vector<serve::ScoredItem>& out) const override {
    recommender_.recommend_session(session, options, out);
  }
  std::string save(const serve::Session<float>& session) const override { return recommender_.save_session(session); }
  serve::Session<float> load(const std::string& bytes) const override { return recommender_.load_session(bytes); }
  const serve::Recommender<Model>& recommender() const { return recommender_; }

 private:
  serve::Recommender<Model> recommender_;
};

inline distillrec_status fail(distillrec_error* err, distillrec_status code, const std::string& message) {
  if (err != nullptr) {
    err->code = code;
    std::snprintf(err->message, sizeof err->message, "%s", message.c_str());
  }
  return code;
}

inline distillrec_status ok(distillrec_error* err) {
  if (err != nullptr) {
    err->code = DISTILLREC_OK;
    err->message[0] = '\0';
  }
  return DISTILLREC_OK;
}

/// A null or mismatched argument of a C call.
struct InvalidArgument : std::exception {
  explicit InvalidArgument(std::string m) : message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
  std::string message;
};

/// Runs body() and turns any exception into a status; `opening` maps plain errors to IO and
/// configuration errors (an unknown model name in the file) to FORMAT.
template <typename Body>
distillrec_status call(distillrec_error* err, Body&& body, bool opening = false) noexcept {
  try {
    body();
    return ok(err);
  } catch (const InvalidArgument& e) {
    return fail(err, DISTILLREC_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const FormatError& e) {
    return fail(err, DISTILLREC_ERROR_FORMAT, e.what());
  } catch (const ShapeError& e) {
    return fail(err, DISTILLREC_ERROR_OUT_OF_RANGE, e.what());
  } catch (const ConfigError& e) {
    return fail(err, opening ? DISTILLREC_ERROR_FORMAT : DISTILLREC_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(err, DISTILLREC_ERROR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(err, opening ? DISTILLREC_ERROR_IO : DISTILLREC_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(err, DISTILLREC_ERROR_INTERNAL, "unknown error");
  }
}

inline Sequence to_sequence(const std::int32_t* items, std::size_t length, const char* what) {
  if (items == nullptr && length > 0) throw InvalidArgument(std::string(what) + " is NULL with a non-zero length");
  return Sequence(items, items + length);
}

inline void write_items(const std::vector<serve::ScoredItem>& items, distillrec_scored_item* out, std::size_t* count) {
  for (std::size_t i = 0; i < items.size(); ++i) out[i] = distillrec_scored_item{static_cast<std::int32_t>(items[i].item), items[i].score};
  if (count != nullptr) *count = items.size();
}

}  // namespace distillrec::c_api

struct distillrec_model {
  std::uint64_t tag = distillrec::c_api::kModelTag;
  std::unique_ptr<distillrec::c_api::Engine> engine;
  std::string name, scoring;
};

struct distillrec_session {
  std::uint64_t tag = distillrec::c_api::kSessionTag;
  const distillrec_model* owner = nullptr;
  distillrec::serve::Session<float> session;
};

namespace distillrec::c_api {

inline const distillrec_model& model_of(const distillrec_model* model) {
  if (model == nullptr) throw InvalidArgument("the model handle is NULL");
  if (model->tag != kModelTag) throw InvalidArgument("the model handle is not a live model (freed, or another kind of handle)");
  return *model;
}

inline distillrec_session& session_of(const distillrec_model& model, distillrec_session* session) {
  if (session == nullptr) throw InvalidArgument("the session handle is NULL");
  if (session->tag != kSessionTag) throw InvalidArgument("the session handle is not a live session (freed, or another kind of handle)");
  if (session->owner != &model) throw InvalidArgument("the session belongs to another model");
  return *session;
}

inline void check_k(std::int32_t k) {
  if (k < 1) throw ConfigError(distillrec::detail::concat("k must be at least 1, got ", k));
}

}  // namespace distillrec::c_api

extern "C" {

DISTILLREC_C_EXPORT distillrec_status distillrec_open(const char* checkpoint_path, const char* precision, int serial,
                                                      distillrec_model** model, distillrec_error* err) {
  using namespace distillrec;
  if (model == nullptr) return c_api::fail(err, DISTILLREC_ERROR_INVALID_ARGUMENT, "distillrec_open: the output pointer is NULL");
  *model = nullptr;
  if (checkpoint_path == nullptr) return c_api::fail(err, DISTILLREC_ERROR_INVALID_ARGUMENT, "distillrec_open: the checkpoint path is NULL");
  serve::RecommenderConfig config;
  config.threads = serial != 0 ? serve::ThreadPolicy::kSerial : serve::ThreadPolicy::kLibrary;
  const distillrec_status parsed = c_api::call(err, [&] { config.scoring.precision = serve::parse_precision(precision ? precision : "fp32"); });
  if (parsed != DISTILLREC_OK) return parsed;
  auto handle = std::unique_ptr<distillrec_model>(new (std::nothrow) distillrec_model);
  if (!handle) return c_api::fail(err, DISTILLREC_ERROR_INTERNAL, "out of memory");
  const distillrec_status status = c_api::call(
      err,
      [&] {
        models::with_checkpoint_model<float>(checkpoint_path, [&](auto loaded) {
          using Model = typename decltype(loaded)::element_type;
          auto engine = std::make_unique<c_api::EngineOf<Model>>(std::shared_ptr<const Model>(std::move(loaded)), config);
          handle->name = Model::kModelName;
          handle->scoring = engine->recommender().scorer().description();
          handle->engine = std::move(engine);
        });
      },
      /*opening=*/true);
  if (status != DISTILLREC_OK) return status;
  *model = handle.release();
  return status;
}

DISTILLREC_C_EXPORT void distillrec_close(distillrec_model* model) {
  if (model == nullptr || model->tag != distillrec::c_api::kModelTag) return;
  model->tag = 0;
  delete model;
}

DISTILLREC_C_EXPORT distillrec_status distillrec_model_info(const distillrec_model* model, int64_t* num_items, const char** model_name,
                                                            const char** scoring, distillrec_error* err) {
  using namespace distillrec;
  return c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    if (num_items != nullptr) *num_items = static_cast<int64_t>(m.engine->num_items());
    if (model_name != nullptr) *model_name = m.name.c_str();
    if (scoring != nullptr) *scoring = m.scoring.c_str();
  });
}

DISTILLREC_C_EXPORT distillrec_status distillrec_top_k(const distillrec_model* model, const int32_t* history, size_t length, int32_t k,
                                                       int exclude_history, distillrec_scored_item* out, size_t* count,
                                                       distillrec_error* err) {
  using namespace distillrec;
  if (count != nullptr) *count = 0;
  return c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    if (out == nullptr) throw c_api::InvalidArgument("the output array is NULL");
    c_api::check_k(k);
    std::vector<serve::ScoredItem> top;
    m.engine->top_k(c_api::to_sequence(history, length, "the history"), {k, exclude_history != 0, nullptr}, top);
    c_api::write_items(top, out, count);
  });
}

DISTILLREC_C_EXPORT distillrec_status distillrec_rerank(const distillrec_model* model, const int32_t* history, size_t length,
                                                        const int32_t* candidates, size_t count, distillrec_scored_item* out,
                                                        distillrec_error* err) {
  using namespace distillrec;
  return c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    if (out == nullptr && count > 0) throw c_api::InvalidArgument("the output array is NULL");
    const auto ranked = m.engine->rerank(c_api::to_sequence(history, length, "the history"),
                                         c_api::to_sequence(candidates, count, "the candidates"));
    c_api::write_items(ranked, out, nullptr);
  });
}

DISTILLREC_C_EXPORT distillrec_status distillrec_session_create(const distillrec_model* model, distillrec_session** session,
                                                                distillrec_error* err) {
  using namespace distillrec;
  if (session != nullptr) *session = nullptr;
  return c_api::call(err, [&] {
    c_api::model_of(model);
    if (session == nullptr) throw c_api::InvalidArgument("the output pointer is NULL");
    auto s = std::make_unique<distillrec_session>();
    s->owner = model;
    *session = s.release();
  });
}

DISTILLREC_C_EXPORT distillrec_status distillrec_session_append(const distillrec_model* model, distillrec_session* session, int32_t item,
                                                                distillrec_error* err) {
  using namespace distillrec;
  return c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    m.engine->append(c_api::session_of(m, session).session, item);
  });
}

DISTILLREC_C_EXPORT distillrec_status distillrec_session_top_k(const distillrec_model* model, const distillrec_session* session, int32_t k,
                                                               int exclude_history, distillrec_scored_item* out, size_t* count,
                                                               distillrec_error* err) {
  using namespace distillrec;
  if (count != nullptr) *count = 0;
  return c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    const auto& s = c_api::session_of(m, const_cast<distillrec_session*>(session));
    if (out == nullptr) throw c_api::InvalidArgument("the output array is NULL");
    c_api::check_k(k);
    std::vector<serve::ScoredItem> top;
    m.engine->session_top_k(s.session, {k, exclude_history != 0, nullptr}, top);
    c_api::write_items(top, out, count);
  });
}

DISTILLREC_C_EXPORT distillrec_status distillrec_session_save(const distillrec_model* model, const distillrec_session* session, void* buffer,
                                                              size_t capacity, size_t* size, distillrec_error* err) {
  using namespace distillrec;
  std::size_t needed = 0;
  const distillrec_status status = c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    const auto& s = c_api::session_of(m, const_cast<distillrec_session*>(session));
    if (size == nullptr) throw c_api::InvalidArgument("the size pointer is NULL");
    const std::string bytes = m.engine->save(s.session);
    needed = bytes.size();
    *size = needed;
    if (buffer != nullptr && capacity >= needed) std::memcpy(buffer, bytes.data(), needed);
  });
  if (status != DISTILLREC_OK) return status;
  if (buffer == nullptr || capacity < needed) {
    return c_api::fail(err, DISTILLREC_ERROR_BUFFER_TOO_SMALL,
                       distillrec::detail::concat("the session needs ", needed, " bytes, the buffer has ", buffer == nullptr ? 0 : capacity));
  }
  return status;
}

DISTILLREC_C_EXPORT distillrec_status distillrec_session_load(const distillrec_model* model, const void* bytes, size_t size,
                                                              distillrec_session** session, distillrec_error* err) {
  using namespace distillrec;
  if (session != nullptr) *session = nullptr;
  return c_api::call(err, [&] {
    const auto& m = c_api::model_of(model);
    if (session == nullptr) throw c_api::InvalidArgument("the output pointer is NULL");
    if (bytes == nullptr && size > 0) throw c_api::InvalidArgument("the bytes are NULL with a non-zero size");
    auto s = std::make_unique<distillrec_session>();
    s->owner = model;
    s->session = m.engine->load(bytes != nullptr ? std::string(static_cast<const char*>(bytes), size) : std::string());
    *session = s.release();
  });
}

DISTILLREC_C_EXPORT void distillrec_session_free(distillrec_session* session) {
  if (session == nullptr || session->tag != distillrec::c_api::kSessionTag) return;
  session->tag = 0;
  delete session;
}

}  // extern "C"

#endif  // DISTILLREC_C_IMPLEMENTATION
