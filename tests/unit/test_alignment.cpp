#include "distillrec/loss/alignment.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Cosine alignment and feature distance match hand-computed values", "[loss][alignment]") {
  Matrix<double> s(2, 2), t(2, 2), g(2, 2);
  s << 1, 0, 3, 4;
  t << 0, 2, 3, 4;
  loss::CosineAlignment<double> cosine;
  // cos = 0 and 1: D = 1 - 0.5.
  REQUIRE(std::abs(cosine(s, t, g) - 0.5) < 1e-12);
  REQUIRE(g.row(1).cwiseAbs().maxCoeff() < 1e-12);  // already aligned: no gradient
  loss::FeatureDistance<double> distance;
  // |(1,-2)| = sqrt(5), |0| = 0: mean sqrt(5) / 2.
  REQUIRE(std::abs(distance(s, t, g) - std::sqrt(5.0) / 2) < 1e-12);
  REQUIRE(g.row(1).isZero());
  distance.squared = true;
  REQUIRE(std::abs(distance(s, t, g) - 2.5) < 1e-12);
  Matrix<double> wrong(3, 2), gw(3, 2);
  REQUIRE_THROWS_AS(cosine(wrong, t, gw), ShapeError);
}

TEMPLATE_TEST_CASE("Alignment losses: gradients match finite differences", "[loss][alignment][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(8);
  const Matrix<T> teacher = test::random_matrix<T>(5, 7, rng, 3.0);
  Parameters<T> none;
  none.allocate();
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    loss::CosineAlignment<T> cosine;
    loss::FeatureDistance<T> distance;
    distance.squared = variant == 2;
    Matrix<T> g(5, 7);
    const auto result = test::check_gradients<T>(
        none, test::random_matrix<T>(5, 7, rng), 1, 1,
        [&](const Matrix<T>& s, Matrix<T>& y) { y(0, 0) = variant == 0 ? cosine(s, teacher, g) : distance(s, teacher, g); },
        [&](const Matrix<T>& s, const Matrix<T>& dy, Matrix<T>& dx) {
          if (variant == 0) {
            cosine(s, teacher, dx);
          } else {
            distance(s, teacher, dx);
          }
          dx *= dy(0, 0);
        },
        rng);
    CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  }
}
