// LoRA against full fine-tuning of one LLaMA-style item model (HLLM's item LLM): a training step
// (encode a batch of item texts, back-propagate a gradient of their embeddings, AdamW), and the
// memory each adds on top of the weights (gradients, optimiser moments, adapters, workspaces).
//
//   lora [--hidden 512] [--layers 4] [--heads 8] [--vocab 8000] [--texts 32] [--tokens 48]
//        [--rank 8] [--steps 12] [--json FILE]
//
// Variants: full fine-tuning, LoRA without and with adapter dropout. Timing: all three built
// side by side with the same base weights, their steps alternating, so the medians see the same
// machine state. Memory: each variant alone in a child process of this program (--only), its
// peak resident memory (the same fixed costs in each: the runtime, the texts). Prints the CPU
// model and instruction set (bench_support.hpp).
#include "distillrec/models/llama.hpp"
#include "distillrec/nn/lora.hpp"
#include "distillrec/optim/adam.hpp"

#include "bench_support.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>

using namespace distillrec;

namespace {

struct Variant {
  std::string name;
  Index rank = 0;
  double dropout = 0.0;
  double peak_mib = 0.0;
  std::unique_ptr<models::LlamaModel<float>> model;
  optim::Adam adam{optim::AdamConfig{}};
  optim::AdamState<float> state;
  models::LlamaModel<float>::Workspace ws;
  Matrix<float> items;
  Rng dropout_rng{11};
  std::vector<double> seconds;

  void step(const std::vector<std::vector<int>>& texts, const Matrix<float>& grad) {
    const auto start = std::chrono::steady_clock::now();
    auto& params = model->parameters();
    params.zero_grad();
    model->encode_items(texts, items, ws, nn::RunMode::train(dropout_rng));
    model->backward_items(grad, ws);
    adam.step(params, state, 1e-4);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"LoRA against full fine-tuning of a LLaMA-style item model: step time and memory"};
  Index hidden = 512, layers = 4, heads = 8, vocab = 8000, texts_per_step = 32, tokens = 48, rank = 8, steps = 12;
  std::string json_path;
  int only = -1;
  app.add_option("--hidden", hidden, "Width")->check(CLI::PositiveNumber);
  app.add_option("--layers", layers, "Layers")->check(CLI::PositiveNumber);
  app.add_option("--heads", heads, "Attention heads")->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "Token table rows")->check(CLI::PositiveNumber);
  app.add_option("--texts", texts_per_step, "Item texts per step")->check(CLI::PositiveNumber);
  app.add_option("--tokens", tokens, "Tokens per text")->check(CLI::PositiveNumber);
  app.add_option("--rank", rank, "LoRA rank")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Timed steps per variant (after 2 untimed)")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Write the figures as JSON");
  app.add_option("--only", only, "Run variant 0, 1 or 2 alone and print its peak memory (what the parent reads)");
  CLI11_PARSE(app, argc, argv);
  try {
    bench::print_machine();
    models::LlamaConfig config;
    config.vocab_size = vocab;
    config.hidden_size = hidden;
    config.intermediate_size = (hidden * 8 / 3 + 7) / 8 * 8;
    config.num_layers = layers;
    config.num_heads = heads;
    config.max_positions = tokens + 1;
    config.item_token = true;
    Rng rng(7);
    std::vector<std::vector<int>> texts(static_cast<std::size_t>(texts_per_step));
    for (auto& t : texts) {
      t.push_back(1);
      while (static_cast<Index>(t.size()) < tokens) t.push_back(3 + static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(vocab - 3))));
    }
    const Matrix<float> grad = Matrix<float>::Random(texts_per_step, hidden) * 0.01f;

    std::vector<Variant> variants(3);
    variants[0].name = "full fine-tuning";
    variants[1].name = "LoRA rank " + std::to_string(rank);
    variants[1].rank = rank;
    variants[2].name = "LoRA rank " + std::to_string(rank) + ", dropout 0.05";
    variants[2].rank = rank;
    variants[2].dropout = 0.05;
    auto build = [&](Variant& v, const Parameters<float>* base) {
      models::LlamaConfig c = config;
      c.lora.rank = v.rank;
      c.lora.alpha = 2.0 * static_cast<double>(rank);
      c.lora.dropout = v.dropout;
      v.model = std::make_unique<models::LlamaModel<float>>(c);
      Rng init(7);
      v.model->initialize(init);
      if (base != nullptr) nn::copy_base_weights(*base, v.model->parameters());  // the same base weights
      v.state = v.adam.make_state(v.model->parameters());
      v.items.resize(texts_per_step, hidden);
      for (int warm = 0; warm < 2; ++warm) v.step(texts, grad);
      v.seconds.clear();
    };
    if (only >= 0) {  // a child: one variant alone, its peak memory
      if (only > 2) throw ConfigError("--only takes 0, 1 or 2");
      build(variants[static_cast<std::size_t>(only)], nullptr);
      for (Index s = 0; s < 3; ++s) variants[static_cast<std::size_t>(only)].step(texts, grad);
      std::printf("PEAK %.1f\n", bench::peak_rss_mib());
      return 0;
    }
    for (int v = 0; v < 3; ++v) {
      const std::string command = std::string(argv[0]) + " --hidden " + std::to_string(hidden) + " --layers " + std::to_string(layers) +
                                  " --heads " + std::to_string(heads) + " --vocab " + std::to_string(vocab) + " --texts " +
                                  std::to_string(texts_per_step) + " --tokens " + std::to_string(tokens) + " --rank " + std::to_string(rank) +
                                  " --only " + std::to_string(v);
      FILE* child = popen(command.c_str(), "r");
      if (child == nullptr) throw Error("cannot run " + command);
      char line[256];
      while (std::fgets(line, sizeof line, child) != nullptr) {
        if (std::sscanf(line, "PEAK %lf", &variants[static_cast<std::size_t>(v)].peak_mib) == 1) break;
      }
      while (std::fgets(line, sizeof line, child) != nullptr) {
      }
      if (pclose(child) != 0 || variants[static_cast<std::size_t>(v)].peak_mib <= 0.0) throw Error("the child run failed: " + command);
    }
    build(variants[0], nullptr);
    build(variants[1], &variants[0].model->parameters());
    build(variants[2], &variants[0].model->parameters());
    for (Index s = 0; s < steps; ++s) {
      for (auto& v : variants) v.step(texts, grad);
    }
    std::printf("LLaMA item model: %ld layers x %ld, %ld heads, vocab %ld; %ld texts x %ld tokens per step; 2 threads\n",
                static_cast<long>(layers), static_cast<long>(hidden), static_cast<long>(heads), static_cast<long>(vocab),
                static_cast<long>(texts_per_step), static_cast<long>(tokens));
    std::printf("%-30s %12s %12s %12s %12s %14s\n", "variant", "parameters", "trainable", "step p50 ms", "step p99 ms", "peak MiB alone");
    nlohmann::json out{{"machine", bench::machine_json()},
                       {"config", {{"hidden", hidden}, {"layers", layers}, {"heads", heads}, {"vocab", vocab}, {"texts", texts_per_step},
                                   {"tokens", tokens}, {"rank", rank}, {"steps", steps}}}};
    for (const auto& v : variants) {
      const auto& p = v.model->parameters();
      std::printf("%-30s %12ld %12ld %12.1f %12.1f %14.1f\n", v.name.c_str(), static_cast<long>(p.num_scalars()),
                  static_cast<long>(p.num_trainable_scalars()), 1e3 * bench::percentile(v.seconds, 0.5),
                  1e3 * bench::percentile(v.seconds, 0.99), v.peak_mib);
      out["variants"][v.name] = {{"parameters", p.num_scalars()},
                                 {"trainable", p.num_trainable_scalars()},
                                 {"step_seconds", bench::p50_p99(v.seconds)},
                                 {"peak_resident_mib_alone", v.peak_mib}};
    }
    const double full_step = bench::percentile(variants[0].seconds, 0.5);
    std::printf("against full fine-tuning: step time %.2f (LoRA), %.2f (LoRA with dropout); peak memory %.2f, %.2f\n",
                bench::percentile(variants[1].seconds, 0.5) / full_step, bench::percentile(variants[2].seconds, 0.5) / full_step,
                variants[1].peak_mib / variants[0].peak_mib, variants[2].peak_mib / variants[0].peak_mib);
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lora: %s\n", e.what());
    return 1;
  }
  return 0;
}
