#include "distillrec/nn/linear.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Linear computes x W^T + b", "[nn][linear]") {
  Parameters<double> params;
  nn::Linear<double> layer(params, "fc", 3, 2);
  params.allocate();
  params.value(layer.weight_id()) << 1, 2, 3, 4, 5, 6;
  params.value(layer.bias_id()) << 0.5, -1;
  Matrix<double> x(2, 3), y(2, 2);
  x << 1, 0, -1, 2, 1, 0;
  layer.forward(x, y);
  Matrix<double> expected(2, 2);
  expected << 1 - 3 + 0.5, 4 - 6 - 1, 2 + 2 + 0.5, 8 + 5 - 1;
  REQUIRE((y - expected).cwiseAbs().maxCoeff() < 1e-12);
  Matrix<double> wrong(2, 4);
  REQUIRE_THROWS_AS(layer.forward(wrong, y), ShapeError);
}

TEMPLATE_TEST_CASE("Linear gradients match finite differences", "[nn][linear][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(3);
  for (bool bias : {true, false}) {
    Parameters<T> params;
    nn::Linear<T> layer(params, "fc", 6, 4, bias);
    params.allocate();
    layer.initialize(rng);
    if (bias) params.value(layer.bias_id()) = test::random_matrix<T>(1, 4, rng);
    const auto result = test::check_gradients<T>(
        params, test::random_matrix<T>(5, 6, rng), 5, 4,
        [&](const Matrix<T>& x, Matrix<T>& y) { layer.forward(x, y); },
        [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) {
          layer.accumulate_grad(x, dy);
          layer.backward(dy, dx);
        },
        rng);
    CHECK(result.input_error < test::GradTolerance<T>::tolerance);
    CHECK(result.param_error < test::GradTolerance<T>::tolerance);
  }
}
