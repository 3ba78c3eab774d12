// evaluate_checkpoint: loads a checkpoint of any of the library's models (SASRec, GRU4Rec,
// LLMRec: the type comes from the file's metadata; saved by `train`, or written from PyTorch with
// the documented tensor names) and evaluates it on a log with the library's protocols
// (leave-one-out), or prints top-k recommendations for some users.
//
//   evaluate_checkpoint --checkpoint sasrec.safetensors --data ../shared/data/amazon-games.txt
//   evaluate_checkpoint --checkpoint sasrec.safetensors --data log.txt --recommend 1 --recommend 2
//
// The sampled (legacy) protocol draws its candidates from --seed, or loads them from
// --candidates-dir (valid.npy, test.npy) to judge several models on the same candidates.
#include "distillrec/data/split.hpp"
#include "distillrec/eval/full_ranking.hpp"
#include "distillrec/eval/sampled.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/checkpoint.hpp"
#include "distillrec/models/registry.hpp"
#include "distillrec/serve/recommender.hpp"

#include "example_support.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>

using namespace distillrec;

int main(int argc, char** argv) {
  CLI::App app{"Evaluate a checkpoint (SASRec, GRU4Rec or LLMRec) on an interaction log, or recommend with it."};
  std::string checkpoint, data_path, format = "auto", candidates_dir, json_path;
  std::vector<std::int64_t> recommend_users;
  Index k = 10;
  int threads = 2;
  std::uint64_t seed = 2018;
  bool keep_history = false;
  app.add_option("--checkpoint", checkpoint, "Model checkpoint (safetensors)")->required();
  app.add_option("--data", data_path, "Interaction log (SASRec text or CSV)")->required();
  app.add_option("--format", format, "auto, text or csv")->check(CLI::IsMember({"auto", "text", "csv"}));
  app.add_option("--candidates-dir", candidates_dir, "Load sampled candidates (valid.npy, test.npy) from here");
  app.add_option("--seed", seed, "Seed of the sampled candidates when none are loaded");
  app.add_flag("--keep-history", keep_history, "Full ranking: do not mask history items");
  app.add_option("--recommend", recommend_users, "Print top-k for these users (ids as in the file), instead of evaluating");
  app.add_option("-k", k, "Recommendations per user");
  app.add_option("--threads", threads, "Threads");
  app.add_option("--json", json_path, "Write the metrics as JSON here");
  CLI11_PARSE(app, argc, argv);

  try {
    parallel::set_num_threads(threads);
    const auto log = examples::load_data(data_path, format, {});
    const auto split = data::leave_one_out(log);
    return models::with_checkpoint_model<float>(checkpoint, [&](auto model) -> int {
      using Model = typename decltype(model)::element_type;
      const std::string name = Model::kModelName;
      std::cout << "model: " << checkpoint << " " << name << " " << model->config().to_json().dump() << "\n";
      std::cout << "data: " << log.source << ": " << log.num_users() << " users, " << log.num_items << " items\n";
      if (model->num_items() != split.num_items) {
        throw ShapeError(detail::concat(checkpoint, " scores ", model->num_items(), " items but ", data_path, " has ",
                                        split.num_items));
      }

      if (!recommend_users.empty()) {
        serve::Recommender<Model> recommender(model);
        for (std::int64_t raw : recommend_users) {
          const auto it = std::lower_bound(log.user_raw_ids.begin(), log.user_raw_ids.end(), raw);
          if (it == log.user_raw_ids.end() || *it != raw) throw ConfigError(detail::concat("user ", raw, " is not in ", data_path));
          const auto user = static_cast<std::size_t>(it - log.user_raw_ids.begin());
          const auto top = recommender.recommend(log.sequences[user], {k, !keep_history});
          std::cout << "user " << raw << " (" << log.sequences[user].size() << " items):";
          for (const auto& item : top) std::cout << " " << log.item_raw_ids[static_cast<std::size_t>(item.item)];
          std::cout << "\n";
        }
        return 0;
      }

      eval::FullRankingOptions full;
      full.mask_history = !keep_history;
      std::vector<std::pair<std::string, eval::EvaluationResult>> rows;
      nlohmann::json out = {{"checkpoint", checkpoint}, {"model", name}, {"data", log.source}, {"results", nlohmann::json::array()}};
      for (auto which : {eval::EvalSplit::kValid, eval::EvalSplit::kTest}) {
        rows.emplace_back(name, eval::evaluate_full_ranking(*model, split, which, full));
        const auto candidates =
            candidates_dir.empty()
                ? eval::SampledCandidates::generate(split, which, 100, seed)
                : eval::SampledCandidates::load((std::filesystem::path(candidates_dir) / (eval::to_string(which) + ".npy")).string(),
                                                split, which);
        rows.emplace_back(name, eval::evaluate_sampled(*model, split, which, candidates));
      }
      examples::print_results(rows);
      for (const auto& [row_name, result] : rows) out["results"].push_back(result.to_json());
      if (!json_path.empty()) {
        io::write_file_atomic(json_path, out.dump(2) + "\n");
        std::cout << "wrote " << json_path << "\n";
      }
      return 0;
    });
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
