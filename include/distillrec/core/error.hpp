// distillrec/core/error.hpp
//
// The library's exception hierarchy. Every message says what was expected and what was found,
// and names the file and line or the tensor involved, in what() itself.
//
//   Error          base of everything the library throws (a std::runtime_error)
//   ShapeError     tensor or matrix dimensions that do not agree
//   FormatError    malformed input files: logs, safetensors, npy, JSON
//   ConfigError    invalid hyper-parameters or option combinations
#pragma once

#include "distillrec/core/types.hpp"

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace distillrec {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

class ShapeError : public Error {
 public:
  explicit ShapeError(const std::string& message) : Error("shape error: " + message) {}
};

class FormatError : public Error {
 public:
  explicit FormatError(const std::string& message) : Error("format error: " + message) {}

  /// "file:line: message", the form compilers use, so editors can jump to it.
  FormatError(const std::string& file, long line, const std::string& message)
      : Error("format error: " + file + ":" + std::to_string(line) + ": " + message) {}
};

class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& message) : Error("config error: " + message) {}
};

namespace detail {

/// Concatenates streamable values into a string: detail::concat("expected ", n, " rows").
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

}  // namespace detail

/// Throws ShapeError unless a matrix has the expected dimensions.
template <typename MatrixLike>
void require_shape(const MatrixLike& matrix, Index rows, Index cols,
                   const char* what) {
  if (matrix.rows() != rows || matrix.cols() != cols) {
    throw ShapeError(detail::concat(what, ": expected ", rows, "x", cols, ", got ", matrix.rows(),
                                    "x", matrix.cols()));
  }
}

}  // namespace distillrec

/// Internal invariant check: active in debug builds only (inputs are validated at the boundary).
#ifdef NDEBUG
#define DISTILLREC_ASSERT(condition) ((void)0)
#else
#define DISTILLREC_ASSERT(condition) assert(condition)
#endif
