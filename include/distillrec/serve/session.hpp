// distillrec/serve/session.hpp
//
// A user's session for incremental serving: events are appended one at a time and the user's
// output vector is kept up to date, so a recommendation for the session scores the catalogue
// without encoding anything. Recommender::start_session / append / recommend_session use it;
// save_session / load_session turn it into bytes and back (a host may keep sessions in its own
// store between requests).
//
// What an append costs depends on the model (models/model.hpp, session_append):
//   GRU4Rec   one GRU step per layer from the cached states, while the session fits the
//             model's window (max_length items);
//   LLMRec    the new token only, through every block, attending over the cached rotated keys
//             and values of the earlier tokens (rotary positions count from the oldest item, so
//             nothing cached moves while the window fills); the cache holds 2 * layers *
//             max_length * kv_dim values;
//   SASRec    the window is re-encoded: its learned positions count from the newest item, so
//             every append moves every position and nothing can be reused (an exact re-encode
//             rather than a position variant that would change the model).
// Once a session is longer than the window, the window slides: the newest max_length items are
// what the model reads, exactly as encode() of the whole history, and every append re-encodes
// them (a state that has seen the dropped item cannot forget it).
//
// Serialised form (the host's byte order, little-endian on x86-64 and ARM64): "DRSESSN1" magic, format version (u32), the model's
// fingerprint (u64: FNV-1a of its name, configuration and weights), event count (u64), slid
// flag (u8), window length (u32) and item ids (u32 each), cache and output vector (u32 length
// + f32/f64 values each), FNV-1a checksum (u64) of everything before it. Loading checks every
// field: a truncated or corrupt blob, or one made by another model, is a clear error.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace distillrec::serve {

template <typename T>
struct Session {
  Sequence window;            // the newest items the model reads (at most its max_length)
  std::uint64_t events = 0;   // items appended in total
  bool slid = false;          // more events than the window holds: appends re-encode
  std::vector<T> cache;       // the model's incremental state (empty when it has none)
  std::vector<T> user;        // the output vector of the window (empty before the first event)

  bool empty() const { return events == 0; }
};

namespace detail {

// detail::concat written in this namespace means the library-wide helper.
using distillrec::detail::concat;

inline constexpr char kSessionMagic[8] = {'D', 'R', 'S', 'E', 'S', 'S', 'N', '1'};
inline constexpr std::uint32_t kSessionVersion = 1;

/// FNV-1a, 64 bit.
class Fnv1a {
 public:
  void add(const void* data, std::size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < bytes; ++i) {
      hash_ ^= p[i];
      hash_ *= 0x100000001b3ull;
    }
  }
  void add(const std::string& s) {
    const std::uint64_t n = s.size();
    add(&n, sizeof n);
    add(s.data(), s.size());
  }
  std::uint64_t value() const { return hash_; }

 private:
  std::uint64_t hash_ = 0xcbf29ce484222325ull;
};

class SessionWriter {
 public:
  template <typename V>
  void put(V value) {
    static_assert(std::is_trivially_copyable<V>::value);
    const auto* p = reinterpret_cast<const char*>(&value);
    bytes_.append(p, sizeof value);
  }
  template <typename V>
  void put_vector(const std::vector<V>& values) {
    put(static_cast<std::uint32_t>(values.size()));
    bytes_.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(V));
  }
  std::string finish() {
    Fnv1a h;
    h.add(bytes_.data(), bytes_.size());
    put(h.value());
    return std::move(bytes_);
  }
  void raw(const char* data, std::size_t n) { bytes_.append(data, n); }

 private:
  std::string bytes_;
};

class SessionReader {
 public:
  explicit SessionReader(const std::string& bytes) : bytes_(bytes) {
    constexpr std::size_t kMinimum = sizeof kSessionMagic + sizeof(std::uint64_t);
    if (bytes.size() < kMinimum) fail(distillrec::detail::concat("it has ", bytes.size(), " bytes, fewer than any session's"));
    if (std::memcmp(bytes.data(), kSessionMagic, sizeof kSessionMagic) != 0) fail("it does not start with the session magic (not a session)");
    Fnv1a h;
    h.add(bytes.data(), bytes.size() - sizeof(std::uint64_t));
    std::uint64_t stored;
    std::memcpy(&stored, bytes.data() + bytes.size() - sizeof stored, sizeof stored);
    if (stored != h.value()) fail("its checksum does not match (truncated or corrupt)");
    end_ = bytes.size() - sizeof(std::uint64_t);
    at_ = sizeof kSessionMagic;
  }
  template <typename V>
  V get(const char* what) {
    V value;
    if (end_ - at_ < sizeof value) fail(distillrec::detail::concat("it ends inside ", what));
    std::memcpy(&value, bytes_.data() + at_, sizeof value);
    at_ += sizeof value;
    return value;
  }
  template <typename V>
  std::vector<V> get_vector(const char* what, std::size_t limit) {
    const auto n = get<std::uint32_t>(what);
    if (n > limit) fail(distillrec::detail::concat("its ", what, " has ", n, " entries, more than ", limit));
    if ((end_ - at_) / sizeof(V) < n) fail(distillrec::detail::concat("it ends inside ", what));
    std::vector<V> values(n);
    if (n > 0) std::memcpy(values.data(), bytes_.data() + at_, n * sizeof(V));
    at_ += n * sizeof(V);
    return values;
  }
  void done() const {
    if (at_ != end_) fail(distillrec::detail::concat("it has ", end_ - at_, " unexpected bytes at the end"));
  }
  [[noreturn]] static void fail(const std::string& why) { throw FormatError("session blob rejected: " + why); }

 private:
  const std::string& bytes_;
  std::size_t at_ = 0, end_ = 0;
};

}  // namespace detail

}  // namespace distillrec::serve
