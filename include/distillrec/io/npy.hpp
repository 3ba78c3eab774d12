// distillrec/io/npy.hpp
//
// Reader and writer of single NumPy arrays in the .npy format (numpy.lib.format), accepted for
// teacher signals written with `np.save`.
//
// Layout of a file:
//
//   "\x93NUMPY"  magic string (6 bytes)
//   major, minor one byte each: 1.0, 2.0 or 3.0
//   header_len   unsigned little-endian: 2 bytes in version 1.0, 4 bytes in 2.0 and 3.0
//   header       a Python dict literal, ASCII (UTF-8 in 3.0), padded with spaces, ending in '\n':
//                  {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
//   data         the elements, C (row-major) or Fortran order as fortran_order says
//
// read_npy() validates everything (magic, version, the dict's keys and value types, a known
// little-endian dtype, the data size: a truncated file is a FormatError naming the file) and
// returns the raw bytes; npy_to_matrix() and npy_to_integers() convert them. The writers
// produce exactly the bytes `np.save` (numpy >= 1.23) writes for a C-ordered 2-D array:
// version 1.0, header padded so the data starts at a multiple of 64 bytes.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"
#include "distillrec/io/atomic_file.hpp"
#include "distillrec/io/safetensors.hpp"  // half_to_float, shape formatting

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace distillrec::io {

/// One array as stored in a .npy file: dtype descriptor, shape, order and raw element bytes.
struct NpyArray {
  std::string descr;                // NumPy dtype descriptor, e.g. "<f4", "<i8", "|u1"
  std::vector<std::int64_t> shape;  // () for a scalar
  bool fortran_order = false;       // true: column-major data
  std::vector<unsigned char> data;  // num_elements() * item size bytes, little-endian

  std::int64_t num_elements() const {
    std::int64_t count = 1;
    for (const auto dim : shape) count *= dim;
    return count;
  }
};

namespace detail {

/// Kind ('f' float, 'i' signed, 'u' unsigned, 'b' bool) and size of a supported descriptor.
struct NpyType {
  char kind = 0;
  std::size_t size = 0;
};

/// Parses a descriptor such as "<f4"; returns an error message ("" on success).
inline std::string parse_npy_descr(const std::string& descr, NpyType* type) {
  if (descr.size() < 2) return "unsupported dtype '" + descr + "'";
  std::size_t pos = 0;
  char order = '=';
  if (descr[0] == '<' || descr[0] == '>' || descr[0] == '|' || descr[0] == '=') {
    order = descr[0];
    pos = 1;
  }
  const std::string code = descr.substr(pos);
  static constexpr const char* kSupported[] = {"f2", "f4", "f8", "i1", "i2", "i4", "i8",
                                               "u1", "u2", "u4", "u8", "b1"};
  bool known = false;
  for (const char* candidate : kSupported) known = known || code == candidate;
  if (!known) {
    return "unsupported dtype '" + descr +
           "' (supported: little-endian f2, f4, f8, i1..i8, u1..u8, b1)";
  }
  type->kind = code[0];
  type->size = static_cast<std::size_t>(code[1] - '0');
  if (order == '>' && type->size > 1) {
    return "big-endian dtype '" + descr + "' is not supported; save with arr.astype('<" + code +
           "')";
  }
  return "";
}

/// Product of the dimensions times `element_size`; false on overflow.
inline bool npy_byte_count(const std::vector<std::int64_t>& shape, std::size_t element_size,
                           std::size_t* bytes) {
  return safetensors_byte_count(shape, element_size, bytes);
}

/// Recursive-descent parser for the subset of Python literals an .npy header uses: a dict of
/// string keys whose values are strings, True/False or tuples of non-negative integers.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  NpyArray parse() {
    NpyArray array;
    std::set<std::string> seen;
    skip_space();
    expect('{');
    skip_space();
    while (peek() != '}') {
      const std::string key = parse_string();
      if (!seen.insert(key).second) fail("duplicate key '" + key + "'");
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (peek() == '[') fail("structured dtypes (a list as 'descr') are not supported");
        array.descr = parse_string();
      } else if (key == "fortran_order") {
        array.fortran_order = parse_bool();
      } else if (key == "shape") {
        array.shape = parse_shape();
      } else {
        fail("unexpected key '" + key + "' (expected descr, fortran_order and shape)");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    for (const char* key : {"descr", "fortran_order", "shape"}) {
      if (seen.count(key) == 0) fail(std::string("missing key '") + key + "'");
    }
    return array;
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    constexpr std::size_t kShown = 160;  // enough for any real header, short for garbage
    const std::string shown =
        text_.size() <= kShown ? text_ : text_.substr(0, kShown) + "...";
    throw FormatError(distillrec::detail::concat(path_, ": malformed .npy header at character ",
                                                 pos_, ": ", message, " (header: ", shown, ")"));
  }

  char peek() const {
    if (pos_ >= text_.size()) fail("unexpected end of header");
    return text_[pos_];
  }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
            text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  std::string parse_string() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    const std::size_t start = ++pos_;
    while (peek() != quote) {
      if (text_[pos_] == '\\') fail("escape sequences are not supported in header strings");
      ++pos_;
    }
    return text_.substr(start, pos_++ - start);
  }

  bool parse_bool() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }

  std::int64_t parse_dimension() {
    if (peek() == '-') fail("negative dimension in shape");
    if (peek() < '0' || peek() > '9') fail("expected a non-negative integer in shape");
    std::int64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const int digit = text_[pos_++] - '0';
      if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
        fail("dimension too large");
      }
      value = value * 10 + digit;
    }
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;  // Python 2 long suffix: "3L"
    return value;
  }

  /// "()", "(5,)", "(2, 3)", "(2, 3,)". Like Python, "(5)" is an integer, not a tuple.
  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    skip_space();
    bool trailing_comma = false;
    while (peek() != ')') {
      shape.push_back(parse_dimension());
      skip_space();
      trailing_comma = false;
      if (peek() == ',') {
        ++pos_;
        skip_space();
        trailing_comma = true;
      } else if (peek() != ')') {
        fail("expected ',' or ')' in shape");
      }
    }
    ++pos_;
    if (shape.size() == 1 && !trailing_comma) fail("shape must be a tuple: write (n,) not (n)");
    return shape;
  }

  const std::string& text_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

/// "(2, 3)", "(5,)", "()": a shape as Python's repr() of a tuple writes it.
inline std::string python_tuple(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

/// Magic, version 1.0, header length and header exactly as numpy's _write_array_header.
inline std::string npy_prefix(const std::string& descr, const std::vector<std::int64_t>& shape) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " +
                       python_tuple(shape) + ", }";
  // numpy leaves room to grow the first dimension in place (GROWTH_AXIS_MAX_DIGITS = 21).
  if (!shape.empty()) {
    const std::size_t digits = std::to_string(shape[0]).size();
    if (digits < 21) header.append(21 - digits, ' ');
  }
  constexpr std::size_t kPrefix = 10;  // magic (6) + version (2) + header_len (2)
  constexpr std::size_t kAlign = 64;
  const std::size_t length_with_newline = header.size() + 1;
  const std::size_t padding = kAlign - (kPrefix + length_with_newline) % kAlign;
  header.append(padding, ' ');
  header += '\n';
  std::string prefix("\x93NUMPY\x01\x00", 8);
  prefix += static_cast<char>(header.size() & 0xffu);
  prefix += static_cast<char>((header.size() >> 8) & 0xffu);
  return prefix + header;
}

template <typename T>
void write_npy_matrix(const std::string& path, const Matrix<T>& matrix, const char* descr) {
  const std::string prefix = npy_prefix(descr, {matrix.rows(), matrix.cols()});
  write_file_atomic(path, [&](std::ostream& out) {
    out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
    out.write(reinterpret_cast<const char*>(matrix.data()),
              static_cast<std::streamsize>(matrix.size() * static_cast<Index>(sizeof(T))));
  });
}

/// Element `i` of a little-endian integer array of the given type as int64; false if an
/// unsigned 64-bit value does not fit.
inline bool npy_integer(const unsigned char* data, std::size_t i, const NpyType& type,
                        std::int64_t* value) {
  const unsigned char* p = data + i * type.size;
  if (type.kind == 'i') {
    switch (type.size) {
      case 1: { std::int8_t v; std::memcpy(&v, p, 1); *value = v; return true; }
      case 2: { std::int16_t v; std::memcpy(&v, p, 2); *value = v; return true; }
      case 4: { std::int32_t v; std::memcpy(&v, p, 4); *value = v; return true; }
      default: { std::int64_t v; std::memcpy(&v, p, 8); *value = v; return true; }
    }
  }
  switch (type.size) {
    case 1: { std::uint8_t v; std::memcpy(&v, p, 1); *value = v; return true; }
    case 2: { std::uint16_t v; std::memcpy(&v, p, 2); *value = v; return true; }
    case 4: { std::uint32_t v; std::memcpy(&v, p, 4); *value = v; return true; }
    default: {
      std::uint64_t v;
      std::memcpy(&v, p, 8);
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
      *value = static_cast<std::int64_t>(v);
      return true;
    }
  }
}

[[noreturn]] inline void npy_fail(const std::string& path, const std::string& message) {
  throw FormatError(path + ": " + message);
}

/// FormatError unless the array's elements are in row-major order.
inline void require_c_order(const NpyArray& array, const std::string& what) {
  if (array.fortran_order && array.shape.size() >= 2) {
    throw FormatError(what + ": array is in Fortran (column-major) order; save it with "
                             "np.save(path, np.ascontiguousarray(array))");
  }
}

}  // namespace detail

/// Reads and validates one .npy file. Error if it cannot be read; FormatError naming the file
/// for a bad magic string or version, a malformed header, an unsupported or big-endian dtype,
/// or a data size that does not match the shape (truncated or with trailing bytes).
inline NpyArray read_npy(const std::string& path) {
  std::vector<unsigned char> bytes = detail::read_file_bytes(path);
  const auto fail = [&path](const std::string& message) { detail::npy_fail(path, message); };
  static constexpr unsigned char kMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    if (bytes.size() >= 6 && std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0) {
      fail(distillrec::detail::concat("file is only ", bytes.size(),
                                      " bytes: truncated .npy preamble"));
    }
    fail("not a .npy file (missing the \"\\x93NUMPY\" magic string)");
  }
  const int major = bytes[6];
  const int minor = bytes[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    fail(distillrec::detail::concat("unsupported .npy format version ", major, ".", minor,
                                    " (expected 1.0, 2.0 or 3.0)"));
  }
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes) fail("truncated .npy preamble");
  std::size_t header_length = 0;
  for (std::size_t i = length_bytes; i-- > 0;) {
    header_length = (header_length << 8) | bytes[8 + i];
  }
  const std::size_t data_start = 8 + length_bytes + header_length;
  if (data_start > bytes.size()) {
    fail(distillrec::detail::concat("header length ", header_length, " runs past the end of the ",
                                    bytes.size(), "-byte file (truncated)"));
  }
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + 8 + length_bytes,
                           header_length);
  NpyArray array = detail::NpyHeaderParser(header, path).parse();

  detail::NpyType type;
  const std::string descr_error = detail::parse_npy_descr(array.descr, &type);
  if (!descr_error.empty()) fail(descr_error);
  std::size_t expected = 0;
  if (!detail::npy_byte_count(array.shape, type.size, &expected)) {
    fail("shape " + detail::python_tuple(array.shape) + " is too large");
  }
  const std::size_t found = bytes.size() - data_start;
  if (found != expected) {
    fail(distillrec::detail::concat(
        "shape ", detail::python_tuple(array.shape), " of '", array.descr, "' needs ", expected,
        " data bytes, found ", found,
        found < expected ? " (truncated)" : " (trailing bytes after the array)"));
  }
  // Drop the preamble in place: no second copy of a large array.
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(data_start));
  array.data = std::move(bytes);
  return array;
}

/// A 2-D array (or a 1-D array as one row) of f4/f8/f2 as a float matrix. `what` names the
/// source in errors (pass the path). ShapeError for other ranks; FormatError for Fortran order,
/// integer dtypes, float64 values outside the float range and NaN or infinite values.
inline Matrix<float> npy_to_matrix(const NpyArray& array, const std::string& what) {
  detail::NpyType type;
  const std::string descr_error = detail::parse_npy_descr(array.descr, &type);
  if (!descr_error.empty()) throw FormatError(what + ": " + descr_error);
  if (type.kind != 'f') {
    throw FormatError(what + ": expected a floating-point array (f2, f4 or f8), found '" +
                      array.descr + "'");
  }
  if (array.shape.size() != 1 && array.shape.size() != 2) {
    throw ShapeError(what + ": expected a 1-D or 2-D array, found shape " +
                     detail::python_tuple(array.shape));
  }
  detail::require_c_order(array, what);
  std::size_t bytes = 0;
  if (!detail::npy_byte_count(array.shape, type.size, &bytes) || bytes != array.data.size()) {
    throw FormatError(distillrec::detail::concat(what, ": ", array.data.size(),
                                                 " data bytes do not match shape ",
                                                 detail::python_tuple(array.shape)));
  }
  const Index rows = array.shape.size() == 2 ? static_cast<Index>(array.shape[0]) : 1;
  const Index cols = static_cast<Index>(array.shape.back());
  Matrix<float> matrix(rows, cols);
  float* out = matrix.data();
  const unsigned char* in = array.data.data();
  const auto count = static_cast<std::size_t>(matrix.size());
  const auto bad_value = [&](std::size_t i, double value, const char* problem) {
    throw FormatError(distillrec::detail::concat(
        what, ": ", problem, " ", value, " at flat index ", i, " (element ",
        detail::element_index_string(static_cast<std::int64_t>(i), array.shape), ")"));
  };
  for (std::size_t i = 0; i < count; ++i) {
    if (type.size == 4) {
      std::memcpy(out + i, in + 4 * i, 4);
    } else if (type.size == 2) {
      std::uint16_t bits;
      std::memcpy(&bits, in + 2 * i, 2);
      out[i] = half_to_float(bits);
    } else {
      double value;
      std::memcpy(&value, in + 8 * i, 8);
      if (std::isfinite(value) &&
          std::abs(value) > static_cast<double>(std::numeric_limits<float>::max())) {
        bad_value(i, value, "value outside the float range");
      }
      out[i] = static_cast<float>(value);
    }
    if (!std::isfinite(out[i])) bad_value(i, out[i], "non-finite value");
  }
  return matrix;
}

/// Any integer array (i1..i8, u1..u8), flattened in row-major order. FormatError for other
/// dtypes, Fortran order and uint64 values above the int64 range.
inline std::vector<std::int64_t> npy_to_integers(const NpyArray& array, const std::string& what) {
  detail::NpyType type;
  const std::string descr_error = detail::parse_npy_descr(array.descr, &type);
  if (!descr_error.empty()) throw FormatError(what + ": " + descr_error);
  if (type.kind != 'i' && type.kind != 'u') {
    throw FormatError(what + ": expected an integer array (i1..i8 or u1..u8), found '" +
                      array.descr + "'");
  }
  detail::require_c_order(array, what);
  std::size_t bytes = 0;
  if (!detail::npy_byte_count(array.shape, type.size, &bytes) || bytes != array.data.size()) {
    throw FormatError(distillrec::detail::concat(what, ": ", array.data.size(),
                                                 " data bytes do not match shape ",
                                                 detail::python_tuple(array.shape)));
  }
  std::vector<std::int64_t> values(bytes / type.size);
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!detail::npy_integer(array.data.data(), i, type, &values[i])) {
      throw FormatError(distillrec::detail::concat(what, ": uint64 value at flat index ", i,
                                                   " does not fit in int64"));
    }
  }
  return values;
}

/// Writes a float matrix as a '<f4' array of shape (rows, cols), atomically.
inline void write_npy(const std::string& path, const Matrix<float>& matrix) {
  detail::write_npy_matrix(path, matrix, "<f4");
}

/// Writes an int64 matrix as a '<i8' array of shape (rows, cols), atomically.
inline void write_npy(const std::string& path, const Matrix<std::int64_t>& matrix) {
  detail::write_npy_matrix(path, matrix, "<i8");
}

}  // namespace distillrec::io
