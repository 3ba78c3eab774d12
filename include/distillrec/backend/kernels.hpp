// distillrec/backend/kernels.hpp
//
// Umbrella of the element-wise and row-wise kernels, grouped by family. Each is written with
// xsimd, templated on the scalar and on the instruction set (default: the best one the compiler
// targets), with a plain scalar twin in `reference::` that the tests hold it to.
//
//   kernels/common.hpp         batch type and lane count per instruction set; multiply
//   kernels/softmax.hpp        softmax (max-subtracted, all -inf rows safe), softmax_backward,
//                              exp_shifted (the unnormalised softmax of a row plus a bias), scale
//   kernels/normalization.hpp  layer_norm_forward, rms_norm_forward, norm_backward (shared)
//   kernels/activation.hpp     relu, gelu, swiglu (and their backward passes), sigmoid, tanh
//   kernels/gru_gates.hpp      gru_gates_forward / gru_gates_backward (one GRU row, fused)
//   kernels/rope.hpp           rotary position embedding of one head vector
//   kernels/dropout.hpp        inverted-dropout masks
//   kernels/adam.hpp           the Adam / AdamW update of a range of parameters
#pragma once

#include "distillrec/backend/kernels/activation.hpp"
#include "distillrec/backend/kernels/adam.hpp"
#include "distillrec/backend/kernels/common.hpp"
#include "distillrec/backend/kernels/dropout.hpp"
#include "distillrec/backend/kernels/gru_gates.hpp"
#include "distillrec/backend/kernels/normalization.hpp"
#include "distillrec/backend/kernels/rope.hpp"
#include "distillrec/backend/kernels/softmax.hpp"
