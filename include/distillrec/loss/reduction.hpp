// distillrec/loss/reduction.hpp
//
// How a loss combines per-example values: the mean (default, PyTorch's "mean") or the sum.
#pragma once

namespace distillrec::loss {

enum class Reduction { kMean, kSum };

}  // namespace distillrec::loss
