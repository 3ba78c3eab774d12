// Shared helpers of the benchmarks: the machine they ran on (every benchmark prints the CPU model
// and the instruction set its kernels were compiled for), percentiles, peak memory.
#pragma once

#include "distillrec/backend/gemm.hpp"

#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace bench {

/// The first "model name" of /proc/cpuinfo, and which of the vector extensions that matter here
/// the CPU reports.
inline nlohmann::json machine_json() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model = "unknown", flags;
  while (std::getline(cpuinfo, line)) {
    if (model == "unknown" && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = " " + line.substr(line.find(':') + 1) + " ";
  }
  std::vector<std::string> present;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16"}) {
    if (flags.find(std::string(" ") + f + " ") != std::string::npos) present.emplace_back(f);
  }
  return nlohmann::json{{"cpu", model},
                        {"cpu_flags", present},
                        {"kernels_compiled_for", xsimd::default_arch::name()},
                        {"gemm", distillrec::backend::kHasOneDnn ? "oneDNN" : "Eigen"}};
}

inline void print_machine() {
  const auto m = machine_json();
  std::string flags;
  for (const auto& f : m["cpu_flags"]) flags += (flags.empty() ? "" : " ") + f.get<std::string>();
  std::printf("machine: %s; CPU flags: %s; kernels compiled for %s; GEMM %s\n", m["cpu"].get<std::string>().c_str(), flags.c_str(),
              m["kernels_compiled_for"].get<std::string>().c_str(), m["gemm"].get<std::string>().c_str());
  std::fflush(stdout);
}

inline double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

inline double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const auto low = static_cast<std::size_t>(position);
  const auto high = std::min(low + 1, values.size() - 1);
  return values[low] + (position - static_cast<double>(low)) * (values[high] - values[low]);
}

/// {"p50": median, "p99": 99th percentile} of timings, as every benchmark reports them.
inline nlohmann::json p50_p99(const std::vector<double>& values) {
  return {{"p50", percentile(values, 0.5)}, {"p99", percentile(values, 0.99)}};
}

}  // namespace bench
