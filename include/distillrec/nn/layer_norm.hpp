// distillrec/nn/layer_norm.hpp
//
// Layer normalisation over the last dimension (Ba et al., 2016):
//   y = (x - mean) / sqrt(var + eps) * gamma + beta,   x, y [n, dim]
// Parameters "<name>.weight" (gamma) [1, dim] and "<name>.bias" (beta) [1, dim]; SASRec uses
// eps = 1e-8. Workspace, backward and parameter gradients are shared with RMSNorm
// (nn/normalization.hpp).
#pragma once

#include "distillrec/nn/normalization.hpp"

namespace distillrec::nn {

template <typename T>
class LayerNorm : public RowNormalization<T, true> {
  using Base = RowNormalization<T, true>;

 public:
  using typename Base::Workspace;

  LayerNorm(Parameters<T>& params, const std::string& name, Index dim, double eps = 1e-8)
      : Base(params, name, dim, eps, "LayerNorm") {}

  void initialize(Rng& /*rng*/) {
    this->params_->value(this->gamma_).setOnes();
    this->params_->value(this->beta_).setZero();
  }

  Index bias_id() const { return this->beta_; }

  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws) const {
    auto xhat = this->prepare(x, y, ws, "LayerNorm input/output");
    const T* gamma = std::as_const(*this->params_).value(this->gamma_).data();
    const T* beta = std::as_const(*this->params_).value(this->beta_).data();
    for (Index i = 0; i < x.rows(); ++i) {
      ws.rstd[static_cast<std::size_t>(i)] = backend::kernels::layer_norm_forward<T>(
          x.row(i).data(), gamma, beta, y.row(i).data(), xhat.row(i).data(), this->dim_, this->eps_);
    }
  }
};

}  // namespace distillrec::nn
