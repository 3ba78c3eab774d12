// distillrec/distill/embedding_distillation.hpp
//
// DLLM2Rec's collaborative embedding distillation (methods.md §2.4): the teacher's item
// embeddings g_i [D], projected by a small trainable network P, are added to the student's ID
// embeddings on the input side,
//
//   e_i = E[i] + w · P(g_i),     P(g) = W g + b                      (the reference: one linear layer)
//                                P(g) = W2 ReLU(W1 g + b1) + b2      (the paper's MLP; --projector mlp)
//
// trained jointly with the student (w = 0.2). There is no separate loss: the knowledge enters
// through the forward pass; the output head is untouched.
//
// EmbeddingDistillation is a loss term (train/loss_term.hpp) that owns P and feeds w·P(g) to the
// student's item lookup as row offsets (nn/embedding.hpp), so any model with an
// input_item_embedding() (SASRec, GRU4Rec, LLMRec) is a student, unchanged:
//   before_forward     projects the teacher rows of the items the batch reads (each once)
//   after_backward     turns the offsets' gradients into P's (dP from w · dΔ)
//   before_evaluation  projects every item, so validation and the caller see e_i for all items
//
// For deployment, fold() writes E[i] + w·P(g_i) into the student's item table and removes the
// offsets: the served model is a plain student that carries no teacher table and scores exactly
// as the training-time one. Folding changes the input table only, so it needs an untied output
// head (GRU4Rec's; a tied head would also score with the folded rows): fold() refuses a tied one.
// Save checkpoints after fold(): a checkpoint holds the model's parameters, not the offsets.
#pragma once

#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/nn/linear.hpp"
#include "distillrec/train/loss_term.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::distill {

enum class Projector { kLinear, kMlp };

inline std::string to_string(Projector p) { return p == Projector::kLinear ? "linear" : "mlp"; }

inline Projector parse_projector(const std::string& name) {
  if (name == "linear") return Projector::kLinear;
  if (name == "mlp") return Projector::kMlp;
  throw ConfigError("unknown projector \"" + name + "\" (expected linear or mlp)");
}

struct EmbeddingDistillationConfig {
  double weight = 0.2;                     // w (the reference's ed_weight)
  Projector projector = Projector::kLinear;
  Index mlp_hidden = 0;                    // the MLP's hidden width; 0: the student's item width

  void validate() const {
    if (!(weight > 0) || !std::isfinite(weight)) throw ConfigError(detail::concat("embedding distillation: w must be > 0, got ", weight));
    if (mlp_hidden < 0) throw ConfigError("embedding distillation: mlp_hidden must be >= 0");
  }
};

template <typename Model>
class EmbeddingDistillation : public train::LossTerm<Model> {
  static_assert(models::contract::has_input_item_embedding<Model>::value,
                "embedding distillation: the student must provide `nn::Embedding<Scalar>& input_item_embedding()` (models/model.hpp)");

 public:
  using T = typename Model::Scalar;

  /// Attaches the offsets to the student's item lookup (zero until the first step).
  EmbeddingDistillation(std::shared_ptr<const TeacherItemEmbeddings> teacher, Model& student, EmbeddingDistillationConfig config)
      : config_(config), params_(std::make_unique<Parameters<T>>()) {
    config_.validate();
    if (!teacher) throw ConfigError("embedding distillation: no teacher item embeddings");
    teacher->check(student.num_items());
    auto& lookup = student.input_item_embedding();
    const Index n = student.num_items(), d = lookup.dim(), width = teacher->dim();
    table_ = teacher->table.template cast<T>();
    if (config_.projector == Projector::kLinear) {
      layers_.emplace_back(*params_, "projection", width, d, true);
    } else {
      const Index hidden = config_.mlp_hidden > 0 ? config_.mlp_hidden : d;
      layers_.emplace_back(*params_, "projection.0", width, hidden, true);
      layers_.emplace_back(*params_, "projection.1", hidden, d, true);
    }
    params_->allocate();
    offsets_ = std::make_shared<Matrix<T>>(Matrix<T>::Zero(n + 1, d));
    offset_grads_ = std::make_shared<Matrix<T>>(Matrix<T>::Zero(n + 1, d));
    lookup.set_offsets(offsets_, offset_grads_);
    marks_.assign(static_cast<std::size_t>(n) + 1, 0);
  }

  const EmbeddingDistillationConfig& config() const { return config_; }
  std::string name() const override { return "embedding"; }
  Parameters<T>* parameters() override { return params_.get(); }
  Index teacher_dim() const { return table_.cols(); }

  /// Fresh projection (Xavier normal weights, zero biases).
  void initialize(Rng& rng) {
    for (auto& layer : layers_) layer.initialize(rng);
  }

  /// No loss of its own: the teacher's knowledge enters through the input.
  T compute(train::StepContext<Model>& /*ctx*/) override {
    require_attached();
    return T(0);
  }

  void before_forward(Model& /*model*/, const data::TrainingBatch& batch, const data::ExampleSplit& /*split*/) override {
    require_attached();
    items_.clear();
    const auto inputs = batch.inputs();  // what the model reads (0 = padding)
    const auto n = static_cast<ItemId>(marks_.size()) - 1;
    for (Index i = 0; i < inputs.size(); ++i) {
      const ItemId item = inputs.data()[i];
      if (item < 0 || item > n) {
        throw ShapeError(detail::concat("embedding distillation: the batch reads item ", item, ", outside 1..", n));
      }
      if (item > 0 && !marks_[static_cast<std::size_t>(item)]) {
        marks_[static_cast<std::size_t>(item)] = 1;
        items_.push_back(item);
      }
    }
    for (ItemId i : items_) marks_[static_cast<std::size_t>(i)] = 0;
    project(items_);
    for (ItemId i : items_) offset_grads_->row(i).setZero();
  }

  void after_backward(Model& /*model*/) override {
    const Index u = static_cast<Index>(items_.size());
    if (u == 0) return;
    const Index d = offsets_->cols();
    auto dy = dy_.resize(u, d);
    const T w = static_cast<T>(config_.weight);
    for (Index r = 0; r < u; ++r) dy.row(r) = w * offset_grads_->row(items_[static_cast<std::size_t>(r)]);
    if (layers_.size() == 1) {
      layers_[0].accumulate_grad(x_.map(), dy);
    } else {
      layers_[1].accumulate_grad(hidden_.map(), dy);
      auto dh = dh_.resize(u, layers_[0].out_features());
      layers_[1].backward(dy, dh);
      const auto pre = pre_.map();
      for (Index r = 0; r < u; ++r) {
        for (Index c = 0; c < dh.cols(); ++c) {
          if (!(pre(r, c) > T(0))) dh(r, c) = T(0);
        }
      }
      layers_[0].accumulate_grad(x_.map(), dh);
    }
  }

  void before_evaluation(Model& /*model*/) override {
    require_attached();
    project_all();
  }

  /// Writes E[i] + w·P(g_i) into the student's item table for every item and removes the
  /// offsets: afterwards the student scores exactly as it did with them, and needs no teacher.
  void fold(Model& model) {
    require_attached();
    const auto head = model.output_weights();
    auto& lookup = model.input_item_embedding();
    const auto table = lookup.table();
    if (head.weight.data() == table.data() + table.cols()) {
      throw ConfigError("embedding distillation: the student's output head is tied to its item table, so folding the projected "
                        "teacher embeddings into the table would change its scores; use an untied head");
    }
    project_all();
    auto& params = model.parameters();
    auto values = params.value(lookup.weight_id());
    for (Index i = 1; i < values.rows(); ++i) values.row(i) += offsets_->row(i);
    lookup.clear_offsets();
    folded_ = true;
  }

 private:
  void require_attached() const {
    if (folded_) throw ConfigError("embedding distillation: the projection was folded into the student; the term is spent");
  }

  /// offsets rows of `items` = w · P(g_items); keeps the activations for after_backward.
  void project(const std::vector<ItemId>& items) {
    const Index u = static_cast<Index>(items.size());
    if (u == 0) return;
    auto x = x_.resize(u, table_.cols());
    for (Index r = 0; r < u; ++r) x.row(r) = table_.row(items[static_cast<std::size_t>(r)] - 1);
    auto y = y_.resize(u, offsets_->cols());
    if (layers_.size() == 1) {
      layers_[0].forward(x, y);
    } else {
      auto pre = pre_.resize(u, layers_[0].out_features());
      layers_[0].forward(x, pre);
      auto hidden = hidden_.resize(u, layers_[0].out_features());
      hidden = pre.cwiseMax(T(0));
      layers_[1].forward(hidden, y);
    }
    const T w = static_cast<T>(config_.weight);
    for (Index r = 0; r < u; ++r) offsets_->row(items[static_cast<std::size_t>(r)]) = w * y.row(r);
  }

  /// Every item's offset, in blocks (bounded memory).
  void project_all() {
    const Index n = static_cast<Index>(table_.rows());
    constexpr Index kBlock = 4096;
    std::vector<ItemId> block;
    for (Index begin = 1; begin <= n; begin += kBlock) {
      block.clear();
      for (Index i = begin; i <= std::min(n, begin + kBlock - 1); ++i) block.push_back(static_cast<ItemId>(i));
      project(block);
    }
    items_.clear();  // no step's activations are kept
  }

  EmbeddingDistillationConfig config_;
  std::unique_ptr<Parameters<T>> params_;
  std::vector<nn::Linear<T>> layers_;
  Matrix<T> table_;                         // [N, D]: row j = item j + 1
  std::shared_ptr<Matrix<T>> offsets_;      // [N + 1, d], row 0 zero
  std::shared_ptr<Matrix<T>> offset_grads_; // [N + 1, d]
  std::vector<char> marks_;
  std::vector<ItemId> items_;               // the step's distinct items, in x_ / offsets order
  ScratchMatrix<T> x_, pre_, hidden_, y_, dy_, dh_;
  bool folded_ = false;
};

}  // namespace distillrec::distill
