// distillrec/backend/kernels/dropout.hpp
//
// Inverted-dropout masks: mask[i] = 0 with probability p, else 1 / (1 - p), so E[mask] = 1.
#pragma once

#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"

#include <algorithm>
#include <cstdint>

namespace distillrec::backend::kernels {

template <typename T>
void dropout_mask(T* mask, Index n, double p, Rng& rng) {
  if (p <= 0.0) {
    std::fill(mask, mask + n, T(1));
    return;
  }
  const T keep_scale = p >= 1.0 ? T(0) : static_cast<T>(1.0 / (1.0 - p));
  const auto threshold = static_cast<std::uint64_t>(p * 4294967296.0);
  Index i = 0;
  for (; i + 1 < n; i += 2) {
    const std::uint64_t bits = rng.next();
    mask[i] = (bits & 0xffffffffULL) < threshold ? T(0) : keep_scale;
    mask[i + 1] = (bits >> 32) < threshold ? T(0) : keep_scale;
  }
  if (i < n) mask[i] = (rng.next() & 0xffffffffULL) < threshold ? T(0) : keep_scale;
}

}  // namespace distillrec::backend::kernels
