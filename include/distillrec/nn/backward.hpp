// distillrec/nn/backward.hpp
//
// The one backward convention of every layer in nn/ (and of the block stack and the models
// built from them), stated here once:
//
//   * Gradients with respect to a layer's INPUT are written as its `InputGrad` argument says:
//     kOverwrite (the default) sets dx = J^T dy, kAccumulate adds dx += J^T dy. Accumulating is
//     how a residual branch, or an input read by two sub-layers (keys and values, gate and up
//     projections), sums its gradients without a temporary.
//   * Gradients with respect to PARAMETERS always accumulate into Parameters::grads(): a layer
//     never clears them, the trainer zeroes the buffer once per step. Leaf layers add them in
//     accumulate_grad(); composite layers (feed-forward, attention, transformer block, GRU,
//     block stack) add them inside backward().
//   * A backward call reads what its matching forward call left in the caller's workspace and
//     the same input; it may reuse the workspace's activations as scratch.
//   * dx may alias dy only where a layer says so (element-wise layers such as Dropout).
#pragma once

namespace distillrec::nn {

/// How backward() writes the gradient with respect to a layer's input.
enum class InputGrad {
  kOverwrite,   // dx = J^T dy
  kAccumulate,  // dx += J^T dy
};

}  // namespace distillrec::nn
