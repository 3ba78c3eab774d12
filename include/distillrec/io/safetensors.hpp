// distillrec/io/safetensors.hpp
//
// Reader and writer of the safetensors format (https://github.com/huggingface/safetensors), the
// format of our checkpoints and teacher signals, so PyTorch users write them with
// `safetensors.torch.save_file` and read ours with `safetensors.torch.load_file`.
//
// Layout of a file:
//
//   [8 bytes]  N, unsigned 64-bit little-endian: length of the header
//   [N bytes]  UTF-8 JSON object, possibly padded with trailing spaces:
//                {"__metadata__": {"key": "value", ...},                       (optional)
//                 "name": {"dtype": "F32", "shape": [rows, cols],
//                          "data_offsets": [begin, end]}, ...}
//   [rest]     data buffer: each tensor's elements, row-major, little-endian, in bytes
//              [begin, end) counted from the start of the data buffer
//
// SafetensorsReader reads the whole file (or, with FileAccess::kMap, maps it read-only: large
// checkpoints such as a LLaMA's are then never copied whole) and validates everything on open (header length, JSON,
// dtypes, shapes, offsets inside the buffer, sizes, no overlaps), so a truncated or corrupt file
// fails there with a FormatError naming the file. Reads convert F32/F64/F16/BF16 to float and
// reject NaN and infinities: a diverged teacher must not be distilled silently.
//
// SafetensorsWriter lays tensors out like the reference implementation: by decreasing element
// size, then by name (an all-F32 checkpoint is in name order), each tensor right after the
// previous one, header padded with spaces to a multiple of 8 bytes, so every tensor starts
// aligned to its element size for readers that map the file. Writes are atomic.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/io/atomic_file.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "distillrec/io reads and writes little-endian data with memcpy: little-endian hosts "
              "only");
#endif

namespace distillrec::io {

/// Element types of the safetensors format that distillrec reads (names as in the file).
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

/// The dtype's name in a safetensors header: "F32", "BF16", "I64", "BOOL", ...
inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kI16: return "I16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

/// Bytes per element.
inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: case DType::kI16: return 2;
    case DType::kI8: case DType::kU8: case DType::kBool: return 1;
  }
  return 0;
}

inline bool is_floating_point(DType dtype) {
  return dtype == DType::kF64 || dtype == DType::kF32 || dtype == DType::kF16 ||
         dtype == DType::kBF16;
}

namespace detail {

inline bool try_parse_dtype(const std::string& name, DType* dtype) {
  static constexpr DType kAll[] = {DType::kF64, DType::kF32, DType::kF16, DType::kBF16,
                                   DType::kI64, DType::kI32, DType::kI16, DType::kI8,
                                   DType::kU8,  DType::kBool};
  for (const DType candidate : kAll) {
    if (name == dtype_name(candidate)) {
      *dtype = candidate;
      return true;
    }
  }
  return false;
}

inline constexpr const char kSupportedDtypes[] = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

}  // namespace detail

/// The dtype named `name` ("F32", ...); FormatError for names distillrec does not read.
inline DType parse_dtype(const std::string& name) {
  DType dtype{};
  if (!detail::try_parse_dtype(name, &dtype)) {
    throw FormatError("unknown safetensors dtype \"" + name + "\" (supported: " +
                      detail::kSupportedDtypes + ")");
  }
  return dtype;
}

/// IEEE 754 binary16 to float, exact for every value (subnormals, infinities, NaN payloads).
inline float half_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1fu;
  const std::uint32_t mantissa = half & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;  // signed zero
    } else {
      // Subnormal half: mantissa * 2^-24, a normal float.
      const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
      return sign != 0 ? -magnitude : magnitude;
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // infinity or NaN (payload kept)
  } else {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

/// bfloat16 (the upper half of a float) to float, exact.
inline float bfloat16_to_float(std::uint16_t bfloat16) {
  const std::uint32_t bits = static_cast<std::uint32_t>(bfloat16) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

/// Name, element type, shape and byte range (relative to the data buffer) of one tensor.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0;
  std::size_t end = 0;

  /// Product of the dimensions (1 for a scalar of shape []).
  std::int64_t num_elements() const {
    std::int64_t count = 1;
    for (const auto dim : shape) count *= dim;
    return count;
  }
};

namespace detail {

/// "[3, 4]"
inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

/// The multi-index of the element at `flat` in a row-major tensor: "[1, 2]".
inline std::string element_index_string(std::int64_t flat, const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> index(shape.size(), 0);
  for (std::size_t axis = shape.size(); axis-- > 0;) {
    if (shape[axis] > 0) {
      index[axis] = flat % shape[axis];
      flat /= shape[axis];
    }
  }
  return shape_string(index);
}

/// Product of non-negative dimensions times `element_size`; false on overflow.
inline bool safetensors_byte_count(const std::vector<std::int64_t>& shape, std::size_t element_size,
                                   std::size_t* bytes) {
  constexpr auto kLimit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t count = 1;
  for (const auto dim : shape) {
    const auto d = static_cast<std::uint64_t>(dim);
    if (d != 0 && count > kLimit / d) return false;
    count *= d;
  }
  if (count > kLimit / element_size) return false;
  *bytes = static_cast<std::size_t>(count * element_size);
  return true;
}

inline std::uint64_t read_u64_le(const unsigned char* bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

/// A JSON integer as a signed 64-bit value; false for other JSON types or out-of-range values.
inline bool json_to_int64(const nlohmann::json& value, std::int64_t* out) {
  if (value.is_number_unsigned()) {
    const auto u = value.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
    *out = static_cast<std::int64_t>(u);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<std::int64_t>();
    return true;
  }
  return false;
}

}  // namespace detail

namespace detail {

/// A file's bytes, read whole into memory or mapped read-only (nothing is copied: the pages of
/// a tensor are read from the file when it is decoded, so a multi-gigabyte checkpoint costs its
/// tensors' float copies, not the file twice). Where mapping is unavailable it reads.
class FileBytes {
 public:
  FileBytes(const std::string& path, bool map) {
#if defined(__unix__) || defined(__APPLE__)
    if (map) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw Error(distillrec::detail::concat("cannot open '", path, "': ", std::strerror(errno)));
      struct stat status {};
      const bool stat_failed = ::fstat(fd, &status) != 0;
      const int error_number = errno;
      if (stat_failed || !S_ISREG(status.st_mode)) {
        ::close(fd);
        throw Error(distillrec::detail::concat("cannot map '", path, "': ",
                                               stat_failed ? std::strerror(error_number) : "not a regular file"));
      }
      size_ = static_cast<std::size_t>(status.st_size);
      if (size_ > 0) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        const int map_error = errno;
        ::close(fd);
        if (p == MAP_FAILED) throw Error(distillrec::detail::concat("cannot map '", path, "': ", std::strerror(map_error)));
        mapped_ = static_cast<const unsigned char*>(p);
      } else {
        ::close(fd);
      }
      return;
    }
#endif
    (void)map;
    owned_ = read_file_bytes(path);
    size_ = owned_.size();
  }
  ~FileBytes() { release(); }
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  FileBytes(FileBytes&& other) noexcept : owned_(std::move(other.owned_)), mapped_(other.mapped_), size_(other.size_) {
    other.mapped_ = nullptr;
    other.size_ = 0;
  }
  FileBytes& operator=(FileBytes&& other) noexcept {
    if (this != &other) {
      release();
      owned_ = std::move(other.owned_);
      mapped_ = other.mapped_;
      size_ = other.size_;
      other.mapped_ = nullptr;
      other.size_ = 0;
    }
    return *this;
  }

  const unsigned char* data() const { return mapped_ != nullptr ? mapped_ : owned_.data(); }
  std::size_t size() const { return size_; }
  bool mapped() const { return mapped_ != nullptr; }

 private:
  void release() noexcept {
#if defined(__unix__) || defined(__APPLE__)
    if (mapped_ != nullptr) ::munmap(const_cast<unsigned char*>(mapped_), size_);
#endif
    mapped_ = nullptr;
  }

  std::vector<unsigned char> owned_;
  const unsigned char* mapped_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace detail

/// How a reader holds its file: read whole into memory (the default), or mapped read-only
/// (large checkpoints; the file must not be truncated while the reader lives: the library
/// writes its own files atomically, by rename, which leaves a mapped file intact). A reader can
/// be moved, not copied.
enum class FileAccess { kRead, kMap };

/// A safetensors file, validated on open (see the file comment).
class SafetensorsReader {
 public:
  /// Reads (or maps) and validates `path`: Error if it cannot be read, FormatError if it is
  /// malformed.
  explicit SafetensorsReader(const std::string& path, FileAccess access = FileAccess::kRead)
      : path_(path), bytes_(path, access == FileAccess::kMap) {
    parse();
  }

  /// Whether the file is mapped rather than read into memory.
  bool mapped() const { return bytes_.mapped(); }

  const std::string& path() const { return path_; }

  /// The header's "__metadata__" (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    result.reserve(tensors_.size());
    for (const auto& entry : tensors_) result.push_back(entry.first);
    return result;
  }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The tensor's dtype, shape and byte range; FormatError listing the tensors if it is absent.
  const TensorInfo& info(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it != tensors_.end()) return it->second;
    std::string listing;
    std::size_t listed = 0;
    for (const auto& entry : tensors_) {
      if (listed == kMaxListedNames) {
        listing += distillrec::detail::concat(", ... and ", tensors_.size() - listed, " more");
        break;
      }
      listing += (listed++ > 0 ? ", " : "") + entry.first;
    }
    throw FormatError(path_ + ": no tensor named \"" + name + "\" (tensors: " +
                      (tensors_.empty() ? "none" : listing) + ")");
  }

  /// A floating-point tensor of shape [rows, cols] (or [cols] when rows == 1) as a float
  /// matrix. ShapeError naming file, tensor and both shapes on any other shape; FormatError for
  /// integer tensors and for NaN or infinite values.
  Matrix<float> read_matrix(const std::string& name, Index expected_rows,
                            Index expected_cols) const {
    const TensorInfo& tensor = info(name);
    require_floating_point(tensor);
    const auto& shape = tensor.shape;
    const bool matches =
        (shape.size() == 2 && shape[0] == expected_rows && shape[1] == expected_cols) ||
        (shape.size() == 1 && expected_rows == 1 && shape[0] == expected_cols);
    if (!matches) {
      throw ShapeError(distillrec::detail::concat(
          path_, ": tensor \"", name, "\": expected shape [", expected_rows, ", ", expected_cols,
          "]", expected_rows == 1 ? distillrec::detail::concat(" or [", expected_cols, "]") : "",
          ", found ", detail::shape_string(shape)));
    }
    Matrix<float> matrix(expected_rows, expected_cols);
    decode_floats(tensor, matrix.data());
    return matrix;
  }

  /// Any floating-point tensor, flattened in row-major order, as floats (same checks).
  std::vector<float> read_floats(const std::string& name) const {
    const TensorInfo& tensor = info(name);
    require_floating_point(tensor);
    std::vector<float> values(static_cast<std::size_t>(tensor.num_elements()));
    decode_floats(tensor, values.data());
    return values;
  }

  /// Any I64/I32/I16/I8/U8 tensor, flattened in row-major order; FormatError for other dtypes.
  std::vector<std::int64_t> read_integers(const std::string& name) const {
    const TensorInfo& tensor = info(name);
    const auto count = static_cast<std::size_t>(tensor.num_elements());
    const unsigned char* source = data(tensor);
    std::vector<std::int64_t> values(count);
    switch (tensor.dtype) {
      case DType::kI64: copy_integers<std::int64_t>(source, values); break;
      case DType::kI32: copy_integers<std::int32_t>(source, values); break;
      case DType::kI16: copy_integers<std::int16_t>(source, values); break;
      case DType::kI8: copy_integers<std::int8_t>(source, values); break;
      case DType::kU8: copy_integers<std::uint8_t>(source, values); break;
      default:
        throw FormatError(path_ + ": tensor \"" + name +
                          "\": expected an integer tensor (I64, I32, I16, I8 or U8), found " +
                          dtype_name(tensor.dtype));
    }
    return values;
  }

 private:
  static constexpr std::size_t kMaxListedNames = 20;
  static constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

  [[noreturn]] void fail(const std::string& message) const {
    throw FormatError(path_ + ": " + message);
  }

  const unsigned char* data(const TensorInfo& tensor) const {
    return bytes_.data() + data_start_ + tensor.begin;
  }

  void require_floating_point(const TensorInfo& tensor) const {
    if (!is_floating_point(tensor.dtype)) {
      fail("tensor \"" + tensor.name +
           "\": expected a floating-point tensor (F32, F64, F16 or BF16), found " +
           dtype_name(tensor.dtype));
    }
  }

  template <typename Stored>
  static void copy_integers(const unsigned char* source, std::vector<std::int64_t>& values) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      Stored value;
      std::memcpy(&value, source + i * sizeof(Stored), sizeof(Stored));
      values[i] = static_cast<std::int64_t>(value);
    }
  }

  [[noreturn]] void non_finite(const TensorInfo& tensor, std::size_t index, double value,
                               const char* what) const {
    fail(distillrec::detail::concat("tensor \"", tensor.name, "\" (", dtype_name(tensor.dtype),
                                    ", shape ", detail::shape_string(tensor.shape), "): ", what,
                                    " ", value, " at flat index ", index, " (element ",
                                    detail::element_index_string(
                                        static_cast<std::int64_t>(index), tensor.shape),
                                    ")"));
  }

  /// Writes the tensor's num_elements() values as floats to `out`; rejects non-finite values.
  void decode_floats(const TensorInfo& tensor, float* out) const {
    const auto count = static_cast<std::size_t>(tensor.num_elements());
    const unsigned char* source = data(tensor);
    switch (tensor.dtype) {
      case DType::kF32:
        if (count > 0) std::memcpy(out, source, count * sizeof(float));  // bit-exact
        break;
      case DType::kF64:
        for (std::size_t i = 0; i < count; ++i) {
          double value;
          std::memcpy(&value, source + i * sizeof(double), sizeof(double));
          if (!std::isfinite(value)) non_finite(tensor, i, value, "non-finite value");
          if (std::abs(value) > static_cast<double>(std::numeric_limits<float>::max())) {
            non_finite(tensor, i, value, "value outside the float range");
          }
          out[i] = static_cast<float>(value);
        }
        break;
      case DType::kF16:
      case DType::kBF16:
        for (std::size_t i = 0; i < count; ++i) {
          std::uint16_t bits;
          std::memcpy(&bits, source + i * 2, 2);
          out[i] = tensor.dtype == DType::kF16 ? half_to_float(bits) : bfloat16_to_float(bits);
        }
        break;
      default:
        require_floating_point(tensor);
    }
    for (std::size_t i = 0; i < count; ++i) {
      if (!std::isfinite(out[i])) non_finite(tensor, i, out[i], "non-finite value");
    }
  }

  void parse() {
    if (bytes_.size() < 8) {
      fail(distillrec::detail::concat("file is ", bytes_.size(),
                                      " bytes, shorter than the 8-byte header length "
                                      "(truncated or not a safetensors file)"));
    }
    const std::uint64_t header_size = detail::read_u64_le(bytes_.data());
    if (header_size > kMaxHeaderBytes) {
      fail(distillrec::detail::concat("header length ", header_size,
                                      " is absurd (more than 100 MB): not a safetensors file"));
    }
    if (header_size > bytes_.size() - 8) {
      fail(distillrec::detail::concat("header length ", header_size, " exceeds the ",
                                      bytes_.size() - 8,
                                      " bytes after the length field (truncated or not a "
                                      "safetensors file)"));
    }
    data_start_ = 8 + static_cast<std::size_t>(header_size);
    const std::size_t buffer_size = bytes_.size() - data_start_;

    nlohmann::json header;
    try {
      // Duplicate top-level keys would silently hide a tensor: reject them while parsing.
      std::set<std::string> seen;
      const auto reject_duplicates = [&](int depth, nlohmann::json::parse_event_t event,
                                         nlohmann::json& parsed) {
        if (depth == 1 && event == nlohmann::json::parse_event_t::key &&
            !seen.insert(parsed.get<std::string>()).second) {
          fail("header: duplicate entry \"" + parsed.get<std::string>() + "\"");
        }
        return true;
      };
      header = nlohmann::json::parse(bytes_.data() + 8, bytes_.data() + data_start_,
                                     reject_duplicates);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) {
      fail(std::string("header must be a JSON object, found ") + header.type_name());
    }

    std::vector<const TensorInfo*> by_offset;
    for (const auto& item : header.items()) {
      const std::string& name = item.key();
      const nlohmann::json& entry = item.value();
      if (name == "__metadata__") {
        parse_metadata(entry);
        continue;
      }
      TensorInfo tensor = parse_entry(name, entry);
      std::size_t expected_bytes = 0;
      if (!detail::safetensors_byte_count(tensor.shape, dtype_size(tensor.dtype),
                                          &expected_bytes)) {
        fail("tensor \"" + name + "\": shape " + detail::shape_string(tensor.shape) +
             " is too large");
      }
      if (tensor.end > buffer_size) {
        fail(distillrec::detail::concat(
            "tensor \"", name, "\": data_offsets [", tensor.begin, ", ", tensor.end,
            "] end beyond the ", buffer_size, "-byte data buffer: the file is truncated (",
            bytes_.size(), " bytes, expected at least ", data_start_ + tensor.end, ")"));
      }
      if (tensor.end - tensor.begin != expected_bytes) {
        fail(distillrec::detail::concat(
            "tensor \"", name, "\": data_offsets [", tensor.begin, ", ", tensor.end, "] span ",
            tensor.end - tensor.begin, " bytes, but shape ", detail::shape_string(tensor.shape),
            " of ", dtype_name(tensor.dtype), " needs ", expected_bytes));
      }
      const auto inserted = tensors_.emplace(name, std::move(tensor));
      by_offset.push_back(&inserted.first->second);
    }

    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    for (std::size_t i = 1; i < by_offset.size(); ++i) {
      const TensorInfo& previous = *by_offset[i - 1];
      const TensorInfo& current = *by_offset[i];
      if (current.begin < previous.end) {
        fail(distillrec::detail::concat("tensors \"", previous.name, "\" [", previous.begin, ", ",
                                        previous.end, ") and \"", current.name, "\" [",
                                        current.begin, ", ", current.end,
                                        ") overlap in the data buffer"));
      }
    }
  }

  void parse_metadata(const nlohmann::json& entry) {
    if (entry.is_null()) return;
    if (!entry.is_object()) {
      fail(std::string("\"__metadata__\" must be an object of strings, found ") +
           entry.type_name());
    }
    for (const auto& item : entry.items()) {
      if (!item.value().is_string()) {
        fail("\"__metadata__\" value of \"" + item.key() + "\" must be a string, found " +
             item.value().type_name());
      }
      metadata_[item.key()] = item.value().get<std::string>();
    }
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const {
    const std::string where = "tensor \"" + name + "\": ";
    if (!entry.is_object()) {
      fail(where + "entry must be an object with dtype, shape and data_offsets, found " +
           entry.type_name());
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) fail(where + "missing \"" + key + "\"");
    }
    TensorInfo tensor;
    tensor.name = name;

    const auto& dtype = entry["dtype"];
    if (!dtype.is_string()) fail(where + "\"dtype\" must be a string, found " + dtype.type_name());
    if (!detail::try_parse_dtype(dtype.get<std::string>(), &tensor.dtype)) {
      fail(where + "unknown dtype \"" + dtype.get<std::string>() + "\" (supported: " +
           detail::kSupportedDtypes + ")");
    }

    const auto& shape = entry["shape"];
    if (!shape.is_array()) fail(where + "\"shape\" must be an array, found " + shape.type_name());
    for (const auto& dim : shape) {
      std::int64_t value = 0;
      if (!detail::json_to_int64(dim, &value)) {
        fail(where + "\"shape\" must hold integers, found " + dim.dump());
      }
      if (value < 0) fail(where + "negative dimension in shape " + shape.dump());
      tensor.shape.push_back(value);
    }

    const auto& offsets = entry["data_offsets"];
    std::int64_t begin = 0;
    std::int64_t end = 0;
    if (!offsets.is_array() || offsets.size() != 2 || !detail::json_to_int64(offsets[0], &begin) ||
        !detail::json_to_int64(offsets[1], &end) || begin < 0 || end < begin) {
      fail(where + "\"data_offsets\" must be [begin, end] with 0 <= begin <= end, found " +
           offsets.dump());
    }
    tensor.begin = static_cast<std::size_t>(begin);
    tensor.end = static_cast<std::size_t>(end);
    return tensor;
  }

  std::string path_;
  detail::FileBytes bytes_;
  std::size_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Collects named tensors and metadata, then writes one safetensors file (atomically).
class SafetensorsWriter {
 public:
  /// Sets (or replaces) a "__metadata__" entry.
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// A float matrix as an F32 tensor of shape [rows, cols]. Accepts matrices, maps and blocks.
  void add(const std::string& name, ConstMatrixRef<float> matrix) {
    Entry& entry = insert(name, DType::kF32, {matrix.rows(), matrix.cols()});
    auto* out = entry.bytes.data();
    const auto row_bytes = static_cast<std::size_t>(matrix.cols()) * sizeof(float);
    for (Index row = 0; row < matrix.rows() && row_bytes > 0; ++row) {
      std::memcpy(out + static_cast<std::size_t>(row) * row_bytes, matrix.row(row).data(),
                  row_bytes);
    }
  }

  /// An F32 tensor of any shape from contiguous row-major data.
  void add(const std::string& name, const float* data, std::vector<std::int64_t> shape) {
    Entry& entry = insert(name, DType::kF32, std::move(shape));
    DISTILLREC_ASSERT(data != nullptr || entry.bytes.empty());
    if (!entry.bytes.empty()) std::memcpy(entry.bytes.data(), data, entry.bytes.size());
  }

  /// A 1-D I64 tensor (item ids, counts, ...).
  void add(const std::string& name, const std::vector<std::int64_t>& values) {
    Entry& entry = insert(name, DType::kI64, {static_cast<std::int64_t>(values.size())});
    if (!values.empty()) std::memcpy(entry.bytes.data(), values.data(), entry.bytes.size());
  }

  /// An I64 tensor of any shape from row-major values (e.g. [examples, K] item ids).
  void add(const std::string& name, const std::vector<std::int64_t>& values, std::vector<std::int64_t> shape) {
    Entry& entry = insert(name, DType::kI64, std::move(shape));
    if (entry.bytes.size() != values.size() * sizeof(std::int64_t)) {
      throw ShapeError(distillrec::detail::concat("safetensors: tensor \"", name, "\": ", values.size(), " values for shape ",
                                                  detail::shape_string(entry.shape)));
    }
    if (!values.empty()) std::memcpy(entry.bytes.data(), values.data(), entry.bytes.size());
  }

  /// A 1-D I32 tensor.
  void add_i32(const std::string& name, const std::vector<std::int32_t>& values) {
    Entry& entry = insert(name, DType::kI32, {static_cast<std::int64_t>(values.size())});
    if (!values.empty()) std::memcpy(entry.bytes.data(), values.data(), entry.bytes.size());
  }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::size_t size() const { return tensors_.size(); }

  /// The complete file content.
  std::string serialize() const {
    std::ostringstream out;
    write_to(out);
    return out.str();
  }

  /// Writes the file atomically: `path` holds the old content or the new, never a mix.
  void write(const std::string& path) const {
    const std::string header = header_bytes();  // may throw before any file is touched
    write_file_atomic(path, [&](std::ostream& out) { write_to(out, header); });
  }

 private:
  struct Entry {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
  };

  Entry& insert(const std::string& name, DType dtype, std::vector<std::int64_t> shape) {
    if (name == "__metadata__") {
      throw ConfigError("safetensors: \"__metadata__\" is reserved and cannot name a tensor");
    }
    if (tensors_.count(name) != 0) {
      throw ConfigError("safetensors: tensor \"" + name + "\" added twice");
    }
    for (const auto dim : shape) {
      if (dim < 0) {
        throw ShapeError("safetensors: tensor \"" + name + "\" has a negative dimension in " +
                         detail::shape_string(shape));
      }
    }
    std::size_t bytes = 0;
    if (!detail::safetensors_byte_count(shape, dtype_size(dtype), &bytes)) {
      throw ShapeError("safetensors: tensor \"" + name + "\" shape " +
                       detail::shape_string(shape) + " is too large");
    }
    Entry& entry = tensors_[name];
    entry.dtype = dtype;
    entry.shape = std::move(shape);
    entry.bytes.resize(bytes);
    return entry;
  }

  /// Tensors by decreasing element size, then name: every tensor starts aligned to its size.
  std::vector<const std::pair<const std::string, Entry>*> layout() const {
    std::vector<const std::pair<const std::string, Entry>*> order;
    for (const auto& item : tensors_) order.push_back(&item);
    std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
      return dtype_size(a->second.dtype) > dtype_size(b->second.dtype);
    });
    return order;
  }

  /// Length field, JSON header and padding (everything before the data buffer).
  std::string header_bytes() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto* item : layout()) {
      const Entry& entry = item->second;
      header[item->first] = {{"dtype", dtype_name(entry.dtype)},
                             {"shape", entry.shape},
                             {"data_offsets", {offset, offset + entry.bytes.size()}}};
      offset += entry.bytes.size();
    }
    std::string json;
    try {
      json = header.dump();
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("safetensors: a tensor name or metadata string is not valid "
                                    "UTF-8: ") + e.what());
    }
    json.append((8 - json.size() % 8) % 8, ' ');
    std::string result(8, '\0');
    for (int i = 0; i < 8; ++i) {
      result[static_cast<std::size_t>(i)] =
          static_cast<char>((static_cast<std::uint64_t>(json.size()) >> (8 * i)) & 0xffu);
    }
    return result + json;
  }

  void write_to(std::ostream& out, const std::string& header) const {
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto* item : layout()) {
      const auto& bytes = item->second.bytes;
      out.write(reinterpret_cast<const char*>(bytes.data()),
                static_cast<std::streamsize>(bytes.size()));
    }
  }

  void write_to(std::ostream& out) const { write_to(out, header_bytes()); }

  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace distillrec::io
