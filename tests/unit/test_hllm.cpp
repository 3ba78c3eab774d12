#include "distillrec/data/cold_start.hpp"
#include "distillrec/data/examples.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/hllm.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/registry.hpp"
#include "distillrec/train/hllm_trainer.hpp"

#include "distillrec/serve/recommender.hpp"

#include "support.hpp"

#include <filesystem>
#include <numeric>
#include <sstream>

using namespace distillrec;

namespace {

models::HllmConfig tiny_hllm_config() {
  auto c = models::HllmConfig::small(/*num_items=*/6, /*vocab_size=*/13, /*hidden=*/8, /*item_layers=*/1, /*user_layers=*/2, /*heads=*/2);
  c.item_llm.num_kv_heads = 1;
  c.item_llm.max_positions = 8;
  c.user_llm.max_positions = 8;
  c.max_length = 4;
  c.max_text_tokens = 3;
  return c;
}

std::vector<std::vector<int>> tiny_hllm_texts() {
  // Item 4's text is longer than max_text_tokens (cut to {1, 8, 9}).
  return {{1, 4}, {1, 5, 6}, {1, 7}, {1, 8, 9, 2, 12}, {1, 10}, {1, 11, 3}};
}

}  // namespace

TEST_CASE("HLLM training step: gradients of the item LLM, the user LLM and the temperature match finite differences",
          "[models][hllm][gradcheck]") {
  models::Hllm<double> hllm(tiny_hllm_config());
  Rng rng(3);
  hllm.initialize(rng);
  hllm.set_item_tokens(tiny_hllm_texts());
  CHECK(hllm.item_tokens()[3] == std::vector<int>{1, 8, 9});
  const std::vector<Sequence> windows{{1, 2, 3}, {4, 5, 2, 6, 1}, {6, 3}};
  const std::vector<ItemId> pool{5, 6, 3, 5};
  loss::InfoNce<double> nce;
  typename models::Hllm<double>::TrainWorkspace ws;
  auto& params = hllm.parameters();
  for (bool every : {true, false}) {
    double log_scale = 1.5, grad_log_scale = 0.0;
    loss::InfoNceStats stats;
    params.zero_grad();
    const double value = hllm.train_step(windows, every, pool, nce, log_scale, &grad_log_scale, ws, &stats);
    CHECK(value > 0.0);
    CHECK(stats.rows == (every ? 2 + 4 + 1 : 3));
    const double dl = grad_log_scale;
    const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
    auto loss = [&]() {
      double unused = 0.0;
      params.zero_grad();
      return hllm.train_step(windows, every, pool, nce, log_scale, &unused, ws);
    };
    // Both LLMs receive gradients; the item table and its norms do not (they are not trained).
    CHECK(grads.cwiseAbs().maxCoeff() > 0.0);
    CHECK(params.grad(params.find("item_llm.item_token.weight")).cwiseAbs().maxCoeff() > 0.0);
    CHECK(params.grad(params.find("user_llm.final_norm.weight")).cwiseAbs().maxCoeff() > 0.0);
    CHECK(params.grad(params.find("item_table.weight")).isZero());
    CHECK(params.find("user_llm.embed_tokens.weight") < 0);
    CHECK(test::max_gradient_error<double>(loss, params.values(), grads.data(), params.buffer_size(), 600) < 1e-6);
    CHECK(test::max_gradient_error<double>(loss, &log_scale, &dl, 1) < 1e-6);
  }
}

TEST_CASE("HLLM scoring: the user vector is the user LLM's normalised last state over the item LLM's embeddings",
          "[models][hllm]") {
  models::Hllm<double> hllm(tiny_hllm_config());
  Rng rng(5);
  hllm.initialize(rng);
  hllm.set_item_tokens(tiny_hllm_texts());
  typename models::Hllm<double>::Workspace ws;
  Matrix<double> out(2, 8);
  // The table follows the weights: stale until refreshed.
  CHECK_THROWS_WITH(hllm.encode({{1, 2}}, out.topRows(1), ws), Catch::Contains("refresh_item_table"));
  hllm.refresh_item_table(/*batch=*/4);
  REQUIRE(hllm.item_table_ready());

  // The same computation written out: item embeddings from the item LLM, the user LLM over the
  // newest max_length (4) of them, its last state normalised.
  const std::vector<Sequence> histories{{2, 5, 1, 3, 6, 4}, {3}};
  models::Hllm<double>::Llama::Workspace item_ws, user_ws;
  Matrix<double> items(6, 8);
  hllm.item_llm().encode_items(hllm.item_tokens(), items, item_ws);
  hllm.encode(histories, out, ws);
  for (std::size_t s = 0; s < histories.size(); ++s) {
    const auto& h = histories[s];
    const std::size_t len = std::min<std::size_t>(h.size(), 4);
    Matrix<double> x(static_cast<Index>(len), 8);
    for (std::size_t k = 0; k < len; ++k) x.row(static_cast<Index>(k)) = items.row(h[h.size() - len + k] - 1);
    nn::SequenceLayout layout;
    layout.add(static_cast<Index>(len));
    const Matrix<double> states = hllm.user_llm().forward_embeddings(x, layout, user_ws);
    const Eigen::RowVectorXd expected = states.row(static_cast<Index>(len) - 1).normalized();
    CHECK((out.row(static_cast<Index>(s)) - expected).cwiseAbs().maxCoeff() < 1e-12);
  }
  // The head is the normalised table: scores are cosines.
  const auto head = hllm.output_weights();
  REQUIRE(head.num_items() == 6);
  CHECK(head.bias == nullptr);
  for (Index i = 0; i < 6; ++i) {
    CHECK(std::abs(head.weight.row(i).norm() - 1.0) < 1e-12);
    CHECK((head.weight.row(i) - items.row(i).normalized()).cwiseAbs().maxCoeff() < 1e-12);
  }
  // A training step changes the weights: the table is stale again.
  loss::InfoNce<double> nce;
  typename models::Hllm<double>::TrainWorkspace tws;
  double g = 0.0;
  hllm.train_step({{1, 2, 3}}, true, {4, 5}, nce, 2.0, &g, tws);
  CHECK_FALSE(hllm.item_table_ready());
}

TEST_CASE("HLLM: bad configurations, texts, sequences and histories are refused by name", "[models][hllm]") {
  auto config = tiny_hllm_config();
  config.user_llm.hidden_size = 16;
  CHECK_THROWS_WITH(models::Hllm<float>(config), Catch::Contains("must be equal"));
  config = tiny_hllm_config();
  config.max_text_tokens = 8;
  CHECK_THROWS_WITH(models::Hllm<float>(config), Catch::Contains("max_text_tokens 8 + [ITEM] exceeds"));
  config = tiny_hllm_config();
  config.max_length = 9;
  CHECK_THROWS_WITH(models::Hllm<float>(config), Catch::Contains("max_length 9 exceeds"));
  config = tiny_hllm_config();
  config.item_llm.vocab_size = 0;
  CHECK_THROWS_WITH(models::Hllm<float>(config), Catch::Contains("needs a token table"));

  models::Hllm<float> hllm(tiny_hllm_config());
  Rng rng(1);
  hllm.initialize(rng);
  loss::InfoNce<float> nce;
  typename models::Hllm<float>::TrainWorkspace ws;
  float g = 0.0f;
  CHECK_THROWS_WITH(hllm.refresh_item_table(), Catch::Contains("needs the item texts"));
  CHECK_THROWS_WITH(hllm.train_step({{1, 2}}, true, {3}, nce, 2.0f, &g, ws), Catch::Contains("needs the item texts"));
  CHECK_THROWS_WITH(hllm.set_item_tokens({{1}, {2}}), Catch::Contains("2 item texts for 6 items"));
  auto texts = tiny_hllm_texts();
  texts[2].clear();
  CHECK_THROWS_WITH(hllm.set_item_tokens(texts), Catch::Contains("item 3 has an empty token sequence"));
  texts = tiny_hllm_texts();
  texts[4] = {1, 13};
  CHECK_THROWS_WITH(hllm.set_item_tokens(texts), Catch::Contains("item 5 has token 13, outside 0..12"));
  hllm.set_item_tokens(tiny_hllm_texts());
  CHECK_THROWS_WITH(hllm.train_step({{1}}, true, {3}, nce, 2.0f, &g, ws), Catch::Contains("training sequence 0 has 1 items"));
  CHECK_THROWS_WITH(hllm.train_step({{1, 2, 3, 4, 5, 6}}, true, {3}, nce, 2.0f, &g, ws), Catch::Contains("expected 2..5"));
  CHECK_THROWS_WITH(hllm.train_step({{1, 7}}, true, {3}, nce, 2.0f, &g, ws), Catch::Contains("item id 7, expected 1..6"));
  CHECK_THROWS_WITH(hllm.train_step({{1, 2}}, true, {0}, nce, 2.0f, &g, ws), Catch::Contains("negative 0 has item id 0"));
  CHECK_THROWS_WITH(hllm.train_step({{1, 2}}, true, {}, nce, 2.0f, &g, ws), Catch::Contains("at least one negative"));
  hllm.refresh_item_table();
  typename models::Hllm<float>::Workspace sws;
  Matrix<float> out(1, 8);
  CHECK_THROWS_WITH(hllm.encode({{}}, out, sws), Catch::Contains("history 0 is empty"));
  CHECK_THROWS_WITH(hllm.encode({{1, 9}}, out, sws), Catch::Contains("item id 9, expected 1..6"));
  CHECK_THROWS_WITH(hllm.encode({{1}, {2}}, out, sws), Catch::Contains("HLLM user vectors"));
}

TEST_CASE("HLLM checkpoints: the configuration and the item table round-trip, and serving needs no texts", "[models][hllm][io]") {
  const auto dir = test::temp_dir("hllm_checkpoint");
  models::Hllm<float> hllm(tiny_hllm_config());
  Rng rng(11);
  hllm.initialize(rng);
  hllm.set_item_tokens(tiny_hllm_texts());
  // A table older than the weights is neither saved nor scored with.
  const auto stale = (dir / "stale.safetensors").string();
  CHECK_THROWS_WITH(io::save_checkpoint(hllm, stale), Catch::Contains("older than the weights"));
  CHECK_THROWS_WITH(hllm.output_weights(), Catch::Contains("stale"));
  hllm.refresh_item_table();
  loss::InfoNce<float> nce;
  typename models::Hllm<float>::TrainWorkspace tws;
  float g = 0.0f;
  hllm.train_step({{1, 2}}, true, {3}, nce, 2.0f, &g, tws);
  CHECK_THROWS_WITH(io::save_checkpoint(hllm, stale), Catch::Contains("older than the weights"));
  // A rejected step changes nothing: the table stays usable.
  hllm.refresh_item_table();
  CHECK_THROWS(hllm.train_step({{1, 9}}, true, {3}, nce, 2.0f, &g, tws));
  CHECK(hllm.item_table_ready());
  // Files written by other tools: a missing table, a table of non-unit rows (named with the file).
  auto write_with_table = [&](const std::string& file, float row_scale, bool zero_norms) {
    models::Hllm<float> copy(hllm.config());
    copy.parameters().copy_values_from(hllm.parameters());
    auto& p = copy.parameters();
    p.value(p.find("item_table.weight")).row(2) *= row_scale;
    if (zero_norms) p.value(p.find("item_norms.weight")).setZero();
    io::SafetensorsWriter writer;
    writer.set_metadata("format", io::kCheckpointFormat);
    writer.set_metadata("format_version", io::kCheckpointFormatVersion);
    writer.set_metadata("model", "hllm");
    writer.set_metadata("config", copy.config().to_json().dump());
    io::add_parameters(p, writer);
    writer.write(file);
  };
  const auto no_table = (dir / "no_table.safetensors").string();
  write_with_table(no_table, 1.0f, true);
  CHECK_THROWS_WITH(io::load_checkpoint<models::Hllm<float>>(no_table),
                    Catch::Contains(no_table) && Catch::Contains("no embedding for item 1"));
  const auto long_rows = (dir / "long_rows.safetensors").string();
  write_with_table(long_rows, 2.0f, false);
  CHECK_THROWS_WITH(io::load_checkpoint<models::Hllm<float>>(long_rows),
                    Catch::Contains(long_rows) && Catch::Contains("row 2 of item_table.weight (item 3) has length 2"));
  const auto path = (dir / "hllm.safetensors").string();
  io::save_checkpoint(hllm, path);
  const auto loaded = io::load_checkpoint<models::Hllm<float>>(path);
  // Programs that load whatever a checkpoint holds get an HLLM.
  const auto [name, vector] = models::with_checkpoint_model<float>(path, [](auto model) {
    using Model = std::decay_t<decltype(*model)>;
    typename Model::Workspace w;
    Matrix<float> out(1, model->output_weights().dim());
    model->encode({{1, 2, 3}}, out, w);
    return std::make_pair(std::string(Model::kModelName), out);
  });
  CHECK(name == "hllm");
  Matrix<float> direct(1, 8);
  typename models::Hllm<float>::Workspace direct_ws;
  hllm.encode({{1, 2, 3}}, direct, direct_ws);
  REQUIRE(vector.cols() == 8);
  CHECK((vector - direct).cwiseAbs().maxCoeff() == 0.0f);
  CHECK(loaded.config().to_json() == hllm.config().to_json());
  CHECK_FALSE(loaded.has_item_tokens());
  REQUIRE(loaded.item_table_ready());
  typename models::Hllm<float>::Workspace ws;
  Matrix<float> a(2, 8), b(2, 8);
  hllm.encode({{1, 2, 3}, {6}}, a, ws);
  loaded.encode({{1, 2, 3}, {6}}, b, ws);
  CHECK((a - b).cwiseAbs().maxCoeff() == 0.0f);
  // The configuration is checked when read back.
  auto json = hllm.config().to_json();
  json["user_llm"]["hidden_size"] = 16;
  CHECK_THROWS_WITH(models::HllmConfig::from_json(json), Catch::Contains("must be equal"));
  json = hllm.config().to_json();
  json.erase("item_llm");
  CHECK_THROWS_WITH(models::HllmConfig::from_json(json), Catch::Contains("HLLM configuration"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("HLLM trainer: training lowers InfoNCE and beats popularity on held-out data", "[models][hllm][train]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 700;
  synthetic.num_items = 80;
  synthetic.num_clusters = 8;
  synthetic.min_length = 6;
  synthetic.max_length = 16;
  const auto split = data::leave_one_out(data::generate_synthetic(synthetic));
  // Every item's text: BOS, a token of its own and one of the few shared ones.
  std::vector<std::vector<int>> texts;
  for (ItemId i = 1; i <= split.num_items; ++i) texts.push_back({1, 3 + static_cast<int>(i), 3 + static_cast<int>(i % 3)});
  auto config = models::HllmConfig::small(split.num_items, split.num_items + 4, /*hidden=*/16, /*item_layers=*/1, /*user_layers=*/1,
                                          /*heads=*/2);
  config.max_length = 16;
  config.max_text_tokens = 4;
  models::Hllm<float> hllm(config);
  Rng rng(42);
  hllm.initialize(rng);
  hllm.set_item_tokens(texts);
  train::HllmTrainerConfig training;
  training.epochs = 8;
  training.batch_size = 32;
  training.negatives = 64;
  training.adam.learning_rate = 5e-3;
  training.eval_every = 2;
  training.patience = 0;
  training.validation.max_users = 300;
  std::ostringstream log;
  training.log = &log;
  // The loss on fixed windows against every item, nothing filtered (the training loss itself can
  // rise at first: while the item embeddings are alike, the false-negative filter drops most
  // negatives).
  loss::InfoNceConfig unfiltered;
  unfiltered.false_negative_threshold = 1.0;
  const loss::InfoNce<float> fixed_nce(unfiltered);
  std::vector<Sequence> fixed;
  for (Index u = 0; u < 64; ++u) {
    const auto& s = split.train[static_cast<std::size_t>(u)];
    fixed.emplace_back(s.end() - std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(s.size()), 17), s.end());
  }
  std::vector<ItemId> all_items(static_cast<std::size_t>(split.num_items));
  std::iota(all_items.begin(), all_items.end(), ItemId{1});
  typename models::Hllm<float>::TrainWorkspace fixed_ws;
  float unused = 0.0f;
  const float before = hllm.train_step(fixed, true, all_items, fixed_nce, 2.0f, &unused, fixed_ws);
  train::HllmTrainer<float> trainer(hllm, split, training);
  const auto history = trainer.fit();
  INFO(log.str());
  REQUIRE(history.size() == 8);
  const float after = hllm.train_step(fixed, true, all_items, fixed_nce, 2.0f, &unused, fixed_ws);
  INFO("fixed-window InfoNCE before " << before << ", after " << after);
  CHECK(after < 0.9f * before);
  CHECK(history.back().kept_negatives > history.front().kept_negatives);
  CHECK(history[1].validation.has_value());
  CHECK_FALSE(history[0].validation.has_value());
  // The best validated epoch's weights and temperature are what fit() leaves (the step above
  // computed gradients only: the weights are unchanged, the table is refreshed).
  hllm.refresh_item_table();
  REQUIRE(trainer.best_epoch() >= 2);
  const auto& best = history[static_cast<std::size_t>(trainer.best_epoch() - 1)];
  REQUIRE(best.validation.has_value());
  for (const auto& r : history) {
    if (r.validation) CHECK(r.validation->value("NDCG@10") <= best.validation->value("NDCG@10"));
  }
  CHECK(eval::evaluate_full_ranking(hllm, split, eval::EvalSplit::kValid, training.validation).value("NDCG@10") ==
        best.validation->value("NDCG@10"));
  CHECK(std::exp(static_cast<double>(trainer.log_scale())) == Approx(best.scale).epsilon(1e-6));
  CHECK(log.str().find("valid NDCG@10") != std::string::npos);
  models::Popularity<float> popularity(split.train, split.num_items);
  const double baseline = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  const double ndcg = eval::evaluate_full_ranking(hllm, split, eval::EvalSplit::kTest).value("NDCG@10");
  INFO("HLLM NDCG@10 " << ndcg << ", popularity " << baseline);
  CHECK(ndcg > 1.3 * baseline);

  train::HllmTrainerConfig bad = training;
  bad.negatives = 0;
  CHECK_THROWS_WITH(train::HllmTrainer<float>(hllm, split, bad), Catch::Contains("negatives must be positive"));
  models::Hllm<float> no_texts(config);
  CHECK_THROWS_WITH(train::HllmTrainer<float>(no_texts, split, training), Catch::Contains("no item texts"));
}

TEST_CASE("Cold-start split: held-out items never reach training, their interactions become text-only test examples",
          "[data][cold_start]") {
  // Items 1..10; user 0: 1 2 3 4 5, user 1: 6 7 8 9 10 1, user 2: 2 2 3.
  const auto log = data::make_log({{1, 2, 3, 4, 5}, {6, 7, 8, 9, 10, 1}, {2, 2, 3}}, 10, "tiny");
  const auto a = data::cold_start_split(log, 0.2, 7);
  const auto b = data::cold_start_split(log, 0.2, 7);
  REQUIRE(a.cold_items.size() == 2);
  CHECK(a.cold_items == b.cold_items);
  CHECK(std::is_sorted(a.cold_items.begin(), a.cold_items.end()));
  CHECK(a.warm.num_items == 10);
  CHECK(a.cold.num_items == 10);
  CHECK(a.cold.protocol == "cold-start");
  CHECK(a.cold.train.empty());
  for (Index u = 0; u < a.warm.num_users(); ++u) {
    for (ItemId item : a.warm.sequence(u)) CHECK_FALSE(a.is_cold[static_cast<std::size_t>(item)]);
  }
  // Every cold interaction that follows a warm one is an example: warm history, cold target.
  Index expected = 0;
  for (const auto& s : log.sequences) {
    bool warm_seen = false;
    for (ItemId item : s) {
      if (a.is_cold[static_cast<std::size_t>(item)]) {
        expected += warm_seen ? 1 : 0;
      } else {
        warm_seen = true;
      }
    }
  }
  REQUIRE(static_cast<Index>(a.cold.test.size()) == expected);
  for (const auto& e : a.cold.test) {
    CHECK(a.is_cold[static_cast<std::size_t>(a.cold.target(e))]);
    for (ItemId item : a.cold.history(e)) CHECK_FALSE(a.is_cold[static_cast<std::size_t>(item)]);
  }
  CHECK(data::cold_start_split(log, 0.2, 8).cold_items.size() == 2);
  CHECK_THROWS_WITH(data::cold_start_split(log, 0.0), Catch::Contains("must be in (0, 1)"));
  CHECK_THROWS_WITH(data::cold_start_split(log, 1.0), Catch::Contains("must be in (0, 1)"));
  // Each user keeps to one item: whichever is held out, no warm interaction precedes it.
  CHECK_THROWS_WITH(data::cold_start_split(data::make_log({{1, 1, 1}, {2, 2, 2}}, 2, "apart"), 0.5),
                    Catch::Contains("nothing to evaluate"));
}

TEST_CASE("HLLM cold start: items never seen in training are recommended from their text", "[models][hllm][cold_start][train]") {
  // 72 items in 6 groups; a user stays within one group. An item's text names its group (and
  // itself), so a model that reads text can rank an unseen item of the user's group highly.
  const ItemId num_items = 72;
  const Index groups = 6;
  Rng rng(9);
  std::vector<Sequence> sequences;
  for (Index u = 0; u < 900; ++u) {
    const auto g = static_cast<ItemId>(rng.uniform_int(static_cast<std::uint64_t>(groups)));
    Sequence s;
    for (int k = 0; k < 8; ++k) s.push_back(1 + g + groups * static_cast<ItemId>(rng.uniform_int(static_cast<std::uint64_t>(num_items / groups))));
    sequences.push_back(std::move(s));
  }
  const auto cs = data::cold_start_split(data::make_log(sequences, num_items, "groups"), 0.1, 42);
  std::vector<std::vector<int>> texts;
  for (ItemId i = 1; i <= num_items; ++i) texts.push_back({1, 3 + static_cast<int>((i - 1) % groups), static_cast<int>(3 + groups + i - 1)});
  auto config = models::HllmConfig::small(num_items, 3 + groups + num_items, /*hidden=*/16, 1, 1, /*heads=*/2);
  config.max_length = 8;
  config.max_text_tokens = 3;
  models::Hllm<float> hllm(config);
  Rng init(1);
  hllm.initialize(init);
  hllm.set_item_tokens(texts);
  train::HllmTrainerConfig training;
  training.epochs = 6;
  training.negatives = 48;
  training.adam.learning_rate = 5e-3;
  training.eval_every = 0;
  training.log = nullptr;
  train::HllmTrainer<float>(hllm, cs.warm, training).fit();
  const double hllm_cold = eval::evaluate_full_ranking(hllm, cs.cold, eval::EvalSplit::kTest).value("NDCG@10");
  models::Popularity<float> popularity(cs.warm);
  const double popularity_cold = eval::evaluate_full_ranking(popularity, cs.cold, eval::EvalSplit::kTest).value("NDCG@10");
  INFO("cold-start NDCG@10: HLLM " << hllm_cold << ", popularity " << popularity_cold);
  // Chance for a group-aware ranking: the target is one of ~12 items of its group.
  CHECK(hllm_cold > 0.15);
  CHECK(hllm_cold > 5.0 * popularity_cold + 0.05);

  // Items added at run time from their text alone, nothing retrained: item 73 names group 0,
  // item 74 group 3. A history of group-0 items ranks 73 above where a group-3 history ranks
  // it, and the other way round for 74; every old item scores exactly as before.
  hllm.refresh_item_table();
  const auto extended = std::make_shared<const models::Hllm<float>>(hllm.with_items({{1, 3 + 0}, {1, 3 + 3}}));
  REQUIRE(extended->num_items() == 74);
  REQUIRE(extended->item_table_ready());
  REQUIRE(extended->item_tokens().size() == 74);
  const auto old_table = hllm.parameters().value(hllm.parameters().find("item_table.weight"));
  const auto new_table = extended->parameters().value(extended->parameters().find("item_table.weight"));
  CHECK((new_table.topRows(72) - old_table).cwiseAbs().maxCoeff() == 0.0f);
  serve::Recommender<models::Hllm<float>> server(extended);
  const Sequence group0{1, 7, 13, 19}, group3{4, 10, 16, 22};
  auto rank_of = [&](const Sequence& history, ItemId item) {
    const auto top = server.recommend(history, serve::RecommendOptions{70, true, nullptr});
    for (std::size_t r = 0; r < top.size(); ++r) {
      if (top[r].item == item) return static_cast<Index>(r) + 1;
    }
    return Index{71};
  };
  INFO("item 73: rank " << rank_of(group0, 73) << " for group 0, " << rank_of(group3, 73) << " for group 3; item 74: rank "
                        << rank_of(group3, 74) << " for group 3, " << rank_of(group0, 74) << " for group 0");
  CHECK(rank_of(group0, 73) < rank_of(group3, 73));
  CHECK(rank_of(group3, 74) < rank_of(group0, 74));
  CHECK(rank_of(group0, 73) <= 20);
  typename models::Hllm<float>::Workspace score_ws;
  Matrix<float> before(1, 16), after(1, 16);
  hllm.encode({group0}, before, score_ws);
  extended->encode({group0}, after, score_ws);
  CHECK((before - after).cwiseAbs().maxCoeff() == 0.0f);
  CHECK_THROWS_WITH(hllm.with_items({{1, 500}}), Catch::Contains("item 73 has token 500"));
  CHECK_THROWS_WITH(hllm.with_items({}), Catch::Contains("at least one item text"));
}
