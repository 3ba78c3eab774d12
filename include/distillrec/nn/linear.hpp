// distillrec/nn/linear.hpp
//
// Fully connected layer, PyTorch's nn.Linear: y = x W^T + b.
//   x [n, in]  ->  y [n, out];  W "<name>.weight" [out, in],  b "<name>.bias" [1, out] (optional)
// Backward: dx = dy W (overwritten or accumulated, nn/backward.hpp);  accumulate_grad:
// dW += dy^T x,  db += column sums of dy. A frozen weight or bias (ParameterInfo::trainable
// false) gets no gradient: its product is not computed and its gradient slice not written.
//
// With LoRA options of rank r > 0 (nn/lora.hpp) the layer carries an adapter:
//   y = x W^T + b + s * Dropout(x) A^T B^T,  s = alpha / r,
//   A "<name>.lora_a.weight" [r, in], B "<name>.lora_b.weight" [out, r]
//   dx += s * Dropout'(dy B A),  dA += s * (dy B)^T Dropout(x),  dB += s * dy^T (Dropout(x) A^T)
// The adapter's activations (the low-rank product and, with adapter dropout, the mask) live in a
// Workspace the caller passes; the overloads without one serve adapter-free layers only. With
// dropout the adapter works row by row (x_i * m_i, one row of scratch), so what it keeps is the
// mask and [n, r], never a dropped copy of the input.
// Stateless about activations otherwise: backward needs only what the caller passes back in.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/dropout.hpp"
#include "distillrec/nn/init.hpp"
#include "distillrec/nn/lora.hpp"
#include "distillrec/nn/run_mode.hpp"

#include <cmath>
#include <string>
#include <utility>

namespace distillrec::nn {

template <typename T>
class Linear {
 public:
  using Scalar = T;

  /// What an adapter keeps from forward for backward (unused without an adapter).
  struct Workspace {
    ScratchMatrix<T> low;         // Dropout(x) A^T          [n, r]
    ScratchMatrix<T> grad_low;    // s * dy B                [n, r]
    ScratchMatrix<T> row;         // one row of scratch      [1, in]
    typename Dropout<T>::Workspace dropout;  // the mask (training with adapter dropout only)
  };

  Linear(Parameters<T>& params, const std::string& name, Index in_features, Index out_features,
         bool bias = true, const LoraOptions& lora = {})
      : params_(&params), name_(name), in_(in_features), out_(out_features), has_bias_(bias),
        adapter_dropout_(lora.enabled() ? lora.dropout : 0.0) {
    lora.validate();
    weight_ = params.declare(name + ".weight", out_features, in_features);
    if (bias) bias_ = params.declare(name + ".bias", 1, out_features);
    if (lora.enabled()) {
      lora_a_ = params.declare(name + ".lora_a.weight", lora.rank, in_features);
      lora_b_ = params.declare(name + ".lora_b.weight", out_features, lora.rank);
      rank_ = lora.rank;
      scale_ = static_cast<T>(lora.scale());
    }
  }

  /// Xavier-normal weight, zero bias; an adapter as nn/lora.hpp says (A uniform, B zero).
  void initialize(Rng& rng) {
    init_xavier_normal(params_->value(weight_), rng);
    if (has_bias_) params_->value(bias_).setZero();
    if (has_adapter()) {
      init_uniform(params_->value(lora_a_), 1.0 / std::sqrt(static_cast<double>(in_)), rng);
      params_->value(lora_b_).setZero();
    }
  }

  Index in_features() const { return in_; }
  Index out_features() const { return out_; }
  bool has_bias() const { return has_bias_; }
  Index weight_id() const { return weight_; }
  Index bias_id() const { return bias_; }
  bool has_adapter() const { return rank_ > 0; }
  Index adapter_rank() const { return rank_; }

  /// y = x W^T + b (adapter-free layers).
  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y) const {
    require_no_adapter("forward");
    base_forward(x, y);
  }

  /// y = x W^T + b (+ the adapter's s * Dropout(x) A^T B^T, kept in ws for backward).
  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws, const RunMode& mode) const {
    base_forward(x, y);
    if (!has_adapter()) return;
    const Index n = x.rows();
    auto low = ws.low.resize(n, rank_);
    const auto a = std::as_const(*params_).value(lora_a_);
    const auto b = std::as_const(*params_).value(lora_b_);
    if (adapter_dropout_.draw_mask(n, in_, ws.dropout, mode)) {
      const auto mask = ws.dropout.mask.map();
      auto row = ws.row.resize(1, in_);
      for (Index i = 0; i < n; ++i) {
        row.row(0).noalias() = x.row(i).cwiseProduct(mask.row(i));
        low.row(i).noalias() = row.row(0) * a.transpose();
      }
    } else {
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), x, a, T(0), low);
    }
    backend::gemm(backend::Trans::kNo, backend::Trans::kYes, scale_, low, b, T(1), y);
  }

  /// dx = dy W, or dx += dy W with InputGrad::kAccumulate (adapter-free layers).
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, InputGrad mode = InputGrad::kOverwrite) const {
    require_no_adapter("backward");
    base_backward(dy, dx, mode);
  }

  /// As above plus the adapter's path; ws from the matching forward call.
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, Workspace& ws, InputGrad mode = InputGrad::kOverwrite) const {
    base_backward(dy, dx, mode);
    if (!has_adapter()) return;
    const auto grad_low = adapter_grad_low(dy, ws);
    const auto a = std::as_const(*params_).value(lora_a_);
    if (!ws.dropout.active) {
      backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), grad_low, a, T(1), dx);
      return;
    }
    const auto mask = ws.dropout.mask.map();
    auto row = ws.row.resize(1, in_);
    for (Index i = 0; i < dy.rows(); ++i) {
      row.row(0).noalias() = grad_low.row(i) * a;
      dx.row(i) += row.row(0).cwiseProduct(mask.row(i));
    }
  }

  /// dW += dy^T x, db += sum over rows of dy (adapter-free layers; frozen ones skipped).
  void accumulate_grad(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& dy) {
    require_no_adapter("accumulate_grad");
    base_accumulate_grad(x, dy);
  }

  /// As above plus dA and dB; ws from the matching forward call.
  void accumulate_grad(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& dy, Workspace& ws) {
    base_accumulate_grad(x, dy);
    if (!has_adapter()) return;
    const auto grad_low = adapter_grad_low(dy, ws);
    if (params_->info(lora_a_).trainable) {
      auto grad_a = params_->grad(lora_a_);
      if (!ws.dropout.active) {
        backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), grad_low, x, T(1), grad_a);
      } else {
        const auto mask = ws.dropout.mask.map();
        auto row = ws.row.resize(1, in_);
        for (Index i = 0; i < x.rows(); ++i) {
          row.row(0).noalias() = x.row(i).cwiseProduct(mask.row(i));
          grad_a.noalias() += grad_low.row(i).transpose() * row.row(0);
        }
      }
    }
    if (params_->info(lora_b_).trainable) {
      require_shape(ws.low.map(), dy.rows(), rank_, "LoRA low-rank activations (the workspace of the matching forward)");
      backend::gemm(backend::Trans::kYes, backend::Trans::kNo, scale_, dy, ws.low.map(), T(1), params_->grad(lora_b_));
    }
  }

 private:
  void base_forward(const ConstMatrixRef<T>& x, MatrixRef<T> y) const {
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

  void base_backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, InputGrad mode) const {
    require_shape(dx, dy.rows(), in_, "Linear input gradient");
    require_shape(dy, dy.rows(), out_, "Linear output gradient");
    const auto w = std::as_const(*params_).value(weight_);
    backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), dy, w, mode == InputGrad::kAccumulate ? T(1) : T(0), dx);
  }

  void base_accumulate_grad(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& dy) {
    check(x, "input");
    require_shape(dy, x.rows(), out_, "Linear output gradient");
    if (params_->info(weight_).trainable) {
      backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), dy, x, T(1), params_->grad(weight_));
    }
    if (has_bias_ && params_->info(bias_).trainable) params_->grad(bias_).row(0) += dy.colwise().sum();
  }

  // s * dy B [n, r] into ws.grad_low (backward and accumulate_grad each compute it: r is small).
  ConstMatrixMap<T> adapter_grad_low(const ConstMatrixRef<T>& dy, Workspace& ws) const {
    require_shape(dy, dy.rows(), out_, "Linear output gradient");
    auto grad_low = ws.grad_low.resize(dy.rows(), rank_);
    backend::gemm(backend::Trans::kNo, backend::Trans::kNo, scale_, dy, std::as_const(*params_).value(lora_b_), T(0), grad_low);
    return ConstMatrixMap<T>(grad_low.data(), grad_low.rows(), grad_low.cols());
  }

  void check(const ConstMatrixRef<T>& x, const char* what) const {
    if (x.cols() != in_) {
      throw ShapeError(detail::concat("Linear ", name_, " ", what, ": expected ", in_, " columns, got ", x.cols()));
    }
  }

  void require_no_adapter(const char* what) const {
    if (has_adapter()) {
      throw ConfigError(detail::concat("Linear ", name_, " has a LoRA adapter: ", what, "() needs the overload with its workspace"));
    }
  }

  Parameters<T>* params_;
  std::string name_;
  Index in_, out_;
  bool has_bias_;
  Dropout<T> adapter_dropout_;
  Index weight_ = -1, bias_ = -1;
  Index lora_a_ = -1, lora_b_ = -1, rank_ = 0;
  T scale_ = T(0);
};

}  // namespace distillrec::nn
