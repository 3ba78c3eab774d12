#include "distillrec/data/synthetic.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

using namespace distillrec;

namespace {

models::SASRecConfig small_model(ItemId num_items) {
  models::SASRecConfig config;
  config.num_items = num_items;
  config.hidden_size = 32;
  config.num_blocks = 2;
  config.num_heads = 2;
  config.max_length = 20;
  config.dropout = 0.2;
  return config;
}

// The training settings of the "trains, lowers the loss and beats popularity" tests.
train::TrainerConfig small_training() {
  train::TrainerConfig config;
  config.epochs = 12;
  config.batch_size = 64;
  config.adam.learning_rate = 3e-3;
  config.eval_every = 0;
  config.log = nullptr;
  return config;
}

template <typename Split>
double popularity_test_ndcg(const Split& split) {
  models::Popularity<float> popularity(split.train, split.num_items);
  return eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
}

}  // namespace

TEST_CASE("SASRec training lowers the loss and beats popularity on held-out data, for every objective",
          "[train][trainer][sasrec]") {
  const auto split = test::small_synthetic_split();
  const double popularity_ndcg = popularity_test_ndcg(split);
  for (auto objective : {train::Objective::kBce, train::Objective::kSoftmax, train::Objective::kSampledSoftmax}) {
    CAPTURE(train::to_string(objective));
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(1);
    model.initialize(rng);
    train::TrainerConfig config = small_training();
    config.objective.objective = objective;
    config.objective.sampled_negatives = 64;
    config.eval_every = 3;
    config.patience = 0;
    std::ostringstream log;
    config.log = &log;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    const auto summary = trainer.fit();
    REQUIRE(summary.epochs.size() == 12);
    CHECK(summary.epochs.back().loss < 0.8 * summary.epochs.front().loss);
    const double ndcg = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10");
    CHECK(ndcg > 1.5 * popularity_ndcg);
    CHECK(log.str().find("epoch  12/12") != std::string::npos);
    CHECK(log.str().find("ETA") != std::string::npos);
  }
}

TEST_CASE("SASRec with an untied head trains, lowers the loss and beats popularity", "[train][trainer][sasrec]") {
  const auto split = test::small_synthetic_split();
  const double popularity_ndcg = popularity_test_ndcg(split);
  auto model_config = small_model(split.num_items);
  model_config.head = nn::HeadKind::kUntied;
  models::SASRec<float> model(model_config);
  Rng rng(1);
  model.initialize(rng);
  const auto summary = train::Trainer<models::SASRec<float>>(model, split, small_training()).fit();
  CHECK(summary.epochs.back().loss < 0.8 * summary.epochs.front().loss);
  CHECK(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10") > 1.5 * popularity_ndcg);
}

TEST_CASE("SASRec with lazy Adam on its item table trains, lowers the loss and beats popularity", "[train][trainer][sasrec][lazy]") {
  const auto split = test::small_synthetic_split();
  const double popularity_ndcg = popularity_test_ndcg(split);
  std::vector<Matrix<float>> tables;
  for (Index lazy_rows : {Index{0}, static_cast<Index>(split.num_items / 2)}) {  // dense, then lazy on the item table only
    CAPTURE(lazy_rows);
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(1);
    model.initialize(rng);
    train::TrainerConfig config = small_training();
    config.adam.lazy_rows = lazy_rows;
    const auto summary = train::Trainer<models::SASRec<float>>(model, split, config).fit();
    CHECK(summary.epochs.back().loss < 0.8 * summary.epochs.front().loss);
    CHECK(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10") > 1.5 * popularity_ndcg);
    REQUIRE(model.parameters().infos()[0].rows == split.num_items + 1);  // the item table
    tables.push_back(model.parameters().value(0));
  }
  // The same seeds: the runs differ only by the lazy updates, so the tables must differ.
  CHECK((tables[0] - tables[1]).cwiseAbs().maxCoeff() > 1e-4f);
}

TEST_CASE("Trainer keeps the best validation epoch, stops early and is deterministic", "[train][trainer]") {
  const auto split = test::small_synthetic_split();
  auto run = [&](Index patience) {
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(2);
    model.initialize(rng);
    train::TrainerConfig config;
    config.epochs = 30;
    config.adam.learning_rate = 2e-2;  // high on purpose: validation quality peaks early
    config.eval_every = 1;
    config.patience = patience;
    config.log = nullptr;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    auto summary = trainer.fit();
    const double restored = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kValid).value("NDCG@10");
    return std::make_pair(summary, restored);
  };
  const auto [summary, restored] = run(2);
  REQUIRE(summary.best_epoch >= 1);
  // The parameters of the best epoch are restored.
  REQUIRE(restored == Approx(summary.best_score).epsilon(1e-9));
  for (const auto& e : summary.epochs) REQUIRE(e.validation->value("NDCG@10") <= summary.best_score);
  if (summary.stopped_early) REQUIRE(static_cast<Index>(summary.epochs.size()) == summary.best_epoch + 2);
  const auto [again, restored_again] = run(2);
  REQUIRE(again.epochs.size() == summary.epochs.size());
  for (std::size_t i = 0; i < again.epochs.size(); ++i) REQUIRE(again.epochs[i].loss == summary.epochs[i].loss);
  REQUIRE(restored_again == restored);
}

TEST_CASE("Trainer rejects bad configurations and diverging runs", "[train][trainer]") {
  const auto split = test::small_synthetic_split();
  models::SASRec<float> model(small_model(split.num_items));
  Rng rng(3);
  model.initialize(rng);
  train::TrainerConfig config;
  config.log = nullptr;
  config.epochs = 0;
  REQUIRE_THROWS_AS((train::Trainer<models::SASRec<float>>(model, split, config)), ConfigError);
  config.epochs = 1;
  config.adam.beta2 = 1.5;
  REQUIRE_THROWS_AS((train::Trainer<models::SASRec<float>>(model, split, config)), ConfigError);
  config.adam.beta2 = 0.98;
  models::SASRec<float> wrong(small_model(split.num_items + 1));
  REQUIRE_THROWS_AS((train::Trainer<models::SASRec<float>>(wrong, split, config)), ShapeError);
  // NaN weights make the loss non-finite: training stops with a clear error.
  model.parameters().value(model.parameters().find("final_norm.weight"))(0, 0) = std::numeric_limits<float>::quiet_NaN();
  train::Trainer<models::SASRec<float>> trainer(model, split, config);
  REQUIRE_THROWS_WITH(trainer.fit(), Catch::Matchers::Contains("diverged"));
  REQUIRE_THROWS_AS(train::parse_objective("hinge"), ConfigError);
}

namespace {

/// A loss term on SASRec's outputs: L = weight * mean_s |a * h_s - c|^2 over each sequence's
/// newest output h_s, with a fixed target c (alternating +1, -1: reachable by a layer-normalised
/// output) and a scale a [1, 1] that is the term's own trainable parameter, or fixed at 1.
class PullTerm : public train::LossTerm<models::SASRec<float>> {
 public:
  PullTerm(float weight, Index dim, bool trainable_scale = true) : weight_(weight), trainable_(trainable_scale), target_(dim) {
    for (Index j = 0; j < dim; ++j) target_(j) = j % 2 == 0 ? 1.0f : -1.0f;
    scale_ = params_.declare("scale", 1, 1);
    params_.allocate();
    params_.value(scale_)(0, 0) = 1.0f;
  }
  std::string name() const override { return "pull"; }
  Parameters<float>* parameters() override { return trainable_ ? &params_ : nullptr; }
  float compute(train::StepContext<models::SASRec<float>>& ctx) override {
    const float a = params_.value(scale_)(0, 0);
    const Index n = ctx.newest_outputs.rows();
    double loss = 0.0;
    for (Index s = 0; s < n; ++s) {
      const RowVector<float> diff = a * ctx.newest_outputs.row(s) - target_;
      loss += diff.squaredNorm();
      ctx.grad_newest_outputs.row(s) += weight_ * 2.0f * a * diff / static_cast<float>(n);
      params_.grad(scale_)(0, 0) += weight_ * 2.0f * diff.dot(ctx.newest_outputs.row(s)) / static_cast<float>(n);
    }
    ++calls;
    examples_seen += n;
    last_value = static_cast<float>(loss / static_cast<double>(n));
    return weight_ * last_value;
  }
  std::map<std::string, double> take_report() override { return {{"distance", last_value}}; }

  int calls = 0;
  Index examples_seen = 0;
  float last_value = 0.0f;

 private:
  float weight_;
  bool trainable_;
  RowVector<float> target_;
  Parameters<float> params_;
  Index scale_ = -1;
};

}  // namespace

TEST_CASE("A loss term acts on SASRec's outputs", "[train][trainer][terms]") {
  const auto split = test::small_synthetic_split();
  auto run = [&](bool with_term, std::shared_ptr<PullTerm> term) {
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(4);
    model.initialize(rng);
    train::TrainerConfig config;
    config.epochs = 3;
    config.eval_every = 0;
    config.log = nullptr;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    if (with_term) trainer.add_term(term);
    const auto summary = trainer.fit();
    // Mean distance of the newest outputs to the term's target after training.
    models::SASRec<float>::Workspace ws;
    std::vector<Sequence> histories;
    for (Index u : split.evaluable_users) histories.push_back(split.test_history(u));
    Matrix<float> out(static_cast<Index>(histories.size()), model.hidden_size());
    model.encode(histories, out, ws);
    RowVector<float> target(model.hidden_size());
    for (Index j = 0; j < target.size(); ++j) target(j) = j % 2 == 0 ? 1.0f : -1.0f;
    return std::make_pair(summary, (out.rowwise() - target).array().square().rowwise().sum().mean());
  };
  auto term = std::make_shared<PullTerm>(5.0f, 32, /*trainable_scale=*/false);
  const auto [plain, plain_distance] = run(false, nullptr);
  const auto [pulled, pulled_distance] = run(true, term);
  // The term ran at every step on every example and pulled the outputs towards its target.
  REQUIRE(term->calls == 3 * static_cast<int>((static_cast<Index>(data::ExampleSplit(split).train.size()) + 127) / 128));
  CHECK(pulled_distance < 0.5 * plain_distance);
  // Its report reached the epoch records.
  CHECK(pulled.epochs.back().terms.count("pull.distance") == 1);
  CHECK(plain.epochs.back().terms.empty());
  // Two terms with one name are an error.
  models::SASRec<float> model(small_model(split.num_items));
  train::TrainerConfig config;
  config.log = nullptr;
  train::Trainer<models::SASRec<float>> trainer(model, split, config);
  trainer.add_term(std::make_shared<PullTerm>(1.0f, 32));
  REQUIRE_THROWS_AS(trainer.add_term(std::make_shared<PullTerm>(1.0f, 32)), ConfigError);
}

TEST_CASE("Trainer hooks run at epoch begin and end, after backward and after the step", "[train][trainer][hooks]") {
  const auto split = test::small_synthetic_split();
  models::SASRec<float> model(small_model(split.num_items));
  Rng rng(5);
  model.initialize(rng);
  train::TrainerConfig config;
  config.epochs = 3;
  config.eval_every = 0;
  config.log = nullptr;
  train::Trainer<models::SASRec<float>> trainer(model, split, config);
  std::vector<std::string> events;
  double gradient_seen = 0.0;
  long last_global = -1;
  trainer.hooks().on_epoch_begin.push_back([&](Index epoch) { events.push_back("begin " + std::to_string(epoch)); });
  trainer.hooks().after_backward.push_back([&](const train::StepInfo& step, const std::vector<Parameters<float>*>& groups) {
    REQUIRE(groups.size() == 1);
    REQUIRE(groups[0] == &model.parameters());
    // Gradients are complete here and the optimiser has not run: the place for an allreduce.
    gradient_seen += groups[0]->flat_grads().cwiseAbs().sum();
    REQUIRE(step.global_step == last_global + 1);
    REQUIRE(step.predictions > 0);
  });
  trainer.hooks().after_step.push_back([&](const train::StepInfo& step) { last_global = step.global_step; });
  trainer.on_epoch_end([&](const train::EpochRecord& record) {
    events.push_back("end " + std::to_string(record.epoch));
    return record.epoch < 2;  // stop after the second epoch
  });
  const auto summary = trainer.fit();
  REQUIRE(summary.epochs.size() == 2);
  REQUIRE(events == std::vector<std::string>{"begin 1", "end 1", "begin 2", "end 2"});
  REQUIRE(last_global + 1 == 2 * trainer.steps_per_epoch());
  CHECK(gradient_seen > 0.0);
}

TEST_CASE("Trainer owns its data, snapshots and checkpoints loss-term parameters", "[train][trainer][terms]") {
  models::SASRec<float> model(small_model(300));
  Rng rng(6);
  model.initialize(rng);
  train::TrainerConfig config;
  config.epochs = 4;
  config.eval_every = 1;
  config.patience = 0;
  config.log = nullptr;
  // The split is a temporary: the trainer keeps its own (shared) copy.
  train::Trainer<models::SASRec<float>> trainer(model, test::small_synthetic_split(), config);
  auto term = std::make_shared<PullTerm>(0.1f, 32);
  trainer.add_term(term);
  REQUIRE(trainer.parameter_groups().size() == 2);
  std::vector<float> scales;
  trainer.on_epoch_end([&](const train::EpochRecord&) {
    scales.push_back(term->parameters()->value(0)(0, 0));
    return true;
  });
  const auto summary = trainer.fit();
  // The optimiser trained the term's parameter, and the best epoch's value is restored with the model's.
  REQUIRE(scales.front() != 1.0f);
  REQUIRE(term->parameters()->value(0)(0, 0) == scales[static_cast<std::size_t>(summary.best_epoch - 1)]);
  // A trainer checkpoint holds the term's parameters; the model loads from it and ignores them.
  const auto dir = test::temp_dir("trainer_checkpoint");
  const std::string path = (dir / "model.safetensors").string();
  trainer.save_checkpoint(path);
  const io::SafetensorsReader reader(path);
  REQUIRE(reader.contains("terms.pull.scale"));
  const auto loaded = io::load_checkpoint<models::SASRec<float>>(path);
  REQUIRE(Matrix<float>(loaded.item_table()) == Matrix<float>(model.item_table()));
  Parameters<float> restored;
  restored.declare("scale", 1, 1);
  restored.allocate();
  io::load_parameters(restored, reader, /*allow_extra=*/true, "terms.pull.");
  REQUIRE(restored.value(0)(0, 0) == term->parameters()->value(0)(0, 0));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Training on every-prefix examples predicts each example's target", "[train][trainer][examples]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 800;
  synthetic.num_items = 200;
  synthetic.num_clusters = 8;
  synthetic.max_length = 15;
  synthetic.seed = 9;
  const auto log = data::generate_synthetic(synthetic);
  const auto split = data::every_prefix(log);
  models::Popularity<float> popularity(split);
  const double popularity_ndcg = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest).value("NDCG@10");
  for (auto objective : {train::Objective::kBce, train::Objective::kSoftmax}) {
    CAPTURE(train::to_string(objective));
    models::SASRec<float> model(small_model(split.num_items));
    Rng rng(7);
    model.initialize(rng);
    train::TrainerConfig config;
    config.epochs = 4;
    config.objective.objective = objective;
    config.adam.learning_rate = 3e-3;
    config.eval_every = 0;
    config.log = nullptr;
    train::Trainer<models::SASRec<float>> trainer(model, split, config);
    Index predictions = 0;
    trainer.hooks().after_backward.push_back(
        [&](const train::StepInfo& step, const std::vector<Parameters<float>*>&) { predictions += step.predictions; });
    const auto summary = trainer.fit();
    // One prediction per example and epoch: only the newest position of each window.
    REQUIRE(predictions == 4 * static_cast<Index>(split.train.size()));
    CHECK(summary.epochs.back().loss < summary.epochs.front().loss);
    CHECK(eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest).value("NDCG@10") > 1.5 * popularity_ndcg);
  }
}
