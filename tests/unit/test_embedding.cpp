#include "distillrec/nn/embedding.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Embedding looks up rows and keeps the padding row zero", "[nn][embedding]") {
  Parameters<float> params;
  nn::Embedding<float> table(params, "items", 5, 3);
  params.allocate();
  Rng rng(1);
  table.initialize(rng);
  REQUIRE(table.table().row(0).isZero());
  REQUIRE(!table.table().row(1).isZero());
  std::vector<ItemId> ids = {2, 0, 4, 2};
  Matrix<float> y(4, 3);
  table.forward(ids, y, 2.0f);
  REQUIRE(y.row(0) == 2.0f * table.table().row(2));
  REQUIRE(y.row(1).isZero());
  Matrix<float> dy = Matrix<float>::Ones(4, 3);
  table.accumulate_grad(ids, dy);
  REQUIRE(params.grad(table.weight_id()).row(0).isZero());
  REQUIRE(params.grad(table.weight_id())(2, 0) == 2.0f);
  REQUIRE(params.grad(table.weight_id())(4, 1) == 1.0f);
  REQUIRE(params.grad(table.weight_id()).row(1).isZero());
}

TEMPLATE_TEST_CASE("Embedding gradients match finite differences", "[nn][embedding][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(2);
  Parameters<T> params;
  nn::Embedding<T> table(params, "items", 7, 4);
  params.allocate();
  table.initialize(rng);
  const std::vector<ItemId> ids = {1, 3, 3, 6, 2};
  const T scale = T(1.5);
  // The input here is the (non-differentiable) id list; check parameter gradients only.
  const auto result = test::check_gradients<T>(
      params, Matrix<T>::Zero(1, 1), 5, 4,
      [&](const Matrix<T>&, Matrix<T>& y) { table.forward(ids, y, scale); },
      [&](const Matrix<T>&, const Matrix<T>& dy, Matrix<T>&) { table.accumulate_grad(ids, dy, scale); },
      rng, /*check_input=*/false);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}
