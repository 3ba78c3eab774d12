// distillrec/nn/feed_forward.hpp
//
// Position-wise feed-forward network of a transformer block (Vaswani et al., 2017), SASRec's
// two kernel-1 convolutions (Kang & McAuley, 2018):
//   y = Dropout(W2 Dropout(act(W1 x + b1)) + b2),   x, y [n, dim], hidden [n, hidden_dim]
// act is a policy: ReLU (SASRec) or GELU (BERT4Rec, HLLM's ID baselines).
// Parameters "<name>.fc1.{weight,bias}" [hidden, dim] and "<name>.fc2.{weight,bias}" [dim, hidden].
//
// SwiGLU (Shazeer, 2020; LLaMA) is the gated variant of LLaMA's MLP, without biases:
//   y = Dropout(W_down (silu(W_gate x) * W_up x))
// Parameters "<name>.gate.weight" [hidden, dim], "<name>.up.weight" [hidden, dim],
// "<name>.down.weight" [dim, hidden] (HF LLaMA's gate_proj, up_proj, down_proj).
//
// With LoRA options (rank > 0, feed_forward on; nn/lora.hpp) every projection of either network
// carries an adapter.
//
// backward() runs both phases of its sub-layers: it propagates the gradient to x (overwritten or
// accumulated, nn/backward.hpp) and adds the parameter gradients.
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/dropout.hpp"
#include "distillrec/nn/linear.hpp"
#include "distillrec/nn/run_mode.hpp"

#include <string>

namespace distillrec::nn {

/// max(0, x); backward uses the output (y > 0).
struct Relu {
  static constexpr const char* kName = "relu";
  template <typename T>
  static void forward(const T* x, T* y, Index n) { backend::kernels::relu<T>(x, y, n); }
  template <typename T>
  static void backward(const T* /*x*/, const T* y, const T* dy, T* dx, Index n) {
    backend::kernels::relu_backward<T>(y, dy, dx, n);
  }
};

/// Exact GELU, x * Phi(x).
struct Gelu {
  static constexpr const char* kName = "gelu";
  template <typename T>
  static void forward(const T* x, T* y, Index n) { backend::kernels::gelu<T>(x, y, n); }
  template <typename T>
  static void backward(const T* x, const T* /*y*/, const T* dy, T* dx, Index n) {
    backend::kernels::gelu_backward<T>(x, dy, dx, n);
  }
};

template <typename T, typename Activation = Relu>
class PointwiseFeedForward {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> pre;           // W1 x + b1            [n, hidden]
    ScratchMatrix<T> hidden;        // Dropout(act(pre))    [n, hidden]
    ScratchMatrix<T> grad_hidden;   //                      [n, hidden]
    ScratchMatrix<T> grad_out;      //                      [n, dim]
    typename Dropout<T>::Workspace dropout_hidden, dropout_out;
    typename Linear<T>::Workspace fc1, fc2;  // adapters
  };

  PointwiseFeedForward(Parameters<T>& params, const std::string& name, Index dim, Index hidden_dim,
                       double dropout, const LoraOptions& lora = {})
      : fc1_(params, name + ".fc1", dim, hidden_dim, true, lora.where(lora.feed_forward)),
        fc2_(params, name + ".fc2", hidden_dim, dim, true, lora.where(lora.feed_forward)),
        dropout_(dropout) {}

  void initialize(Rng& rng) {
    fc1_.initialize(rng);
    fc2_.initialize(rng);
  }

  Index dim() const { return fc1_.in_features(); }
  Index hidden_dim() const { return fc1_.out_features(); }

  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws, const RunMode& mode) const {
    const Index n = x.rows();
    auto pre = ws.pre.resize(n, hidden_dim());
    auto hidden = ws.hidden.resize(n, hidden_dim());
    fc1_.forward(x, pre, ws.fc1, mode);
    for (Index i = 0; i < n; ++i) Activation::forward(pre.row(i).data(), hidden.row(i).data(), hidden_dim());
    dropout_.forward(hidden, hidden, ws.dropout_hidden, mode);
    fc2_.forward(hidden, y, ws.fc2, mode);
    dropout_.forward(y, y, ws.dropout_out, mode);
  }

  /// dx (=|+=) d(FFN)/dx^T dy; adds the parameter gradients.
  void backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& dy, MatrixRef<T> dx,
                Workspace& ws, InputGrad mode = InputGrad::kOverwrite) {
    const Index n = x.rows();
    auto grad_out = ws.grad_out.resize(n, dim());
    dropout_.backward(dy, grad_out, ws.dropout_out);
    fc2_.accumulate_grad(ws.hidden.map(), grad_out, ws.fc2);
    auto grad_hidden = ws.grad_hidden.resize(n, hidden_dim());
    fc2_.backward(grad_out, grad_hidden, ws.fc2);
    dropout_.backward(grad_hidden, grad_hidden, ws.dropout_hidden);
    // Through the activation, in place: grad_hidden becomes the gradient w.r.t. pre.
    // ReLU's backward reads its output; with dropout the kept output equals hidden / mask,
    // whose sign is that of pre, so the pre-activation is the right thing to pass for both.
    const auto pre = ws.pre.map();
    for (Index i = 0; i < n; ++i) {
      Activation::backward(pre.row(i).data(), pre.row(i).data(), grad_hidden.row(i).data(),
                           grad_hidden.row(i).data(), hidden_dim());
    }
    fc1_.accumulate_grad(x, grad_hidden, ws.fc1);
    fc1_.backward(grad_hidden, dx, ws.fc1, mode);
  }

 private:
  Linear<T> fc1_, fc2_;
  Dropout<T> dropout_;
};

template <typename T>
class SwiGLU {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> gate, up;          // W_gate x, W_up x           [n, hidden]
    ScratchMatrix<T> hidden;            // silu(gate) * up            [n, hidden]
    ScratchMatrix<T> grad_gate, grad_up, grad_hidden;
    ScratchMatrix<T> grad_out;          //                            [n, dim]
    typename Dropout<T>::Workspace dropout_out;
    typename Linear<T>::Workspace gate_projection, up_projection, down_projection;  // adapters
  };

  SwiGLU(Parameters<T>& params, const std::string& name, Index dim, Index hidden_dim, double dropout = 0.0,
         const LoraOptions& lora = {})
      : gate_(params, name + ".gate", dim, hidden_dim, false, lora.where(lora.feed_forward)),
        up_(params, name + ".up", dim, hidden_dim, false, lora.where(lora.feed_forward)),
        down_(params, name + ".down", hidden_dim, dim, false, lora.where(lora.feed_forward)), dropout_(dropout) {}

  void initialize(Rng& rng) {
    gate_.initialize(rng);
    up_.initialize(rng);
    down_.initialize(rng);
  }

  Index dim() const { return gate_.in_features(); }
  Index hidden_dim() const { return gate_.out_features(); }

  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws, const RunMode& mode) const {
    const Index n = x.rows(), f = hidden_dim();
    auto gate = ws.gate.resize(n, f);
    auto up = ws.up.resize(n, f);
    auto hidden = ws.hidden.resize(n, f);
    gate_.forward(x, gate, ws.gate_projection, mode);
    up_.forward(x, up, ws.up_projection, mode);
    backend::kernels::swiglu<T>(gate.data(), up.data(), hidden.data(), n * f);
    down_.forward(hidden, y, ws.down_projection, mode);
    dropout_.forward(y, y, ws.dropout_out, mode);
  }

  /// dx (=|+=) d(FFN)/dx^T dy; adds the parameter gradients.
  void backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& dy, MatrixRef<T> dx, Workspace& ws,
                InputGrad mode = InputGrad::kOverwrite) {
    const Index n = x.rows(), f = hidden_dim();
    auto grad_out = ws.grad_out.resize(n, dim());
    dropout_.backward(dy, grad_out, ws.dropout_out);
    down_.accumulate_grad(ws.hidden.map(), grad_out, ws.down_projection);
    auto grad_hidden = ws.grad_hidden.resize(n, f);
    down_.backward(grad_out, grad_hidden, ws.down_projection);
    auto grad_gate = ws.grad_gate.resize(n, f);
    auto grad_up = ws.grad_up.resize(n, f);
    backend::kernels::swiglu_backward<T>(ws.gate.data(), ws.up.data(), grad_hidden.data(), grad_gate.data(),
                                         grad_up.data(), n * f);
    gate_.accumulate_grad(x, grad_gate, ws.gate_projection);
    up_.accumulate_grad(x, grad_up, ws.up_projection);
    gate_.backward(grad_gate, dx, ws.gate_projection, mode);
    up_.backward(grad_up, dx, ws.up_projection, InputGrad::kAccumulate);
  }

 private:
  Linear<T> gate_, up_, down_;
  Dropout<T> dropout_;
};

}  // namespace distillrec::nn
