// distillrec/backend/kernels/gru_gates.hpp
//
// The element-wise part of one GRU step for one row (one sequence at one time step), fused so
// that the gates are read and written once (nn/gru.hpp does the matrix products):
//
//   gru_gates_forward    from the projected rows gi = x W_ih^T and gh = h W_hh^T (3H each, gate
//                        order r, z, n, biases not yet added) and the previous state h:
//                          r  = sigmoid(gi_r + b_ir + gh_r + b_hr)
//                          z  = sigmoid(gi_z + b_iz + gh_z + b_hz)
//                          hn = gh_n + b_hn
//                          n  = tanh(gi_n + b_in + r * hn)
//                          h' = (1 - z) * n + z * h
//                        and, for backward, saved = [r, z, n, hn] (4H; nullptr at inference).
//                        h' may be written over h (same pointer).
//   gru_gates_backward   from saved, h and dL/dh' (= dy + the gradient carried back from the
//                        next step): the gradients of the pre-activations, d_input_gates =
//                        [da_r, da_z, da_n] for gi and d_hidden_gates = [da_r, da_z, da_n * r]
//                        for gh (3H each), and the direct part of dL/dh, dh' * z, written over
//                        the carried gradient (the caller adds d_hidden_gates W_hh to it).
//
// xsimd kernels templated on the scalar and on the instruction set (default: the best one the
// compiler targets), each with a plain scalar twin in `reference::` that the tests hold it to.
#pragma once

#include "distillrec/backend/kernels/activation.hpp"
#include "distillrec/backend/kernels/common.hpp"

#include <cmath>

namespace distillrec::backend::kernels {

namespace detail {

// Scalar GRU gate math on the columns [begin, end) of one row: the reference kernels, and the
// tails the SIMD kernels leave over.
template <typename T>
void gru_gates_forward_columns(const T* gi, const T* gh, const T* bias_ih, const T* bias_hh, const T* h_prev,
                               T* h_next, T* saved, Index hidden, Index begin, Index end) {
  for (Index i = begin; i < end; ++i) {
    const Index iz = hidden + i, in = 2 * hidden + i;
    const T r = sigmoid_scalar(gi[i] + bias_ih[i] + gh[i] + bias_hh[i]);
    const T z = sigmoid_scalar(gi[iz] + bias_ih[iz] + gh[iz] + bias_hh[iz]);
    const T hn = gh[in] + bias_hh[in];
    const T n = std::tanh(gi[in] + bias_ih[in] + r * hn);
    const T h = h_prev[i];
    if (saved != nullptr) {
      saved[i] = r;
      saved[iz] = z;
      saved[in] = n;
      saved[3 * hidden + i] = hn;
    }
    h_next[i] = n + z * (h - n);
  }
}

template <typename T>
void gru_gates_backward_columns(const T* saved, const T* h_prev, const T* dy, T* dh, T* d_input_gates,
                                T* d_hidden_gates, Index hidden, Index begin, Index end) {
  for (Index i = begin; i < end; ++i) {
    const Index iz = hidden + i, in = 2 * hidden + i;
    const T r = saved[i], z = saved[iz], n = saved[in], hn = saved[3 * hidden + i];
    const T g = dh[i] + dy[i];
    const T da_n = g * (T(1) - z) * (T(1) - n * n);
    const T da_z = g * (h_prev[i] - n) * z * (T(1) - z);
    const T da_r = da_n * hn * r * (T(1) - r);
    d_input_gates[i] = da_r;
    d_input_gates[iz] = da_z;
    d_input_gates[in] = da_n;
    d_hidden_gates[i] = da_r;
    d_hidden_gates[iz] = da_z;
    d_hidden_gates[in] = da_n * r;
    dh[i] = g * z;
  }
}

}  // namespace detail

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
void gru_gates_forward(const T* input_gates, const T* hidden_gates, const T* bias_ih, const T* bias_hh,
                       const T* h_prev, T* h_next, T* saved, Index hidden) {
  detail::gru_gates_forward_columns(input_gates, hidden_gates, bias_ih, bias_hh, h_prev, h_next, saved, hidden, 0,
                                    hidden);
}

template <typename T>
void gru_gates_backward(const T* saved, const T* h_prev, const T* dy, T* dh, T* d_input_gates, T* d_hidden_gates,
                        Index hidden) {
  detail::gru_gates_backward_columns(saved, h_prev, dy, dh, d_input_gates, d_hidden_gates, hidden, 0, hidden);
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
void gru_gates_forward(const T* input_gates, const T* hidden_gates, const T* bias_ih, const T* bias_hh,
                       const T* h_prev, T* h_next, T* saved, Index hidden) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = hidden - hidden % W;
  const T* gi = input_gates;
  const T* gh = hidden_gates;
  for (Index i = 0; i < vec_end; i += W) {
    const Index iz = hidden + i, in = 2 * hidden + i;
    const B r = detail::sigmoid_batch<T, Arch>(B::load_unaligned(gi + i) + B::load_unaligned(bias_ih + i) +
                                               (B::load_unaligned(gh + i) + B::load_unaligned(bias_hh + i)));
    const B z = detail::sigmoid_batch<T, Arch>(B::load_unaligned(gi + iz) + B::load_unaligned(bias_ih + iz) +
                                               (B::load_unaligned(gh + iz) + B::load_unaligned(bias_hh + iz)));
    const B hn = B::load_unaligned(gh + in) + B::load_unaligned(bias_hh + in);
    const B n = xsimd::tanh(xsimd::fma(r, hn, B::load_unaligned(gi + in) + B::load_unaligned(bias_ih + in)));
    const B h = B::load_unaligned(h_prev + i);
    if (saved != nullptr) {
      r.store_unaligned(saved + i);
      z.store_unaligned(saved + iz);
      n.store_unaligned(saved + in);
      hn.store_unaligned(saved + 3 * hidden + i);
    }
    xsimd::fma(z, h - n, n).store_unaligned(h_next + i);
  }
  detail::gru_gates_forward_columns(gi, gh, bias_ih, bias_hh, h_prev, h_next, saved, hidden, vec_end, hidden);
}

template <typename T, typename Arch = xsimd::default_arch>
void gru_gates_backward(const T* saved, const T* h_prev, const T* dy, T* dh, T* d_input_gates, T* d_hidden_gates,
                        Index hidden) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = hidden - hidden % W;
  const B one(T(1));
  for (Index i = 0; i < vec_end; i += W) {
    const Index iz = hidden + i, in = 2 * hidden + i;
    const B r = B::load_unaligned(saved + i);
    const B z = B::load_unaligned(saved + iz);
    const B n = B::load_unaligned(saved + in);
    const B hn = B::load_unaligned(saved + 3 * hidden + i);
    const B g = B::load_unaligned(dh + i) + B::load_unaligned(dy + i);
    const B da_n = g * (one - z) * xsimd::fnma(n, n, one);
    const B da_z = g * (B::load_unaligned(h_prev + i) - n) * z * (one - z);
    const B da_r = da_n * hn * r * (one - r);
    da_r.store_unaligned(d_input_gates + i);
    da_z.store_unaligned(d_input_gates + iz);
    da_n.store_unaligned(d_input_gates + in);
    da_r.store_unaligned(d_hidden_gates + i);
    da_z.store_unaligned(d_hidden_gates + iz);
    (da_n * r).store_unaligned(d_hidden_gates + in);
    (g * z).store_unaligned(dh + i);
  }
  detail::gru_gates_backward_columns(saved, h_prev, dy, dh, d_input_gates, d_hidden_gates, hidden, vec_end, hidden);
}

}  // namespace distillrec::backend::kernels
