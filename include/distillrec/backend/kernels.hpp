// distillrec/backend/kernels.hpp
//
// Element-wise and row-wise kernels written with xsimd, templated on the scalar and on the
// instruction set (default: the best one the compiler targets), each with a plain scalar
// twin in `reference::` that the tests hold it to.
//
//   softmax              x <- softmax(scale * x) on one row, max-subtracted; returns
//                        log-sum-exp(scale * x)
//   softmax_backward     dx = scale * y * (dy - <y, dy>)
//   layer_norm_forward   xhat = (x - mean) * rstd, y = xhat * gamma + beta; returns rstd
//   layer_norm_backward  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma
//   relu / relu_backward dx = dy * [y > 0]
//   gelu / gelu_backward exact GELU, x * Phi(x) (PyTorch's default), dPhi via the normal pdf
//   dropout_mask         mask[i] = 0 with probability p, else 1 / (1 - p) (inverted dropout)
//   multiply             y = x * m element-wise
//   rms_norm_forward     xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), y = xhat * gamma;
//                        returns rstd
//   rms_norm_backward    dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * gamma
//   swiglu / backward    h = silu(a) * b, silu(a) = a * sigmoid(a) (LLaMA's gated FFN)
//   rope_rotate          rotary position embedding of one head vector, HF LLaMA's "rotate
//                        half" layout: for j < d/2, (x_j, x_{j+d/2}) is rotated by the angle
//                        pos * theta^(-2j/d); sign = -1 rotates back (the backward pass)
#pragma once

#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace distillrec::backend::kernels {

/// Scalar references: the definitions the SIMD kernels are tested against.
namespace reference {

template <typename T>
T softmax(T* x, Index n, T scale = T(1)) {
  if (n <= 0) return -std::numeric_limits<T>::infinity();
  T max_value = -std::numeric_limits<T>::infinity();
  for (Index i = 0; i < n; ++i) max_value = std::max(max_value, x[i] * scale);
  T sum = 0;
  for (Index i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] * scale - max_value);
    sum += x[i];
  }
  for (Index i = 0; i < n; ++i) x[i] /= sum;
  return max_value + std::log(sum);
}

template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, Index n, T scale = T(1)) {
  T dot = 0;
  for (Index i = 0; i < n; ++i) dot += y[i] * dy[i];
  for (Index i = 0; i < n; ++i) dx[i] = scale * y[i] * (dy[i] - dot);
}

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
void layer_norm_backward(const T* xhat, const T* gamma, const T* dy, T rstd, T* dx, Index n) {
  T mean_g = 0, mean_gx = 0;
  for (Index i = 0; i < n; ++i) {
    mean_g += dy[i] * gamma[i];
    mean_gx += dy[i] * gamma[i] * xhat[i];
  }
  mean_g /= static_cast<T>(n);
  mean_gx /= static_cast<T>(n);
  for (Index i = 0; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - mean_g - xhat[i] * mean_gx);
}

template <typename T>
void relu(const T* x, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
void relu_backward(const T* y, const T* dy, T* dx, Index n) {
  for (Index i = 0; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <typename T>
void gelu(const T* x, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, Index n) {
  const T inv_sqrt_2pi = T(0.3989422804014327);
  for (Index i = 0; i < n; ++i) {
    const T cdf = T(0.5) * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

template <typename T>
void multiply(const T* x, const T* m, T* y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] = x[i] * m[i];
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
void rms_norm_backward(const T* xhat, const T* gamma, const T* dy, T rstd, T* dx, Index n) {
  T mean_gx = 0;
  for (Index i = 0; i < n; ++i) mean_gx += dy[i] * gamma[i] * xhat[i];
  mean_gx /= static_cast<T>(n);
  for (Index i = 0; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - xhat[i] * mean_gx);
}

template <typename T>
void swiglu(const T* a, const T* b, T* h, Index n) {
  for (Index i = 0; i < n; ++i) h[i] = a[i] / (T(1) + std::exp(-a[i])) * b[i];
}

template <typename T>
void swiglu_backward(const T* a, const T* b, const T* dh, T* da, T* db, Index n) {
  for (Index i = 0; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-a[i]));
    const T silu = a[i] * sig;
    db[i] = dh[i] * silu;
    da[i] = dh[i] * b[i] * sig * (T(1) + a[i] * (T(1) - sig));
  }
}

template <typename T>
void rope_rotate(T* x, const T* cos, const T* sin, Index half, T sign = T(1)) {
  for (Index j = 0; j < half; ++j) {
    const T x1 = x[j], x2 = x[j + half], s = sign * sin[j];
    x[j] = x1 * cos[j] - x2 * s;
    x[j + half] = x2 * cos[j] + x1 * s;
  }
}

}  // namespace reference

namespace detail {
template <typename T, typename Arch>
using Batch = xsimd::batch<T, Arch>;

template <typename T, typename Arch>
constexpr Index lanes() {
  return static_cast<Index>(Batch<T, Arch>::size);
}
}  // namespace detail

template <typename T, typename Arch = xsimd::default_arch>
T softmax(T* x, Index n, T scale = T(1)) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  if (n <= 0) return -std::numeric_limits<T>::infinity();
  const Index vec_end = n - n % W;
  // max of scale * x
  T max_value = -std::numeric_limits<T>::infinity();
  {
    B vmax(-std::numeric_limits<T>::infinity());
    const B vscale(scale);
    for (Index i = 0; i < vec_end; i += W) vmax = xsimd::max(vmax, B::load_unaligned(x + i) * vscale);
    alignas(64) T lanes_out[W];
    vmax.store_aligned(lanes_out);
    for (Index l = 0; l < W; ++l) max_value = std::max(max_value, lanes_out[l]);
    for (Index i = vec_end; i < n; ++i) max_value = std::max(max_value, x[i] * scale);
  }
  T sum = 0;
  {
    const B vscale(scale), vmax(max_value);
    B vsum(T(0));
    for (Index i = 0; i < vec_end; i += W) {
      const B e = xsimd::exp(xsimd::fms(B::load_unaligned(x + i), vscale, vmax));
      e.store_unaligned(x + i);
      vsum += e;
    }
    sum = xsimd::hadd(vsum);
    for (Index i = vec_end; i < n; ++i) {
      x[i] = std::exp(x[i] * scale - max_value);
      sum += x[i];
    }
  }
  const T inv = T(1) / sum;
  const B vinv(inv);
  for (Index i = 0; i < vec_end; i += W) (B::load_unaligned(x + i) * vinv).store_unaligned(x + i);
  for (Index i = vec_end; i < n; ++i) x[i] *= inv;
  return max_value + std::log(sum);
}

template <typename T, typename Arch = xsimd::default_arch>
void softmax_backward(const T* y, const T* dy, T* dx, Index n, T scale = T(1)) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  B vdot(T(0));
  for (Index i = 0; i < vec_end; i += W) vdot = xsimd::fma(B::load_unaligned(y + i), B::load_unaligned(dy + i), vdot);
  T dot = xsimd::hadd(vdot);
  for (Index i = vec_end; i < n; ++i) dot += y[i] * dy[i];
  const B vd(dot), vs(scale);
  for (Index i = 0; i < vec_end; i += W) {
    (vs * B::load_unaligned(y + i) * (B::load_unaligned(dy + i) - vd)).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) dx[i] = scale * y[i] * (dy[i] - dot);
}

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
void layer_norm_backward(const T* xhat, const T* gamma, const T* dy, T rstd, T* dx, Index n) {
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
  mean_g /= static_cast<T>(n);
  mean_gx /= static_cast<T>(n);
  const B vmg(mean_g), vmgx(mean_gx), vr(rstd);
  for (Index i = 0; i < vec_end; i += W) {
    const B g = B::load_unaligned(dy + i) * B::load_unaligned(gamma + i);
    (vr * (g - vmg - B::load_unaligned(xhat + i) * vmgx)).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - mean_g - xhat[i] * mean_gx);
}

template <typename T, typename Arch = xsimd::default_arch>
void relu(const T* x, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B zero(T(0));
  for (Index i = 0; i < vec_end; i += W) xsimd::max(B::load_unaligned(x + i), zero).store_unaligned(y + i);
  for (Index i = vec_end; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T, typename Arch = xsimd::default_arch>
void relu_backward(const T* y, const T* dy, T* dx, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B zero(T(0));
  for (Index i = 0; i < vec_end; i += W) {
    xsimd::select(B::load_unaligned(y + i) > zero, B::load_unaligned(dy + i), zero).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <typename T, typename Arch = xsimd::default_arch>
void gelu(const T* x, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B half(T(0.5)), one(T(1)), r2(T(0.7071067811865476));
  for (Index i = 0; i < vec_end; i += W) {
    const B v = B::load_unaligned(x + i);
    (half * v * (one + xsimd::erf(v * r2))).store_unaligned(y + i);
  }
  for (Index i = vec_end; i < n; ++i) y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
}

template <typename T, typename Arch = xsimd::default_arch>
void gelu_backward(const T* x, const T* dy, T* dx, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const T inv_sqrt_2pi = T(0.3989422804014327);
  const B half(T(0.5)), one(T(1)), r2(T(0.7071067811865476)), c(inv_sqrt_2pi), mhalf(T(-0.5));
  for (Index i = 0; i < vec_end; i += W) {
    const B v = B::load_unaligned(x + i);
    const B cdf = half * (one + xsimd::erf(v * r2));
    const B pdf = c * xsimd::exp(mhalf * v * v);
    (B::load_unaligned(dy + i) * xsimd::fma(v, pdf, cdf)).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) {
    const T cdf = T(0.5) * (T(1) + std::erf(x[i] * T(0.7071067811865476)));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

template <typename T, typename Arch = xsimd::default_arch>
void multiply(const T* x, const T* m, T* y, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  for (Index i = 0; i < vec_end; i += W) (B::load_unaligned(x + i) * B::load_unaligned(m + i)).store_unaligned(y + i);
  for (Index i = vec_end; i < n; ++i) y[i] = x[i] * m[i];
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

template <typename T, typename Arch = xsimd::default_arch>
void rms_norm_backward(const T* xhat, const T* gamma, const T* dy, T rstd, T* dx, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  B acc(T(0));
  for (Index i = 0; i < vec_end; i += W) {
    acc = xsimd::fma(B::load_unaligned(dy + i) * B::load_unaligned(gamma + i), B::load_unaligned(xhat + i), acc);
  }
  T mean_gx = xsimd::hadd(acc);
  for (Index i = vec_end; i < n; ++i) mean_gx += dy[i] * gamma[i] * xhat[i];
  mean_gx /= static_cast<T>(n);
  const B vm(mean_gx), vr(rstd);
  for (Index i = 0; i < vec_end; i += W) {
    const B g = B::load_unaligned(dy + i) * B::load_unaligned(gamma + i);
    (vr * (g - B::load_unaligned(xhat + i) * vm)).store_unaligned(dx + i);
  }
  for (Index i = vec_end; i < n; ++i) dx[i] = rstd * (dy[i] * gamma[i] - xhat[i] * mean_gx);
}

template <typename T, typename Arch = xsimd::default_arch>
void swiglu(const T* a, const T* b, T* h, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B one(T(1));
  for (Index i = 0; i < vec_end; i += W) {
    const B va = B::load_unaligned(a + i);
    (va / (one + xsimd::exp(-va)) * B::load_unaligned(b + i)).store_unaligned(h + i);
  }
  for (Index i = vec_end; i < n; ++i) h[i] = a[i] / (T(1) + std::exp(-a[i])) * b[i];
}

template <typename T, typename Arch = xsimd::default_arch>
void swiglu_backward(const T* a, const T* b, const T* dh, T* da, T* db, Index n) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = n - n % W;
  const B one(T(1));
  for (Index i = 0; i < vec_end; i += W) {
    const B va = B::load_unaligned(a + i);
    const B vdh = B::load_unaligned(dh + i);
    const B sig = one / (one + xsimd::exp(-va));
    const B silu = va * sig;
    const B vb = B::load_unaligned(b + i);
    (vdh * silu).store_unaligned(db + i);
    (vdh * vb * sig * xsimd::fma(va, one - sig, one)).store_unaligned(da + i);
  }
  for (Index i = vec_end; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-a[i]));
    db[i] = dh[i] * a[i] * sig;
    da[i] = dh[i] * b[i] * sig * (T(1) + a[i] * (T(1) - sig));
  }
}

template <typename T, typename Arch = xsimd::default_arch>
void rope_rotate(T* x, const T* cos, const T* sin, Index half, T sign = T(1)) {
  using B = detail::Batch<T, Arch>;
  constexpr Index W = detail::lanes<T, Arch>();
  const Index vec_end = half - half % W;
  const B vs(sign);
  for (Index j = 0; j < vec_end; j += W) {
    const B x1 = B::load_unaligned(x + j), x2 = B::load_unaligned(x + j + half);
    const B c = B::load_unaligned(cos + j), s = B::load_unaligned(sin + j) * vs;
    xsimd::fms(x1, c, x2 * s).store_unaligned(x + j);
    xsimd::fma(x1, s, x2 * c).store_unaligned(x + j + half);
  }
  for (Index j = vec_end; j < half; ++j) {
    const T x1 = x[j], x2 = x[j + half], s = sign * sin[j];
    x[j] = x1 * cos[j] - x2 * s;
    x[j + half] = x2 * cos[j] + x1 * s;
  }
}

/// Inverted-dropout mask: 0 with probability p, 1 / (1 - p) otherwise (so E[mask] = 1).
/// Draws 32 random bits per element from `rng`.
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
