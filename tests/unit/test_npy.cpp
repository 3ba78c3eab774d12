#include "distillrec/io/npy.hpp"

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

template <typename T>
std::string raw_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

void write_raw(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string npy_slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

/// A version 1.0 .npy file around a header dict, padded with spaces and '\n' so the data starts
/// at a multiple of 64 bytes, as numpy.lib.format writes it.
std::string npy_v1(const std::string& dict, const std::string& data) {
  std::string header = dict;
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::string file("\x93NUMPY\x01\x00", 8);
  file += static_cast<char>(header.size() & 0xff);
  file += static_cast<char>(header.size() >> 8);
  return file + header + data;
}

/// Version 2.0 / 3.0: the same with a 4-byte header length.
std::string npy_v2(int major, const std::string& dict, const std::string& data) {
  std::string header = dict;
  header.append(64 - (12 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::string file("\x93NUMPY", 6);
  file += static_cast<char>(major);
  file += '\0';
  for (int i = 0; i < 4; ++i) file += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return file + header + data;
}

template <typename Exception, typename Action>
std::string thrown_message(Action&& action) {
  try {
    action();
  } catch (const Exception& e) {
    return e.what();
  }
  FAIL("no exception thrown");
  return {};
}

std::string read_error(const std::string& path) {
  return thrown_message<FormatError>([&] { io::read_npy(path); });
}

}  // namespace

TEST_CASE("npy files as numpy writes them load", "[io][npy]") {
  const auto dir = test::temp_dir("npy_numpy");

  // np.save(path, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32) / 8) with numpy >= 1.23:
  // the header dict, 20 spaces of room to grow shape[0], padding to 64 bytes and '\n'.
  const std::vector<float> values = {0.125f, 0.25f, 0.375f, 0.5f, 0.625f, 0.75f};
  std::string f4_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  f4_header += std::string(20, ' ');
  f4_header.append(117 - f4_header.size(), ' ');
  f4_header += '\n';
  REQUIRE(f4_header.size() == 118);
  const std::string f4_file =
      std::string("\x93NUMPY\x01\x00\x76\x00", 10) + f4_header + raw_bytes(values);
  REQUIRE(f4_file.size() == 128 + 24);
  const auto f4_path = (dir / "logits.npy").string();
  write_raw(f4_path, f4_file);

  const io::NpyArray f4 = io::read_npy(f4_path);
  CHECK(f4.descr == "<f4");
  CHECK(f4.shape == std::vector<std::int64_t>{2, 3});
  CHECK_FALSE(f4.fortran_order);
  CHECK(f4.num_elements() == 6);
  CHECK(f4.data.size() == 24);
  Matrix<float> expected(2, 3);
  expected << 0.125f, 0.25f, 0.375f, 0.5f, 0.625f, 0.75f;
  CHECK(io::npy_to_matrix(f4, f4_path) == expected);

  // Our writer produces the same bytes as numpy.
  const auto ours = (dir / "ours.npy").string();
  io::write_npy(ours, expected);
  CHECK(npy_slurp(ours) == f4_file);

  // np.save(path, np.arange(5, dtype=np.int64) * 3 - 4)
  const std::vector<std::int64_t> ids = {-4, -1, 2, 5, 8};
  std::string i8_header = "{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }";
  i8_header += std::string(20, ' ');
  i8_header.append(117 - i8_header.size(), ' ');
  i8_header += '\n';
  const auto i8_path = (dir / "ids.npy").string();
  write_raw(i8_path, std::string("\x93NUMPY\x01\x00\x76\x00", 10) + i8_header + raw_bytes(ids));
  const io::NpyArray i8 = io::read_npy(i8_path);
  CHECK(i8.descr == "<i8");
  CHECK(i8.shape == std::vector<std::int64_t>{5});
  CHECK(io::npy_to_integers(i8, i8_path) == ids);

  // Headers by older numpy (no growth room, 16-byte alignment), other key orders, Python 2
  // long suffixes and no trailing comma also load.
  const auto legacy = (dir / "legacy.npy").string();
  std::string legacy_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }";
  legacy_header.append(16 - (10 + legacy_header.size() + 1) % 16, ' ');
  legacy_header += '\n';
  REQUIRE(legacy_header.size() < 256);
  write_raw(legacy, std::string("\x93NUMPY\x01\x00", 8) +
                        static_cast<char>(legacy_header.size()) + '\0' + legacy_header +
                        raw_bytes(values));
  CHECK(io::npy_to_matrix(io::read_npy(legacy), legacy) == expected);
  write_raw(legacy, npy_v1("{\"shape\": (2, 3), \"descr\": \"<f4\", \"fortran_order\": False}",
                           raw_bytes(values)));
  CHECK(io::npy_to_matrix(io::read_npy(legacy), legacy) == expected);
  std::filesystem::remove_all(dir);
}

TEST_CASE("npy versions 2.0 and 3.0 and other dtypes", "[io][npy]") {
  const auto dir = test::temp_dir("npy_versions");
  const auto path = (dir / "array.npy").string();

  const std::vector<double> f8 = {0.1, -2.0, 1e-40};
  write_raw(path, npy_v2(2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
                         raw_bytes(f8)));
  Matrix<float> row = io::npy_to_matrix(io::read_npy(path), path);
  REQUIRE(row.rows() == 1);
  REQUIRE(row.cols() == 3);
  CHECK(row(0, 0) == 0.1f);
  CHECK(row(0, 1) == -2.0f);
  CHECK(row(0, 2) == static_cast<float>(1e-40));

  const std::vector<std::uint16_t> f2 = {0x3C00, 0xC000, 0x0001, 0x7BFF};
  write_raw(path, npy_v2(3, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }",
                         raw_bytes(f2)));
  Matrix<float> half(2, 2);
  half << 1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f;
  CHECK(io::npy_to_matrix(io::read_npy(path), path) == half);

  const std::vector<std::uint8_t> u1 = {0, 200, 255};
  write_raw(path, npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }",
                         raw_bytes(u1)));
  CHECK(io::npy_to_integers(io::read_npy(path), path) == std::vector<std::int64_t>{0, 200, 255});

  const std::vector<std::int8_t> i1 = {-128, 5};
  write_raw(path, npy_v1("{'descr': '|i1', 'fortran_order': False, 'shape': (1, 2), }",
                         raw_bytes(i1)));
  CHECK(io::npy_to_integers(io::read_npy(path), path) == std::vector<std::int64_t>{-128, 5});

  const std::vector<std::int16_t> i2 = {-300, 300, 7, 8};
  write_raw(path, npy_v1("{'descr': '<i2', 'fortran_order': False, 'shape': (2, 2), }",
                         raw_bytes(i2)));
  CHECK(io::npy_to_integers(io::read_npy(path), path) ==
        std::vector<std::int64_t>{-300, 300, 7, 8});

  const std::vector<std::uint32_t> u4 = {4000000000u};
  write_raw(path, npy_v1("{'descr': '<u4', 'fortran_order': False, 'shape': (1,), }",
                         raw_bytes(u4)));
  CHECK(io::npy_to_integers(io::read_npy(path), path) ==
        std::vector<std::int64_t>{4000000000LL});

  const std::vector<std::int32_t> i4 = {1, -2, 3, -4, 5, -6};
  write_raw(path, npy_v1("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2, 3), }",
                         raw_bytes(i4)));
  CHECK(io::npy_to_integers(io::read_npy(path), path) ==
        std::vector<std::int64_t>{1, -2, 3, -4, 5, -6});

  // A 0-d array (np.save(path, np.int64(9))) has shape ().
  write_raw(path, npy_v1("{'descr': '<i8', 'fortran_order': False, 'shape': (), }",
                         raw_bytes(std::vector<std::int64_t>{9})));
  const io::NpyArray scalar = io::read_npy(path);
  CHECK(scalar.shape.empty());
  CHECK(io::npy_to_integers(scalar, path) == std::vector<std::int64_t>{9});
  std::filesystem::remove_all(dir);
}

TEST_CASE("npy round trips of float and int64 matrices", "[io][npy]") {
  const auto dir = test::temp_dir("npy_round_trip");
  Rng rng(5);
  const Matrix<float> floats = test::random_matrix<float>(17, 9, rng);
  const auto float_path = (dir / "floats.npy").string();
  io::write_npy(float_path, floats);
  const io::NpyArray float_array = io::read_npy(float_path);
  CHECK(float_array.descr == "<f4");
  CHECK(float_array.shape == std::vector<std::int64_t>{17, 9});
  CHECK(io::npy_to_matrix(float_array, float_path) == floats);

  Matrix<std::int64_t> ints(3, 4);
  for (Index i = 0; i < ints.size(); ++i) ints.data()[i] = (i - 5) * 1000000007LL;
  ints(2, 3) = std::numeric_limits<std::int64_t>::min();
  const auto int_path = (dir / "ints.npy").string();
  io::write_npy(int_path, ints);
  const io::NpyArray int_array = io::read_npy(int_path);
  CHECK(int_array.descr == "<i8");
  CHECK(int_array.shape == std::vector<std::int64_t>{3, 4});
  CHECK(io::npy_to_integers(int_array, int_path) ==
        std::vector<std::int64_t>(ints.data(), ints.data() + ints.size()));

  // Header: version 1.0, ends with '\n', data at a multiple of 64 bytes.
  for (const auto& path : {float_path, int_path}) {
    const std::string bytes = npy_slurp(path);
    REQUIRE(bytes.size() > 10);
    CHECK(bytes.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) == 0);
    const std::size_t header_length = static_cast<unsigned char>(bytes[8]) +
                                      256u * static_cast<unsigned char>(bytes[9]);
    CHECK((10 + header_length) % 64 == 0);
    CHECK(bytes[10 + header_length - 1] == '\n');
  }

  // Empty matrices round trip too.
  io::write_npy(float_path, Matrix<float>(0, 5));
  const Matrix<float> empty = io::npy_to_matrix(io::read_npy(float_path), float_path);
  CHECK(empty.rows() == 0);
  CHECK(empty.cols() == 5);
  std::filesystem::remove_all(dir);
}

TEST_CASE("malformed npy files give FormatErrors naming the file", "[io][npy]") {
  const auto dir = test::temp_dir("npy_malformed");
  const auto path = (dir / "broken.npy").string();
  const std::string six_floats(24, '\0');
  const auto dict = [](const std::string& descr, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  };
  struct Case {
    const char* description;
    std::string bytes;
    std::vector<std::string> expected;
  };
  std::string bad_version = npy_v1(dict("<f4", "(2, 3)"), six_floats);
  bad_version[6] = '\x04';
  std::string bad_minor = npy_v1(dict("<f4", "(2, 3)"), six_floats);
  bad_minor[7] = '\x01';
  const std::vector<Case> cases = {
      {"empty file", "", {"not a .npy file"}},
      {"no magic", "PK\x03\x04 this is a zip archive", {"not a .npy file"}},
      {"only the magic", std::string("\x93NUMPY\x01", 7), {"truncated"}},
      {"unsupported version", bad_version, {"version 4.0"}},
      {"unsupported minor version", bad_minor, {"version 1.1"}},
      {"header length past the end",
       std::string("\x93NUMPY\x01\x00\xff\x00{'descr': '<f4'", 24), {"truncated"}},
      {"header not a dict", npy_v1("['<f4', False, (2, 3)]", six_floats), {"expected '{'"}},
      {"missing key", npy_v1("{'descr': '<f4', 'shape': (2, 3), }", six_floats),
       {"missing key 'fortran_order'"}},
      {"unexpected key",
       npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", six_floats),
       {"unexpected key 'x'"}},
      {"duplicate key",
       npy_v1("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
              six_floats),
       {"duplicate key 'descr'"}},
      {"bad bool",
       npy_v1("{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3), }", six_floats),
       {"True or False"}},
      {"shape not a tuple", npy_v1(dict("<f4", "[2, 3]"), six_floats), {"expected '('"}},
      {"parenthesised integer", npy_v1(dict("<f4", "(6)"), six_floats), {"(n,)"}},
      {"negative dimension", npy_v1(dict("<f4", "(-2, 3)"), six_floats), {"negative"}},
      {"fractional dimension", npy_v1(dict("<f4", "(2.5, 3)"), six_floats), {"shape"}},
      {"unterminated string", npy_v1("{'descr: '<f4'", six_floats), {"malformed"}},
      {"text after the dict", npy_v1(dict("<f4", "(2, 3)") + " junk", six_floats),
       {"after the closing"}},
      {"structured dtype",
       npy_v1("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", six_floats),
       {"structured"}},
      {"big-endian floats", npy_v1(dict(">f4", "(2, 3)"), six_floats), {"big-endian", ">f4"}},
      {"complex numbers", npy_v1(dict("<c8", "(3,)"), six_floats), {"unsupported dtype '<c8'"}},
      {"Python objects", npy_v1(dict("|O", "(3,)"), six_floats), {"unsupported dtype '|O'"}},
      {"unicode strings", npy_v1(dict("<U3", "(2,)"), six_floats), {"unsupported dtype"}},
      {"truncated data", npy_v1(dict("<f4", "(2, 3)"), six_floats.substr(0, 20)),
       {"needs 24", "found 20", "truncated"}},
      {"trailing bytes", npy_v1(dict("<f4", "(2, 3)"), six_floats + "xx"),
       {"found 26", "trailing"}},
      {"shape overflowing 64 bits",
       npy_v1(dict("<f8", "(4294967296, 4294967296)"), six_floats), {"too large"}},
  };
  for (const auto& c : cases) {
    INFO(c.description);
    write_raw(path, c.bytes);
    const std::string message = read_error(path);
    CHECK_THAT(message, Contains(path));
    for (const auto& part : c.expected) CHECK_THAT(message, Contains(part));
  }

  // Every prefix of a valid file fails cleanly.
  Rng rng(9);
  io::write_npy(path, test::random_matrix<float>(3, 5, rng));
  const std::string full = npy_slurp(path);
  for (std::size_t length = 0; length < full.size(); ++length) {
    INFO("prefix of " << length << " bytes");
    write_raw(path, full.substr(0, length));
    CHECK_THAT(read_error(path), Contains(path));
  }

  const auto missing = (dir / "missing.npy").string();
  CHECK_THAT(thrown_message<Error>([&] { io::read_npy(missing); }),
             Contains(missing) && Contains("No such file or directory"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("npy conversions check dtype, rank, order and values", "[io][npy]") {
  const auto dir = test::temp_dir("npy_conversions");
  const auto path = (dir / "teacher.npy").string();
  const std::vector<float> values = {1, 2, 3, 4, 5, 6, 7, 8};

  write_raw(path, npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }",
                         raw_bytes(values)));
  const io::NpyArray cube = io::read_npy(path);
  CHECK_THAT(thrown_message<ShapeError>([&] { io::npy_to_matrix(cube, path); }),
             Contains(path) && Contains("(2, 2, 2)"));
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_integers(cube, path); }),
             Contains(path) && Contains("integer") && Contains("<f4"));

  write_raw(path, npy_v1("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 4), }",
                         raw_bytes(values)));
  const io::NpyArray fortran = io::read_npy(path);
  CHECK(fortran.fortran_order);
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_matrix(fortran, path); }),
             Contains(path) && Contains("np.ascontiguousarray"));
  // For one dimension both orders are the same.
  write_raw(path, npy_v1("{'descr': '<f4', 'fortran_order': True, 'shape': (8,), }",
                         raw_bytes(values)));
  CHECK(io::npy_to_matrix(io::read_npy(path), path).row(0)(7) == 8.0f);

  write_raw(path, npy_v1("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 4), }",
                         raw_bytes(std::vector<std::int32_t>(8, 1))));
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_matrix(io::read_npy(path), path); }),
             Contains(path) && Contains("floating-point") && Contains("<i4"));

  write_raw(path, npy_v1("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }",
                         std::string("\x01\x00", 2)));
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_integers(io::read_npy(path), path); }),
             Contains("|b1"));

  std::vector<float> with_nan = values;
  with_nan[6] = std::numeric_limits<float>::quiet_NaN();
  write_raw(path, npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
                         raw_bytes(with_nan)));
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_matrix(io::read_npy(path), path); }),
             Contains(path) && Contains("non-finite") && Contains("index 6") &&
                 Contains("[1, 2]"));

  write_raw(path, npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                         raw_bytes(std::vector<double>{1.0, -1e300})));
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_matrix(io::read_npy(path), path); }),
             Contains("float range") && Contains("index 1"));

  write_raw(path, npy_v1("{'descr': '<u8', 'fortran_order': False, 'shape': (2,), }",
                         raw_bytes(std::vector<std::uint64_t>{1, 1ULL << 63})));
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_integers(io::read_npy(path), path); }),
             Contains("index 1") && Contains("int64"));

  // A hand-made NpyArray whose data does not match its shape is caught, not read past its end.
  io::NpyArray inconsistent;
  inconsistent.descr = "<f4";
  inconsistent.shape = {4, 4};
  inconsistent.data.resize(8);
  CHECK_THAT(thrown_message<FormatError>([&] { io::npy_to_matrix(inconsistent, "inline"); }),
             Contains("inline") && Contains("(4, 4)"));
  std::filesystem::remove_all(dir);
}
