#include "distillrec/nn/transformer_block.hpp"

#include "support.hpp"

using namespace distillrec;

template <typename T, typename Placement, typename FFN>
void check_block_gradients(double dropout) {
  Rng rng(21);
  Parameters<T> params;
  nn::TransformerBlockConfig config;
  config.dim = 6;
  config.num_heads = 2;
  config.ffn_dim = 8;
  config.dropout = dropout;
  config.attention_dropout = dropout;
  config.attention_output_projection = !std::is_same_v<Placement, nn::SASRecNorm>;
  config.norm_eps = 1e-5;
  nn::TransformerBlock<T, Placement, nn::LayerNorm<T>, FFN> block(params, "block", config);
  params.allocate();
  block.initialize(rng);
  // Non-trivial norm parameters, so their gradients are exercised too.
  for (const auto& info : params.infos()) {
    if (info.name.find("norm") != std::string::npos) {
      params.value(params.find(info.name)).array() += test::random_matrix<T>(1, info.cols, rng, 0.2).array();
    }
  }
  const nn::SequenceLayout layout({3, 1, 4});
  const Index n = layout.num_tokens();
  typename nn::TransformerBlock<T, Placement, nn::LayerNorm<T>, FFN>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(n, 6, rng), n, 6,
      [&](const Matrix<T>& x, Matrix<T>& y) {
        Rng mask_rng(8);
        block.forward(x, layout, y, ws, nn::RunMode::train(mask_rng));
      },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) { block.backward(x, layout, dy, dx, ws); },
      rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}

TEMPLATE_TEST_CASE("TransformerBlock gradients match finite differences for every placement",
                   "[nn][transformer_block][gradcheck]", float, double) {
  using T = TestType;
  SECTION("SASRec original") { check_block_gradients<T, nn::SASRecNorm, nn::PointwiseFeedForward<T, nn::Relu>>(0.0); }
  SECTION("SASRec original with dropout") { check_block_gradients<T, nn::SASRecNorm, nn::PointwiseFeedForward<T, nn::Relu>>(0.3); }
  SECTION("pre-LN, GELU") { check_block_gradients<T, nn::PreNorm, nn::PointwiseFeedForward<T, nn::Gelu>>(0.0); }
  SECTION("post-LN with dropout") { check_block_gradients<T, nn::PostNorm, nn::PointwiseFeedForward<T, nn::Relu>>(0.2); }
}

TEST_CASE("SASRec block: residual from the normalised query", "[nn][transformer_block]") {
  // With all attention and FFN weights zero, q = LN(x), h = q, r = LN(h), y = r.
  Parameters<double> params;
  nn::TransformerBlockConfig config;
  config.dim = 4;
  nn::TransformerBlock<double, nn::SASRecNorm> block(params, "b", config);
  params.allocate();
  Rng rng(1);
  block.initialize(rng);
  for (const auto& info : params.infos()) {
    if (info.name.find("norm") == std::string::npos) params.value(params.find(info.name)).setZero();
  }
  const nn::SequenceLayout layout({2});
  Matrix<double> x(2, 4), y(2, 4);
  x << 1, 2, 3, 4, 0, 0, 1, -1;
  decltype(block)::Workspace ws;
  block.forward(x, layout, y, ws, nn::RunMode::inference());
  for (Index i = 0; i < 2; ++i) {
    const double mean = x.row(i).mean();
    const double var = (x.row(i).array() - mean).square().mean();
    const RowVector<double> expected = (x.row(i).array() - mean) / std::sqrt(var + 1e-8);
    REQUIRE((y.row(i) - expected).cwiseAbs().maxCoeff() < 1e-6);
  }
}

template <typename Placement>
void check_forward_last() {
  Rng rng(31);
  Parameters<double> params;
  nn::TransformerBlockConfig config;
  config.dim = 8;
  config.num_heads = 2;
  config.ffn_dim = 12;
  config.dropout = 0.4;  // inactive at inference
  config.attention_dropout = 0.4;
  config.attention_output_projection = true;
  nn::TransformerBlock<double, Placement> block(params, "block", config);
  params.allocate();
  block.initialize(rng);
  const nn::SequenceLayout layout({5, 1, 3, 7});
  const Matrix<double> x = test::random_matrix<double>(layout.num_tokens(), 8, rng);
  Matrix<double> full(layout.num_tokens(), 8), last(4, 8);
  typename nn::TransformerBlock<double, Placement>::Workspace ws;
  block.forward(x, layout, full, ws, nn::RunMode::inference());
  block.forward_last(x, layout, last, ws);
  for (Index s = 0; s < 4; ++s) REQUIRE((last.row(s) - full.row(layout.last(s))).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("TransformerBlock::forward_last equals the last rows of forward", "[nn][transformer_block]") {
  check_forward_last<nn::SASRecNorm>();
  check_forward_last<nn::PreNorm>();
  check_forward_last<nn::PostNorm>();
}

template <typename T>
using LlamaBlock = nn::TransformerBlock<T, nn::PreNorm, nn::RMSNorm<T>, nn::SwiGLU<T>>;

template <typename T>
nn::TransformerBlockConfig llama_block_config() {
  nn::TransformerBlockConfig config;
  config.dim = 8;
  config.num_heads = 4;
  config.ffn_dim = 12;
  config.attention_output_projection = true;
  config.norm_eps = 1e-6;
  config.attention.bias = false;
  config.attention.rope = true;
  config.attention.num_kv_heads = 2;
  config.attention.max_positions = 16;
  return config;
}

TEMPLATE_TEST_CASE("LLaMA block (RMSNorm, RoPE, SwiGLU, grouped-query, pre-norm) gradients match finite differences",
                   "[nn][transformer_block][gradcheck]", float, double) {
  using T = TestType;
  Rng rng(22);
  Parameters<T> params;
  LlamaBlock<T> block(params, "block", llama_block_config<T>());
  params.allocate();
  block.initialize(rng);
  for (const auto& info : params.infos()) {
    if (info.name.find("norm") != std::string::npos) {
      params.value(params.find(info.name)).array() += test::random_matrix<T>(1, info.cols, rng, 0.2).array();
    }
  }
  const nn::SequenceLayout layout({3, 1, 5});
  const Index n = layout.num_tokens();
  typename LlamaBlock<T>::Workspace ws;
  const auto result = test::check_gradients<T>(
      params, test::random_matrix<T>(n, 8, rng), n, 8,
      [&](const Matrix<T>& x, Matrix<T>& y) { block.forward(x, layout, y, ws, nn::RunMode::inference()); },
      [&](const Matrix<T>& x, const Matrix<T>& dy, Matrix<T>& dx) { block.backward(x, layout, dy, dx, ws); }, rng);
  CHECK(result.input_error < test::GradTolerance<T>::tolerance);
  CHECK(result.param_error < test::GradTolerance<T>::tolerance);
}

TEST_CASE("LLaMA block: forward_last equals the last rows of forward, parameters have LLaMA's shapes",
          "[nn][transformer_block]") {
  Rng rng(32);
  Parameters<double> params;
  LlamaBlock<double> block(params, "block", llama_block_config<double>());
  params.allocate();
  block.initialize(rng);
  REQUIRE(params.find("block.attention.query.bias") < 0);
  REQUIRE(params.value(params.find("block.attention.key.weight")).rows() == 4);
  REQUIRE(params.value(params.find("block.ffn.gate.weight")).rows() == 12);
  REQUIRE(params.value(params.find("block.attention_norm.weight")).cols() == 8);
  const nn::SequenceLayout layout({5, 1, 3, 7});
  const Matrix<double> x = test::random_matrix<double>(layout.num_tokens(), 8, rng);
  Matrix<double> full(layout.num_tokens(), 8), last(4, 8);
  LlamaBlock<double>::Workspace ws;
  block.forward(x, layout, full, ws, nn::RunMode::inference());
  block.forward_last(x, layout, last, ws);
  for (Index s = 0; s < 4; ++s) REQUIRE((last.row(s) - full.row(layout.last(s))).cwiseAbs().maxCoeff() < 1e-12);
}
