#include "distillrec/backend/bf16_gemm.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/loss/softmax_ce.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <vector>

using namespace distillrec;
using backend::Trans;

namespace {

std::vector<std::uint16_t> random_bf16(Index n, Rng& rng) {
  std::vector<std::uint16_t> out(static_cast<std::size_t>(n));
  for (auto& v : out) v = backend::bf16::from_float(static_cast<float>(rng.normal()));
  return out;
}

// element (r, c) of op(x) where x is stored row-major with `cols` columns
double at(const std::vector<std::uint16_t>& x, Trans t, Index r, Index c, Index stored_cols) {
  const Index i = t == Trans::kNo ? r * stored_cols + c : c * stored_cols + r;
  return static_cast<double>(backend::bf16::to_float(x[static_cast<std::size_t>(i)]));
}

// Largest |gemm - reference| over the largest sum of |products| of an entry.
double gemm_error(backend::Bf16Gemm& gemm, Trans ta, Trans tb, Index m, Index n, Index k, bool accumulate, bool fixed_m, Rng& rng) {
  const auto a = random_bf16(m * k, rng), b = random_bf16(k * n, rng);
  const Index ldc = n + 3;
  std::vector<float> c(static_cast<std::size_t>(m * ldc));
  for (auto& v : c) v = static_cast<float>(rng.normal());
  const std::vector<float> before = c;
  gemm.run(ta, tb, m, n, k, a.data(), b.data(), c.data(), ldc, accumulate, fixed_m);
  double worst = 0.0;
  for (Index i = 0; i < m; ++i) {
    for (Index j = 0; j < n; ++j) {
      double sum = accumulate ? static_cast<double>(before[static_cast<std::size_t>(i * ldc + j)]) : 0.0, magnitude = std::abs(sum);
      for (Index p = 0; p < k; ++p) {
        const double product = at(a, ta, i, p, ta == Trans::kNo ? k : m) * at(b, tb, p, j, tb == Trans::kNo ? n : k);
        sum += product;
        magnitude += std::abs(product);
      }
      worst = std::max(worst, std::abs(static_cast<double>(c[static_cast<std::size_t>(i * ldc + j)]) - sum) / std::max(1.0, magnitude));
    }
    // the padding between rows is never written
    for (Index j = n; j < ldc; ++j) REQUIRE(c[static_cast<std::size_t>(i * ldc + j)] == before[static_cast<std::size_t>(i * ldc + j)]);
  }
  return worst;
}

}  // namespace

TEST_CASE("bfloat16 conversion rounds to nearest even and keeps NaN and infinity", "[backend][bf16]") {
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 3.14159f, 1e-30f, -1e30f, std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                               std::numeric_limits<float>::denorm_min()};
  // exact ties: 1 + 2^-8 lies between 1 and 1 + 2^-7 (rounds to even, 1); 1 + 3 * 2^-8 rounds up
  values.push_back(1.0f + std::ldexp(1.0f, -8));
  values.push_back(1.0f + 3.0f * std::ldexp(1.0f, -8));
  Rng rng(3);
  for (int i = 0; i < 1000; ++i) values.push_back(static_cast<float>(rng.normal() * std::pow(10.0, rng.uniform() * 8 - 4)));
  std::vector<std::uint16_t> converted(values.size());
  backend::bf16::convert(values.data(), converted.data(), static_cast<Index>(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    CAPTURE(values[i]);
    CHECK(converted[i] == backend::bf16::from_float(values[i]));
    const float back = backend::bf16::to_float(converted[i]);
    if (std::isnan(values[i])) {
      CHECK(std::isnan(back));
    } else if (std::isinf(values[i])) {
      CHECK(back == values[i]);
    } else {
      CHECK(std::abs(back - values[i]) <= std::max(std::abs(values[i]) * std::ldexp(1.0f, -8), std::numeric_limits<float>::min()));
    }
  }
  CHECK(backend::bf16::to_float(backend::bf16::from_float(1.0f + std::ldexp(1.0f, -8))) == 1.0f);
  CHECK(backend::bf16::to_float(backend::bf16::from_float(1.0f + 3.0f * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
}

TEST_CASE("bf16 GEMM: every transposition, accumulation and row stride, native and portable", "[backend][bf16]") {
  Rng rng(7);
  for (bool portable : {false, true}) {
    backend::Bf16Gemm gemm(portable);
    for (Trans ta : {Trans::kNo, Trans::kYes}) {
      for (Trans tb : {Trans::kNo, Trans::kYes}) {
        for (bool accumulate : {false, true}) {
          for (bool fixed_m : {false, true}) {
            CAPTURE(portable, ta == Trans::kYes, tb == Trans::kYes, accumulate, fixed_m);
            CHECK(gemm_error(gemm, ta, tb, 37, 29, 45, accumulate, fixed_m, rng) < 1e-5);
            // another m through the same cached primitive (runtime m) or a new one (fixed m)
            CHECK(gemm_error(gemm, ta, tb, 5, 29, 45, accumulate, fixed_m, rng) < 1e-5);
          }
        }
      }
    }
    if (portable) {
      CHECK(!gemm.native());
      CHECK(gemm.description().find("portable") != std::string::npos);
    } else {
      CHECK(gemm.native() == backend::has_native_bf16_matmul());
    }
  }
  backend::Bf16Gemm gemm;
  std::vector<float> c = {5.0f, 6.0f};
  const std::vector<std::uint16_t> none;
  gemm.run(Trans::kNo, Trans::kNo, 1, 2, 0, none.data(), none.data(), c.data(), 2, true);  // k = 0 keeps c
  CHECK(c == std::vector<float>{5.0f, 6.0f});
  gemm.run(Trans::kNo, Trans::kNo, 1, 2, 0, none.data(), none.data(), c.data(), 2, false);  // ... or zeroes it
  CHECK(c == std::vector<float>{0.0f, 0.0f});
  CHECK_THROWS_AS(gemm.run(Trans::kNo, Trans::kNo, 2, 4, 3, none.data(), none.data(), c.data(), 2, false), ShapeError);
}

TEST_CASE("Catalogue softmax in bf16 follows fp32 within bfloat16 rounding, over blocks, bias, weights and ignored rows",
          "[loss][softmax_ce][bf16]") {
  Rng rng(11);
  const Index n = 45, d = 24, items = 130;
  const Matrix<float> h = test::random_matrix<float>(n, d, rng, 0.5);
  const Matrix<float> weight = test::random_matrix<float>(items, d, rng, 0.5);
  const Matrix<float> bias = test::random_matrix<float>(1, items, rng, 0.5);
  std::vector<ItemId> targets(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) targets[static_cast<std::size_t>(i)] = i % 9 == 4 ? kPaddingId : static_cast<ItemId>(1 + rng.uniform_int(static_cast<std::uint64_t>(items)));
  for (bool with_bias : {false, true}) {
    for (bool portable : {false, true}) {
      CAPTURE(with_bias, portable);
      const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), items, d), with_bias ? bias.data() : nullptr};
      loss::CatalogueSoftmaxCrossEntropy<float> fp32, bf16;
      fp32.block_rows = bf16.block_rows = 16;  // three blocks, the last one padded
      fp32.weight = bf16.weight = 0.7f;
      bf16.precision = backend::MatmulPrecision::kBf16;
      typename loss::CatalogueSoftmaxCrossEntropy<float>::Workspace ws32, ws16;
      ws16.gemm = backend::Bf16Gemm(portable);
      Matrix<float> gh32(n, d), gh16(n, d), gw32 = Matrix<float>::Zero(items, d), gw16 = Matrix<float>::Zero(items, d);
      Matrix<float> gb32 = Matrix<float>::Zero(1, items), gb16 = Matrix<float>::Zero(1, items);
      const float l32 = fp32(h, head, targets, gh32, {MatrixMap<float>(gw32.data(), items, d), with_bias ? gb32.data() : nullptr}, ws32);
      const float l16 = bf16(h, head, targets, gh16, {MatrixMap<float>(gw16.data(), items, d), with_bias ? gb16.data() : nullptr}, ws16);
      CHECK(std::abs(l16 - l32) < 1e-2f * std::abs(l32));
      CHECK((gh16 - gh32).cwiseAbs().maxCoeff() < 1e-2f * gh32.cwiseAbs().maxCoeff());
      CHECK((gw16 - gw32).cwiseAbs().maxCoeff() < 1e-2f * gw32.cwiseAbs().maxCoeff());
      CHECK((gb16 - gb32).cwiseAbs().maxCoeff() < 1e-3f * std::max(1.0f, gb32.cwiseAbs().maxCoeff()));
      for (Index i = 0; i < n; ++i) {
        if (targets[static_cast<std::size_t>(i)] == kPaddingId) CHECK(gh16.row(i).isZero());
      }
      // The loss is the fp32 softmax of the bf16-rounded products: exact up to fp32 sums.
      double expected = 0.0;
      Index count = 0;
      for (Index i = 0; i < n; ++i) {
        const ItemId t = targets[static_cast<std::size_t>(i)];
        if (t == kPaddingId) continue;
        std::vector<double> z(static_cast<std::size_t>(items));
        double top = -1e300;
        for (Index j = 0; j < items; ++j) {
          double s = with_bias ? static_cast<double>(bias(0, j)) : 0.0;
          for (Index c = 0; c < d; ++c) {
            s += static_cast<double>(backend::bf16::to_float(backend::bf16::from_float(h(i, c)))) *
                 static_cast<double>(backend::bf16::to_float(backend::bf16::from_float(weight(j, c))));
          }
          z[static_cast<std::size_t>(j)] = s;
          top = std::max(top, s);
        }
        double sum = 0.0;
        for (double v : z) sum += std::exp(v - top);
        expected += top + std::log(sum) - z[static_cast<std::size_t>(t - 1)];
        ++count;
      }
      CHECK(std::abs(static_cast<double>(l16) - expected / static_cast<double>(count)) < 1e-5 * std::abs(expected / static_cast<double>(count)));
      // A frozen table: h's gradient only.
      Matrix<float> frozen(n, d);
      bf16(h, head, targets, frozen, {MatrixMap<float>(nullptr, 0, d), nullptr}, ws16);
      CHECK((frozen - gh16).cwiseAbs().maxCoeff() < 1e-6f);
    }
  }
  loss::CatalogueSoftmaxCrossEntropy<double> in_double;
  in_double.precision = backend::MatmulPrecision::kBf16;
  typename loss::CatalogueSoftmaxCrossEntropy<double>::Workspace ws;
  const Matrix<double> hd = Matrix<double>::Zero(2, 3), wd = Matrix<double>::Zero(4, 3);
  Matrix<double> ghd(2, 3), gwd = Matrix<double>::Zero(4, 3);
  CHECK_THROWS_AS(in_double(hd, {ConstMatrixMap<double>(wd.data(), 4, 3), nullptr}, {1, 2}, ghd, {MatrixMap<double>(gwd.data(), 4, 3), nullptr}, ws),
                  ConfigError);
}

TEST_CASE("SASRec trains with bf16 catalogue GEMMs: the loss falls, quality beats popularity and tracks fp32",
          "[train][trainer][bf16]") {
  const auto split = test::small_synthetic_split();
  models::Popularity<float> popularity(split.train, split.num_items);
  const double popularity_ndcg = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  std::vector<double> ndcg, last_loss;
  for (auto precision : {backend::MatmulPrecision::kFp32, backend::MatmulPrecision::kBf16}) {
    models::SASRecConfig model_config;
    model_config.num_items = split.num_items;
    model_config.hidden_size = 32;
    model_config.num_heads = 2;
    model_config.max_length = 20;
    model_config.dropout = 0.2;
    models::SASRec<float> model(model_config);
    Rng rng(1);
    model.initialize(rng);
    train::TrainerConfig config;
    config.epochs = 10;
    config.batch_size = 64;
    config.objective.objective = train::Objective::kSoftmax;
    config.objective.catalogue_precision = precision;
    config.adam.learning_rate = 3e-3;
    config.eval_every = 5;
    config.patience = 0;
    std::ostringstream log;
    config.log = &log;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    const auto summary = trainer.fit();
    CHECK(summary.epochs.back().loss < 0.8 * summary.epochs.front().loss);
    ndcg.push_back(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10"));
    last_loss.push_back(summary.epochs.back().loss);
    CHECK(ndcg.back() > 1.5 * popularity_ndcg);
    if (precision == backend::MatmulPrecision::kBf16) {
      const std::string description = trainer.objective().catalogue_description();
      CHECK(description.rfind("bf16, ", 0) == 0);
      CHECK(description.find(backend::has_native_bf16_matmul() ? "oneDNN" : "widened") != std::string::npos);
    } else {
      CHECK(trainer.objective().catalogue_description() == "fp32");
    }
  }
  // Same seeds, same batches: bf16 rounding moves the result only a little.
  CHECK(std::abs(last_loss[1] - last_loss[0]) < 0.02 * last_loss[0]);
  CHECK(std::abs(ndcg[1] - ndcg[0]) < 0.1 * ndcg[0]);

  train::ObjectiveConfig bce;
  bce.catalogue_precision = backend::MatmulPrecision::kBf16;
  CHECK_THROWS_AS(train::NextItemObjective<float>(bce, {}), ConfigError);
  train::ObjectiveConfig softmax = bce;
  softmax.objective = train::Objective::kSoftmax;
  CHECK_THROWS_AS(train::NextItemObjective<double>(softmax, {}), ConfigError);
  CHECK_NOTHROW(train::NextItemObjective<float>(softmax, {}));
  CHECK(backend::parse_matmul_precision("bf16") == backend::MatmulPrecision::kBf16);
  CHECK_THROWS_AS(backend::parse_matmul_precision("fp16"), ConfigError);
}
