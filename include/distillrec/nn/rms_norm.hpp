// distillrec/nn/rms_norm.hpp
//
// Root-mean-square normalisation over the last dimension (Zhang & Sennrich, 2019; LLaMA):
//   y = x / sqrt(mean(x^2) + eps) * gamma,   x, y [n, dim]
// Parameter "<name>.weight" (gamma) [1, dim], no bias; LLaMA uses eps = 1e-6 (1e-5 in LLaMA-2).
// The workspace keeps the normalised input and 1/rms per row for backward. Same API as
// LayerNorm, so TransformerBlock takes either as its Norm policy.
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"

#include <string>
#include <utility>
#include <vector>

namespace distillrec::nn {

template <typename T>
class RMSNorm {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> normalized;  // x / rms  [n, dim]
    std::vector<T> rstd;          // 1 / rms  [n]
  };

  RMSNorm(Parameters<T>& params, const std::string& name, Index dim, double eps = 1e-6)
      : params_(&params), dim_(dim), eps_(static_cast<T>(eps)) {
    if (dim <= 0) throw ConfigError(detail::concat("RMSNorm ", name, ": dim must be positive, got ", dim));
    if (!(eps > 0.0)) throw ConfigError(detail::concat("RMSNorm ", name, ": eps must be positive, got ", eps));
    gamma_ = params.declare(name + ".weight", 1, dim);
  }

  void initialize(Rng& /*rng*/) { params_->value(gamma_).setOnes(); }

  Index dim() const { return dim_; }
  Index weight_id() const { return gamma_; }

  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws) const {
    require_shape(x, x.rows(), dim_, "RMSNorm input");
    require_shape(y, x.rows(), dim_, "RMSNorm output");
    const Index n = x.rows();
    auto xhat = ws.normalized.resize(n, dim_);
    ws.rstd.resize(static_cast<std::size_t>(n));
    const T* gamma = std::as_const(*params_).value(gamma_).data();
    for (Index i = 0; i < n; ++i) {
      ws.rstd[static_cast<std::size_t>(i)] =
          backend::kernels::rms_norm_forward<T>(x.row(i).data(), gamma, y.row(i).data(), xhat.row(i).data(), dim_, eps_);
    }
  }

  /// dx = d(RMSNorm)/dx^T dy; with accumulate = true adds into dx.
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, Workspace& ws, bool accumulate = false) const {
    const Index n = dy.rows();
    require_shape(dx, n, dim_, "RMSNorm input gradient");
    const auto xhat = ws.normalized.map();
    const T* gamma = std::as_const(*params_).value(gamma_).data();
    if (!accumulate) {
      for (Index i = 0; i < n; ++i) {
        backend::kernels::rms_norm_backward<T>(xhat.row(i).data(), gamma, dy.row(i).data(),
                                               ws.rstd[static_cast<std::size_t>(i)], dx.row(i).data(), dim_);
      }
    } else {
      RowVector<T> row(dim_);
      for (Index i = 0; i < n; ++i) {
        backend::kernels::rms_norm_backward<T>(xhat.row(i).data(), gamma, dy.row(i).data(),
                                               ws.rstd[static_cast<std::size_t>(i)], row.data(), dim_);
        dx.row(i) += row;
      }
    }
  }

  /// dgamma += sum_rows(dy * xhat).
  void accumulate_grad(const ConstMatrixRef<T>& dy, const Workspace& ws) {
    params_->grad(gamma_).row(0) += dy.cwiseProduct(ws.normalized.map()).colwise().sum();
  }

 private:
  Parameters<T>* params_;
  Index dim_;
  T eps_;
  Index gamma_ = -1;
};

}  // namespace distillrec::nn
