// distillrec/io/checkpoint.hpp
//
// Model checkpoints as safetensors files, written atomically (a crash never leaves a half-written
// checkpoint behind). Every parameter is one F32 tensor under its parameter name (the names and
// shapes each model documents in its header, PyTorch [out, in] layout for weights); the header's
// __metadata__ carries
//     "format": "distillrec"   "format_version": "1"   "model": "<name>"   "config": "<JSON>"
// plus any extra string pairs the caller adds. A PyTorch user can therefore write a checkpoint
// this library loads with safetensors.torch.save_file(tensors, path, metadata={...}) and read
// ours with safetensors.torch.load_file.
//
// Loading validates everything against the configuration in the file: every expected tensor
// present (FormatError naming it), no unexpected tensors, shapes (ShapeError naming file and
// tensor), floating-point dtypes (F32, F64, F16, BF16 are converted), finite values.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>

namespace distillrec::io {

inline constexpr const char* kCheckpointFormat = "distillrec";
inline constexpr const char* kCheckpointFormatVersion = "1";

/// Adds every parameter of `params` to a writer as an F32 tensor.
template <typename T>
void add_parameters(const Parameters<T>& params, SafetensorsWriter& writer) {
  for (Index id = 0; id < params.count(); ++id) {
    const auto& info = params.info(id);
    const Matrix<float> values = params.value(id).template cast<float>();
    writer.add(info.name, values);
  }
}

/// Fills `params` from a file; every parameter must be present with its exact shape.
/// With `allow_extra` false, tensors the parameters do not know are an error too.
template <typename T>
void load_parameters(Parameters<T>& params, const SafetensorsReader& reader, bool allow_extra = false) {
  std::set<std::string> expected;
  for (Index id = 0; id < params.count(); ++id) {
    const auto& info = params.info(id);
    expected.insert(info.name);
    if (!reader.contains(info.name)) {
      throw FormatError(reader.path() + ": tensor \"" + info.name + "\" is missing (expected shape [" +
                        std::to_string(info.rows) + ", " + std::to_string(info.cols) + "])");
    }
    params.value(id) = reader.read_matrix(info.name, info.rows, info.cols).template cast<T>();
  }
  if (!allow_extra) {
    for (const auto& name : reader.names()) {
      if (expected.count(name) == 0) {
        throw FormatError(reader.path() + ": unexpected tensor \"" + name + "\" (not a parameter of this model)");
      }
    }
  }
}

/// Saves a model (SASRec or any model with Config, kModelName, config().to_json() and
/// parameters()) with its configuration, atomically.
template <typename Model>
void save_checkpoint(const Model& model, const std::string& path,
                     const std::map<std::string, std::string>& extra_metadata = {}) {
  SafetensorsWriter writer;
  for (const auto& [key, value] : extra_metadata) writer.set_metadata(key, value);
  writer.set_metadata("format", kCheckpointFormat);
  writer.set_metadata("format_version", kCheckpointFormatVersion);
  writer.set_metadata("model", Model::kModelName);
  writer.set_metadata("config", model.config().to_json().dump());
  add_parameters(model.parameters(), writer);
  writer.write(path);
}

/// The configuration stored in a checkpoint; FormatError naming the file if it is missing,
/// malformed or for another model.
template <typename Model>
typename Model::Config read_checkpoint_config(const SafetensorsReader& reader) {
  const auto& meta = reader.metadata();
  const auto format = meta.find("format");
  if (format == meta.end() || format->second != kCheckpointFormat) {
    throw FormatError(reader.path() + ": not a distillrec checkpoint (__metadata__ needs \"format\": \"distillrec\")");
  }
  const auto model = meta.find("model");
  if (model == meta.end() || model->second != Model::kModelName) {
    throw FormatError(reader.path() + ": checkpoint is for model \"" + (model == meta.end() ? "?" : model->second) +
                      "\", expected \"" + Model::kModelName + "\"");
  }
  const auto config = meta.find("config");
  if (config == meta.end()) throw FormatError(reader.path() + ": __metadata__ has no \"config\"");
  try {
    return Model::Config::from_json(nlohmann::json::parse(config->second));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(reader.path() + ": __metadata__ \"config\" is not valid JSON: " + e.what());
  } catch (const ConfigError& e) {
    throw FormatError(reader.path() + ": invalid configuration in __metadata__: " + e.what());
  }
}

/// Loads a model saved by save_checkpoint (or written by another tool in the same schema).
template <typename Model>
Model load_checkpoint(const std::string& path) {
  const SafetensorsReader reader(path);
  Model model(read_checkpoint_config<Model>(reader));
  load_parameters(model.parameters(), reader);
  model.after_load();
  return model;
}

}  // namespace distillrec::io
