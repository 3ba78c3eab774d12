// distillrec/distill/ranking_signals.hpp
//
// Teacher signals for DLLM2Rec-style distillation (methods.md §2): what a teacher ranks first for
// every training example, and the teacher's item embeddings.
//
//   RankingSignals          per training example (keyed by its id, data/examples.hpp) the
//                           teacher's top-K items, best first, with their scores; ScoreOrder says
//                           whether a larger score (a logit, a similarity) or a smaller one (a
//                           distance, as the reference's BIGRec teacher writes) is more confident
//   TeacherItemEmbeddings   the teacher's item table [N, D], row j = item j + 1 of the data
//
// They belong to the teacher-signal family of distill/teacher.hpp: one safetensors schema
// (__metadata__ "format": "distillrec-teacher-signals", "version": "1"), where a file carries any
// of the parts (hidden states, a ranking, item embeddings; load_* of a part says what is missing):
//   example_ids      I64 [E]        the training examples' ids, each once
//   topk_items       I64 [E, K]     row e: example e's top-K items, best first, as ids of the
//                                   interaction log file (raw ids, not the library's dense ones)
//   topk_scores      F32|F16|BF16|F64 [E, K]   their scores; __metadata__ "score_order":
//                                   "higher-is-better" or "lower-is-better"
//   item_embeddings  F32|F16|BF16|F64 [R, D]   the teacher's item table
//   item_ids         I64 [R]        optional: the raw id of every row of item_embeddings; without
//                                   it R must equal the data's item count, rows in ascending raw id
//                                   (the library's dense order)
// save_ranking_signals writes it; bench/pytorch/write_teacher_signals.py writes it from PyTorch.
//
// The reference's own files are read too (methods.md §2.1):
//   read_reference_ranking          myrank_train.txt (ids) + confidence_train.txt (L2 distances,
//                                   smaller = more confident); row r = training example id r
//                                   (every_prefix and temporal_split number their training
//                                   examples by row, as the reference's train_data.df)
//   read_reference_item_embeddings  all_embeddings saved as .npy [N_I, D], row i = item id i
// Their ids are 0-based item ids of the reference's data, which are the raw ids of an interaction
// log written from it; the reference's padding id (|I| = N_I, one past the last row) never names a
// candidate, and a file holding it is rejected.
//
// Everything is checked when read (finite scores, known item ids, shapes, unique example ids,
// scores sorted best first for the declared order) and against the training examples before
// training (RankingSignals::match): a missing or unknown example id, K smaller than asked for.
// Each error names the file, the tensor or line, and the example.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/io/npy.hpp"
#include "distillrec/io/safetensors.hpp"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace distillrec::distill {

enum class ScoreOrder { kHigherIsBetter, kLowerIsBetter };

inline std::string to_string(ScoreOrder order) {
  return order == ScoreOrder::kHigherIsBetter ? "higher-is-better" : "lower-is-better";
}

inline ScoreOrder parse_score_order(const std::string& name) {
  if (name == "higher-is-better" || name == "higher" || name == "score") return ScoreOrder::kHigherIsBetter;
  if (name == "lower-is-better" || name == "lower" || name == "distance") return ScoreOrder::kLowerIsBetter;
  throw ConfigError("unknown score order \"" + name + "\" (expected higher-is-better or lower-is-better)");
}

/// Raw item id (as in the interaction log file) -> dense item id 1..N.
class ItemIdMap {
 public:
  ItemIdMap() = default;
  /// raw_ids[j] = raw id of dense item j (j = 1..N; entry 0 is the padding slot and ignored).
  explicit ItemIdMap(const std::vector<std::int64_t>& raw_ids) : raw_(raw_ids) {
    if (raw_.empty()) raw_.push_back(-1);
    for (std::size_t j = 1; j < raw_.size(); ++j) dense_.emplace(raw_[j], static_cast<ItemId>(j));
  }
  /// Items 1..n whose raw ids are their dense ids (synthetic data, tests).
  static ItemIdMap identity(ItemId n) {
    std::vector<std::int64_t> raw(static_cast<std::size_t>(n) + 1);
    for (ItemId j = 0; j <= n; ++j) raw[static_cast<std::size_t>(j)] = j;
    raw[0] = -1;
    return ItemIdMap(raw);
  }
  ItemId num_items() const { return static_cast<ItemId>(raw_.size()) - 1; }
  /// Dense id of a raw id, or 0 if the data has no such item.
  ItemId dense(std::int64_t raw) const {
    const auto it = dense_.find(raw);
    return it == dense_.end() ? ItemId(0) : it->second;
  }
  std::int64_t raw(ItemId dense) const { return raw_.at(static_cast<std::size_t>(dense)); }

 private:
  std::vector<std::int64_t> raw_{-1};
  std::unordered_map<std::int64_t, ItemId> dense_;
};

/// The teacher's top-K per training example (dense item ids, best first) with their scores.
class RankingSignals {
 public:
  RankingSignals() = default;
  RankingSignals(Index k, ScoreOrder order, std::string source) : k_(k), order_(order), source_(std::move(source)) {
    if (k_ <= 0) throw ConfigError(detail::concat(source_, ": a teacher ranking needs K >= 1, got ", k_));
  }

  /// Appends example `example_id`'s list: K dense items (1..N) best first, and their scores.
  void add(std::int64_t example_id, const ItemId* items, const float* scores) {
    for (Index r = 0; r < k_; ++r) {
      if (items[r] < 1) {
        throw ShapeError(detail::concat(source_, ": example ", example_id, ": rank ", r + 1, " names item ", items[r],
                                        " (dense ids start at 1)"));
      }
      if (!std::isfinite(scores[r])) {
        throw FormatError(detail::concat(source_, ": example ", example_id, ": the score at rank ", r + 1, " is ", scores[r],
                                         " (NaN or infinite)"));
      }
      if (r > 0 && worse(scores[r - 1], scores[r])) {
        throw FormatError(detail::concat(source_, ": example ", example_id, ": scores are not sorted best first for ",
                                         to_string(order_), " (rank ", r, ": ", scores[r - 1], ", rank ", r + 1, ": ", scores[r],
                                         "); is the score order right?"));
      }
    }
    if (!index_.emplace(example_id, num_examples()).second) {
      throw FormatError(detail::concat(source_, ": example id ", example_id, " appears twice"));
    }
    ids_.push_back(example_id);
    items_.insert(items_.end(), items, items + k_);
    scores_.insert(scores_.end(), scores, scores + k_);
  }

  const std::string& source() const { return source_; }
  Index k() const { return k_; }
  ScoreOrder order() const { return order_; }
  Index num_examples() const { return static_cast<Index>(ids_.size()); }
  const std::vector<std::int64_t>& example_ids() const { return ids_; }
  /// Row e: K items / scores, best first.
  const ItemId* items(Index e) const { return items_.data() + e * k_; }
  const float* scores(Index e) const { return scores_.data() + e * k_; }
  ItemId max_item() const {
    ItemId m = 0;
    for (ItemId i : items_) m = std::max(m, i);
    return m;
  }
  /// Row of an example id, or -1.
  Index find(std::int64_t example_id) const {
    const auto it = index_.find(example_id);
    return it == index_.end() ? Index(-1) : it->second;
  }

  /// For every training example of the split, its row here. Throws unless the ids are exactly
  /// the training examples', every item is one of the data's and K >= k_needed.
  std::vector<Index> match(const data::ExampleSplit& split, Index k_needed) const {
    if (k_needed > k_) {
      throw ShapeError(detail::concat(source_, ": ", k_needed, " teacher candidates per example were asked for, the file holds ", k_));
    }
    if (max_item() > split.num_items) {
      throw ShapeError(detail::concat(source_, ": item ", max_item(), " is outside the data's items 1..", split.num_items));
    }
    std::vector<Index> rows(split.train.size(), -1);
    std::vector<char> taken(static_cast<std::size_t>(num_examples()), 0);
    for (std::size_t i = 0; i < split.train.size(); ++i) {
      const std::int64_t id = split.train[i].id;
      const Index e = find(id);
      if (e < 0) {
        throw FormatError(detail::concat(source_, ": no teacher ranking for example id ", id, " (a training example of ", split.source,
                                         "); the file has ", num_examples(), " examples, the data ", split.train.size(),
                                         " training examples"));
      }
      if (taken[static_cast<std::size_t>(e)]) {
        throw ConfigError(detail::concat(split.source, ": two training examples share the id ", id, "; teacher signals need unique ids"));
      }
      taken[static_cast<std::size_t>(e)] = 1;
      rows[i] = e;
    }
    if (static_cast<Index>(split.train.size()) != num_examples()) {
      for (Index e = 0; e < num_examples(); ++e) {
        if (!taken[static_cast<std::size_t>(e)]) {
          throw FormatError(detail::concat(source_, ": example id ", ids_[static_cast<std::size_t>(e)], " is not a training example of ",
                                           split.source, " (the file has ", num_examples(), " examples, the data ", split.train.size(),
                                           "); were the signals written for another split?"));
        }
      }
    }
    return rows;
  }

 private:
  bool worse(float previous, float next) const {
    return order_ == ScoreOrder::kHigherIsBetter ? next > previous : next < previous;
  }

  Index k_ = 0;
  ScoreOrder order_ = ScoreOrder::kHigherIsBetter;
  std::string source_;
  std::vector<std::int64_t> ids_;
  std::vector<ItemId> items_;
  std::vector<float> scores_;
  std::unordered_map<std::int64_t, Index> index_;
};

/// The teacher's item table: row j is item j + 1 of the data (D = the teacher's width).
struct TeacherItemEmbeddings {
  Matrix<float> table;  // [N, D]
  std::string source;

  Index num_items() const { return table.rows(); }
  Index dim() const { return table.cols(); }

  /// Throws unless the table covers exactly num_items items (and, if given, has width dim).
  void check(Index num_items_expected, Index dim_expected = -1) const {
    if (num_items() != num_items_expected) {
      throw ShapeError(detail::concat(source, ": the teacher item embeddings have ", num_items(), " items, the data ", num_items_expected));
    }
    if (dim_expected > 0 && dim() != dim_expected) {
      throw ShapeError(detail::concat(source, ": the teacher item embeddings are ", dim(), " wide, ", dim_expected, " expected"));
    }
  }
};

namespace ranking_detail {

inline std::string teacher_meta(const io::SafetensorsReader& reader, const std::string& path, const char* key) {
  const auto& meta = reader.metadata();
  const auto it = meta.find(key);
  if (it == meta.end()) {
    throw FormatError(path + ": __metadata__ has no \"" + key + "\" (not a teacher-signal file? expected \"format\": \"" +
                      kTeacherSignalsFormat + "\")");
  }
  return it->second;
}

inline void check_teacher_format(const io::SafetensorsReader& reader, const std::string& path) {
  const std::string format = teacher_meta(reader, path, "format");
  if (format != kTeacherSignalsFormat) {
    throw FormatError(path + ": __metadata__ \"format\" is \"" + format + "\", expected \"" + kTeacherSignalsFormat + "\"");
  }
}

inline void require_tensor(const io::SafetensorsReader& reader, const std::string& path, const char* name, const char* part) {
  if (!reader.contains(name)) {
    throw FormatError(path + ": no tensor \"" + name + "\": the file carries no " + part);
  }
}

/// A whitespace-separated numeric text table (the reference's .txt files): rows of equal length.
inline std::vector<std::vector<double>> read_text_table(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path);
  std::vector<std::vector<double>> rows;
  std::string line;
  Index line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::istringstream fields(line);
    std::vector<double> row;
    std::string token;
    while (fields >> token) {
      char* end = nullptr;
      const double v = std::strtod(token.c_str(), &end);
      if (end == token.c_str() || *end != '\0') {
        throw FormatError(distillrec::detail::concat(path, ":", line_no, ": \"", token, "\" is not a number"));
      }
      row.push_back(v);
    }
    if (row.empty()) {
      if (line.find_first_not_of(" \t\r") == std::string::npos && in.peek() == std::ifstream::traits_type::eof()) break;
      throw FormatError(distillrec::detail::concat(path, ":", line_no, ": empty line"));
    }
    if (!rows.empty() && row.size() != rows.front().size()) {
      throw FormatError(distillrec::detail::concat(path, ":", line_no, ": ", row.size(), " values, line 1 has ", rows.front().size()));
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) throw FormatError(path + ": no rows");
  return rows;
}

}  // namespace ranking_detail

/// Writes a ranking (and, optionally, the teacher's item embeddings) in the family's schema,
/// atomically. Items are written as raw ids of the log through `items`.
inline void save_ranking_signals(const std::string& path, const RankingSignals* ranking, const TeacherItemEmbeddings* embeddings,
                                 const ItemIdMap& items, const std::map<std::string, std::string>& extra_metadata = {}) {
  if (ranking == nullptr && embeddings == nullptr) throw ConfigError("save_ranking_signals: nothing to write");
  io::SafetensorsWriter writer;
  for (const auto& [key, value] : extra_metadata) writer.set_metadata(key, value);
  writer.set_metadata("format", kTeacherSignalsFormat);
  writer.set_metadata("version", "1");
  if (ranking != nullptr) {
    const Index e_count = ranking->num_examples(), k = ranking->k();
    std::vector<std::int64_t> raw(static_cast<std::size_t>(e_count * k));
    std::vector<float> scores(raw.size());
    for (Index e = 0; e < e_count; ++e) {
      for (Index r = 0; r < k; ++r) {
        raw[static_cast<std::size_t>(e * k + r)] = items.raw(ranking->items(e)[r]);
        scores[static_cast<std::size_t>(e * k + r)] = ranking->scores(e)[r];
      }
    }
    writer.set_metadata("score_order", to_string(ranking->order()));
    writer.add("example_ids", ranking->example_ids());
    writer.add("topk_items", raw, {e_count, k});
    writer.add("topk_scores", scores.data(), {e_count, k});
  }
  if (embeddings != nullptr) {
    std::vector<std::int64_t> raw(static_cast<std::size_t>(embeddings->num_items()));
    for (Index j = 0; j < embeddings->num_items(); ++j) raw[static_cast<std::size_t>(j)] = items.raw(static_cast<ItemId>(j + 1));
    writer.add("item_embeddings", embeddings->table);
    writer.add("item_ids", raw);
  }
  writer.write(path);
}

/// Reads the ranking part of a teacher-signal file, mapping raw item ids to the data's.
inline RankingSignals load_ranking_signals(const std::string& path, const ItemIdMap& items) {
  const io::SafetensorsReader reader(path);
  ranking_detail::check_teacher_format(reader, path);
  for (const char* name : {"topk_items", "topk_scores", "example_ids"}) ranking_detail::require_tensor(reader, path, name, "teacher ranking");
  ScoreOrder order;
  try {
    order = parse_score_order(ranking_detail::teacher_meta(reader, path, "score_order"));
  } catch (const ConfigError& e) {
    throw FormatError(path + ": __metadata__ \"score_order\": " + e.what());
  }
  const auto ids = reader.read_integers("example_ids");
  const io::TensorInfo& item_info = reader.info("topk_items");
  const io::TensorInfo& score_info = reader.info("topk_scores");
  const auto e_count = static_cast<std::int64_t>(ids.size());
  if (item_info.shape.size() != 2 || item_info.shape[0] != e_count || item_info.shape[1] <= 0) {
    throw ShapeError(distillrec::detail::concat(path, ": tensor \"topk_items\": expected shape [", e_count, " (examples), K], found ",
                                                io::detail::shape_string(item_info.shape)));
  }
  if (score_info.shape != item_info.shape) {
    throw ShapeError(distillrec::detail::concat(path, ": tensor \"topk_scores\" has shape ", io::detail::shape_string(score_info.shape),
                                                ", \"topk_items\" ", io::detail::shape_string(item_info.shape)));
  }
  const Index k = static_cast<Index>(item_info.shape[1]);
  const auto raw = reader.read_integers("topk_items");
  const auto scores = reader.read_floats("topk_scores");  // rejects NaN / Inf, naming the tensor
  RankingSignals ranking(k, order, path);
  std::vector<ItemId> dense(static_cast<std::size_t>(k));
  for (std::int64_t e = 0; e < e_count; ++e) {
    for (Index r = 0; r < k; ++r) {
      const std::int64_t id = raw[static_cast<std::size_t>(e * k + r)];
      dense[static_cast<std::size_t>(r)] = items.dense(id);
      if (dense[static_cast<std::size_t>(r)] == 0) {
        throw ShapeError(distillrec::detail::concat(path, ": tensor \"topk_items\": example ", ids[static_cast<std::size_t>(e)], ", rank ",
                                                    r + 1, ": item id ", id, " is not an item of the data"));
      }
    }
    ranking.add(ids[static_cast<std::size_t>(e)], dense.data(), scores.data() + e * k);
  }
  return ranking;
}

/// Reads the item-embedding part of a teacher-signal file: [N, D] rows of the data's items.
inline TeacherItemEmbeddings load_teacher_item_embeddings(const std::string& path, const ItemIdMap& items) {
  const io::SafetensorsReader reader(path);
  ranking_detail::check_teacher_format(reader, path);
  ranking_detail::require_tensor(reader, path, "item_embeddings", "teacher item embeddings");
  const io::TensorInfo& info = reader.info("item_embeddings");
  if (info.shape.size() != 2 || info.shape[0] <= 0 || info.shape[1] <= 0) {
    throw ShapeError(path + ": tensor \"item_embeddings\": expected shape [items, D], found " + io::detail::shape_string(info.shape));
  }
  const Index rows = static_cast<Index>(info.shape[0]), dim = static_cast<Index>(info.shape[1]);
  const Matrix<float> values = reader.read_matrix("item_embeddings", rows, dim);  // rejects NaN / Inf
  TeacherItemEmbeddings out{Matrix<float>(items.num_items(), dim), path};
  if (!reader.contains("item_ids")) {
    if (rows != items.num_items()) {
      throw ShapeError(distillrec::detail::concat(path, ": tensor \"item_embeddings\" has ", rows, " rows, the data ", items.num_items(),
                                                  " items (without \"item_ids\" the rows must be the data's items in ascending id)"));
    }
    out.table = values;
    return out;
  }
  const auto raw = reader.read_integers("item_ids");
  if (static_cast<Index>(raw.size()) != rows) {
    throw ShapeError(distillrec::detail::concat(path, ": tensor \"item_ids\" has ", raw.size(), " entries, \"item_embeddings\" ", rows, " rows"));
  }
  std::vector<char> seen(static_cast<std::size_t>(items.num_items()) + 1, 0);
  for (Index r = 0; r < rows; ++r) {
    const ItemId j = items.dense(raw[static_cast<std::size_t>(r)]);
    if (j == 0) {
      throw ShapeError(distillrec::detail::concat(path, ": tensor \"item_ids\": row ", r, ": item id ", raw[static_cast<std::size_t>(r)],
                                                  " is not an item of the data"));
    }
    if (seen[static_cast<std::size_t>(j)]) {
      throw FormatError(distillrec::detail::concat(path, ": tensor \"item_ids\": item id ", raw[static_cast<std::size_t>(r)], " appears twice"));
    }
    seen[static_cast<std::size_t>(j)] = 1;
    out.table.row(j - 1) = values.row(r);
  }
  for (ItemId j = 1; j <= items.num_items(); ++j) {
    if (!seen[static_cast<std::size_t>(j)]) {
      throw ShapeError(distillrec::detail::concat(path, ": no teacher embedding for item id ", items.raw(j), " (an item of the data); ",
                                                  rows, " rows for ", items.num_items(), " items"));
    }
  }
  return out;
}

/// The reference's myrank_train.txt and confidence_train.txt (methods.md §2.1): row r = training
/// example id r, 0-based item ids (= raw ids of the log), scores are L2 distances.
inline RankingSignals read_reference_ranking(const std::string& rank_path, const std::string& confidence_path, const ItemIdMap& items) {
  const auto ranks = ranking_detail::read_text_table(rank_path);
  const auto distances = ranking_detail::read_text_table(confidence_path);
  if (ranks.size() != distances.size() || ranks.front().size() != distances.front().size()) {
    throw ShapeError(distillrec::detail::concat(rank_path, " has ", ranks.size(), " rows of ", ranks.front().size(), " ids but ",
                                                confidence_path, " ", distances.size(), " rows of ", distances.front().size(), " distances"));
  }
  const Index k = static_cast<Index>(ranks.front().size());
  RankingSignals ranking(k, ScoreOrder::kLowerIsBetter, rank_path);
  std::vector<ItemId> dense(static_cast<std::size_t>(k));
  std::vector<float> scores(static_cast<std::size_t>(k));
  const auto pad = static_cast<std::int64_t>(items.num_items());
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    for (Index c = 0; c < k; ++c) {
      const double v = ranks[r][static_cast<std::size_t>(c)];
      const auto id = static_cast<std::int64_t>(v);
      if (!(v >= 0) || static_cast<double>(id) != v) {
        throw FormatError(distillrec::detail::concat(rank_path, ":", r + 1, ": column ", c + 1, ": ", v, " is not a 0-based item id"));
      }
      dense[static_cast<std::size_t>(c)] = items.dense(id);
      if (dense[static_cast<std::size_t>(c)] == 0) {
        throw ShapeError(distillrec::detail::concat(rank_path, ":", r + 1, ": column ", c + 1, ": item id ", id,
                                                    id == pad ? " is the reference's padding id (|I|), not an item" : " is not an item of the data"));
      }
      const double d = distances[r][static_cast<std::size_t>(c)];
      if (!std::isfinite(d) || std::abs(d) > static_cast<double>(std::numeric_limits<float>::max())) {
        throw FormatError(distillrec::detail::concat(confidence_path, ":", r + 1, ": column ", c + 1, ": distance ", d, " is not finite"));
      }
      scores[static_cast<std::size_t>(c)] = static_cast<float>(d);
    }
    ranking.add(static_cast<std::int64_t>(r), dense.data(), scores.data());
  }
  return ranking;
}

/// The reference's item embeddings as .npy [N_I, D] (f2, f4 or f8), row i = item id i (the raw id
/// of the log); every item of the data needs a row, rows of other ids are ignored.
inline TeacherItemEmbeddings read_reference_item_embeddings(const std::string& npy_path, const ItemIdMap& items) {
  const Matrix<float> values = io::npy_to_matrix(io::read_npy(npy_path), npy_path);
  if (values.rows() <= 0 || values.cols() <= 0) throw ShapeError(npy_path + ": an empty item table");
  TeacherItemEmbeddings out{Matrix<float>(items.num_items(), values.cols()), npy_path};
  for (ItemId j = 1; j <= items.num_items(); ++j) {
    const std::int64_t id = items.raw(j);
    if (id < 0 || id >= values.rows()) {
      throw ShapeError(distillrec::detail::concat(npy_path, ": item id ", id, " of the data has no row (the table has ", values.rows(),
                                                  " rows for 0-based ids)"));
    }
    out.table.row(j - 1) = values.row(static_cast<Index>(id));
  }
  return out;
}

}  // namespace distillrec::distill
