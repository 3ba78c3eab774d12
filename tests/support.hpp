// Helpers shared by the tests: random matrices, finite-difference gradient checks, real-data
// lookup.
#pragma once

#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/data/batcher.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

namespace distillrec::test {

/// The small synthetic leave-one-out split the training tests share: 1,200 users over 300 items
/// in 10 taste clusters, histories of up to 20 items.
inline data::LeaveOneOutSplit small_synthetic_split() {
  data::SyntheticConfig config;
  config.num_users = 1200;
  config.num_items = 300;
  config.num_clusters = 10;
  config.max_length = 20;
  config.seed = 5;
  return data::leave_one_out(data::generate_synthetic(config));
}

template <typename T>
Matrix<T> random_matrix(Index rows, Index cols, Rng& rng, double scale = 1.0) {
  Matrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(scale * rng.normal());
  return m;
}

/// Finite-difference settings per scalar type: float needs a larger step and tolerance.
template <typename T>
struct GradTolerance;
template <>
struct GradTolerance<double> {
  static constexpr double step = 1e-6;
  static constexpr double tolerance = 1e-6;
};
template <>
struct GradTolerance<float> {
  static constexpr double step = 1e-3;
  static constexpr double tolerance = 2e-2;
};

/// Compares `analytic[i]` with the central difference of `loss` w.r.t. `values[i]` for up to
/// `max_checks` entries spread over [0, n). The error measure is |a - f| / max(1, |a|, |f|)
/// (relative for large gradients, absolute for small ones); returns the largest one seen.
template <typename T>
double max_gradient_error(const std::function<double()>& loss, T* values, const T* analytic,
                          Index n, Index max_checks = 200) {
  const double step = GradTolerance<T>::step;
  const Index stride = std::max<Index>(1, n / max_checks);
  double worst = 0.0;
  for (Index i = 0; i < n; i += stride) {
    const T saved = values[i];
    values[i] = static_cast<T>(saved + step);
    const double plus = loss();
    values[i] = static_cast<T>(saved - step);
    const double minus = loss();
    values[i] = saved;
    const double numeric = (plus - minus) / (2.0 * step);
    const double a = static_cast<double>(analytic[i]);
    const double error = std::abs(a - numeric) / std::max({1.0, std::abs(a), std::abs(numeric)});
    worst = std::max(worst, error);
  }
  return worst;
}

/// Gradient check of a layer-like function y = f(x; params) through the scalar loss
/// L = sum(y * R) for a fixed random R: analytic dL/dx and dL/dparams (from `backward`, which
/// must write dx and add the parameter gradients) against central differences.
struct GradCheckResult {
  double input_error = 0.0;
  double param_error = 0.0;
};

template <typename T, typename Forward, typename Backward>
GradCheckResult check_gradients(Parameters<T>& params, Matrix<T> x, Index out_rows, Index out_cols,
                                Forward forward, Backward backward, Rng& rng, bool check_input = true) {
  const Matrix<T> r = random_matrix<T>(out_rows, out_cols, rng);
  Matrix<T> y(out_rows, out_cols);
  auto loss = [&]() {
    forward(x, y);
    double total = 0.0;
    for (Index i = 0; i < y.size(); ++i) total += static_cast<double>(y.data()[i]) * r.data()[i];
    return total;
  };
  loss();
  params.zero_grad();
  Matrix<T> dx = Matrix<T>::Zero(x.rows(), x.cols());
  backward(x, r, dx);
  GradCheckResult result;
  if (check_input) result.input_error = max_gradient_error<T>(loss, x.data(), dx.data(), x.size());
  const Matrix<T> grads = Eigen::Map<const Matrix<T>>(params.grads(), 1, params.buffer_size());
  result.param_error = max_gradient_error<T>(loss, params.values(), grads.data(), params.buffer_size(), 400);
  return result;
}

/// A small training batch for model tests (items 1..12, negatives 2..11): row 0 a full window
/// of max_length items, row 1 two items, row 2 one item; targets at every position.
inline data::TrainingBatch tiny_batch(Index max_length) {
  data::TrainingBatch batch;
  batch.reset(3, max_length, 1);
  batch.examples = {0, 1, 2};
  for (Index j = 0; j < max_length; ++j) {
    batch.inputs()(0, j) = static_cast<ItemId>(1 + j);
    batch.targets()(0, j) = static_cast<ItemId>(2 + j);
    batch.negatives()(0, j) = 11;
  }
  batch.inputs()(1, max_length - 2) = 9;
  batch.inputs()(1, max_length - 1) = 4;
  batch.targets()(1, max_length - 2) = 4;
  batch.targets()(1, max_length - 1) = 7;
  batch.negatives()(1, max_length - 2) = 2;
  batch.negatives()(1, max_length - 1) = 3;
  batch.inputs()(2, max_length - 1) = 12;
  batch.targets()(2, max_length - 1) = 5;
  batch.negatives()(2, max_length - 1) = 6;
  return batch;
}

/// The real Amazon log if present (../shared/data beside the project, or $DISTILLREC_DATA_DIR).
inline std::string real_data_path(const std::string& file) {
  if (const char* env = std::getenv("DISTILLREC_DATA_DIR")) {
    const auto p = std::filesystem::path(env) / file;
    if (std::filesystem::exists(p)) return p.string();
  }
#ifdef DISTILLREC_TEST_DATA_DIR
  const auto p = std::filesystem::path(DISTILLREC_TEST_DATA_DIR) / file;
  if (std::filesystem::exists(p)) return p.string();
#endif
  return {};
}

/// A fresh temporary folder for one test.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("distillrec_test_" + name + "_" + std::to_string(std::rand()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace distillrec::test
