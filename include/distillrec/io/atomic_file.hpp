// distillrec/io/atomic_file.hpp
//
// Whole-file writes that are atomic: readers of `path` see either the old file or the complete
// new one, never a prefix. A crash, a full disk or an exception thrown half-way through a
// checkpoint leaves the previous checkpoint untouched.
//
// Protocol (POSIX): create a uniquely named temporary file in the SAME folder as the target
// (`<path>.tmp.<pid>.<random hex>`, so the final rename never crosses file systems), stream the
// content into it, flush, fsync the file, copy the permission bits of an existing target, then
// std::rename() it over the target and fsync the folder (best effort) so the rename itself is
// durable. On any failure the temporary is removed.
//
// Also here: io::detail::read_file_bytes(), the whole-file read shared by the safetensors and npy
// readers, so both report a missing or unreadable file the same way.
#pragma once

#include "distillrec/core/error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <ostream>
#include <streambuf>
#include <string>
#include <vector>

namespace distillrec::io {

namespace detail {

/// std::streambuf over a POSIX file descriptor that remembers the errno of the first failed
/// write (std::ofstream hides both the descriptor, needed for fsync, and errno).
class FdOutputBuffer : public std::streambuf {
 public:
  explicit FdOutputBuffer(int fd) : fd_(fd), buffer_(kBufferSize) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }

  /// errno of the first failed write, 0 if every write succeeded.
  int error() const { return error_; }

 protected:
  int_type overflow(int_type ch) override {
    if (!flush_buffer()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }

  std::streamsize xsputn(const char* data, std::streamsize count) override {
    // Large blocks (tensor data) bypass the buffer instead of being copied through it.
    if (count < static_cast<std::streamsize>(buffer_.size())) {
      return std::streambuf::xsputn(data, count);
    }
    if (!flush_buffer() || !write_all(data, count)) return 0;
    return count;
  }

  int sync() override { return flush_buffer() ? 0 : -1; }

 private:
  static constexpr std::size_t kBufferSize = 1 << 16;

  bool flush_buffer() {
    const std::streamsize pending = pptr() - pbase();
    if (pending > 0 && !write_all(pbase(), pending)) return false;
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return true;
  }

  bool write_all(const char* data, std::streamsize count) {
    if (error_ != 0) return false;
    while (count > 0) {
      const ssize_t written = ::write(fd_, data, static_cast<std::size_t>(count));
      if (written < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      data += written;
      count -= written;
    }
    return true;
  }

  int fd_;
  int error_ = 0;
  std::vector<char> buffer_;
};

/// Owns the temporary file until it has been renamed over the target: closes the descriptor
/// and unlinks the temporary if anything fails (including an exception from the writer).
struct TemporaryFile {
  std::string path;
  int fd = -1;
  bool renamed = false;

  TemporaryFile() = default;
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    if (fd >= 0) ::close(fd);
    if (!renamed && !path.empty()) ::unlink(path.c_str());
  }
};

/// 64 bits that differ between calls, threads and processes; O_EXCL settles any collision.
inline std::uint64_t temporary_suffix(int attempt) {
  std::uint64_t x = static_cast<std::uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  x ^= reinterpret_cast<std::uintptr_t>(&attempt) * 0x9e3779b97f4a7c15ULL;  // differs per thread
  x += static_cast<std::uint64_t>(attempt) * 0xbf58476d1ce4e5b9ULL;
  // splitmix64 finaliser: spreads nearby clock values over all bits.
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline Error write_error(const std::string& path, const std::string& what, int error_number) {
  return Error(distillrec::detail::concat("cannot write '", path, "': ", what, ": ",
                                          std::strerror(error_number)));
}

/// The whole file as bytes; Error naming the path and the system's reason if it cannot be read.
inline std::vector<unsigned char> read_file_bytes(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    throw Error(
        distillrec::detail::concat("cannot open '", path, "': ", std::strerror(errno)));
  }
  std::vector<unsigned char> bytes;
  struct stat status {};
  if (::fstat(::fileno(file), &status) == 0 && S_ISREG(status.st_mode)) {
    bytes.reserve(static_cast<std::size_t>(status.st_size));
  }
  unsigned char chunk[1 << 16];
  for (;;) {
    const std::size_t got = std::fread(chunk, 1, sizeof(chunk), file);
    bytes.insert(bytes.end(), chunk, chunk + got);
    if (got < sizeof(chunk)) break;
  }
  const bool failed = std::ferror(file) != 0;
  const int error_number = errno;
  std::fclose(file);
  if (failed) {
    throw Error(
        distillrec::detail::concat("cannot read '", path, "': ", std::strerror(error_number)));
  }
  return bytes;
}

}  // namespace detail

/// Writes `path` atomically with the content `writer` streams into the given std::ostream.
/// Throws Error naming the path and the system's reason (strerror) if the temporary cannot be
/// created, written, synced or renamed, or if the writer leaves the stream failed. An exception
/// thrown by `writer` itself propagates unchanged. In every failure case the previous content
/// of `path` is untouched and no temporary file is left behind.
inline void write_file_atomic(const std::string& path,
                              const std::function<void(std::ostream&)>& writer) {
  detail::TemporaryFile temporary;
  for (int attempt = 0; temporary.fd < 0; ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof(suffix), "%016llx",
                  static_cast<unsigned long long>(detail::temporary_suffix(attempt)));
    const std::string candidate =
        path + ".tmp." + std::to_string(static_cast<long>(::getpid())) + "." + suffix;
    // 0666 filtered by the umask: the permissions an ordinary new file would get.
    const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      temporary.path = candidate;
      temporary.fd = fd;
    } else if (errno != EEXIST || attempt >= 100) {
      throw detail::write_error(path, "cannot create the temporary file '" + candidate + "'",
                                errno);
    }
  }

  {
    detail::FdOutputBuffer buffer(temporary.fd);
    std::ostream out(&buffer);
    writer(out);
    out.flush();
    if (buffer.error() != 0) throw detail::write_error(path, "write failed", buffer.error());
    if (!out) {
      throw Error("cannot write '" + path +
                  "': the writer left the output stream in a failed state");
    }
  }

  // A replaced file keeps its permission bits (a checkpoint made group-readable stays so).
  struct stat target_status {};
  if (::stat(path.c_str(), &target_status) == 0 && S_ISREG(target_status.st_mode)) {
    if (::fchmod(temporary.fd, target_status.st_mode & 07777) != 0) {
      throw detail::write_error(path, "fchmod failed", errno);
    }
  }
  if (::fsync(temporary.fd) != 0) throw detail::write_error(path, "fsync failed", errno);
  const int fd = temporary.fd;
  temporary.fd = -1;
  if (::close(fd) != 0) throw detail::write_error(path, "close failed", errno);

  if (std::rename(temporary.path.c_str(), path.c_str()) != 0) {
    throw detail::write_error(path, "rename of '" + temporary.path + "' failed", errno);
  }
  temporary.renamed = true;

  // Make the rename itself durable. Best effort: some file systems refuse fsync on folders.
  const auto slash = path.find_last_of('/');
  const std::string folder =
      slash == std::string::npos ? std::string(".") : (slash == 0 ? "/" : path.substr(0, slash));
  const int folder_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (folder_fd >= 0) {
    (void)::fsync(folder_fd);
    ::close(folder_fd);
  }
}

/// Writes `bytes` to `path` atomically (see the overload above).
inline void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, [&bytes](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
}

}  // namespace distillrec::io
