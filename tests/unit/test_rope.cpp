#include "distillrec/nn/rope.hpp"

#include "support.hpp"

#include <cmath>

using namespace distillrec;

TEST_CASE("Rotary embedding rotates half-split pairs by position * theta^(-2j/d)", "[nn][rope]") {
  const Index d = 6;
  nn::RotaryEmbedding<double> rope(d, 10, 100.0);
  Matrix<double> x(1, 2 * d);  // two heads
  x << 1, 2, 3, 4, 5, 6, -1, 0.5, 2, 0, 1, 3;
  const Matrix<double> original = x;
  rope.rotate_row(x, 0, 3);
  for (Index h = 0; h < 2; ++h) {
    for (Index j = 0; j < d / 2; ++j) {
      const double angle = 3.0 * std::pow(100.0, -2.0 * j / d);
      const double a = original(0, h * d + j), b = original(0, h * d + j + d / 2);
      REQUIRE(std::abs(x(0, h * d + j) - (a * std::cos(angle) - b * std::sin(angle))) < 1e-12);
      REQUIRE(std::abs(x(0, h * d + j + d / 2) - (b * std::cos(angle) + a * std::sin(angle))) < 1e-12);
    }
  }
  rope.rotate_row(x, 0, 3, /*inverse=*/true);
  REQUIRE((x - original).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("Rotary embedding: position 0 is the identity and scores depend on distance only", "[nn][rope]") {
  Rng rng(3);
  const Index d = 8;
  nn::RotaryEmbedding<double> rope(d, 64);
  const Matrix<double> q = test::random_matrix<double>(1, d, rng), k = test::random_matrix<double>(1, d, rng);
  Matrix<double> q0 = q;
  rope.rotate_row(q0, 0, 0);
  REQUIRE((q0 - q).cwiseAbs().maxCoeff() < 1e-15);
  auto score = [&](Index m, Index n) {
    Matrix<double> a = q, b = k;
    rope.rotate_row(a, 0, m);
    rope.rotate_row(b, 0, n);
    return a.row(0).dot(b.row(0));
  };
  REQUIRE(std::abs(score(7, 3) - score(40, 36)) < 1e-10);
  REQUIRE(std::abs(score(7, 3) - score(7, 4)) > 1e-6);
}

TEST_CASE("Rotary embedding packs positions per sequence and rejects long ones", "[nn][rope]") {
  Rng rng(5);
  nn::RotaryEmbedding<float> rope(4, 3);
  const nn::SequenceLayout layout({2, 3});
  Matrix<float> x = test::random_matrix<float>(5, 4, rng), expected = x;
  rope.rotate(x, layout);
  for (Index t : {0, 1}) rope.rotate_row(expected, t, t);
  for (Index t : {2, 3, 4}) rope.rotate_row(expected, t, t - 2);
  REQUIRE((x - expected).cwiseAbs().maxCoeff() < 1e-6f);
  const nn::SequenceLayout too_long({4});
  Matrix<float> y = test::random_matrix<float>(4, 4, rng);
  REQUIRE_THROWS_AS(rope.rotate(y, too_long), ShapeError);
  REQUIRE_THROWS_AS(nn::RotaryEmbedding<float>(5, 8), ConfigError);
}
