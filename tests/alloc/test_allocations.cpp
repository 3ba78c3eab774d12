// After warm-up, a training step and a serving query allocate no heap memory in the library's
// code: every model, every base objective, with and without dropout, loss terms and
// newest-position supervision. With the oneDNN GEMM backend, oneDNN's sgemm allocates its own
// packing buffers on every call; those are counted apart and reported (count_allocations.hpp).
#include "distillrec/data/examples.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/distill/slmrec.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#include "count_allocations.hpp"
#include "support.hpp"

#include <memory>

using namespace distillrec;

namespace {

/// Every user has more items than a window holds, so every full batch packs the same number of
/// tokens: after the first epoch no step needs more memory than one before it.
data::InteractionLog long_sequences() {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 300;
  synthetic.num_items = 150;
  synthetic.num_clusters = 5;
  synthetic.min_length = 16;
  synthetic.max_length = 24;
  synthetic.seed = 11;
  return data::generate_synthetic(synthetic);
}

train::TrainerConfig training(train::Objective objective) {
  train::TrainerConfig config;
  config.epochs = 3;
  config.batch_size = 32;
  config.objective.objective = objective;
  config.objective.sampled_negatives = 32;
  config.num_negatives = 2;
  config.eval_every = 0;
  config.clip_norm = 5.0;  // clipping on: it must not allocate either
  config.log = nullptr;
  return config;
}

/// Allocations of every step of the last epoch (a step: next batch, forward, objective, loss
/// terms, backward, hooks, clipping, optimiser), measured from one step's end to the next's.
template <typename Model>
std::vector<long> last_epoch_step_allocations(train::Trainer<Model>& trainer) {
  std::vector<long> deltas;
  deltas.reserve(1000);
  long last = 0, onednn_last = 0, onednn_steps = 0, onednn_total = 0;
  bool armed = false;
  Index epoch_now = 0;
  const Index epochs = trainer.config().epochs;
  trainer.hooks().on_epoch_begin.push_back([&](Index epoch) {
    armed = false;  // the first step of an epoch also pays for the epoch boundary
    epoch_now = epoch;
  });
  trainer.hooks().after_step.push_back([&](const train::StepInfo& step) {
    const long now = test::allocation_count(), onednn_now = test::onednn_allocation_count();
    if (armed && epoch_now == epochs && step.step < step.steps_per_epoch) {
      deltas.push_back(now - last);
      onednn_total += onednn_now - onednn_last;
      ++onednn_steps;
    }
    last = now;
    onednn_last = onednn_now;
    armed = true;
  });
  test::count_allocations(true);
  trainer.fit();
  test::count_allocations(false);
  if (onednn_steps > 0) {
    WARN("inside oneDNN's sgemm (its packing buffers, not the library's): "
         << static_cast<double>(onednn_total) / static_cast<double>(onednn_steps) << " allocations per step");
  }
  return deltas;
}

void require_no_allocations(const std::vector<long>& deltas) {
  REQUIRE(deltas.size() >= 5);
  long total = 0;
  for (long d : deltas) total += d;
  CAPTURE(deltas);
  REQUIRE(total == 0);
}

}  // namespace

TEST_CASE("The allocation counter sees allocations", "[alloc]") {
  test::count_allocations(true);
  const long before = test::allocation_count();
  auto* p = new std::vector<int>(100);
  Matrix<float> m(10, 10);
  m.setZero();
  const long after = test::allocation_count();
  test::count_allocations(false);
  delete p;
  REQUIRE(after - before >= 3);  // the vector object, its buffer and the matrix
}

TEST_CASE("A SASRec training step allocates nothing after warm-up, for every objective", "[alloc][train][sasrec]") {
  const data::ExampleSplit split = data::leave_one_out(long_sequences());
  for (auto objective : {train::Objective::kBce, train::Objective::kSoftmax, train::Objective::kSampledSoftmax}) {
    for (auto style : {models::BlockStyle::kSASRec, models::BlockStyle::kPreNorm}) {
      CAPTURE(train::to_string(objective), models::to_string(style));
      models::SASRecConfig config;
      config.num_items = split.num_items;
      config.hidden_size = 16;
      config.num_heads = 2;
      config.max_length = 12;
      config.dropout = 0.3;
      config.block_style = style;
      models::SASRec<float> model(config);
      Rng rng(1);
      model.initialize(rng);
      train::Trainer<models::SASRec<float>> trainer(model, split, training(objective));
      require_no_allocations(last_epoch_step_allocations(trainer));
    }
  }
}

TEST_CASE("A full-softmax step with bf16 catalogue GEMMs allocates nothing after warm-up", "[alloc][train][bf16]") {
  const data::ExampleSplit split = data::leave_one_out(long_sequences());
  models::SASRecConfig config;
  config.num_items = split.num_items;
  config.hidden_size = 16;
  config.max_length = 12;
  models::SASRec<float> model(config);
  Rng rng(1);
  model.initialize(rng);
  auto settings = training(train::Objective::kSoftmax);
  settings.objective.catalogue_precision = backend::MatmulPrecision::kBf16;
  train::Trainer<models::SASRec<float>> trainer(model, split, settings);
  require_no_allocations(last_epoch_step_allocations(trainer));
}

TEST_CASE("A GRU4Rec training step allocates nothing after warm-up", "[alloc][train][gru4rec]") {
  const auto log = long_sequences();
  for (auto head : {nn::HeadKind::kUntied, nn::HeadKind::kTied}) {
    for (bool prefix : {false, true}) {
      CAPTURE(nn::to_string(head), prefix);
      const data::ExampleSplit split = prefix ? data::every_prefix(log) : data::ExampleSplit(data::leave_one_out(log));
      models::GRU4RecConfig config;
      config.num_items = split.num_items;
      config.embedding_dim = 16;
      config.hidden_size = 16;
      config.num_layers = 2;
      config.max_length = 12;
      config.head = head;
      models::GRU4Rec<float> model(config);
      Rng rng(2);
      model.initialize(rng);
      train::Trainer<models::GRU4Rec<float>> trainer(model, split, training(prefix ? train::Objective::kSoftmax : train::Objective::kBce));
      require_no_allocations(last_epoch_step_allocations(trainer));
    }
  }
}

TEST_CASE("An LLMRec student's step with the SLMRec loss term allocates nothing after warm-up", "[alloc][train][slmrec]") {
  const auto log = long_sequences();
  const data::ExampleSplit split = data::leave_one_out(log);
  models::LLMRecConfig config;
  config.num_items = split.num_items;
  config.item_dim = 16;
  config.hidden_size = 16;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.num_layers = 4;
  config.max_length = 12;
  models::LLMRec<float> teacher(config);
  Rng rng(3);
  teacher.initialize(rng);
  const auto map = distill::make_layer_map(4, 2, 2);
  for (auto positions : {distill::AlignPositions::kLast, distill::AlignPositions::kAll}) {
    CAPTURE(distill::to_string(positions));
    auto signals = std::make_shared<const distill::TeacherSignals<float>>(
        distill::compute_teacher_signals(teacher, map.teacher_indices(), split, positions));
    auto student_config = config;
    student_config.num_layers = 2;
    models::LLMRec<float> student(student_config);
    student.initialize(rng);
    distill::SLMRecConfig slm;
    slm.blocks = 2;
    slm.positions = positions;
    auto term = std::make_shared<distill::SLMRecDistillation<float>>(slm, map, signals, split, student);
    term->initialize(rng);
    train::Trainer<models::LLMRec<float>> trainer(student, split, training(train::Objective::kSoftmax));
    trainer.add_term(term);
    require_no_allocations(last_epoch_step_allocations(trainer));
  }
}

TEST_CASE("A serving query allocates nothing after warm-up", "[alloc][serve]") {
  const auto log = long_sequences();
  const data::LeaveOneOutSplit split = data::leave_one_out(log);
  std::vector<Sequence> histories;
  for (Index u = 0; u < 40; ++u) histories.push_back(split.test_history(u));
  auto check = [&](const auto& recommender) {
    std::vector<serve::ScoredItem> out;
    for (int warm = 0; warm < 2; ++warm) {
      for (const auto& h : histories) recommender.recommend(h, {10, true}, out);
    }
    test::count_allocations(true);
    const long before = test::allocation_count(), onednn_before = test::onednn_allocation_count();
    for (const auto& h : histories) recommender.recommend(h, {10, true}, out);
    const long after = test::allocation_count(), onednn_after = test::onednn_allocation_count();
    test::count_allocations(false);
    WARN("inside oneDNN's sgemm: " << static_cast<double>(onednn_after - onednn_before) / static_cast<double>(histories.size())
                                   << " allocations per query");
    REQUIRE(out.size() == 10);
    REQUIRE(after - before == 0);
    // Sessions: appending an event (the cached path, or a re-encode) and a session's top-k.
    std::vector<serve::Session<float>> sessions;
    for (const auto& h : histories) sessions.push_back(recommender.start_session(Sequence(h.begin(), h.begin() + 4)));
    for (auto& session : sessions) recommender.append(session, histories[0][0]);  // every buffer sized
    test::count_allocations(true);
    const long session_before = test::allocation_count();
    for (std::size_t i = 0; i < sessions.size(); ++i) {
      recommender.append(sessions[i], histories[i][4]);
      recommender.recommend_session(sessions[i], {10, true}, out);
    }
    const long session_after = test::allocation_count();
    test::count_allocations(false);
    REQUIRE(out.size() == 10);
    REQUIRE(session_after - session_before == 0);
  };
  models::SASRecConfig sasrec;
  sasrec.num_items = split.num_items;
  sasrec.hidden_size = 16;
  sasrec.max_length = 12;
  auto s = std::make_shared<models::SASRec<float>>(sasrec);
  Rng rng(4);
  s->initialize(rng);
  check(serve::Recommender<models::SASRec<float>>(s));
  for (auto precision : {serve::Precision::kBf16, serve::Precision::kInt8}) {  // through oneDNN's matmul
    CAPTURE(serve::to_string(precision));
    serve::RecommenderConfig config;
    config.scoring.precision = precision;
    config.scoring.kernel_rows = 0;
    check(serve::Recommender<models::SASRec<float>>(s, config));
  }
  models::GRU4RecConfig gru;
  gru.num_items = split.num_items;
  gru.embedding_dim = 16;
  gru.hidden_size = 16;
  auto g = std::make_shared<models::GRU4Rec<float>>(gru);
  g->initialize(rng);
  check(serve::Recommender<models::GRU4Rec<float>>(g));
  models::LLMRecConfig llm;
  llm.num_items = split.num_items;
  llm.item_dim = 16;
  llm.hidden_size = 16;
  llm.num_layers = 2;
  llm.max_length = 12;
  auto l = std::make_shared<models::LLMRec<float>>(llm);
  l->initialize(rng);
  check(serve::Recommender<models::LLMRec<float>>(l));
}
