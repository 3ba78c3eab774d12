// distillrec/optim/schedule.hpp
//
// Learning-rate schedules, functions of the 0-based optimiser step.
//   ConstantSchedule      lr
//   WarmupCosineSchedule  linear warm-up from 0 to lr over warmup_steps, then cosine decay to
//                         min_lr at total_steps (HuggingFace's get_cosine_schedule_with_warmup
//                         with a floor), constant min_lr afterwards.
#pragma once

#include "distillrec/core/error.hpp"

#include <algorithm>
#include <cmath>

namespace distillrec::optim {

struct ConstantSchedule {
  double learning_rate = 1e-3;
  double operator()(long /*step*/) const { return learning_rate; }
};

struct WarmupCosineSchedule {
  double learning_rate = 1e-3;
  long warmup_steps = 0;
  long total_steps = 1;
  double min_learning_rate = 0.0;

  void validate() const {
    if (!(learning_rate >= 0.0)) throw ConfigError("cosine schedule: learning rate must be >= 0");
    if (warmup_steps < 0 || total_steps <= 0 || warmup_steps > total_steps) {
      throw ConfigError(detail::concat("cosine schedule: need 0 <= warmup_steps (", warmup_steps,
                                       ") <= total_steps (", total_steps, ") and total_steps > 0"));
    }
    if (!(min_learning_rate >= 0.0 && min_learning_rate <= learning_rate)) {
      throw ConfigError("cosine schedule: min learning rate must be in [0, learning rate]");
    }
  }

  double operator()(long step) const {
    if (step < warmup_steps) return learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (step >= total_steps) return min_learning_rate;
    const double progress = static_cast<double>(step - warmup_steps) /
                            static_cast<double>(std::max<long>(1, total_steps - warmup_steps));
    return min_learning_rate + (learning_rate - min_learning_rate) * 0.5 * (1.0 + std::cos(3.141592653589793 * progress));
  }
};

}  // namespace distillrec::optim
