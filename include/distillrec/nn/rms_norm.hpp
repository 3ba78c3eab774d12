// distillrec/nn/rms_norm.hpp
//
// Root-mean-square normalisation over the last dimension (Zhang & Sennrich, 2019; LLaMA):
//   y = x / sqrt(mean(x^2) + eps) * gamma,   x, y [n, dim]
// Parameter "<name>.weight" (gamma) [1, dim], no bias; LLaMA uses eps = 1e-6 (1e-5 in LLaMA-2).
// Workspace, backward and parameter gradients are shared with LayerNorm
// (nn/normalization.hpp), so TransformerBlock takes either as its Norm policy.
#pragma once

#include "distillrec/nn/normalization.hpp"

namespace distillrec::nn {

template <typename T>
class RMSNorm : public RowNormalization<T, false> {
  using Base = RowNormalization<T, false>;

 public:
  using typename Base::Workspace;

  RMSNorm(Parameters<T>& params, const std::string& name, Index dim, double eps = 1e-6)
      : Base(params, name, dim, eps, "RMSNorm") {}

  void initialize(Rng& /*rng*/) { this->params_->value(this->gamma_).setOnes(); }

  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws) const {
    auto xhat = this->prepare(x, y, ws, "RMSNorm input/output");
    const T* gamma = std::as_const(*this->params_).value(this->gamma_).data();
    for (Index i = 0; i < x.rows(); ++i) {
      ws.rstd[static_cast<std::size_t>(i)] = backend::kernels::rms_norm_forward<T>(
          x.row(i).data(), gamma, y.row(i).data(), xhat.row(i).data(), this->dim_, this->eps_);
    }
  }
};

}  // namespace distillrec::nn
