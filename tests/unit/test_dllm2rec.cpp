#include "distillrec/data/examples.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/distill/embedding_distillation.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/train/loss_term.hpp"
#include "distillrec/loss/bce.hpp"
#include "distillrec/loss/dros.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/io/npy.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/loss/ranking_distillation.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <fstream>
#include <memory>

using namespace distillrec;

namespace {

data::InteractionLog small_log(std::uint64_t seed = 3, Index users = 60, ItemId items = 30) {
  data::SyntheticConfig synthetic;
  synthetic.num_users = users;
  synthetic.num_items = items;
  synthetic.num_clusters = 3;
  synthetic.max_length = 9;
  synthetic.seed = seed;
  return data::generate_synthetic(synthetic);
}

models::GRU4RecConfig gru_config(ItemId items) {
  models::GRU4RecConfig config;
  config.num_items = items;
  config.embedding_dim = 6;
  config.hidden_size = 7;
  config.max_length = 6;
  config.dropout = 0.2;
  config.head = nn::HeadKind::kUntied;
  return config;
}

models::SASRecConfig sasrec_config(ItemId items) {
  models::SASRecConfig config;
  config.num_items = items;
  config.hidden_size = 8;
  config.num_blocks = 1;
  config.max_length = 6;
  config.dropout = 0.2;
  return config;
}

/// The first batch of epoch 0 (batch_size rows, windows of max_length).
data::TrainingBatch first_batch(const data::ExampleSplit& split, Index max_length, Index batch_size) {
  data::BatcherConfig bc;
  bc.batch_size = batch_size;
  bc.max_length = max_length;
  data::ExampleBatcher batcher(split, bc);
  batcher.start_epoch(0);
  data::TrainingBatch batch;
  REQUIRE(batcher.next(batch));
  return batch;
}

}  // namespace

TEST_CASE("Ranking importance weights follow the documented formula", "[distill][dllm2rec]") {
  distill::RankingWeightsConfig config;
  CHECK(config.gamma_consistency == 0.0);  // the library's default (the reference's 0.1 costs a full scoring per step)
  config.gamma_consistency = 0.1;          // the reference's mix
  const std::vector<float> distances{0.5f, 1.0f, 2.0f, 4.0f};
  const std::vector<unsigned char> flags{1, 0, 1, 0};
  std::vector<double> w(4);
  distill::ranking_weights(config, distances.data(), distill::ScoreOrder::kLowerIsBetter, flags.data(), 4, w.data());
  // By hand: position exp(-k), confidence (exp(-(d - d_min)) + 1e-8) normalised, consistency flag + 1e-8.
  double p_total = 0, c_total = 0;
  for (int k = 1; k <= 4; ++k) p_total += std::exp(-k);
  for (float d : distances) c_total += std::exp(-(d - 0.5)) + 1e-8;
  std::vector<double> mixed(4);
  double total = 0;
  for (int k = 0; k < 4; ++k) {
    mixed[k] = 0.3 * std::exp(-(k + 1)) / p_total + 0.5 * (std::exp(-(distances[k] - 0.5)) + 1e-8) / c_total + 0.1 * (flags[k] + 1e-8);
    total += mixed[k];
  }
  for (int k = 0; k < 4; ++k) CHECK(w[k] == Approx(mixed[k] / total).epsilon(1e-12));
  CHECK(w[0] + w[1] + w[2] + w[3] == Approx(1.0));

  // Far-away candidates (4096-wide LLM distances): the same weights as the shifted distances,
  // where exp(-distance) in fp32 would have underflowed to uniform weights.
  const std::vector<float> far{200.5f, 201.0f, 202.0f, 204.0f};
  std::vector<double> w_far(4);
  distill::ranking_weights(config, far.data(), distill::ScoreOrder::kLowerIsBetter, flags.data(), 4, w_far.data());
  for (int k = 0; k < 4; ++k) CHECK(w_far[k] == Approx(w[k]).epsilon(1e-9));

  // Higher-is-better scores s weigh as distances -s.
  const std::vector<float> scores{-0.5f, -1.0f, -2.0f, -4.0f};
  std::vector<double> w_scores(4);
  distill::ranking_weights(config, scores.data(), distill::ScoreOrder::kHigherIsBetter, flags.data(), 4, w_scores.data());
  for (int k = 0; k < 4; ++k) CHECK(w_scores[k] == Approx(w[k]).epsilon(1e-12));

  // Each component alone.
  config.gamma_position = 1, config.gamma_confidence = 0, config.gamma_consistency = 0;
  distill::ranking_weights(config, distances.data(), distill::ScoreOrder::kLowerIsBetter, nullptr, 4, w.data());
  CHECK(w[0] / w[1] == Approx(std::exp(1.0)));
  config.gamma_position = 0, config.gamma_consistency = 1;
  distill::ranking_weights(config, distances.data(), distill::ScoreOrder::kLowerIsBetter, flags.data(), 4, w.data());
  CHECK(w[0] == Approx(0.5).epsilon(1e-6));
  CHECK(w[1] == Approx(0.0).margin(1e-7));

  config.gamma_position = config.gamma_confidence = config.gamma_consistency = 0;
  CHECK_THROWS_AS(config.validate(), ConfigError);
  config.gamma_position = -1;
  CHECK_THROWS_AS(config.validate(), ConfigError);
}

TEST_CASE("Ranking distillation loss: value and gradients match the formula and finite differences",
          "[distill][dllm2rec][gradcheck][loss]") {
  Rng rng(11);
  const Index b_count = 5, d = 4, n = 9, k = 3;
  for (bool with_bias : {true, false}) {
    for (bool reference_negative : {false, true}) {
      CAPTURE(with_bias, reference_negative);
      Matrix<double> h = test::random_matrix<double>(b_count, d, rng);
      Matrix<double> w_items = test::random_matrix<double>(n, d, rng, 0.7);
      std::vector<double> bias(n);
      for (auto& b : bias) b = rng.normal();
      std::vector<ItemId> candidates{1, 2, 3, 4, 4, 5, 9, 8, 7, 2, 6, 1, 3, 3, 5};  // repeats included
      std::vector<ItemId> negatives{6, 2, 0, 9, 1};                                 // a row without one; one equal to a candidate
      std::vector<double> weights(b_count * k);
      for (Index b = 0; b < b_count; ++b) {
        double t = 0;
        for (Index j = 0; j < k; ++j) t += weights[b * k + j] = 0.1 + rng.uniform();
        for (Index j = 0; j < k; ++j) weights[b * k + j] /= t;
      }
      loss::RankingDistillationLoss<double> rd;
      rd.reference_negative = reference_negative;
      rd.weight = 0.7;
      Matrix<double> grad_h, grad_w;
      std::vector<double> grad_b;
      auto evaluate = [&]() {
        nn::HeadWeights<double> head{ConstMatrixMap<double>(w_items.data(), n, d), with_bias ? bias.data() : nullptr};
        grad_h.setZero(b_count, d);
        grad_w.setZero(n, d);
        grad_b.assign(n, 0.0);
        nn::HeadGradients<double> grads{MatrixMap<double>(grad_w.data(), n, d), with_bias ? grad_b.data() : nullptr};
        return static_cast<double>(rd(h, head, k, candidates, weights, negatives, grad_h, grads));
      };
      const double value = evaluate();
      // The formula, written out.
      auto softplus = [](double x) { return std::log1p(std::exp(x)); };
      double expected = 0;
      for (Index b = 0; b < b_count; ++b) {
        auto z = [&](ItemId i) { return h.row(b).dot(w_items.row(i - 1)) + (with_bias ? bias[i - 1] : 0.0); };
        double row_weight = 0;
        for (Index j = 0; j < k; ++j) {
          expected += weights[b * k + j] * softplus(-z(candidates[b * k + j]));
          row_weight += weights[b * k + j];
        }
        if (negatives[b] != 0) expected += row_weight * softplus(z(negatives[b]) - (reference_negative ? 1.0 : 0.0));
      }
      CHECK(value == Approx(expected / b_count).epsilon(1e-12));
      const Matrix<double> gh = grad_h, gw = grad_w;
      const std::vector<double> gb = grad_b;
      // Analytic gradients (scaled by weight = 0.7) against differences of weight * L.
      auto scaled = [&]() { return rd.weight * evaluate(); };
      CHECK(test::max_gradient_error<double>(scaled, h.data(), gh.data(), h.size()) < 1e-6);
      CHECK(test::max_gradient_error<double>(scaled, w_items.data(), gw.data(), w_items.size()) < 1e-6);
      if (with_bias) CHECK(test::max_gradient_error<double>(scaled, bias.data(), gb.data(), n) < 1e-6);
      CHECK(gh.cwiseAbs().maxCoeff() > 0.0);
    }
  }
  // Bad input.
  loss::RankingDistillationLoss<double> rd;
  Matrix<double> h = Matrix<double>::Zero(2, 3), items = Matrix<double>::Zero(4, 3), gh(2, 3), gw(4, 3);
  nn::HeadWeights<double> head{ConstMatrixMap<double>(items.data(), 4, 3), nullptr};
  nn::HeadGradients<double> grads{MatrixMap<double>(gw.data(), 4, 3), nullptr};
  CHECK_THROWS_AS(rd(h, head, 2, {1, 2, 3}, {0.5, 0.5, 0.5, 0.5}, {1, 2}, gh, grads), ShapeError);
  CHECK_THROWS_WITH(rd(h, head, 2, {1, 2, 3, 5}, {0.5, 0.5, 0.5, 0.5}, {1, 2}, gh, grads), Catch::Contains("candidate item 5"));
  CHECK_THROWS_WITH(rd(h, head, 2, {1, 2, 3, 4}, {0.5, 0.5, 0.5, 0.5}, {1, -1}, gh, grads), Catch::Contains("negative item -1"));
}

namespace {

/// The term's gradient check on one model: L = the term alone (the base objective's negatives come
/// with the batch), analytic gradients of every model parameter against central differences.
template <typename Model>
void check_term_gradients(Model& model, const data::ExampleSplit& split, Index k, bool reference_negative, double dros_alpha = 0.0,
                          bool dros_term = false) {
  const auto signals = std::make_shared<const distill::RankingSignals>(distill::compute_ranking_signals(model, split, k));
  distill::RankingDistillationConfig config;
  config.candidates = k;
  config.weight = 0.6;
  config.reference_negative = reference_negative;
  config.weights.gamma_consistency = 0.0;  // a step function of the scores: kept out of the finite differences
  config.dros_alpha = dros_alpha;
  config.dros_beta = 0.7;
  std::unique_ptr<train::LossTerm<Model>> owned;
  if (dros_term) {
    owned = std::make_unique<distill::DROSTerm<Model>>(split, distill::DROSConfig{0.8, 0.7});
  } else {
    owned = std::make_unique<distill::RankingDistillation<Model>>(signals, split, config);
  }
  auto& term = *owned;
  const data::TrainingBatch batch = first_batch(split, model.max_length(), 6);
  typename Model::Workspace ws;
  train::StepBuffers<Model> buffers;
  auto& params = model.parameters();
  auto total_loss = [&]() {
    Rng dropout_rng(9);
    const auto u = model.forward_train(batch, dropout_rng, ws);
    buffers.begin(u, ws, true);
    Rng term_rng(3);
    auto ctx = buffers.context(model, ws, batch, split, u, term_rng, batch.num_negatives());
    const double l = term.compute(ctx);
    buffers.finish(ws);
    return l;
  };
  params.zero_grad();
  const double loss = total_loss();
  CHECK(loss > 0.0);
  model.backward(buffers.grad_outputs(), ws);
  const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
  CHECK(grads.cwiseAbs().maxCoeff() > 0.0);
  const double error = test::max_gradient_error<double>(total_loss, params.values(), grads.data(), params.buffer_size(), 500);
  CHECK(error < 1e-6);
  const auto report = term.take_report();
  CHECK(report.count(dros_term ? "dro" : "rd") == 1);
  if (dros_alpha > 0) CHECK(report.count("dro") == 1);
}

}  // namespace

TEST_CASE("Ranking distillation term: gradients through GRU4Rec (untied head) and SASRec (tied) match finite differences",
          "[distill][dllm2rec][gradcheck]") {
  const auto log = small_log();
  const data::ExampleSplit split = data::every_prefix(log);
  Rng rng(5);
  for (bool reference_negative : {false, true}) {
    CAPTURE(reference_negative);
    models::GRU4Rec<double> gru(gru_config(split.num_items));
    gru.initialize(rng);
    gru.parameters().value(gru.parameters().find("item_embedding.weight")) *= 30.0;
    check_term_gradients(gru, split, 4, reference_negative);
    models::SASRec<double> sasrec(sasrec_config(split.num_items));
    sasrec.initialize(rng);
    check_term_gradients(sasrec, split, 4, reference_negative);
    // With the reference's DRO part inside the ranking loss, and DROS alone.
    check_term_gradients(gru, split, 4, reference_negative, 0.9);
    check_term_gradients(sasrec, split, 4, reference_negative, 0.9);
    check_term_gradients(gru, split, 4, reference_negative, 0.0, true);
    auto untied = sasrec_config(split.num_items);
    untied.head = nn::HeadKind::kUntied;
    models::SASRec<double> sasrec_untied(untied);
    sasrec_untied.initialize(rng);
    check_term_gradients(sasrec_untied, split, 4, reference_negative, 0.0, true);
  }
}

TEST_CASE("DROS loss: the reference's formula, stable for large logits, gradients by finite differences", "[distill][dllm2rec][dros][loss]") {
  Rng rng(12);
  const Index n = 7;
  std::vector<double> counts{0, 5, 0, 2, 9, 1, 0, 3};
  const auto ps = loss::dros_propensities(counts);
  REQUIRE(ps.size() == 7);
  CHECK(ps[0] == Approx(std::pow(6.0 / 27.0, 0.05)));
  loss::DROS<double> dros;
  dros.propensity = ps;
  dros.beta = 0.8;
  std::vector<double> z(n);
  for (auto& v : z) v = 1.5 * rng.normal();
  const std::vector<ItemId> targets{3, 6, 3};
  const std::vector<double> coef{0.5, 0.2, 0.3};
  // The reference's expression: log(Σ_j exp(ps z²/β) - exp(ps_t z_t²/β) + exp(ps_t (z_t-1)²/β) + 1e-24).
  auto reference = [&](const std::vector<double>& x) {
    double total = 0;
    for (std::size_t k = 0; k < targets.size(); ++k) {
      const auto t = static_cast<std::size_t>(targets[k] - 1);
      double sum = 0;
      for (Index j = 0; j < n; ++j) sum += std::exp(ps[j] * x[j] * x[j] / 0.8);
      sum += -std::exp(ps[t] * x[t] * x[t] / 0.8) + std::exp(ps[t] * (x[t] - 1) * (x[t] - 1) / 0.8) + 1e-24;
      total += coef[k] * std::log(sum);
    }
    return total;
  };
  std::vector<double> g(n, 0.0), scratch;
  const double value = dros.row(z.data(), targets.data(), coef.data(), 3, g.data(), scratch);
  CHECK(value == Approx(reference(z)).epsilon(1e-12));
  for (Index j = 0; j < n; ++j) {
    auto plus = z, minus = z;
    plus[j] += 1e-6;
    minus[j] -= 1e-6;
    CHECK(g[j] == Approx((reference(plus) - reference(minus)) / 2e-6).epsilon(1e-5).margin(1e-8));
  }
  // One target: the same as the reference too.
  std::vector<double> g1(n, 0.0);
  const double one = 1.0;
  const double single = dros.row(z.data(), targets.data(), &one, 1, g1.data(), scratch);
  double sum = 0;
  for (Index j = 0; j < n; ++j) sum += j == 2 ? std::exp(ps[2] * (z[2] - 1) * (z[2] - 1) / 0.8) : std::exp(ps[j] * z[j] * z[j] / 0.8);
  CHECK(single == Approx(std::log(sum)).epsilon(1e-12));
  // Logits whose squares overflow exp in float: finite loss and gradients.
  loss::DROS<float> dros_f;
  dros_f.propensity.assign(ps.begin(), ps.end());
  std::vector<float> big{40.f, -35.f, 12.f, 0.f, 50.f, -3.f, 1.f}, gf(n, 0.f);
  std::vector<double> scratch_f;
  const float onef = 1.f;
  const ItemId t = 5;
  const double l = dros_f.row(big.data(), &t, &onef, 1, gf.data(), scratch_f);
  CHECK(std::isfinite(l));
  for (float v : gf) CHECK(std::isfinite(v));
  const ItemId bad = 9;
  CHECK_THROWS_AS(dros_f.row(big.data(), &bad, &onef, 1, gf.data(), scratch_f), ShapeError);
}

TEST_CASE("Ranking distillation term: consistency flags are the student's full-catalogue top-K, negatives without bce",
          "[distill][dllm2rec]") {
  const auto log = small_log();
  const data::ExampleSplit split(data::leave_one_out(log));
  auto config_no_dropout = gru_config(split.num_items);
  config_no_dropout.dropout = 0.0;
  models::GRU4Rec<float> model(config_no_dropout);
  Rng rng(2);
  model.initialize(rng);
  model.parameters().value(model.parameters().find("item_embedding.weight")) *= 30.0;
  const Index k = 5;
  // Signals that hold the student's own ranks 1, 3, 5, 7 and 9: ranks 1, 3 and 5 are in its top 5.
  const auto own = distill::compute_ranking_signals(model, split, 2 * k);
  auto mixed = std::make_shared<distill::RankingSignals>(k, distill::ScoreOrder::kHigherIsBetter, "test");
  for (Index e = 0; e < own.num_examples(); ++e) {
    std::vector<ItemId> items;
    std::vector<float> scores;
    for (Index r = 0; r < 2 * k; r += 2) items.push_back(own.items(e)[r]), scores.push_back(own.scores(e)[r]);
    mixed->add(own.example_ids()[static_cast<std::size_t>(e)], items.data(), scores.data());
  }
  std::shared_ptr<const distill::RankingSignals> signals = mixed;
  distill::RankingDistillationConfig config;
  config.candidates = k;
  config.weights.gamma_position = 0, config.weights.gamma_confidence = 0, config.weights.gamma_consistency = 1;
  distill::RankingDistillation<models::GRU4Rec<float>> term(signals, split, config);
  const data::TrainingBatch batch = first_batch(split, model.max_length(), 16);
  models::GRU4Rec<float>::Workspace ws;
  train::StepBuffers<models::GRU4Rec<float>> buffers;
  Rng train_rng(1);
  const auto u = model.forward_train(batch, train_rng, ws);
  buffers.begin(u, ws, true);
  // No negatives from the base objective (as under softmax): the term draws its own.
  auto ctx = buffers.context(model, ws, batch, split, u, train_rng, 0);
  term.compute(ctx);
  const auto report = term.take_report();
  REQUIRE(report.count("agreement") == 1);
  // Brute force: the student's top-K at each sequence's newest position, by sorting all scores.
  const auto head = model.output_weights();
  double agree = 0;
  for (Index s = 0; s < ctx.num_sequences(); ++s) {
    const auto hs = ctx.newest_outputs.row(s);
    std::vector<std::pair<float, ItemId>> all;
    for (ItemId i = 1; i <= split.num_items; ++i) all.emplace_back(head.score(hs, i), i);
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    const Index e = signals->find(ctx.example(s).id);
    for (Index j = 0; j < k; ++j) {
      const ItemId c = signals->items(e)[j];
      for (Index r = 0; r < k; ++r) agree += all[static_cast<std::size_t>(r)].second == c ? 1.0 : 0.0;
    }
  }
  CHECK(report.at("agreement") == Approx(agree / static_cast<double>(ctx.num_sequences() * k)).epsilon(1e-6));
  CHECK(report.at("agreement") == Approx(0.6));
}

TEST_CASE("Exported rankings are each example's top-K and round-trip through the teacher-signal file", "[distill][dllm2rec][io]") {
  auto log = small_log();
  // Raw ids far from the dense ones, so a missing mapping would show.
  for (auto& raw : log.item_raw_ids) raw = raw < 0 ? raw : 1000 + 7 * raw;
  const data::ExampleSplit split = data::every_prefix(log);
  models::SASRec<float> model(sasrec_config(split.num_items));
  Rng rng(4);
  model.initialize(rng);
  const Index k = 6;
  const auto ranking = distill::compute_ranking_signals(model, split, k);
  REQUIRE(ranking.num_examples() == static_cast<Index>(split.train.size()));
  REQUIRE(ranking.order() == distill::ScoreOrder::kHigherIsBetter);
  // Example 7: its top-K by brute force over the encoded history.
  const auto& example = split.train[7];
  Matrix<float> user(1, model.output_weights().dim());
  models::SASRec<float>::Workspace ws;
  model.encode({split.history(example)}, user, ws);
  std::vector<std::pair<float, ItemId>> all;
  for (ItemId i = 1; i <= split.num_items; ++i) all.emplace_back(model.output_weights().score(user.row(0), i), i);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  const Index e = ranking.find(example.id);
  for (Index r = 0; r < k; ++r) {
    CHECK(ranking.items(e)[r] == all[static_cast<std::size_t>(r)].second);
    CHECK(ranking.scores(e)[r] == Approx(all[static_cast<std::size_t>(r)].first).epsilon(1e-5));
  }
  // Save with raw ids, load back, map back.
  const distill::ItemIdMap items(log.item_raw_ids);
  const auto embeddings = distill::model_item_embeddings(model);
  REQUIRE(embeddings.num_items() == split.num_items);
  const auto dir = test::temp_dir("ranking_signals");
  const auto path = (dir / "signals.safetensors").string();
  distill::save_ranking_signals(path, &ranking, &embeddings, items);
  {
    const io::SafetensorsReader reader(path);
    const auto raw = reader.read_integers("topk_items");
    CHECK(raw[0] == items.raw(ranking.items(0)[0]));
    CHECK(raw[0] >= 1000);
  }
  const auto loaded = distill::load_ranking_signals(path, items);
  REQUIRE(loaded.num_examples() == ranking.num_examples());
  REQUIRE(loaded.k() == k);
  CHECK(loaded.order() == ranking.order());
  for (Index x = 0; x < ranking.num_examples(); ++x) {
    REQUIRE(loaded.example_ids()[x] == ranking.example_ids()[x]);
    for (Index r = 0; r < k; ++r) {
      REQUIRE(loaded.items(x)[r] == ranking.items(x)[r]);
      REQUIRE(loaded.scores(x)[r] == ranking.scores(x)[r]);
    }
  }
  CHECK(loaded.match(split, k).size() == split.train.size());
  const auto loaded_embeddings = distill::load_teacher_item_embeddings(path, items);
  CHECK(loaded_embeddings.table == embeddings.table);
  // A file of embeddings only, rows in dense order without item_ids.
  io::SafetensorsWriter writer;
  writer.set_metadata("format", distill::kTeacherSignalsFormat);
  writer.add("item_embeddings", embeddings.table);
  const auto plain = (dir / "plain.safetensors").string();
  writer.write(plain);
  CHECK(distill::load_teacher_item_embeddings(plain, items).table == embeddings.table);
  CHECK_THROWS_WITH(distill::load_ranking_signals(plain, items), Catch::Contains("topk_items") && Catch::Contains("plain.safetensors"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Malformed ranking signals give clear errors naming the file, tensor and example", "[distill][dllm2rec][io]") {
  const auto log = small_log();
  const data::ExampleSplit split = data::every_prefix(log);
  const distill::ItemIdMap items(log.item_raw_ids);
  const auto dir = test::temp_dir("bad_ranking");
  const auto e_count = static_cast<std::int64_t>(split.train.size());
  const std::int64_t k = 3;
  std::vector<std::int64_t> ids(e_count), top(e_count * k);
  std::vector<float> scores(e_count * k);
  for (std::int64_t e = 0; e < e_count; ++e) {
    ids[e] = split.train[e].id;
    for (std::int64_t r = 0; r < k; ++r) {
      top[e * k + r] = items.raw(static_cast<ItemId>(1 + (e + r) % split.num_items));
      scores[e * k + r] = static_cast<float>(r) * 0.5f;  // distances, ascending
    }
  }
  auto write = [&](const std::string& name, std::vector<std::int64_t> ex, std::vector<std::int64_t> it, std::vector<float> sc,
                   std::vector<std::int64_t> shape, const std::string& order = "lower-is-better") {
    io::SafetensorsWriter writer;
    writer.set_metadata("format", distill::kTeacherSignalsFormat);
    writer.set_metadata("score_order", order);
    writer.add("example_ids", ex);
    writer.add("topk_items", it, shape);
    writer.add("topk_scores", sc.data(), shape);
    const auto path = (dir / name).string();
    writer.write(path);
    return path;
  };
  const auto good = write("good.safetensors", ids, top, scores, {e_count, k});
  REQUIRE(distill::load_ranking_signals(good, items).match(split, 3).size() == split.train.size());
  // K larger than the file holds.
  CHECK_THROWS_WITH(distill::load_ranking_signals(good, items).match(split, 4), Catch::Contains("good.safetensors") && Catch::Contains("holds 3"));
  // Example keys that do not match the data: one id changed, one row missing.
  auto bad_ids = ids;
  bad_ids[5] = 99999;
  const auto keys = write("keys.safetensors", bad_ids, top, scores, {e_count, k});
  CHECK_THROWS_WITH(distill::load_ranking_signals(keys, items).match(split, 3), Catch::Contains("keys.safetensors") && Catch::Contains("example id"));
  const auto fewer = write("fewer.safetensors", std::vector<std::int64_t>(ids.begin(), ids.end() - 1),
                           std::vector<std::int64_t>(top.begin(), top.end() - k), std::vector<float>(scores.begin(), scores.end() - k),
                           {e_count - 1, k});
  CHECK_THROWS_AS(distill::load_ranking_signals(fewer, items).match(split, 3), FormatError);
  // Row count disagreeing with the ids.
  CHECK_THROWS_WITH(distill::load_ranking_signals(write("rows.safetensors", std::vector<std::int64_t>(ids.begin(), ids.end() - 1), top, scores,
                                                        {e_count, k}),
                                                  items),
                    Catch::Contains("topk_items") && Catch::Contains("rows.safetensors"));
  // An item id the data does not have.
  auto unknown = top;
  unknown[4] = 777777;
  CHECK_THROWS_WITH(distill::load_ranking_signals(write("item.safetensors", ids, unknown, scores, {e_count, k}), items),
                    Catch::Contains("item.safetensors") && Catch::Contains("777777") && Catch::Contains("topk_items"));
  // NaN and infinite scores.
  auto nan = scores;
  nan[7] = std::nanf("");
  CHECK_THROWS_WITH(distill::load_ranking_signals(write("nan.safetensors", ids, top, nan, {e_count, k}), items),
                    Catch::Contains("nan.safetensors") && Catch::Contains("topk_scores"));
  auto inf = scores;
  inf[2] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(distill::load_ranking_signals(write("inf.safetensors", ids, top, inf, {e_count, k}), items), FormatError);
  // Scores not sorted best first for the declared order (distances declared as scores).
  CHECK_THROWS_WITH(distill::load_ranking_signals(write("order.safetensors", ids, top, scores, {e_count, k}, "higher-is-better"), items),
                    Catch::Contains("not sorted best first"));
  CHECK_THROWS_AS(distill::load_ranking_signals(write("badorder.safetensors", ids, top, scores, {e_count, k}, "sideways"), items), FormatError);
  auto dup = ids;
  dup[1] = dup[0];
  CHECK_THROWS_WITH(distill::load_ranking_signals(write("dup.safetensors", dup, top, scores, {e_count, k}), items), Catch::Contains("appears twice"));

  // Embeddings of the wrong item count or width.
  Matrix<float> table = Matrix<float>::Ones(split.num_items - 1, 5);
  io::SafetensorsWriter writer;
  writer.set_metadata("format", distill::kTeacherSignalsFormat);
  writer.add("item_embeddings", table);
  const auto short_table = (dir / "short.safetensors").string();
  writer.write(short_table);
  CHECK_THROWS_WITH(distill::load_teacher_item_embeddings(short_table, items),
                    Catch::Contains("short.safetensors") && Catch::Contains("item_embeddings"));
  distill::TeacherItemEmbeddings embeddings{Matrix<float>::Ones(split.num_items, 5), "teacher.safetensors"};
  CHECK_NOTHROW(embeddings.check(split.num_items, 5));
  CHECK_THROWS_WITH(embeddings.check(split.num_items, 6), Catch::Contains("teacher.safetensors") && Catch::Contains("5 wide"));
  CHECK_THROWS_AS(embeddings.check(split.num_items + 1), ShapeError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("The reference's rank, confidence and .npy files are read with their id conventions", "[distill][dllm2rec][io]") {
  auto log = small_log();
  const data::ExampleSplit split = data::every_prefix(log);
  // The reference's ids are 0-based item ids: a log written from its data has raw ids 0..N-1.
  for (auto& raw : log.item_raw_ids) raw = raw < 0 ? raw : raw - 1;
  const distill::ItemIdMap items(log.item_raw_ids);
  const auto n = static_cast<std::int64_t>(split.num_items);
  const auto dir = test::temp_dir("reference_ranking");
  auto write_text = [&](const std::string& name, const std::string& text) {
    const auto path = (dir / name).string();
    std::ofstream(path) << text;
    return path;
  };
  // np.savetxt writes ids as floats.
  const auto rank = write_text("myrank_train.txt", "3.000000000000000000e+00 0.000000000000000000e+00 7.0\n1 2 4\n");
  const auto confidence = write_text("confidence_train.txt", "0.25 1.5 2.0\n3.0 3.0 9.5\n");
  const auto ranking = distill::read_reference_ranking(rank, confidence, items);
  REQUIRE(ranking.num_examples() == 2);
  REQUIRE(ranking.k() == 3);
  CHECK(ranking.order() == distill::ScoreOrder::kLowerIsBetter);
  CHECK(ranking.example_ids() == std::vector<std::int64_t>{0, 1});
  CHECK(ranking.items(0)[0] == 4);  // 0-based id 3 = dense item 4
  CHECK(ranking.items(0)[1] == 1);
  CHECK(ranking.items(1)[2] == 5);
  CHECK(ranking.scores(1)[2] == 9.5f);
  // The reference's padding id (|I|) is not an item.
  CHECK_THROWS_WITH(distill::read_reference_ranking(write_text("pad.txt", "1 2 " + std::to_string(n) + "\n1 2 3\n"), confidence, items),
                    Catch::Contains("pad.txt:1") && Catch::Contains("padding"));
  CHECK_THROWS_WITH(distill::read_reference_ranking(write_text("frac.txt", "1 2.5 3\n1 2 3\n"), confidence, items),
                    Catch::Contains("frac.txt:1") && Catch::Contains("column 2"));
  CHECK_THROWS_WITH(distill::read_reference_ranking(write_text("ragged.txt", "1 2 3\n1 2\n"), confidence, items),
                    Catch::Contains("ragged.txt:2"));
  CHECK_THROWS_AS(distill::read_reference_ranking(write_text("three.txt", "1 2 3\n1 2 3\n4 5 6\n"), confidence, items), ShapeError);
  CHECK_THROWS_WITH(distill::read_reference_ranking(rank, write_text("nanconf.txt", "0.25 nan 2.0\n3.0 3.0 9.5\n"), items),
                    Catch::Contains("nanconf.txt:1"));
  CHECK_THROWS_WITH(distill::read_reference_ranking(rank, write_text("unsorted.txt", "0.25 1.5 1.0\n3.0 3.0 9.5\n"), items),
                    Catch::Contains("not sorted"));
  CHECK_THROWS_AS(distill::read_reference_ranking((dir / "missing.txt").string(), confidence, items), Error);

  // all_embeddings as .npy: row i = 0-based item id i.
  Matrix<float> table(n, 3);
  for (Index i = 0; i < n; ++i) table.row(i) << static_cast<float>(i), 1.0f, -static_cast<float>(i);
  const auto npy = (dir / "all_embeddings.npy").string();
  io::write_npy(npy, table);
  const auto embeddings = distill::read_reference_item_embeddings(npy, items);
  REQUIRE(embeddings.num_items() == split.num_items);
  CHECK(embeddings.table(0, 0) == 0.0f);  // dense item 1 = id 0
  CHECK(embeddings.table(4, 0) == 4.0f);
  const auto small = (dir / "small.npy").string();
  io::write_npy(small, Matrix<float>(table.topRows(n - 1)));
  CHECK_THROWS_WITH(distill::read_reference_item_embeddings(small, items), Catch::Contains("small.npy") && Catch::Contains("no row"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Ranking distillation trains a student towards its teacher's rankings through the trainer", "[distill][dllm2rec][train]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 500;
  synthetic.num_items = 80;
  synthetic.num_clusters = 5;
  synthetic.max_length = 12;
  synthetic.seed = 21;
  const auto log = data::generate_synthetic(synthetic);
  const data::ExampleSplit split(data::leave_one_out(log));
  // A teacher: SASRec trained with full softmax.
  auto teacher_config = sasrec_config(split.num_items);
  teacher_config.hidden_size = 16;
  teacher_config.max_length = 12;
  models::SASRec<float> teacher(teacher_config);
  Rng rng(3);
  teacher.initialize(rng);
  train::TrainerConfig training;
  training.epochs = 6;
  training.objective.objective = train::Objective::kSoftmax;
  training.adam.learning_rate = 5e-3;
  training.eval_every = 0;
  training.log = nullptr;
  train::Trainer<models::SASRec<float>>(teacher, split, training).fit();
  const Index k = 10;
  const auto signals = std::make_shared<const distill::RankingSignals>(distill::compute_ranking_signals(teacher, split, k));

  // Students: GRU4Rec with BCE, with and without the ranking term, same seed.
  auto student_config = gru_config(split.num_items);
  student_config.embedding_dim = 16;
  student_config.hidden_size = 16;
  student_config.max_length = 12;
  auto agreement_with_teacher = [&](const models::GRU4Rec<float>& student) {
    const auto student_ranking = distill::compute_ranking_signals(student, split, k);
    double agree = 0;
    for (Index e = 0; e < signals->num_examples(); ++e) {
      for (Index j = 0; j < k; ++j) {
        for (Index r = 0; r < k; ++r) agree += signals->items(e)[j] == student_ranking.items(e)[r] ? 1.0 : 0.0;
      }
    }
    return agree / static_cast<double>(signals->num_examples() * k);
  };
  training.objective.objective = train::Objective::kBce;
  training.epochs = 5;
  training.adam.learning_rate = 3e-3;
  models::GRU4Rec<float> plain(student_config), distilled(student_config);
  Rng init_a(8), init_b(8);
  plain.initialize(init_a);
  distilled.initialize(init_b);
  train::Trainer<models::GRU4Rec<float>>(plain, split, training).fit();
  distill::RankingDistillationConfig config;
  config.candidates = k;
  config.weights.gamma_consistency = 0.1;  // the reference's weights: the term reports the agreement
  auto term = std::make_shared<distill::RankingDistillation<models::GRU4Rec<float>>>(signals, split, config);
  train::Trainer<models::GRU4Rec<float>> trainer(distilled, split, training);
  trainer.add_term(term);
  std::vector<double> agreement, rd;
  trainer.on_epoch_end([&](const train::EpochRecord& record) {
    REQUIRE(record.terms.count("ranking.agreement") == 1);
    agreement.push_back(record.terms.at("ranking.agreement"));
    rd.push_back(record.terms.at("ranking.rd"));
    return true;
  });
  const auto summary = trainer.fit();
  REQUIRE(agreement.size() == 5);
  CHECK(rd.back() < rd.front());                // the term's loss falls
  CHECK(agreement.back() > agreement.front());  // the student's top-K turns towards the teacher's
  const double with = agreement_with_teacher(distilled), without = agreement_with_teacher(plain);
  CAPTURE(with, without);
  CHECK(with > without + 0.05);
}

namespace {

/// Embedding distillation's gradient check on one student: L = sum(outputs * R) + BCE through
/// the head; the model's and the projection's gradients against central differences.
template <typename Model>
void check_embedding_gradients(Model& model, const data::ExampleSplit& split, distill::Projector projector) {
  Rng rng(6);
  distill::TeacherItemEmbeddings teacher{test::random_matrix<float>(split.num_items, 5, rng), "teacher"};
  distill::EmbeddingDistillationConfig config;
  config.weight = 0.7;
  config.projector = projector;
  config.mlp_hidden = 4;
  distill::EmbeddingDistillation<Model> term(std::make_shared<const distill::TeacherItemEmbeddings>(teacher), model, config);
  term.initialize(rng);
  // Larger biases than the zero default, so the MLP's ReLU sees both signs everywhere.
  auto& own = *term.parameters();
  for (Index i = 0; i < own.buffer_size(); ++i) own.values()[i] += 0.3 * rng.normal();
  const data::TrainingBatch batch = first_batch(split, model.max_length(), 6);
  typename Model::Workspace ws;
  Matrix<double> r, grad_h;
  loss::SampledBinaryCrossEntropy<double> bce;
  typename loss::SampledBinaryCrossEntropy<double>::Workspace bce_ws;
  auto loss = [&](bool with_grads) {
    term.before_forward(model, batch, split);
    Rng dropout_rng(77);
    const auto h = model.forward_train(batch, dropout_rng, ws);
    if (r.size() == 0) r = test::random_matrix<double>(h.rows(), h.cols(), rng);
    grad_h.resize(h.rows(), h.cols());
    const double l = bce(h, model.output_weights(), ws.targets, ws.negatives, ws.num_negatives, grad_h,
                         with_grads ? model.output_gradients() : nn::HeadGradients<double>{}, bce_ws);
    return (h.array() * r.array()).sum() + l;
  };
  auto& params = model.parameters();
  params.zero_grad();
  own.zero_grad();
  loss(true);
  grad_h += r;
  model.backward(grad_h, ws);
  term.after_backward(model);
  const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
  const Matrix<double> own_grads = Eigen::Map<const Matrix<double>>(own.grads(), 1, own.buffer_size());
  CHECK(test::max_gradient_error<double>([&] { return loss(false); }, params.values(), grads.data(), params.buffer_size(), 400) < 1e-6);
  CHECK(test::max_gradient_error<double>([&] { return loss(false); }, own.values(), own_grads.data(), own.buffer_size(), 400) < 1e-6);
  CHECK(own_grads.cwiseAbs().maxCoeff() > 0.0);
}

}  // namespace

TEST_CASE("Embedding distillation: gradients of the student and of the projection match finite differences",
          "[distill][dllm2rec][embedding][gradcheck]") {
  const auto log = small_log();
  const data::ExampleSplit split(data::leave_one_out(log));
  for (auto projector : {distill::Projector::kLinear, distill::Projector::kMlp}) {
    CAPTURE(distill::to_string(projector));
    Rng rng(5);
    models::GRU4Rec<double> gru(gru_config(split.num_items));
    gru.initialize(rng);
    gru.parameters().value(gru.parameters().find("item_embedding.weight")) *= 30.0;
    check_embedding_gradients(gru, split, projector);
    models::SASRec<double> sasrec(sasrec_config(split.num_items));
    sasrec.initialize(rng);
    check_embedding_gradients(sasrec, split, projector);
  }
}

TEST_CASE("Embedding distillation trains through the trainer, and the folded student scores exactly as the trained one",
          "[distill][dllm2rec][embedding]") {
  const auto log = small_log(7, 300, 60);
  const data::ExampleSplit split(data::leave_one_out(log));
  auto config = gru_config(split.num_items);
  config.embedding_dim = 8;
  config.hidden_size = 8;
  models::GRU4Rec<float> student(config);
  Rng rng(1);
  student.initialize(rng);
  // A teacher table: another model's item rows.
  models::SASRec<float> other(sasrec_config(split.num_items));
  other.initialize(rng);
  const auto teacher = std::make_shared<const distill::TeacherItemEmbeddings>(distill::model_item_embeddings(other));
  auto term = std::make_shared<distill::EmbeddingDistillation<models::GRU4Rec<float>>>(teacher, student, distill::EmbeddingDistillationConfig{});
  term->initialize(rng);
  const Matrix<float> before = Eigen::Map<const Matrix<float>>(term->parameters()->values(), 1, term->parameters()->buffer_size());
  const Matrix<float> table_before = student.item_table();
  train::TrainerConfig training;
  training.epochs = 3;
  training.eval_every = 1;
  training.log = nullptr;
  train::Trainer<models::GRU4Rec<float>> trainer(student, split, training);
  trainer.add_term(term);
  REQUIRE(trainer.parameter_groups().size() == 2);
  const auto summary = trainer.fit();
  CHECK(summary.epochs.back().loss < summary.epochs.front().loss);
  const Matrix<float> after = Eigen::Map<const Matrix<float>>(term->parameters()->values(), 1, term->parameters()->buffer_size());
  CHECK((after - before).cwiseAbs().maxCoeff() > 0.0f);  // the projection was trained
  // The student as trained (with offsets) against the folded one: the same scores, bit for bit.
  const auto trained = eval::evaluate_full_ranking(student, split, eval::EvalSplit::kValid);
  std::vector<Sequence> histories;
  for (const auto& e : split.valid) histories.push_back(split.history(e));
  Matrix<float> with_offsets(static_cast<Index>(histories.size()), student.output_weights().dim());
  models::GRU4Rec<float>::Workspace ws;
  student.encode(histories, with_offsets, ws);
  CHECK(student.input_item_embedding().has_offsets());
  term->fold(student);
  CHECK_FALSE(student.input_item_embedding().has_offsets());
  CHECK((student.item_table() - table_before).cwiseAbs().maxCoeff() > 0.0f);
  Matrix<float> folded(with_offsets.rows(), with_offsets.cols());
  student.encode(histories, folded, ws);
  CHECK(folded == with_offsets);
  CHECK(eval::evaluate_full_ranking(student, split, eval::EvalSplit::kValid).value("NDCG@10") == trained.value("NDCG@10"));
  CHECK_THROWS_AS(term->fold(student), ConfigError);  // spent
  // Through a checkpoint: the folded student needs no teacher.
  const auto dir = test::temp_dir("folded");
  const auto path = (dir / "student.safetensors").string();
  io::save_checkpoint(student, path);
  const auto loaded = io::load_checkpoint<models::GRU4Rec<float>>(path);
  Matrix<float> reloaded(with_offsets.rows(), with_offsets.cols());
  loaded.encode(histories, reloaded, ws);
  CHECK(reloaded == with_offsets);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Embedding distillation checks the teacher table and refuses to fold into a tied head", "[distill][dllm2rec][embedding]") {
  const auto log = small_log();
  const data::ExampleSplit split(data::leave_one_out(log));
  models::SASRec<float> tied(sasrec_config(split.num_items));
  Rng rng(2);
  tied.initialize(rng);
  auto wrong = std::make_shared<const distill::TeacherItemEmbeddings>(
      distill::TeacherItemEmbeddings{Matrix<float>::Ones(split.num_items + 3, 4), "teacher.safetensors"});
  CHECK_THROWS_WITH(distill::EmbeddingDistillation<models::SASRec<float>>(wrong, tied, {}),
                    Catch::Contains("teacher.safetensors") && Catch::Contains("items"));
  auto right = std::make_shared<const distill::TeacherItemEmbeddings>(
      distill::TeacherItemEmbeddings{Matrix<float>::Ones(split.num_items, 4), "teacher.safetensors"});
  distill::EmbeddingDistillationConfig bad;
  bad.weight = 0;
  CHECK_THROWS_AS(distill::EmbeddingDistillation<models::SASRec<float>>(right, tied, bad), ConfigError);
  distill::EmbeddingDistillation<models::SASRec<float>> term(right, tied, {});
  term.initialize(rng);
  CHECK_THROWS_WITH(term.fold(tied), Catch::Contains("tied"));
}
