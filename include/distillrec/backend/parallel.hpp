// distillrec/backend/parallel.hpp
//
// Thread control. The library parallelises with OpenMP over independent rows or sequences
// (oneDNN's Debian build uses the same OpenMP runtime, so one setting governs both). Reductions
// run in a fixed order, so a fixed seed and thread count give identical results.
#pragma once

#include <omp.h>

#include <exception>
#include <mutex>

namespace distillrec::parallel {

/// Sets the number of threads used by the library's parallel loops and by oneDNN.
inline void set_num_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

/// Threads a parallel region started now would use.
inline int max_threads() { return omp_get_max_threads(); }

/// Index of the calling thread inside a parallel region (0 outside).
inline int thread_index() { return omp_get_thread_num(); }

/// True inside an active parallel region (nested GEMMs then stay single-threaded).
inline bool in_parallel() { return omp_in_parallel() != 0; }

/// Runs body(i, thread) for i in [0, n): across the library's threads when `parallel` (a static
/// schedule, or a dynamic one with chunks of `dynamic_chunk` > 0), else as a plain loop on the
/// calling thread with thread = 0. The serial case enters no OpenMP construct: even a region
/// that runs on one thread makes libgomp allocate a team, which a training step must not do.
/// Exceptions must not escape the body when parallel (use ExceptionCollector).
template <typename Body>
void for_each(long n, bool parallel, Body&& body, long dynamic_chunk = 0) {
  if (!parallel || n <= 1) {
    for (long i = 0; i < n; ++i) body(i, 0);
    return;
  }
  if (dynamic_chunk > 0) {
#pragma omp parallel for schedule(dynamic, dynamic_chunk)
    for (long i = 0; i < n; ++i) body(i, omp_get_thread_num());
  } else {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; ++i) body(i, omp_get_thread_num());
  }
}

/// Exceptions must not escape an OpenMP region (that terminates the program): loop bodies run
/// through run(), which keeps the first exception; rethrow() raises it after the region.
class ExceptionCollector {
 public:
  template <typename Body>
  void run(Body&& body) {
    try {
      body();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace distillrec::parallel
