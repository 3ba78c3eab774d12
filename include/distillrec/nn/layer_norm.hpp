// distillrec/nn/layer_norm.hpp
//
// Layer normalisation over the last dimension (Ba et al., 2016):
//   y = (x - mean) / sqrt(var + eps) * gamma + beta,   x, y [n, dim]
// Parameters "<name>.weight" (gamma) [1, dim] and "<name>.bias" (beta) [1, dim]; SASRec uses
// eps = 1e-8. The workspace keeps the normalised input and 1/std per row for backward.
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"

#include <string>
#include <utility>
#include <vector>

namespace distillrec::nn {

template <typename T>
class LayerNorm {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> normalized;  // [n, dim]
    std::vector<T> rstd;          // [n]
  };

  LayerNorm(Parameters<T>& params, const std::string& name, Index dim, double eps = 1e-8)
      : params_(&params), dim_(dim), eps_(static_cast<T>(eps)) {
    gamma_ = params.declare(name + ".weight", 1, dim);
    beta_ = params.declare(name + ".bias", 1, dim);
  }

  void initialize(Rng& /*rng*/) {
    params_->value(gamma_).setOnes();
    params_->value(beta_).setZero();
  }

  Index dim() const { return dim_; }

  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws) const {
    require_shape(x, x.rows(), dim_, "LayerNorm input");
    require_shape(y, x.rows(), dim_, "LayerNorm output");
    const Index n = x.rows();
    auto xhat = ws.normalized.resize(n, dim_);
    ws.rstd.resize(static_cast<std::size_t>(n));
    const T* gamma = std::as_const(*params_).value(gamma_).data();
    const T* beta = std::as_const(*params_).value(beta_).data();
    for (Index i = 0; i < n; ++i) {
      ws.rstd[static_cast<std::size_t>(i)] = backend::kernels::layer_norm_forward<T>(
          x.row(i).data(), gamma, beta, y.row(i).data(), xhat.row(i).data(), dim_, eps_);
    }
  }

  /// dx = d(LN)/dx^T dy; with accumulate = true adds into dx.
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, Workspace& ws, bool accumulate = false) const {
    const Index n = dy.rows();
    require_shape(dx, n, dim_, "LayerNorm input gradient");
    const auto xhat = ws.normalized.map();
    const T* gamma = std::as_const(*params_).value(gamma_).data();
    if (!accumulate) {
      for (Index i = 0; i < n; ++i) {
        backend::kernels::layer_norm_backward<T>(xhat.row(i).data(), gamma, dy.row(i).data(),
                                                 ws.rstd[static_cast<std::size_t>(i)], dx.row(i).data(), dim_);
      }
    } else {
      RowVector<T> row(dim_);
      for (Index i = 0; i < n; ++i) {
        backend::kernels::layer_norm_backward<T>(xhat.row(i).data(), gamma, dy.row(i).data(),
                                                 ws.rstd[static_cast<std::size_t>(i)], row.data(), dim_);
        dx.row(i) += row;
      }
    }
  }

  /// dgamma += sum_rows(dy * xhat), dbeta += sum_rows(dy).
  void accumulate_grad(const ConstMatrixRef<T>& dy, const Workspace& ws) {
    const auto xhat = ws.normalized.map();
    params_->grad(gamma_).row(0) += dy.cwiseProduct(xhat).colwise().sum();
    params_->grad(beta_).row(0) += dy.colwise().sum();
  }

 private:
  Parameters<T>* params_;
  Index dim_;
  T eps_;
  Index gamma_ = -1, beta_ = -1;
};

}  // namespace distillrec::nn
