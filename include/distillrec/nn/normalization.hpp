// distillrec/nn/normalization.hpp
//
// What LayerNorm and RMSNorm share: a per-row normalisation over the last dimension with a
// learned gain gamma "<name>.weight" [1, dim], the workspace that keeps the normalised input
// xhat and 1/std per row, the backward pass (backend::kernels::norm_backward, centred for
// LayerNorm, uncentred for RMSNorm) and the gain's gradient. The concrete norms add their
// forward statistics (mean and variance, or mean square) and LayerNorm its bias.
//
//   x, y [n, dim];  backward: dx per InputGrad (nn/backward.hpp);  accumulate_grad: dgamma (and
//   dbeta) += column sums over the rows (not for a frozen gamma or beta).
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/backward.hpp"

#include <string>
#include <utility>
#include <vector>

namespace distillrec::nn {

template <typename T, bool kCentered>
class RowNormalization {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> normalized;  // xhat   [n, dim]
    std::vector<T> rstd;          // 1/std  [n]
    ScratchMatrix<T> grad_row;    // one row of dx when backward accumulates [1, dim]
  };

  Index dim() const { return dim_; }
  Index weight_id() const { return gamma_; }

  /// dx = d(norm)/dx^T dy (or dx += ..., see InputGrad). Needs the matching forward's workspace.
  /// Accumulating computes each row's gradient into the workspace and then adds it, so the sum
  /// is rounded as a separate addition whatever the compiler fuses.
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, Workspace& ws,
                InputGrad mode = InputGrad::kOverwrite) const {
    const Index n = dy.rows();
    require_shape(dy, n, dim_, "normalisation output gradient");
    require_shape(dx, n, dim_, "normalisation input gradient");
    const auto xhat = ws.normalized.map();
    const T* gamma = std::as_const(*params_).value(gamma_).data();
    auto row = ws.grad_row.resize(1, dim_);
    for (Index i = 0; i < n; ++i) {
      const T rstd = ws.rstd[static_cast<std::size_t>(i)];
      if (mode == InputGrad::kOverwrite) {
        backend::kernels::norm_backward<T>(xhat.row(i).data(), gamma, dy.row(i).data(), rstd, dx.row(i).data(), dim_, kCentered);
      } else {
        backend::kernels::norm_backward<T>(xhat.row(i).data(), gamma, dy.row(i).data(), rstd, row.data(), dim_, kCentered);
        dx.row(i) += row;
      }
    }
  }

  /// dgamma += sum_rows(dy * xhat) (and dbeta += sum_rows(dy) for LayerNorm).
  void accumulate_grad(const ConstMatrixRef<T>& dy, const Workspace& ws) {
    if (params_->info(gamma_).trainable) params_->grad(gamma_).row(0) += dy.cwiseProduct(ws.normalized.map()).colwise().sum();
    if (kCentered && params_->info(beta_).trainable) params_->grad(beta_).row(0) += dy.colwise().sum();
  }

 protected:
  RowNormalization(Parameters<T>& params, const std::string& name, Index dim, double eps, const char* kind)
      : params_(&params), dim_(dim), eps_(static_cast<T>(eps)) {
    if (dim <= 0) throw ConfigError(detail::concat(kind, " ", name, ": dim must be positive, got ", dim));
    if (!(eps > 0.0)) throw ConfigError(detail::concat(kind, " ", name, ": eps must be positive, got ", eps));
    gamma_ = params.declare(name + ".weight", 1, dim);
    if (kCentered) beta_ = params.declare(name + ".bias", 1, dim);
  }

  /// Sizes the workspace for n rows and returns xhat's map.
  MatrixMap<T> prepare(const ConstMatrixRef<T>& x, const MatrixRef<T>& y, Workspace& ws, const char* kind) const {
    require_shape(x, x.rows(), dim_, kind);
    require_shape(y, x.rows(), dim_, kind);
    ws.rstd.resize(static_cast<std::size_t>(x.rows()));
    return ws.normalized.resize(x.rows(), dim_);
  }

  Parameters<T>* params_;
  Index dim_;
  T eps_;
  Index gamma_ = -1, beta_ = -1;
};

}  // namespace distillrec::nn
