#include "distillrec/nn/dropout.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Dropout is the identity at inference and masks during training", "[nn][dropout]") {
  nn::Dropout<float> dropout(0.5);
  nn::Dropout<float>::Workspace ws;
  Rng rng(1);
  Matrix<float> x = test::random_matrix<float>(20, 30, rng), y(20, 30);
  dropout.forward(x, y, ws, nn::RunMode::inference());
  REQUIRE(y == x);
  dropout.forward(x, y, ws, nn::RunMode::train(rng));
  Index zeros = 0;
  for (Index i = 0; i < y.size(); ++i) {
    if (y.data()[i] == 0.0f) {
      ++zeros;
    } else {
      REQUIRE(std::abs(y.data()[i] - 2.0f * x.data()[i]) < 1e-6f);
    }
  }
  CHECK(zeros > 200);
  CHECK(zeros < 400);
  Matrix<float> dy = Matrix<float>::Ones(20, 30), dx(20, 30);
  dropout.backward(dy, dx, ws);
  for (Index i = 0; i < y.size(); ++i) REQUIRE((dx.data()[i] == 0.0f) == (y.data()[i] == 0.0f));
  REQUIRE_THROWS_AS(nn::Dropout<float>(1.0), ConfigError);
  REQUIRE_THROWS_AS(nn::Dropout<float>(-0.1), ConfigError);
  REQUIRE_THROWS_AS(dropout.forward(x, y, ws, nn::RunMode{true, nullptr}), ConfigError);
}

TEMPLATE_TEST_CASE("Dropout gradients match finite differences (fixed mask)", "[nn][dropout][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(2);
  Parameters<T> params;
  params.declare("unused", 1, 1);
  params.allocate();
  nn::Dropout<T> dropout(0.3);
  typename nn::Dropout<T>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(4, 7, rng), 4, 7,
      [&](const Matrix<T>& x, Matrix<T>& y) {
        Rng mask_rng(99);  // same mask on every call
        dropout.forward(x, y, ws, nn::RunMode::train(mask_rng));
      },
      [&](const Matrix<T>&, const Matrix<T>& dy, Matrix<T>& dx) { dropout.backward(dy, dx, ws); }, rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
}
