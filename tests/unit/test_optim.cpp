#include "distillrec/optim/adam.hpp"
#include "distillrec/optim/clip.hpp"
#include "distillrec/optim/schedule.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Adam matches PyTorch's update rule step by step", "[optim][adam]") {
  Parameters<double> params;
  const auto w = params.declare("w", 1, 2);
  params.allocate();
  params.value(w) << 1.0, -2.0;
  optim::AdamConfig config;
  config.learning_rate = 0.1;
  config.beta2 = 0.98;
  optim::Adam adam(config);
  auto state = adam.make_state(params);
  // Reference computed by hand with torch.optim.Adam's formulas.
  double p = 1.0, m = 0, v = 0;
  for (int t = 1; t <= 3; ++t) {
    const double g = 2 * p;  // gradient of p^2
    params.grad(w)(0, 0) = g;
    params.grad(w)(0, 1) = 0.0;
    adam.step(params, state);
    m = 0.9 * m + 0.1 * g;
    v = 0.98 * v + 0.02 * g * g;
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.98, t);
    p -= 0.1 / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + 1e-8);
    REQUIRE(params.value(w)(0, 0) == Approx(p).epsilon(1e-12));
  }
  REQUIRE(params.value(w)(0, 1) == -2.0);  // zero gradient, no decay: unchanged
}

TEST_CASE("Adam minimises a quadratic, AdamW decays weights, frozen slices stay put", "[optim][adam]") {
  Parameters<float> params;
  const auto a = params.declare("a", 3, 3);
  const auto frozen = params.declare("frozen", 1, 4);
  params.allocate();
  Rng rng(1);
  params.value(a) = test::random_matrix<float>(3, 3, rng);
  params.value(frozen).setConstant(5.0f);
  params.set_trainable(frozen, false);
  optim::AdamConfig config;
  config.learning_rate = 0.05;
  optim::Adam adam(config);
  auto state = adam.make_state(params);
  for (int step = 0; step < 500; ++step) {
    params.zero_grad();
    params.grad(a) = 2.0f * params.value(a);
    params.grad(frozen).setOnes();
    adam.step(params, state);
  }
  REQUIRE(params.value(a).cwiseAbs().maxCoeff() < 0.05f);
  REQUIRE(params.value(frozen).isConstant(5.0f));

  config.weight_decay = 0.1;
  config.decoupled_weight_decay = true;
  optim::Adam adamw(config);
  auto state_w = adamw.make_state(params);
  params.value(a).setConstant(1.0f);
  params.zero_grad();
  adamw.step(params, state_w);
  REQUIRE(params.value(a)(0, 0) == Approx(1.0f * (1 - 0.05f * 0.1f)));

  config.beta1 = 1.0;
  REQUIRE_THROWS_AS(optim::Adam(config), ConfigError);
}

TEST_CASE("Lazy Adam updates only the touched rows of large tensors, each as dense Adam would", "[optim][adam][lazy]") {
  // "table" [6, 3] is lazy (lazy_rows 4); "small" [2, 3] stays dense. Row 1 is touched on steps
  // 1 and 3 only, row 4 on step 2 only, row 5 on step 2 by a -0.0 alone (a set bit counts), the
  // rest never.
  Parameters<double> params;
  const auto table = params.declare("table", 6, 3);
  const auto small = params.declare("small", 2, 3);
  params.allocate();
  Rng rng(4);
  params.value(table) = test::random_matrix<double>(6, 3, rng);
  params.value(small) = test::random_matrix<double>(2, 3, rng);
  const Matrix<double> table0 = params.value(table), small0 = params.value(small);
  optim::AdamConfig config;
  config.learning_rate = 0.1;
  config.lazy_rows = 4;
  config.weight_decay = 0.01;
  config.decoupled_weight_decay = true;
  optim::Adam adam(config);
  auto state = adam.make_state(params);
  optim::AdamConfig dense_config = config;
  dense_config.lazy_rows = 0;
  optim::Adam dense(dense_config);
  Parameters<double> reference;  // dense Adam on the small tensor, for comparison
  const auto ref_small = reference.declare("small", 2, 3);
  reference.allocate();
  reference.value(ref_small) = small0;
  auto ref_state = dense.make_state(reference);

  // Row 1 by hand: AdamW with the global step's bias corrections, moments frozen at step 2.
  double m[3] = {0, 0, 0}, v[3] = {0, 0, 0}, p[3] = {table0(1, 0), table0(1, 1), table0(1, 2)};
  for (int t = 1; t <= 3; ++t) {
    params.zero_grad();
    reference.zero_grad();
    const Matrix<double> g_small = test::random_matrix<double>(2, 3, rng);
    params.grad(small) = g_small;
    reference.grad(ref_small) = g_small;
    const double g1[3] = {0.5 * t, -0.25, 1.0 / t};
    if (t != 2) {
      for (int c = 0; c < 3; ++c) params.grad(table)(1, c) = g1[c];
    } else {
      params.grad(table)(4, 0) = 0.3;
      params.grad(table)(5, 1) = -0.0;
    }
    adam.step(params, state);
    dense.step(reference, ref_state);
    if (t != 2) {
      const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
      for (int c = 0; c < 3; ++c) {
        p[c] *= 1 - 0.1 * 0.01;
        m[c] = 0.9 * m[c] + 0.1 * g1[c];
        v[c] = 0.999 * v[c] + 0.001 * g1[c] * g1[c];
        p[c] -= 0.1 / bc1 * m[c] / (std::sqrt(v[c]) / std::sqrt(bc2) + 1e-8);
      }
    }
    for (int c = 0; c < 3; ++c) REQUIRE(params.value(table)(1, c) == Approx(p[c]).epsilon(1e-12));
  }
  // Never-touched rows keep their values (no decay, no momentum); row 4 moved once, at step 2,
  // and then stayed.
  for (Index r : {0, 2, 3}) REQUIRE(params.value(table).row(r) == table0.row(r));
  REQUIRE(params.value(table)(4, 0) != table0(4, 0));
  REQUIRE(params.value(table)(4, 2) == Approx(table0(4, 2) * (1 - 0.1 * 0.01)).epsilon(1e-14));  // touched row: decayed, zero gradient column
  for (Index c = 0; c < 3; ++c) {  // the -0.0 row was touched: AdamW decayed it (a zero update otherwise)
    REQUIRE(params.value(table)(5, c) != table0(5, c));
    REQUIRE(params.value(table)(5, c) == Approx(table0(5, c) * (1 - 0.1 * 0.01)).epsilon(1e-14));
  }
  // The small tensor, below lazy_rows, is dense Adam exactly.
  REQUIRE(params.value(small) == reference.value(ref_small));

  optim::AdamConfig bad;
  bad.lazy_rows = -1;
  REQUIRE_THROWS_AS(optim::Adam(bad), ConfigError);
}

TEST_CASE("Lazy Adam over a large float table in parallel chunks equals dense Adam on the touched rows", "[optim][adam][lazy]") {
  // [40000, 4]: ten chunks of rows, run on the library's threads. Step 1 touches every row, step
  // 2 every seventh: there the touched rows equal dense Adam's bit for bit (same kernel, same
  // history) and the others keep step 1's values, where dense Adam's momentum moves them.
  const Index rows = 40000, cols = 4;
  Parameters<float> lazy_params, dense_params;
  const auto lazy_id = lazy_params.declare("table", rows, cols);
  const auto dense_id = dense_params.declare("table", rows, cols);
  lazy_params.allocate();
  dense_params.allocate();
  Rng rng(9);
  const Matrix<float> start = test::random_matrix<float>(rows, cols, rng);
  lazy_params.value(lazy_id) = start;
  dense_params.value(dense_id) = start;
  optim::AdamConfig config;
  config.learning_rate = 0.01;
  optim::Adam dense(config);
  config.lazy_rows = 1000;
  optim::Adam lazy(config);
  auto lazy_state = lazy.make_state(lazy_params);
  auto dense_state = dense.make_state(dense_params);
  lazy_params.grad(lazy_id) = test::random_matrix<float>(rows, cols, rng);
  dense_params.grad(dense_id) = lazy_params.grad(lazy_id);
  lazy.step(lazy_params, lazy_state);
  dense.step(dense_params, dense_state);
  REQUIRE(lazy_params.value(lazy_id) == dense_params.value(dense_id));
  const Matrix<float> after_one = lazy_params.value(lazy_id);
  lazy_params.zero_grad();
  dense_params.zero_grad();
  for (Index r = 0; r < rows; r += 7) {
    lazy_params.grad(lazy_id).row(r) = test::random_matrix<float>(1, cols, rng);
    dense_params.grad(dense_id).row(r) = lazy_params.grad(lazy_id).row(r);
  }
  lazy.step(lazy_params, lazy_state);
  dense.step(dense_params, dense_state);
  Index moved_by_dense = 0;
  for (Index r = 0; r < rows; ++r) {
    if (r % 7 == 0) {
      REQUIRE(lazy_params.value(lazy_id).row(r) == dense_params.value(dense_id).row(r));
    } else {
      REQUIRE(lazy_params.value(lazy_id).row(r) == after_one.row(r));
      moved_by_dense += dense_params.value(dense_id).row(r) != after_one.row(r);
    }
  }
  CHECK(moved_by_dense > rows / 2);
}

TEST_CASE("Gradient clipping scales to the max norm and rejects NaN", "[optim][clip]") {
  Parameters<float> params;
  const auto w = params.declare("w", 1, 2);
  params.allocate();
  params.grad(w) << 3.0f, 4.0f;
  REQUIRE(optim::clip_gradient_norm(params, 1.0) == Approx(5.0));
  REQUIRE(optim::gradient_norm(params) == Approx(1.0).epsilon(1e-5));
  REQUIRE(optim::clip_gradient_norm(params, 10.0) == Approx(1.0).epsilon(1e-5));
  params.grad(w)(0, 0) = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_AS(optim::clip_gradient_norm(params, 1.0), Error);
  REQUIRE_THROWS_AS(optim::clip_gradient_norm(params, 0.0), ConfigError);
}

TEST_CASE("Warm-up plus cosine schedule", "[optim][schedule]") {
  optim::WarmupCosineSchedule schedule{1.0, 10, 110, 0.1};
  schedule.validate();
  REQUIRE(schedule(0) == Approx(0.1));
  REQUIRE(schedule(9) == Approx(1.0));
  REQUIRE(schedule(10) == Approx(1.0));
  REQUIRE(schedule(60) == Approx(0.55));
  REQUIRE(schedule(110) == Approx(0.1));
  REQUIRE(schedule(1000) == Approx(0.1));
  for (long s = 10; s < 110; ++s) REQUIRE(schedule(s + 1) <= schedule(s) + 1e-12);
  optim::WarmupCosineSchedule bad{1.0, 20, 10, 0.0};
  REQUIRE_THROWS_AS(bad.validate(), ConfigError);
  REQUIRE(optim::ConstantSchedule{0.3}(12345) == 0.3);
}
