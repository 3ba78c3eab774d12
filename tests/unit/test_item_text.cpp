#include "distillrec/data/item_text.hpp"

#include "support.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

using namespace distillrec;

namespace {

std::string item_text_file(const std::string& name, const std::string& content) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("distillrec_item_text_" + std::to_string(::getpid()) + "_" + name)).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

}  // namespace

TEST_CASE("Item texts: RFC 4180 fields (quotes, commas, doubled quotes, line breaks, CRLF) and HLLM's prompt",
          "[data][item_text]") {
  const std::string path = item_text_file(
      "good.csv",
      "\xEF\xBB\xBFitem,title,brand,description\r\n"
      "2,\"Staples, steel (1000 count)\",Stanley,\"Heavy \"\"duty\"\"\nsecond line\"\r\n"
      "1,Relay kit,,plain text\n"
      "\n"
      "5,\"\",Acme,\"\"\n");
  const auto texts = data::read_item_texts(path);
  CHECK(texts.columns() == std::vector<std::string>{"title", "brand", "description"});
  CHECK(texts.num_items() == 5);
  CHECK(texts.listed() == 3);
  CHECK(texts.field(2, "title") == "Staples, steel (1000 count)");
  CHECK(texts.field(2, "description") == "Heavy \"duty\"\nsecond line");
  CHECK(texts.field(1, "brand").empty());
  CHECK(texts.field(1, "description") == "plain text");
  CHECK(texts.field(5, "brand") == "Acme");
  CHECK_FALSE(texts.has(3));
  CHECK(texts.field(3, "title").empty());  // an item the file does not list has no text
  // HLLM: the prompt, then "key: value" for every non-empty column, with no separator.
  CHECK(data::hllm_item_text(texts, 1, {"title", "brand", "description"}) ==
        "Compress the following sentence into embedding: title: Relay kitdescription: plain text");
  CHECK(data::hllm_item_text(texts, 5, {"title", "brand"}, "P: ") == "P: brand: Acme");
  CHECK(data::hllm_item_text(texts, 3, {"title"}, "P: ").empty());  // unlisted: no text, no prompt (HLLM)
  CHECK_THROWS_WITH(data::hllm_item_text(texts, 3, {"colour"}), Catch::Contains("no text column \"colour\""));
  CHECK_THROWS_WITH(texts.field(1, "colour"), Catch::Contains("no text column \"colour\" (columns: title, brand, description)"));
  std::remove(path.c_str());
}

TEST_CASE("Item texts: malformed files are refused with the file and line", "[data][item_text]") {
  struct Case {
    const char* name;
    const char* content;
    const char* message;
  };
  const Case cases[] = {
      {"unterminated.csv", "item,title\n1,ok\n2,\"never closed\n3,x\n", ":3: a quoted field is not closed"},
      {"fields.csv", "item,title,brand\n1,a,b\n2,only one\n", ":3: expected 3 fields as in the header, found 2"},
      {"id.csv", "item,title\nx7,a\n", ":2: expected a positive integer item id, found \"x7\""},
      {"zero.csv", "item,title\n0,a\n", ":2: expected a positive integer item id, found \"0\""},
      {"twice.csv", "item,title\n4,a\n4,b\n", ":3: item 4 is listed twice"},
      {"noid.csv", "id,title\n1,a\n", ":1: the header has no \"item\" column"},
      {"dup.csv", "item,title,title\n1,a,b\n", ":1: the header names column \"title\" twice"},
      {"stray.csv", "item,title\n1,\"a\"b\n", ":2: a character after the closing quote"},
      {"inner.csv", "item,title\n1,a\"b\n", ":2: a quote inside an unquoted field"},
      {"empty.csv", "", ":1: the file is empty"},
      {"after_multiline.csv", "item,title\n1,\"two\nlines\"\n2,a,b\n", ":4: expected 2 fields as in the header, found 3"},
      {"latin1.csv", "item,title,brand\n1,ok,ok\n2,caf\xe9 au lait,x\n", ":3: item 2: column \"title\" is not valid UTF-8 (byte 3"},
      {"truncated.csv", "item,title\n1,\xe2\x82\n", ":2: item 1: column \"title\" is not valid UTF-8 (byte 0"},
      {"overlong.csv", "item,title\n1,a\xc0\xaf\n", ":2: item 1: column \"title\" is not valid UTF-8 (byte 1"},
      {"surrogate.csv", "item,title\n1,\xed\xa0\x80\n", ":2: item 1: column \"title\" is not valid UTF-8"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    const std::string path = item_text_file(c.name, c.content);
    CHECK_THROWS_WITH(data::read_item_texts(path), Catch::Contains(path) && Catch::Contains(c.message));
    std::remove(path.c_str());
  }
  CHECK_THROWS_WITH(data::read_item_texts("/nonexistent/items.csv"), Catch::Contains("/nonexistent/items.csv") && Catch::Contains("cannot open"));
  // Valid multi-byte text (2, 3 and 4 bytes) reads; a catalogue with an item left out is refused
  // by require_items, naming the file and the first missing item.
  const std::string path = item_text_file("gaps.csv", "item,title\n1,caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82\n3,c\n");
  const auto texts = data::read_item_texts(path);
  CHECK(texts.field(1, "title") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82");
  CHECK_NOTHROW(texts.require_items(1));
  CHECK_THROWS_WITH(texts.require_items(4), Catch::Contains(path) && Catch::Contains("no text for item 2 (2 of the 4 items are not listed)"));
  std::remove(path.c_str());
}

TEST_CASE("Item texts: the Amazon Scientific catalogue reads whole", "[data][item_text][real]") {
  const std::string path = std::string(DISTILLREC_TEST_DATA_DIR) + "/amazon-scientific-items.csv";
  if (!std::filesystem::exists(path)) {
    WARN("skipped: " << path << " is absent");
    return;
  }
  const auto texts = data::read_item_texts(path);
  CHECK(texts.columns() == std::vector<std::string>{"title", "brand", "categories", "description"});
  CHECK(texts.num_items() == 4344);
  CHECK(texts.listed() == 4344);
  Index empty_titles = 0, empty_descriptions = 0, empty_brands = 0;
  for (ItemId i = 1; i <= texts.num_items(); ++i) {
    empty_titles += texts.field(i, "title").empty();
    empty_descriptions += texts.field(i, "description").empty();
    empty_brands += texts.field(i, "brand").empty();
  }
  // The figures of ../shared/data/README.md.
  CHECK(empty_titles == 0);
  CHECK(empty_descriptions == 123);
  CHECK(empty_brands == 12);
  CHECK(texts.field(2, "brand") == "Stanley");
  CHECK(texts.field(1, "brand") == "Sealed Unit Parts Co., Inc.");
  CHECK(texts.field(2, "categories") == "Industrial & Scientific,Fasteners,Collated Fasteners,Staples");
}
