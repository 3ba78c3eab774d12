// distillrec/optim/clip.hpp
//
// Gradient-norm clipping over all trainable parameters, as torch.nn.utils.clip_grad_norm_:
// with total norm ||g||_2 > max_norm, every gradient is scaled by max_norm / (||g|| + 1e-6).
// The norm is one global norm over every parameter group given (a model and the loss terms that
// own parameters). Returns the norm before clipping; a non-finite norm throws (a NaN gradient
// would otherwise silently destroy the model).
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"

#include <cmath>
#include <vector>

namespace distillrec::optim {

template <typename T>
double gradient_norm(const std::vector<Parameters<T>*>& groups) {
  double sum = 0.0;
  for (const auto* params : groups) {
    const T* g = params->grads();
    for (const auto& info : params->infos()) {
      if (!info.trainable) continue;
      for (Index i = info.offset; i < info.offset + info.size(); ++i) sum += static_cast<double>(g[i]) * g[i];
    }
  }
  return std::sqrt(sum);
}

template <typename T>
double gradient_norm(const Parameters<T>& params) {
  return gradient_norm(std::vector<Parameters<T>*>{const_cast<Parameters<T>*>(&params)});
}

template <typename T>
double clip_gradient_norm(const std::vector<Parameters<T>*>& groups, double max_norm) {
  if (!(max_norm > 0.0)) throw ConfigError(detail::concat("gradient clipping: max norm must be positive, got ", max_norm));
  const double norm = gradient_norm(groups);
  if (!std::isfinite(norm)) {
    throw Error("gradient norm is not finite (NaN or Inf in the gradients); lower the learning rate or check the inputs");
  }
  if (norm > max_norm) {
    const T scale = static_cast<T>(max_norm / (norm + 1e-6));
    for (auto* params : groups) {
      T* g = params->grads();
      for (const auto& info : params->infos()) {
        if (!info.trainable) continue;
        for (Index i = info.offset; i < info.offset + info.size(); ++i) g[i] *= scale;
      }
    }
  }
  return norm;
}

template <typename T>
double clip_gradient_norm(Parameters<T>& params, double max_norm) {
  return clip_gradient_norm(std::vector<Parameters<T>*>{&params}, max_norm);
}

}  // namespace distillrec::optim
