// distillrec/train/progress.hpp
//
// Human-readable progress lines for long work (training epochs, steps, ETA), written to a
// stream chosen by the caller (nullptr: silent).
#pragma once

#include "distillrec/core/types.hpp"

#include <cstdio>
#include <ostream>
#include <string>

namespace distillrec::train {

/// "1h02m", "3m05s", "12.3s".
inline std::string format_duration(double seconds) {
  char buffer[32];
  if (!(seconds >= 0.0)) seconds = 0.0;
  if (seconds < 60.0) {
    std::snprintf(buffer, sizeof(buffer), "%.1fs", seconds);
  } else if (seconds < 3600.0) {
    std::snprintf(buffer, sizeof(buffer), "%dm%02ds", static_cast<int>(seconds) / 60, static_cast<int>(seconds) % 60);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%dh%02dm", static_cast<int>(seconds) / 3600, (static_cast<int>(seconds) % 3600) / 60);
  }
  return buffer;
}

class ProgressPrinter {
 public:
  explicit ProgressPrinter(std::ostream* out) : out_(out) {}

  void line(const std::string& text) {
    if (out_) *out_ << text << std::endl;
  }

  void step(Index epoch, Index step, Index steps, double mean_loss, double seconds) {
    if (!out_) return;
    char buffer[160];
    std::snprintf(buffer, sizeof(buffer), "  epoch %ld step %ld/%ld  loss %.4f  %.1f steps/s", static_cast<long>(epoch),
                  static_cast<long>(step), static_cast<long>(steps), mean_loss,
                  seconds > 0 ? static_cast<double>(step) / seconds : 0.0);
    *out_ << buffer << std::endl;
  }

  template <typename Record>
  void epoch(const Record& record, Index epochs, Index best_epoch, double best_score, const std::string& metric,
             double eta_seconds) {
    if (!out_) return;
    char buffer[256];
    std::snprintf(buffer, sizeof(buffer), "epoch %3ld/%ld  loss %.4f  %.2fs (%.1f steps/s)", static_cast<long>(record.epoch),
                  static_cast<long>(epochs), record.loss, record.seconds, record.steps_per_second);
    std::string text = buffer;
    if (record.validation) {
      std::snprintf(buffer, sizeof(buffer), "  valid[%s] %s %.4f  best %.4f @%ld", record.validation->protocol.c_str(),
                    metric.c_str(), record.validation->value(metric), best_score, static_cast<long>(best_epoch));
      text += buffer;
    }
    for (const auto& [name, value] : record.terms) {
      std::snprintf(buffer, sizeof(buffer), "  %s %.4f", name.c_str(), value);
      text += buffer;
    }
    if (record.communication_seconds > 0) {
      std::snprintf(buffer, sizeof(buffer), "  (%.2fs summing across processes, %.2f MB per step)", record.communication_seconds,
                    record.exchanged_bytes_per_step / 1e6);
      text += buffer;
    }
    text += "  ETA " + format_duration(eta_seconds);
    *out_ << text << std::endl;
  }

 private:
  std::ostream* out_;
};

}  // namespace distillrec::train
