#include "distillrec/io/atomic_file.hpp"

#include "support.hpp"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace distillrec;
using Catch::Matchers::Contains;

namespace {

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

std::vector<std::string> folder_listing(const std::filesystem::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST_CASE("write_file_atomic creates and replaces files", "[io][atomic_file]") {
  const auto dir = test::temp_dir("atomic_replace");
  const std::string path = (dir / "out.bin").string();

  io::write_file_atomic(path, std::string("first version"));
  REQUIRE(slurp(path) == "first version");

  std::string binary("a\0b\xff", 4);
  io::write_file_atomic(path, binary);
  REQUIRE(slurp(path) == binary);

  // Streamed content larger than the internal buffer, mixing small and large writes.
  std::string large(300000, 'x');
  for (std::size_t i = 0; i < large.size(); ++i) large[i] = static_cast<char>('a' + i % 26);
  io::write_file_atomic(path, [&](std::ostream& out) {
    out << "header:";
    out.write(large.data(), static_cast<std::streamsize>(large.size()));
    out << ":" << 42;
  });
  REQUIRE(slurp(path) == "header:" + large + ":42");
  REQUIRE(folder_listing(dir) == std::vector<std::string>{"out.bin"});

  // Empty content is a valid (empty) file.
  io::write_file_atomic(path, std::string());
  REQUIRE(std::filesystem::file_size(path) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("write_file_atomic writes the temporary beside the target", "[io][atomic_file]") {
  const auto dir = test::temp_dir("atomic_beside");
  const std::string path = (dir / "model.safetensors").string();
  io::write_file_atomic(path, std::string("old"));
  std::vector<std::string> during;
  io::write_file_atomic(path, [&](std::ostream& out) {
    out << "new";
    during = folder_listing(dir);
    // The target still holds the old content while the new one is being written.
    CHECK(slurp(path) == "old");
  });
  REQUIRE(during.size() == 2);
  CHECK(during[0] == "model.safetensors");
  CHECK(during[1].rfind("model.safetensors.tmp.", 0) == 0);
  CHECK(slurp(path) == "new");
  CHECK(folder_listing(dir) == std::vector<std::string>{"model.safetensors"});
  std::filesystem::remove_all(dir);
}

TEST_CASE("write_file_atomic keeps the old file when the writer throws", "[io][atomic_file]") {
  const auto dir = test::temp_dir("atomic_throw");
  const std::string path = (dir / "checkpoint.bin").string();
  io::write_file_atomic(path, std::string("precious"));

  struct WriterFailure : std::runtime_error {
    WriterFailure() : std::runtime_error("writer gave up") {}
  };
  REQUIRE_THROWS_AS(io::write_file_atomic(path,
                                          [](std::ostream& out) {
                                            out << std::string(200000, 'z');  // partly on disk
                                            throw WriterFailure();
                                          }),
                    WriterFailure);
  CHECK(slurp(path) == "precious");
  CHECK(folder_listing(dir) == std::vector<std::string>{"checkpoint.bin"});

  // A writer that leaves the stream failed is an Error, with the same guarantees.
  REQUIRE_THROWS_WITH(io::write_file_atomic(path,
                                            [](std::ostream& out) {
                                              out << "half";
                                              out.setstate(std::ios::badbit);
                                            }),
                      Contains(path) && Contains("failed state"));
  CHECK(slurp(path) == "precious");
  CHECK(folder_listing(dir) == std::vector<std::string>{"checkpoint.bin"});

  // No target yet: a failed write creates nothing at all.
  const std::string fresh = (dir / "fresh.bin").string();
  REQUIRE_THROWS_AS(
      io::write_file_atomic(fresh, [](std::ostream&) { throw std::runtime_error("no"); }),
      std::runtime_error);
  CHECK_FALSE(std::filesystem::exists(fresh));
  CHECK(folder_listing(dir) == std::vector<std::string>{"checkpoint.bin"});
  std::filesystem::remove_all(dir);
}

TEST_CASE("write_file_atomic reports system errors with the path", "[io][atomic_file]") {
  const auto dir = test::temp_dir("atomic_errors");
  const std::string missing_folder = (dir / "no_such_folder" / "out.bin").string();
  REQUIRE_THROWS_AS(io::write_file_atomic(missing_folder, std::string("x")), Error);
  REQUIRE_THROWS_WITH(io::write_file_atomic(missing_folder, std::string("x")),
                      Contains(missing_folder) && Contains("No such file or directory"));

  // The target is a folder: the rename fails and the temporary is cleaned up.
  const auto folder_target = dir / "a_folder";
  std::filesystem::create_directories(folder_target / "child");
  REQUIRE_THROWS_WITH(io::write_file_atomic(folder_target.string(), std::string("x")),
                      Contains(folder_target.string()) && Contains("rename"));
  CHECK(folder_listing(dir) == std::vector<std::string>{"a_folder"});
  std::filesystem::remove_all(dir);
}

TEST_CASE("write_file_atomic keeps the permissions of a replaced file", "[io][atomic_file]") {
  const auto dir = test::temp_dir("atomic_mode");
  const std::string path = (dir / "shared.bin").string();
  io::write_file_atomic(path, std::string("v1"));
  REQUIRE(::chmod(path.c_str(), 0640) == 0);
  io::write_file_atomic(path, std::string("v2"));
  struct stat status {};
  REQUIRE(::stat(path.c_str(), &status) == 0);
  CHECK((status.st_mode & 07777) == 0640);
  CHECK(slurp(path) == "v2");
  std::filesystem::remove_all(dir);
}

TEST_CASE("read_file_bytes reads whole files and names missing ones", "[io][atomic_file]") {
  const auto dir = test::temp_dir("read_bytes");
  const std::string path = (dir / "data.bin").string();
  io::write_file_atomic(path, std::string("\x01\x02\x03", 3));
  CHECK(io::detail::read_file_bytes(path) == std::vector<unsigned char>{1, 2, 3});
  const std::string missing = (dir / "missing.bin").string();
  REQUIRE_THROWS_AS(io::detail::read_file_bytes(missing), Error);
  REQUIRE_THROWS_WITH(io::detail::read_file_bytes(missing),
                      Contains(missing) && Contains("No such file or directory"));
  std::filesystem::remove_all(dir);
}
