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
// A trainer's checkpoint (train::Trainer::save_checkpoint) also holds its loss terms' parameters
// as "terms.<term>.<parameter>" tensors; loading a model ignores them.
//
// Loading validates everything against the configuration in the file: every expected tensor
// present (FormatError naming it), no unexpected tensors, shapes (ShapeError naming file and
// tensor), floating-point dtypes (F32, F64, F16, BF16 are converted), finite values.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/io/safetensors.hpp"
#include "distillrec/models/model.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace distillrec::io {

inline constexpr const char* kCheckpointFormat = "distillrec";
inline constexpr const char* kCheckpointFormatVersion = "1";

/// Adds every parameter of `params` to a writer as an F32 tensor, named prefix + its name.
template <typename T>
void add_parameters(const Parameters<T>& params, SafetensorsWriter& writer, const std::string& prefix = "") {
  for (Index id = 0; id < params.count(); ++id) {
    const auto& info = params.info(id);
    const Matrix<float> values = params.value(id).template cast<float>();
    writer.add(prefix + info.name, values);
  }
}

/// Tensors under this prefix hold training-only parameters of loss terms
/// (train::Trainer::save_checkpoint); loading a model ignores them.
inline constexpr const char* kTermTensorPrefix = "terms.";

/// Fills `params` from a file, each parameter from the tensor prefix + its name with its exact
/// shape. With `allow_extra` false, other tensors (outside `prefix`, and apart from loss-term
/// tensors "terms.*" when loading a model) are an error too.
template <typename T>
void load_parameters(Parameters<T>& params, const SafetensorsReader& reader, bool allow_extra = false,
                     const std::string& prefix = "") {
  std::set<std::string> expected;
  for (Index id = 0; id < params.count(); ++id) {
    const auto& info = params.info(id);
    const std::string name = prefix + info.name;
    expected.insert(name);
    if (!reader.contains(name)) {
      throw FormatError(reader.path() + ": tensor \"" + name + "\" is missing (expected shape [" +
                        std::to_string(info.rows) + ", " + std::to_string(info.cols) + "])");
    }
    params.value(id) = reader.read_matrix(name, info.rows, info.cols).template cast<T>();
  }
  if (!allow_extra) {
    for (const auto& name : reader.names()) {
      const bool term_tensor = prefix.empty() && name.rfind(kTermTensorPrefix, 0) == 0;
      if (expected.count(name) == 0 && !term_tensor) {
        throw FormatError(reader.path() + ": unexpected tensor \"" + name + "\" (not a parameter of this model)");
      }
    }
  }
}

/// Saves a model of the model contract (models/model.hpp: what check_checkpoint_model asks) with its configuration, atomically;
/// `extra` adds more parameter groups under a name prefix (a trainer's loss terms).
template <typename Model>
void save_checkpoint(const Model& model, const std::string& path,
                     const std::map<std::string, std::string>& extra_metadata = {},
                     const std::vector<std::pair<std::string, const Parameters<typename Model::Scalar>*>>& extra = {}) {
  static_assert(models::check_checkpoint_model<Model>());
  if constexpr (models::contract::has_check_saveable<Model>::value) model.check_saveable();
  SafetensorsWriter writer;
  for (const auto& [key, value] : extra_metadata) writer.set_metadata(key, value);
  writer.set_metadata("format", kCheckpointFormat);
  writer.set_metadata("format_version", kCheckpointFormatVersion);
  writer.set_metadata("model", Model::kModelName);
  writer.set_metadata("config", model.config().to_json().dump());
  add_parameters(model.parameters(), writer);
  for (const auto& [prefix, params] : extra) add_parameters(*params, writer, prefix);
  writer.write(path);
}

/// The "model" name in a checkpoint's metadata (to choose the type to load); FormatError if the
/// file is not a distillrec checkpoint.
inline std::string checkpoint_model_name(const SafetensorsReader& reader) {
  const auto& meta = reader.metadata();
  const auto format = meta.find("format");
  if (format == meta.end() || format->second != kCheckpointFormat) {
    throw FormatError(reader.path() + ": not a distillrec checkpoint (__metadata__ needs \"format\": \"distillrec\")");
  }
  const auto model = meta.find("model");
  if (model == meta.end()) throw FormatError(reader.path() + ": __metadata__ has no \"model\"");
  return model->second;
}

/// The configuration stored in a checkpoint; FormatError naming the file if it is missing,
/// malformed or for another model.
template <typename Model>
typename Model::Config read_checkpoint_config(const SafetensorsReader& reader) {
  static_assert(models::check_checkpoint_model<Model>());
  const auto& meta = reader.metadata();
  const std::string model = checkpoint_model_name(reader);
  if (model != Model::kModelName) {
    throw FormatError(reader.path() + ": checkpoint is for model \"" + model + "\", expected \"" + Model::kModelName + "\"");
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
  try {
    model.after_load();
  } catch (const Error& e) {
    throw FormatError(reader.path() + ": " + e.what());
  }
  return model;
}

}  // namespace distillrec::io
