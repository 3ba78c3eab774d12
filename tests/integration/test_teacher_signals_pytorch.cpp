// The PyTorch script examples/write_teacher_signals.py against the in-process teacher: both
// compute a teacher's states from the same checkpoint and data, in the documented schema, and
// must agree. Skipped, not failed, where Python or PyTorch is absent.
#include "distillrec/data/interactions.hpp"
#include "distillrec/data/split.hpp"
#include "distillrec/data/synthetic.hpp"
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/distill/slmrec.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/llm_rec.hpp"

#include "support.hpp"

#include <cstdlib>

using namespace distillrec;

TEST_CASE("examples/write_teacher_signals.py writes what the in-process teacher computes", "[integration][pytorch][distill]") {
  if (std::system("/usr/bin/python3 -c 'import numpy, torch' > /dev/null 2>&1") != 0) {
    WARN("python3 with torch not found; skipping");
    return;
  }
  const auto dir = test::temp_dir("pytorch_signals");
  data::SyntheticConfig synthetic;
  synthetic.num_users = 150;
  synthetic.num_items = 60;
  synthetic.max_length = 14;
  synthetic.seed = 12;
  const auto data_path = (dir / "log.txt").string();
  data::write_sasrec_text(data::generate_synthetic(synthetic), data_path);
  const auto log = data::read_log(data_path);  // ids as a PyTorch user reads them from the file
  const auto split = data::leave_one_out(log);

  models::LLMRecConfig config;
  config.num_items = split.num_items;
  config.item_dim = 12;
  config.hidden_size = 16;
  config.num_layers = 4;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.max_length = 10;
  models::LLMRec<float> teacher(config);
  Rng rng(3);
  teacher.initialize(rng);
  const auto checkpoint = (dir / "teacher.safetensors").string();
  io::save_checkpoint(teacher, checkpoint);

  for (const std::string positions : {"last", "all"}) {
    CAPTURE(positions);
    const auto out = (dir / ("signals_" + positions + ".safetensors")).string();
    const std::string command = "/usr/bin/python3 " DISTILLREC_SOURCE_DIR "/examples/write_teacher_signals.py --checkpoint " +
                                checkpoint + " --data " + data_path + " --layers 0,2,4 --positions " + positions +
                                " --threads 1 --out " + out + " > " + (dir / "script.log").string() + " 2>&1";
    REQUIRE(std::system(command.c_str()) == 0);
    const auto from_pytorch = distill::load_teacher_signals<float>(out);
    const auto in_process = distill::compute_teacher_signals(teacher, {0, 2, 4}, split,
                                                             distill::parse_align_positions(positions), &log.item_raw_ids);
    REQUIRE(from_pytorch.num_examples() == in_process.num_examples());
    REQUIRE(from_pytorch.total_rows() == in_process.total_rows());
    double worst = 0.0;
    for (Index e = 0; e < in_process.num_examples(); ++e) {
      const Index f = from_pytorch.find(in_process.example_ids()[static_cast<std::size_t>(e)]);
      REQUIRE(f >= 0);
      REQUIRE(from_pytorch.last_items()[static_cast<std::size_t>(f)] == in_process.last_items()[static_cast<std::size_t>(e)]);
      worst = std::max(worst, static_cast<double>((from_pytorch.states(f) - in_process.states(e)).cwiseAbs().maxCoeff()));
    }
    CHECK(worst < 1e-4);
    // And the file passes the distillation's checks against the data.
    auto student_config = config;
    student_config.num_layers = 2;
    models::LLMRec<float> student(student_config);
    distill::SLMRecConfig slm;
    slm.blocks = 2;
    slm.use_ms = false;
    slm.positions = distill::parse_align_positions(positions);
    auto map = distill::make_layer_map(4, 2, 2);
    map.pairs.insert(map.pairs.begin(), distill::LayerPair{0, 0});  // also align the block inputs
    map.blocks = 3;
    slm.blocks = 3;
    REQUIRE_NOTHROW(distill::SLMRecDistillation<float>(slm, map, std::make_shared<const distill::TeacherSignals<float>>(from_pytorch),
                                                       split, student, &log.item_raw_ids));
  }
  // Rankings and item embeddings (DLLM2Rec): the script's top-K equal the library's export.
  const auto out = (dir / "ranking.safetensors").string();
  const std::string command = "/usr/bin/python3 " DISTILLREC_SOURCE_DIR "/examples/write_teacher_signals.py --checkpoint " + checkpoint +
                              " --data " + data_path + " --ranking 5 --item-embeddings --threads 1 --out " + out + " > " +
                              (dir / "script.log").string() + " 2>&1";
  REQUIRE(std::system(command.c_str()) == 0);
  const distill::ItemIdMap items(log.item_raw_ids);
  const auto from_pytorch = distill::load_ranking_signals(out, items);
  const data::ExampleSplit examples(split);
  const auto in_process = distill::compute_ranking_signals(teacher, examples, 5);
  REQUIRE(from_pytorch.num_examples() == in_process.num_examples());
  REQUIRE(from_pytorch.match(examples, 5).size() == examples.train.size());
  Index same = 0;
  double worst = 0.0;
  for (Index e = 0; e < in_process.num_examples(); ++e) {
    const Index f = from_pytorch.find(in_process.example_ids()[static_cast<std::size_t>(e)]);
    REQUIRE(f >= 0);
    for (Index r = 0; r < 5; ++r) {
      same += from_pytorch.items(f)[r] == in_process.items(e)[r];
      worst = std::max(worst, static_cast<double>(std::abs(from_pytorch.scores(f)[r] - in_process.scores(e)[r])));
    }
  }
  CHECK(worst < 1e-4);
  CHECK(same >= 5 * in_process.num_examples() - 2);  // the same items, but for a rare near-tie
  const auto embeddings = distill::load_teacher_item_embeddings(out, items);
  CHECK((embeddings.table - distill::model_item_embeddings(teacher).table).cwiseAbs().maxCoeff() == 0.0f);
  std::filesystem::remove_all(dir);
}
