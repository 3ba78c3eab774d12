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
// With precision = MatmulPrecision::kBf16 the three catalogue GEMMs take bfloat16 inputs (h, W
// and dz rounded to nearest even) and accumulate in fp32 (backend/bf16_gemm.hpp: oneDNN's bf16
// matmul where the CPU has one, else the same products widened to fp32); the softmax, the loss
// and every gradient buffer stay fp32.
#pragma once

#include "distillrec/backend/bf16_gemm.hpp"
#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/kernels.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/loss/reduction.hpp"
#include "distillrec/nn/output_head.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
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

namespace detail {

// detail::concat written in this namespace means the library-wide helper.
using distillrec::detail::concat;

/// One row of softmax cross-entropy in place: g holds the logits (classes of them) and receives
/// (softmax - onehot(target)) * scale; returns -log softmax[target].
template <typename T>
double softmax_ce_row(T* g, Index classes, Index target, T scale) {
  const T target_logit = g[target];
  const T log_sum_exp = backend::kernels::softmax<T>(g, classes);
  for (Index c = 0; c < classes; ++c) g[c] *= scale;
  g[target] -= scale;
  return static_cast<double>(log_sum_exp - target_logit);
}

}  // namespace detail

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
      row_loss[static_cast<std::size_t>(i)] = detail::softmax_ce_row<T>(g, classes, t, scale);
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
    // [d, N]: the head's table transposed, and its gradient (two table-sized buffers: 12 MB at
    // 23,715 x 64, 512 MB at a million items, beside the [block_rows, N] logits)
    ScratchMatrix<T> items_t, grad_items_t;
    std::vector<double> row_loss;
    ScratchMatrix<T> bias_partials;        // [groups of a block, N]: the bias gradient's partial sums
    // bf16 precision: the table, a block of output vectors and of dz as bfloat16, the products.
    std::vector<std::uint16_t> items_bf16, h_bf16, dz_bf16;
    backend::Bf16Gemm gemm;
  };

  /// At most this many rows of a block have their bias gradients summed together before the
  /// groups are added (the group size depends on the block's height only, so the sums' order
  /// does not depend on the thread count).
  static constexpr Index kBiasGroupRows = 16;

  Reduction reduction = Reduction::kMean;
  /// > 0: the mean divides by this instead of the rows given (a data-parallel shard divides by
  /// its global batch's count, so the shards' losses and gradients sum to the global batch's).
  Index denominator = 0;
  Index block_rows = 256;
  T weight = T(1);  // scales both gradients (a weighted term of a larger loss); the value returned is unweighted
  /// Precision of the three catalogue GEMMs (bf16: float only).
  backend::MatmulPrecision precision = backend::MatmulPrecision::kFp32;

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
    const Index divisor = reduction == Reduction::kMean ? (denominator > 0 ? denominator : std::max<Index>(count, 1)) : 1;
    if (n == 0) return T(0);
    if (precision == backend::MatmulPrecision::kBf16) {
      if constexpr (std::is_same<T, float>::value) {
        return compute_bf16(h, head, targets, grad_h, grad_head, ws, divisor);
      } else {
        throw ConfigError("catalogue softmax: bf16 precision needs float parameters");
      }
    }

    // The table is used transposed, [d, N]: oneDNN's sgemm runs the logits h W^T and the
    // table's gradient (W's gradient transposed, h^T dz, summed over the blocks) 14-23% faster
    // with the N-wide operand untransposed (grad_h = dz W takes either layout alike) (bench/catalogue_softmax; bench/results/catalogue_softmax_avx2.txt).
    // Per block: the logits by one GEMM; then each row in place while it is in cache
    // (kernels::exp_shifted: the bias, the max and the exponentials in two passes; a third
    // scales it into dz) and, for the bias gradient, added into its group's partial column
    // sums (groups of up to kBiasGroupRows rows, summed row after row and then group after
    // group: one order whatever the thread count); then the two gradient GEMMs. At the end the
    // transposed table gradient is added into the head's. grad_h must not alias h (the table's
    // gradient reads h after grad_h's block is written).
    auto items_t = ws.items_t.resize(d, num_items);
    transpose_into(head.weight, items_t, /*add=*/false);
    auto grad_items_t = ws.grad_items_t.resize(weight_grad ? d : 0, num_items);
    const T scale = weight / static_cast<T>(divisor);
    const T* bias = head.bias;
    T* bias_grad = grad_head.bias;
    double total = 0.0;
    for (Index start = 0; start < n; start += block_rows) {
      const Index rows = std::min(block_rows, n - start);
      auto logits = ws.logits.resize(rows, num_items);
      backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), h.middleRows(start, rows), items_t, T(0), logits);
      ws.row_loss.assign(static_cast<std::size_t>(rows), 0.0);
      // Rows in groups: one row per group without a bias gradient; with one, the group's rows
      // share a partial sum (at most kBiasGroupRows rows, fewer in small blocks so that they
      // still spread over the threads; the size depends on the block only).
      const Index group_rows = bias_grad == nullptr ? 1 : std::clamp<Index>(rows / 8, 1, kBiasGroupRows);
      const Index groups = (rows + group_rows - 1) / group_rows;
      auto partial = ws.bias_partials.resize(bias_grad != nullptr ? groups : 0, num_items);
      parallel::for_each(groups, rows * num_items > 100000 && !parallel::in_parallel(), [&](Index group, int) {
        const Index first = group * group_rows, last = std::min(rows, first + group_rows);
        bool summed = false;
        for (Index i = first; i < last; ++i) {
          T* z = logits.row(i).data();
          const ItemId t = targets[static_cast<std::size_t>(start + i)];
          if (t == kPaddingId) {
            std::fill(z, z + num_items, T(0));
            continue;
          }
          const T target_logit = bias != nullptr ? z[t - 1] + bias[t - 1] : z[t - 1];
          const auto parts = backend::kernels::exp_shifted<T>(z, bias, num_items);
          ws.row_loss[static_cast<std::size_t>(i)] = static_cast<double>(parts.max + std::log(parts.sum) - target_logit);
          backend::kernels::scale<T>(z, parts.sum > T(0) ? scale / parts.sum : T(0), num_items);
          z[t - 1] -= scale;
          if (bias_grad != nullptr) {
            if (summed) {
              partial.row(group) += logits.row(i);
            } else {
              partial.row(group) = logits.row(i);
              summed = true;
            }
          }
        }
        if (bias_grad != nullptr && !summed) partial.row(group).setZero();
      });
      for (double v : ws.row_loss) total += v;
      if (bias_grad != nullptr) add_column_sums<T>(partial, bias_grad);
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), logits, items_t, T(0), grad_h.middleRows(start, rows));
      if (weight_grad) {
        backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), h.middleRows(start, rows), logits,
                      start == 0 ? T(0) : T(1), grad_items_t);
      }
    }
    if (weight_grad && n > 0) transpose_into(grad_items_t, grad_head.weight, /*add=*/true);
    return static_cast<T>(total / static_cast<double>(divisor));
  }

 private:
  // to = from^T (add: to += from^T), in chunks of to's longer side on the library's threads.
  template <typename From, typename To>
  static void transpose_into(const From& from, To& to, bool add) {
    constexpr Index kChunk = 512;
    const bool by_rows = to.rows() >= to.cols();
    const Index length = by_rows ? to.rows() : to.cols(), chunks = (length + kChunk - 1) / kChunk;
    parallel::for_each(chunks, chunks > 1 && to.size() > 100000 && !parallel::in_parallel(), [&](Index chunk, int) {
      const Index begin = chunk * kChunk, count = std::min(kChunk, length - begin);
      if (by_rows && add) {
        to.middleRows(begin, count) += from.middleCols(begin, count).transpose();
      } else if (by_rows) {
        to.middleRows(begin, count) = from.middleCols(begin, count).transpose();
      } else if (add) {
        to.middleCols(begin, count) += from.middleRows(begin, count).transpose();
      } else {
        to.middleCols(begin, count) = from.middleRows(begin, count).transpose();
      }
    });
  }

  // The bf16 path: per block, logits = h W^T from bfloat16 h and W; the softmax rows in fp32,
  // their gradient written as bfloat16 as each row is finished (it is read twice more); then
  // grad_h = dz W and grad_W += dz^T h from the bfloat16 values. Blocks are padded to a
  // multiple of 64 rows with zero rows (zero gradient), so grad_W's product, whose inner
  // dimension is the block height, reuses at most block_rows / 64 primitives.
  T compute_bf16(const ConstMatrixRef<T>& h, const nn::HeadWeights<T>& head, const std::vector<ItemId>& targets,
                 MatrixRef<T> grad_h, nn::HeadGradients<T> grad_head, Workspace& ws, Index divisor) const {
    using backend::Trans;
    const Index n = h.rows(), d = h.cols(), num_items = head.num_items();
    const bool weight_grad = grad_head.has_weight();
    constexpr Index kPad = 64;
    const Index max_rows = std::min(block_rows, n);
    const Index padded_max = (max_rows + kPad - 1) / kPad * kPad;
    ws.items_bf16.resize(static_cast<std::size_t>(num_items * d));
    backend::bf16::convert_rows(head.weight, ws.items_bf16.data());
    ws.h_bf16.resize(static_cast<std::size_t>(padded_max * d));
    ws.dz_bf16.resize(static_cast<std::size_t>(padded_max * num_items));
    const T scale = weight / static_cast<T>(divisor);
    const bool bias_grad = grad_head.bias != nullptr;
    double total = 0.0;
    for (Index start = 0; start < n; start += block_rows) {
      const Index rows = std::min(block_rows, n - start);
      const Index padded = (rows + kPad - 1) / kPad * kPad;
      backend::bf16::convert_rows(h.middleRows(start, rows), ws.h_bf16.data());
      std::fill(ws.h_bf16.begin() + rows * d, ws.h_bf16.begin() + padded * d, std::uint16_t{0});
      auto logits = ws.logits.resize(rows, num_items);
      ws.gemm.run(Trans::kNo, Trans::kYes, rows, num_items, d, ws.h_bf16.data(), ws.items_bf16.data(), logits.data(),
                  logits.outerStride(), false);
      const T* bias = head.bias;
      ws.row_loss.assign(static_cast<std::size_t>(rows), 0.0);
      parallel::for_each(rows, rows * num_items > 100000 && !parallel::in_parallel(), [&](Index i, int) {
        T* g = logits.row(i).data();
        std::uint16_t* out = ws.dz_bf16.data() + i * num_items;
        const ItemId t = targets[static_cast<std::size_t>(start + i)];
        if (t == kPaddingId) {
          std::fill(g, g + num_items, T(0));
          std::fill(out, out + num_items, std::uint16_t{0});
          return;
        }
        if (bias != nullptr) {
          for (Index c = 0; c < num_items; ++c) g[c] += bias[c];
        }
        ws.row_loss[static_cast<std::size_t>(i)] = detail::softmax_ce_row<T>(g, num_items, t - 1, scale);
        backend::bf16::convert(g, out, num_items);
      });
      for (double v : ws.row_loss) total += v;
      std::fill(ws.dz_bf16.begin() + rows * num_items, ws.dz_bf16.begin() + padded * num_items, std::uint16_t{0});
      ws.gemm.run(Trans::kNo, Trans::kNo, rows, d, num_items, ws.dz_bf16.data(), ws.items_bf16.data(),
                  grad_h.middleRows(start, rows).data(), grad_h.outerStride(), false);
      if (weight_grad) {
        ws.gemm.run(Trans::kYes, Trans::kNo, num_items, d, padded, ws.dz_bf16.data(), ws.h_bf16.data(),
                    grad_head.weight.data(), grad_head.weight.outerStride(), true, /*fixed_m=*/true);
      }
      if (bias_grad) add_column_sums<T>(logits, grad_head.bias);
    }
    return static_cast<T>(total / static_cast<double>(divisor));
  }
};

}  // namespace distillrec::loss
