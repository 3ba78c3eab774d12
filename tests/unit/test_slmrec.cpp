#include "distillrec/data/synthetic.hpp"
#include "distillrec/distill/slmrec.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/loss/softmax_ce.hpp"
#include "distillrec/train/trainer.hpp"

#include "support.hpp"

#include <memory>
#include <sstream>

using namespace distillrec;

namespace {

data::InteractionLog slmrec_small_log() {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 60;
  synthetic.num_items = 30;
  synthetic.num_clusters = 3;
  synthetic.max_length = 9;
  synthetic.seed = 3;
  return data::generate_synthetic(synthetic);
}

models::LLMRecConfig model_config(ItemId num_items, Index layers) {
  models::LLMRecConfig config;
  config.num_items = num_items;
  config.item_dim = 6;
  config.hidden_size = 8;
  config.num_layers = layers;
  config.num_heads = 2;
  config.ffn_size = 10;
  config.max_length = 6;
  config.dropout = 0.0;
  return config;
}

}  // namespace

TEST_CASE("In-process teacher signals equal the teacher's hidden states on every training window",
          "[distill][teacher]") {
  const auto log = slmrec_small_log();
  const auto split = data::leave_one_out(log);
  models::LLMRec<double> teacher(model_config(split.num_items, 4));
  Rng rng(1);
  teacher.initialize(rng);
  for (auto positions : {distill::AlignPositions::kLast, distill::AlignPositions::kAll}) {
    const auto signals = distill::compute_teacher_signals(teacher, {2, 4}, split, positions, &log.item_raw_ids, 7);
    Index expected_examples = 0;
    for (const auto& t : split.train) expected_examples += t.size() >= 2;
    REQUIRE(signals.num_examples() == expected_examples);
    REQUIRE(signals.has_last_items());
    // Check one user by hand: its window is the newest 6 items of train[:-1].
    const Index u = 5;
    REQUIRE(split.train[u].size() >= 2);
    const Sequence window(split.train[u].end() - 1 - std::min<std::ptrdiff_t>(6, static_cast<std::ptrdiff_t>(split.train[u].size()) - 1),
                          split.train[u].end() - 1);
    models::LLMRec<double>::Workspace ws;
    teacher.forward_hidden_states({window}, ws);
    const Index e = signals.find(log.user_raw_ids[u]);
    REQUIRE(e >= 0);
    const auto states = signals.states(e);
    const Index rows = positions == distill::AlignPositions::kLast ? 1 : static_cast<Index>(window.size());
    REQUIRE(states.rows() == rows);
    for (Index r = 0; r < rows; ++r) {
      const Index token = positions == distill::AlignPositions::kLast ? ws.layout.last(0) : r;
      REQUIRE((states.row(r).head(8) - teacher.hidden_state(ws, 2).row(token)).cwiseAbs().maxCoeff() < 1e-12);
      REQUIRE((states.row(r).tail(8) - teacher.hidden_state(ws, 4).row(token)).cwiseAbs().maxCoeff() < 1e-12);
    }
    REQUIRE(signals.last_items()[static_cast<std::size_t>(e)] == log.item_raw_ids[static_cast<std::size_t>(window.back())]);
  }
}

TEST_CASE("Teacher signals round-trip through the documented safetensors schema", "[distill][teacher][io]") {
  const auto log = slmrec_small_log();
  const auto split = data::leave_one_out(log);
  models::LLMRec<float> teacher(model_config(split.num_items, 4));
  Rng rng(2);
  teacher.initialize(rng);
  const auto dir = test::temp_dir("signals");
  for (auto positions : {distill::AlignPositions::kLast, distill::AlignPositions::kAll}) {
    const auto signals = distill::compute_teacher_signals(teacher, {2, 4}, split, positions, &log.item_raw_ids);
    const auto path = (dir / ("signals_" + distill::to_string(positions) + ".safetensors")).string();
    distill::save_teacher_signals(signals, path);
    const io::SafetensorsReader reader(path);
    REQUIRE(reader.info("hidden_states").shape == std::vector<std::int64_t>({signals.total_rows(), 2, 8}));
    REQUIRE(reader.contains("lengths") == (positions == distill::AlignPositions::kAll));
    const auto loaded = distill::load_teacher_signals<float>(path);
    REQUIRE(loaded.example_ids() == signals.example_ids());
    REQUIRE(loaded.last_items() == signals.last_items());
    REQUIRE(loaded.layers() == signals.layers());
    REQUIRE(loaded.positions() == positions);
    REQUIRE(loaded.data() == signals.data());
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("Malformed teacher-signal files give clear errors", "[distill][teacher][io]") {
  const auto dir = test::temp_dir("bad_signals");
  auto write = [&](const std::string& name, const std::vector<std::int64_t>& ids, const std::vector<float>& values,
                   std::vector<std::int64_t> shape, const std::string& positions = "last", const std::string& format = distill::kTeacherSignalsFormat) {
    io::SafetensorsWriter writer;
    writer.set_metadata("format", format);
    writer.set_metadata("positions", positions);
    writer.set_metadata("layers", "[1, 2]");
    writer.add("example_ids", ids);
    writer.add("hidden_states", values.data(), std::move(shape));
    const auto path = (dir / name).string();
    writer.write(path);
    return path;
  };
  std::vector<float> values(2 * 2 * 3, 0.5f);
  const auto good = write("good.safetensors", {7, 9}, values, {2, 2, 3});
  REQUIRE(distill::load_teacher_signals<float>(good).num_examples() == 2);
  values[4] = std::nanf("");
  const auto nan = write("nan.safetensors", {7, 9}, values, {2, 2, 3});
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>(nan), FormatError);
  try {
    distill::load_teacher_signals<float>(nan);
  } catch (const FormatError& e) {
    REQUIRE(std::string(e.what()).find("hidden_states") != std::string::npos);
    REQUIRE(std::string(e.what()).find("nan.safetensors") != std::string::npos);
  }
  values[4] = 0.5f;
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>(write("dup.safetensors", {7, 7}, values, {2, 2, 3})), FormatError);
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>(write("layers.safetensors", {7, 9}, values, {2, 3, 2})), ShapeError);
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>(write("rows.safetensors", {7, 9, 11}, values, {2, 2, 3})), ShapeError);
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>(write("nolengths.safetensors", {7, 9}, values, {2, 2, 3}, "all")), FormatError);
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>(write("format.safetensors", {7, 9}, values, {2, 2, 3}, "last", "other")), FormatError);
  REQUIRE_THROWS_AS(distill::load_teacher_signals<float>((dir / "missing.safetensors").string()), Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("SLMRec loss: the whole objective's gradients match finite differences", "[distill][slmrec][gradcheck]") {
  const auto log = slmrec_small_log();
  const auto split = data::leave_one_out(log);
  models::LLMRec<double> teacher(model_config(split.num_items, 4));
  Rng rng(4);
  teacher.initialize(rng);
  const auto map = distill::make_layer_map(4, 2, 2);
  for (auto positions : {distill::AlignPositions::kLast, distill::AlignPositions::kAll}) {
    for (bool squared : {false, true}) {
      CAPTURE(distill::to_string(positions), squared);
      const auto signals = std::make_shared<const distill::TeacherSignals<double>>(
          distill::compute_teacher_signals(teacher, map.teacher_indices(), split, positions));
      auto config = model_config(split.num_items, 2);
      config.dropout = 0.2;
      models::LLMRec<double> student(config);
      student.initialize(rng);
      distill::SLMRecConfig slm;
      slm.blocks = 2;
      slm.positions = positions;
      slm.squared_norm = squared;
      slm.lambda_norm = 0.3;
      slm.lambda_ms = 0.7;
      distill::SLMRecDistillation<double> distillation(slm, map, signals, split, student);
      distillation.initialize(rng);
      REQUIRE(distillation.num_supervision_heads() == 1);
      REQUIRE(distillation.parameters() != nullptr);
      const data::ExampleSplit examples(split);
      data::BatcherConfig bc;
      bc.batch_size = 6;
      bc.max_length = 6;
      data::ExampleBatcher batcher(examples, bc);
      batcher.start_epoch(0);
      data::TrainingBatch batch;
      REQUIRE(batcher.next(batch));
      models::LLMRec<double>::Workspace ws;
      loss::CatalogueSoftmaxCrossEntropy<double> ce;
      loss::CatalogueSoftmaxCrossEntropy<double>::Workspace ce_ws;
      train::StepBuffers<models::LLMRec<double>> buffers;
      auto& params = student.parameters();
      auto& heads = *distillation.parameters();
      Matrix<double> grad_u;
      // L = CE of the student's outputs + the distillation term, as the trainer computes it.
      auto total_loss = [&](bool with_grads) {
        Rng dropout_rng(9);
        const auto u = student.forward_train(batch, dropout_rng, ws);
        buffers.begin(u, ws, true);
        grad_u.resize(u.rows(), u.cols());
        const double l_ce = ce(u, student.output_weights(), ws.targets, grad_u,
                               with_grads ? student.output_gradients() : nn::HeadGradients<double>{}, ce_ws);
        Rng term_rng(3);
        auto ctx = buffers.context(student, ws, batch, examples, u, term_rng);
        ctx.grad_outputs += grad_u;
        const double l = l_ce + distillation.compute(ctx);
        buffers.finish(ws);
        return l;
      };
      params.zero_grad();
      heads.zero_grad();
      total_loss(true);
      student.backward(buffers.grad_outputs(), ws);
      const Matrix<double> grads = Eigen::Map<const Matrix<double>>(params.grads(), 1, params.buffer_size());
      // (every evaluation of the loss adds to the heads' gradients again: keep this step's)
      const Matrix<double> head_grads = Eigen::Map<const Matrix<double>>(heads.grads(), 1, heads.buffer_size());
      const double error = test::max_gradient_error<double>([&] { return total_loss(false); }, params.values(), grads.data(),
                                                            params.buffer_size(), 600);
      CHECK(error < 1e-6);
      // The supervision heads are the term's own parameters.
      const double head_error = test::max_gradient_error<double>([&] { return total_loss(false); }, heads.values(),
                                                                 head_grads.data(), heads.buffer_size(), 200);
      CHECK(head_error < 1e-6);
      CHECK(head_grads.cwiseAbs().maxCoeff() > 0.0);
      const auto terms = distillation.take_terms();
      CHECK(terms.steps > 0);
      CHECK(terms.cos > 0.0);
      CHECK(terms.norm > 0.0);
      CHECK(terms.ms > 0.0);
    }
  }
}

TEST_CASE("SLMRec rejects signals that do not fit the student or the data", "[distill][slmrec]") {
  const auto log = slmrec_small_log();
  const auto split = data::leave_one_out(log);
  models::LLMRec<float> teacher(model_config(split.num_items, 4));
  Rng rng(5);
  teacher.initialize(rng);
  const auto map = distill::make_layer_map(4, 2, 2);
  const auto computed =
      distill::compute_teacher_signals(teacher, map.teacher_indices(), split, distill::AlignPositions::kLast, &log.item_raw_ids);
  const auto signals = std::make_shared<const distill::TeacherSignals<float>>(computed);
  auto shared = [](distill::TeacherSignals<float> s) { return std::make_shared<const distill::TeacherSignals<float>>(std::move(s)); };
  models::LLMRec<float> student(model_config(split.num_items, 2));
  distill::SLMRecConfig slm;
  slm.blocks = 2;
  // Fits.
  REQUIRE_NOTHROW(distill::SLMRecDistillation<float>(slm, map, signals, split, student, &log.item_raw_ids));

  SECTION("hidden sizes differ") {
    auto wide = model_config(split.num_items, 2);
    wide.hidden_size = 12;
    models::LLMRec<float> wide_student(wide);
    REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(slm, map, signals, split, wide_student), ShapeError);
  }
  SECTION("example ids do not match the data") {
    auto shifted = split;
    for (auto& id : shifted.user_ids) id += 1000;
    REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(slm, map, signals, shifted, student), FormatError);
    // A file with an extra example the data does not have.
    distill::TeacherSignals<float> extra = computed;
    extra.add(999999, Matrix<float>::Zero(1, computed.width()));
    REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(slm, map, shared(extra), split, student), FormatError);
    // Two training examples with one id cannot be told apart.
    data::ExampleSplit twice(split);
    twice.train[1].id = twice.train[0].id;
    REQUIRE_THROWS_WITH(distill::SLMRecDistillation<float>(slm, map, signals, twice, student),
                        Catch::Matchers::Contains("share the id"));
  }
  SECTION("rows that belong to other windows") {
    distill::TeacherSignals<float> swapped(computed.layers(), computed.hidden_size(), computed.positions(), "swapped.safetensors");
    const Index n = computed.num_examples();
    for (Index e = 0; e < n; ++e) {
      const Index other = (e + 1) % n;  // ids in order, rows (and last items) of the next example
      swapped.add(computed.example_ids()[static_cast<std::size_t>(e)], computed.states(other),
                  computed.last_items()[static_cast<std::size_t>(other)]);
    }
    try {
      distill::SLMRecDistillation<float>(slm, map, shared(swapped), split, student, &log.item_raw_ids);
      FAIL("misaligned rows were accepted");
    } catch (const FormatError& e) {
      REQUIRE(std::string(e.what()).find("swapped.safetensors") != std::string::npos);
    }
  }
  SECTION("NaN in teacher states") {
    distill::TeacherSignals<float> bad(computed.layers(), computed.hidden_size(), computed.positions(), "nan");
    Matrix<float> row = Matrix<float>::Zero(1, computed.width());
    row(0, 3) = std::nanf("");
    REQUIRE_THROWS_AS(bad.add(1, row), FormatError);
  }
  SECTION("layers, positions and heads that disagree") {
    REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(slm, distill::make_layer_map(4, 2, 1), signals, split, student),
                      ConfigError);
    auto all = slm;
    all.positions = distill::AlignPositions::kAll;
    REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(all, map, signals, split, student), ConfigError);
    models::LLMRec<float> deeper(model_config(split.num_items, 4));
    REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(slm, map, signals, split, deeper), ConfigError);
    // Multi-supervision owns one head per intermediate block end; without it the term has no parameters.
    distill::SLMRecDistillation<float> with_ms(slm, map, signals, split, student);
    REQUIRE(with_ms.num_supervision_heads() == 1);
    REQUIRE(with_ms.parameters()->find("supervision_heads.0.weight") >= 0);
    auto without_ms = slm;
    without_ms.use_ms = false;
    distill::SLMRecDistillation<float> no_heads(without_ms, map, signals, split, student);
    REQUIRE(no_heads.num_supervision_heads() == 0);
    REQUIRE(no_heads.parameters() == nullptr);
  }
}

TEST_CASE("Student initialisation copies the teacher's first layers and adapters", "[distill][slmrec]") {
  models::LLMRec<float> teacher(model_config(20, 4));
  Rng rng(6);
  teacher.initialize(rng);
  models::LLMRec<float> student(model_config(20, 2));
  student.initialize(rng);
  distill::init_student_from_teacher(teacher, student);
  const auto& tp = teacher.parameters();
  const auto& sp = student.parameters();
  for (const char* name : {"item_embedding.weight", "input_adapter.weight", "blocks.1.ffn.down.weight", "final_norm.weight",
                           "output_adapter.weight"}) {
    CAPTURE(name);
    REQUIRE(Matrix<float>(sp.value(sp.find(name))) == Matrix<float>(tp.value(tp.find(name))));
  }
  auto wide = model_config(20, 2);
  wide.hidden_size = 12;
  models::LLMRec<float> wide_student(wide);
  REQUIRE_THROWS_AS(distill::init_student_from_teacher(teacher, wide_student), ShapeError);
}

TEST_CASE("SLMRec distillation trains a student through the trainer", "[distill][slmrec][train]") {
  data::SyntheticConfig synthetic;
  synthetic.num_users = 600;
  synthetic.num_items = 120;
  synthetic.num_clusters = 6;
  synthetic.max_length = 15;
  synthetic.seed = 8;
  const auto log = data::generate_synthetic(synthetic);
  const auto split = data::leave_one_out(log);
  auto teacher_config = model_config(split.num_items, 4);
  teacher_config.item_dim = 16;
  teacher_config.hidden_size = 16;
  teacher_config.max_length = 15;
  models::LLMRec<float> teacher(teacher_config);
  Rng rng(7);
  teacher.initialize(rng);
  train::TrainerConfig training;
  training.epochs = 4;
  training.objective.objective = train::Objective::kSoftmax;
  training.adam.learning_rate = 3e-3;
  training.eval_every = 0;
  training.log = nullptr;
  train::Trainer<models::LLMRec<float>>(teacher, split, training).fit();

  const auto map = distill::make_layer_map(4, 2, 2);
  const auto signals = std::make_shared<const distill::TeacherSignals<float>>(
      distill::compute_teacher_signals(teacher, map.teacher_indices(), split, distill::AlignPositions::kLast));
  auto student_config = teacher_config;
  student_config.num_layers = 2;
  models::LLMRec<float> student(student_config);
  student.initialize(rng);
  distill::SLMRecConfig slm;
  slm.blocks = 2;
  auto distillation = std::make_shared<distill::SLMRecDistillation<float>>(slm, map, signals, split, student);
  distillation->initialize(rng);
  const Matrix<float> heads_before = Eigen::Map<const Matrix<float>>(distillation->parameters()->values(), 1,
                                                                      distillation->parameters()->buffer_size());
  train::Trainer<models::LLMRec<float>> trainer(student, split, training);
  trainer.add_term(distillation);
  REQUIRE(trainer.parameter_groups().size() == 2);  // the student's and the heads'
  std::vector<distill::SLMRecTerms> terms;
  trainer.on_epoch_end([&](const train::EpochRecord& record) {
    terms.push_back(distillation->take_terms());
    CHECK(record.terms.count("slmrec.cos") == 1);  // the term's components reach the epoch record
    CHECK(record.terms.at("slmrec.cos") == Approx(terms.back().cos));
    return true;
  });
  const auto summary = trainer.fit();
  REQUIRE(terms.size() == 4);
  // The trainer optimised the term's heads too.
  const Matrix<float> heads_after = Eigen::Map<const Matrix<float>>(distillation->parameters()->values(), 1,
                                                                     distillation->parameters()->buffer_size());
  CHECK((heads_after - heads_before).cwiseAbs().maxCoeff() > 0.0f);
  CHECK(summary.epochs.back().loss < summary.epochs.front().loss);
  CHECK(terms.back().cos < terms.front().cos);    // the student's states turn towards the teacher's
  CHECK(terms.back().norm < terms.front().norm);
  CHECK(terms.back().ms < terms.front().ms);
}

TEST_CASE("Teacher signals are keyed by example id for every-prefix examples, and SLMRec trains on them",
          "[distill][teacher][examples]") {
  const auto log = slmrec_small_log();
  const auto split = data::every_prefix(log);
  auto config = model_config(split.num_items, 4);
  models::LLMRec<float> teacher(config);
  Rng rng(12);
  teacher.initialize(rng);
  const auto map = distill::make_layer_map(4, 2, 2);
  const auto signals = std::make_shared<const distill::TeacherSignals<float>>(
      distill::compute_teacher_signals(teacher, map.teacher_indices(), split, distill::AlignPositions::kLast, &log.item_raw_ids));
  REQUIRE(signals->num_examples() == static_cast<Index>(split.train.size()));
  for (std::size_t i : {std::size_t{0}, split.train.size() / 2, split.train.size() - 1}) {
    const auto& example = split.train[i];
    REQUIRE(example.id == static_cast<std::int64_t>(i));
    const Index e = signals->find(example.id);
    REQUIRE(e >= 0);
    models::LLMRec<float>::Workspace ws;
    teacher.forward_hidden_states({split.window(example, config.max_length)}, ws);
    REQUIRE((signals->states(e).row(0).tail(8) - teacher.hidden_state(ws, 4).row(ws.layout.last(0))).cwiseAbs().maxCoeff() < 1e-6f);
  }
  auto student_config = config;
  student_config.num_layers = 2;
  models::LLMRec<float> student(student_config);
  student.initialize(rng);
  distill::SLMRecConfig slm;
  slm.blocks = 2;
  auto term = std::make_shared<distill::SLMRecDistillation<float>>(slm, map, signals, split, student, &log.item_raw_ids);
  term->initialize(rng);
  // Signals of the leave-one-out examples do not fit the every-prefix ones.
  const auto loo_signals = std::make_shared<const distill::TeacherSignals<float>>(distill::compute_teacher_signals(
      teacher, map.teacher_indices(), data::leave_one_out(log), distill::AlignPositions::kLast, &log.item_raw_ids));
  REQUIRE_THROWS_AS(distill::SLMRecDistillation<float>(slm, map, loo_signals, split, student, &log.item_raw_ids), FormatError);
  train::TrainerConfig training;
  training.epochs = 2;
  training.objective.objective = train::Objective::kSoftmax;
  training.eval_every = 0;
  training.log = nullptr;
  train::Trainer<models::LLMRec<float>> trainer(student, split, training);
  trainer.add_term(term);
  const auto summary = trainer.fit();
  CHECK(std::isfinite(summary.epochs.back().loss));
  CHECK(summary.epochs.back().terms.at("slmrec.norm") > 0.0);
}
