// export_teacher_signals: writes a trained model's ranking signals for DLLM2Rec distillation
// (distill/ranking_signals.hpp): its top-K over the full catalogue for every training example
// of a split, keyed by the examples' ids, and its item embeddings (the rows its output head
// scores items with). Any checkpoint of the library's models works (SASRec, GRU4Rec, LLMRec: the
// type comes from the file's metadata); the output is the file `distill_dllm2rec
// --teacher-signals` reads, and the one bench/pytorch/write_ranking_signals.py writes from PyTorch.
//
//   export_teacher_signals --checkpoint teacher.safetensors --data ../shared/data/amazon-games.txt
//                          --split leave-one-out --k 50 --out teacher_signals.safetensors
//
// Item ids in the file are those of the log file. The student must use the same split: the
// examples' ids (leave-one-out: the user ids; every-prefix and temporal: the row in the training
// set) are checked when the signals are read.
#include "distillrec/distill/dllm2rec.hpp"
#include "distillrec/distill/ranking_signals.hpp"
#include "distillrec/models/registry.hpp"

#include "example_support.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

using namespace distillrec;

int main(int argc, char** argv) {
  CLI::App app{"Write a trained model's top-K rankings and item embeddings as DLLM2Rec teacher signals (safetensors)."};
  std::string checkpoint, data_path, format = "auto", protocol = "leave-one-out", out_path;
  Index k = 50;
  int threads = 2;
  bool mask_history = false, no_embeddings = false;
  app.add_option("--checkpoint", checkpoint, "Teacher checkpoint (safetensors, any of the library's models)")->required();
  app.add_option("--data", data_path, "Interaction log (SASRec text or CSV)")->required();
  app.add_option("--format", format, "auto, text or csv")->check(CLI::IsMember({"auto", "text", "csv"}));
  app.add_option("--split", protocol, "Training examples: leave-one-out, every-prefix or temporal (the student's)")
      ->check(CLI::IsMember({"leave-one-out", "every-prefix", "temporal"}));
  app.add_option("-k,--k", k, "Items per example (the students may use fewer)");
  app.add_flag("--mask-history", mask_history, "Leave each example's history items out of its list (the reference keeps them)");
  app.add_flag("--no-embeddings", no_embeddings, "Write the rankings only");
  app.add_option("--threads", threads, "Threads");
  app.add_option("--out", out_path, "Output file (safetensors, written atomically)")->required();
  CLI11_PARSE(app, argc, argv);

  try {
    parallel::set_num_threads(threads);
    const auto log = examples::load_data(data_path, format, {});
    const auto split = examples::make_split(log, protocol);
    std::printf("data: %s: %ld users, %ld items; %zu training examples (%s)\n", log.source.c_str(), static_cast<long>(log.num_users()),
                static_cast<long>(log.num_items), split.train.size(), protocol.c_str());
    return models::with_checkpoint_model<float>(checkpoint, [&](auto model) -> int {
      using Model = typename decltype(model)::element_type;
      std::printf("teacher: %s (%s, %ld items)\n", checkpoint.c_str(), Model::kModelName, static_cast<long>(model->num_items()));
      std::fflush(stdout);
      const auto start = std::chrono::steady_clock::now();
      const auto ranking = distill::compute_ranking_signals(*model, split, k, data::Part::kTrain, mask_history);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("ranked %ld examples, top-%ld over all items, in %.1f s\n", static_cast<long>(ranking.num_examples()),
                  static_cast<long>(k), seconds);
      const distill::ItemIdMap items(log.item_raw_ids);
      std::optional<distill::TeacherItemEmbeddings> embeddings;
      if (!no_embeddings) embeddings = distill::model_item_embeddings(*model);
      distill::save_ranking_signals(out_path, &ranking, embeddings ? &*embeddings : nullptr, items,
                                    {{"teacher", Model::kModelName}, {"split", protocol}, {"data", log.source},
                                     {"history_masked", mask_history ? "true" : "false"}});
      std::printf("wrote %s (%s)\n", out_path.c_str(),
                  embeddings ? detail::concat("rankings and item embeddings [", embeddings->num_items(), ", ", embeddings->dim(), "]").c_str()
                             : "rankings");
      return 0;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
