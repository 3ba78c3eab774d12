// Counts every heap allocation of the process (malloc and its aligned variants, which operator
// new, Eigen, oneDNN and OpenMP all end in) while counting is on. The allocation functions are
// interposed in this test executable and forward to glibc's own (__libc_*); that is why these
// tests are their own executable, built without sanitizers (which interpose the same functions).
//
// Allocations made by oneDNN's code (its sgemm allocates packing buffers on every call, directly
// and through operator new; the library cannot hand it memory) are counted apart, by the return
// addresses of the innermost frames, so a test can hold the library's own code to zero and still
// report what the GEMM backend does.
#pragma once

namespace distillrec::test {

/// Allocations counted so far (from every thread), outside oneDNN.
long allocation_count();
/// Allocations counted so far whose caller is oneDNN's own code.
long onednn_allocation_count();
/// Counting on or off (off at start).
void count_allocations(bool on);

}  // namespace distillrec::test
