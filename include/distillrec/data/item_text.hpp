// distillrec/data/item_text.hpp
//
// Item text for models that read it (HLLM's item model, cold-start items):
//
//   read_item_texts(path)   an RFC 4180 CSV (comma separated; a field with commas, quotes or line
//                           breaks is double-quoted, a quote inside it doubled) whose header names
//                           an id column (default "item", the log's 1-based ids) and any text
//                           columns; UTF-8, a byte-order mark skipped
//   ItemTexts::field(item, column)
//   hllm_item_text(texts, item, columns, prompt)
//                           HLLM's item prompt (methods.md §3.3): prompt + "column: value" for each
//                           non-empty column, concatenated with no separator
//
// Bad input is a FormatError naming the file and the line: an unterminated quote, a row with the
// wrong number of fields, an id that is not a positive integer, an id given twice, a header
// without the id column or with a column named twice, a field that is not valid UTF-8.
// require_items(N) refuses a file that leaves any of items 1..N out. Items the file does not list have no
// text: hllm_item_text() gives them the empty string, prompt included, as HLLM's code does (its
// tokenizer then yields the beginning-of-sentence token alone). Values are kept as written
// ("NA" or "null" stay text; HLLM's pandas reading would drop them).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace distillrec::data {

/// The default prompt of HLLM's released configurations.
inline constexpr const char* kHllmItemPrompt = "Compress the following sentence into embedding: ";

class ItemTexts {
 public:
  ItemTexts() = default;
  ItemTexts(std::vector<std::string> columns, std::string source) : columns_(std::move(columns)), source_(std::move(source)) {}

  /// The text columns (the id column excluded), in the file's order.
  const std::vector<std::string>& columns() const { return columns_; }
  const std::string& source() const { return source_; }
  /// The largest item id listed (items 1..num_items(); some may be missing).
  ItemId num_items() const { return static_cast<ItemId>(rows_.size()); }
  /// Items listed in the file.
  Index listed() const { return listed_; }
  bool has(ItemId item) const { return item >= 1 && item <= num_items() && present_[static_cast<std::size_t>(item - 1)]; }

  /// Index of a column, or -1.
  Index column(std::string_view name) const {
    const auto it = std::find(columns_.begin(), columns_.end(), name);
    return it == columns_.end() ? Index(-1) : static_cast<Index>(it - columns_.begin());
  }

  /// The item's value in a column ("" for an item the file does not list).
  const std::string& field(ItemId item, std::string_view column_name) const { return field(item, checked_column(column_name)); }
  const std::string& field(ItemId item, Index column_index) const {
    if (column_index < 0 || column_index >= static_cast<Index>(columns_.size())) {
      throw ConfigError(distillrec::detail::concat(source_, ": no text column ", column_index));
    }
    if (!has(item)) return empty_;
    return rows_[static_cast<std::size_t>(item - 1)][static_cast<std::size_t>(column_index)];
  }

  Index checked_column(std::string_view name) const {
    const Index c = column(name);
    if (c < 0) {
      std::string known;
      for (const auto& col : columns_) known += (known.empty() ? "" : ", ") + col;
      throw ConfigError(distillrec::detail::concat(source_, ": no text column \"", name, "\" (columns: ", known, ")"));
    }
    return c;
  }

  /// Throws FormatError naming the file and the first item of 1..num_items it does not list
  /// (with how many are missing): for programs that need a text for every item.
  void require_items(ItemId num_items) const {
    Index missing = 0;
    ItemId first = 0;
    for (ItemId i = 1; i <= num_items; ++i) {
      if (!has(i)) {
        if (missing++ == 0) first = i;
      }
    }
    if (missing > 0) {
      throw FormatError(distillrec::detail::concat(source_, ": no text for item ", first, " (", missing, " of the ", num_items,
                                                   " items are not listed)"));
    }
  }

  /// Sets an item's fields (one per column); used by the reader.
  void set(ItemId item, std::vector<std::string> fields) {
    if (item < 1) throw ConfigError(distillrec::detail::concat("item text: item id ", item, " is not positive"));
    if (fields.size() != columns_.size()) {
      throw ShapeError(distillrec::detail::concat("item text: ", fields.size(), " fields for ", columns_.size(), " columns"));
    }
    if (item > num_items()) {
      rows_.resize(static_cast<std::size_t>(item));
      present_.resize(static_cast<std::size_t>(item), false);
    }
    listed_ += present_[static_cast<std::size_t>(item - 1)] ? 0 : 1;
    rows_[static_cast<std::size_t>(item - 1)] = std::move(fields);
    present_[static_cast<std::size_t>(item - 1)] = true;
  }

 private:
  std::vector<std::string> columns_;
  std::string source_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<bool> present_;
  Index listed_ = 0;
  std::string empty_;
};

namespace detail {

/// The byte offset of the first byte that breaks UTF-8 (RFC 3629: no overlong forms, no
/// surrogates, nothing above U+10FFFF), or npos for valid text.
inline std::size_t invalid_utf8_at(std::string_view s) {
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n) return i;
    const auto second = static_cast<unsigned char>(s[i + 1]);
    if (second < lo || second > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (b < 0x80 || b > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

/// Reads the next CSV record (RFC 4180) from `in` into `fields`; `line` counts physical lines
/// (a quoted field may span several). Returns false at the end of the input.
inline bool read_csv_record(std::istream& in, std::vector<std::string>& fields, long& line, const std::string& path) {
  fields.clear();
  int c = in.get();
  if (c == EOF) return false;
  ++line;
  const long first_line = line;
  std::string field;
  bool quoted = false, after_quote = false;
  while (true) {
    if (quoted) {
      if (c == EOF) throw FormatError(path, first_line, "a quoted field is not closed before the end of the file");
      if (c == '"') {
        if (in.peek() == '"') {
          field += '"';
          in.get();
        } else {
          quoted = false;
          after_quote = true;
        }
      } else {
        if (c == '\n') ++line;
        field += static_cast<char>(c);
      }
    } else if (c == ',' || c == '\n' || c == EOF) {
      if (!field.empty() && field.back() == '\r' && c != ',') field.pop_back();
      fields.push_back(std::move(field));
      field.clear();
      after_quote = false;
      if (c != ',') return true;
    } else if (c == '"' && field.empty() && !after_quote) {
      quoted = true;
    } else if (after_quote && c != '\r') {
      throw FormatError(path, line, "a character after the closing quote of a field (expected a comma or the end of the line)");
    } else if (c == '"') {
      throw FormatError(path, line, "a quote inside an unquoted field (quote the field and double the quote)");
    } else {
      field += static_cast<char>(c);
    }
    c = in.get();
  }
}

}  // namespace detail

/// Reads item texts from an RFC 4180 CSV whose header names `id_column` (see the top).
inline ItemTexts read_item_texts(const std::string& path, const std::string& id_column = "item") {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(path, 0, "cannot open the item text file");
  // A UTF-8 byte-order mark before the header is skipped.
  if (in.peek() == 0xEF) {
    char bom[3] = {0, 0, 0};
    in.read(bom, 3);
    if (!(static_cast<unsigned char>(bom[1]) == 0xBB && static_cast<unsigned char>(bom[2]) == 0xBF)) {
      in.clear();
      in.seekg(0);
    }
  }
  long line = 0;
  std::vector<std::string> fields;
  if (!detail::read_csv_record(in, fields, line, path)) throw FormatError(path, 1, "the file is empty (expected a header line)");
  Index id_index = -1;
  std::vector<std::string> columns;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const std::string& name = fields[i];
    if (std::count(fields.begin(), fields.end(), name) > 1) {
      throw FormatError(path, 1, distillrec::detail::concat("the header names column \"", name, "\" twice"));
    }
    if (name == id_column) {
      id_index = static_cast<Index>(i);
    } else {
      columns.push_back(name);
    }
  }
  if (id_index < 0) throw FormatError(path, 1, distillrec::detail::concat("the header has no \"", id_column, "\" column"));
  ItemTexts texts(columns, path);
  while (true) {
    const long record_line = line + 1;
    if (!detail::read_csv_record(in, fields, line, path)) break;
    if (fields.size() == 1 && fields[0].empty()) continue;  // a blank line
    if (fields.size() != columns.size() + 1) {
      throw FormatError(path, record_line,
                        distillrec::detail::concat("expected ", columns.size() + 1, " fields as in the header, found ", fields.size()));
    }
    const std::string& id_text = fields[static_cast<std::size_t>(id_index)];
    long long id = 0;
    const auto [end, error] = std::from_chars(id_text.data(), id_text.data() + id_text.size(), id);
    if (error != std::errc() || end != id_text.data() + id_text.size() || id < 1) {
      throw FormatError(path, record_line, distillrec::detail::concat("expected a positive integer item id, found \"", id_text, "\""));
    }
    if (id > 100'000'000) {
      throw FormatError(path, record_line, distillrec::detail::concat("item id ", id, " is implausibly large (more than 100 million)"));
    }
    if (texts.has(static_cast<ItemId>(id))) {
      throw FormatError(path, record_line, distillrec::detail::concat("item ", id, " is listed twice"));
    }
    std::vector<std::string> row;
    row.reserve(columns.size());
    std::size_t column = 0;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (static_cast<Index>(i) == id_index) continue;
      const std::size_t bad = detail::invalid_utf8_at(fields[i]);
      if (bad != std::string_view::npos) {
        throw FormatError(path, record_line, distillrec::detail::concat("item ", id, ": column \"", columns[column], "\" is not valid UTF-8 (byte ",
                                                                         bad, " of the field)"));
      }
      row.push_back(std::move(fields[i]));
      ++column;
    }
    texts.set(static_cast<ItemId>(id), std::move(row));
  }
  return texts;
}

/// HLLM's item text: prompt + "column: value" for each given column whose value is not empty,
/// with no separator between them (as HLLM's released code builds it); "" for an item the file
/// does not list (no prompt either, as in HLLM).
inline std::string hllm_item_text(const ItemTexts& texts, ItemId item, const std::vector<std::string>& columns,
                                  const std::string& prompt = kHllmItemPrompt) {
  for (const auto& name : columns) texts.checked_column(name);
  if (!texts.has(item)) return std::string();
  std::string out = prompt;
  for (const auto& name : columns) {
    const std::string& value = texts.field(item, name);
    if (value.empty()) continue;
    out += name;
    out += ": ";
    out += value;
  }
  return out;
}

}  // namespace distillrec::data
