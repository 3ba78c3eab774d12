// distillrec/train/hooks.hpp
//
// What the trainer reports and where a user's code runs inside its loop:
//
//   EpochRecord     one epoch: mean loss, seconds, steps/s, learning rate, validation result,
//                   and the mean of every loss term's components
//   StepInfo        one optimiser step: epoch, step, global step, loss, learning rate
//   TrainingHooks   callbacks, run in the order they were added:
//     on_epoch_begin(epoch)                   before the epoch's first batch
//     after_backward(step, parameter_groups)  the gradients of the model and of every loss term
//                                             with parameters are complete (in data-parallel
//                                             training already summed across the processes by
//                                             the trainer), before clipping and the optimiser step
//     after_step(step)                        after the optimiser step
//     on_epoch_end(record)                    after the epoch (and its validation, if any);
//                                             returning false stops training
#pragma once

#include "distillrec/core/params.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/eval/metrics.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace distillrec::train {

struct EpochRecord {
  Index epoch = 0;            // 1-based
  double loss = 0.0;          // mean over the epoch's steps (base objective plus loss terms)
  double seconds = 0.0;       // training only (validation excluded)
  double steps_per_second = 0.0;
  double learning_rate = 0.0; // at the end of the epoch
  std::optional<eval::EvaluationResult> validation;
  std::map<std::string, double> terms;  // "<term>.<component>": mean over the epoch's steps
  double communication_seconds = 0.0;   // data-parallel: inside the sums across processes (included in seconds)
  double exchanged_bytes_per_step = 0.0;  // data-parallel: passed to the collective calls per step and process

  nlohmann::json to_json() const {
    nlohmann::json j{{"epoch", epoch}, {"loss", loss}, {"seconds", seconds}, {"steps_per_second", steps_per_second},
                     {"learning_rate", learning_rate}};
    if (validation) j["validation"] = validation->to_json();
    if (!terms.empty()) j["terms"] = terms;
    if (communication_seconds > 0) j["communication_seconds"] = communication_seconds;
    if (exchanged_bytes_per_step > 0) j["exchanged_bytes_per_step"] = exchanged_bytes_per_step;
    return j;
  }

  static EpochRecord from_json(const nlohmann::json& j) {
    EpochRecord r;
    r.epoch = j.at("epoch").get<Index>();
    r.loss = j.at("loss").get<double>();
    r.seconds = j.at("seconds").get<double>();
    r.steps_per_second = j.at("steps_per_second").get<double>();
    r.learning_rate = j.at("learning_rate").get<double>();
    if (j.contains("validation")) r.validation = eval::EvaluationResult::from_json(j.at("validation"));
    if (j.contains("terms")) r.terms = j.at("terms").get<std::map<std::string, double>>();
    r.communication_seconds = j.value("communication_seconds", 0.0);
    r.exchanged_bytes_per_step = j.value("exchanged_bytes_per_step", 0.0);
    return r;
  }
};

struct StepInfo {
  Index epoch = 0;            // 1-based
  Index step = 0;             // 1-based within the epoch
  Index steps_per_epoch = 0;
  long global_step = 0;       // optimiser steps taken before this one
  double loss = 0.0;          // this step's loss
  double learning_rate = 0.0;
  Index predictions = 0;      // positions with a target in the batch (the loss's denominator)
};

template <typename T>
struct TrainingHooks {
  std::vector<std::function<void(Index epoch)>> on_epoch_begin;
  std::vector<std::function<void(const StepInfo&, const std::vector<Parameters<T>*>&)>> after_backward;
  std::vector<std::function<void(const StepInfo&)>> after_step;
  std::vector<std::function<bool(const EpochRecord&)>> on_epoch_end;
};

}  // namespace distillrec::train
