// distillrec/loss/softmax_ce.hpp
//
// Softmax cross-entropy.
//
// SoftmaxCrossEntropyWithLogits: logits z [n, C], integer targets y [n] (a target < 0 is
// ignored, PyTorch's ignore_index):
//     L = reduce_i  -log softmax(z_i)[y_i] = reduce_i ( logsumexp(z_i) - z_i[y_i] )
//     dL/dz_i = (softmax(z_i) - onehot(y_i)) / count      (count = #non-ignored rows for kMean)
//
// CatalogueSoftmaxCrossEntropy: the same over the whole item catalogue, from output vectors
// h [n, d] scored through the model's output head (nn/output_head.hpp: W [N, d], optional b):
//     z_i = h_i W^T (+ b),   L = reduce_i -log softmax(z_i)[y_i - 1],   y_i in 1..N
//     dL/dh = dz W,    dL/dW += dz^T h,    dL/db += column sums of dz
// Logits are formed a block of rows at a time, so memory stays at block_rows x N.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/kernels.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/loss/reduction.hpp"
#include "distillrec/nn/output_head.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace distillrec::loss {

/// sums[c] += the sum of column c of m, row after row (one order whatever the thread count);
/// chunks of columns run in parallel. Eigen's colwise().sum() on row-major storage is scalar.
template <typename T>
void add_column_sums(const ConstMatrixRef<T>& m, T* sums) {
  constexpr Index kColumnChunk = 2048;
  const Index cols = m.cols(), chunks = (cols + kColumnChunk - 1) / kColumnChunk;
  parallel::for_each(chunks, chunks > 1 && m.rows() * cols > 100000 && !parallel::in_parallel(), [&](Index chunk, int) {
    const Index begin = chunk * kColumnChunk, width = std::min(kColumnChunk, cols - begin);
    Eigen::Map<RowVector<T>> total(sums + begin, width);
    for (Index i = 0; i < m.rows(); ++i) total += m.row(i).segment(begin, width);
  });
}

template <typename T>
struct SoftmaxCrossEntropyWithLogits {
  Reduction reduction = Reduction::kMean;

  /// Returns the loss and writes dL/dlogits into grad (same shape as logits; may alias logits).
  /// `divisor` overrides the mean's denominator (used when a big batch is processed in blocks).
  T operator()(const ConstMatrixRef<T>& logits, const std::vector<Index>& targets, MatrixRef<T> grad,
               Index divisor = -1) const {
    std::vector<double> row_loss;
    return (*this)(logits, targets, grad, row_loss, divisor);
  }

  /// The same with the per-row losses kept in `row_loss` (reused: no allocation once grown).
  T operator()(const ConstMatrixRef<T>& logits, const std::vector<Index>& targets, MatrixRef<T> grad,
               std::vector<double>& row_loss, Index divisor = -1) const {
    const Index n = logits.rows(), classes = logits.cols();
    if (static_cast<Index>(targets.size()) != n) {
      throw ShapeError(distillrec::detail::concat("softmax cross-entropy: ", n, " rows of logits but ", targets.size(), " targets"));
    }
    require_shape(grad, n, classes, "softmax cross-entropy gradient");
    Index count = 0;
    for (Index i = 0; i < n; ++i) {
      const Index t = targets[static_cast<std::size_t>(i)];
      if (t >= classes) {
        throw ShapeError(distillrec::detail::concat("softmax cross-entropy: target ", t, " of row ", i, " is out of range [0, ", classes, ")"));
      }
      count += t >= 0;
    }
    const Index denominator = divisor > 0 ? divisor : (reduction == Reduction::kMean ? std::max<Index>(count, 1) : 1);
    const T scale = T(1) / static_cast<T>(denominator);
    row_loss.assign(static_cast<std::size_t>(n), 0.0);
    parallel::for_each(n, n * classes > 100000 && !parallel::in_parallel(), [&](Index i, int) {
      const Index t = targets[static_cast<std::size_t>(i)];
      T* g = grad.row(i).data();
      if (t < 0) {
        std::fill(g, g + classes, T(0));
        return;
      }
      if (g != logits.row(i).data()) std::copy(logits.row(i).data(), logits.row(i).data() + classes, g);
      const T target_logit = g[t];
      const T log_sum_exp = backend::kernels::softmax<T>(g, classes);
      row_loss[static_cast<std::size_t>(i)] = static_cast<double>(log_sum_exp - target_logit);
      for (Index c = 0; c < classes; ++c) g[c] *= scale;
      g[t] -= scale;
    });
    double total = 0.0;
    for (double v : row_loss) total += v;
    return static_cast<T>(total / static_cast<double>(denominator));
  }
};

template <typename T>
class CatalogueSoftmaxCrossEntropy {
 public:
  struct Workspace {
    ScratchMatrix<T> logits;               // [block_rows, N]
    std::vector<Index> block_targets;
    std::vector<double> row_loss;
  };

  Reduction reduction = Reduction::kMean;
  Index block_rows = 256;
  T weight = T(1);  // scales both gradients (a weighted term of a larger loss); the value returned is unweighted

  /// h [n, d] output vectors, targets [n] in 1..N (0 = ignore the row). Overwrites grad_h
  /// [n, d]; adds the head's gradients into grad_head (a frozen weight or missing bias skipped).
  T operator()(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, const std::vector<ItemId>& targets,
               MatrixRef<T> grad_h, nn::HeadGradients<T> grad_head, Workspace& ws) const {
    const Index n = h.rows(), d = h.cols(), num_items = head.num_items();
    if (head.dim() != d) {
      throw ShapeError(distillrec::detail::concat("catalogue softmax: output vectors have ", d, " columns but the output head has ", head.dim()));
    }
    if (static_cast<Index>(targets.size()) != n) {
      throw ShapeError(distillrec::detail::concat("catalogue softmax: ", n, " output vectors but ", targets.size(), " targets"));
    }
    require_shape(grad_h, n, d, "catalogue softmax output gradient");
    const bool weight_grad = grad_head.has_weight();
    if (weight_grad) require_shape(grad_head.weight, num_items, d, "catalogue softmax head gradient");
    Index count = 0;
    for (Index i = 0; i < n; ++i) {
      const ItemId t = targets[static_cast<std::size_t>(i)];
      if (t < 0 || t > num_items) {
        throw ShapeError(distillrec::detail::concat("catalogue softmax: target item ", t, " of row ", i, " is outside 1..", num_items));
      }
      count += t != kPaddingId;
    }
    const Index divisor = reduction == Reduction::kMean ? std::max<Index>(count, 1) : 1;
    const auto& items = head.weight;

    SoftmaxCrossEntropyWithLogits<T> ce;
    double total = 0.0;
    for (Index start = 0; start < n; start += block_rows) {
      const Index rows = std::min(block_rows, n - start);
      auto logits = ws.logits.resize(rows, num_items);
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), h.middleRows(start, rows), items, T(0), logits);
      if (head.bias != nullptr) {
        const Eigen::Map<const RowVector<T>> bias(head.bias, num_items);
        parallel::for_each(rows, rows * num_items > 100000 && !parallel::in_parallel(),
                           [&](Index i, int) { logits.row(i) += bias; });
      }
      ws.block_targets.resize(static_cast<std::size_t>(rows));
      for (Index i = 0; i < rows; ++i) {
        ws.block_targets[static_cast<std::size_t>(i)] = static_cast<Index>(targets[static_cast<std::size_t>(start + i)]) - 1;
      }
      total += static_cast<double>(ce(logits, ws.block_targets, logits, ws.row_loss, divisor)) * static_cast<double>(divisor);
      if (weight != T(1)) logits *= weight;
      backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), logits, items, T(0), grad_h.middleRows(start, rows));
      if (weight_grad) {
        backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), logits, h.middleRows(start, rows), T(1), grad_head.weight);
      }
      if (grad_head.bias != nullptr) add_column_sums<T>(logits, grad_head.bias);
    }
    return static_cast<T>(total / static_cast<double>(divisor));
  }

};

}  // namespace distillrec::loss
