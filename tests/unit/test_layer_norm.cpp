#include "distillrec/nn/layer_norm.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("LayerNorm normalises each row", "[nn][layer_norm]") {
  Parameters<double> params;
  nn::LayerNorm<double> norm(params, "ln", 4, 1e-8);
  params.allocate();
  Rng rng(1);
  norm.initialize(rng);
  Matrix<double> x(2, 4), y(2, 4);
  x << 1, 2, 3, 4, -2, 0, 0, 2;
  nn::LayerNorm<double>::Workspace ws;
  norm.forward(x, y, ws);
  // Row 0: mean 2.5, var 1.25.
  const double s = std::sqrt(1.25);
  REQUIRE(std::abs(y(0, 0) - (-1.5 / s)) < 1e-7);
  REQUIRE(std::abs(y(0, 3) - (1.5 / s)) < 1e-7);
  REQUIRE(std::abs(y.row(1).mean()) < 1e-12);
  REQUIRE(std::abs(y.row(1).squaredNorm() / 4 - 1.0) < 1e-6);
}

TEMPLATE_TEST_CASE("LayerNorm gradients match finite differences", "[nn][layer_norm][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(4);
  Parameters<T> params;
  nn::LayerNorm<T> norm(params, "ln", 6, 1e-5);
  params.allocate();
  params.value(0) = test::random_matrix<T>(1, 6, rng);
  params.value(1) = test::random_matrix<T>(1, 6, rng);
  typename nn::LayerNorm<T>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(5, 6, rng), 5, 6,
      [&](const Matrix<T>& x, Matrix<T>& y) { norm.forward(x, y, ws); },
      [&](const Matrix<T>&, const Matrix<T>& dy, Matrix<T>& dx) {
        norm.accumulate_grad(dy, ws);
        norm.backward(dy, dx, ws);
      },
      rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}
