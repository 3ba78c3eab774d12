// distillrec/core/params.hpp
//
// All parameters of a model live in one flat buffer, their gradients in a twin buffer of the
// same layout. Layers declare named slices ("blocks.0.attention.query.weight", rows x cols,
// row-major like a PyTorch tensor) and later read them through Eigen maps. Optimisers, gradient
// clipping, checkpoints and teacher-to-student weight copies then work on one array.
//
// Life cycle: declare() every slice, allocate() once, then value()/grad() views stay valid for
// the lifetime of the object (the buffers never move after allocate()). Models keep their
// Parameters behind a unique_ptr so that moving a model does not invalidate its layers' views.
//
// Both buffers come zero-filled from the allocator without being written (large ones are fresh
// anonymous pages of the operating system), so a buffer that is never written never becomes
// resident: a model that only serves pays for its weights, not for the gradient twin.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif

namespace distillrec {

namespace detail {

/// An allocator whose memory is zero-filled without being written: blocks of 1 MiB or more are
/// anonymous mappings (zero pages, resident only once written), smaller ones aligned and
/// cleared. Elements are default-initialised (not written) on resize, so a vector of them holds
/// zeros it never touched. 64-byte aligned either way.
template <typename T>
struct ZeroPageAllocator {
  using value_type = T;
  static constexpr std::size_t kMapBytes = std::size_t{1} << 20;
  static constexpr std::size_t kAlign = 64;

  ZeroPageAllocator() = default;
  template <typename U>
  ZeroPageAllocator(const ZeroPageAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
#if defined(__unix__) || defined(__APPLE__)
    if (bytes >= kMapBytes) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      return static_cast<T*>(p);
    }
#endif
    void* p = ::operator new(bytes, std::align_val_t(kAlign));
    std::memset(p, 0, bytes);
    return static_cast<T*>(p);
  }

  void deallocate(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
#if defined(__unix__) || defined(__APPLE__)
    if (bytes >= kMapBytes) {
      munmap(p, bytes);
      return;
    }
#endif
    ::operator delete(p, std::align_val_t(kAlign));
  }

  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialised: the allocator's zeros stay unwritten
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  template <typename U>
  bool operator==(const ZeroPageAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const ZeroPageAllocator<U>&) const noexcept { return false; }
};

}  // namespace detail

/// Name, shape and position of one parameter tensor in the flat buffers.
struct ParameterInfo {
  std::string name;
  Index rows = 0;
  Index cols = 0;
  Index offset = 0;        // first element in the flat buffers
  bool trainable = true;   // false: optimisers leave it unchanged (frozen tables)
  Index size() const { return rows * cols; }
};

template <typename T>
class Parameters {
 public:
  using Id = Index;
  using Buffer = std::vector<T, detail::ZeroPageAllocator<T>>;

  /// Slices start on 64-byte boundaries so SIMD kernels see aligned rows of parameters.
  static constexpr Index kAlignElements = static_cast<Index>(64 / sizeof(T));

  /// Declares a rows x cols parameter; returns its id. Names must be unique.
  Id declare(const std::string& name, Index rows, Index cols) {
    if (allocated_) {
      throw ConfigError("Parameters::declare(\"" + name + "\") after allocate()");
    }
    if (rows <= 0 || cols <= 0) {
      throw ShapeError(detail::concat("parameter \"", name, "\" must have positive dimensions, got ",
                                      rows, "x", cols));
    }
    if (by_name_.count(name) != 0) {
      throw ConfigError("parameter \"" + name + "\" declared twice");
    }
    ParameterInfo info;
    info.name = name;
    info.rows = rows;
    info.cols = cols;
    info.offset = total_;
    total_ += (rows * cols + kAlignElements - 1) / kAlignElements * kAlignElements;
    const Id id = static_cast<Id>(infos_.size());
    by_name_.emplace(name, id);
    infos_.push_back(std::move(info));
    return id;
  }

  /// Allocates zero-filled value and gradient buffers. Call once, after all declarations.
  void allocate() {
    if (allocated_) throw ConfigError("Parameters::allocate() called twice");
    // resize() default-initialises: the allocator's zeros are not written (see the top).
    values_.resize(static_cast<std::size_t>(total_));
    grads_.resize(static_cast<std::size_t>(total_));
    allocated_ = true;
  }

  bool allocated() const { return allocated_; }

  MatrixMap<T> value(Id id) {
    const auto& info = checked(id);
    return MatrixMap<T>(values_.data() + info.offset, info.rows, info.cols);
  }
  ConstMatrixMap<T> value(Id id) const {
    const auto& info = checked(id);
    return ConstMatrixMap<T>(values_.data() + info.offset, info.rows, info.cols);
  }
  MatrixMap<T> grad(Id id) {
    const auto& info = checked(id);
    return MatrixMap<T>(grads_.data() + info.offset, info.rows, info.cols);
  }
  ConstMatrixMap<T> grad(Id id) const {
    const auto& info = checked(id);
    return ConstMatrixMap<T>(grads_.data() + info.offset, info.rows, info.cols);
  }

  const ParameterInfo& info(Id id) const { return infos_.at(static_cast<std::size_t>(id)); }
  const std::vector<ParameterInfo>& infos() const { return infos_; }
  Index count() const { return static_cast<Index>(infos_.size()); }

  /// Id of a named parameter, or -1.
  Id find(const std::string& name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? Id(-1) : it->second;
  }

  void set_trainable(Id id, bool trainable) { infos_.at(static_cast<std::size_t>(id)).trainable = trainable; }

  /// Number of scalar parameters (without alignment padding).
  Index num_scalars() const {
    Index n = 0;
    for (const auto& info : infos_) n += info.size();
    return n;
  }
  Index num_trainable_scalars() const {
    Index n = 0;
    for (const auto& info : infos_) n += info.trainable ? info.size() : 0;
    return n;
  }

  /// The flat buffers, alignment padding included (padding stays zero).
  Index buffer_size() const { return total_; }
  T* values() { return values_.data(); }
  const T* values() const { return values_.data(); }
  T* grads() { return grads_.data(); }
  const T* grads() const { return grads_.data(); }
  VectorMap<T> flat_values() { return VectorMap<T>(values_.data(), total_); }
  VectorMap<T> flat_grads() { return VectorMap<T>(grads_.data(), total_); }
  ConstVectorMap<T> flat_values() const { return ConstVectorMap<T>(values_.data(), total_); }
  ConstVectorMap<T> flat_grads() const { return ConstVectorMap<T>(grads_.data(), total_); }

  /// Zeroes the gradients of the trainable parameters. A frozen parameter's slice is left alone:
  /// layers compute no gradient for it, so it keeps the allocator's zeros and, for a large frozen
  /// tensor (a LoRA model's base weights), never becomes resident.
  void zero_grad() {
    for (const auto& info : infos_) {
      if (info.trainable) std::fill_n(grads_.data() + info.offset, static_cast<std::size_t>(info.size()), T(0));
    }
  }

  /// Copies all values from another buffer with the same layout (e.g. best-epoch snapshot).
  void copy_values_from(const Parameters& other) {
    if (other.total_ != total_ || other.infos_.size() != infos_.size()) {
      throw ShapeError("Parameters::copy_values_from: layouts differ");
    }
    values_ = other.values_;
  }

 private:
  const ParameterInfo& checked(Id id) const {
    DISTILLREC_ASSERT(allocated_);
    DISTILLREC_ASSERT(id >= 0 && id < static_cast<Id>(infos_.size()));
    return infos_[static_cast<std::size_t>(id)];
  }

  std::vector<ParameterInfo> infos_;
  std::unordered_map<std::string, Id> by_name_;
  Index total_ = 0;
  bool allocated_ = false;
  Buffer values_;
  Buffer grads_;
};

}  // namespace distillrec
