#include "count_allocations.hpp"

#include <execinfo.h>
#include <link.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* pointer, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
}

namespace {

std::atomic<long> g_allocations{0};
std::atomic<long> g_onednn_allocations{0};
std::atomic<bool> g_counting{false};

// Executable segments of libdnnl, found once before counting starts.
struct Range {
  std::uintptr_t begin = 0, end = 0;
};
Range g_onednn[16];
std::atomic<int> g_onednn_ranges{-1};

int collect_onednn(dl_phdr_info* info, std::size_t, void*) {
  if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "libdnnl") == nullptr) return 0;
  int n = g_onednn_ranges.load() < 0 ? 0 : g_onednn_ranges.load();
  for (int i = 0; i < info->dlpi_phnum && n < 16; ++i) {
    const auto& header = info->dlpi_phdr[i];
    if (header.p_type != PT_LOAD || (header.p_flags & PF_X) == 0) continue;
    g_onednn[n].begin = info->dlpi_addr + header.p_vaddr;
    g_onednn[n].end = g_onednn[n].begin + header.p_memsz;
    ++n;
  }
  g_onednn_ranges.store(n);
  return 0;
}

bool from_onednn(const void* caller) {
  const auto address = reinterpret_cast<std::uintptr_t>(caller);
  const int n = g_onednn_ranges.load(std::memory_order_relaxed);
  for (int i = 0; i < n; ++i) {
    if (address >= g_onednn[i].begin && address < g_onednn[i].end) return true;
  }
  return false;
}

thread_local bool t_in_note = false;

/// Whether oneDNN's code made this allocation: a caller within the innermost frames (malloc
/// itself, operator new, oneDNN's allocation wrappers) lies in libdnnl.
bool made_by_onednn(const void* caller) {
  if (from_onednn(caller)) return true;
  void* frames[6];
  const int n = backtrace(frames, 6);
  for (int i = 0; i < n; ++i) {
    if (from_onednn(frames[i])) return true;
  }
  return false;
}

inline void note(const void* caller) {
  if (!g_counting.load(std::memory_order_relaxed) || t_in_note) return;
  t_in_note = true;  // backtrace() may allocate: those calls are not the caller's
  (made_by_onednn(caller) ? g_onednn_allocations : g_allocations).fetch_add(1, std::memory_order_relaxed);
  t_in_note = false;
}

}  // namespace

namespace distillrec::test {
long allocation_count() { return g_allocations.load(); }
long onednn_allocation_count() { return g_onednn_allocations.load(); }
void count_allocations(bool on) {
  if (on && g_onednn_ranges.load() < 0) {
    g_onednn_ranges.store(0);
    dl_iterate_phdr(collect_onednn, nullptr);
    void* frames[2];
    backtrace(frames, 2);  // loads the unwinder before counting starts
  }
  g_counting.store(on);
}
}  // namespace distillrec::test

extern "C" {

void* malloc(std::size_t size) {
  note(__builtin_return_address(0));
  return __libc_malloc(size);
}

void* calloc(std::size_t count, std::size_t size) {
  note(__builtin_return_address(0));
  return __libc_calloc(count, size);
}

void* realloc(void* pointer, std::size_t size) {
  note(__builtin_return_address(0));
  return __libc_realloc(pointer, size);
}

void* memalign(std::size_t alignment, std::size_t size) {
  note(__builtin_return_address(0));
  return __libc_memalign(alignment, size);
}

void* aligned_alloc(std::size_t alignment, std::size_t size) {
  note(__builtin_return_address(0));
  return __libc_memalign(alignment, size);
}

int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  note(__builtin_return_address(0));
  void* pointer = __libc_memalign(alignment, size);
  if (pointer == nullptr) return ENOMEM;
  *out = pointer;
  return 0;
}

}  // extern "C"
