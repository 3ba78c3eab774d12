// distill_slmrec: SLMRec distillation end to end. Trains a deep LLaMA-style teacher, a shallow
// student without distillation and the same student with SLMRec distillation (block-wise
// hidden-state alignment + multi-supervision), each selected on validation, and reports test
// quality (full ranking), size and speed, mean ± std over seeds.
//
//   distill_slmrec                                          synthetic data, a few minutes
//   distill_slmrec --data ../shared/data/amazon-games.txt --seeds 3 --ablation --json out.json
//   distill_slmrec --teacher-signals signals.safetensors    a teacher's states written by PyTorch
//                                                           (examples/write_teacher_signals.py)
//
// The item table: "teacher" (default) lets the teacher learn it and gives it, frozen, to both
// students (SLMRec shares one frozen table between teacher and student); "sasrec" pre-trains a
// SASRec with full softmax and freezes its table for all three (SLMRec's pipeline); "learned"
// lets every model learn its own. Progress is printed throughout; exits non-zero on any error.
#include "distillrec/data/split.hpp"
#include "distillrec/distill/layer_map.hpp"
#include "distillrec/distill/slmrec.hpp"
#include "distillrec/distill/teacher.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/sasrec.hpp"
#include "distillrec/serve/recommender.hpp"
#include "distillrec/train/trainer.hpp"

#include "example_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

using namespace distillrec;
using Model = models::LLMRec<float>;

using examples::fmt;
using examples::median;
using examples::stats;

namespace {

struct RunResult {
  std::string name;
  Index seed = 0;
  Index layers = 0;
  Index block_parameters = 0;
  Index parameters = 0;
  Index trainable_parameters = 0;
  double seconds_per_epoch = 0.0;
  double encode_ms = 0.0;   // one user's vector, 1 thread, median
  double top10_ms = 0.0;    // one user's top-10 over the catalogue, 1 thread, median
  Index best_epoch = 0;
  double validation = 0.0;  // the selection metric on the validation split, at the best epoch
  eval::EvaluationResult test;
  std::optional<distill::SLMRecTerms> terms;  // last epoch, distilled students only

  nlohmann::json to_json() const {
    nlohmann::json j{{"name", name},
                     {"seed", seed},
                     {"layers", layers},
                     {"block_parameters", block_parameters},
                     {"parameters", parameters},
                     {"trainable_parameters", trainable_parameters},
                     {"seconds_per_epoch", seconds_per_epoch},
                     {"encode_ms_per_user", encode_ms},
                     {"top10_ms_per_user", top10_ms},
                     {"best_epoch", best_epoch},
                     {"validation_selection_metric", validation},
                     {"test", test.to_json()}};
    if (terms) j["last_epoch_terms"] = {{"cos", terms->cos}, {"norm", terms->norm}, {"ms", terms->ms}};
    return j;
  }
};


/// Median single-thread latency of one user's vector and of one user's top-10, over `histories`.
std::pair<double, double> measure_latency(const Model& model, const std::vector<Sequence>& histories, int threads) {
  parallel::set_num_threads(1);
  std::vector<double> encode, top10;
  Model::Workspace ws;
  Matrix<float> u(1, model.item_dim());
  serve::Recommender<Model> recommender(std::shared_ptr<const Model>(&model, [](const Model*) {}));
  for (int pass = 0; pass < 2; ++pass) {  // the first pass warms caches and workspaces
    for (const auto& h : histories) {
      auto start = std::chrono::steady_clock::now();
      model.encode({h}, u, ws);
      const double e = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      start = std::chrono::steady_clock::now();
      const auto items = recommender.recommend(h, {10, true});
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (pass == 1 && !items.empty()) {
        encode.push_back(e);
        top10.push_back(t);
      }
    }
  }
  parallel::set_num_threads(threads);
  return {median(encode), median(top10)};
}


}  // namespace

int main(int argc, char** argv) {
  examples::Processes processes(argc, argv);  // one, or data-parallel under mpirun
  CLI::App app{"SLMRec distillation: a shallow LLaMA-style student learns from a deep teacher (Xu et al., ICLR 2025)."};
  std::string data_path, format = "auto", json_path, item_table = "teacher", init = "scratch", positions = "last";
  std::string signals_path, save_signals_path, checkpoint_dir, teacher_checkpoint;
  data::SyntheticConfig synthetic;
  models::LLMRecConfig base;
  base.item_dim = 64;
  base.hidden_size = 64;
  base.num_heads = 4;
  base.max_length = 50;
  base.dropout = 0.1;
  Index teacher_layers = 8, student_layers = 2, num_seeds = 1, latency_users = 500, ablation_seeds = -1;
  std::uint64_t first_seed = 1;
  distill::SLMRecConfig slm;
  slm.blocks = 2;
  bool no_cos = false, no_norm = false, no_ms = false, ablation = false;
  train::TrainerConfig training;
  training.epochs = 100;
  training.eval_every = 1;
  training.patience = 3;
  training.objective.objective = train::Objective::kSoftmax;
  training.adam.learning_rate = 1e-3;
  training.adam.beta2 = 0.98;
  int threads = 2;
  std::string matmul_precision = "fp32";

  app.add_option("--data", data_path, "Interaction log: SASRec text (\"user item\" lines) or CSV (user,item,timestamp); default: synthetic data");
  app.add_option("--format", format, "Log format: auto (by extension), text or csv")->check(CLI::IsMember({"auto", "text", "csv"}));
  app.add_option("--synthetic-users", synthetic.num_users, "Synthetic data: number of users");
  app.add_option("--synthetic-items", synthetic.num_items, "Synthetic data: number of items");
  app.add_option("--teacher-layers", teacher_layers, "Teacher depth M");
  app.add_option("--student-layers", student_layers, "Student depth N");
  app.add_option("--blocks", slm.blocks, "Distillation blocks B (must divide M and N)");
  app.add_option("--hidden", base.hidden_size, "Hidden size of teacher and student");
  app.add_option("--item-dim", base.item_dim, "Item table width");
  app.add_option("--heads", base.num_heads, "Attention heads");
  app.add_option("--kv-heads", base.num_kv_heads, "Key/value heads (grouped-query attention; 0: as many as heads)");
  app.add_option("--ffn", base.ffn_size, "Feed-forward size (0: 8/3 x hidden)");
  app.add_option("--max-length", base.max_length, "Longest history the models read");
  app.add_option("--dropout", base.dropout, "Dropout rate");
  app.add_option("--item-table", item_table, "teacher (learned by the teacher, frozen in the students), sasrec (pre-trained SASRec, frozen everywhere) or learned (each model its own)")
      ->check(CLI::IsMember({"teacher", "sasrec", "learned"}));
  app.add_option("--init", init, "Student initialisation: scratch or teacher (its first N layers and adapters)")->check(CLI::IsMember({"scratch", "teacher"}));
  app.add_option("--positions", positions, "Aligned positions: last (SLMRec) or all")->check(CLI::IsMember({"last", "all"}));
  app.add_option("--lambda-cos", slm.lambda_cos, "Weight of D_cos");
  app.add_option("--lambda-norm", slm.lambda_norm, "Weight of D_norm");
  app.add_option("--lambda-ms", slm.lambda_ms, "Weight of L_ms");
  app.add_flag("--squared-norm", slm.squared_norm, "D_norm as the squared L2 distance (the paper's formula)");
  app.add_flag("--no-cos", no_cos, "Drop D_cos");
  app.add_flag("--no-norm", no_norm, "Drop D_norm");
  app.add_flag("--no-ms", no_ms, "Drop L_ms");
  app.add_flag("--ablation", ablation, "Also train distilled students without D_cos, without D_norm and without L_ms");
  app.add_option("--ablation-seeds", ablation_seeds, "Run the ablation for the first k seeds only (default: all)");
  app.add_option("--teacher-signals", signals_path, "Read the teacher's hidden states from this safetensors file instead of training a teacher");
  app.add_option("--teacher-checkpoint", teacher_checkpoint, "Use this trained LLMRec teacher (a distillrec checkpoint) instead of training one");
  app.add_option("--save-signals", save_signals_path, "Write the in-process teacher's states here (first seed)");
  app.add_option("--matmul-precision", matmul_precision, "Precision of the full softmax's catalogue GEMMs: fp32 or bf16 (bfloat16 inputs, fp32 accumulation)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--epochs", training.epochs, "Maximum epochs per model");
  app.add_option("--patience", training.patience, "Validations without improvement before stopping");
  app.add_option("--eval-every", training.eval_every, "Validate every k epochs");
  app.add_option("--batch-size", training.batch_size, "Users per batch");
  app.add_option("--lr", training.adam.learning_rate, "Adam learning rate");
  app.add_option("--seeds", num_seeds, "Number of seeds (each trains every model)");
  app.add_option("--seed", first_seed, "First seed");
  app.add_option("--latency-users", latency_users, "Users timed for the inference latency");
  app.add_option("--threads", threads, "Threads");
  Index sparse_rows = train::TrainerConfig::kDefaultSparseRows;
  app.add_option("--sparse-rows", sparse_rows,
                 "Under mpirun: tensors with at least this many rows (item tables) exchange only the rows a step touched (0: every "
                 "tensor whole)")
      ->capture_default_str();
  app.add_option("--checkpoint-dir", checkpoint_dir, "Save every trained model here");
  app.add_option("--json", json_path, "Write configuration, every run and the summary as JSON here");
  CLI11_PARSE(app, argc, argv);

  try {
    parallel::set_num_threads(threads);
    training.collective = processes.collective();  // every model's training (data-parallel under mpirun)
    training.sparse_rows = sparse_rows;
    slm.positions = distill::parse_align_positions(positions);
    training.objective.catalogue_precision = backend::parse_matmul_precision(matmul_precision);
    if (training.objective.catalogue_precision == backend::MatmulPrecision::kBf16) {
      std::printf("catalogue GEMMs of the next-item objective: bf16 (%s on this machine)\n",
                  backend::has_native_bf16_matmul() ? "oneDNN bf16 matmul" : "no bf16 matmul: widened to fp32, slower");
    }
    slm.use_cos = !no_cos;
    slm.use_norm = !no_norm;
    slm.use_ms = !no_ms;
    const bool from_file = !signals_path.empty();
    const auto map = distill::make_layer_map(teacher_layers, student_layers, slm.blocks);

    const auto log = examples::load_data(data_path, format, synthetic);
    const auto split = data::leave_one_out(log);
    std::printf("data: %s: %ld users, %ld items; %ld users evaluated\n", log.source.c_str(), static_cast<long>(split.num_users()),
                static_cast<long>(split.num_items), static_cast<long>(split.evaluable_users.size()));
    std::printf("layer map (%ld blocks): %s; supervision heads on student layers %s\n", static_cast<long>(slm.blocks),
                map.describe().c_str(), nlohmann::json(map.supervision_layers).dump().c_str());
    std::printf("distillation: %s\n", slm.to_json().dump().c_str());
    base.num_items = split.num_items;
    std::fflush(stdout);

    std::vector<Sequence> latency_histories;
    for (Index u : split.evaluable_users) {
      if (static_cast<Index>(latency_histories.size()) >= latency_users) break;
      latency_histories.push_back(split.test_history(u));
    }

    std::shared_ptr<const distill::TeacherSignals<float>> file_signals;
    if (from_file) {
      file_signals = std::make_shared<const distill::TeacherSignals<float>>(distill::load_teacher_signals<float>(signals_path));
      std::printf("teacher signals: %s: %ld examples, layers %s, hidden %ld, positions %s\n", signals_path.c_str(),
                  static_cast<long>(file_signals->num_examples()), nlohmann::json(file_signals->layers()).dump().c_str(),
                  static_cast<long>(file_signals->hidden_size()), distill::to_string(file_signals->positions()).c_str());
    }

    std::vector<RunResult> runs;
    nlohmann::json config_json{{"teacher_layers", teacher_layers}, {"student_layers", student_layers}, {"model", base.to_json()},
                               {"slmrec", slm.to_json()}, {"item_table", item_table}, {"init", init},
                               {"epochs", training.epochs}, {"patience", training.patience}, {"lr", training.adam.learning_rate},
                               {"batch_size", training.batch_size}, {"threads", threads}, {"data", log.source},
                               {"teacher_signals", signals_path}};

    for (Index si = 0; si < num_seeds; ++si) {
      const std::uint64_t seed = first_seed + static_cast<std::uint64_t>(si);
      training.seed = seed;
      std::printf("\n=== seed %lu ===\n", static_cast<unsigned long>(seed));

      // Test metrics, sizes and latency of a trained model; adds the run to the results.
      // term_parameters: trainable parameters of the distillation (its supervision heads).
      auto report = [&](Model& model, const std::string& name, double seconds_per_epoch, Index best_epoch,
                        double validation, RunResult& run, Index term_parameters = 0) {
        run.name = name;
        run.seed = static_cast<Index>(seed);
        run.layers = model.num_layers();
        run.block_parameters = model.num_block_parameters();
        run.parameters = model.parameters().num_scalars();
        run.trainable_parameters = model.parameters().num_trainable_scalars() + term_parameters;
        run.seconds_per_epoch = seconds_per_epoch;
        run.best_epoch = best_epoch;
        run.validation = validation;
        eval::FullRankingOptions full;
        full.collective = training.collective.get();  // under mpirun each process ranks a share
        run.test = eval::evaluate_full_ranking(model, split, eval::EvalSplit::kTest, full);
        std::tie(run.encode_ms, run.top10_ms) = measure_latency(model, latency_histories, threads);
        std::printf("%s: valid %s %.4f; test [%s] HR@10 %.4f NDCG@10 %.4f MRR %.4f; best epoch %ld; %.2f s/epoch; %.3f ms/user (vector), %.3f ms/user (top-10)\n",
                    name.c_str(), training.selection_metric.c_str(), run.validation, run.test.protocol.c_str(), run.test.value("HR@10"), run.test.value("NDCG@10"), run.test.value("MRR"),
                    static_cast<long>(run.best_epoch), run.seconds_per_epoch, run.encode_ms, run.top10_ms);
        if (!checkpoint_dir.empty()) {
          std::filesystem::create_directories(checkpoint_dir);
          std::string file = name.substr(std::min(name.find_first_not_of(' '), name.size()));  // ablation names are indented
          std::replace(file.begin(), file.end(), ' ', '_');
          if (processes.is_root()) io::save_checkpoint(model, (std::filesystem::path(checkpoint_dir) / (file + "_seed" + std::to_string(seed) + ".safetensors")).string());
        }
        std::fflush(stdout);
        runs.push_back(run);
      };

      // Trains a model, keeps the best validation epoch, times it; `term` adds distillation.
      auto fit = [&](Model& model, const std::string& name, std::shared_ptr<distill::SLMRecDistillation<float>> term) {
        const Index term_parameters =
            term && term->parameters() != nullptr ? term->parameters()->num_trainable_scalars() : 0;
        std::printf("\n--- %s: %ld layers, %ld parameters (%ld in blocks, %ld trainable) ---\n", name.c_str(),
                    static_cast<long>(model.num_layers()), static_cast<long>(model.parameters().num_scalars()),
                    static_cast<long>(model.num_block_parameters()),
                    static_cast<long>(model.parameters().num_trainable_scalars() + term_parameters));
        std::fflush(stdout);
        train::Trainer<Model> trainer(model, split, training);
        RunResult run;
        if (term) {
          trainer.add_term(term);
          trainer.on_epoch_end([term, &run](const train::EpochRecord&) {
            const auto t = term->take_terms();
            std::printf("    distillation terms: D_cos %.4f  D_norm %.4f  L_ms %.4f\n", t.cos, t.norm, t.ms);
            run.terms = t;
            return true;
          });
        }
        const auto summary = trainer.fit();
        report(model, name, summary.median_epoch_seconds(), summary.best_epoch, summary.best_score, run, term_parameters);
      };

      // The shared item table, if any.
      std::optional<Matrix<float>> table;
      if (item_table == "sasrec") {
        models::SASRecConfig sc;
        sc.num_items = split.num_items;
        sc.hidden_size = base.item_dim;
        sc.max_length = base.max_length;
        sc.dropout = 0.5;
        models::SASRec<float> sasrec(sc);
        Rng rng(seed);
        sasrec.initialize(rng);
        std::printf("\n--- SASRec (item table pre-training, full softmax) ---\n");
        train::Trainer<models::SASRec<float>>(sasrec, split, training).fit();
        table = Matrix<float>(sasrec.item_table());
      }

      models::LLMRecConfig teacher_config = base;
      teacher_config.num_layers = teacher_layers;
      teacher_config.freeze_item_table = table.has_value();
      std::optional<Model> teacher;
      std::shared_ptr<const distill::TeacherSignals<float>> signals;
      if (!from_file && !teacher_checkpoint.empty()) {
        teacher.emplace(io::load_checkpoint<Model>(teacher_checkpoint));
        if (teacher->num_layers() != teacher_layers || teacher->num_items() != split.num_items) {
          throw ConfigError(detail::concat(teacher_checkpoint, ": the teacher has ", teacher->num_layers(), " layers and ",
                                           teacher->num_items(), " items; expected ", teacher_layers, " layers (--teacher-layers) and the data's ",
                                           split.num_items, " items"));
        }
        std::printf("teacher: %s (not trained here)\n", teacher_checkpoint.c_str());
        RunResult run;
        eval::FullRankingOptions full;
        full.collective = training.collective.get();
        const double valid = eval::evaluate_full_ranking(*teacher, split, eval::EvalSplit::kValid, full).value(training.selection_metric);
        report(*teacher, "teacher", std::nan(""), 0, valid, run);
        if (item_table == "teacher") table = Matrix<float>(teacher->item_table());
      }
      if (!from_file) {
        if (!teacher) {
          teacher.emplace(teacher_config);
          Rng rng(seed);
          teacher->initialize(rng);
          if (table) teacher->set_item_table(*table);
          fit(*teacher, "teacher", nullptr);
          if (item_table == "teacher") table = Matrix<float>(teacher->item_table());
        }
        const auto start = std::chrono::steady_clock::now();
        auto computed = std::make_shared<const distill::TeacherSignals<float>>(
            distill::compute_teacher_signals(*teacher, map.teacher_indices(), split, slm.positions, &log.item_raw_ids, 256,
                                             training.collective.get()));  // sharded under mpirun
        std::printf("teacher signals: %ld examples, %.1f MiB, %.1f s\n", static_cast<long>(computed->num_examples()),
                    static_cast<double>(computed->bytes()) / (1024.0 * 1024.0),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        if (!save_signals_path.empty() && si == 0) {
          if (processes.is_root()) distill::save_teacher_signals(*computed, save_signals_path);
          std::printf("wrote %s\n", save_signals_path.c_str());
        }
        signals = computed;
      } else {
        signals = file_signals;
      }

      // A fresh student from `rng` (seeded with seed + 1000; a distillation's heads draw next).
      auto make_student = [&](Rng& rng) {
        models::LLMRecConfig sc = base;
        sc.num_layers = student_layers;
        sc.freeze_item_table = table.has_value();
        Model student(sc);
        student.initialize(rng);
        if (init == "teacher") {
          if (!teacher) throw ConfigError("--init teacher needs an in-process teacher (not --teacher-signals)");
          distill::init_student_from_teacher(*teacher, student);
        }
        if (table) student.set_item_table(*table);
        return student;
      };

      {
        Rng rng(seed + 1000);
        Model student = make_student(rng);
        fit(student, "student", nullptr);
      }
      auto distilled = [&](const std::string& name, distill::SLMRecConfig config) {
        Rng rng(seed + 1000);
        Model student = make_student(rng);
        auto distillation = std::make_shared<distill::SLMRecDistillation<float>>(config, map, signals, split, student, &log.item_raw_ids);
        distillation->initialize(rng);
        fit(student, name, distillation);
      };
      distilled("student + SLMRec", slm);
      if (ablation && (ablation_seeds < 0 || si < ablation_seeds)) {
        auto c = slm;
        c.use_cos = false;
        distilled("  without D_cos", c);
        c = slm;
        c.use_norm = false;
        distilled("  without D_norm", c);
        c = slm;
        c.use_ms = false;
        distilled("  without L_ms", c);
      }
    }

    // Summary: mean ± std over seeds per model.
    std::vector<std::string> names;
    for (const auto& r : runs) {
      if (std::find(names.begin(), names.end(), r.name) == names.end()) names.push_back(r.name);
    }
    const models::Popularity<float> popularity(split.train, split.num_items);
    eval::FullRankingOptions full;
    full.collective = training.collective.get();
    const auto pop = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest, full);
    std::printf("\nresults: test split, full ranking (all %ld items, history masked, pessimistic ties), model of the best validation "
                "epoch; mean ± std over %ld seed(s); inference = one user on 1 thread, median over %zu users\n",
                static_cast<long>(split.num_items), static_cast<long>(num_seeds), latency_histories.size());
    std::printf("%-18s %6s %11s %12s %16s %18s %18s %18s %18s %18s\n", "model", "layers", "block params", "all params", "train s/epoch",
                "ms/user (vector)", "ms/user (top-10)", "HR@10", "NDCG@10", "MRR");
    nlohmann::json summary = nlohmann::json::object();
    for (const auto& name : names) {
      std::vector<double> sec, enc, top, hr, ndcg, mrr;
      const RunResult* any = nullptr;
      for (const auto& r : runs) {
        if (r.name != name) continue;
        any = &r;
        sec.push_back(r.seconds_per_epoch);
        enc.push_back(r.encode_ms);
        top.push_back(r.top10_ms);
        hr.push_back(r.test.value("HR@10"));
        ndcg.push_back(r.test.value("NDCG@10"));
        mrr.push_back(r.test.value("MRR"));
      }
      std::printf("%-18s %6ld %11ld %12ld %16s %18s %18s %18s %18s %18s\n", name.c_str(), static_cast<long>(any->layers),
                  static_cast<long>(any->block_parameters), static_cast<long>(any->parameters), fmt(stats(sec), "%.2f").c_str(),
                  fmt(stats(enc), "%.3f").c_str(), fmt(stats(top), "%.3f").c_str(), fmt(stats(hr), "%.4f").c_str(),
                  fmt(stats(ndcg), "%.4f").c_str(), fmt(stats(mrr), "%.4f").c_str());
      summary[name] = {{"layers", any->layers},
                       {"block_parameters", any->block_parameters},
                       {"parameters", any->parameters},
                       {"seconds_per_epoch", {{"mean", stats(sec).mean}, {"std", stats(sec).std}}},
                       {"encode_ms_per_user", {{"mean", stats(enc).mean}, {"std", stats(enc).std}}},
                       {"top10_ms_per_user", {{"mean", stats(top).mean}, {"std", stats(top).std}}},
                       {"HR@10", {{"mean", stats(hr).mean}, {"std", stats(hr).std}}},
                       {"NDCG@10", {{"mean", stats(ndcg).mean}, {"std", stats(ndcg).std}}},
                       {"MRR", {{"mean", stats(mrr).mean}, {"std", stats(mrr).std}}}};
    }
    std::printf("%-18s %6s %11s %12s %16s %18s %18s %18.4f %18.4f %18.4f\n", "popularity", "-", "-", "-", "-", "-", "-",
                pop.value("HR@10"), pop.value("NDCG@10"), pop.value("MRR"));

    // Ratios and the paired effect of distillation.
    auto mean_of = [&](const std::string& name, const char* key) {
      return summary.contains(name) ? summary[name][key]["mean"].get<double>() : 0.0;
    };
    if (summary.contains("teacher")) {
      std::printf("\nstudent / teacher block parameters: %.1f%%; inference speed-up (vector) %.2fx, (top-10) %.2fx; training speed-up %.2fx\n",
                  100.0 * static_cast<double>(summary["student"]["block_parameters"].get<Index>()) /
                      static_cast<double>(summary["teacher"]["block_parameters"].get<Index>()),
                  mean_of("teacher", "encode_ms_per_user") / mean_of("student", "encode_ms_per_user"),
                  mean_of("teacher", "top10_ms_per_user") / mean_of("student", "top10_ms_per_user"),
                  mean_of("teacher", "seconds_per_epoch") / mean_of("student", "seconds_per_epoch"));
    }
    std::vector<double> diffs;
    for (const auto& r : runs) {
      if (r.name != "student + SLMRec") continue;
      for (const auto& p : runs) {
        if (p.name == "student" && p.seed == r.seed) diffs.push_back(r.test.value("NDCG@10") - p.test.value("NDCG@10"));
      }
    }
    const auto d = stats(diffs);
    std::printf("distillation effect on test NDCG@10 (distilled - plain student, paired by seed): %+.4f ± %.4f over %zu seed(s) "
                "(relative %+.1f%%)\n",
                d.mean, d.std, diffs.size(), 100.0 * d.mean / std::max(1e-12, mean_of("student", "NDCG@10")));
    std::printf("peak memory: %.0f MiB\n", examples::peak_memory_mib());

    if (!json_path.empty()) {
      nlohmann::json out{{"configuration", config_json}, {"summary", summary}, {"popularity", pop.to_json()},
                         {"distillation_effect_ndcg10", {{"mean", d.mean}, {"std", d.std}, {"seeds", diffs.size()}}},
                         {"peak_memory_mib", examples::peak_memory_mib()}};
      for (const auto& r : runs) out["runs"].push_back(r.to_json());
      if (processes.is_root()) io::write_file_atomic(json_path, [&](std::ostream& os) { os << out.dump(2) << "\n"; });
      std::printf("wrote %s\n", json_path.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    return processes.fail(e);
  }
}
