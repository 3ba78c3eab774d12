#include "distillrec/nn/attention.hpp"

#include "support.hpp"

#include <limits>

using namespace distillrec;

namespace {

// Padded reference: left-padded windows of length L with garbage in the padding rows, a
// key-padding mask and a causal mask, softmax over the allowed keys only.
Matrix<double> padded_reference(const Parameters<double>& params, const Matrix<double>& packed_x,
                                const nn::SequenceLayout& layout, Index heads, Index window, Rng& rng) {
  const Index d = packed_x.cols(), dh = d / heads;
  auto linear = [&](const std::string& name, const Matrix<double>& x) {
    Matrix<double> y = x * params.value(params.find(name + ".weight")).transpose();
    y.rowwise() += params.value(params.find(name + ".bias")).row(0);
    return y;
  };
  Matrix<double> out(packed_x.rows(), d);
  for (Index s = 0; s < layout.num_sequences(); ++s) {
    const Index len = layout.length(s), pad = window - len;
    Matrix<double> xp = test::random_matrix<double>(window, d, rng, 10.0);  // garbage padding
    xp.bottomRows(len) = packed_x.middleRows(layout.begin(s), len);
    const Matrix<double> q = linear("attn.query", xp), k = linear("attn.key", xp), v = linear("attn.value", xp);
    for (Index h = 0; h < heads; ++h) {
      for (Index i = pad; i < window; ++i) {
        std::vector<double> scores(static_cast<std::size_t>(window));
        double max_score = -std::numeric_limits<double>::infinity();
        for (Index j = 0; j < window; ++j) {
          const bool allowed = j >= pad && j <= i;
          scores[j] = allowed ? q.row(i).segment(h * dh, dh).dot(k.row(j).segment(h * dh, dh)) / std::sqrt(double(dh))
                              : -std::numeric_limits<double>::infinity();
          max_score = std::max(max_score, scores[j]);
        }
        double sum = 0;
        for (auto& sc : scores) sum += (sc = std::exp(sc - max_score));
        RowVector<double> ctx = RowVector<double>::Zero(dh);
        for (Index j = 0; j < window; ++j) ctx += scores[j] / sum * v.row(j).segment(h * dh, dh);
        out.row(layout.begin(s) + i - pad).segment(h * dh, dh) = ctx;
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("Packed causal attention equals padded attention with padding and causal masks", "[nn][attention]") {
  Rng rng(1);
  for (Index heads : {1, 2}) {
    Parameters<double> params;
    nn::MultiHeadAttention<double> attention(params, "attn", 8, heads, 0.0, false);
    params.allocate();
    attention.initialize(rng);
    for (const char* name : {"attn.query.bias", "attn.key.bias", "attn.value.bias"}) {
      params.value(params.find(name)) = test::random_matrix<double>(1, 8, rng, 0.1);
    }
    const nn::SequenceLayout layout({3, 1, 6, 2});
    const Matrix<double> x = test::random_matrix<double>(layout.num_tokens(), 8, rng);
    Matrix<double> y(layout.num_tokens(), 8);
    nn::MultiHeadAttention<double>::Workspace ws;
    attention.forward(x, x, layout, y, ws, nn::RunMode::inference());
    const Matrix<double> expected = padded_reference(params, x, layout, heads, 7, rng);
    REQUIRE((y - expected).cwiseAbs().maxCoeff() < 1e-10);
    // The first token of every sequence attends only to itself: its output is its own value.
    for (Index s = 0; s < layout.num_sequences(); ++s) {
      Matrix<double> v = x.row(layout.begin(s)) * params.value(params.find("attn.value.weight")).transpose();
      v.row(0) += params.value(params.find("attn.value.bias")).row(0);
      REQUIRE((y.row(layout.begin(s)) - v.row(0)).cwiseAbs().maxCoeff() < 1e-10);
    }
  }
}

TEST_CASE("Attention rejects a hidden size not divisible by the heads", "[nn][attention]") {
  Parameters<float> params;
  REQUIRE_THROWS_AS(nn::MultiHeadAttention<float>(params, "a", 10, 3, 0.0, false), ConfigError);
  REQUIRE_THROWS_AS(nn::SequenceLayout({2, 0}), ShapeError);
}

template <typename T>
void check_attention_gradients(Index heads, double dropout, bool projection, bool separate_inputs) {
  Rng rng(11);
  Parameters<T> params;
  nn::MultiHeadAttention<T> attention(params, "attn", 6, heads, dropout, projection);
  params.allocate();
  attention.initialize(rng);
  const nn::SequenceLayout layout({4, 1, 3});
  const Index n = layout.num_tokens();
  const Matrix<T> other = test::random_matrix<T>(n, 6, rng);
  typename nn::MultiHeadAttention<T>::Workspace ws;
  // x is the query input; keys/values come from `other` (SASRec's original block) or from x.
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(n, 6, rng), n, 6,
      [&](const Matrix<T>& x, Matrix<T>& y) {
        Rng mask_rng(3);
        attention.forward(x, separate_inputs ? other : x, layout, y, ws, nn::RunMode::train(mask_rng));
      },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) {
        if (separate_inputs) {
          Matrix<T> dother(n, 6);
          attention.backward(x, other, layout, dy, dx, dother, ws);
        } else {
          attention.backward(x, x, layout, dy, dx, dx, ws, nn::InputGrad::kOverwrite, nn::InputGrad::kAccumulate);
        }
      },
      rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}

TEMPLATE_TEST_CASE("Attention gradients match finite differences", "[nn][attention][gradcheck]", float, double) {
  SECTION("one head, separate query input") { check_attention_gradients<TestType>(1, 0.0, false, true); }
  SECTION("two heads, self-attention, output projection") { check_attention_gradients<TestType>(2, 0.0, true, false); }
  SECTION("three heads, attention dropout") { check_attention_gradients<TestType>(3, 0.3, false, false); }
}

TEST_CASE("Attention dropout is deterministic for a seed and independent of threads", "[nn][attention]") {
  Rng rng(2);
  Parameters<float> params;
  nn::MultiHeadAttention<float> attention(params, "attn", 16, 2, 0.5, true);
  params.allocate();
  attention.initialize(rng);
  std::vector<Index> lengths;
  for (int i = 0; i < 40; ++i) lengths.push_back(1 + i % 9);
  const nn::SequenceLayout layout(lengths);
  const Matrix<float> x = test::random_matrix<float>(layout.num_tokens(), 16, rng);
  Matrix<float> y1(layout.num_tokens(), 16), y2(layout.num_tokens(), 16);
  nn::MultiHeadAttention<float>::Workspace ws;
  Rng a(5), b(5);
  parallel::set_num_threads(1);
  attention.forward(x, x, layout, y1, ws, nn::RunMode::train(a));
  parallel::set_num_threads(2);
  attention.forward(x, x, layout, y2, ws, nn::RunMode::train(b));
  REQUIRE(y1 == y2);
}

template <typename T>
void check_llama_attention_gradients(Index heads, Index kv_heads) {
  Rng rng(12);
  Parameters<T> params;
  nn::AttentionOptions options;
  options.num_kv_heads = kv_heads;
  options.bias = false;
  options.rope = true;
  options.max_positions = 8;
  nn::MultiHeadAttention<T> attention(params, "attn", 8, heads, 0.0, true, options);
  params.allocate();
  attention.initialize(rng);
  const nn::SequenceLayout layout({4, 1, 3});
  const Index n = layout.num_tokens();
  typename nn::MultiHeadAttention<T>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(n, 8, rng), n, 8,
      [&](const Matrix<T>& x, Matrix<T>& y) { attention.forward(x, x, layout, y, ws, nn::RunMode::inference()); },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) {
        attention.backward(x, x, layout, dy, dx, dx, ws, nn::InputGrad::kOverwrite, nn::InputGrad::kAccumulate);
      },
      rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}

TEMPLATE_TEST_CASE("Rotary and grouped-query attention gradients match finite differences",
                   "[nn][attention][gradcheck]", float, double) {
  SECTION("rotary, 2 heads") { check_llama_attention_gradients<TestType>(2, 0); }
  SECTION("rotary, 4 heads sharing 2 key/value heads") { check_llama_attention_gradients<TestType>(4, 2); }
  SECTION("rotary, 4 heads sharing 1 key/value head") { check_llama_attention_gradients<TestType>(4, 1); }
}

TEST_CASE("Grouped-query attention equals multi-head attention with repeated key/value heads", "[nn][attention]") {
  Rng rng(13);
  nn::AttentionOptions grouped;
  grouped.num_kv_heads = 2;
  grouped.bias = false;
  grouped.rope = true;
  grouped.max_positions = 16;
  nn::AttentionOptions full = grouped;
  full.num_kv_heads = 4;
  Parameters<double> pg, pf;
  nn::MultiHeadAttention<double> gqa(pg, "a", 8, 4, 0.0, true, grouped), mha(pf, "a", 8, 4, 0.0, true, full);
  pg.allocate();
  pf.allocate();
  gqa.initialize(rng);
  REQUIRE(pg.value(pg.find("a.key.weight")).rows() == 4);  // 2 kv heads of size 2
  pf.value(pf.find("a.query.weight")) = pg.value(pg.find("a.query.weight"));
  pf.value(pf.find("a.output.weight")) = pg.value(pg.find("a.output.weight"));
  for (const char* name : {"a.key.weight", "a.value.weight"}) {
    const auto w = pg.value(pg.find(name));
    auto wf = pf.value(pf.find(name));
    for (Index h = 0; h < 4; ++h) wf.middleRows(2 * h, 2) = w.middleRows(2 * (h / 2), 2);  // heads 0,1 -> kv 0
  }
  const nn::SequenceLayout layout({5, 2, 9});
  const Matrix<double> x = test::random_matrix<double>(layout.num_tokens(), 8, rng);
  Matrix<double> yg(layout.num_tokens(), 8), yf(layout.num_tokens(), 8);
  nn::MultiHeadAttention<double>::Workspace wsg, wsf;
  gqa.forward(x, x, layout, yg, wsg, nn::RunMode::inference());
  mha.forward(x, x, layout, yf, wsf, nn::RunMode::inference());
  REQUIRE((yg - yf).cwiseAbs().maxCoeff() < 1e-12);
  Matrix<double> last(3, 8), xq_last(3, 8);
  for (Index s = 0; s < 3; ++s) xq_last.row(s) = x.row(layout.last(s));
  gqa.forward_last(xq_last, x, layout, last, wsg);
  for (Index s = 0; s < 3; ++s) REQUIRE((last.row(s) - yf.row(layout.last(s))).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("Grouped-query attention rejects a key/value head count that does not divide the heads", "[nn][attention]") {
  Parameters<float> params;
  nn::AttentionOptions options;
  options.num_kv_heads = 3;
  REQUIRE_THROWS_AS(nn::MultiHeadAttention<float>(params, "a", 8, 4, 0.0, false, options), ConfigError);
  options.num_kv_heads = 0;
  options.rope = true;
  Parameters<float> odd;
  REQUIRE_THROWS_AS(nn::MultiHeadAttention<float>(odd, "a", 9, 3, 0.0, false, options), ConfigError);  // head size 3
}

TEST_CASE("Recomputed attention probabilities: outputs and every gradient equal the stored ones bit for bit, with dropout, "
          "per-example masks, rotary and grouped heads, and no probability matrix is kept",
          "[nn][attention][recompute]") {
  for (const bool keyed : {false, true}) {
    CAPTURE(keyed);
    Rng rng(21);
    nn::AttentionOptions options;
    options.num_kv_heads = 2;
    options.bias = false;
    options.rope = true;
    options.max_positions = 16;
    Parameters<double> stored_params, recomputed_params;
    nn::MultiHeadAttention<double> stored(stored_params, "attn", 8, 4, 0.25, true, options);
    options.recompute_probabilities = true;
    nn::MultiHeadAttention<double> recomputed(recomputed_params, "attn", 8, 4, 0.25, true, options);
    stored_params.allocate();
    recomputed_params.allocate();
    stored.initialize(rng);
    recomputed_params.copy_values_from(stored_params);
    REQUIRE(recomputed.recomputes_probabilities());
    const nn::SequenceLayout layout({6, 1, 9, 3});
    const Index n = layout.num_tokens();
    const Matrix<double> x = test::random_matrix<double>(n, 8, rng);
    const Matrix<double> dy = test::random_matrix<double>(n, 8, rng);
    const std::vector<std::uint64_t> row_keys(static_cast<std::size_t>(n), 5), sequence_keys{11, 12, 13, 14};
    struct Run {
      Matrix<double> y, dx, grads;
      std::size_t kept = 0;
    };
    auto run = [&](nn::MultiHeadAttention<double>& attention, Parameters<double>& params) {
      Run r;
      typename nn::MultiHeadAttention<double>::Workspace ws;
      Rng mask_rng(3);
      const auto mode = keyed ? nn::RunMode::train_keyed(mask_rng, row_keys.data(), n, sequence_keys.data(), 4, 99)
                              : nn::RunMode::train(mask_rng);
      r.y.resize(n, 8);
      attention.forward(x, x, layout, r.y, ws, mode);
      params.zero_grad();
      r.dx.resize(n, 8);
      attention.backward(x, x, layout, dy, r.dx, r.dx, ws, nn::InputGrad::kOverwrite, nn::InputGrad::kAccumulate);
      r.grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
      r.kept = ws.probs.size() + ws.mask.size();
      return r;
    };
    const Run a = run(stored, stored_params);
    const Run b = run(recomputed, recomputed_params);
    CHECK(a.kept > 0);
    CHECK(b.kept == 0);
    CHECK((a.y - b.y).cwiseAbs().maxCoeff() == 0.0);
    CHECK((a.dx - b.dx).cwiseAbs().maxCoeff() == 0.0);
    CHECK((a.grads - b.grads).cwiseAbs().maxCoeff() == 0.0);
    CHECK(a.dx.cwiseAbs().maxCoeff() > 0.0);
  }
}
