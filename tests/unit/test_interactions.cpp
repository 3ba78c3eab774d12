#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "distillrec/data/interactions.hpp"
#include "support.hpp"

using namespace distillrec;
using namespace distillrec::data;
using Catch::Matchers::Contains;

namespace {

/// A fresh temporary folder, removed at the end of the test.
struct ScratchDir {
  explicit ScratchDir(const std::string& name) : path(test::temp_dir(name)) {}
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::filesystem::path path;
};

std::string write_file(const std::filesystem::path& dir, const std::string& name,
                       const std::string& contents) {
  const auto path = (dir / name).string();
  std::ofstream out(path, std::ios::binary);
  out << contents;
  return path;
}

/// Expects `call` to throw exactly FormatError with "<path>:<line>: " and `snippet` in what().
template <typename Call>
void require_format_error(Call call, const std::string& path, long line,
                          const std::string& snippet) {
  CAPTURE(path, line, snippet);
  REQUIRE_THROWS_AS(call(), FormatError);
  REQUIRE_THROWS_WITH(call(),
                      Contains(path + ":" + std::to_string(line) + ": ") && Contains(snippet));
}

}  // namespace

TEST_CASE("read_sasrec_text keeps file order per user and remaps ids densely",
          "[data][interactions]") {
  const ScratchDir scratch("interactions_text");
  const auto& dir = scratch.path;
  // Raw users 10, 3, 7 (interleaved lines); raw items 100, 5, 42, 7, 900000000000; a comment, a
  // blank line, tabs, several spaces, CRLF line ends and no final newline.
  const std::string path = write_file(dir, "log.txt",
                                      "# user item\n"
                                      "10 100\n"
                                      "3 5\r\n"
                                      "\n"
                                      "  10\t42\n"
                                      "7   7\n"
                                      "   # indented comment\n"
                                      "3 900000000000\n"
                                      "10 5\n"
                                      "3 100");
  const InteractionLog log = read_sasrec_text(path);
  REQUIRE(log.source == path);
  REQUIRE(log.num_users() == 3);
  REQUIRE(log.num_items == 5);
  REQUIRE(log.num_interactions() == 7);
  REQUIRE(log.user_raw_ids == std::vector<std::int64_t>{3, 7, 10});
  REQUIRE(log.item_raw_ids == std::vector<std::int64_t>{-1, 5, 7, 42, 100, 900000000000});
  // Dense items: 5->1, 7->2, 42->3, 100->4, 900000000000->5.
  REQUIRE(log.sequences[0] == Sequence{1, 5, 4});  // raw user 3: 5, 900000000000, 100
  REQUIRE(log.sequences[1] == Sequence{2});        // raw user 7: 7
  REQUIRE(log.sequences[2] == Sequence{4, 3, 1});  // raw user 10: 100, 42, 5
  // Every dense id maps back to the raw one.
  for (std::size_t u = 0; u < log.sequences.size(); ++u) {
    for (const ItemId item : log.sequences[u]) {
      REQUIRE(item >= 1);
      REQUIRE(item <= log.num_items);
    }
  }
}

TEST_CASE("a file whose ids are already 1..N keeps them", "[data][interactions]") {
  const ScratchDir scratch("interactions_dense");
  const auto& dir = scratch.path;
  const std::string path = write_file(dir, "dense.txt", "1 3\n1 1\n2 2\n2 4\n3 4\n");
  const InteractionLog log = read_sasrec_text(path);
  REQUIRE(log.num_items == 4);
  REQUIRE(log.item_raw_ids == std::vector<std::int64_t>{-1, 1, 2, 3, 4});
  REQUIRE(log.user_raw_ids == std::vector<std::int64_t>{1, 2, 3});
  REQUIRE(log.sequences == std::vector<Sequence>{{3, 1}, {2, 4}, {4}});
}

TEST_CASE("read_sasrec_text rejects malformed lines with file and line number",
          "[data][interactions][errors]") {
  const ScratchDir scratch("interactions_text_errors");
  const auto& dir = scratch.path;
  // Two good lines, a comment and a blank line before the bad line 5.
  const std::string prefix = "1 1\n# comment\n\n2 2\n";
  struct Case {
    std::string line;
    std::string snippet;
  };
  const std::vector<Case> cases = {
      {"1 abc", "expected a non-negative integer item id, found \"abc\""},
      {"1 2.5", "expected a non-negative integer item id, found \"2.5\""},
      {"x 3", "expected a non-negative integer user id, found \"x\""},
      {"+1 3", "expected a non-negative integer user id, found \"+1\""},
      {"1 -2", "expected a non-negative item id, found \"-2\""},
      {"-7 2", "expected a non-negative user id, found \"-7\""},
      {"1", "expected two fields \"user item\", found 1 field in \"1\""},
      {"1 2 3", "expected two fields \"user item\", found 3 fields in \"1 2 3\""},
      {"1,2", "found 1 field in \"1,2\""},
      {"1 99999999999999999999", "fits in a 64-bit integer, found \"99999999999999999999\""},
      {"99999999999999999999 1", "user id that fits in a 64-bit integer"},
  };
  int index = 0;
  for (const auto& c : cases) {
    const std::string path =
        write_file(dir, "bad" + std::to_string(index++) + ".txt", prefix + c.line + "\n3 3\n");
    require_format_error([&] { return read_sasrec_text(path); }, path, 5, c.snippet);
  }
}

TEST_CASE("a log without interactions is a FormatError", "[data][interactions][errors]") {
  const ScratchDir scratch("interactions_empty");
  const auto& dir = scratch.path;
  const std::string empty = write_file(dir, "empty.txt", "");
  require_format_error([&] { return read_sasrec_text(empty); }, empty, 1, "no interactions");
  const std::string comments = write_file(dir, "comments.txt", "# only\n\n   \n# comments\n");
  require_format_error([&] { return read_sasrec_text(comments); }, comments, 4, "no interactions");
  const std::string empty_csv = write_file(dir, "empty.csv", "");
  require_format_error([&] { return read_csv(empty_csv); }, empty_csv, 1, "no interactions");
  const std::string header_only = write_file(dir, "header.csv", "user,item,timestamp\n");
  require_format_error([&] { return read_csv(header_only); }, header_only, 1, "no interactions");
}

TEST_CASE("a missing or unreadable file is an Error naming the path and the reason",
          "[data][interactions][errors]") {
  const ScratchDir scratch("interactions_missing");
  const auto& dir = scratch.path;
  const std::string missing = (dir / "does_not_exist.txt").string();
  for (const auto format : {LogFormat::kSasrecText, LogFormat::kCsv}) {
    try {
      read_log(missing, format);
      FAIL("expected Error");
    } catch (const FormatError&) {
      FAIL("a missing file is not a format error");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Contains(missing) && Contains(std::strerror(ENOENT)));
    }
  }
  // A directory opens but cannot be read.
  REQUIRE_THROWS_AS(read_sasrec_text(dir.string()), Error);
  REQUIRE_THROWS_WITH(read_sasrec_text(dir.string()),
                      Contains(dir.string()) && Contains(std::strerror(EISDIR)));
}

TEST_CASE("read_csv sorts each user's rows by timestamp, ties in file order",
          "[data][interactions][csv]") {
  const ScratchDir scratch("interactions_csv");
  const auto& dir = scratch.path;
  // Columns in another order, an extra column, spaces around fields, a mixed-case header,
  // decimal, exponent and negative timestamps, a blank line and CRLF line ends.
  const std::string path = write_file(dir, "log.csv",
                                      "Timestamp , rating,item , USER\r\n"
                                      "300, 5, 11, 20\r\n"
                                      "100, 4, 12, 20\r\n"
                                      "200.5, 1, 13, 4\r\n"
                                      "\r\n"
                                      "200, 3, 14, 20\r\n"
                                      "100, 2, 15, 20\r\n"
                                      "2.0e2, 2, 16, 4\r\n"
                                      "-5, 2, 17, 4\r\n"
                                      "100, 9, 11, 20\r\n");
  const InteractionLog log = read_csv(path);
  REQUIRE(log.user_raw_ids == std::vector<std::int64_t>{4, 20});
  REQUIRE(log.item_raw_ids == std::vector<std::int64_t>{-1, 11, 12, 13, 14, 15, 16, 17});
  // User 4: -5 (17), 200 (16), 200.5 (13).
  REQUIRE(log.sequences[0] == Sequence{7, 6, 3});
  // User 20: three rows at 100 in file order (12, 15, 11), then 200 (14), then 300 (11).
  REQUIRE(log.sequences[1] == Sequence{2, 5, 1, 4, 1});
  REQUIRE(log.num_interactions() == 8);

  // Large integer timestamps (nanoseconds) are compared exactly, not through a double.
  const std::string nanos = write_file(dir, "nanos.csv",
                                       "user,item,timestamp\n"
                                       "1,1,1700000000000000001\n"
                                       "1,2,1700000000000000000\n");
  REQUIRE(read_csv(nanos).sequences[0] == Sequence{2, 1});
}

TEST_CASE("read_csv rejects malformed files with file and line number",
          "[data][interactions][csv][errors]") {
  const ScratchDir scratch("interactions_csv_errors");
  const auto& dir = scratch.path;
  struct Case {
    std::string contents;
    long line;
    std::string snippet;
  };
  const std::vector<Case> cases = {
      {"user,item,time\n1,2,3\n", 1, "column \"timestamp\" is missing in \"user,item,time\""},
      {"item,timestamp\n2,3\n", 1, "column \"user\" is missing"},
      {"user,item,timestamp,item\n1,2,3,4\n", 1, "duplicate column \"item\""},
      {"user,item,timestamp\n1,2,3\n1,2\n", 3,
       "expected 3 comma-separated fields as in the header, found 2 in \"1,2\""},
      {"user,item,timestamp\n1,2,3,4\n", 2, "expected 3 comma-separated fields"},
      {"user,item,timestamp\n1,2,yesterday\n", 2,
       "expected a numeric timestamp (integer or decimal), found \"yesterday\""},
      {"user,item,timestamp\n1,2,1.5.2\n", 2, "found \"1.5.2\""},
      {"user,item,timestamp\n1,2,nan\n", 2, "expected a numeric timestamp"},
      {"user,item,timestamp\n1,2,inf\n", 2, "expected a numeric timestamp"},
      {"user,item,timestamp\n1,2,\n", 2,
       "expected a numeric timestamp (integer or decimal), "
       "found \"\""},
      {"user,item,timestamp\n\n1,abc,3\n", 3,
       "expected a non-negative integer item id, found \"abc\""},
      {"user,item,timestamp\n1.5,2,3\n", 2,
       "expected a non-negative integer user id, found \"1.5\""},
      {"user,item,timestamp\n1,-2,3\n", 2, "expected a non-negative item id, found \"-2\""},
      {"user,item,timestamp\n1,123456789012345678901,3\n", 2, "fits in a 64-bit integer"},
  };
  int index = 0;
  for (const auto& c : cases) {
    const std::string path = write_file(dir, "bad" + std::to_string(index++) + ".csv", c.contents);
    require_format_error([&] { return read_csv(path); }, path, c.line, c.snippet);
  }
}

TEST_CASE("read_log picks the format from the extension unless told", "[data][interactions]") {
  const ScratchDir scratch("interactions_auto");
  const auto& dir = scratch.path;
  const std::string csv_text = "user,item,timestamp\n5,6,2\n5,7,1\n";
  const std::string csv = write_file(dir, "log.csv", csv_text);
  const std::string upper = write_file(dir, "LOG.CSV", csv_text);
  const std::string text = write_file(dir, "log.txt", "5 6\n5 7\n");
  const std::string csv_named_txt = write_file(dir, "csv.txt", csv_text);
  REQUIRE(read_log(csv).sequences[0] == Sequence{2, 1});
  REQUIRE(read_log(upper).sequences[0] == Sequence{2, 1});
  REQUIRE(read_log(text).sequences[0] == Sequence{1, 2});
  REQUIRE(read_log(csv_named_txt, LogFormat::kCsv).sequences[0] == Sequence{2, 1});
  // Read as text, the CSV header is a malformed first line.
  require_format_error([&] { return read_log(csv_named_txt); }, csv_named_txt, 1,
                       "found 1 field in \"user,item,timestamp\"");
  require_format_error([&] { return read_log(text, LogFormat::kCsv); }, text, 1,
                       "column \"user\" is missing");
}

TEST_CASE("make_log validates in-memory sequences", "[data][interactions]") {
  const InteractionLog log = make_log({{1, 2, 3}, {}, {3}}, 4, "memory");
  REQUIRE(log.num_users() == 3);
  REQUIRE(log.num_interactions() == 4);
  REQUIRE(log.num_items == 4);
  REQUIRE(log.source == "memory");
  REQUIRE(log.user_raw_ids == std::vector<std::int64_t>{0, 1, 2});
  REQUIRE(log.item_raw_ids == std::vector<std::int64_t>{-1, 1, 2, 3, 4});
  REQUIRE_THROWS_AS(make_log({{1, 2}}, 0, "memory"), ConfigError);
  REQUIRE_THROWS_AS(make_log({{1, 5}}, 4, "memory"), ShapeError);
  REQUIRE_THROWS_WITH(make_log({{1}, {2, 0}}, 4, "memory"),
                      Contains("user 1 position 1 has item id 0, expected 1..4"));
  REQUIRE_THROWS_AS(make_log({{-3}}, 4, "memory"), ShapeError);
}

TEST_CASE("the Amazon Games log loads fast with its published statistics",
          "[data][interactions][real]") {
  const std::string path = test::real_data_path("amazon-games.txt");
  if (path.empty()) {
    WARN("amazon-games.txt not found; skipping");
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const InteractionLog log = read_log(path);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
#ifdef __OPTIMIZE__
  CHECK(seconds < 0.5);
#else
  CHECK(seconds < 5.0);
#endif
  REQUIRE(log.num_users() == 31013);
  REQUIRE(log.num_items == 23715);
  REQUIRE(log.num_interactions() == 287107);
  REQUIRE(log.sequences[0].size() >= 3);
  CHECK(log.sequences[0][0] == 6393);
  CHECK(log.sequences[0][1] == 13504);
  CHECK(log.sequences[0][2] == 14087);

  // Independent parse: ids are 1..N in the file, so dense ids equal raw ids and user u is u-1.
  std::ifstream in(path);
  std::map<std::int64_t, Sequence> expected;
  std::int64_t user = 0, item = 0;
  while (in >> user >> item) expected[user].push_back(static_cast<ItemId>(item));
  REQUIRE(expected.size() == log.sequences.size());
  for (std::size_t i = 0; i < log.item_raw_ids.size(); ++i) {
    REQUIRE(log.item_raw_ids[i] == (i == 0 ? -1 : static_cast<std::int64_t>(i)));
  }
  Index dense = 0;
  for (const auto& [raw_user, sequence] : expected) {
    REQUIRE(log.user_raw_ids[static_cast<std::size_t>(dense)] == raw_user);
    REQUIRE(log.user_raw_ids[static_cast<std::size_t>(dense)] == dense + 1);
    REQUIRE(log.sequences[static_cast<std::size_t>(dense)] == sequence);
    ++dense;
  }
}

TEST_CASE("write_sasrec_text round-trips a log through the text format", "[data][interactions]") {
  const auto dir = test::temp_dir("write_log");
  const auto log = data::make_log({{3, 1, 2}, {2, 4}, {4, 4, 1}}, 4, "memory");
  const std::string path = (dir / "log.txt").string();
  data::write_sasrec_text(log, path);
  const auto back = data::read_sasrec_text(path);
  REQUIRE(back.sequences == log.sequences);
  REQUIRE(back.num_items == log.num_items);
  // An item that never occurs cannot be written: reading compacts the ids.
  const auto sparse = data::make_log({{1, 3}}, 3, "memory");
  data::write_sasrec_text(sparse, path);
  REQUIRE(data::read_sasrec_text(path).num_items == 2);
  std::filesystem::remove_all(dir);
}
