#include "distillrec/loss/bce.hpp"
#include "distillrec/loss/sampled_softmax.hpp"
#include "distillrec/loss/softmax_ce.hpp"

#include "support.hpp"

using namespace distillrec;

namespace {

// Gradient check of a loss L(h, head) through an output head W [N, d] with or without a bias b
// [N]: analytic gradients of h, W and b against central differences.
template <typename T, typename LossFn>
void check_loss_gradients(Matrix<T> h, Matrix<T> weight, bool with_bias, LossFn loss_fn, Rng& rng) {
  const Index n = weight.rows(), d = weight.cols();
  Matrix<T> bias = test::random_matrix<T>(1, n, rng);
  auto head = [&]() { return nn::HeadWeights<T>{ConstMatrixMap<T>(weight.data(), n, d), with_bias ? bias.data() : nullptr}; };
  Matrix<T> grad_h(h.rows(), h.cols()), grad_w = Matrix<T>::Zero(n, d), grad_b = Matrix<T>::Zero(1, n);
  loss_fn(h, head(), grad_h, nn::HeadGradients<T>{MatrixMap<T>(grad_w.data(), n, d), with_bias ? grad_b.data() : nullptr});
  Matrix<T> scratch_h(h.rows(), h.cols()), scratch_w(n, d), scratch_b(1, n);
  auto value = [&]() {
    scratch_w.setZero();
    scratch_b.setZero();
    return static_cast<double>(
        loss_fn(h, head(), scratch_h, nn::HeadGradients<T>{MatrixMap<T>(scratch_w.data(), n, d), scratch_b.data()}));
  };
  CHECK(test::max_gradient_error<T>(value, h.data(), grad_h.data(), h.size()) < test::GradTolerance<T>::tolerance);
  CHECK(test::max_gradient_error<T>(value, weight.data(), grad_w.data(), weight.size()) < test::GradTolerance<T>::tolerance);
  if (with_bias) {
    CHECK(test::max_gradient_error<T>(value, bias.data(), grad_b.data(), bias.size()) < test::GradTolerance<T>::tolerance);
  } else {
    CHECK(grad_b.isZero());
  }
  // A frozen weight (no rows in its gradient) is skipped; h's gradient is unchanged.
  Matrix<T> frozen_h(h.rows(), h.cols());
  loss_fn(h, head(), frozen_h, nn::HeadGradients<T>{MatrixMap<T>(nullptr, 0, d), nullptr});
  CHECK((frozen_h - grad_h).cwiseAbs().maxCoeff() < T(1e-5));
}

template <typename T>
nn::HeadWeights<T> view(const Matrix<T>& weight, const T* bias = nullptr) {
  return nn::HeadWeights<T>{ConstMatrixMap<T>(weight.data(), weight.rows(), weight.cols()), bias};
}

template <typename T>
nn::HeadGradients<T> grads(Matrix<T>& weight, T* bias = nullptr) {
  return nn::HeadGradients<T>{MatrixMap<T>(weight.data(), weight.rows(), weight.cols()), bias};
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

TEMPLATE_TEST_CASE("Catalogue softmax cross-entropy gradients, tied and untied heads", "[loss][softmax_ce][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(1);
  const Matrix<T> weight = test::random_matrix<T>(7, 4, rng);
  const std::vector<ItemId> targets = {3, 7, 1, 0, 5};
  loss::CatalogueSoftmaxCrossEntropy<T> ce;
  ce.block_rows = 2;  // exercise the blocked path
  typename loss::CatalogueSoftmaxCrossEntropy<T>::Workspace ws;
  for (bool with_bias : {false, true}) {
    CAPTURE(with_bias);
    check_loss_gradients<T>(test::random_matrix<T>(5, 4, rng), weight, with_bias,
                            [&](const Matrix<T>& h, const nn::HeadWeights<T>& head, Matrix<T>& gh, nn::HeadGradients<T> gw) {
                              return ce(h, head, targets, gh, gw, ws);
                            }, rng);
  }
  // Matches the logits-level loss, with the bias added to every row's logits.
  const Matrix<T> h = test::random_matrix<T>(5, 4, rng);
  const Matrix<T> bias = test::random_matrix<T>(1, 7, rng);
  Matrix<T> gh(5, 4), gw = Matrix<T>::Zero(7, 4);
  const T value = ce(h, view<T>(weight, bias.data()), targets, gh, grads<T>(gw), ws);
  Matrix<T> logits = h * weight.transpose(), g(5, 7);
  logits.rowwise() += bias.row(0);
  loss::SoftmaxCrossEntropyWithLogits<T> plain;
  const T expected = plain(logits, {2, 6, 0, -1, 4}, g);
  REQUIRE(value == Approx(expected).epsilon(1e-5));
  std::vector<ItemId> bad = {3, 8, 1, 0, 5};
  REQUIRE_THROWS_AS(ce(h, view<T>(weight), bad, gh, grads<T>(gw), ws), ShapeError);
}

TEST_CASE("Catalogue softmax over many blocks and bias groups matches the formula, its bias sums whatever the thread count",
          "[loss][softmax_ce]") {
  // 70 rows in blocks of 37: several bias-sum groups per block, a group of ignored rows (16-31)
  // and ignored rows inside other groups; a weight below 1; against dz = (softmax - onehot) * w / count
  // formed in double from the same logits.
  Rng rng(21);
  const Index n = 70, d = 5, items = 3001;  // 37 x 3001 logits: enough for the parallel path
  const Matrix<float> weight = test::random_matrix<float>(items, d, rng, 2.0);
  const Matrix<float> bias = test::random_matrix<float>(1, items, rng);
  const Matrix<float> h = test::random_matrix<float>(n, d, rng, 2.0);
  std::vector<ItemId> targets(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) targets[static_cast<std::size_t>(i)] = static_cast<ItemId>(1 + (i * 7) % items);
  for (Index i = 16; i < 32; ++i) targets[static_cast<std::size_t>(i)] = kPaddingId;
  targets[3] = targets[40] = targets[69] = kPaddingId;
  loss::CatalogueSoftmaxCrossEntropy<float> ce;
  ce.block_rows = 37;
  ce.weight = 0.5f;
  Matrix<double> logits = h.cast<double>() * weight.cast<double>().transpose();
  logits.rowwise() += bias.cast<double>().row(0);
  Matrix<double> dz = Matrix<double>::Zero(n, items);
  double expected = 0.0;
  Index count = 0;
  for (Index i = 0; i < n; ++i) count += targets[static_cast<std::size_t>(i)] != kPaddingId;
  for (Index i = 0; i < n; ++i) {
    const ItemId t = targets[static_cast<std::size_t>(i)];
    if (t == kPaddingId) continue;
    const double m = logits.row(i).maxCoeff();
    const double lse = m + std::log((logits.row(i).array() - m).exp().sum());
    expected += lse - logits(i, t - 1);
    dz.row(i) = (logits.row(i).array() - lse).exp().matrix() * (0.5 / static_cast<double>(count));
    dz(i, t - 1) -= 0.5 / static_cast<double>(count);
  }
  expected /= static_cast<double>(count);
  const Matrix<double> expected_gh = dz * weight.cast<double>();
  const Matrix<double> expected_gw = dz.transpose() * h.cast<double>();
  const Matrix<double> expected_gb = dz.colwise().sum();
  Matrix<float> first_gb;
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    parallel::set_num_threads(threads);
    typename loss::CatalogueSoftmaxCrossEntropy<float>::Workspace ws;
    Matrix<float> gh(n, d), gw = Matrix<float>::Zero(items, d), gb = Matrix<float>::Zero(1, items);
    const float value = ce(h, view<float>(weight, bias.data()), targets, gh, grads<float>(gw, gb.data()), ws);
    CHECK(value == Approx(expected).epsilon(1e-5));
    CHECK((gh.cast<double>() - expected_gh).cwiseAbs().maxCoeff() < 1e-6);
    CHECK((gw.cast<double>() - expected_gw).cwiseAbs().maxCoeff() < 1e-6);
    CHECK((gb.cast<double>() - expected_gb).cwiseAbs().maxCoeff() < 1e-6);
    for (Index i : {16, 25, 31, 3, 40, 69}) CHECK(gh.row(i).isZero());
    // The bias sums are the loss's own: the same bits on two threads (this relies on oneDNN
    // giving the same logits on 1 and 2 threads at K = 5, where no thread splits a dot product;
    // the gradient products' sums are oneDNN's and may differ).
    if (threads == 1) {
      first_gb = gb;
    } else {
      CHECK(gb == first_gb);
    }
  }
  parallel::set_num_threads(2);
}

TEST_CASE("Binary cross-entropy matches SASRec's formula", "[loss][bce]") {
  Matrix<double> weight(3, 2), h(1, 2);
  weight << 1, 0, 0, 1, 1, 1;
  h << 2, -1;
  Matrix<double> gh(1, 2), gw = Matrix<double>::Zero(3, 2);
  loss::SampledBinaryCrossEntropy<double> bce;
  loss::SampledBinaryCrossEntropy<double>::Workspace ws;
  const double value = bce(h, view<double>(weight), {1}, {2, 3}, 2, gh, grads<double>(gw), ws);
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const double expected = -std::log(sig(2)) - std::log(1 - sig(-1)) - std::log(1 - sig(1));
  REQUIRE(value == Approx(expected).epsilon(1e-12));
  // With a bias b: scores 2 + b1, -1 + b2, 1 + b3.
  const std::vector<double> bias = {0.5, -1.0, 2.0};
  const double biased = bce(h, view<double>(weight, bias.data()), {1}, {2, 3}, 2, gh, grads<double>(gw), ws);
  REQUIRE(biased == Approx(-std::log(sig(2.5)) - std::log(1 - sig(-2)) - std::log(1 - sig(3))).epsilon(1e-12));
  REQUIRE_THROWS_AS(bce(h, view<double>(weight), {4}, {2, 3}, 2, gh, grads<double>(gw), ws), ShapeError);
  REQUIRE_THROWS_AS(bce(h, view<double>(weight), {1}, {2, 0}, 2, gh, grads<double>(gw), ws), ShapeError);
  REQUIRE_THROWS_AS(bce(h, view<double>(weight), {1}, {2}, 2, gh, grads<double>(gw), ws), ShapeError);
}

TEMPLATE_TEST_CASE("Binary cross-entropy gradients, tied and untied heads", "[loss][bce][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(2);
  const Matrix<T> weight = test::random_matrix<T>(8, 3, rng);
  const std::vector<ItemId> positives = {1, 4, 4, 8};
  const std::vector<ItemId> negatives = {2, 3, 5, 6, 7, 1, 4, 2};  // 2 per row, repeats included
  loss::SampledBinaryCrossEntropy<T> bce;
  typename loss::SampledBinaryCrossEntropy<T>::Workspace ws;
  for (bool with_bias : {false, true}) {
    CAPTURE(with_bias);
    check_loss_gradients<T>(test::random_matrix<T>(4, 3, rng), weight, with_bias,
                            [&](const Matrix<T>& h, const nn::HeadWeights<T>& head, Matrix<T>& gh, nn::HeadGradients<T> gw) {
                              return bce(h, head, positives, negatives, 2, gh, gw, ws);
                            }, rng);
  }
}

TEMPLATE_TEST_CASE("Sampled softmax with logQ correction: gradients, tied and untied heads", "[loss][sampled_softmax][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(3);
  const Matrix<T> weight = test::random_matrix<T>(9, 4, rng);
  const std::vector<ItemId> positives = {2, 5, 9};
  const std::vector<T> log_q_pos = {T(-2), T(-1.5), T(-3)};
  const std::vector<ItemId> negatives = {1, 5, 7, 3};  // 5 is an accidental hit for row 1
  const std::vector<T> log_q_neg = {T(-2.2), T(-1.5), T(-2.9), T(-1)};
  loss::SampledSoftmaxCrossEntropy<T> loss_fn;
  loss_fn.temperature = T(0.5);
  typename loss::SampledSoftmaxCrossEntropy<T>::Workspace ws;
  for (bool with_bias : {false, true}) {
    CAPTURE(with_bias);
    check_loss_gradients<T>(test::random_matrix<T>(3, 4, rng), weight, with_bias,
                            [&](const Matrix<T>& h, const nn::HeadWeights<T>& head, Matrix<T>& gh, nn::HeadGradients<T> gw) {
                              return loss_fn(h, head, positives, log_q_pos, negatives, log_q_neg, gh, gw, ws);
                            }, rng);
  }
}

TEST_CASE("Sampled softmax: value by hand, accidental hits removed", "[loss][sampled_softmax]") {
  Matrix<double> weight(3, 1), h(1, 1);
  weight << 1, 2, 3;
  h << 1;
  Matrix<double> gh(1, 1), gw = Matrix<double>::Zero(3, 1);
  loss::SampledSoftmaxCrossEntropy<double> loss_fn;
  loss::SampledSoftmaxCrossEntropy<double>::Workspace ws;
  // Positive 2 (score 2, log q -1), negatives 3 (score 3, log q -2) and 2 (hit, removed).
  const double value = loss_fn(h, view<double>(weight), {2}, {-1.0}, {3, 2}, {-2.0, -1.0}, gh, grads<double>(gw), ws);
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
