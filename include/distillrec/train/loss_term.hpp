// distillrec/train/loss_term.hpp
//
// Composable objectives: the trainer runs its base objective (train/objective.hpp) and then a
// list of loss terms, each seeing the step through a StepContext:
//
//   the batch and its training examples (ids, histories: data/examples.hpp), the model and the
//   workspace of its forward pass, the model's outputs at every packed token and at each
//   sequence's newest token, and matrices to ADD their gradients to at those places (the trainer
//   zeroes them, scatters the newest-token gradients into the all-token ones and runs the model's
//   backward once); the prediction rows with their targets and the negatives the base objective
//   drew; the trainer's generator (any draw a term makes comes from it, so a seed fixes the run;
//   a draw for one example goes through draw_for_sequence(), keyed per example when the batch has
//   per-example streams); the global batch's counts and, in data-parallel training, sums across
//   the processes.
//
// A term may own trainable parameters (parameters()): the trainer's optimiser, gradient
// clipping, best-epoch snapshot and checkpoints handle them like the model's. A term adds its
// gradients wherever they belong: the context's output gradients, model-specific channels
// (LLMRec::hidden_state_grad), its own parameters' gradients, or the model's output head
// (ctx.model.output_gradients()). compute() returns its (weighted) part of the loss.
//
// Terms are tested alone with a finite-difference check of what they add (distill/slmrec.hpp is
// one: SLMRec's alignment and multi-supervision).
#pragma once

#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/nn/sequence_layout.hpp"
#include "distillrec/core/collective.hpp"

#include <map>
#include <string>
#include <vector>

namespace distillrec::train {

template <typename Model>
struct StepContext {
  using T = typename Model::Scalar;

  Model& model;
  typename Model::Workspace& workspace;  // the forward pass's: packed tokens and model internals
  const data::TrainingBatch& batch;
  const data::ExampleSplit& split;       // batch.examples index split.train
  ConstMatrixMap<T> outputs;             // [tokens, d]: the model's output at every packed token
  MatrixMap<T> grad_outputs;             // [tokens, d]: add dL/doutputs here
  ConstMatrixMap<T> newest_outputs;      // [sequences, d]: the output at each sequence's newest token
  MatrixMap<T> grad_newest_outputs;      // [sequences, d]: add here; scattered into grad_outputs
  const std::vector<Index>& prediction_rows;  // tokens with a target, ascending
  const std::vector<ItemId>& targets;         // their targets
  const std::vector<ItemId>& negatives;       // bce: num_negatives per prediction row, row-major
  Index num_negatives;                        // 0 unless the base objective is bce
  const std::vector<ItemId>& shared_negatives;  // sampled-softmax: the batch's shared negatives
  Rng& rng;
  Index epoch = 0;  // 1-based
  Index step = 0;   // 1-based within the epoch
  Collective* collective = nullptr;  // data-parallel training: the processes sharing the global batch

  /// Counts of the global batch (batch.totals; a data-parallel shard's own counts are smaller).
  /// Terms divide by these, so that the shards' losses and gradients sum to the global batch's.
  Index global_sequences() const { return batch.totals.rows > 0 ? batch.totals.rows : num_sequences(); }
  Index global_tokens() const { return batch.totals.rows > 0 ? batch.totals.tokens : layout().num_tokens(); }
  Index global_predictions() const {
    return batch.totals.rows > 0 ? batch.totals.predictions : static_cast<Index>(prediction_rows.size());
  }
  /// Sums values across the processes of a data-parallel run (in place; nothing in one process):
  /// for a term whose loss needs a statistic of the whole global batch.
  template <typename U>
  void sum_across_shards(U* data, std::size_t count) const {
    if (collective != nullptr && collective->size() > 1) collective->sum(data, count);
  }
  /// A stream keyed by the step, `purpose` and sequence s's training example: the same on any
  /// number of processes.
  Rng sequence_rng(Index s, std::uint64_t purpose) const {
    return Rng(batch.step_seed ^ (purpose * 0x9e3779b97f4a7c15ULL)).derive(static_cast<std::uint64_t>(example_index(s)));
  }
  /// Returns draw(generator) for a random draw that belongs to sequence s: ctx.rng in sequence,
  /// or, with per-example streams (batch.per_example_streams), sequence_rng(s, purpose).
  template <typename Draw>
  auto draw_for_sequence(Index s, std::uint64_t purpose, Draw&& draw) const {
    if (!per_example_streams()) return draw(rng);
    Rng keyed = sequence_rng(s, purpose);
    return draw(keyed);
  }
  bool per_example_streams() const { return batch.per_example_streams; }

  const nn::SequenceLayout& layout() const { return workspace.layout; }
  Index num_sequences() const { return workspace.layout.num_sequences(); }
  /// Index in split.train of the example packed as sequence s.
  Index example_index(Index s) const {
    return batch.examples[static_cast<std::size_t>(workspace.sequence_rows[static_cast<std::size_t>(s)])];
  }
  const data::Example& example(Index s) const { return split.train[static_cast<std::size_t>(example_index(s))]; }
};

template <typename Model>
class LossTerm {
 public:
  using T = typename Model::Scalar;

  virtual ~LossTerm() = default;

  /// Short name: progress output, EpochRecord::terms keys, checkpoint tensor prefix.
  virtual std::string name() const = 0;

  /// This step's part of the loss; adds its gradients (see the header comment).
  virtual T compute(StepContext<Model>& ctx) = 0;

  /// Trainable parameters the term owns, or nullptr.
  virtual Parameters<T>* parameters() { return nullptr; }

  /// Means of the term's components since the last call (unweighted, for progress); resets.
  virtual std::map<std::string, double> take_report() { return {}; }

  /// Before the step's forward pass (the batch is known, the gradients are zeroed): a term that
  /// changes what the model reads (embedding distillation's input offsets) prepares it here.
  virtual void before_forward(Model& /*model*/, const data::TrainingBatch& /*batch*/, const data::ExampleSplit& /*split*/) {}

  /// After the model's backward pass, before gradient hooks, clipping and the optimiser step: a
  /// term turns gradients the model left for it into gradients of its own parameters here.
  virtual void after_backward(Model& /*model*/) {}

  /// Before the model is evaluated (each validation, and once after training restores the best
  /// epoch, so the model the caller gets is the one that was selected).
  virtual void before_evaluation(Model& /*model*/) {}
};

/// The per-step matrices around the base objective and the loss terms, kept between steps so a
/// step allocates nothing once warm: the output gradients, the positions that predict (with
/// their targets and negatives gathered when not every position does), and the newest-token
/// outputs with their gradients. The trainer runs every step through it; a test or a custom
/// loop uses it to run loss terms on one forward pass:
///
///   const auto outputs = model.forward_train(batch, rng, ws);
///   buffers.begin(outputs, ws, /*with_newest=*/true);       // grad_outputs() zeroed
///   auto ctx = buffers.context(model, ws, batch, split, outputs, rng);
///   T loss = term.compute(ctx);                             // + any base loss into ctx.grad_outputs
///   buffers.finish(ws);                                      // newest-token gradients scattered in
///   model.backward(buffers.grad_outputs(), ws);
template <typename Model>
class StepBuffers {
 public:
  using T = typename Model::Scalar;

  /// Finds the positions with a target, zeroes the output gradients, and with `with_newest`
  /// gathers each sequence's newest output and zeroes its gradient.
  void begin(const ConstMatrixRef<T>& outputs, const typename Model::Workspace& ws, bool with_newest) {
    const Index n = outputs.rows(), d = outputs.cols();
    grad_outputs_.zeros(n, d);
    prediction_rows_.clear();
    for (Index t = 0; t < n; ++t) {
      if (ws.targets[static_cast<std::size_t>(t)] != kPaddingId) prediction_rows_.push_back(t);
    }
    with_newest_ = with_newest;
    const Index sequences = with_newest ? ws.layout.num_sequences() : 0;
    auto newest = newest_outputs_.resize(sequences, d);
    for (Index s = 0; s < sequences; ++s) newest.row(s) = outputs.row(ws.layout.last(s));
    grad_newest_outputs_.zeros(sequences, d);
    targets_ = &ws.targets;
    negatives_ = &ws.negatives;
  }

  /// Whether every packed position predicts (every-position supervision).
  bool every_position_predicts() const { return static_cast<Index>(prediction_rows_.size()) == grad_outputs_.rows(); }

  /// Gathers the predicting positions' outputs, targets and k negatives each (when not every
  /// position predicts); the context then describes the gathered rows.
  void gather_predictions(const ConstMatrixRef<T>& outputs, const typename Model::Workspace& ws, Index k) {
    const Index m = static_cast<Index>(prediction_rows_.size()), d = outputs.cols();
    auto rows = prediction_outputs_.resize(m, d);
    prediction_targets_.resize(static_cast<std::size_t>(m));
    prediction_negatives_.resize(static_cast<std::size_t>(m * k));
    for (Index i = 0; i < m; ++i) {
      const Index t = prediction_rows_[static_cast<std::size_t>(i)];
      rows.row(i) = outputs.row(t);
      prediction_targets_[static_cast<std::size_t>(i)] = ws.targets[static_cast<std::size_t>(t)];
      for (Index j = 0; j < k; ++j) {
        prediction_negatives_[static_cast<std::size_t>(i * k + j)] = ws.negatives[static_cast<std::size_t>(t * k + j)];
      }
    }
    prediction_grads_.resize(m, d);
    targets_ = &prediction_targets_;
    negatives_ = &prediction_negatives_;
  }

  /// The gathered predicting outputs [predictions, d] and a matrix for their gradients.
  ConstMatrixMap<T> prediction_outputs() const {
    return ConstMatrixMap<T>(prediction_outputs_.data(), prediction_outputs_.rows(), prediction_outputs_.cols());
  }
  MatrixMap<T> prediction_grads() { return prediction_grads_.map(); }
  /// Copies the gathered rows' gradients into the output gradients.
  void scatter_prediction_grads() {
    auto grad = grad_outputs_.map();
    const auto rows = prediction_grads_.map();
    for (Index i = 0; i < rows.rows(); ++i) grad.row(prediction_rows_[static_cast<std::size_t>(i)]) = rows.row(i);
  }

  MatrixMap<T> grad_outputs() { return grad_outputs_.map(); }
  const std::vector<Index>& prediction_rows() const { return prediction_rows_; }
  const std::vector<ItemId>& targets() const { return *targets_; }
  const std::vector<ItemId>& negatives() const { return *negatives_; }

  /// The loss terms' view of the step (after begin()).
  StepContext<Model> context(Model& model, typename Model::Workspace& ws, const data::TrainingBatch& batch,
                             const data::ExampleSplit& split, const ConstMatrixRef<T>& outputs, Rng& rng,
                             Index num_negatives = 0, const std::vector<ItemId>* shared_negatives = nullptr, Index epoch = 0,
                             Index step = 0) {
    return StepContext<Model>{model,
                              ws,
                              batch,
                              split,
                              ConstMatrixMap<T>(outputs.data(), outputs.rows(), outputs.cols()),
                              grad_outputs_.map(),
                              ConstMatrixMap<T>(newest_outputs_.data(), newest_outputs_.rows(), newest_outputs_.cols()),
                              grad_newest_outputs_.map(),
                              prediction_rows_,
                              *targets_,
                              *negatives_,
                              num_negatives,
                              shared_negatives != nullptr ? *shared_negatives : no_negatives_,
                              rng,
                              epoch,
                              step};
  }

  /// Adds the newest-token gradients into the output gradients at each sequence's newest row.
  void finish(const typename Model::Workspace& ws) {
    if (!with_newest_) return;
    auto grad = grad_outputs_.map();
    const auto newest = grad_newest_outputs_.map();
    for (Index s = 0; s < newest.rows(); ++s) grad.row(ws.layout.last(s)) += newest.row(s);
  }

 private:
  ScratchMatrix<T> grad_outputs_, prediction_outputs_, prediction_grads_, newest_outputs_, grad_newest_outputs_;
  std::vector<Index> prediction_rows_;
  std::vector<ItemId> prediction_targets_, prediction_negatives_, no_negatives_;
  const std::vector<ItemId>* targets_ = nullptr;
  const std::vector<ItemId>* negatives_ = nullptr;
  bool with_newest_ = false;
};

}  // namespace distillrec::train
