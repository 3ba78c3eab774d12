// distillrec/distill/slmrec.hpp
//
// SLMRec distillation (Xu et al., ICLR 2025; methods.md §1.7): a shallow LLMRec student learns
// from a deep, frozen LLMRec teacher through block-wise hidden-state alignment and extra
// supervision of its intermediate layers:
//
//   L = L_ce + λ_cos D_cos + λ_norm D_norm + λ_ms L_ms                  defaults 1.0, 0.1, 1.0
//   D_cos  = Σ_{i=1..B} (1 - mean_b cos(s_i[b], t_i[b]))                loss/alignment.hpp
//   D_norm = Σ_{i=1..B} mean_b |s_i[b] - t_i[b]|_2                      un-squared as in the
//                                                                       reference (flag: squared,
//                                                                       the paper's formula)
//   L_ms   = Σ_{i=1..B-1} CE(W_a^(i) s_i · E^T, y)                      the student's supervision
//                                                                       heads, full softmax
// s_i, t_i: student and teacher hidden states at the i-th pair of the layer map
// (distill/layer_map.hpp), at the newest position of each training window (the reference) or,
// with AlignPositions::kAll, at every position. L_ce is the trainer's next-item objective
// (full-softmax cross-entropy over the catalogue, at every position). Each term can be switched
// off for ablations. Teacher states come from TeacherSignals (distill/teacher.hpp), computed
// once, never differentiated.
//
// SLMRecDistillation is a loss term (train/loss_term.hpp): build it (it checks the signals
// against the training examples and the student), initialise its heads and add it to the
// trainer (Trainer::add_term); at every step it returns its part of the loss and leaves its
// gradients at the student's hidden states (LLMRec::hidden_state_grad), its own heads and the
// student's output head. It owns the supervision heads W_a ("supervision_heads.{j}.weight"
// [d_item, hidden], one per intermediate block end of the layer map): trainable parameters of
// the distillation, optimised, snapshotted and checkpointed by the trainer with the student's,
// and not part of the student (a distilled student is a plain LLMRec).
//
// Differences from the reference, on purpose: a failing term raises instead of silently falling
// back to L_ce; the softmax excludes the padding row; the layer counts must divide.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/distill/layer_map.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/loss/alignment.hpp"
#include "distillrec/loss/softmax_ce.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/nn/linear.hpp"
#include "distillrec/train/loss_term.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace distillrec::distill {

struct SLMRecConfig {
  Index blocks = 4;            // B
  double lambda_cos = 1.0;
  double lambda_norm = 0.1;
  double lambda_ms = 1.0;
  bool use_cos = true;         // switches for ablations
  bool use_norm = true;
  bool use_ms = true;
  bool squared_norm = false;   // D_norm as |s - t|^2 (the paper) instead of |s - t| (the code)
  AlignPositions positions = AlignPositions::kLast;

  void validate() const {
    if (blocks <= 0) throw ConfigError(detail::concat("SLMRec: blocks must be positive, got ", blocks));
    for (double l : {lambda_cos, lambda_norm, lambda_ms}) {
      if (!(l >= 0.0) || !std::isfinite(l)) throw ConfigError(detail::concat("SLMRec: the λ weights must be finite and >= 0, got ", l));
    }
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"blocks", blocks},         {"lambda_cos", lambda_cos}, {"lambda_norm", lambda_norm},
                          {"lambda_ms", lambda_ms},   {"use_cos", use_cos},       {"use_norm", use_norm},
                          {"use_ms", use_ms},         {"squared_norm", squared_norm},
                          {"positions", to_string(positions)}};
  }
};

/// Mean value of each term over the steps since the last call of take_terms().
struct SLMRecTerms {
  double cos = 0.0, norm = 0.0, ms = 0.0;  // D_cos, D_norm, L_ms (unweighted)
  Index steps = 0;
};

/// Copies the teacher's item table, adapters, first N blocks and final norm into a student of
/// the same widths (SLMRec's students start from the teacher's first layers). ShapeError if a
/// shape differs.
template <typename T>
void init_student_from_teacher(const models::LLMRec<T>& teacher, models::LLMRec<T>& student) {
  if (student.num_layers() > teacher.num_layers()) {
    throw ConfigError(detail::concat("student initialisation: the student has ", student.num_layers(), " layers, the teacher only ",
                                     teacher.num_layers()));
  }
  const auto& tp = teacher.parameters();
  auto& sp = student.parameters();
  for (const auto& info : sp.infos()) {
    const Index id = tp.find(info.name);
    if (id < 0) throw ShapeError("student initialisation: the teacher has no parameter \"" + info.name + "\"");
    const auto& ti = tp.info(id);
    if (ti.rows != info.rows || ti.cols != info.cols) {
      throw ShapeError(detail::concat("student initialisation: \"", info.name, "\" is [", ti.rows, ", ", ti.cols, "] in the teacher and [",
                                      info.rows, ", ", info.cols, "] in the student"));
    }
    sp.value(sp.find(info.name)) = tp.value(id);
  }
}

template <typename T>
class SLMRecDistillation : public train::LossTerm<models::LLMRec<T>> {
 public:
  using Student = models::LLMRec<T>;

  /// Shares `signals`. Checks everything before training: the signals' layers against the map,
  /// their hidden size against the student's, the student's depth, and every training example
  /// of `split` (present by id, same window length, and the same newest item when the signals
  /// carry last_items and item_raw_ids (dense item -> raw id) is given); signals for examples
  /// the split does not train on are an error too.
  SLMRecDistillation(const SLMRecConfig& config, const LayerMap& map, std::shared_ptr<const TeacherSignals<T>> signals,
                     const data::ExampleSplit& split, const Student& student,
                     const std::vector<std::int64_t>* item_raw_ids = nullptr)
      : config_(config), map_(map), signals_(std::move(signals)), params_(std::make_unique<Parameters<T>>()) {
    config_.validate();
    if (!signals_) throw ConfigError("SLMRec: no teacher signals");
    const TeacherSignals<T>& sig = *signals_;
    const std::string& src = sig.source();
    if (map.blocks != config.blocks) {
      throw ConfigError(detail::concat("SLMRec: the layer map has ", map.blocks, " blocks, the configuration ", config.blocks));
    }
    if (student.num_layers() != map.student_layers) {
      throw ConfigError(detail::concat("SLMRec: the student has ", student.num_layers(), " layers, the layer map expects ",
                                       map.student_layers));
    }
    if (sig.layers() != map.teacher_indices()) {
      throw ConfigError(detail::concat(src, ": teacher signals hold layers ", nlohmann::json(sig.layers()).dump(),
                                       " but the layer map aligns teacher layers ", nlohmann::json(map.teacher_indices()).dump()));
    }
    if (sig.hidden_size() != student.hidden_size()) {
      throw ShapeError(detail::concat(src, ": teacher hidden size ", sig.hidden_size(), " differs from the student's ",
                                      student.hidden_size(), " (feature alignment compares states of equal width)"));
    }
    if (sig.positions() != config.positions) {
      throw ConfigError(src + ": teacher signals were taken at \"" + to_string(sig.positions()) +
                        "\" positions, the distillation aligns \"" + to_string(config.positions) + "\" positions");
    }
    // Every training example has exactly its window in the signals, and the signals nothing else.
    const Index max_length = student.config().max_length;
    signal_of_example_.assign(split.train.size(), -1);
    std::vector<char> taken(static_cast<std::size_t>(sig.num_examples()), 0);
    Index used = 0;
    for (std::size_t i = 0; i < split.train.size(); ++i) {
      const data::Example& example = split.train[i];
      const Sequence window = split.window(example, max_length);
      const std::int64_t id = example.id;
      const Index e = sig.find(id);
      if (e < 0) {
        throw FormatError(detail::concat(src, ": no teacher states for example id ", id,
                                         " (a training example of the data); the signals' example ids do not match the data"));
      }
      const Index expected = config.positions == AlignPositions::kLast ? 1 : static_cast<Index>(window.size());
      if (sig.length(e) != expected) {
        throw FormatError(detail::concat(src, ": example id ", id, " has ", sig.length(e), " positions, its window in the data has ",
                                         expected, " (were the signals written for another max_length or split?)"));
      }
      const std::int64_t last = sig.last_items()[static_cast<std::size_t>(e)];
      if (item_raw_ids != nullptr && last >= 0 && item_raw_ids->at(static_cast<std::size_t>(window.back())) != last) {
        throw FormatError(detail::concat(src, ": example id ", id, ": the newest window item is ", last, " in the signals but ",
                                         item_raw_ids->at(static_cast<std::size_t>(window.back())),
                                         " in the data (rows belong to other windows)"));
      }
      if (taken[static_cast<std::size_t>(e)]) {
        throw ConfigError(detail::concat(split.source, ": two training examples share the id ", id, "; teacher signals need unique ids"));
      }
      taken[static_cast<std::size_t>(e)] = 1;
      signal_of_example_[i] = e;
      ++used;
    }
    if (used != sig.num_examples()) {
      throw FormatError(detail::concat(src, ": ", sig.num_examples() - used, " of the ", sig.num_examples(),
                                       " examples are not training examples of the data; the signals' example ids do not match"));
    }
    if (config_.use_ms) {
      for (std::size_t j = 0; j < map_.supervision_layers.size(); ++j) {
        heads_.emplace_back(*params_, "supervision_heads." + std::to_string(j), student.hidden_size(), student.item_dim(), false);
      }
    }
    if (!heads_.empty()) params_->allocate();
  }

  const SLMRecConfig& config() const { return config_; }
  const LayerMap& layer_map() const { return map_; }

  /// Fresh supervision heads (Xavier normal, as the student's layers).
  void initialize(Rng& rng) {
    for (auto& head : heads_) head.initialize(rng);
  }

  std::string name() const override { return "slmrec"; }

  /// The heads' parameters (nullptr without multi-supervision).
  Parameters<T>* parameters() override { return heads_.empty() ? nullptr : params_.get(); }
  Index num_supervision_heads() const { return static_cast<Index>(heads_.size()); }
  nn::Linear<T>& supervision_head(Index j) { return heads_.at(static_cast<std::size_t>(j)); }

  /// The distillation part of the loss for the step's batch; leaves its gradients at the
  /// student's hidden states, its heads and the student's output head.
  T compute(train::StepContext<Student>& ctx) override {
    Student& student = ctx.model;
    auto& ws = ctx.workspace;
    gather_rows(ctx);
    const Index rows = static_cast<Index>(token_rows_.size());
    // Means over the global batch (its counts are 0, meaning the rows given, outside a trainer).
    const bool last = config_.positions == AlignPositions::kLast;
    cosine_.denominator = distance_.denominator = last ? ctx.batch.totals.rows : ctx.batch.totals.tokens;
    ce_.denominator = last ? ctx.batch.totals.rows : ctx.batch.totals.predictions;
    const Index h = student.hidden_size();
    double cos_total = 0.0, norm_total = 0.0, ms_total = 0.0;
    for (std::size_t i = 0; i < map_.pairs.size(); ++i) {
      const Index k = map_.pairs[i].student;
      if (!config_.use_cos && !config_.use_norm) break;
      const auto hidden = student.hidden_state(ws, k);
      auto s = s_.resize(rows, h);
      auto t = t_.resize(rows, h);
      for (Index r = 0; r < rows; ++r) {
        s.row(r) = hidden.row(token_rows_[static_cast<std::size_t>(r)]);
        t.row(r) = signals_->states(signal_rows_[static_cast<std::size_t>(r)].first)
                       .row(signal_rows_[static_cast<std::size_t>(r)].second)
                       .segment(static_cast<Index>(i) * h, h);
      }
      auto g = g_.resize(rows, h);
      auto total = gsum_.zeros(rows, h);
      if (config_.use_cos) {
        cos_total += static_cast<double>(cosine_(s, t, g));
        total += static_cast<T>(config_.lambda_cos) * g;
      }
      if (config_.use_norm) {
        distance_.squared = config_.squared_norm;
        norm_total += static_cast<double>(distance_(s, t, g));
        total += static_cast<T>(config_.lambda_norm) * g;
      }
      scatter(student.hidden_state_grad(ws, k), total);
    }
    if (config_.use_ms && !heads_.empty()) {
      targets_.resize(static_cast<std::size_t>(rows));
      for (Index r = 0; r < rows; ++r) targets_[static_cast<std::size_t>(r)] = ws.targets[static_cast<std::size_t>(token_rows_[static_cast<std::size_t>(r)])];
      ce_.weight = static_cast<T>(config_.lambda_ms);
      for (Index j = 0; j < num_supervision_heads(); ++j) {
        const Index k = map_.supervision_layers[static_cast<std::size_t>(j)];
        const auto hidden = student.hidden_state(ws, k);
        auto s = s_.resize(rows, h);
        for (Index r = 0; r < rows; ++r) s.row(r) = hidden.row(token_rows_[static_cast<std::size_t>(r)]);
        auto& head = heads_[static_cast<std::size_t>(j)];
        auto u = u_.resize(rows, student.item_dim());
        head.forward(s, u);
        auto gu = gu_.resize(rows, student.item_dim());
        ms_total += static_cast<double>(ce_(u, student.output_weights(), targets_, gu, student.output_gradients(), ce_ws_));
        head.accumulate_grad(s, gu);  // gu already carries λ_ms
        auto gs = g_.resize(rows, h);
        head.backward(gu, gs);
        scatter(student.hidden_state_grad(ws, k), gs);
      }
    }
    terms_.cos += cos_total;
    terms_.norm += norm_total;
    terms_.ms += ms_total;
    ++terms_.steps;
    report_.cos += cos_total;
    report_.norm += norm_total;
    report_.ms += ms_total;
    ++report_.steps;
    return static_cast<T>(config_.lambda_cos * cos_total + config_.lambda_norm * norm_total + config_.lambda_ms * ms_total);
  }

  /// Mean unweighted D_cos, D_norm and L_ms since the last call (progress output), then resets.
  std::map<std::string, double> take_report() override {
    const SLMRecTerms t = mean(report_);
    report_ = SLMRecTerms{};
    std::map<std::string, double> out;
    if (t.steps == 0) return out;
    if (config_.use_cos) out["cos"] = t.cos;
    if (config_.use_norm) out["norm"] = t.norm;
    if (config_.use_ms && !heads_.empty()) out["ms"] = t.ms;
    return out;
  }

  /// Mean unweighted terms since the last call of take_terms(), then resets.
  SLMRecTerms take_terms() {
    const SLMRecTerms out = mean(terms_);
    terms_ = SLMRecTerms{};
    return out;
  }

 private:
  static SLMRecTerms mean(SLMRecTerms t) {
    if (t.steps > 0) {
      t.cos /= static_cast<double>(t.steps);
      t.norm /= static_cast<double>(t.steps);
      t.ms /= static_cast<double>(t.steps);
    }
    return t;
  }

  void gather_rows(const train::StepContext<Student>& ctx) {
    token_rows_.clear();
    signal_rows_.clear();
    const auto& layout = ctx.layout();
    for (Index s = 0; s < layout.num_sequences(); ++s) {
      const Index example = ctx.example_index(s);
      const Index e = example >= 0 && example < static_cast<Index>(signal_of_example_.size())
                          ? signal_of_example_[static_cast<std::size_t>(example)]
                          : -1;
      if (e < 0) throw ShapeError(detail::concat("SLMRec: training example ", example, " has no teacher states"));
      if (config_.positions == AlignPositions::kLast) {
        token_rows_.push_back(layout.last(s));
        signal_rows_.emplace_back(e, 0);
      } else {
        if (signals_->length(e) != layout.length(s)) {
          throw ShapeError(detail::concat("SLMRec: training example ", example, " has a window of ", layout.length(s),
                                          " items, its teacher states ", signals_->length(e)));
        }
        for (Index t = layout.begin(s); t < layout.end(s); ++t) {
          token_rows_.push_back(t);
          signal_rows_.emplace_back(e, t - layout.begin(s));
        }
      }
    }
  }

  void scatter(MatrixMap<T> grad, const ConstMatrixRef<T>& rows_grad) const {
    for (Index r = 0; r < rows_grad.rows(); ++r) grad.row(token_rows_[static_cast<std::size_t>(r)]) += rows_grad.row(r);
  }

  SLMRecConfig config_;
  LayerMap map_;
  std::shared_ptr<const TeacherSignals<T>> signals_;
  std::unique_ptr<Parameters<T>> params_;  // the supervision heads
  std::vector<nn::Linear<T>> heads_;
  std::vector<Index> signal_of_example_;   // training example -> signal example
  std::vector<Index> token_rows_;
  std::vector<std::pair<Index, Index>> signal_rows_;
  std::vector<ItemId> targets_;
  ScratchMatrix<T> s_, t_, g_, gsum_, u_, gu_;
  loss::CosineAlignment<T> cosine_;
  loss::FeatureDistance<T> distance_;
  loss::CatalogueSoftmaxCrossEntropy<T> ce_;
  typename loss::CatalogueSoftmaxCrossEntropy<T>::Workspace ce_ws_;
  SLMRecTerms terms_, report_;
};

}  // namespace distillrec::distill
