#include "distillrec/nn/rms_norm.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("RMSNorm divides each row by its root mean square", "[nn][rms_norm]") {
  Parameters<double> params;
  nn::RMSNorm<double> norm(params, "n", 4, 1e-6);
  params.allocate();
  Rng rng(1);
  norm.initialize(rng);
  params.value(norm.weight_id()) << 1, 2, 1, 0.5;
  Matrix<double> x(2, 4), y(2, 4);
  x << 1, 2, 3, 4, -2, 0, 0, 2;
  nn::RMSNorm<double>::Workspace ws;
  norm.forward(x, y, ws);
  const double rms0 = std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-6), rms1 = std::sqrt(8 / 4.0 + 1e-6);
  REQUIRE(std::abs(y(0, 0) - 1 / rms0) < 1e-12);
  REQUIRE(std::abs(y(0, 1) - 2 * 2 / rms0) < 1e-12);
  REQUIRE(std::abs(y(0, 3) - 0.5 * 4 / rms0) < 1e-12);
  REQUIRE(std::abs(y(1, 0) + 2 / rms1) < 1e-12);
  REQUIRE(y(1, 1) == 0.0);
}

TEST_CASE("RMSNorm rejects bad configurations", "[nn][rms_norm]") {
  Parameters<float> params;
  REQUIRE_THROWS_AS(nn::RMSNorm<float>(params, "n", 0), ConfigError);
  REQUIRE_THROWS_AS(nn::RMSNorm<float>(params, "m", 4, 0.0), ConfigError);
}

TEMPLATE_TEST_CASE("RMSNorm gradients match finite differences", "[nn][rms_norm][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(4);
  Parameters<T> params;
  nn::RMSNorm<T> norm(params, "n", 7, 1e-5);
  params.allocate();
  params.value(norm.weight_id()) = test::random_matrix<T>(1, 7, rng);
  typename nn::RMSNorm<T>::Workspace ws;
  SECTION("overwriting dx") {
    const auto result = test::check_gradients<T>(
        params, test::random_matrix<T>(5, 7, rng), 5, 7, [&](const Matrix<T>& x, Matrix<T>& y) { norm.forward(x, y, ws); },
        [&](const Matrix<T>&, const Matrix<T>& dy, Matrix<T>& dx) {
          norm.accumulate_grad(dy, ws);
          norm.backward(dy, dx, ws);
        },
        rng);
    CHECK(result.input_error < test::GradTolerance<T>::tolerance);
    CHECK(result.param_error < test::GradTolerance<T>::tolerance);
  }
  SECTION("accumulating into dx") {
    const auto result = test::check_gradients<T>(
        params, test::random_matrix<T>(3, 7, rng), 3, 7, [&](const Matrix<T>& x, Matrix<T>& y) { norm.forward(x, y, ws); },
        [&](const Matrix<T>&, const Matrix<T>& dy, Matrix<T>& dx) {
          dx.setZero();
          norm.accumulate_grad(dy, ws);
          norm.backward(dy, dx, ws, nn::InputGrad::kAccumulate);
        },
        rng);
    CHECK(result.input_error < test::GradTolerance<T>::tolerance);
    CHECK(result.param_error < test::GradTolerance<T>::tolerance);
  }
}
