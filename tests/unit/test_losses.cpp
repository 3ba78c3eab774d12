#include "distillrec/loss/bce.hpp"
#include "distillrec/loss/sampled_softmax.hpp"
#include "distillrec/loss/softmax_ce.hpp"

#include "support.hpp"

using namespace distillrec;

namespace {

// Gradient check of a loss L(h, table): analytic grads vs central differences over both inputs.
template <typename T, typename LossFn>
void check_loss_gradients(Matrix<T> h, Matrix<T> table, LossFn loss_fn) {
  Matrix<T> grad_h(h.rows(), h.cols()), grad_table = Matrix<T>::Zero(table.rows(), table.cols());
  loss_fn(h, table, grad_h, grad_table);
  Matrix<T> scratch_h(h.rows(), h.cols()), scratch_table(table.rows(), table.cols());
  auto value = [&]() {
    scratch_table.setZero();
    return static_cast<double>(loss_fn(h, table, scratch_h, scratch_table));
  };
  CHECK(test::max_gradient_error<T>(value, h.data(), grad_h.data(), h.size()) < test::GradTolerance<T>::tolerance);
  CHECK(test::max_gradient_error<T>(value, table.data(), grad_table.data(), table.size()) <
        test::GradTolerance<T>::tolerance);
  CHECK(grad_table.row(0).isZero());  // the padding row is never a candidate
}

}  // namespace

TEST_CASE("Softmax cross-entropy with logits: value, gradient and ignored rows", "[loss][softmax_ce]") {
  Matrix<double> logits(3, 3), grad(3, 3);
  logits << 1, 2, 3, 0, 0, 0, 5, 1, 1;
  loss::SoftmaxCrossEntropyWithLogits<double> ce;
  const double value = ce(logits, {2, 0, -1}, grad);
  const double l0 = std::log(std::exp(1) + std::exp(2) + std::exp(3)) - 3;
  const double l1 = std::log(3.0);
  REQUIRE(value == Approx((l0 + l1) / 2).epsilon(1e-12));
  REQUIRE(grad.row(2).isZero());
  REQUIRE(grad(1, 0) == Approx((1.0 / 3 - 1) / 2));
  REQUIRE(grad.row(0).sum() == Approx(0).margin(1e-12));
  REQUIRE_THROWS_AS(ce(logits, {3, 0, 0}, grad), ShapeError);
  REQUIRE_THROWS_AS(ce(logits, {0, 0}, grad), ShapeError);
  ce.reduction = loss::Reduction::kSum;
  REQUIRE(ce(logits, {2, 0, -1}, grad) == Approx(l0 + l1));
}

TEST_CASE("Softmax cross-entropy stays finite for extreme logits", "[loss][softmax_ce]") {
  Matrix<float> logits(1, 3), grad(1, 3);
  logits << 1000.0f, -1000.0f, 0.0f;
  loss::SoftmaxCrossEntropyWithLogits<float> ce;
  const float value = ce(logits, {1}, grad);
  REQUIRE(std::isfinite(value));
  REQUIRE(value == Approx(2000.0f));
}

TEMPLATE_TEST_CASE("Catalogue softmax cross-entropy gradients", "[loss][softmax_ce][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(1);
  Matrix<T> table = test::random_matrix<T>(8, 4, rng);
  table.row(0).setZero();
  const std::vector<ItemId> targets = {3, 7, 1, 0, 5};
  loss::CatalogueSoftmaxCrossEntropy<T> ce;
  ce.block_rows = 2;  // exercise the blocked path
  typename loss::CatalogueSoftmaxCrossEntropy<T>::Workspace ws;
  check_loss_gradients<T>(test::random_matrix<T>(5, 4, rng), table,
                          [&](const Matrix<T>& h, const Matrix<T>& e, Matrix<T>& gh, Matrix<T>& ge) {
                            return ce(h, e, targets, gh, ge, ws);
                          });
  // Matches the logits-level loss.
  const Matrix<T> h = test::random_matrix<T>(5, 4, rng);
  Matrix<T> gh(5, 4), ge = Matrix<T>::Zero(8, 4);
  const T value = ce(h, table, targets, gh, ge, ws);
  Matrix<T> logits = h * table.bottomRows(7).transpose(), g(5, 7);
  loss::SoftmaxCrossEntropyWithLogits<T> plain;
  const T expected = plain(logits, {2, 6, 0, -1, 4}, g);
  REQUIRE(value == Approx(expected).epsilon(1e-5));
  std::vector<ItemId> bad = {3, 8, 1, 0, 5};
  REQUIRE_THROWS_AS(ce(h, table, bad, gh, ge, ws), ShapeError);
}

TEST_CASE("Binary cross-entropy matches SASRec's formula", "[loss][bce]") {
  Matrix<double> table(4, 2), h(1, 2);
  table << 0, 0, 1, 0, 0, 1, 1, 1;
  h << 2, -1;
  Matrix<double> gh(1, 2), ge = Matrix<double>::Zero(4, 2);
  loss::SampledBinaryCrossEntropy<double> bce;
  const double value = bce(h, table, {1}, {2, 3}, 2, gh, ge);
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const double expected = -std::log(sig(2)) - std::log(1 - sig(-1)) - std::log(1 - sig(1));
  REQUIRE(value == Approx(expected).epsilon(1e-12));
  REQUIRE_THROWS_AS(bce(h, table, {4}, {2, 3}, 2, gh, ge), ShapeError);
  REQUIRE_THROWS_AS(bce(h, table, {1}, {2, 0}, 2, gh, ge), ShapeError);
  REQUIRE_THROWS_AS(bce(h, table, {1}, {2}, 2, gh, ge), ShapeError);
}

TEMPLATE_TEST_CASE("Binary cross-entropy gradients", "[loss][bce][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(2);
  Matrix<T> table = test::random_matrix<T>(9, 3, rng);
  table.row(0).setZero();
  const std::vector<ItemId> positives = {1, 4, 4, 8};
  const std::vector<ItemId> negatives = {2, 3, 5, 6, 7, 1, 4, 2};  // 2 per row, repeats included
  loss::SampledBinaryCrossEntropy<T> bce;
  check_loss_gradients<T>(test::random_matrix<T>(4, 3, rng), table,
                          [&](const Matrix<T>& h, const Matrix<T>& e, Matrix<T>& gh, Matrix<T>& ge) {
                            return bce(h, e, positives, negatives, 2, gh, ge);
                          });
}

TEMPLATE_TEST_CASE("Sampled softmax with logQ correction: gradients", "[loss][sampled_softmax][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(3);
  Matrix<T> table = test::random_matrix<T>(10, 4, rng);
  table.row(0).setZero();
  const std::vector<ItemId> positives = {2, 5, 9};
  const std::vector<T> log_q_pos = {T(-2), T(-1.5), T(-3)};
  const std::vector<ItemId> negatives = {1, 5, 7, 3};  // 5 is an accidental hit for row 1
  const std::vector<T> log_q_neg = {T(-2.2), T(-1.5), T(-2.9), T(-1)};
  loss::SampledSoftmaxCrossEntropy<T> loss_fn;
  loss_fn.temperature = T(0.5);
  typename loss::SampledSoftmaxCrossEntropy<T>::Workspace ws;
  check_loss_gradients<T>(test::random_matrix<T>(3, 4, rng), table,
                          [&](const Matrix<T>& h, const Matrix<T>& e, Matrix<T>& gh, Matrix<T>& ge) {
                            return loss_fn(h, e, positives, log_q_pos, negatives, log_q_neg, gh, ge, ws);
                          });
}

TEST_CASE("Sampled softmax: value by hand, accidental hits removed", "[loss][sampled_softmax]") {
  Matrix<double> table(4, 1), h(1, 1);
  table << 0, 1, 2, 3;
  h << 1;
  Matrix<double> gh(1, 1), ge = Matrix<double>::Zero(4, 1);
  loss::SampledSoftmaxCrossEntropy<double> loss_fn;
  loss::SampledSoftmaxCrossEntropy<double>::Workspace ws;
  // Positive 2 (score 2, log q -1), negatives 3 (score 3, log q -2) and 2 (hit, removed).
  const double value = loss_fn(h, table, {2}, {-1.0}, {3, 2}, {-2.0, -1.0}, gh, ge, ws);
  const double z0 = 2 + 1, z1 = 3 + 2;
  REQUIRE(value == Approx(std::log(std::exp(z0) + std::exp(z1)) - z0));
}

TEST_CASE("Popularity proposal samples in proportion to count^alpha", "[loss][sampled_softmax]") {
  loss::PopularityProposal proposal({0, 1, 3, 6}, 1.0);
  REQUIRE(proposal.log_probability(3) == Approx(std::log(0.6)));
  Rng rng(4);
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 100000; ++i) ++counts[proposal.sample(rng)];
  REQUIRE(counts[0] == 0);
  CHECK(std::abs(counts[1] / 100000.0 - 0.1) < 0.01);
  CHECK(std::abs(counts[3] / 100000.0 - 0.6) < 0.01);
  loss::PopularityProposal uniform({0, 1, 3, 6}, 0.0);
  REQUIRE(uniform.log_probability(1) == Approx(std::log(1.0 / 3)));
}
