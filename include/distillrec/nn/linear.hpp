// distillrec/nn/linear.hpp
//
// Fully connected layer, PyTorch's nn.Linear: y = x W^T + b.
//   x [n, in]  ->  y [n, out];  W "<name>.weight" [out, in],  b "<name>.bias" [1, out] (optional)
// Backward: dx = dy W (overwritten or accumulated, nn/backward.hpp);  accumulate_grad:
// dW += dy^T x,  db += column sums of dy.
// Stateless about activations: backward needs only what the caller passes back in.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/init.hpp"

#include <string>
#include <utility>

namespace distillrec::nn {

template <typename T>
class Linear {
 public:
  using Scalar = T;

  Linear(Parameters<T>& params, const std::string& name, Index in_features, Index out_features,
         bool bias = true)
      : params_(&params), in_(in_features), out_(out_features), has_bias_(bias) {
    weight_ = params.declare(name + ".weight", out_features, in_features);
    if (bias) bias_ = params.declare(name + ".bias", 1, out_features);
  }

  /// Xavier-normal weight, zero bias.
  void initialize(Rng& rng) {
    init_xavier_normal(params_->value(weight_), rng);
    if (has_bias_) params_->value(bias_).setZero();
  }

  Index in_features() const { return in_; }
  Index out_features() const { return out_; }
  bool has_bias() const { return has_bias_; }
  Index weight_id() const { return weight_; }
  Index bias_id() const { return bias_; }

  /// y = x W^T + b.
  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y) const {
    check(x, "input");
    require_shape(y, x.rows(), out_, "Linear output");
    const auto w = std::as_const(*params_).value(weight_);
    backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), x, w, T(0), y);
    if (has_bias_) {
      // Row by row: each a contiguous, vectorised add (Eigen's rowwise() broadcast on a
      // row-major Ref is a scalar loop, an eighth of a small model's encode).
      const auto bias = std::as_const(*params_).value(bias_).row(0);
      for (Index r = 0; r < y.rows(); ++r) y.row(r) += bias;
    }
  }

  /// dx = dy W, or dx += dy W with InputGrad::kAccumulate.
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, InputGrad mode = InputGrad::kOverwrite) const {
    require_shape(dx, dy.rows(), in_, "Linear input gradient");
    require_shape(dy, dy.rows(), out_, "Linear output gradient");
    const auto w = std::as_const(*params_).value(weight_);
    backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), dy, w, mode == InputGrad::kAccumulate ? T(1) : T(0), dx);
  }

  /// dW += dy^T x, db += sum over rows of dy.
  void accumulate_grad(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& dy) {
    check(x, "input");
    require_shape(dy, x.rows(), out_, "Linear output gradient");
    backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), dy, x, T(1), params_->grad(weight_));
    if (has_bias_) params_->grad(bias_).row(0) += dy.colwise().sum();
  }

 private:
  void check(const ConstMatrixRef<T>& x, const char* what) const {
    if (x.cols() != in_) {
      throw ShapeError(detail::concat("Linear ", what, ": expected ", in_, " columns, got ", x.cols()));
    }
  }

  Parameters<T>* params_;
  Index in_, out_;
  bool has_bias_;
  Index weight_ = -1, bias_ = -1;
};

}  // namespace distillrec::nn
