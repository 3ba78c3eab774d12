// distillrec/data/interactions.hpp
//
// An interaction log: one chronological item sequence per user, with users and items renumbered
// densely. Users become 0..U-1 and items 1..N (0 stays free for padding), both in ascending order
// of the ids found in the file, so a file whose ids are already 1..N (the SASRec files) keeps its
// item ids exactly and its user u becomes dense index u-1.
//
// Two file formats are read:
//   - the SASRec text format (kang205/SASRec `data/*.txt`, methods.md §4.1): one interaction per
//     line, "user item", two non-negative integers separated by white space; a user's items are
//     taken in file order (which that format defines as chronological); the lines of a user need
//     not be contiguous. Blank lines and lines starting with '#' are skipped.
//   - CSV with a header line naming the columns `user`, `item` and `timestamp` (any order, any
//     case, other columns ignored, no quoting). Each user's rows are sorted by timestamp (an
//     integer or decimal number) on load; the sort is stable, so ties keep file order.
//
// Malformed input throws FormatError "file:line: what was expected, found \"what was there\"";
// a file that cannot be read throws Error with the path and the system's reason.
#pragma once

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/io/atomic_file.hpp"

namespace distillrec::data {

namespace detail {
using distillrec::detail::concat;
}  // namespace detail

struct InteractionLog {
  std::vector<Sequence> sequences;         // one chronological sequence per user (dense index)
  ItemId num_items = 0;                    // dense item ids are 1..num_items
  std::vector<std::int64_t> user_raw_ids;  // dense user index -> id in the file
  std::vector<std::int64_t> item_raw_ids;  // dense item id -> id in the file; [0] = -1 (padding)
  // When each interaction happened, aligned with `sequences` (times[u][k] for sequences[u][k]):
  // the CSV timestamp, or for the SASRec text format the interaction's line order in the file
  // (global time only if the file was written in time order). Empty for in-memory logs.
  std::vector<std::vector<double>> times;
  bool has_timestamps = false;             // times are real timestamps (CSV), not file order
  std::string source;                      // file path or "synthetic(...)"

  Index num_users() const { return static_cast<Index>(sequences.size()); }

  Index num_interactions() const {
    Index total = 0;
    for (const auto& sequence : sequences) total += static_cast<Index>(sequence.size());
    return total;
  }
};

enum class LogFormat { kAuto, kSasrecText, kCsv };

namespace detail {

/// The whole file in one string (one read instead of a stream per line: the 287k-line Amazon
/// log parses in a few milliseconds this way).
inline std::string read_file_contents(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    throw Error(concat("cannot open interaction log \"", path, "\": ", std::strerror(errno)));
  }
  std::string contents;
  std::error_code size_error;  // a directory has no size: the read below reports it
  const auto size = std::filesystem::file_size(path, size_error);
  if (!size_error) contents.reserve(static_cast<std::size_t>(size));
  char buffer[1 << 16];
  while (true) {
    const std::size_t got = std::fread(buffer, 1, sizeof(buffer), file);
    contents.append(buffer, got);
    if (got < sizeof(buffer)) break;
  }
  const bool failed = std::ferror(file) != 0;
  const int saved_errno = errno;
  std::fclose(file);
  if (failed) {
    throw Error(concat("cannot read interaction log \"", path, "\": ", std::strerror(saved_errno)));
  }
  return contents;
}

/// Iterates over the lines of a buffer, numbering them from 1 and dropping a trailing '\r'.
class LineReader {
 public:
  explicit LineReader(std::string_view text) : rest_(text) {
    // A UTF-8 byte-order mark (spreadsheet exports) is not part of the first field.
    if (rest_.substr(0, 3) == "\xEF\xBB\xBF") rest_.remove_prefix(3);
  }

  bool next(std::string_view& line) {
    if (rest_.empty()) return false;
    const auto* newline = static_cast<const char*>(std::memchr(rest_.data(), '\n', rest_.size()));
    const std::size_t length =
        newline == nullptr ? rest_.size() : static_cast<std::size_t>(newline - rest_.data());
    line = rest_.substr(0, length);
    rest_.remove_prefix(newline == nullptr ? length : length + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    ++number_;
    return true;
  }

  long number() const { return number_; }

 private:
  std::string_view rest_;
  long number_ = 0;
};

inline bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

inline std::string_view trim(std::string_view text) {
  while (!text.empty() && is_blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_blank(text.back())) text.remove_suffix(1);
  return text;
}

/// `text` in double quotes for an error message, shortened if very long.
inline std::string quoted(std::string_view text) {
  constexpr std::size_t kMaxQuoted = 80;
  if (text.size() <= kMaxQuoted) return concat('"', text, '"');
  return concat('"', text.substr(0, kMaxQuoted), "...\"");
}

/// A user or item id: a non-negative decimal integer that fits in int64, the whole field.
inline std::int64_t parse_id(std::string_view field, const char* what, const std::string& path,
                             long line) {
  std::int64_t value = 0;
  const char* end = field.data() + field.size();
  const auto [ptr, ec] = std::from_chars(field.data(), end, value);
  if (ec == std::errc::result_out_of_range && ptr == end) {
    throw FormatError(
        path, line,
        concat("expected a ", what, " id that fits in a 64-bit integer, found ", quoted(field)));
  }
  if (ec != std::errc() || ptr != end) {
    throw FormatError(
        path, line, concat("expected a non-negative integer ", what, " id, found ", quoted(field)));
  }
  if (value < 0) {
    throw FormatError(path, line,
                      concat("expected a non-negative ", what, " id, found ", quoted(field)));
  }
  return value;
}

/// A timestamp: an integer (exact up to 64 bits) or a finite decimal number.
inline long double parse_timestamp(std::string_view field, const std::string& path, long line) {
  const char* end = field.data() + field.size();
  std::int64_t integer = 0;
  const auto integer_result = std::from_chars(field.data(), end, integer);
  if (integer_result.ec == std::errc() && integer_result.ptr == end) {
    return static_cast<long double>(integer);
  }
  double decimal = 0.0;
  const auto decimal_result = std::from_chars(field.data(), end, decimal);
  if (decimal_result.ec != std::errc() || decimal_result.ptr != end || !std::isfinite(decimal)) {
    throw FormatError(
        path, line,
        concat("expected a numeric timestamp (integer or decimal), found ", quoted(field)));
  }
  return static_cast<long double>(decimal);
}

/// Dense ranks of raw ids: `distinct` receives the distinct ids in ascending order and the result
/// holds, for every raw id, its position in `distinct`. Ids are non-negative. A lookup table is
/// used when the ids span a range comparable to their count (the usual case), else a sort.
inline std::vector<std::int32_t> dense_ranks(const std::vector<std::int64_t>& raw,
                                             std::vector<std::int64_t>& distinct) {
  std::vector<std::int32_t> ranks(raw.size());
  distinct.clear();
  if (raw.empty()) return ranks;
  const auto [min_it, max_it] = std::minmax_element(raw.begin(), raw.end());
  const std::int64_t low = *min_it;
  const std::uint64_t span = static_cast<std::uint64_t>(*max_it - low) + 1;
  if (span <= 4 * static_cast<std::uint64_t>(raw.size()) + 4096) {
    std::vector<std::int32_t> table(static_cast<std::size_t>(span), -1);
    for (const std::int64_t id : raw) table[static_cast<std::size_t>(id - low)] = 0;
    for (std::size_t offset = 0; offset < table.size(); ++offset) {
      if (table[offset] < 0) continue;
      table[offset] = static_cast<std::int32_t>(distinct.size());
      distinct.push_back(low + static_cast<std::int64_t>(offset));
    }
    for (std::size_t i = 0; i < raw.size(); ++i) {
      ranks[i] = table[static_cast<std::size_t>(raw[i] - low)];
    }
  } else {
    distinct = raw;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (std::size_t i = 0; i < raw.size(); ++i) {
      ranks[i] = static_cast<std::int32_t>(
          std::lower_bound(distinct.begin(), distinct.end(), raw[i]) - distinct.begin());
    }
  }
  return ranks;
}

/// Builds the log from parallel arrays of raw (user, item) pairs in file order. With timestamps,
/// each user's interactions are stably sorted by them.
inline InteractionLog assemble_log(std::string source, const std::vector<std::int64_t>& raw_users,
                                   const std::vector<std::int64_t>& raw_items,
                                   const std::vector<long double>* timestamps) {
  InteractionLog log;
  log.source = std::move(source);
  const std::vector<std::int32_t> users = dense_ranks(raw_users, log.user_raw_ids);
  std::vector<std::int64_t> distinct_items;
  const std::vector<std::int32_t> items = dense_ranks(raw_items, distinct_items);
  log.num_items = static_cast<ItemId>(distinct_items.size());
  log.item_raw_ids.reserve(distinct_items.size() + 1);
  log.item_raw_ids.push_back(-1);
  log.item_raw_ids.insert(log.item_raw_ids.end(), distinct_items.begin(), distinct_items.end());

  // Counting sort by user keeps file order within a user.
  const std::size_t num_users = log.user_raw_ids.size();
  std::vector<std::size_t> offsets(num_users + 1, 0);
  for (const std::int32_t user : users) ++offsets[static_cast<std::size_t>(user) + 1];
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
  std::vector<std::size_t> rows(users.size());
  {
    std::vector<std::size_t> cursor(offsets.begin(), offsets.end() - 1);
    for (std::size_t row = 0; row < users.size(); ++row) {
      rows[cursor[static_cast<std::size_t>(users[row])]++] = row;
    }
  }
  log.sequences.resize(num_users);
  for (std::size_t user = 0; user < num_users; ++user) {
    const auto first = rows.begin() + static_cast<std::ptrdiff_t>(offsets[user]);
    const auto last = rows.begin() + static_cast<std::ptrdiff_t>(offsets[user + 1]);
    if (timestamps != nullptr) {
      std::stable_sort(first, last, [timestamps](std::size_t a, std::size_t b) {
        return (*timestamps)[a] < (*timestamps)[b];
      });
    }
    Sequence& sequence = log.sequences[user];
    sequence.reserve(static_cast<std::size_t>(last - first));
    for (auto it = first; it != last; ++it) sequence.push_back(items[*it] + 1);
  }
  log.has_timestamps = timestamps != nullptr;
  log.times.resize(num_users);
  for (std::size_t user = 0; user < num_users; ++user) {
    auto& times = log.times[user];
    times.reserve(offsets[user + 1] - offsets[user]);
    for (std::size_t k = offsets[user]; k < offsets[user + 1]; ++k) {
      times.push_back(timestamps != nullptr ? static_cast<double>((*timestamps)[rows[k]]) : static_cast<double>(rows[k]));
    }
  }
  return log;
}

inline void require_items_fit(std::size_t num_lines, const std::string& path) {
  // Dense item ids are int32; more lines than that cannot be represented (a > 20 GB file).
  if (num_lines >= static_cast<std::size_t>(std::numeric_limits<ItemId>::max())) {
    throw FormatError(concat(path, ": more than ", std::numeric_limits<ItemId>::max(),
                             " interactions; dense ids are 32-bit"));
  }
}

inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

/// Splits a CSV line on commas and trims spaces around each field (no quoting).
inline void split_csv(std::string_view line, std::vector<std::string_view>& fields) {
  fields.clear();
  while (true) {
    const std::size_t comma = line.find(',');
    fields.push_back(trim(line.substr(0, comma)));
    if (comma == std::string_view::npos) break;
    line.remove_prefix(comma + 1);
  }
}

}  // namespace detail

/// Reads a log in the SASRec text format ("user item" per line, chronological per user).
inline InteractionLog read_sasrec_text(const std::string& path) {
  const std::string contents = detail::read_file_contents(path);
  std::vector<std::int64_t> users;
  std::vector<std::int64_t> items;
  // A rough line count (~12 bytes per line in SASRec files) avoids most regrowth.
  users.reserve(contents.size() / 10 + 16);
  items.reserve(contents.size() / 10 + 16);

  detail::LineReader reader(contents);
  std::string_view line;
  while (reader.next(line)) {
    std::string_view rest = line;
    std::string_view fields[2];
    int count = 0;
    while (true) {
      std::size_t start = 0;
      while (start < rest.size() && detail::is_blank(rest[start])) ++start;
      rest.remove_prefix(start);
      if (rest.empty()) break;
      if (count == 0 && rest.front() == '#') break;  // comment line
      std::size_t length = 0;
      while (length < rest.size() && !detail::is_blank(rest[length])) ++length;
      if (count < 2) fields[count] = rest.substr(0, length);
      ++count;
      rest.remove_prefix(length);
    }
    if (count == 0) continue;
    if (count != 2) {
      throw FormatError(path, reader.number(),
                        detail::concat("expected two fields \"user item\", found ", count,
                                       count == 1 ? " field in " : " fields in ",
                                       detail::quoted(detail::trim(line))));
    }
    users.push_back(detail::parse_id(fields[0], "user", path, reader.number()));
    items.push_back(detail::parse_id(fields[1], "item", path, reader.number()));
  }
  if (users.empty()) {
    throw FormatError(path, std::max(1L, reader.number()),
                      contents.empty()
                          ? "no interactions: the file is empty"
                          : "no interactions: expected \"user item\" lines, found only blank "
                            "lines and comments");
  }
  detail::require_items_fit(users.size(), path);
  return detail::assemble_log(path, users, items, nullptr);
}

/// Reads a CSV log with a header naming user, item and timestamp columns; each user's rows are
/// sorted by timestamp (stable).
inline InteractionLog read_csv(const std::string& path) {
  const std::string contents = detail::read_file_contents(path);
  detail::LineReader reader(contents);
  std::string_view line;
  std::vector<std::string_view> fields;

  // Header: the first non-blank line.
  bool have_header = false;
  while (reader.next(line)) {
    if (!detail::trim(line).empty()) {
      have_header = true;
      break;
    }
  }
  if (!have_header) {
    throw FormatError(path, std::max(1L, reader.number()),
                      "no interactions: expected a header line \"user,item,timestamp\", found an "
                      "empty file");
  }
  const long header_line = reader.number();
  detail::split_csv(line, fields);
  const std::size_t num_columns = fields.size();
  const char* const names[3] = {"user", "item", "timestamp"};
  std::size_t column[3] = {0, 0, 0};
  for (int k = 0; k < 3; ++k) {
    int found = 0;
    for (std::size_t c = 0; c < fields.size(); ++c) {
      if (detail::iequals(fields[c], names[k])) {
        column[k] = c;
        ++found;
      }
    }
    if (found != 1) {
      throw FormatError(
          path, header_line,
          detail::concat(
              "expected a header naming the columns user, item and timestamp once each; ",
              found == 0 ? "column \"" : "duplicate column \"", names[k],
              found == 0 ? "\" is missing in " : "\" in ", detail::quoted(line)));
    }
  }

  std::vector<std::int64_t> users;
  std::vector<std::int64_t> items;
  std::vector<long double> timestamps;
  const std::size_t estimate = contents.size() / 24 + 16;
  users.reserve(estimate);
  items.reserve(estimate);
  timestamps.reserve(estimate);
  while (reader.next(line)) {
    if (detail::trim(line).empty()) continue;
    detail::split_csv(line, fields);
    if (fields.size() != num_columns) {
      throw FormatError(path, reader.number(),
                        detail::concat("expected ", num_columns,
                                       " comma-separated fields as in the header, found ",
                                       fields.size(), " in ", detail::quoted(line)));
    }
    users.push_back(detail::parse_id(fields[column[0]], "user", path, reader.number()));
    items.push_back(detail::parse_id(fields[column[1]], "item", path, reader.number()));
    timestamps.push_back(detail::parse_timestamp(fields[column[2]], path, reader.number()));
  }
  if (users.empty()) {
    throw FormatError(path, reader.number(),
                      "no interactions: expected rows after the header, found none");
  }
  detail::require_items_fit(users.size(), path);
  return detail::assemble_log(path, users, items, &timestamps);
}

/// Reads a log; kAuto picks CSV for a ".csv" extension (any case) and the SASRec text otherwise.
inline InteractionLog read_log(const std::string& path, LogFormat format = LogFormat::kAuto) {
  if (format == LogFormat::kAuto) {
    const bool is_csv =
        path.size() >= 4 && detail::iequals(std::string_view(path).substr(path.size() - 4), ".csv");
    format = is_csv ? LogFormat::kCsv : LogFormat::kSasrecText;
  }
  return format == LogFormat::kCsv ? read_csv(path) : read_sasrec_text(path);
}

/// A log from in-memory sequences that already use dense ids 1..num_items (raw ids = dense ids,
/// users numbered 0..U-1). Throws ConfigError if num_items < 1 and ShapeError naming the user and
/// position of any id outside 1..num_items.
inline InteractionLog make_log(std::vector<Sequence> sequences, ItemId num_items,
                               std::string source) {
  if (num_items < 1) {
    throw ConfigError(
        detail::concat("make_log(", source, "): num_items must be at least 1, got ", num_items));
  }
  for (std::size_t user = 0; user < sequences.size(); ++user) {
    const Sequence& sequence = sequences[user];
    for (std::size_t position = 0; position < sequence.size(); ++position) {
      const ItemId item = sequence[position];
      if (item < 1 || item > num_items) {
        throw ShapeError(detail::concat("make_log(", source, "): user ", user, " position ",
                                        position, " has item id ", item, ", expected 1..",
                                        num_items));
      }
    }
  }
  InteractionLog log;
  log.sequences = std::move(sequences);
  log.num_items = num_items;
  log.user_raw_ids.resize(log.sequences.size());
  std::iota(log.user_raw_ids.begin(), log.user_raw_ids.end(), std::int64_t{0});
  log.item_raw_ids.resize(static_cast<std::size_t>(num_items) + 1);
  std::iota(log.item_raw_ids.begin(), log.item_raw_ids.end(), std::int64_t{0});
  log.item_raw_ids[0] = -1;
  log.source = std::move(source);
  return log;
}

/// Writes a log in the SASRec text format ("user item" per line, users in dense order, each
/// user's items chronologically) with the log's raw ids, atomically. read_sasrec_text() of the
/// file gives the same sequences back when every item id occurs at least once (items that never
/// occur cannot be represented in the format, so reading compacts the ids).
inline void write_sasrec_text(const InteractionLog& log, const std::string& path) {
  io::write_file_atomic(path, [&](std::ostream& out) {
    for (std::size_t u = 0; u < log.sequences.size(); ++u) {
      const std::int64_t user = u < log.user_raw_ids.size() ? log.user_raw_ids[u] : static_cast<std::int64_t>(u + 1);
      for (ItemId item : log.sequences[u]) {
        const auto i = static_cast<std::size_t>(item);
        out << user << ' ' << (i < log.item_raw_ids.size() ? log.item_raw_ids[i] : static_cast<std::int64_t>(item)) << '\n';
      }
    }
  });
}

}  // namespace distillrec::data
