// distill_dllm2rec: DLLM2Rec distillation end to end (methods.md §2). A teacher (SASRec trained
// with full-softmax cross-entropy, by default) ranks the catalogue for every training example and
// lends its item embeddings; SASRec and GRU4Rec students train with the binary cross-entropy of
// the reference, each with nothing, ranking distillation only, embedding distillation only, and
// both. Every model is selected on validation (NDCG@10) and tested once; students distilled with
// embeddings are folded first (the served model carries no teacher table). The table gives
// full-ranking HR@10, NDCG@10 and MRR as mean ± std over seeds, parameters, training seconds per
// epoch and inference time per user.
//
//   distill_dllm2rec                                           built-in synthetic data
//   distill_dllm2rec --data ../shared/data/amazon-games.txt --seeds 3 --json out.json
//   distill_dllm2rec --data log.txt --teacher-signals signals.safetensors   rankings written
//                    elsewhere (export_teacher_signals, or PyTorch: bench/pytorch/write_ranking_signals.py)
//
// The teacher trains once (first seed); the students train once per seed from the same signals.
// --json keeps every epoch's validation result of every run (bench/plot_curves.py draws them).
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/distill/embedding_distillation.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/gru4rec.hpp"
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
#include <map>
#include <memory>
#include <sstream>

using namespace distillrec;

using examples::fmt;
using examples::median;
using examples::stats;
using examples::RunResult;

int main(int argc, char** argv) {
  examples::Processes processes(argc, argv);  // one, or data-parallel under mpirun
  CLI::App app{"DLLM2Rec ranking distillation: SASRec and GRU4Rec students learn a teacher's top-K rankings (Cui et al., RecSys 2024)."};
  std::string data_path, format = "auto", protocol = "leave-one-out", json_path, signals_path, save_signals_path, teacher_checkpoint;
  std::string students = "sasrec,gru4rec", variants = "plain,ranking,embedding,both", checkpoint_dir, embeddings_path;
  std::string projector = "linear", student_head = "untied";
  distill::EmbeddingDistillationConfig ed;
  distill::DROSConfig dros;
  dros.alpha = 0.0;
  data::SyntheticConfig synthetic;
  models::SASRecConfig teacher_config;
  teacher_config.hidden_size = 64;
  teacher_config.num_blocks = 2;
  teacher_config.dropout = 0.5;
  Index hidden = 64, max_length = 50, num_seeds = 1, latency_users = 500, teacher_epochs = 200;
  std::uint64_t first_seed = 1;
  distill::RankingDistillationConfig rd;
  train::TrainerConfig training;
  training.epochs = 200;
  training.eval_every = 1;
  training.patience = 5;
  training.objective.objective = train::Objective::kBce;
  training.adam.learning_rate = 1e-3;
  int threads = 2;
  double student_dropout = 0.1;
  bool mask_teacher_history = false;

  app.add_option("--data", data_path, "Interaction log: SASRec text (\"user item\" lines) or CSV (user,item,timestamp); default: synthetic data");
  app.add_option("--format", format, "Log format: auto (by extension), text or csv")->check(CLI::IsMember({"auto", "text", "csv"}));
  app.add_option("--synthetic-users", synthetic.num_users, "Synthetic data: number of users");
  app.add_option("--synthetic-items", synthetic.num_items, "Synthetic data: number of items");
  app.add_option("--split", protocol, "leave-one-out (one example per user, every position predicts), every-prefix (one per prefix) or temporal")
      ->check(CLI::IsMember({"leave-one-out", "every-prefix", "temporal"}));
  app.add_option("--teacher-hidden", teacher_config.hidden_size, "Teacher (SASRec, full softmax): hidden size");
  app.add_option("--teacher-blocks", teacher_config.num_blocks, "Teacher: transformer blocks");
  app.add_option("--teacher-dropout", teacher_config.dropout, "Teacher: dropout");
  app.add_option("--teacher-epochs", teacher_epochs, "Teacher: maximum epochs");
  app.add_option("--teacher-checkpoint", teacher_checkpoint, "Use this trained SASRec teacher (a distillrec checkpoint) instead of training one");
  app.add_option("--teacher-signals", signals_path, "Read the teacher's rankings from this safetensors file instead of a teacher");
  app.add_option("--save-signals", save_signals_path, "Write the teacher's rankings and item embeddings here");
  app.add_option("--students", students, "Comma-separated: sasrec, gru4rec");
  app.add_option("--variants", variants, "Comma-separated: plain (no distillation), ranking, embedding (embedding distillation), both");
  app.add_option("--teacher-embeddings", embeddings_path, "The teacher's item embeddings: a teacher-signal file (safetensors) or the reference's .npy [items, D] (row = 0-based item id)");
  app.add_option("--ed-weight", ed.weight, "Embedding distillation: weight w of the projected teacher embedding");
  app.add_option("--projector", projector, "Embedding distillation: linear (the reference) or mlp (the paper)")->check(CLI::IsMember({"linear", "mlp"}));
  app.add_option("--student-head", student_head, "SASRec student's output head: untied (DLLM2Rec's; embedding distillation folds into it) or tied")
      ->check(CLI::IsMember({"untied", "tied"}));
  app.add_option("--hidden", hidden, "Students: hidden size (and item table width)");
  app.add_option("--student-dropout", student_dropout, "Students: dropout");
  app.add_option("--max-length", max_length, "Longest history every model reads");
  app.add_option("-k,--candidates", rd.candidates, "Teacher candidates per example (K)");
  app.add_option("--lambda", rd.weight, "Weight of the ranking distillation loss (λ)");
  app.add_option("--gamma-position", rd.weights.gamma_position, "γ_p: weight of the position-aware importance");
  app.add_option("--gamma-confidence", rd.weights.gamma_confidence, "γ_c: weight of the confidence-aware importance");
  app.add_option("--gamma-consistency", rd.weights.gamma_consistency, "γ_o: weight of the consistency-aware importance (default 0; the reference's 0.1 scores the whole catalogue for the student at every step)");
  app.add_option("--lambda-position", rd.weights.lambda_position, "λ_r: position weights exp(-k/λ_r)");
  app.add_option("--dros-alpha", dros.alpha, "DROS: weight α of the robustness term for every student and inside the ranking loss (0: off, the default; the reference uses 1.0, its README 0.5)");
  app.add_option("--dros-beta", dros.beta, "DROS: radius β");
  app.add_flag("--mask-teacher-history", mask_teacher_history, "Leave each example's history items out of the teacher's top-K (the reference keeps them)");
  app.add_flag("--reference-negative", rd.reference_negative, "Negative term -log σ(1 - z) as the reference code, instead of -log(1 - σ(z))");
  app.add_option("--epochs", training.epochs, "Students: maximum epochs");
  app.add_option("--patience", training.patience, "Validations without improvement before stopping");
  app.add_option("--eval-every", training.eval_every, "Validate every k epochs");
  app.add_option("--batch-size", training.batch_size, "Examples per batch");
  app.add_option("--lr", training.adam.learning_rate, "Adam learning rate");
  app.add_option("--seeds", num_seeds, "Number of seeds (each trains every student)");
  app.add_option("--seed", first_seed, "First seed");
  app.add_option("--latency-users", latency_users, "Users timed for the inference latency");
  app.add_option("--threads", threads, "Threads");
  Index sparse_rows = train::TrainerConfig::kDefaultSparseRows;
  app.add_option("--sparse-rows", sparse_rows,
                 "Under mpirun: tensors with at least this many rows (item tables) exchange only the rows a step touched (0: every "
                 "tensor whole)")
      ->capture_default_str();
  app.add_option("--checkpoint-dir", checkpoint_dir, "Save every trained model here");
  app.add_option("--json", json_path, "Write configuration, every run (with its validation curve) and the summary as JSON here");
  CLI11_PARSE(app, argc, argv);

  try {
    parallel::set_num_threads(threads);
    training.collective = processes.collective();  // every model's training (data-parallel under mpirun)
    training.sparse_rows = sparse_rows;
    rd.validate();
    const auto student_list = examples::split_list(students);
    const auto variant_list = examples::split_list(variants);
    for (const auto& s : student_list) {
      if (s != "sasrec" && s != "gru4rec") throw ConfigError("--students: unknown student \"" + s + "\" (sasrec, gru4rec)");
    }
    for (const auto& v : variant_list) {
      if (v != "plain" && v != "ranking" && v != "embedding" && v != "both") {
        throw ConfigError("--variants: unknown variant \"" + v + "\" (plain, ranking, embedding, both)");
      }
    }
    ed.projector = distill::parse_projector(projector);
    if (dros.alpha > 0) {
      dros.validate();
      rd.dros_alpha = dros.alpha;
      rd.dros_beta = dros.beta;
    }
    ed.validate();
    const auto log = examples::load_data(data_path, format, synthetic);
    const auto split = examples::make_split(log, protocol);
    const distill::ItemIdMap items(log.item_raw_ids);
    std::printf("data: %s: %ld users, %ld items; %zu training, %zu validation, %zu test examples (%s)\n", log.source.c_str(),
                static_cast<long>(log.num_users()), static_cast<long>(log.num_items), split.train.size(), split.valid.size(),
                split.test.size(), protocol.c_str());
    std::fflush(stdout);
    std::vector<Sequence> latency_histories;
    for (const auto& e : split.test) {
      if (static_cast<Index>(latency_histories.size()) >= latency_users) break;
      latency_histories.push_back(split.history(e));
    }

    std::vector<RunResult> runs;
    auto report = [&](const auto& model, const std::string& name, std::uint64_t seed, const train::TrainingSummary* summary) {
      runs.push_back(examples::test_run(model, name, seed, summary, split, latency_histories, threads, 0, training.collective.get()));
    };
    auto save = [&](const auto& model, const std::string& name, std::uint64_t seed) {
      if (checkpoint_dir.empty() || !processes.is_root()) return;
      std::filesystem::create_directories(checkpoint_dir);
      std::string file = name;
      std::replace(file.begin(), file.end(), ' ', '_');
      io::save_checkpoint(model, (std::filesystem::path(checkpoint_dir) / (file + "_seed" + std::to_string(seed) + ".safetensors")).string());
    };

    // The teacher's rankings: from a file, or from a teacher trained (or loaded) here.
    std::shared_ptr<const distill::RankingSignals> signals;
    std::shared_ptr<const distill::TeacherItemEmbeddings> teacher_embeddings;
    auto wants = [&](const char* v) { return std::find(variant_list.begin(), variant_list.end(), v) != variant_list.end(); };
    const bool need_signals = wants("ranking") || wants("both");
    const bool need_embeddings = wants("embedding") || wants("both");
    if (!embeddings_path.empty()) {
      const bool npy = embeddings_path.size() > 4 && embeddings_path.substr(embeddings_path.size() - 4) == ".npy";
      teacher_embeddings = std::make_shared<const distill::TeacherItemEmbeddings>(
          npy ? distill::read_reference_item_embeddings(embeddings_path, items) : distill::load_teacher_item_embeddings(embeddings_path, items));
    }
    if (!signals_path.empty()) {
      signals = std::make_shared<const distill::RankingSignals>(distill::load_ranking_signals(signals_path, items));
      std::printf("teacher signals: %s: %ld examples, top-%ld, %s\n", signals_path.c_str(), static_cast<long>(signals->num_examples()),
                  static_cast<long>(signals->k()), distill::to_string(signals->order()).c_str());
      if (!teacher_embeddings && need_embeddings) {
        teacher_embeddings = std::make_shared<const distill::TeacherItemEmbeddings>(distill::load_teacher_item_embeddings(signals_path, items));
      }
    } else {
      std::optional<models::SASRec<float>> teacher;
      if (!teacher_checkpoint.empty()) {
        teacher.emplace(io::load_checkpoint<models::SASRec<float>>(teacher_checkpoint));
        if (teacher->num_items() != split.num_items) {
          throw ShapeError(detail::concat(teacher_checkpoint, " scores ", teacher->num_items(), " items, the data has ", split.num_items));
        }
        std::printf("\n--- teacher: %s ---\n", teacher_checkpoint.c_str());
        report(*teacher, "teacher (SASRec, softmax)", first_seed, nullptr);
      } else {
        teacher_config.num_items = split.num_items;
        teacher_config.max_length = max_length;
        teacher.emplace(teacher_config);
        Rng rng(first_seed);
        teacher->initialize(rng);
        train::TrainerConfig tc = training;
        tc.seed = first_seed;
        tc.epochs = teacher_epochs;
        tc.objective.objective = train::Objective::kSoftmax;
        std::printf("\n--- teacher: SASRec, full-softmax cross-entropy, %ld parameters ---\n",
                    static_cast<long>(teacher->parameters().num_scalars()));
        std::fflush(stdout);
        const auto summary = train::Trainer<models::SASRec<float>>(*teacher, split, tc).fit();
        report(*teacher, "teacher (SASRec, softmax)", first_seed, &summary);
        save(*teacher, "teacher", first_seed);
      }
      if (!teacher_embeddings) teacher_embeddings = std::make_shared<const distill::TeacherItemEmbeddings>(distill::model_item_embeddings(*teacher));
      if (need_signals || !save_signals_path.empty()) {
        const auto start = std::chrono::steady_clock::now();
        signals = std::make_shared<const distill::RankingSignals>(distill::compute_ranking_signals(
            *teacher, split, rd.candidates, data::Part::kTrain, mask_teacher_history, 256, training.collective.get()));  // sharded under mpirun
        std::printf("teacher signals: top-%ld for %ld training examples in %.1f s\n", static_cast<long>(rd.candidates),
                    static_cast<long>(signals->num_examples()),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        if (!save_signals_path.empty()) {
          if (processes.is_root()) distill::save_ranking_signals(save_signals_path, signals.get(), teacher_embeddings.get(), items, {{"teacher", "sasrec"}, {"split", protocol}});
          std::printf("wrote %s\n", save_signals_path.c_str());
        }
      }
    }

    if (teacher_embeddings) {
      std::printf("teacher item embeddings: %s, [%ld, %ld]\n", teacher_embeddings->source.c_str(), static_cast<long>(teacher_embeddings->num_items()),
                  static_cast<long>(teacher_embeddings->dim()));
    }
    if (need_embeddings && !teacher_embeddings) throw ConfigError("embedding distillation needs the teacher's item embeddings (--teacher-embeddings)");
    // Check the signals against the data before any training (the terms check again).
    if (need_signals) signals->match(split, rd.candidates);
    if (teacher_embeddings) teacher_embeddings->check(split.num_items);

    for (Index si = 0; si < num_seeds; ++si) {
      const std::uint64_t seed = first_seed + static_cast<std::uint64_t>(si);
      training.seed = seed;
      std::printf("\n=== seed %lu ===\n", static_cast<unsigned long>(seed));
      auto fit = [&](auto& model, const std::string& name, bool rank, bool embed) {
        using Model = std::decay_t<decltype(model)>;
        Rng rng(seed + 1000);
        model.initialize(rng);
        train::Trainer<Model> trainer(model, split, training);
        if (dros.alpha > 0) trainer.add_term(std::make_shared<distill::DROSTerm<Model>>(split, dros));
        if (rank) trainer.add_term(std::make_shared<distill::RankingDistillation<Model>>(signals, split, rd));
        std::shared_ptr<distill::EmbeddingDistillation<Model>> embedding;
        if (embed) {
          embedding = std::make_shared<distill::EmbeddingDistillation<Model>>(teacher_embeddings, model, ed);
          embedding->initialize(rng);
          trainer.add_term(embedding);
        }
        std::printf("\n--- %s: %ld parameters%s ---\n", name.c_str(), static_cast<long>(model.parameters().num_scalars()),
                    embed ? detail::concat(" (+ ", embedding->parameters()->num_scalars(), " in the projection while training)").c_str() : "");
        std::fflush(stdout);
        const auto summary = trainer.fit();
        const bool tied = model.output_weights().weight.data() == model.item_table().data() + model.item_table().cols();
        if (embedding && !tied) {
          embedding->fold(model);  // the served student: no teacher table, the same scores
          std::printf("folded the projected teacher embeddings into the item table\n");
        }
        report(model, name, seed, &summary);
        if (!embedding || !tied) save(model, name, seed);
      };
      for (const auto& student : student_list) {
        for (const auto& variant : variant_list) {
          const bool rank = variant == "ranking" || variant == "both";
          const bool embed = variant == "embedding" || variant == "both";
          const std::string name = (student == "sasrec" ? "SASRec" : "GRU4Rec") +
                                   std::string(variant == "plain" ? "" : variant == "ranking" ? " + ranking" : variant == "embedding" ? " + embedding" : " + both");
          if (student == "sasrec") {
            models::SASRecConfig c;
            c.num_items = split.num_items;
            c.hidden_size = hidden;
            c.max_length = max_length;
            c.dropout = student_dropout;
            c.head = nn::parse_head_kind(student_head);
            models::SASRec<float> model(c);
            fit(model, name, rank, embed);
          } else {
            models::GRU4RecConfig c;
            c.num_items = split.num_items;
            c.embedding_dim = hidden;
            c.hidden_size = hidden;
            c.max_length = max_length;
            c.dropout = student_dropout;
            c.head = nn::HeadKind::kUntied;
            models::GRU4Rec<float> model(c);
            fit(model, name, rank, embed);
          }
        }
      }
    }

    // Summary: mean ± std over seeds per model.
    std::vector<std::string> names;
    for (const auto& r : runs) {
      if (std::find(names.begin(), names.end(), r.name) == names.end()) names.push_back(r.name);
    }
    const models::Popularity<float> popularity(split);
    eval::FullRankingOptions full;
    full.collective = training.collective.get();
    const auto pop = eval::evaluate_full_ranking(popularity, split, eval::EvalSplit::kTest, full);
    std::printf("\nresults: test split, full ranking (all %ld items, history masked, pessimistic ties), each model at its best "
                "validation epoch; mean ± std over %ld seed(s); inference = one user's top-10 on 1 thread, median over %zu users\n",
                static_cast<long>(split.num_items), static_cast<long>(num_seeds), latency_histories.size());
    std::printf("%-26s %10s %16s %16s %18s %18s %18s\n", "model", "params", "train s/epoch", "ms/user", "HR@10", "NDCG@10", "MRR");
    nlohmann::json summary = nlohmann::json::object();
    for (const auto& name : names) {
      std::vector<double> sec, lat, hr, ndcg, mrr;
      Index params = 0;
      for (const auto& r : runs) {
        if (r.name != name) continue;
        params = r.parameters;
        sec.push_back(r.seconds_per_epoch);
        lat.push_back(r.top10_ms);
        hr.push_back(r.test.value("HR@10"));
        ndcg.push_back(r.test.value("NDCG@10"));
        mrr.push_back(r.test.value("MRR"));
      }
      std::printf("%-26s %10ld %16s %16s %18s %18s %18s\n", name.c_str(), static_cast<long>(params), fmt(stats(sec), "%.2f").c_str(),
                  fmt(stats(lat), "%.3f").c_str(), fmt(stats(hr), "%.4f").c_str(), fmt(stats(ndcg), "%.4f").c_str(),
                  fmt(stats(mrr), "%.4f").c_str());
      summary[name] = {{"parameters", params},
                       {"runs", hr.size()},
                       {"seconds_per_epoch", {{"mean", stats(sec).mean}, {"std", stats(sec).std}}},
                       {"ms_per_user", {{"mean", stats(lat).mean}, {"std", stats(lat).std}}},
                       {"HR@10", {{"mean", stats(hr).mean}, {"std", stats(hr).std}}},
                       {"NDCG@10", {{"mean", stats(ndcg).mean}, {"std", stats(ndcg).std}}},
                       {"MRR", {{"mean", stats(mrr).mean}, {"std", stats(mrr).std}}}};
    }
    std::printf("%-26s %10s %16s %16s %18.4f %18.4f %18.4f\n", "popularity", "-", "-", "-", pop.value("HR@10"), pop.value("NDCG@10"),
                pop.value("MRR"));
    // The paired effect of ranking distillation per student, and its training cost.
    nlohmann::json effects = nlohmann::json::object();  // per distilled variant against its plain student
    for (const std::string variant : {"ranking", "embedding", "both"})
    for (const std::string student : {"SASRec", "GRU4Rec"}) {
      std::vector<double> diffs, cost;
      for (const auto& r : runs) {
        if (r.name != student + " + " + variant) continue;
        for (const auto& p : runs) {
          if (p.name == student && p.seed == r.seed) {
            diffs.push_back(r.test.value("NDCG@10") - p.test.value("NDCG@10"));
            cost.push_back(r.seconds_per_epoch / p.seconds_per_epoch);
          }
        }
      }
      if (diffs.empty()) continue;
      const auto d = stats(diffs);
      const auto c = stats(cost);
      const double base = summary[student]["NDCG@10"]["mean"].get<double>();
      std::printf("%s + %s: test NDCG@10 %+.4f ± %.4f against the plain student (paired by seed, %zu seed(s); relative %+.1f%%); "
                  "seconds per epoch x%.2f\n",
                  student.c_str(), variant.c_str(), d.mean, d.std, diffs.size(), 100.0 * d.mean / std::max(1e-12, base), c.mean);
      effects[student + " + " + variant] = {{"ndcg10_difference", {{"mean", d.mean}, {"std", d.std}}}, {"seconds_per_epoch_ratio", c.mean}, {"seeds", diffs.size()}};
    }
    std::printf("peak memory: %.0f MiB\n", examples::peak_memory_mib());

    if (!json_path.empty()) {
      nlohmann::json config{{"data", log.source},
                            {"split", protocol},
                            {"teacher", {{"model", "sasrec"}, {"config", teacher_config.to_json()}, {"checkpoint", teacher_checkpoint}}},
                            {"teacher_signals", signals_path},
                            {"teacher_history_masked", mask_teacher_history},
                            {"ranking_distillation",
                             {{"K", rd.candidates},
                              {"lambda", rd.weight},
                              {"gamma_position", rd.weights.gamma_position},
                              {"gamma_confidence", rd.weights.gamma_confidence},
                              {"gamma_consistency", rd.weights.gamma_consistency},
                              {"lambda_position", rd.weights.lambda_position},
                              {"reference_negative", rd.reference_negative}}},
                            {"embedding_distillation", {{"weight", ed.weight}, {"projector", projector}, {"teacher_embeddings", embeddings_path}}},
                            {"student_head", student_head},
                            {"dros", {{"alpha", dros.alpha}, {"beta", dros.beta}}},
                            {"students", {{"hidden", hidden}, {"dropout", student_dropout}, {"max_length", max_length}}},
                            {"epochs", training.epochs},
                            {"patience", training.patience},
                            {"lr", training.adam.learning_rate},
                            {"batch_size", training.batch_size},
                            {"threads", threads}};
      nlohmann::json out{{"configuration", config}, {"summary", summary}, {"popularity", pop.to_json()},
                         {"distillation_effects", effects}, {"peak_memory_mib", examples::peak_memory_mib()}};
      for (const auto& r : runs) out["runs"].push_back(r.to_json());
      if (processes.is_root()) io::write_file_atomic(json_path, [&](std::ostream& os) { os << out.dump(2) << "\n"; });
      std::printf("wrote %s\n", json_path.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    return processes.fail(e);
  }
}
