// distillrec/backend/kernels/normalization.hpp
//
// Row normalisations (LayerNorm, RMSNorm) and their one shared backward pass:
//
//   layer_norm_forward   xhat = (x - mean) * rstd, y = xhat * gamma + beta; returns rstd
//   rms_norm_forward     xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), y = xhat * gamma;
//                        returns rstd
//   norm_backward        g = dy * gamma,
//                        dx = rstd * (g - [centred] mean(g) - xhat * mean(g * xhat))
//                        (centred: LayerNorm; uncentred: RMSNorm)
//
// xsimd kernels templated on the scalar and on the instruction set (default: the best one the
// compiler targets), each with a plain scalar twin in `reference::` that the tests hold it to.
#pragma once

#include "distillrec/backend/kernels/common.hpp"

#include <cmath>

namespace distillrec::backend::kernels {

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
T layer_norm_forward(const T* x, const T* gamma, const T* beta, T* y, T* xhat, Index n, T eps) {
  T mean = 0;
  for (Index i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<T>(n);
  T var = 0;
  for (Index i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<T>(n);
  const T rstd = T(1) / std::sqrt(var + eps);
  for (Index i = 0; i < n; ++i) {
    xhat[i] = (x[i] - mean) * rstd;
    y[i] = xhat[i] * gamma[i] + beta[i];
  }
  return rstd;
}

template <typename T>
T rms_norm_forward(const T* x, const T* gamma, T* y, T* xhat, Index n, T eps) {
  T sq = 0;
  for (Index i = 0; i < n; ++i) sq += x[i] * x[i];
  const T rstd = T(1) / std::sqrt(sq / static_cast<T>(n) + eps);
  for (Index i = 0; i < n; ++i) {
    xhat[i] = x[i] * rstd;
    y[i] = xhat[i] * gamma[i];
  }
  return rstd;
}

template <typename T>
void norm_backward(const T* xhat, const T* gamma, const T* dy, T rstd, T* dx, Index n, bool centered) {
  T mean_g = 0, mean_gx = 0;
  for (Index i = 0; i < n; ++i) {
    mean_g += dy[i] * gamma[i];
    mean_gx += dy[i] * gamma[i] * xhat[i];
  }
  mean_g = centered ? mean_g / static_cast<T>(n) : T(0);
  mean_gx /= static_cast<T>(n);
  for (Index i = 0; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - mean_g - xhat[i] * mean_gx);
}

}  // namespace reference

template <typename T, typename Arch = xsimd::default_arch>
T layer_norm_forward(const T* x, const T* gamma, const T* beta, T* y, T* xhat, Index n, T eps) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  B vsum(T(0));
  for (Index i = 0; i < vec_end; i += W) vsum += B::load_unaligned(x + i);
  T sum = xsimd::hadd(vsum);
  for (Index i = vec_end; i < n; ++i) sum += x[i];
  const T mean = sum / static_cast<T>(n);
  const B vmean(mean);
  B vvar(T(0));
  for (Index i = 0; i < vec_end; i += W) {
    const B centred = B::load_unaligned(x + i) - vmean;
    vvar = xsimd::fma(centred, centred, vvar);
  }
  T var = xsimd::hadd(vvar);
  for (Index i = vec_end; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<T>(n);
  const T rstd = T(1) / std::sqrt(var + eps);
  const B vrstd(rstd);
  for (Index i = 0; i < vec_end; i += W) {
    const B h = (B::load_unaligned(x + i) - vmean) * vrstd;
    h.store_unaligned(xhat + i);
    xsimd::fma(h, B::load_unaligned(gamma + i), B::load_unaligned(beta + i)).store_unaligned(y + i);
  }
  for (Index i = vec_end; i < n; ++i) {
    xhat[i] = (x[i] - mean) * rstd;
    y[i] = xhat[i] * gamma[i] + beta[i];
  }
  return rstd;
}

template <typename T, typename Arch = xsimd::default_arch>
T rms_norm_forward(const T* x, const T* gamma, T* y, T* xhat, Index n, T eps) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  B acc(T(0));
  for (Index i = 0; i < vec_end; i += W) {
    const B v = B::load_unaligned(x + i);
    acc = xsimd::fma(v, v, acc);
  }
  T sq = xsimd::hadd(acc);
  for (Index i = vec_end; i < n; ++i) sq += x[i] * x[i];
  const T rstd = T(1) / std::sqrt(sq / static_cast<T>(n) + eps);
  const B vr(rstd);
  for (Index i = 0; i < vec_end; i += W) {
    const B h = B::load_unaligned(x + i) * vr;
    h.store_unaligned(xhat + i);
    (h * B::load_unaligned(gamma + i)).store_unaligned(y + i);
  }
  for (Index i = vec_end; i < n; ++i) {
    xhat[i] = x[i] * rstd;
    y[i] = xhat[i] * gamma[i];
  }
  return rstd;
}

/// The backward pass shared by LayerNorm (centered = true) and RMSNorm (centered = false):
/// g = dy * gamma, dx = rstd * (g - [centered] mean(g) - xhat * mean(g * xhat)) (overwrites dx).
template <typename T, typename Arch = xsimd::default_arch>
void norm_backward(const T* xhat, const T* gamma, const T* dy, T rstd, T* dx, Index n, bool centered) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  B vg(T(0)), vgx(T(0));
  for (Index i = 0; i < vec_end; i += W) {
    const B g = B::load_unaligned(dy + i) * B::load_unaligned(gamma + i);
    vg += g;
    vgx = xsimd::fma(g, B::load_unaligned(xhat + i), vgx);
  }
  T mean_g = xsimd::hadd(vg), mean_gx = xsimd::hadd(vgx);
  for (Index i = vec_end; i < n; ++i) {
    mean_g += dy[i] * gamma[i];
    mean_gx += dy[i] * gamma[i] * xhat[i];
  }
  mean_g = centered ? mean_g / static_cast<T>(n) : T(0);
  mean_gx /= static_cast<T>(n);
  const B vmg(mean_g), vmgx(mean_gx), vr(rstd);
  // Two loops rather than subtracting a zero mean for RMSNorm: the compiler may fuse multiplies
  // into the subtractions, and an extra `- 0` changes which ones (and so the last bit).
  if (centered) {
    for (Index i = 0; i < vec_end; i += W) {
      const B g = B::load_unaligned(dy + i) * B::load_unaligned(gamma + i);
      (vr * (g - vmg - B::load_unaligned(xhat + i) * vmgx)).store_unaligned(dx + i);
    }
    for (Index i = vec_end; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - mean_g - xhat[i] * mean_gx);
  } else {
    for (Index i = 0; i < vec_end; i += W) {
      const B g = B::load_unaligned(dy + i) * B::load_unaligned(gamma + i);
      (vr * (g - B::load_unaligned(xhat + i) * vmgx)).store_unaligned(dx + i);
    }
    for (Index i = vec_end; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - xhat[i] * mean_gx);
  }
}

}  // namespace distillrec::backend::kernels
