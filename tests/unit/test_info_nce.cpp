#include "distillrec/data/examples.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/loss/info_nce.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/info_nce_term.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <cmath>
#include <limits>
#include <memory>

using namespace distillrec;

namespace {

// The loss of one row written out directly: normalised vectors, the kept negatives, -log softmax.
double nce_direct_row(const Matrix<double>& q, const Matrix<double>& p, const Matrix<double>& n, Index i, double scale, double threshold) {
  const auto qi = q.row(i).normalized(), pi = p.row(i).normalized();
  std::vector<double> logits{scale * qi.dot(pi)};
  for (Index m = 0; m < n.rows(); ++m) {
    const auto nm = n.row(m).normalized();
    if (pi.dot(nm) > threshold) continue;
    logits.push_back(scale * qi.dot(nm));
  }
  double sum = 0.0;
  for (double v : logits) sum += std::exp(v);
  return std::log(sum) - logits[0];
}

struct NceGrads {
  Matrix<double> q, p, n;
  double l = 0.0;
};

double nce_call(const loss::InfoNce<double>& nce, const Matrix<double>& q, const Matrix<double>& p, const Matrix<double>& n,
                const std::vector<std::uint8_t>& valid, double l, NceGrads& g, loss::InfoNceStats* stats = nullptr) {
  typename loss::InfoNce<double>::Workspace ws;
  g.q.resize(q.rows(), q.cols());
  g.p.resize(p.rows(), p.cols());
  g.n.resize(n.rows(), n.cols());
  return nce(q, p, n, valid, l, g.q, g.p, g.n, &g.l, ws, stats);
}

}  // namespace

TEST_CASE("InfoNCE: the value equals the formula, false negatives and padding rows are left out", "[loss][info_nce]") {
  Rng rng(11);
  Matrix<double> q = test::random_matrix<double>(4, 5, rng), p = test::random_matrix<double>(4, 5, rng);
  Matrix<double> n = test::random_matrix<double>(6, 5, rng);
  n.row(2) = 3.0 * p.row(0);         // row 0's positive, scaled: cosine 1, dropped for row 0 only
  n.row(4) = p.row(1) + 1e-3 * n.row(5);  // nearly row 1's positive: dropped for row 1
  loss::InfoNce<double> nce;
  const double l = std::log(1.0 / 0.07);
  NceGrads g;
  loss::InfoNceStats stats;
  const std::vector<std::uint8_t> valid{1, 1, 0, 1};
  const double value = nce_call(nce, q, p, n, valid, l, g, &stats);
  const double scale = 1.0 / 0.07;
  const double expected = (nce_direct_row(q, p, n, 0, scale, 0.99) + nce_direct_row(q, p, n, 1, scale, 0.99) +
                           nce_direct_row(q, p, n, 3, scale, 0.99)) / 3.0;
  CHECK(value == Approx(expected).epsilon(1e-12));
  CHECK(stats.rows == 3);
  CHECK(stats.surviving_negatives == Approx((5.0 + 5.0 + 6.0) / 3.0));
  CHECK(g.q.row(2).isZero());  // the padding row
  CHECK(g.p.row(2).isZero());
  // Without the filter every negative counts, and the loss differs.
  loss::InfoNceConfig none;
  none.false_negative_threshold = 1.5;
  NceGrads g2;
  loss::InfoNceStats all;
  const double unfiltered = nce_call(loss::InfoNce<double>(none), q, p, n, valid, l, g2, &all);
  CHECK(all.surviving_negatives == Approx(6.0));
  CHECK(unfiltered > value);
  // The scale is clamped to [1, 100]: l above ln 100 gives the value at ln 100, below 0 the value at 0.
  NceGrads g3, g4;
  CHECK(nce_call(nce, q, p, n, {}, 7.0, g3) == Approx(nce_call(nce, q, p, n, {}, std::log(100.0), g4)).epsilon(1e-12));
  CHECK(nce_call(nce, q, p, n, {}, -2.0, g3) == Approx(nce_call(nce, q, p, n, {}, 0.0, g4)).epsilon(1e-12));
  CHECK(loss::InfoNceConfig{}.initial_log_scale() == Approx(std::log(1.0 / 0.07)));
}

TEST_CASE("InfoNCE: gradients of queries, positives, the shared negatives and the log-scale match finite differences",
          "[loss][info_nce][gradcheck]") {
  Rng rng(12);
  for (double l : {std::log(1.0 / 0.07), 1.3, 0.0}) {
    CAPTURE(l);
    Matrix<double> q = test::random_matrix<double>(5, 4, rng), p = test::random_matrix<double>(5, 4, rng);
    Matrix<double> n = test::random_matrix<double>(7, 4, rng);
    n.row(3) = 2.0 * p.row(1);  // a false negative of row 1 (dropped: no gradient from row 1 through it)
    const std::vector<std::uint8_t> valid{1, 1, 1, 0, 1};
    loss::InfoNce<double> nce;
    NceGrads g;
    nce_call(nce, q, p, n, valid, l, g);
    NceGrads scratch;
    double ll = l;
    auto value = [&]() { return nce_call(nce, q, p, n, valid, ll, scratch); };
    CHECK(test::max_gradient_error<double>(value, q.data(), g.q.data(), q.size()) < 1e-6);
    CHECK(test::max_gradient_error<double>(value, p.data(), g.p.data(), p.size()) < 1e-6);
    CHECK(test::max_gradient_error<double>(value, n.data(), g.n.data(), n.size()) < 1e-6);
    if (l > 0.0) {  // at the clamp's edge the one-sided value does not move: checked away from it
      CHECK(test::max_gradient_error<double>(value, &ll, &g.l, 1) < 1e-6);
    }
    CHECK(g.q.cwiseAbs().maxCoeff() > 0.0);
    CHECK(g.n.cwiseAbs().maxCoeff() > 0.0);
  }
}

TEST_CASE("InfoNCE: bad input is refused with the tensor named", "[loss][info_nce]") {
  Rng rng(13);
  Matrix<double> q = test::random_matrix<double>(3, 4, rng), p = test::random_matrix<double>(3, 4, rng);
  Matrix<double> n = test::random_matrix<double>(2, 4, rng), empty(0, 4), narrow(2, 3);
  loss::InfoNce<double> nce;
  NceGrads g;
  CHECK_THROWS_WITH(nce_call(nce, q, p, empty, {}, 1.0, g), Catch::Contains("negative pool is empty"));
  CHECK_THROWS_AS(nce_call(nce, q, p, narrow, {}, 1.0, g), ShapeError);
  CHECK_THROWS_AS(nce_call(nce, q, p.topRows(2), n, {}, 1.0, g), ShapeError);
  CHECK_THROWS_WITH(nce_call(nce, q, p, n, {1, 0}, 1.0, g), Catch::Contains("validity flags"));
  q(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(nce_call(nce, q, p, n, {}, 1.0, g), Catch::Contains("row 1 of the queries is not finite"));
  CHECK_THROWS_WITH(nce_call(nce, p, p, n, {}, std::numeric_limits<double>::infinity(), g), Catch::Contains("log-scale"));
  loss::InfoNceConfig bad;
  bad.initial_temperature = 0.0;
  CHECK_THROWS_AS(loss::InfoNce<double>(bad), ConfigError);
  bad = {};
  bad.max_scale = 0.5;
  CHECK_THROWS_AS(loss::InfoNce<double>(bad), ConfigError);
  train::InfoNceTermConfig term;
  term.negatives = 0;
  CHECK_THROWS_WITH(train::InfoNceTerm<models::SASRec<double>>(term), Catch::Contains("at least one negative"));
}

namespace {

data::ExampleSplit nce_split() {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 50;
  synthetic.num_items = 25;
  synthetic.num_clusters = 3;
  synthetic.max_length = 8;
  synthetic.seed = 4;
  return data::every_prefix(data::generate_synthetic(synthetic));
}

}  // namespace

TEST_CASE("InfoNCE term: its gradients through SASRec's outputs, item table and log-scale match finite differences",
          "[train][info_nce][gradcheck]") {
  const auto split = nce_split();
  for (auto head : {nn::HeadKind::kTied, nn::HeadKind::kUntied}) {
    models::SASRecConfig config;
    config.num_items = split.num_items;
    config.hidden_size = 8;
    config.num_blocks = 1;
    config.max_length = 6;
    config.dropout = 0.2;
    config.head = head;
    models::SASRec<double> model(config);
    Rng init(6);
    model.initialize(init);
    train::InfoNceTermConfig term_config;
    term_config.negatives = 40;  // more than the catalogue: targets are drawn too, and dropped as false negatives
    term_config.weight = 0.7;
    train::InfoNceTerm<models::SASRec<double>> term(term_config);
    data::BatcherConfig bc;
    bc.batch_size = 5;
    bc.max_length = config.max_length;
    data::ExampleBatcher batcher(split, bc);
    batcher.start_epoch(0);
    data::TrainingBatch batch;
    REQUIRE(batcher.next(batch));
    typename models::SASRec<double>::Workspace ws;
    train::StepBuffers<models::SASRec<double>> buffers;
    auto total_loss = [&]() {
      Rng dropout_rng(9);
      const auto u = model.forward_train(batch, dropout_rng, ws);
      buffers.begin(u, ws, true);
      Rng term_rng(3);
      auto ctx = buffers.context(model, ws, batch, split, u, term_rng);
      const double l = term.compute(ctx);
      buffers.finish(ws);
      return l;
    };
    auto& params = model.parameters();
    auto& own = *term.parameters();
    params.zero_grad();
    own.zero_grad();
    CHECK(total_loss() > 0.0);
    model.backward(buffers.grad_outputs(), ws);
    const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
    const Matrix<double> own_grads = Eigen::Map<const Matrix<double>>(own.grads(), 1, own.buffer_size());
    CHECK(grads.cwiseAbs().maxCoeff() > 0.0);
    CHECK(test::max_gradient_error<double>(total_loss, params.values(), grads.data(), params.buffer_size(), 500) < 1e-6);
    CHECK(test::max_gradient_error<double>(total_loss, own.values(), own_grads.data(), 1) < 1e-6);
    const auto report = term.take_report();
    REQUIRE(report.count("kept") == 1);
    CHECK(report.at("kept") < 40.0);  // some draws hit a position's target and were dropped
    CHECK(report.at("scale") == Approx(1.0 / 0.07));
  }
}

TEST_CASE("InfoNCE term: training SASRec with it lowers the term's loss and keeps beating popularity", "[train][info_nce]") {
  const auto split = test::small_synthetic_split();
  models::SASRecConfig config;
  config.num_items = split.num_items;
  config.hidden_size = 16;
  config.num_blocks = 1;
  config.max_length = 10;
  models::SASRec<float> model(config);
  Rng rng(1);
  model.initialize(rng);
  train::TrainerConfig tc;
  tc.epochs = 10;
  tc.batch_size = 64;
  tc.adam.learning_rate = 3e-3;
  tc.eval_every = 0;
  tc.log = nullptr;
  train::Trainer<models::SASRec<float>> trainer(model, split, tc);
  train::InfoNceTermConfig term_config;
  term_config.negatives = 64;
  auto term = std::make_shared<train::InfoNceTerm<models::SASRec<float>>>(term_config);
  trainer.add_term(term);
  const auto summary = trainer.fit();
  REQUIRE(summary.epochs.size() == 10);
  const auto& first = summary.epochs.front().terms, &last = summary.epochs.back().terms;
  REQUIRE(first.count("info_nce.loss") == 1);
  CHECK(last.at("info_nce.loss") < 0.8 * first.at("info_nce.loss"));
  CHECK(last.at("info_nce.accuracy") > first.at("info_nce.accuracy"));
  // The scale is learnt (it moved from 1 / 0.07) and stays inside [1, 100].
  CHECK(term->scale() != Approx(1.0 / 0.07));
  CHECK(term->scale() >= 1.0);
  CHECK(term->scale() <= 100.0);
  models::Popularity<float> popularity(split.train, split.num_items);
  const double popularity_ndcg = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  CHECK(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10") > 1.5 * popularity_ndcg);
}
