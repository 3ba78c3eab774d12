// distillrec/loss/dros.hpp
//
// The distributionally robust term of DROS (Yang et al., SIGIR 2023) as DLLM2Rec applies it
// (methods.md §2.5): for one example with full logit vector z [N] and target t,
//
//   ℓ(z, t) = log( Σ_{j≠t} exp(ps_j z_j² / β) + exp(ps_t (z_t − 1)² / β) )
//
// with item propensities ps_j = ((cnt_j + 1) / Σ_k (cnt_k + 1))^0.05 (cnt_j: training examples
// whose target is j) and radius β (1.0). The reference writes the sum as Σ_j − exp(ps_t z_t²/β) +
// ... + 1e-24; here the sum skips t directly (no cancellation) and is shifted by its largest
// exponent, so large logits cannot overflow.
//
// DROS::row scores one row against several targets at once, L = Σ_k c_k ℓ(z, t_k) (the ranking
// distillation's DRO part uses the teacher's candidates as targets), and ADDS dL/dz to g:
//   dℓ/dz_j = exp(a_j − M) · 2 ps_j z_j / β / S       (j ≠ t)
//   dℓ/dz_t = exp(a'_t − M) · 2 ps_t (z_t − 1) / β / S
// where a_j = ps_j z_j² / β, a'_t = ps_t (z_t − 1)² / β, M the largest of them, S the shifted sum.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace distillrec::loss {

/// ps_j for items 1..N (index j - 1) from target counts counts[j] (index = item id, [0] unused).
inline std::vector<double> dros_propensities(const std::vector<double>& counts, double exponent = 0.05) {
  if (counts.size() < 2) throw ConfigError("DROS: no items");
  double total = 0.0;
  for (std::size_t j = 1; j < counts.size(); ++j) total += counts[j] + 1.0;
  std::vector<double> ps(counts.size() - 1);
  for (std::size_t j = 1; j < counts.size(); ++j) ps[j - 1] = std::pow((counts[j] + 1.0) / total, exponent);
  return ps;
}

template <typename T>
struct DROS {
  std::vector<T> propensity;  // [N]: ps of item j + 1
  double beta = 1.0;

  /// L = Σ_k coef[k] ℓ(z, targets[k]) for one row z [N] (targets 1..N); adds dL/dz into g [N].
  /// `scratch` is reused between calls (no allocation once grown).
  double row(const T* z, const ItemId* targets, const T* coef, Index m, T* g, std::vector<double>& scratch) const {
    const auto n = static_cast<Index>(propensity.size());
    if (!(beta > 0)) throw ConfigError("DROS: beta must be positive");
    scratch.resize(static_cast<std::size_t>(n));
    double max_a = -std::numeric_limits<double>::infinity();
    for (Index j = 0; j < n; ++j) {
      const double zj = static_cast<double>(z[j]);
      const double a = static_cast<double>(propensity[static_cast<std::size_t>(j)]) * zj * zj / beta;
      scratch[static_cast<std::size_t>(j)] = a;
      max_a = std::max(max_a, a);
    }
    for (Index k = 0; k < m; ++k) {
      const ItemId t = targets[k];
      if (t < 1 || t > n) throw ShapeError(distillrec::detail::concat("DROS: target item ", t, " is outside 1..", n));
      const double zt = static_cast<double>(z[t - 1]) - 1.0;
      max_a = std::max(max_a, static_cast<double>(propensity[static_cast<std::size_t>(t - 1)]) * zt * zt / beta);
    }
    double all = 0.0;
    for (Index j = 0; j < n; ++j) {
      const double e = std::exp(scratch[static_cast<std::size_t>(j)] - max_a);
      scratch[static_cast<std::size_t>(j)] = e;
      all += e;
    }
    // Per target k (stored after the n exponentials): w_k = c_k / S_k, the shifted term, e_t.
    scratch.resize(static_cast<std::size_t>(n + 3 * m));
    double* w = scratch.data() + n;
    double* shifted = w + m;
    double* own = shifted + m;
    double loss = 0.0, dense = 0.0;
    for (Index k = 0; k < m; ++k) {
      const ItemId t = targets[k];
      const double ps = static_cast<double>(propensity[static_cast<std::size_t>(t - 1)]);
      const double zt = static_cast<double>(z[t - 1]);
      shifted[k] = std::exp(ps * (zt - 1.0) * (zt - 1.0) / beta - max_a);
      own[k] = scratch[static_cast<std::size_t>(t - 1)];
      // Σ_{j≠t}: directly for one target, else from the total (in double).
      double others = 0.0;
      if (m == 1) {
        for (Index j = 0; j < n; ++j) others += j == t - 1 ? 0.0 : scratch[static_cast<std::size_t>(j)];
      } else {
        others = std::max(0.0, all - own[k]);
      }
      const double sum = others + shifted[k];
      const double c = static_cast<double>(coef[k]);
      loss += c * (max_a + std::log(sum));
      w[k] = c / sum;
      dense += w[k];
    }
    // Every item j gets dense · e_j · 2 ps_j z_j / β, except that a target's own term is the
    // shifted one: targets are handled apart, so no huge terms cancel (1/S can overflow a float).
    for (Index k = 0; k < m; ++k) scratch[static_cast<std::size_t>(targets[k] - 1)] = 0.0;
    for (Index j = 0; j < n; ++j) {
      g[j] += static_cast<T>(dense * scratch[static_cast<std::size_t>(j)] * 2.0 * static_cast<double>(propensity[static_cast<std::size_t>(j)]) *
                             static_cast<double>(z[j]) / beta);
    }
    for (Index k = 0; k < m; ++k) {
      const ItemId t = targets[k];
      const double ps = static_cast<double>(propensity[static_cast<std::size_t>(t - 1)]);
      const double zt = static_cast<double>(z[t - 1]);
      // the dense coefficient minus every target term at this item (exactly 0 for one target)
      double rest = dense;
      bool first = true;
      for (Index q = 0; q < m; ++q) {
        if (targets[q] != t) continue;
        if (q < k) first = false;
        rest -= w[q];
      }
      double add = w[k] * shifted[k] * 2.0 * ps * (zt - 1.0) / beta;
      if (first) add += rest * own[k] * 2.0 * ps * zt / beta;  // once per distinct target
      g[t - 1] += static_cast<T>(add);
    }
    return loss;
  }
};

}  // namespace distillrec::loss
