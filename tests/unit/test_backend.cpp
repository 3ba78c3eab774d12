#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/kernels.hpp"

#include "support.hpp"

#include <limits>

using namespace distillrec;
using backend::Trans;

namespace {

template <typename T>
Matrix<T> op(const Matrix<T>& m, Trans t) {
  return t == Trans::kYes ? Matrix<T>(m.transpose()) : m;
}

}  // namespace

TEST_CASE("gemm (Eigen) matches a naive triple loop for all transposes", "[backend][gemm]") {
  Rng rng(1);
  for (auto ta : {Trans::kNo, Trans::kYes}) {
    for (auto tb : {Trans::kNo, Trans::kYes}) {
      const Index m = 7, k = 5, n = 9;
      Matrix<double> a = test::random_matrix<double>(ta == Trans::kNo ? m : k, ta == Trans::kNo ? k : m, rng);
      Matrix<double> b = test::random_matrix<double>(tb == Trans::kNo ? k : n, tb == Trans::kNo ? n : k, rng);
      Matrix<double> c = test::random_matrix<double>(m, n, rng);
      Matrix<double> expected = 0.5 * c;
      const Matrix<double> oa = op(a, ta), ob = op(b, tb);
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j)
          for (Index p = 0; p < k; ++p) expected(i, j) += 2.0 * oa(i, p) * ob(p, j);
      backend::gemm(ta, tb, 2.0, a, b, 0.5, c);
      REQUIRE((c - expected).cwiseAbs().maxCoeff() < 1e-12);
    }
  }
}

TEST_CASE("gemm checks shapes", "[backend][gemm]") {
  Matrix<float> a(3, 4), b(5, 2), c(3, 2);
  REQUIRE_THROWS_AS(backend::gemm(Trans::kNo, Trans::kNo, 1.0f, a, b, 0.0f, c), ShapeError);
  REQUIRE_THROWS_AS(backend::gemm_eigen<float>(Trans::kNo, Trans::kNo, 1.0f, a, b, 0.0f, c), ShapeError);
}

TEST_CASE("gemm with beta = 0 ignores NaN in C", "[backend][gemm]") {
  Rng rng(2);
  Matrix<float> a = test::random_matrix<float>(4, 3, rng), b = test::random_matrix<float>(3, 6, rng);
  Matrix<float> c = Matrix<float>::Constant(4, 6, std::numeric_limits<float>::quiet_NaN());
  backend::gemm(Trans::kNo, Trans::kNo, 1.0f, a, b, 0.0f, c);
  REQUIRE(c.allFinite());
  REQUIRE((c - a * b).cwiseAbs().maxCoeff() < 1e-5f);
}

#ifdef DISTILLREC_WITH_ONEDNN
TEST_CASE("gemm: oneDNN equals the Eigen reference, strided blocks included", "[backend][gemm]") {
  REQUIRE(backend::default_gemm_backend() == backend::GemmBackend::kOneDnn);
  Rng rng(3);
  for (auto ta : {Trans::kNo, Trans::kYes}) {
    for (auto tb : {Trans::kNo, Trans::kYes}) {
      for (Index m : {1, 17, 128}) {
        const Index k = 50, n = 33;
        Matrix<float> a = test::random_matrix<float>(ta == Trans::kNo ? m : k, ta == Trans::kNo ? k : m, rng);
        // B as a column block of a wider matrix: exercises leading dimensions != cols.
        Matrix<float> wide = test::random_matrix<float>(tb == Trans::kNo ? k : n, 2 * (tb == Trans::kNo ? n : k), rng);
        auto b = wide.leftCols(tb == Trans::kNo ? n : k);
        Matrix<float> c0 = test::random_matrix<float>(m, n, rng);
        Matrix<float> c_eigen = c0, c_dnnl = c0;
        backend::gemm_eigen<float>(ta, tb, 0.7f, a, b, 0.3f, c_eigen);
        backend::gemm_onednn(ta, tb, 0.7f, a, b, 0.3f, c_dnnl);
        const float scale = 1.0f + c_eigen.cwiseAbs().maxCoeff();
        REQUIRE((c_eigen - c_dnnl).cwiseAbs().maxCoeff() / scale < 1e-5f);
      }
    }
  }
}
#endif

TEMPLATE_TEST_CASE("xsimd kernels match their scalar references", "[backend][kernels]", float, double) {
  using T = TestType;
  Rng rng(11);
  const T tol = std::is_same<T, float>::value ? T(2e-6) : T(1e-13);
  for (Index n : {1, 3, 16, 37, 50, 128}) {
    Matrix<T> x = test::random_matrix<T>(1, n, rng, 2.0);
    Matrix<T> dy = test::random_matrix<T>(1, n, rng);
    Matrix<T> gamma = test::random_matrix<T>(1, n, rng), beta = test::random_matrix<T>(1, n, rng);
    Matrix<T> a = x, b = x;

    backend::kernels::softmax(a.data(), n, T(0.7));
    backend::kernels::reference::softmax(b.data(), n, T(0.7));
    REQUIRE((a - b).cwiseAbs().maxCoeff() < tol);
    REQUIRE(std::abs(a.sum() - T(1)) < 10 * tol);

    Matrix<T> dxa(1, n), dxb(1, n);
    backend::kernels::softmax_backward(a.data(), dy.data(), dxa.data(), n, T(0.7));
    backend::kernels::reference::softmax_backward(b.data(), dy.data(), dxb.data(), n, T(0.7));
    REQUIRE((dxa - dxb).cwiseAbs().maxCoeff() < 10 * tol);

    Matrix<T> ya(1, n), yb(1, n), ha(1, n), hb(1, n);
    const T ra = backend::kernels::layer_norm_forward(x.data(), gamma.data(), beta.data(), ya.data(), ha.data(), n, T(1e-8));
    const T rb = backend::kernels::reference::layer_norm_forward(x.data(), gamma.data(), beta.data(), yb.data(), hb.data(), n, T(1e-8));
    if (n > 1) {
      REQUIRE(std::abs(ra - rb) / rb < 10 * tol);
      REQUIRE((ya - yb).cwiseAbs().maxCoeff() < 10 * tol);
      backend::kernels::norm_backward(ha.data(), gamma.data(), dy.data(), ra, dxa.data(), n, true);
      backend::kernels::reference::norm_backward(hb.data(), gamma.data(), dy.data(), rb, dxb.data(), n, true);
      REQUIRE((dxa - dxb).cwiseAbs().maxCoeff() < 100 * tol);
    }

    backend::kernels::relu(x.data(), ya.data(), n);
    backend::kernels::reference::relu(x.data(), yb.data(), n);
    REQUIRE(ya == yb);
    backend::kernels::relu_backward(ya.data(), dy.data(), dxa.data(), n);
    backend::kernels::reference::relu_backward(yb.data(), dy.data(), dxb.data(), n);
    REQUIRE(dxa == dxb);

    backend::kernels::gelu(x.data(), ya.data(), n);
    backend::kernels::reference::gelu(x.data(), yb.data(), n);
    REQUIRE((ya - yb).cwiseAbs().maxCoeff() < 10 * tol);
    backend::kernels::gelu_backward(x.data(), dy.data(), dxa.data(), n);
    backend::kernels::reference::gelu_backward(x.data(), dy.data(), dxb.data(), n);
    REQUIRE((dxa - dxb).cwiseAbs().maxCoeff() < 10 * tol);

    backend::kernels::multiply(x.data(), dy.data(), ya.data(), n);
    backend::kernels::reference::multiply(x.data(), dy.data(), yb.data(), n);
    REQUIRE(ya == yb);

    const T sa = backend::kernels::rms_norm_forward(x.data(), gamma.data(), ya.data(), ha.data(), n, T(1e-6));
    const T sb = backend::kernels::reference::rms_norm_forward(x.data(), gamma.data(), yb.data(), hb.data(), n, T(1e-6));
    REQUIRE(std::abs(sa - sb) / sb < 10 * tol);
    REQUIRE((ya - yb).cwiseAbs().maxCoeff() < 10 * tol);
    backend::kernels::norm_backward(ha.data(), gamma.data(), dy.data(), sa, dxa.data(), n, false);
    backend::kernels::reference::norm_backward(hb.data(), gamma.data(), dy.data(), sb, dxb.data(), n, false);
    REQUIRE((dxa - dxb).cwiseAbs().maxCoeff() < 100 * tol);

    backend::kernels::swiglu(x.data(), gamma.data(), ya.data(), n);
    backend::kernels::reference::swiglu(x.data(), gamma.data(), yb.data(), n);
    REQUIRE((ya - yb).cwiseAbs().maxCoeff() < 10 * tol);
    Matrix<T> dba(1, n), dbb(1, n);
    backend::kernels::swiglu_backward(x.data(), gamma.data(), dy.data(), dxa.data(), dba.data(), n);
    backend::kernels::reference::swiglu_backward(x.data(), gamma.data(), dy.data(), dxb.data(), dbb.data(), n);
    REQUIRE((dxa - dxb).cwiseAbs().maxCoeff() < 10 * tol);
    REQUIRE((dba - dbb).cwiseAbs().maxCoeff() < 10 * tol);

    if (n % 2 == 0) {  // one head of size n: cos/sin tables of n/2 angles
      const Index half = n / 2;
      Matrix<T> c(1, half), s(1, half);
      for (Index j = 0; j < half; ++j) {
        c(0, j) = std::cos(T(0.3) * T(j + 1));
        s(0, j) = std::sin(T(0.3) * T(j + 1));
      }
      for (T sign : {T(1), T(-1)}) {
        Matrix<T> ra_ = x, rb_ = x;
        backend::kernels::rope_rotate(ra_.data(), c.data(), s.data(), half, sign);
        backend::kernels::reference::rope_rotate(rb_.data(), c.data(), s.data(), half, sign);
        REQUIRE((ra_ - rb_).cwiseAbs().maxCoeff() < 10 * tol);
      }
    }
  }
}

TEMPLATE_TEST_CASE("the Adam kernel matches its scalar reference in every weight-decay form", "[backend][kernels][adam]",
                   float, double) {
  using T = TestType;
  Rng rng(5);
  const T tol = std::is_same<T, float>::value ? T(1e-6) : T(1e-14);
  for (int form = 0; form < 3; ++form) {  // no decay, L2 (Adam), decoupled (AdamW)
    backend::kernels::AdamCoefficients<T> c{T(0.9), T(0.98), T(1e-3 / (1 - 0.9 * 0.9)), T(1 / std::sqrt(1 - 0.98 * 0.98)),
                                            T(1e-8), form == 0 ? T(0) : T(0.01), form == 2, T(1 - 1e-3 * 0.01)};
    for (Index n : {1, 7, 8, 17, 64, 101}) {
      Matrix<T> value = test::random_matrix<T>(1, n, rng), grad = test::random_matrix<T>(1, n, rng);
      Matrix<T> m = test::random_matrix<T>(1, n, rng, 0.1);
      Matrix<T> v = test::random_matrix<T>(1, n, rng, 0.1).cwiseAbs();
      v(0, 0) = T(0);  // a fresh moment: the denominator is eps alone
      Matrix<T> value_b = value, m_b = m, v_b = v;
      backend::kernels::adam_update(value.data(), grad.data(), m.data(), v.data(), n, c);
      backend::kernels::reference::adam_update(value_b.data(), grad.data(), m_b.data(), v_b.data(), n, c);
      REQUIRE((m - m_b).cwiseAbs().maxCoeff() < tol);
      REQUIRE((v - v_b).cwiseAbs().maxCoeff() < tol);
      REQUIRE((value - value_b).cwiseAbs().maxCoeff() < 10 * tol);
    }
  }
}

TEST_CASE("softmax is stable for large inputs", "[backend][kernels]") {
  std::vector<float> x = {1000.0f, 1001.0f, 999.0f};
  backend::kernels::softmax(x.data(), 3);
  REQUIRE(std::isfinite(x[0]));
  REQUIRE(x[1] > x[0]);
  REQUIRE(std::abs(x[0] + x[1] + x[2] - 1.0f) < 1e-6f);
}

TEMPLATE_TEST_CASE("softmax of a row that is all -inf gives zeros, never NaN", "[backend][kernels]", float, double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity();
  for (Index n : {1, 3, 17}) {
    std::vector<T> a(static_cast<std::size_t>(n), -inf), b = a;
    const T lse_a = backend::kernels::softmax(a.data(), n, T(0.5));
    const T lse_b = backend::kernels::reference::softmax(b.data(), n, T(0.5));
    REQUIRE(lse_a == -inf);
    REQUIRE(lse_b == -inf);
    for (Index i = 0; i < n; ++i) {
      REQUIRE(a[static_cast<std::size_t>(i)] == T(0));
      REQUIRE(b[static_cast<std::size_t>(i)] == T(0));
    }
  }
  // One finite entry among -inf ones takes all the mass.
  std::vector<T> c = {-inf, T(2), -inf};
  backend::kernels::softmax(c.data(), 3);
  REQUIRE(c[1] == T(1));
  REQUIRE(c[0] == T(0));
}

TEMPLATE_TEST_CASE("exp_shifted matches its reference, with and without a bias, and scale scales", "[backend][kernels]", float, double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity();
  const T tol = std::is_same<T, float>::value ? T(2e-6) : T(1e-13);
  Rng rng(17);
  for (Index n : {1, 3, 8, 17, 50, 131}) {
    CAPTURE(n);
    const Matrix<T> x = test::random_matrix<T>(1, n, rng, 4.0);
    const Matrix<T> bias = test::random_matrix<T>(1, n, rng, 2.0);
    for (bool with_bias : {false, true}) {
      CAPTURE(with_bias);
      Matrix<T> a = x, b = x;
      const T* bp = with_bias ? bias.data() : nullptr;
      const auto pa = backend::kernels::exp_shifted<T>(a.data(), bp, n);
      const auto pb = backend::kernels::reference::exp_shifted<T>(b.data(), bp, n);
      const Matrix<T> shifted = with_bias ? Matrix<T>(x + bias) : x;
      REQUIRE(pa.max == shifted.maxCoeff());
      REQUIRE(pb.max == pa.max);
      REQUIRE(std::abs(pa.sum - pb.sum) <= 10 * tol * pb.sum);
      REQUIRE((a - b).cwiseAbs().maxCoeff() < tol);
      // sum of the stored exponentials, and softmax = x / sum
      REQUIRE(std::abs(a.sum() - pa.sum) <= 10 * tol * pa.sum);
      Matrix<T> soft = shifted;
      backend::kernels::reference::softmax(soft.data(), n);
      Matrix<T> scaled = a, scaled_ref = a;
      backend::kernels::scale<T>(scaled.data(), T(1) / pa.sum, n);
      backend::kernels::reference::scale<T>(scaled_ref.data(), T(1) / pa.sum, n);
      REQUIRE(scaled == scaled_ref);
      REQUIRE((scaled - soft).cwiseAbs().maxCoeff() < 10 * tol);
    }
    // all -inf (also with a finite bias): zeros and {-inf, 0}
    for (bool with_bias : {false, true}) {
      std::vector<T> masked(static_cast<std::size_t>(n), -inf);
      const auto pm = backend::kernels::exp_shifted<T>(masked.data(), with_bias ? bias.data() : nullptr, n);
      REQUIRE(pm.max == -inf);
      REQUIRE(pm.sum == T(0));
      for (T v : masked) REQUIRE(v == T(0));
    }
    // -inf entries among finite ones get exactly zero
    std::vector<T> some(static_cast<std::size_t>(n), T(1));
    some[0] = -inf;
    const auto ps = backend::kernels::exp_shifted<T>(some.data(), nullptr, n);
    REQUIRE(some[0] == T(0));
    REQUIRE(ps.sum == Approx(static_cast<double>(n - 1)));
  }
}

TEST_CASE("dropout mask keeps 1-p of the entries, scaled by 1/(1-p)", "[backend][kernels]") {
  Rng rng(5);
  std::vector<float> mask(100001);
  backend::kernels::dropout_mask(mask.data(), static_cast<Index>(mask.size()), 0.3, rng);
  double kept = 0, mean = 0;
  for (float m : mask) {
    REQUIRE((m == 0.0f || std::abs(m - 1.0f / 0.7f) < 1e-6f));
    kept += m != 0.0f;
    mean += m;
  }
  CHECK(std::abs(kept / mask.size() - 0.7) < 0.01);
  CHECK(std::abs(mean / mask.size() - 1.0) < 0.015);
  backend::kernels::dropout_mask(mask.data(), 10, 0.0, rng);
  for (int i = 0; i < 10; ++i) REQUIRE(mask[i] == 1.0f);
}

// Included here as well so this test does not depend on the umbrella listing the GRU kernels.
#include "distillrec/backend/kernels/gru_gates.hpp"

TEMPLATE_TEST_CASE("sigmoid, tanh and the fused GRU gate kernels match their scalar references",
                   "[backend][kernels][gru]", float, double) {
  using T = TestType;
  namespace k = backend::kernels;
  Rng rng(12);
  const T tol = std::is_same<T, float>::value ? T(2e-6) : T(1e-13);
  for (Index n : {1, 3, 8, 16, 37, 50, 128}) {
    const Matrix<T> x = test::random_matrix<T>(1, n, rng, 4.0);
    Matrix<T> ya(1, n), yb(1, n);
    k::sigmoid(x.data(), ya.data(), n);
    k::reference::sigmoid(x.data(), yb.data(), n);
    REQUIRE((ya - yb).cwiseAbs().maxCoeff() < tol);
    for (Index i = 0; i < n; ++i) REQUIRE(std::abs(yb(0, i) - T(1) / (T(1) + std::exp(-x(0, i)))) < tol);
    k::tanh(x.data(), ya.data(), n);
    k::reference::tanh(x.data(), yb.data(), n);
    REQUIRE((ya - yb).cwiseAbs().maxCoeff() < tol);
  }

  // Extreme inputs: no overflow to Inf or NaN, exact saturation, in SIMD lanes and in tails.
  const std::vector<T> extreme = {T(100),  T(-100), T(1e30), T(-1e30), T(0),     T(-0.0), T(88.8),
                                  T(-88.8), T(1e-8), T(-1e-8), T(710),  T(-710),  T(20),   T(-20),
                                  std::numeric_limits<T>::max(), std::numeric_limits<T>::lowest(), T(1e-30)};
  const auto m = static_cast<Index>(extreme.size());
  std::vector<T> sa(extreme.size()), sb(extreme.size()), ta(extreme.size()), tb(extreme.size());
  k::sigmoid(extreme.data(), sa.data(), m);
  k::reference::sigmoid(extreme.data(), sb.data(), m);
  k::tanh(extreme.data(), ta.data(), m);
  k::reference::tanh(extreme.data(), tb.data(), m);
  for (Index i = 0; i < m; ++i) {
    const T v = extreme[static_cast<std::size_t>(i)];
    for (T s : {sa[static_cast<std::size_t>(i)], sb[static_cast<std::size_t>(i)]}) {
      REQUIRE(std::isfinite(s));
      REQUIRE(s >= T(0));
      REQUIRE(s <= T(1));
      if (v >= T(100)) REQUIRE(s == T(1));
      if (v <= T(-100)) REQUIRE(s < T(1e-30));
    }
    for (T t : {ta[static_cast<std::size_t>(i)], tb[static_cast<std::size_t>(i)]}) {
      REQUIRE(std::isfinite(t));
      REQUIRE(std::abs(t) <= T(1));
      if (std::abs(v) >= T(20)) REQUIRE(t == (v > 0 ? T(1) : T(-1)));
    }
    REQUIRE(std::abs(sa[static_cast<std::size_t>(i)] - sb[static_cast<std::size_t>(i)]) < tol);
    REQUIRE(std::abs(ta[static_cast<std::size_t>(i)] - tb[static_cast<std::size_t>(i)]) < tol);
  }
  REQUIRE(sa[4] == T(0.5));
  REQUIRE(std::abs(sa[8] - T(0.5) - T(0.25e-8)) < tol);

  // GRU gates: forward with and without saved gates, in place, and backward.
  for (Index hidden : {1, 3, 8, 13, 64}) {
    const Matrix<T> gi = test::random_matrix<T>(1, 3 * hidden, rng, 2.0), gh = test::random_matrix<T>(1, 3 * hidden, rng, 2.0);
    const Matrix<T> bih = test::random_matrix<T>(1, 3 * hidden, rng, 0.5), bhh = test::random_matrix<T>(1, 3 * hidden, rng, 0.5);
    const Matrix<T> h = test::random_matrix<T>(1, hidden, rng);
    Matrix<T> ha(1, hidden), hb(1, hidden), saved_a(1, 4 * hidden), saved_b(1, 4 * hidden);
    k::gru_gates_forward(gi.data(), gh.data(), bih.data(), bhh.data(), h.data(), ha.data(), saved_a.data(), hidden);
    k::reference::gru_gates_forward(gi.data(), gh.data(), bih.data(), bhh.data(), h.data(), hb.data(), saved_b.data(), hidden);
    REQUIRE((ha - hb).cwiseAbs().maxCoeff() < 10 * tol);
    REQUIRE((saved_a - saved_b).cwiseAbs().maxCoeff() < 10 * tol);
    for (Index i = 0; i < hidden; ++i) {  // the definition, written out
      const T r = T(1) / (T(1) + std::exp(-(gi(0, i) + bih(0, i) + gh(0, i) + bhh(0, i))));
      const Index iz = hidden + i, in = 2 * hidden + i;
      const T z = T(1) / (T(1) + std::exp(-(gi(0, iz) + bih(0, iz) + gh(0, iz) + bhh(0, iz))));
      const T nn = std::tanh(gi(0, in) + bih(0, in) + r * (gh(0, in) + bhh(0, in)));
      REQUIRE(std::abs(hb(0, i) - ((T(1) - z) * nn + z * h(0, i))) < 10 * tol);
    }
    Matrix<T> in_place = h;
    k::gru_gates_forward(gi.data(), gh.data(), bih.data(), bhh.data(), in_place.data(), in_place.data(),
                         static_cast<T*>(nullptr), hidden);
    REQUIRE(in_place == ha);

    const Matrix<T> dy = test::random_matrix<T>(1, hidden, rng), carried = test::random_matrix<T>(1, hidden, rng);
    Matrix<T> dha = carried, dhb = carried, dgi_a(1, 3 * hidden), dgi_b(1, 3 * hidden), dgh_a(1, 3 * hidden),
              dgh_b(1, 3 * hidden);
    k::gru_gates_backward(saved_a.data(), h.data(), dy.data(), dha.data(), dgi_a.data(), dgh_a.data(), hidden);
    k::reference::gru_gates_backward(saved_b.data(), h.data(), dy.data(), dhb.data(), dgi_b.data(), dgh_b.data(), hidden);
    REQUIRE((dha - dhb).cwiseAbs().maxCoeff() < 10 * tol);
    REQUIRE((dgi_a - dgi_b).cwiseAbs().maxCoeff() < 10 * tol);
    REQUIRE((dgh_a - dgh_b).cwiseAbs().maxCoeff() < 10 * tol);
    for (Index i = 0; i < hidden; ++i) {
      REQUIRE(dhb(0, i) == (dy(0, i) + carried(0, i)) * saved_b(0, hidden + i));  // dL/dh' * z
      REQUIRE(dgh_b(0, 2 * hidden + i) == dgi_b(0, 2 * hidden + i) * saved_b(0, i));  // da_n * r
    }
  }
}
