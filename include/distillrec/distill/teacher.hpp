// distillrec/distill/teacher.hpp
//
// Teacher signals for SLMRec-style distillation: a frozen teacher's hidden states at the block
// boundaries of the layer map (distill/layer_map.hpp), for every training example
// (data/examples.hpp), keyed by the example's id. The teacher is deterministic at inference and
// every training example has one fixed window (the newest max_length items of its history), so
// its states are computed once and reused every epoch (methods.md §1.10) instead of re-running
// the teacher at every step.
//
// Two sources:
//   compute_teacher_signals()  an in-process teacher (models::LLMRec), run without gradients,
//                              in parallel over the training examples;
//   load_teacher_signals()     a safetensors file written by this library (save_teacher_signals,
//                              a disk cache) or by PyTorch (examples/write_teacher_signals.py).
//
// File schema (safetensors; __metadata__ "format": "distillrec-teacher-signals", "version": "1",
// "positions": "last" | "all", "layers": JSON list of the teacher hidden indices, e.g. [2,4,6,8]):
//   example_ids    I64 [E]         the id of every training example (data/examples.hpp: for
//                                  leave-one-out the user id as in the interaction log file, not
//                                  the library's dense index; for every-prefix and temporal
//                                  splits the example's row in the training set); each once
//   hidden_states  F32|F16|BF16|F64 [R, B, H]
//                                  B = number of layers, H = teacher hidden size; with positions
//                                  "last" R = E and row e is the state at the newest item of
//                                  example e's window; with "all" rows of consecutive examples
//                                  follow each other, every window position oldest first
//   lengths        I64 [E]         window lengths (required with "all", R = sum(lengths))
//   last_items     I64 [E]         optional: the raw id of the newest item of each window; when
//                                  present it is checked against the data, so rows that belong
//                                  to other windows are caught even if the user ids match
// Hidden index convention (models/llm_rec.hpp, HF output_hidden_states): 0 = block input,
// k = after layer k, the last = after the final norm.
//
// Everything is validated against the data before training (SLMRecDistillation): a missing,
// unknown or duplicate example id, a window length or last item that disagrees with the data, a
// hidden size that differs from the student's, non-finite values: each a clear exception
// naming the file and the example.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/collective.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/models/llm_rec.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace distillrec::distill {

/// Which positions of a window are aligned: the newest item only (SLMRec's reference) or every one.
enum class AlignPositions { kLast, kAll };

inline std::string to_string(AlignPositions p) { return p == AlignPositions::kLast ? "last" : "all"; }

inline AlignPositions parse_align_positions(const std::string& name) {
  if (name == "last") return AlignPositions::kLast;
  if (name == "all") return AlignPositions::kAll;
  throw ConfigError("unknown alignment positions \"" + name + "\" (expected last or all)");
}

inline constexpr const char* kTeacherSignalsFormat = "distillrec-teacher-signals";

template <typename T = float>
class TeacherSignals {
 public:
  TeacherSignals() = default;

  /// layers: teacher hidden indices (one per block); hidden: the teacher's hidden size.
  TeacherSignals(std::vector<Index> layers, Index hidden, AlignPositions positions, std::string source)
      : layers_(std::move(layers)), hidden_(hidden), positions_(positions), source_(std::move(source)) {
    if (layers_.empty() || hidden_ <= 0) {
      throw ConfigError(source_ + ": teacher signals need at least one layer and a positive hidden size");
    }
  }

  /// Appends an example: states [tokens, blocks * hidden] (block-major columns), tokens = 1 for
  /// "last". last_item: raw id of the newest window item, or -1 if unknown.
  void add(std::int64_t example_id, const ConstMatrixRef<T>& states, std::int64_t last_item = -1) {
    if (states.cols() != width() || states.rows() <= 0 || (positions_ == AlignPositions::kLast && states.rows() != 1)) {
      throw ShapeError(detail::concat(source_, ": example ", example_id, ": states of shape [", states.rows(), ", ", states.cols(),
                                      "], expected [", positions_ == AlignPositions::kLast ? "1" : "tokens", ", ", width(), "]"));
    }
    if (!states.allFinite()) {
      throw FormatError(detail::concat(source_, ": example ", example_id, ": teacher hidden states contain NaN or infinite values"));
    }
    if (!index_.emplace(example_id, num_examples()).second) {
      throw FormatError(detail::concat(source_, ": example id ", example_id, " appears twice"));
    }
    ids_.push_back(example_id);
    last_items_.push_back(last_item);
    const auto old = data_.size();
    data_.resize(old + static_cast<std::size_t>(states.size()));
    Eigen::Map<Matrix<T>>(data_.data() + old, states.rows(), states.cols()) = states;
    offsets_.push_back(offsets_.back() + states.rows());
  }

  const std::string& source() const { return source_; }
  const std::vector<Index>& layers() const { return layers_; }
  Index num_blocks() const { return static_cast<Index>(layers_.size()); }
  Index hidden_size() const { return hidden_; }
  Index width() const { return num_blocks() * hidden_; }
  AlignPositions positions() const { return positions_; }
  Index num_examples() const { return static_cast<Index>(ids_.size()); }
  const std::vector<std::int64_t>& example_ids() const { return ids_; }
  const std::vector<std::int64_t>& last_items() const { return last_items_; }
  bool has_last_items() const {
    return std::all_of(last_items_.begin(), last_items_.end(), [](std::int64_t v) { return v >= 0; });
  }

  /// Example index of an id, or -1.
  Index find(std::int64_t example_id) const {
    const auto it = index_.find(example_id);
    return it == index_.end() ? Index(-1) : it->second;
  }
  Index length(Index e) const { return offsets_[static_cast<std::size_t>(e) + 1] - offsets_[static_cast<std::size_t>(e)]; }
  /// States of example e: [length(e), blocks * hidden], block-major columns.
  ConstMatrixMap<T> states(Index e) const {
    return ConstMatrixMap<T>(data_.data() + offsets_[static_cast<std::size_t>(e)] * width(), length(e), width());
  }
  Index total_rows() const { return offsets_.back(); }
  const std::vector<T>& data() const { return data_; }
  std::size_t bytes() const { return data_.size() * sizeof(T); }

 private:
  std::vector<Index> layers_;
  Index hidden_ = 0;
  AlignPositions positions_ = AlignPositions::kLast;
  std::string source_;
  std::vector<std::int64_t> ids_, last_items_;
  std::vector<Index> offsets_{0};
  std::vector<T> data_;
  std::unordered_map<std::int64_t, Index> index_;
};

/// Runs a frozen teacher (inference, no gradients) over every training example's window and
/// keeps its hidden states at `layers`, keyed by the example ids. item_raw_ids (optional, dense
/// item -> raw id) fills last_items. Parallel over blocks of examples; with a collective
/// (core/collective.hpp) each process runs the teacher on every size()-th block and the states
/// are summed across the processes, so every process ends with all of them (the one-process
/// values bit for bit: each is one process's value plus -0.0 from the others).
template <typename T>
TeacherSignals<T> compute_teacher_signals(const models::LLMRec<T>& teacher, const std::vector<Index>& layers,
                                          const data::ExampleSplit& split, AlignPositions positions,
                                          const std::vector<std::int64_t>* item_raw_ids = nullptr, Index block_examples = 256,
                                          Collective* collective = nullptr) {
  if (split.num_items != teacher.num_items()) {
    throw ShapeError(detail::concat("teacher signals: the data has ", split.num_items, " items, the teacher ", teacher.num_items()));
  }
  for (Index k : layers) {
    if (k < 0 || k > teacher.num_layers()) {
      throw ConfigError(detail::concat("teacher signals: layer index ", k, " is outside 0..", teacher.num_layers(), " of the teacher"));
    }
  }
  const Index max_length = teacher.config().max_length, h = teacher.hidden_size();
  const Index width = static_cast<Index>(layers.size()) * h;
  const auto& examples = split.train;
  const Index num_examples = static_cast<Index>(examples.size());
  std::vector<Matrix<T>> results(static_cast<std::size_t>(num_examples));
  const Index block = std::max<Index>(1, block_examples);
  const Index num_blocks = (num_examples + block - 1) / block;
  const int shards = collective != nullptr ? collective->size() : 1;
  const int shard = collective != nullptr ? collective->rank() : 0;
  run_agreeing_on_failure(collective, "teacher signals", [&] {
    parallel::ExceptionCollector errors;
#pragma omp parallel if (num_blocks > 1 && !parallel::in_parallel())
    {
      typename models::LLMRec<T>::Workspace ws;
      std::vector<Sequence> windows;
#pragma omp for schedule(dynamic, 1)
      for (Index bi = 0; bi < num_blocks; ++bi) errors.run([&] {
        const Index begin = bi * block, end = std::min(num_examples, begin + block);
        if (bi % shards != shard) {  // another process's block: the right shape, -0.0 (x + -0.0 is x, bit for bit)
          for (Index i = begin; i < end; ++i) {
            const Index rows = positions == AlignPositions::kLast ? 1 : std::min(examples[static_cast<std::size_t>(i)].end, max_length);
            results[static_cast<std::size_t>(i)].setConstant(rows, width, T(-0.0));
          }
          return;
        }
        windows.clear();
        for (Index i = begin; i < end; ++i) windows.push_back(split.window(examples[static_cast<std::size_t>(i)], max_length));
        teacher.forward_hidden_states(windows, ws);
        for (Index i = begin; i < end; ++i) {
          const Index s = i - begin;
          const Index first = positions == AlignPositions::kLast ? ws.layout.last(s) : ws.layout.begin(s);
          const Index rows = positions == AlignPositions::kLast ? 1 : ws.layout.length(s);
          Matrix<T>& out = results[static_cast<std::size_t>(i)];
          out.resize(rows, width);
          for (std::size_t b = 0; b < layers.size(); ++b) {
            out.middleCols(static_cast<Index>(b) * h, h) = teacher.hidden_state(ws, layers[b]).middleRows(first, rows);
          }
        }
      });
    }
    errors.rethrow();
  });
  if (shards > 1) {  // every process gets every block: one sum of all states
    std::size_t total = 0;
    for (const auto& m : results) total += static_cast<std::size_t>(m.size());
    std::vector<T> flat(total);
    std::size_t at = 0;
    for (const auto& m : results) {
      std::copy(m.data(), m.data() + m.size(), flat.begin() + static_cast<std::ptrdiff_t>(at));
      at += static_cast<std::size_t>(m.size());
    }
    collective->sum(flat.data(), flat.size());
    at = 0;
    for (auto& m : results) {
      std::copy(flat.begin() + static_cast<std::ptrdiff_t>(at), flat.begin() + static_cast<std::ptrdiff_t>(at + static_cast<std::size_t>(m.size())), m.data());
      at += static_cast<std::size_t>(m.size());
    }
  }
  TeacherSignals<T> signals(layers, h, positions, "in-process teacher");
  for (Index i = 0; i < num_examples; ++i) {
    const data::Example& e = examples[static_cast<std::size_t>(i)];
    std::int64_t last_item = -1;
    if (item_raw_ids != nullptr) last_item = item_raw_ids->at(static_cast<std::size_t>(*(split.history_end(e) - 1)));
    signals.add(e.id, results[static_cast<std::size_t>(i)], last_item);
    Matrix<T>().swap(results[static_cast<std::size_t>(i)]);
  }
  return signals;
}

/// Writes signals in the file schema above, atomically (a disk cache, or for other tools).
template <typename T>
void save_teacher_signals(const TeacherSignals<T>& signals, const std::string& path,
                          const std::map<std::string, std::string>& extra_metadata = {}) {
  io::SafetensorsWriter writer;
  for (const auto& [key, value] : extra_metadata) writer.set_metadata(key, value);
  writer.set_metadata("format", kTeacherSignalsFormat);
  writer.set_metadata("version", "1");
  writer.set_metadata("positions", to_string(signals.positions()));
  writer.set_metadata("layers", nlohmann::json(signals.layers()).dump());
  writer.add("example_ids", signals.example_ids());
  if (signals.positions() == AlignPositions::kAll) {
    std::vector<std::int64_t> lengths;
    for (Index e = 0; e < signals.num_examples(); ++e) lengths.push_back(signals.length(e));
    writer.add("lengths", lengths);
  }
  if (signals.has_last_items() && signals.num_examples() > 0) writer.add("last_items", signals.last_items());
  std::vector<float> values(signals.data().begin(), signals.data().end());
  writer.add("hidden_states", values.data(), {signals.total_rows(), signals.num_blocks(), signals.hidden_size()});
  writer.write(path);
}

/// Reads and checks a teacher-signal file (format, shapes, dtypes, finite values, unique ids).
/// Matching against the data happens in SLMRecDistillation.
template <typename T = float>
TeacherSignals<T> load_teacher_signals(const std::string& path) {
  const io::SafetensorsReader reader(path);
  const auto& meta = reader.metadata();
  auto meta_value = [&](const char* key) -> std::string {
    const auto it = meta.find(key);
    if (it == meta.end()) {
      throw FormatError(path + ": __metadata__ has no \"" + key + "\" (not a teacher-signal file? expected \"format\": \"" +
                        kTeacherSignalsFormat + "\")");
    }
    return it->second;
  };
  if (meta_value("format") != kTeacherSignalsFormat) {
    throw FormatError(path + ": __metadata__ \"format\" is \"" + meta_value("format") + "\", expected \"" + kTeacherSignalsFormat + "\"");
  }
  AlignPositions positions;
  try {
    positions = parse_align_positions(meta_value("positions"));
  } catch (const ConfigError& e) {
    throw FormatError(path + ": __metadata__ \"positions\": " + e.what());
  }
  std::vector<Index> layers;
  try {
    const nlohmann::json parsed = nlohmann::json::parse(meta_value("layers"));
    layers = parsed.get<std::vector<Index>>();
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": __metadata__ \"layers\" must be a JSON list of integers: " + e.what());
  }
  const auto ids = reader.read_integers("example_ids");
  const io::TensorInfo& info = reader.info("hidden_states");
  if (info.shape.size() != 3 || info.shape[1] != static_cast<std::int64_t>(layers.size()) || info.shape[2] <= 0) {
    throw ShapeError(detail::concat(path, ": tensor \"hidden_states\": expected shape [rows, ", layers.size(),
                                    " (layers), hidden], found ", io::detail::shape_string(info.shape)));
  }
  const auto rows = static_cast<Index>(info.shape[0]);
  const auto hidden = static_cast<Index>(info.shape[2]);
  std::vector<std::int64_t> lengths(ids.size(), 1);
  if (positions == AlignPositions::kAll) {
    lengths = reader.read_integers("lengths");
    if (lengths.size() != ids.size()) {
      throw ShapeError(detail::concat(path, ": tensor \"lengths\" has ", lengths.size(), " entries, \"example_ids\" ", ids.size()));
    }
  }
  std::int64_t total = 0;
  for (std::size_t e = 0; e < lengths.size(); ++e) {
    if (lengths[e] <= 0) throw FormatError(detail::concat(path, ": tensor \"lengths\": example ", ids[e], " has length ", lengths[e]));
    total += lengths[e];
  }
  if (total != rows) {
    throw ShapeError(detail::concat(path, ": tensor \"hidden_states\" has ", rows, " rows but ",
                                    positions == AlignPositions::kAll ? "the lengths add up to " : "there are examples: ", total));
  }
  std::vector<std::int64_t> last_items(ids.size(), -1);
  if (reader.contains("last_items")) {
    last_items = reader.read_integers("last_items");
    if (last_items.size() != ids.size()) {
      throw ShapeError(detail::concat(path, ": tensor \"last_items\" has ", last_items.size(), " entries, \"example_ids\" ", ids.size()));
    }
  }
  const std::vector<float> values = reader.read_floats("hidden_states");  // rejects NaN / Inf, naming the tensor
  TeacherSignals<T> signals(layers, hidden, positions, path);
  const Index width = static_cast<Index>(layers.size()) * hidden;
  Index row = 0;
  for (std::size_t e = 0; e < ids.size(); ++e) {
    const auto len = static_cast<Index>(lengths[e]);
    const Matrix<T> block =
        Eigen::Map<const Matrix<float>>(values.data() + row * width, len, width).template cast<T>();
    signals.add(ids[e], block, last_items[e]);
    row += len;
  }
  return signals;
}

}  // namespace distillrec::distill
