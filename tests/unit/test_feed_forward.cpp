#include "distillrec/nn/feed_forward.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Feed-forward with ReLU matches a hand computation", "[nn][feed_forward]") {
  Parameters<double> params;
  nn::PointwiseFeedForward<double, nn::Relu> ffn(params, "ffn", 2, 3, 0.0);
  params.allocate();
  params.value(params.find("ffn.fc1.weight")) << 1, 0, 0, 1, 1, -1;
  params.value(params.find("ffn.fc1.bias")) << 0, 0, 0;
  params.value(params.find("ffn.fc2.weight")) << 1, 1, 1, 0, 0, 2;
  params.value(params.find("ffn.fc2.bias")) << 1, 0;
  Matrix<double> x(1, 2), y(1, 2);
  x << 2, 3;  // hidden = relu(2, 3, -1) = (2, 3, 0)
  nn::PointwiseFeedForward<double, nn::Relu>::Workspace ws;
  ffn.forward(x, y, ws, nn::RunMode::inference());
  REQUIRE(y(0, 0) == Approx(2 + 3 + 0 + 1));
  REQUIRE(y(0, 1) == Approx(0));
}

template <typename T, typename Activation>
void check_ffn_gradients(double dropout) {
  Rng rng(5);
  Parameters<T> params;
  nn::PointwiseFeedForward<T, Activation> ffn(params, "ffn", 6, 10, dropout);
  params.allocate();
  ffn.initialize(rng);
  for (const auto& info : params.infos()) {
    if (info.name.find("bias") != std::string::npos) params.value(params.find(info.name)) = test::random_matrix<T>(1, info.cols, rng, 0.1);
  }
  typename nn::PointwiseFeedForward<T, Activation>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(5, 6, rng), 5, 6,
      [&](const Matrix<T>& x, Matrix<T>& y) {
        Rng mask_rng(7);
        ffn.forward(x, y, ws, nn::RunMode::train(mask_rng));
      },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) { ffn.backward(x, dy, dx, ws); }, rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}

TEMPLATE_TEST_CASE("Feed-forward gradients match finite differences", "[nn][feed_forward][gradcheck]", float, double) {
  SECTION("ReLU, no dropout") { check_ffn_gradients<TestType, nn::Relu>(0.0); }
  SECTION("ReLU, dropout 0.5") { check_ffn_gradients<TestType, nn::Relu>(0.5); }
  SECTION("GELU, dropout 0.2") { check_ffn_gradients<TestType, nn::Gelu>(0.2); }
}

TEMPLATE_TEST_CASE("SwiGLU gradients match finite differences", "[nn][feed_forward][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(17);
  Parameters<T> params;
  nn::SwiGLU<T> ffn(params, "ffn", 5, 7, GENERATE(0.0, 0.3));
  params.allocate();
  ffn.initialize(rng);
  typename nn::SwiGLU<T>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(4, 5, rng), 4, 5,
      [&](const Matrix<T>& x, Matrix<T>& y) {
        Rng mask_rng(2);
        ffn.forward(x, y, ws, nn::RunMode::train(mask_rng));
      },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) { ffn.backward(x, dy, dx, ws); }, rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}

TEST_CASE("SwiGLU computes down(silu(gate x) * up x) without biases", "[nn][feed_forward]") {
  Rng rng(3);
  Parameters<double> params;
  nn::SwiGLU<double> ffn(params, "ffn", 3, 4);
  params.allocate();
  ffn.initialize(rng);
  REQUIRE(params.find("ffn.gate.weight") >= 0);
  REQUIRE(params.find("ffn.up.weight") >= 0);
  REQUIRE(params.find("ffn.down.weight") >= 0);
  REQUIRE(params.infos().size() == 3);
  const Matrix<double> x = test::random_matrix<double>(2, 3, rng);
  Matrix<double> y(2, 3);
  nn::SwiGLU<double>::Workspace ws;
  ffn.forward(x, y, ws, nn::RunMode::inference());
  const Matrix<double> a = x * params.value(params.find("ffn.gate.weight")).transpose();
  const Matrix<double> b = x * params.value(params.find("ffn.up.weight")).transpose();
  const Matrix<double> h = (a.array() / (1.0 + (-a.array()).exp()) * b.array()).matrix();
  const Matrix<double> expected = h * params.value(params.find("ffn.down.weight")).transpose();
  REQUIRE((y - expected).cwiseAbs().maxCoeff() < 1e-12);
}
