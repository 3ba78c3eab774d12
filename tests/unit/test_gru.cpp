#include "distillrec/nn/gru.hpp"

#include "support.hpp"

#include <omp.h>

#include <cmath>
#include <vector>

using namespace distillrec;

namespace {

// torch.nn.GRU written out with plain loops in double, one sequence at a time from h = 0.
Matrix<double> reference_gru(const Parameters<double>& params, const nn::GRU<double>& gru, const Matrix<double>& x,
                             const nn::SequenceLayout& layout) {
  const auto w_ih = params.value(gru.weight_ih_id());
  const auto w_hh = params.value(gru.weight_hh_id());
  const auto b_ih = params.value(gru.bias_ih_id());
  const auto b_hh = params.value(gru.bias_hh_id());
  const Index hidden = gru.hidden_size(), input = gru.input_size();
  Matrix<double> y(layout.num_tokens(), hidden);
  for (Index s = 0; s < layout.num_sequences(); ++s) {
    std::vector<double> h(static_cast<std::size_t>(hidden), 0.0), next(h.size());
    for (Index t = layout.begin(s); t < layout.end(s); ++t) {
      for (Index i = 0; i < hidden; ++i) {
        double gate_input[3], gate_hidden[3];
        for (Index g = 0; g < 3; ++g) {
          const Index row = g * hidden + i;
          gate_input[g] = b_ih(0, row);
          for (Index k = 0; k < input; ++k) gate_input[g] += w_ih(row, k) * x(t, k);
          gate_hidden[g] = b_hh(0, row);
          for (Index k = 0; k < hidden; ++k) gate_hidden[g] += w_hh(row, k) * h[static_cast<std::size_t>(k)];
        }
        const double r = 1.0 / (1.0 + std::exp(-(gate_input[0] + gate_hidden[0])));
        const double z = 1.0 / (1.0 + std::exp(-(gate_input[1] + gate_hidden[1])));
        const double n = std::tanh(gate_input[2] + r * gate_hidden[2]);
        next[static_cast<std::size_t>(i)] = (1.0 - z) * n + z * h[static_cast<std::size_t>(i)];
      }
      h = next;
      for (Index i = 0; i < hidden; ++i) y(t, i) = h[static_cast<std::size_t>(i)];
    }
  }
  return y;
}

// A GRU<T> whose parameters are the given double ones rounded to T.
template <typename T>
struct GruCopy {
  Parameters<T> params;
  nn::GRU<T> gru;
  GruCopy(const Parameters<double>& source, Index input, Index hidden) : gru(params, "gru", input, hidden) {
    params.allocate();
    for (Index id = 0; id < params.count(); ++id) params.value(id) = source.value(id).template cast<T>();
  }
};

template <typename T>
Matrix<T> cast(const Matrix<double>& m) {
  return m.cast<T>();
}

template <typename T>
double tolerance_vs_double() {
  return std::is_same<T, float>::value ? 2e-5 : 1e-12;
}

}  // namespace

TEST_CASE("GRU declares PyTorch's parameters and initialises them from U(-1/sqrt(H), 1/sqrt(H))", "[nn][gru]") {
  Parameters<float> params;
  nn::GRU<float> gru(params, "encoder.gru", 5, 16);
  params.allocate();
  Rng rng(1);
  gru.initialize(rng);
  REQUIRE(params.count() == 4);
  const char* names[] = {"encoder.gru.weight_ih", "encoder.gru.weight_hh", "encoder.gru.bias_ih",
                         "encoder.gru.bias_hh"};
  const Index rows[] = {48, 48, 1, 1}, cols[] = {5, 16, 48, 48};
  const Index ids[] = {gru.weight_ih_id(), gru.weight_hh_id(), gru.bias_ih_id(), gru.bias_hh_id()};
  for (Index p = 0; p < 4; ++p) {
    REQUIRE(params.info(p).name == names[p]);
    REQUIRE(params.find(names[p]) == ids[p]);
    REQUIRE(params.info(p).rows == rows[p]);
    REQUIRE(params.info(p).cols == cols[p]);
    const auto v = params.value(p);
    REQUIRE(v.cwiseAbs().maxCoeff() <= 0.25f);  // 1 / sqrt(16)
    REQUIRE(v.cwiseAbs().maxCoeff() > 0.2f);    // spread over the whole interval
    REQUIRE(std::abs(v.mean()) < 0.1f);
  }
  REQUIRE(gru.input_size() == 5);
  REQUIRE(gru.hidden_size() == 16);
}

TEMPLATE_TEST_CASE("GRU forward equals a plain-loop reference GRU on packed sequences", "[nn][gru]", float, double) {
  using T = TestType;
  Rng rng(2);
  for (Index hidden : {3, 8, 13}) {
    const Index input = 6;
    Parameters<double> reference_params;
    nn::GRU<double> reference(reference_params, "gru", input, hidden);
    reference_params.allocate();
    reference.initialize(rng);
    GruCopy<T> layer(reference_params, input, hidden);
    // Unsorted lengths with ties and single-token sequences.
    const nn::SequenceLayout layout({5, 1, 3, 7, 1, 3, 2});
    const Matrix<double> x = test::random_matrix<double>(layout.num_tokens(), input, rng, 1.5);
    const Matrix<double> expected = reference_gru(reference_params, reference, x, layout);
    Matrix<T> y(layout.num_tokens(), hidden);
    typename nn::GRU<T>::Workspace ws;
    layer.gru.forward(cast<T>(x), layout, y, ws);
    REQUIRE((y.template cast<double>() - expected).cwiseAbs().maxCoeff() < tolerance_vs_double<T>());
    // A workspace reused for a smaller batch gives the same answer as a fresh one.
    const nn::SequenceLayout small({2, 4});
    Matrix<T> y_small(6, hidden);
    layer.gru.forward(cast<T>(x).topRows(6), small, y_small, ws);
    const Matrix<double> expected_small = reference_gru(reference_params, reference, x.topRows(6), small);
    REQUIRE((y_small.template cast<double>() - expected_small).cwiseAbs().maxCoeff() < tolerance_vs_double<T>());
  }
}

TEMPLATE_TEST_CASE("GRU forward_last equals the last rows of forward and step() chained equals forward",
                   "[nn][gru]", float, double) {
  using T = TestType;
  Rng rng(3);
  const Index input = 7, hidden = 9;
  Parameters<T> params;
  nn::GRU<T> gru(params, "gru", input, hidden);
  params.allocate();
  gru.initialize(rng);
  const nn::SequenceLayout layout({4, 1, 6, 2, 6, 3});
  const Index num_seq = layout.num_sequences();
  const Matrix<T> x = test::random_matrix<T>(layout.num_tokens(), input, rng);
  Matrix<T> y(layout.num_tokens(), hidden);
  typename nn::GRU<T>::Workspace ws;
  gru.forward(x, layout, y, ws);

  Matrix<T> last(num_seq, hidden);
  typename nn::GRU<T>::Workspace inference_ws;
  gru.forward_last(x, layout, last, inference_ws);
  for (Index s = 0; s < num_seq; ++s) {
    REQUIRE((last.row(s) - y.row(layout.last(s))).cwiseAbs().maxCoeff() < 1e-6);
  }

  // All sequences advanced together, in their original order, one token per call; the
  // sequences that have ended drop out of the batch. In place (h_next = h) and not.
  for (bool in_place : {false, true}) {
    Matrix<T> states = Matrix<T>::Zero(num_seq, hidden);
    for (Index t = 0; t < layout.max_length(); ++t) {
      std::vector<Index> active;
      for (Index s = 0; s < num_seq; ++s)
        if (layout.length(s) > t) active.push_back(s);
      const auto batch = static_cast<Index>(active.size());
      Matrix<T> x_step(batch, input), h(batch, hidden), h_next(batch, hidden);
      for (Index j = 0; j < batch; ++j) {
        x_step.row(j) = x.row(layout.begin(active[j]) + t);
        h.row(j) = states.row(active[j]);
      }
      if (in_place) {
        gru.step(x_step, h, h, inference_ws);
        h_next = h;
      } else {
        gru.step(x_step, h, h_next, inference_ws);
      }
      for (Index j = 0; j < batch; ++j) {
        states.row(active[j]) = h_next.row(j);
        REQUIRE((h_next.row(j) - y.row(layout.begin(active[j]) + t)).cwiseAbs().maxCoeff() < 1e-6);
      }
    }
  }
}

template <typename T>
void check_gru_gradients(Index hidden) {
  Rng rng(4);
  const Index input = 4;
  Parameters<T> params;
  nn::GRU<T> gru(params, "gru", input, hidden);
  params.allocate();
  gru.initialize(rng);
  const nn::SequenceLayout layout({4, 1, 3, 4});
  const Index n = layout.num_tokens();
  typename nn::GRU<T>::Workspace ws;
  // dy is the random weight R of the loss sum(y * R): nonzero at every position.
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(n, input, rng), n, hidden,
      [&](const Matrix<T>& x, Matrix<T>& y) { gru.forward(x, layout, y, ws); },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) { gru.backward(x, layout, dy, dx, ws); }, rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
  // Small enough for check_gradients to test every entry of all four parameters.
  REQUIRE(params.buffer_size() < 800);
  for (Index id = 0; id < params.count(); ++id) REQUIRE(params.grad(id).cwiseAbs().maxCoeff() > 0);
}

TEMPLATE_TEST_CASE("GRU gradients match finite differences", "[nn][gru][gradcheck]", float, double) {
  SECTION("hidden size below one SIMD batch") { check_gru_gradients<TestType>(3); }
  SECTION("hidden size of a SIMD batch and a tail") { check_gru_gradients<TestType>(9); }
}

TEST_CASE("GRU backward accumulates into dx and into the parameter gradients", "[nn][gru]") {
  Rng rng(5);
  Parameters<double> params;
  nn::GRU<double> gru(params, "gru", 5, 6);
  params.allocate();
  gru.initialize(rng);
  const nn::SequenceLayout layout({3, 5, 1});
  const Index n = layout.num_tokens();
  const Matrix<double> x = test::random_matrix<double>(n, 5, rng);
  const Matrix<double> dy = test::random_matrix<double>(n, 6, rng);
  Matrix<double> y(n, 6);
  nn::GRU<double>::Workspace ws;
  gru.forward(x, layout, y, ws);

  Matrix<double> dx = Matrix<double>::Constant(n, 5, std::nan(""));  // overwritten: old contents ignored
  params.zero_grad();
  gru.backward(x, layout, dy, dx, ws);
  const Matrix<double> grads_once = params.flat_grads();
  REQUIRE(dx.allFinite());

  const Matrix<double> existing = test::random_matrix<double>(n, 5, rng);
  Matrix<double> accumulated = existing;
  gru.forward(x, layout, y, ws);
  gru.backward(x, layout, dy, accumulated, ws, nn::InputGrad::kAccumulate);
  REQUIRE((accumulated - (existing + dx)).cwiseAbs().maxCoeff() < 1e-12);
  const Matrix<double> grads_twice = params.flat_grads();
  REQUIRE((grads_twice - 2.0 * grads_once).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("GRU results do not depend on the number of threads", "[nn][gru]") {
  Rng rng(6);
  const Index input = 48, hidden = 128;  // large enough for the parallel row loops
  Parameters<float> params;
  nn::GRU<float> gru(params, "gru", input, hidden);
  params.allocate();
  gru.initialize(rng);
  std::vector<Index> lengths;
  for (Index s = 0; s < 160; ++s) lengths.push_back(1 + static_cast<Index>(rng.uniform_int(30)));
  const nn::SequenceLayout layout(lengths);
  const Index n = layout.num_tokens();
  const Matrix<float> x = test::random_matrix<float>(n, input, rng);
  const Matrix<float> dy = test::random_matrix<float>(n, hidden, rng);

  struct Result {
    Matrix<float> y, last, dx, grads;
  };
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Result result{Matrix<float>(n, hidden), Matrix<float>(layout.num_sequences(), hidden), Matrix<float>(n, input),
                  Matrix<float>()};
    nn::GRU<float>::Workspace ws;
    params.zero_grad();
    gru.forward(x, layout, result.y, ws);
    gru.backward(x, layout, dy, result.dx, ws);
    result.grads = params.flat_grads();
    gru.forward_last(x, layout, result.last, ws);
    omp_set_num_threads(saved);
    return result;
  };
  const Result one = run(1), two = run(2);
  REQUIRE(one.y == two.y);
  REQUIRE(one.last == two.last);
  REQUIRE(one.dx == two.dx);
  REQUIRE(one.grads == two.grads);
}

TEST_CASE("GRU rejects mismatched shapes and non-positive sizes", "[nn][gru]") {
  {
    Parameters<float> params;
    REQUIRE_THROWS_AS(nn::GRU<float>(params, "gru", 0, 4), ConfigError);
    REQUIRE_THROWS_AS(nn::GRU<float>(params, "gru", 4, -1), ConfigError);
  }
  Rng rng(7);
  Parameters<float> params;
  nn::GRU<float> gru(params, "gru", 4, 6);
  params.allocate();
  gru.initialize(rng);
  const nn::SequenceLayout layout({2, 3});
  const Matrix<float> x = test::random_matrix<float>(5, 4, rng);
  Matrix<float> y(5, 6), dx(5, 4), last(2, 6);
  nn::GRU<float>::Workspace ws;
  REQUIRE_THROWS_AS(gru.forward(Matrix<float>(5, 3), layout, y, ws), ShapeError);      // input width
  REQUIRE_THROWS_AS(gru.forward(Matrix<float>(4, 4), layout, y, ws), ShapeError);      // token count
  Matrix<float> narrow(5, 5);
  REQUIRE_THROWS_AS(gru.forward(x, layout, narrow, ws), ShapeError);                   // output width
  Matrix<float> three(3, 6);
  REQUIRE_THROWS_AS(gru.forward_last(x, layout, three, ws), ShapeError);               // one row per sequence
  Matrix<float> h(2, 6), h_next(2, 6);
  REQUIRE_THROWS_AS(gru.step(Matrix<float>(3, 4), h, h_next, ws), ShapeError);         // batch sizes differ
  REQUIRE_THROWS_AS(gru.step(Matrix<float>(2, 4), Matrix<float>(2, 5), h_next, ws), ShapeError);
  // backward needs a forward over the same layout in its workspace.
  nn::GRU<float>::Workspace fresh;
  REQUIRE_THROWS_AS(gru.backward(x, layout, y, dx, fresh), ShapeError);
  gru.forward(x, layout, y, ws);
  REQUIRE_THROWS_AS(gru.backward(x, nn::SequenceLayout({3, 2}), y, dx, ws), ShapeError);
  REQUIRE_THROWS_AS(gru.backward(x, layout, Matrix<float>(5, 4), dx, ws), ShapeError);  // dy width
  gru.forward_last(x, layout, last, ws);  // inference keeps nothing for backward
  REQUIRE_THROWS_AS(gru.backward(x, layout, y, dx, ws), ShapeError);
  try {
    gru.forward(Matrix<float>(5, 3), layout, y, ws);
  } catch (const ShapeError& e) {
    REQUIRE(std::string(e.what()).find("GRU input: expected 5x4, got 5x3") != std::string::npos);
  }
  // An empty batch is not an error.
  const nn::SequenceLayout empty;
  Matrix<float> none_x(0, 4), none_y(0, 6), none_last(0, 6);
  gru.forward_last(none_x, empty, none_last, ws);
  gru.forward(none_x, empty, none_y, ws);
  Matrix<float> none_dx(0, 4);
  gru.backward(none_x, empty, none_y, none_dx, ws);
}
