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

TEST_CASE("Adam minimises a quadratic; AdamW decays weights; frozen slices stay put", "[optim][adam]") {
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
