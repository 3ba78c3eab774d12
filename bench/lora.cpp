// LoRA against full fine-tuning of one LLaMA-style item model (HLLM's item LLM): a training step
// (encode a batch of item texts, back-propagate a gradient of their embeddings, AdamW), and the
// memory each adds on top of the weights (gradients, optimiser moments, adapters, workspaces).
//
//   lora [--hidden 512] [--layers 4] [--heads 8] [--vocab 8000] [--texts 32] [--tokens 48]
//        [--rank 8] [--steps 12] [--json FILE]
//
// Both models are built side by side with the same base weights; their steps alternate, so the
// medians see the same machine state. Memory: resident growth of the process while each model is
// created and runs its first steps (LoRA's first, so the full model's growth cannot hide in pages
// LoRA freed). Prints the CPU model and instruction set (bench_support.hpp).
#include "distillrec/models/llama.hpp"
#include "distillrec/nn/lora.hpp"
#include "distillrec/optim/adam.hpp"

#include "bench_support.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <unistd.h>

using namespace distillrec;

namespace {

double resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0.0;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

struct Variant {
  std::string name;
  std::unique_ptr<models::LlamaModel<float>> model;
  optim::Adam adam{optim::AdamConfig{}};
  optim::AdamState<float> state;
  models::LlamaModel<float>::Workspace ws;
  Matrix<float> items;
  Rng dropout_rng{11};
  std::vector<double> seconds;
  double resident_growth = 0.0;

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
  app.add_option("--hidden", hidden, "Width")->check(CLI::PositiveNumber);
  app.add_option("--layers", layers, "Layers")->check(CLI::PositiveNumber);
  app.add_option("--heads", heads, "Attention heads")->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "Token table rows")->check(CLI::PositiveNumber);
  app.add_option("--texts", texts_per_step, "Item texts per step")->check(CLI::PositiveNumber);
  app.add_option("--tokens", tokens, "Tokens per text")->check(CLI::PositiveNumber);
  app.add_option("--rank", rank, "LoRA rank")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Timed steps per variant (after 2 untimed)")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Write the figures as JSON");
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

    Variant lora, full;
    lora.name = "LoRA rank " + std::to_string(rank);
    full.name = "full fine-tuning";
    // LoRA first (see the top); the full model then takes the same base weights.
    for (Variant* v : {&lora, &full}) {
      const double before = resident_mib();
      models::LlamaConfig c = config;
      if (v == &lora) {
        c.lora.rank = rank;
        c.lora.alpha = 2.0 * static_cast<double>(rank);
        c.lora.dropout = 0.05;
      }
      v->model = std::make_unique<models::LlamaModel<float>>(c);
      Rng init(7);
      v->model->initialize(init);
      if (v == &full) {  // the same base as the adapted model (its adapters start at B = 0)
        nn::copy_merging_lora(lora.model->parameters(), v->model->parameters(), [](const std::string&) { return 0.0; });
      }
      v->state = v->adam.make_state(v->model->parameters());
      v->items.resize(texts_per_step, hidden);
      for (int warm = 0; warm < 2; ++warm) v->step(texts, grad);
      v->seconds.clear();
      v->resident_growth = resident_mib() - before;
    }
    for (Index s = 0; s < steps; ++s) {
      lora.step(texts, grad);
      full.step(texts, grad);
    }
    std::printf("LLaMA item model: %ld layers x %ld, %ld heads, vocab %ld; %ld texts x %ld tokens per step; 2 threads\n",
                static_cast<long>(layers), static_cast<long>(hidden), static_cast<long>(heads), static_cast<long>(vocab),
                static_cast<long>(texts_per_step), static_cast<long>(tokens));
    std::printf("%-20s %14s %14s %12s %12s %16s\n", "variant", "parameters", "trainable", "step p50 ms", "step p99 ms", "memory added MiB");
    nlohmann::json out{{"machine", bench::machine_json()},
                       {"config", {{"hidden", hidden}, {"layers", layers}, {"heads", heads}, {"vocab", vocab}, {"texts", texts_per_step},
                                   {"tokens", tokens}, {"rank", rank}, {"steps", steps}}}};
    for (const Variant* v : {&full, &lora}) {
      const auto& p = v->model->parameters();
      std::printf("%-20s %14ld %14ld %12.1f %12.1f %16.1f\n", v->name.c_str(), static_cast<long>(p.num_scalars()),
                  static_cast<long>(p.num_trainable_scalars()), 1e3 * bench::percentile(v->seconds, 0.5),
                  1e3 * bench::percentile(v->seconds, 0.99), v->resident_growth);
      out["variants"][v->name] = {{"parameters", p.num_scalars()},
                                  {"trainable", p.num_trainable_scalars()},
                                  {"step_seconds", bench::p50_p99(v->seconds)},
                                  {"resident_growth_mib", v->resident_growth}};
    }
    std::printf("LoRA step time / full: %.2f; memory added LoRA / full: %.2f\n",
                bench::percentile(lora.seconds, 0.5) / bench::percentile(full.seconds, 0.5), lora.resident_growth / full.resident_growth);
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lora: %s\n", e.what());
    return 1;
  }
  return 0;
}
