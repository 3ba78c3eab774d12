#include "distillrec/io/safetensors.hpp"

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using namespace distillrec;
using Catch::Matchers::Contains;

namespace {

std::string le64(std::uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[static_cast<std::size_t>(i)] = static_cast<char>(value >> (8 * i));
  }
  return bytes;
}

/// A safetensors file from a header written by hand: length, JSON (padded with spaces to a
/// multiple of 8 like the reference writer, unless `pad` is false) and data buffer.
std::string safetensors_file(std::string header, const std::string& data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

template <typename T>
std::string safetensors_raw_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

void safetensors_write_raw(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string safetensors_slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

/// Runs `action`, which must throw `Exception`; returns what(). Other exception types propagate
/// and fail the test with their own message.
template <typename Exception, typename Action>
std::string safetensors_thrown_message(Action&& action) {
  try {
    action();
  } catch (const Exception& e) {
    return e.what();
  }
  FAIL("no exception thrown");
  return {};
}

std::string open_error(const std::string& path) {
  return safetensors_thrown_message<FormatError>([&] { io::SafetensorsReader reader(path); });
}

std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

}  // namespace

TEST_CASE("safetensors dtypes have names, sizes and parse back", "[io][safetensors]") {
  using io::DType;
  for (const DType dtype : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64,
                            DType::kI32, DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    CHECK(io::parse_dtype(io::dtype_name(dtype)) == dtype);
  }
  CHECK(std::string(io::dtype_name(DType::kBF16)) == "BF16");
  CHECK(std::string(io::dtype_name(DType::kBool)) == "BOOL");
  CHECK(io::dtype_size(DType::kF64) == 8);
  CHECK(io::dtype_size(DType::kI64) == 8);
  CHECK(io::dtype_size(DType::kF32) == 4);
  CHECK(io::dtype_size(DType::kBF16) == 2);
  CHECK(io::dtype_size(DType::kF16) == 2);
  CHECK(io::dtype_size(DType::kU8) == 1);
  REQUIRE_THROWS_AS(io::parse_dtype("F8_E4M3"), FormatError);
  REQUIRE_THROWS_WITH(io::parse_dtype("f32"), Contains("f32") && Contains("F32"));
}

TEST_CASE("half and bfloat16 decode known bit patterns exactly", "[io][safetensors]") {
  CHECK(io::half_to_float(0x3C00) == 1.0f);
  CHECK(io::half_to_float(0xC000) == -2.0f);
  CHECK(io::half_to_float(0x3555) == 0.333251953125f);
  CHECK(io::half_to_float(0x7BFF) == 65504.0f);            // largest finite half
  CHECK(io::half_to_float(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(io::half_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(io::half_to_float(0x03FF) == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(io::half_to_float(0x8001) == -std::ldexp(1.0f, -24));
  CHECK(float_bits(io::half_to_float(0x0000)) == 0x00000000u);
  CHECK(float_bits(io::half_to_float(0x8000)) == 0x80000000u);  // -0 keeps its sign
  CHECK(io::half_to_float(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(io::half_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(io::half_to_float(0x7E00)));
  CHECK(std::isnan(io::half_to_float(0xFC01)));

  CHECK(io::bfloat16_to_float(0x3F80) == 1.0f);
  CHECK(io::bfloat16_to_float(0xC040) == -3.0f);
  CHECK(io::bfloat16_to_float(0x4049) == 3.140625f);
  CHECK(io::bfloat16_to_float(0x7F7F) == 3.3895313892515355e38f);  // largest finite bf16
  CHECK(io::bfloat16_to_float(0x0001) == std::ldexp(1.0f, -133));  // smallest subnormal
  CHECK(float_bits(io::bfloat16_to_float(0x8000)) == 0x80000000u);
  CHECK(io::bfloat16_to_float(0x7F80) == std::numeric_limits<float>::infinity());
  CHECK(io::bfloat16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(io::bfloat16_to_float(0x7FC0)));
}

TEST_CASE("safetensors round trip of matrices, integers and metadata", "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_round_trip");
  const std::string path = (dir / "checkpoint.safetensors").string();
  Rng rng(11);
  const Matrix<float> weight = test::random_matrix<float>(5, 7, rng);
  Matrix<float> special(2, 3);
  special << -0.0f, std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
      std::numeric_limits<float>::lowest(), 1e-38f, 0.1f;
  const Matrix<float> big = test::random_matrix<float>(6, 6, rng);
  const std::vector<float> cube = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const std::vector<std::int64_t> ids = {0, -1, 42, std::numeric_limits<std::int64_t>::max(),
                                         std::numeric_limits<std::int64_t>::min()};
  const std::vector<std::int32_t> small_ids = {7, -8, 9};

  io::SafetensorsWriter writer;
  writer.add("encoder.weight", weight);
  writer.add("special", special);
  writer.add("block", big.block(1, 2, 3, 4));  // strided view, copied row by row
  writer.add("cube", cube.data(), {2, 2, 3});
  writer.add("bias", Matrix<float>(Matrix<float>::Constant(1, 7, 0.5f)));
  writer.add("item_ids", ids);
  writer.add_i32("small_ids", small_ids);
  writer.add("empty", Matrix<float>(0, 4));
  writer.set_metadata("model", "sasrec");
  writer.set_metadata("hidden_size", "64");
  writer.set_metadata("model", "llm_rec");  // replaces
  CHECK(writer.size() == 8);
  CHECK(writer.contains("cube"));
  writer.write(path);

  const io::SafetensorsReader reader(path);
  CHECK(reader.path() == path);
  CHECK(reader.names() == std::vector<std::string>{"bias", "block", "cube", "empty",
                                                   "encoder.weight", "item_ids", "small_ids",
                                                   "special"});
  CHECK(reader.metadata() ==
        std::map<std::string, std::string>{{"hidden_size", "64"}, {"model", "llm_rec"}});
  CHECK(reader.contains("cube"));
  CHECK_FALSE(reader.contains("missing"));

  const Matrix<float> weight_back = reader.read_matrix("encoder.weight", 5, 7);
  REQUIRE(std::memcmp(weight_back.data(), weight.data(), sizeof(float) * 35) == 0);
  const Matrix<float> special_back = reader.read_matrix("special", 2, 3);
  for (Index i = 0; i < special.size(); ++i) {
    CHECK(float_bits(special_back.data()[i]) == float_bits(special.data()[i]));  // bit-exact
  }
  CHECK(reader.read_matrix("block", 3, 4) == big.block(1, 2, 3, 4));
  CHECK(reader.read_matrix("bias", 1, 7) == Matrix<float>::Constant(1, 7, 0.5f));
  CHECK(reader.read_matrix("empty", 0, 4).size() == 0);
  CHECK(reader.read_floats("cube") == cube);
  CHECK(reader.info("cube").shape == std::vector<std::int64_t>{2, 2, 3});
  CHECK(reader.info("cube").num_elements() == 12);
  CHECK(reader.read_integers("item_ids") == ids);
  CHECK(reader.info("item_ids").dtype == io::DType::kI64);
  CHECK(reader.read_integers("small_ids") == std::vector<std::int64_t>{7, -8, 9});
  CHECK(reader.info("small_ids").dtype == io::DType::kI32);

  // Layout: 8-byte elements first, every tensor aligned to its element size, no gaps.
  CHECK(reader.info("item_ids").begin == 0);
  CHECK(reader.info("bias").begin == 40);
  std::size_t total = 0;
  for (const auto& name : reader.names()) {
    const auto& info = reader.info(name);
    CHECK(info.begin % io::dtype_size(info.dtype) == 0);
    total += info.end - info.begin;
  }

  // serialize() gives the same bytes as the file; the header is padded to 8 bytes.
  const std::string bytes = writer.serialize();
  CHECK(bytes == safetensors_slurp(path));
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  CHECK(header_size % 8 == 0);
  CHECK(bytes.size() == 8 + header_size + total);
  CHECK(bytes[8] == '{');
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors writer rejects duplicate and reserved names", "[io][safetensors]") {
  io::SafetensorsWriter writer;
  writer.add("w", Matrix<float>::Zero(2, 2));
  REQUIRE_THROWS_AS(writer.add("w", Matrix<float>::Zero(2, 2)), ConfigError);
  REQUIRE_THROWS_WITH(writer.add("w", std::vector<std::int64_t>{1}), Contains("\"w\""));
  REQUIRE_THROWS_AS(writer.add("__metadata__", Matrix<float>::Zero(1, 1)), ConfigError);
  const float value = 1.0f;
  REQUIRE_THROWS_AS(writer.add("negative", &value, {-1, 2}), ShapeError);
  CHECK(writer.size() == 1);

  // An empty file (no tensors) is valid and reads back empty.
  const auto dir = test::temp_dir("safetensors_empty");
  const std::string path = (dir / "empty.safetensors").string();
  io::SafetensorsWriter().write(path);
  const io::SafetensorsReader reader(path);
  CHECK(reader.names().empty());
  CHECK(reader.metadata().empty());
  std::filesystem::remove_all(dir);
}

TEST_CASE("a file as safetensors.torch.save_file writes it loads", "[io][safetensors]") {
  // save_file({"weight": 2x3, "bias": [3], "ids": int64 [2]}, path, metadata={"format": "pt"})
  // writes __metadata__ first, then the tensors by decreasing alignment, then name, with
  // key order dtype, shape, data_offsets, compact JSON padded with spaces.
  const std::vector<float> weight = {0.5f, -1.25f, 3.0f, 1e-3f, -0.0f, 1e30f};
  const std::vector<float> bias = {0.1f, 0.2f, 0.3f};
  const std::vector<std::int64_t> ids = {17, -3};
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
      R"("bias":{"dtype":"F32","shape":[3],"data_offsets":[16,28]},)"
      R"("weight":{"dtype":"F32","shape":[2,3],"data_offsets":[28,52]}})";
  const std::string data = safetensors_raw_bytes(ids) + safetensors_raw_bytes(bias) + safetensors_raw_bytes(weight);
  const std::string python_bytes = safetensors_file(header, data);
  REQUIRE((python_bytes.size() - data.size()) % 8 == 0);

  const auto dir = test::temp_dir("safetensors_python");
  const auto path = dir / "model.safetensors";
  safetensors_write_raw(path, python_bytes);
  const io::SafetensorsReader reader(path.string());
  CHECK(reader.metadata().at("format") == "pt");
  CHECK(reader.names() == std::vector<std::string>{"bias", "ids", "weight"});
  const Matrix<float> w = reader.read_matrix("weight", 2, 3);
  CHECK(std::vector<float>(w.data(), w.data() + 6) == weight);
  CHECK(reader.read_matrix("bias", 1, 3) == Eigen::Map<const Matrix<float>>(bias.data(), 1, 3));
  CHECK(reader.read_integers("ids") == ids);

  // Our writer lays out the data buffer exactly like the reference (headers differ only in
  // JSON key order).
  io::SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.add("weight", Eigen::Map<const Matrix<float>>(weight.data(), 2, 3));
  writer.add("bias", bias.data(), {3});
  writer.add("ids", ids);
  const std::string ours = writer.serialize();
  CHECK(ours.substr(ours.size() - data.size()) == data);

  // Header without padding (other writers need not pad) also loads.
  safetensors_write_raw(path, safetensors_file(header, data, /*pad=*/false));
  CHECK(io::SafetensorsReader(path.string()).read_integers("ids") == ids);
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors F16, BF16 and F64 tensors decode to float", "[io][safetensors]") {
  const std::vector<std::uint16_t> half = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x8000, 0x3555};
  const std::vector<std::uint16_t> bf16 = {0x3F80, 0xC040, 0x4049, 0x0001};
  const std::vector<double> f64 = {0.1, -2.5, 1e-40, 3.0e38};
  const std::string header =
      R"({"half":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("bf16":{"dtype":"BF16","shape":[4],"data_offsets":[12,20]},)"
      R"("f64":{"dtype":"F64","shape":[2,2],"data_offsets":[24,56]}})";
  const std::string data = safetensors_raw_bytes(half) + safetensors_raw_bytes(bf16) + std::string(4, '\0') +
                           safetensors_raw_bytes(f64);  // a gap before f64 keeps it 8-byte aligned
  const auto dir = test::temp_dir("safetensors_dtypes");
  const auto path = (dir / "mixed.safetensors").string();
  safetensors_write_raw(path, safetensors_file(header, data));
  const io::SafetensorsReader reader(path);

  Matrix<float> expected_half(2, 3);
  expected_half << 1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f, -0.0f, 0.333251953125f;
  CHECK(reader.read_matrix("half", 2, 3) == expected_half);
  CHECK(float_bits(reader.read_matrix("half", 2, 3)(1, 1)) == 0x80000000u);
  CHECK(reader.read_floats("bf16") ==
        std::vector<float>{1.0f, -3.0f, 3.140625f, std::ldexp(1.0f, -133)});
  CHECK(reader.read_matrix("bf16", 1, 4).row(0)(2) == 3.140625f);
  Matrix<float> expected_f64(2, 2);
  expected_f64 << 0.1f, -2.5f, static_cast<float>(1e-40), 3.0e38f;
  CHECK(reader.read_matrix("f64", 2, 2) == expected_f64);

  // F64 values beyond the float range are not silently turned into infinity.
  const std::vector<double> huge = {1.0, 1e300};
  safetensors_write_raw(path, safetensors_file(R"({"huge":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})",
                                   safetensors_raw_bytes(huge)));
  const io::SafetensorsReader huge_reader(path);
  const auto message =
      safetensors_thrown_message<FormatError>([&] { huge_reader.read_floats("huge"); });
  CHECK_THAT(message, Contains(path) && Contains("\"huge\"") && Contains("float range") &&
                          Contains("index 1"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors integer tensors and dtype mismatches", "[io][safetensors]") {
  const std::vector<std::int32_t> i32 = {-5, 2000000000};
  const std::vector<std::int16_t> i16 = {-32768, 7};
  const std::vector<std::int8_t> i8 = {-128, 127};
  const std::vector<std::uint8_t> u8 = {0, 255};
  const std::vector<float> f32 = {1.0f, 2.0f};
  const std::string header =
      R"({"i32":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
      R"("f32":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]},)"
      R"("i16":{"dtype":"I16","shape":[2,1],"data_offsets":[16,20]},)"
      R"("i8":{"dtype":"I8","shape":[2],"data_offsets":[20,22]},)"
      R"("u8":{"dtype":"U8","shape":[2],"data_offsets":[22,24]},)"
      R"("mask":{"dtype":"BOOL","shape":[2],"data_offsets":[24,26]}})";
  const std::string data = safetensors_raw_bytes(i32) + safetensors_raw_bytes(f32) + safetensors_raw_bytes(i16) + safetensors_raw_bytes(i8) +
                           safetensors_raw_bytes(u8) + std::string("\x01\x00", 2);
  const auto dir = test::temp_dir("safetensors_ints");
  const auto path = (dir / "ints.safetensors").string();
  safetensors_write_raw(path, safetensors_file(header, data));
  const io::SafetensorsReader reader(path);
  CHECK(reader.read_integers("i32") == std::vector<std::int64_t>{-5, 2000000000});
  CHECK(reader.read_integers("i16") == std::vector<std::int64_t>{-32768, 7});
  CHECK(reader.read_integers("i8") == std::vector<std::int64_t>{-128, 127});
  CHECK(reader.read_integers("u8") == std::vector<std::int64_t>{0, 255});
  CHECK(reader.info("mask").dtype == io::DType::kBool);

  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { reader.read_matrix("i32", 1, 2); }),
             Contains(path) && Contains("\"i32\"") &&
                 Contains("expected a floating-point tensor"));
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { reader.read_floats("u8"); }),
             Contains(path) && Contains("\"u8\"") && Contains("floating-point"));
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { reader.read_integers("f32"); }),
             Contains(path) && Contains("\"f32\"") && Contains("integer"));
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { reader.read_integers("mask"); }),
             Contains(path) && Contains("BOOL"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors shape mismatches are ShapeErrors naming the tensor", "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_shape");
  const std::string path = (dir / "weights.safetensors").string();
  io::SafetensorsWriter writer;
  writer.add("attention.query.weight", Matrix<float>::Ones(4, 3));
  writer.add("row", Matrix<float>::Ones(1, 5));
  const std::vector<float> flat = {1, 2, 3};
  writer.add("flat", flat.data(), {3});
  writer.add("cube", std::vector<float>(8).data(), {2, 2, 2});
  writer.write(path);
  const io::SafetensorsReader reader(path);

  const auto message = safetensors_thrown_message<ShapeError>(
      [&] { reader.read_matrix("attention.query.weight", 3, 4); });
  CHECK_THAT(message, Contains(path) && Contains("attention.query.weight") &&
                          Contains("[3, 4]") && Contains("[4, 3]"));
  CHECK_THAT(safetensors_thrown_message<ShapeError>([&] { reader.read_matrix("row", 1, 4); }),
             Contains("\"row\"") && Contains("[1, 5]"));
  CHECK_THAT(safetensors_thrown_message<ShapeError>([&] { reader.read_matrix("cube", 2, 4); }),
             Contains("\"cube\"") && Contains("[2, 2, 2]"));
  // A 1-D tensor is a single row, and only that.
  Matrix<float> flat_row(1, 3);
  flat_row << 1, 2, 3;
  CHECK(reader.read_matrix("flat", 1, 3) == flat_row);
  CHECK_THAT(safetensors_thrown_message<ShapeError>([&] { reader.read_matrix("flat", 3, 1); }),
             Contains("\"flat\"") && Contains("[3]"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors missing tensors and files are named", "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_missing");
  const std::string path = (dir / "teacher.safetensors").string();
  io::SafetensorsWriter writer;
  writer.add("alpha", Matrix<float>::Ones(1, 1));
  writer.add("beta", Matrix<float>::Ones(1, 1));
  writer.write(path);
  const io::SafetensorsReader reader(path);
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { reader.info("gamma"); }),
             Contains(path) && Contains("no tensor named \"gamma\"") &&
                 Contains("tensors: alpha, beta"));
  REQUIRE_THROWS_AS(reader.read_matrix("gamma", 1, 1), FormatError);

  const std::string missing = (dir / "missing.safetensors").string();
  const auto message = safetensors_thrown_message<Error>([&] { io::SafetensorsReader r(missing); });
  CHECK_THAT(message, Contains(missing) && Contains("No such file or directory"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors NaN and infinite values are rejected on read", "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_nan");
  const std::string path = (dir / "logits.safetensors").string();
  Matrix<float> logits = Matrix<float>::Zero(2, 3);
  logits(1, 2) = std::numeric_limits<float>::quiet_NaN();
  Matrix<float> scores = Matrix<float>::Zero(1, 4);
  scores(0, 1) = -std::numeric_limits<float>::infinity();
  io::SafetensorsWriter writer;
  writer.add("teacher.logits", logits);
  writer.add("scores", scores);
  writer.write(path);
  const io::SafetensorsReader reader(path);
  const auto message =
      safetensors_thrown_message<FormatError>([&] { reader.read_matrix("teacher.logits", 2, 3); });
  CHECK_THAT(message, Contains(path) && Contains("teacher.logits") && Contains("non-finite") &&
                          Contains("index 5") && Contains("[1, 2]"));
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { reader.read_floats("scores"); }),
             Contains("\"scores\"") && Contains("inf") && Contains("index 1"));

  // Half-precision infinities and NaNs too.
  const std::vector<std::uint16_t> half = {0x3C00, 0x7C00};
  const std::vector<std::uint16_t> bf16 = {0x7FC0, 0x3F80};
  safetensors_write_raw(path, safetensors_file(
                      R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})",
                      safetensors_raw_bytes(half) + safetensors_raw_bytes(bf16)));
  const io::SafetensorsReader half_reader(path);
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { half_reader.read_floats("h"); }),
             Contains("\"h\"") && Contains("index 1"));
  CHECK_THAT(safetensors_thrown_message<FormatError>([&] { half_reader.read_matrix("b", 1, 2); }),
             Contains("\"b\"") && Contains("nan") && Contains("index 0"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors truncated files are rejected at every cut", "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_truncated");
  const std::string path = (dir / "model.safetensors").string();
  io::SafetensorsWriter writer;
  Rng rng(3);
  writer.add("embedding", test::random_matrix<float>(8, 4, rng));
  writer.add("ids", std::vector<std::int64_t>{1, 2, 3});
  writer.set_metadata("epoch", "3");
  const std::string full = writer.serialize();

  // Chopping the last bytes: the tensor that ends last is reported, with "truncated".
  safetensors_write_raw(path, full.substr(0, full.size() - 5));
  CHECK_THAT(open_error(path), Contains(path) && Contains("\"embedding\"") &&
                                   Contains("truncated"));

  // Every shorter prefix fails with a FormatError naming the file; none loads or crashes.
  for (std::size_t length = 0; length < full.size(); ++length) {
    safetensors_write_raw(path, full.substr(0, length));
    INFO("prefix of " << length << " bytes");
    CHECK_THAT(open_error(path), Contains(path));
  }
  safetensors_write_raw(path, full);
  CHECK(io::SafetensorsReader(path).read_integers("ids") == std::vector<std::int64_t>{1, 2, 3});
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors corrupt headers give FormatErrors naming file and tensor",
          "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_corrupt");
  const std::string path = (dir / "corrupt.safetensors").string();
  const std::string f32x2(8, '\0');  // data for one F32 tensor of shape [2]

  struct Case {
    const char* description;
    std::string bytes;
    std::vector<std::string> expected;  // substrings of the message besides the path
  };
  const std::vector<Case> cases = {
      {"shorter than 8 bytes", std::string("\x10\x00\x00", 3), {"shorter than the 8-byte"}},
      {"empty file", std::string(), {"0 bytes"}},
      {"absurd header length", le64(std::uint64_t{1} << 40) + "{}", {"absurd"}},
      {"header length past the end", le64(64) + "{}      ", {"header length 64", "exceeds"}},
      {"garbage header", le64(16) + std::string("\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 16),
       {"not valid JSON"}},
      {"unterminated JSON", safetensors_file(R"({"w": {"dtype": "F32", )", f32x2),
       {"not valid JSON"}},
      {"zero-length header", le64(0), {"not valid JSON"}},
      {"invalid UTF-8", safetensors_file("{\"w\xff\":1}", ""), {"not valid JSON"}},
      {"JSON array", safetensors_file("[1, 2, 3]", ""), {"must be a JSON object", "array"}},
      {"entry not an object",
       safetensors_file(R"({"w": [0, 8]})", f32x2), {"\"w\"", "must be an object"}},
      {"missing dtype",
       safetensors_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "missing \"dtype\""}},
      {"missing shape",
       safetensors_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "missing \"shape\""}},
      {"missing data_offsets", safetensors_file(R"({"w":{"dtype":"F32","shape":[2]}})", f32x2),
       {"\"w\"", "missing \"data_offsets\""}},
      {"dtype not a string",
       safetensors_file(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "\"dtype\" must be a string"}},
      {"unknown dtype",
       safetensors_file(R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "unknown dtype \"F8_E4M3\""}},
      {"shape not an array",
       safetensors_file(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "\"shape\" must be an array"}},
      {"fractional dimension",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "must hold integers"}},
      {"string dimension",
       safetensors_file(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "must hold integers"}},
      {"negative dimension",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "negative dimension"}},
      {"data_offsets with three numbers",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", f32x2),
       {"\"w\"", "data_offsets"}},
      {"data_offsets not an array",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0-8"}})", f32x2),
       {"\"w\"", "data_offsets"}},
      {"begin after end",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", f32x2),
       {"\"w\"", "begin <= end"}},
      {"negative begin",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", f32x2),
       {"\"w\"", "data_offsets"}},
      {"end beyond the data buffer",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", f32x2),
       {"\"w\"", "truncated"}},
      {"size does not match the shape",
       safetensors_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f32x2),
       {"\"w\"", "needs 12"}},
      {"shape overflowing 64 bits",
       safetensors_file(
           R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
           f32x2),
       {"\"w\"", "too large"}},
      {"overlapping tensors",
       safetensors_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                        f32x2),
       {"\"a\"", "\"b\"", "overlap"}},
      {"duplicate tensor names",
       safetensors_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                        f32x2),
       {"duplicate", "\"a\""}},
      {"metadata value not a string",
       safetensors_file(R"({"__metadata__":{"epoch":3}})", ""), {"__metadata__", "epoch"}},
      {"metadata not an object",
       safetensors_file(R"({"__metadata__":"pt"})", ""), {"__metadata__", "string"}},
  };
  for (const auto& c : cases) {
    INFO(c.description);
    safetensors_write_raw(path, c.bytes);
    const std::string message = open_error(path);
    CHECK_THAT(message, Contains(path));
    for (const auto& part : c.expected) CHECK_THAT(message, Contains(part));
  }

  // Edge cases that are valid: scalars, empty tensors, null metadata, unknown entry fields.
  safetensors_write_raw(path, safetensors_file(
                      R"({"__metadata__":null,)"
                      R"("scalar":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":1},)"
                      R"("none":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}})",
                      safetensors_raw_bytes(std::vector<float>{2.5f})));
  const io::SafetensorsReader reader(path);
  CHECK(reader.read_floats("scalar") == std::vector<float>{2.5f});
  CHECK(reader.info("scalar").num_elements() == 1);
  CHECK(reader.read_matrix("none", 0, 3).rows() == 0);
  CHECK(reader.metadata().empty());
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors files mapped instead of read give the same tensors and the same errors", "[io][safetensors]") {
  const auto dir = test::temp_dir("safetensors_mapped");
  const std::string path = (dir / "model.safetensors").string();
  io::SafetensorsWriter writer;
  Rng rng(4);
  const Matrix<float> weight = test::random_matrix<float>(9, 5, rng);
  writer.add("weight", weight);
  writer.add("ids", std::vector<std::int64_t>{4, 5});
  writer.set_metadata("epoch", "2");
  writer.write(path);
  const io::SafetensorsReader read(path);
  io::SafetensorsReader mapped(path, io::FileAccess::kMap);
  CHECK_FALSE(read.mapped());
  CHECK(mapped.mapped());
  CHECK(mapped.read_matrix("weight", 9, 5) == weight);
  CHECK(mapped.read_integers("ids") == read.read_integers("ids"));
  CHECK(mapped.metadata() == read.metadata());
  // A reader moved elsewhere keeps its mapping.
  io::SafetensorsReader moved(std::move(mapped));
  CHECK(moved.read_matrix("weight", 9, 5) == weight);
  // Replacing the file atomically (as the library writes) leaves a mapped reader's view intact.
  io::SafetensorsWriter other;
  other.add("weight", Matrix<float>::Zero(9, 5));
  other.write(path);
  CHECK(moved.read_matrix("weight", 9, 5) == weight);
  // Truncated, empty and missing files fail on open, mapped as read.
  const std::string full = writer.serialize();
  for (std::size_t length : {std::size_t{0}, std::size_t{5}, full.size() - 3}) {
    CAPTURE(length);
    safetensors_write_raw(path, full.substr(0, length));
    CHECK_THROWS_WITH(io::SafetensorsReader(path, io::FileAccess::kMap), Contains(path));
  }
  CHECK_THROWS_WITH(io::SafetensorsReader((dir / "absent.safetensors").string(), io::FileAccess::kMap),
                    Contains("absent.safetensors") && Contains("cannot open"));
  CHECK_THROWS_WITH(io::SafetensorsReader(dir.string(), io::FileAccess::kMap), Contains("cannot map"));
  std::filesystem::remove_all(dir);
}
