// distillrec/loss/info_nce.hpp
//
// InfoNCE over cosine similarities with a learnable temperature, as HLLM trains its user model
// (../shared/docs/methods.md §3.5-3.6). For each valid row i, with u_i a query (the user model's
// output), p_i its positive (the next item's embedding) and n_1..n_M a pool of negatives shared
// by every row, all L2-normalised (x^ = x / max(|x|, 1e-12)):
//
//     s+_i = u^_i . p^_i,   s-_im = u^_i . n^_m,   scale = exp(l), l clamped to [0, ln max_scale]
//     a negative with p^_i . n^_m > false_negative_threshold is dropped for row i
//     L = mean over valid rows of  -log softmax(scale * [s+_i, s-_i1 .. s-_iM])[0]
//
// The gradients flow to the queries, the positives, every negative (the pool's embeddings: in
// HLLM they come from the item model) and the log-scale l. The false-negative filter is a
// selection, without gradient. Rows marked invalid (padding) add nothing and are not counted.
// As in HLLM's code, l itself is clamped (clamp_log_scale) before use and its gradient is taken
// at the clamped value.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/core/workspace.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace distillrec::loss {

struct InfoNceConfig {
  double initial_temperature = 0.07;      // the scale starts at 1 / 0.07 (l = ln(1 / 0.07))
  double max_scale = 100.0;               // the scale is clamped to [1, max_scale]
  double false_negative_threshold = 0.99; // negatives closer than this to the positive are dropped (>= 1: none)

  void validate() const {
    if (!(initial_temperature > 0.0) || !std::isfinite(initial_temperature)) {
      throw ConfigError(distillrec::detail::concat("InfoNCE: the initial temperature must be positive, got ", initial_temperature));
    }
    if (!(max_scale >= 1.0) || !std::isfinite(max_scale)) {
      throw ConfigError(distillrec::detail::concat("InfoNCE: the largest scale must be at least 1, got ", max_scale));
    }
    if (std::isnan(false_negative_threshold)) throw ConfigError("InfoNCE: the false-negative threshold is NaN");
  }
  /// l at the start: ln(1 / initial_temperature), clamped like every later value.
  double initial_log_scale() const { return std::clamp(std::log(1.0 / initial_temperature), 0.0, std::log(max_scale)); }
  /// l clamped to [0, ln max_scale] (the scale to [1, max_scale]).
  double clamp_log_scale(double l) const { return std::clamp(l, 0.0, std::log(max_scale)); }
};

/// What a call measured, besides the loss (over its valid rows).
struct InfoNceStats {
  Index rows = 0;                   // valid rows
  double surviving_negatives = 0.0; // mean negatives per row after the false-negative filter
  double accuracy = 0.0;            // fraction of rows whose positive scores above every kept negative
};

template <typename T>
class InfoNce {
 public:
  struct Workspace {
    ScratchMatrix<T> q, p, n;        // normalised copies
    ScratchMatrix<T> sim, pos_sim;   // [rows, M]: query-negative and positive-negative cosines
    ScratchMatrix<T> dq, dp, dn;     // gradients of the normalised copies
    std::vector<T> q_norm, p_norm, n_norm, ds_pos;
  };

  explicit InfoNce(InfoNceConfig config = {}) : config_(config) { config_.validate(); }
  const InfoNceConfig& config() const { return config_; }

  /// queries and positives [rows, D], negatives [M, D] (M >= 1); valid [rows] (empty: every row
  /// valid; 0 marks a padding row); log_scale l (clamped here). Writes (overwrites) the
  /// gradients of queries, positives and negatives and *grad_log_scale. `denominator` > 0
  /// replaces the count of valid rows as the mean's divisor (a data-parallel shard).
  T operator()(const ConstMatrixRef<T>& queries, const ConstMatrixRef<T>& positives, const ConstMatrixRef<T>& negatives,
               const std::vector<std::uint8_t>& valid, T log_scale, MatrixRef<T> grad_queries, MatrixRef<T> grad_positives,
               MatrixRef<T> grad_negatives, T* grad_log_scale, Workspace& ws, InfoNceStats* stats = nullptr,
               Index denominator = 0) const {
    const Index rows = queries.rows(), dim = queries.cols(), pool = negatives.rows();
    if (positives.rows() != rows || positives.cols() != dim) {
      throw ShapeError(distillrec::detail::concat("InfoNCE: ", rows, "x", dim, " queries but ", positives.rows(), "x", positives.cols(), " positives"));
    }
    if (negatives.cols() != dim) {
      throw ShapeError(distillrec::detail::concat("InfoNCE: negatives have ", negatives.cols(), " columns, the queries ", dim));
    }
    if (pool < 1) throw ShapeError("InfoNCE: the negative pool is empty");
    if (!valid.empty() && static_cast<Index>(valid.size()) != rows) {
      throw ShapeError(distillrec::detail::concat("InfoNCE: ", valid.size(), " validity flags for ", rows, " rows"));
    }
    require_shape(grad_queries, rows, dim, "InfoNCE query gradient");
    require_shape(grad_positives, rows, dim, "InfoNCE positive gradient");
    require_shape(grad_negatives, pool, dim, "InfoNCE negative gradient");
    if (!std::isfinite(static_cast<double>(log_scale))) throw Error("InfoNCE: the log-scale is not finite");

    auto is_valid = [&](Index i) { return valid.empty() || valid[static_cast<std::size_t>(i)] != 0; };
    Index count = 0;
    for (Index i = 0; i < rows; ++i) count += is_valid(i);
    const Index divisor = denominator > 0 ? denominator : std::max<Index>(count, 1);
    const T l = static_cast<T>(config_.clamp_log_scale(static_cast<double>(log_scale)));
    const T scale = std::exp(l);

    auto q = ws.q.resize(rows, dim), p = ws.p.resize(rows, dim), n = ws.n.resize(pool, dim);
    normalise(queries, q, ws.q_norm, "queries");
    normalise(positives, p, ws.p_norm, "positives");
    normalise(negatives, n, ws.n_norm, "negatives");
    auto sim = ws.sim.resize(rows, pool);
    backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), q, n, T(0), sim);
    const bool filter = config_.false_negative_threshold < 1.0;
    auto pos_sim = ws.pos_sim.resize(filter ? rows : 0, pool);
    if (filter) backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), p, n, T(0), pos_sim);
    const T threshold = static_cast<T>(config_.false_negative_threshold);

    // Per row: the softmax over [s+, kept s-]; sim becomes dL/ds- (0 where dropped), ds_pos dL/ds+.
    ws.ds_pos.assign(static_cast<std::size_t>(rows), T(0));
    const T w = T(1) / static_cast<T>(divisor);
    double total = 0.0, dl = 0.0, kept_total = 0.0, hits = 0.0;
    for (Index i = 0; i < rows; ++i) {
      T* s = sim.row(i).data();
      if (!is_valid(i)) {
        std::fill(s, s + pool, T(0));
        continue;
      }
      const T s_pos = q.row(i).dot(p.row(i));
      const T a = scale * s_pos;
      T top = a, best_negative = -std::numeric_limits<T>::infinity();
      Index kept = 0;
      for (Index m = 0; m < pool; ++m) {
        if (filter && pos_sim(i, m) > threshold) {
          s[m] = -std::numeric_limits<T>::infinity();
          continue;
        }
        ++kept;
        best_negative = std::max(best_negative, s[m]);
        s[m] *= scale;
        top = std::max(top, s[m]);
      }
      double sum = std::exp(static_cast<double>(a - top));
      for (Index m = 0; m < pool; ++m) sum += s[m] == -std::numeric_limits<T>::infinity() ? 0.0 : std::exp(static_cast<double>(s[m] - top));
      const double lse = static_cast<double>(top) + std::log(sum);
      total += lse - static_cast<double>(a);
      const double p0 = std::exp(static_cast<double>(a) - lse);
      double row_dl = (p0 - 1.0) * static_cast<double>(a);
      for (Index m = 0; m < pool; ++m) {
        if (s[m] == -std::numeric_limits<T>::infinity()) {
          s[m] = T(0);
          continue;
        }
        const double pm = std::exp(static_cast<double>(s[m]) - lse);
        row_dl += pm * static_cast<double>(s[m]);
        s[m] = static_cast<T>(pm) * scale * w;  // dL/ds-_im
      }
      ws.ds_pos[static_cast<std::size_t>(i)] = static_cast<T>(p0 - 1.0) * scale * w;
      dl += row_dl;
      kept_total += static_cast<double>(kept);
      hits += s_pos > best_negative ? 1.0 : 0.0;
    }
    if (grad_log_scale != nullptr) *grad_log_scale = static_cast<T>(dl / static_cast<double>(divisor));
    if (stats != nullptr) {
      stats->rows = count;
      stats->surviving_negatives = count > 0 ? kept_total / static_cast<double>(count) : 0.0;
      stats->accuracy = count > 0 ? hits / static_cast<double>(count) : 0.0;
    }

    // Gradients of the normalised vectors: dq^ = ds+ p^ + dS n^, dp^ = ds+ q^, dn^ = dS^T q^.
    auto dq = ws.dq.resize(rows, dim), dp = ws.dp.resize(rows, dim), dn = ws.dn.resize(pool, dim);
    backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1), sim, n, T(0), dq);
    backend::gemm(backend::Trans::kYes, backend::Trans::kNo, T(1), sim, q, T(0), dn);
    for (Index i = 0; i < rows; ++i) {
      const T g = ws.ds_pos[static_cast<std::size_t>(i)];
      dq.row(i) += g * p.row(i);
      dp.row(i) = g * q.row(i);
    }
    normalise_backward(q, dq, ws.q_norm, grad_queries);
    normalise_backward(p, dp, ws.p_norm, grad_positives);
    normalise_backward(n, dn, ws.n_norm, grad_negatives);
    return static_cast<T>(total / static_cast<double>(divisor));
  }

 private:
  static constexpr double kEps = 1e-12;

  static void normalise(const ConstMatrixRef<T>& x, MatrixRef<T> out, std::vector<T>& norms, const char* what) {
    norms.resize(static_cast<std::size_t>(x.rows()));
    for (Index i = 0; i < x.rows(); ++i) {
      const T norm = std::max(x.row(i).norm(), static_cast<T>(kEps));
      if (!std::isfinite(static_cast<double>(norm))) {
        throw Error(distillrec::detail::concat("InfoNCE: row ", i, " of the ", what, " is not finite"));
      }
      norms[static_cast<std::size_t>(i)] = norm;
      out.row(i) = x.row(i) / norm;
    }
  }

  // x^ = x / r (r = max(|x|, eps)): dx = (dx^ - x^ (x^ . dx^)) / r where |x| > eps, dx^ / eps below.
  static void normalise_backward(const ConstMatrixRef<T>& unit, const ConstMatrixRef<T>& d_unit, const std::vector<T>& norms,
                                 MatrixRef<T> dx) {
    for (Index i = 0; i < unit.rows(); ++i) {
      const T r = norms[static_cast<std::size_t>(i)];
      if (r > static_cast<T>(kEps)) {
        dx.row(i) = (d_unit.row(i) - unit.row(i) * unit.row(i).dot(d_unit.row(i))) / r;
      } else {
        dx.row(i) = d_unit.row(i) / r;
      }
    }
  }

  InfoNceConfig config_;
};

}  // namespace distillrec::loss
