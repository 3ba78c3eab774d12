// distillrec/core/workspace.hpp
//
// Per-call scratch memory. Layers keep what their backward pass needs in a workspace struct
// owned by the caller, never in layer members: weights stay immutable during a forward pass,
// so one model serves many threads at once, each with its own workspace.
//
// A ScratchMatrix grows to the largest shape it has been asked for and then hands out maps of
// any smaller shape without allocating: batches of varying token counts reuse the same memory,
// so training is allocation-free after the first steps.
#pragma once

#include "distillrec/core/types.hpp"

#include <Eigen/Core>

#include <vector>

namespace distillrec {

template <typename T>
class ScratchMatrix {
 public:
  /// A rows x cols view of this scratch memory (contents unspecified).
  MatrixMap<T> resize(Index rows, Index cols) {
    const auto needed = static_cast<std::size_t>(rows * cols);
    if (needed > data_.size()) data_.resize(needed);
    rows_ = rows;
    cols_ = cols;
    return map();
  }
  /// A rows x cols view filled with zeros.
  MatrixMap<T> zeros(Index rows, Index cols) {
    auto m = resize(rows, cols);
    m.setZero();
    return m;
  }
  MatrixMap<T> map() { return MatrixMap<T>(data_.data(), rows_, cols_); }
  ConstMatrixMap<T> map() const { return ConstMatrixMap<T>(data_.data(), rows_, cols_); }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  std::size_t capacity_bytes() const { return data_.capacity() * sizeof(T); }

 private:
  std::vector<T, Eigen::aligned_allocator<T>> data_;
  Index rows_ = 0;
  Index cols_ = 0;
};

/// One growing buffer per thread of a parallel loop (per-sequence attention matrices):
/// prepare() before the parallel region with the most any iteration needs, get() inside it with
/// the calling thread's index. Every thread's buffer is sized in prepare(), so which thread runs
/// which iteration never matters, and once the largest size has been seen no call allocates.
template <typename T>
class PerThreadScratch {
 public:
  /// Makes room for `threads` threads of up to `elements` each; call outside the parallel region.
  void prepare(int threads, std::size_t elements) {
    if (buffers_.size() < static_cast<std::size_t>(threads)) buffers_.resize(static_cast<std::size_t>(threads));
    for (auto& buffer : buffers_) {
      if (buffer.size() < elements) buffer.resize(elements);
    }
  }
  /// At least n elements of the given thread's buffer (contents unspecified).
  T* get(int thread, std::size_t n) {
    auto& buffer = buffers_[static_cast<std::size_t>(thread)];
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
  }

 private:
  std::vector<std::vector<T, Eigen::aligned_allocator<T>>> buffers_;
};

}  // namespace distillrec
