// The packed-table kernels (serve/packed_table.hpp) against a scalar reference: every user
// count (1..9, so every kernel shape and the groups of four), dimensions that are not whole
// pairs or quadruples, catalogues that end inside a panel, passes that start at a later panel,
// and an output row stride wider than the pass. int8 sums are exact integers, so every path must
// agree exactly; bf16 sums are fp32 sums of exact products in a fixed order.
#include "distillrec/serve/item_scorer.hpp"
#include "distillrec/serve/packed_table.hpp"

#include "support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using namespace distillrec;
namespace sd = distillrec::serve::detail;

namespace {

std::vector<std::uint16_t> packed_random_bf16(Index n, Rng& rng) {
  std::vector<std::uint16_t> out(static_cast<std::size_t>(n));
  for (auto& v : out) v = sd::float_to_bfloat16(static_cast<float>(rng.normal()));
  return out;
}

}  // namespace

TEST_CASE("Packed bf16 kernels equal the scalar bf16 dot products", "[serve][scoring][packed]") {
  Rng rng(41);
  for (Index d : {Index{1}, Index{7}, Index{50}, Index{64}}) {
    for (Index items : {Index{1}, Index{16}, Index{37}, Index{500}}) {
      const auto table = packed_random_bf16(items * d, rng);
      sd::PackedBf16Table packed;
      packed.build(table.data(), items, d);
      REQUIRE(packed.words_per_item == (d + 1) / 2);
      for (Index rows = 1; rows <= 13; ++rows) {  // groups of 8 users, then of at most 4
        const auto users = packed_random_bf16(rows * d, rng);
        std::vector<std::uint32_t> words(static_cast<std::size_t>(rows * packed.words_per_item));
        for (Index r = 0; r < rows; ++r) packed.pack_user(users.data() + r * d, words.data() + r * packed.words_per_item);
        for (Index first_panel : {Index{0}, Index{1}}) {
          const Index first = first_panel * sd::kPanel;
          if (first >= items) continue;
          const Index count = items - first, ld = count + 3;
          for (bool native : {true, false}) {
            CAPTURE(d, items, rows, first_panel, native);
            std::vector<float> out(static_cast<std::size_t>(rows * ld), -7.0f);
            sd::score_bf16_panels(packed, words.data(), rows, first_panel, count, out.data(), ld, native);
            for (Index r = 0; r < rows; ++r) {
              for (Index j = 0; j < count; ++j) {
                double expected = 0.0, magnitude = 0.0;
                for (Index c = 0; c < d; ++c) {
                  const double p = static_cast<double>(sd::bfloat16_to_float(users[static_cast<std::size_t>(r * d + c)])) *
                                   sd::bfloat16_to_float(table[static_cast<std::size_t>((first + j) * d + c)]);
                  expected += p;
                  magnitude += std::abs(p);
                }
                REQUIRE(std::abs(out[static_cast<std::size_t>(r * ld + j)] - expected) <= 1e-5 * magnitude + 1e-30);
              }
              for (Index j = count; j < ld; ++j) REQUIRE(out[static_cast<std::size_t>(r * ld + j)] == -7.0f);  // untouched
            }
          }
        }
      }
    }
  }
}

TEST_CASE("Packed int8 kernels give the exact integer sums on every path", "[serve][scoring][packed]") {
  Rng rng(42);
  for (Index d : {Index{1}, Index{5}, Index{50}, Index{64}}) {
    for (Index items : {Index{3}, Index{16}, Index{41}, Index{300}}) {
      std::vector<std::int8_t> table(static_cast<std::size_t>(items * d));
      for (auto& v : table) v = static_cast<std::int8_t>(rng.uniform_int(std::int64_t{-127}, std::int64_t{127}));
      sd::PackedInt8Table packed;
      packed.build(table.data(), items, d);
      const Index padded = packed.panels * sd::kPanel;
      std::vector<float> scale(static_cast<std::size_t>(padded), 0.0f), offset(scale.size(), 0.0f);
      for (Index j = 0; j < items; ++j) {
        scale[static_cast<std::size_t>(j)] = static_cast<float>(std::ldexp(1.0, -static_cast<int>(j % 5)));  // powers of two: exact
        offset[static_cast<std::size_t>(j)] = static_cast<float>(j % 7);
      }
      for (Index rows = 1; rows <= 13; ++rows) {
        std::vector<std::uint8_t> users(static_cast<std::size_t>(rows * d));
        for (auto& v : users) v = static_cast<std::uint8_t>(rng.uniform_int(std::int64_t{1}, std::int64_t{127}));
        std::vector<float> user_scale(static_cast<std::size_t>(rows));
        for (Index r = 0; r < rows; ++r) user_scale[static_cast<std::size_t>(r)] = static_cast<float>(r % 2 == 0 ? 1.0 : 0.5);
        std::vector<std::uint32_t> words(static_cast<std::size_t>(rows * packed.words_per_item));
        for (Index r = 0; r < rows; ++r) packed.pack_user(users.data() + r * d, words.data() + r * packed.words_per_item);
        std::vector<std::vector<float>> results;
        for (bool native : {true, false}) {
          CAPTURE(d, items, rows, native);
          std::vector<float> out(static_cast<std::size_t>(rows * items));
          sd::score_int8_panels(packed, words.data(), user_scale.data(), scale.data(), offset.data(), rows, 0, items, out.data(), items,
                                native);
          for (Index r = 0; r < rows; ++r) {
            for (Index j = 0; j < items; ++j) {
              std::int64_t sum = 0;
              for (Index c = 0; c < d; ++c) {
                sum += std::int64_t{users[static_cast<std::size_t>(r * d + c)]} * table[static_cast<std::size_t>(j * d + c)];
              }
              const float expected = user_scale[static_cast<std::size_t>(r)] *
                                     (scale[static_cast<std::size_t>(j)] * static_cast<float>(sum) - offset[static_cast<std::size_t>(j)]);
              REQUIRE(out[static_cast<std::size_t>(r * items + j)] == expected);
            }
          }
          results.push_back(out);
        }
        REQUIRE(results[0] == results[1]);
      }
    }
  }
}

TEST_CASE("ItemScorer runs the packed kernels for small queries and oneDNN or tiles for larger, with the same results",
          "[serve][scoring][packed]") {
  Rng rng(43);
  const Index num_items = 1000, d = 50;
  const Matrix<float> weight = test::random_matrix<float>(num_items, d, rng);
  std::vector<float> bias(static_cast<std::size_t>(num_items));
  for (auto& b : bias) b = static_cast<float>(0.1 * rng.normal());
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), num_items, d), bias.data()};
  for (auto precision : {serve::Precision::kBf16, serve::Precision::kInt8}) {
    serve::ScoringPolicy small;
    small.precision = precision;
    small.item_block = 100;  // rounded up to whole panels: 112
    small.kernel_rows = 4;
    serve::ScoringPolicy large = small;
    large.kernel_rows = 0;
    const serve::ItemScorer<float> with_kernels(head, small), without(head, large);
    CAPTURE(with_kernels.description());
    REQUIRE_THAT(with_kernels.description(), Catch::Contains("packed kernel") && Catch::Contains("for up to 4 users per query"));
    REQUIRE_THAT(without.description(), !Catch::Contains("packed kernel"));
    CHECK(with_kernels.memory_bytes() > without.memory_bytes());
    serve::ScoringPolicy capped = small;
    capped.kernel_max_bytes = 1000;  // a table beyond the budget keeps one copy and oneDNN (or tiles)
    const serve::ItemScorer<float> beyond(head, capped);
    REQUIRE_THAT(beyond.description(), !Catch::Contains("packed kernel"));
    CHECK(beyond.memory_bytes() == without.memory_bytes());
    for (Index rows : {Index{1}, Index{3}, Index{4}, Index{5}}) {
      const Matrix<float> users = test::random_matrix<float>(rows, d, rng);
      Matrix<float> a(rows, num_items), b(rows, num_items);
      serve::ItemScorer<float>::Workspace ws;
      with_kernels.score_all(users, a, ws);
      without.score_all(users, b, ws);
      // The same quantities summed in another order: fp32 rounding apart.
      CHECK((a - b).cwiseAbs().maxCoeff() <= 1e-5 * b.cwiseAbs().maxCoeff());
    }
  }
}

TEST_CASE("The default kernel_rows runs the packed kernels for every query where oneDNN has no AMX, with the same results",
          "[serve][scoring][packed]") {
  Rng rng(47);
  const Index num_items = 700, d = 24;
  const Matrix<float> weight = test::random_matrix<float>(num_items, d, rng);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), num_items, d), nullptr};
  for (auto precision : {serve::Precision::kBf16, serve::Precision::kInt8}) {
    serve::ScoringPolicy automatic;
    automatic.precision = precision;
    automatic.item_block = 256;
    serve::ScoringPolicy none = automatic;
    none.kernel_rows = 0;
    const serve::ItemScorer<float> scorer(head, automatic), reference(head, none);
    CAPTURE(scorer.description());
    const bool instruction = precision == serve::Precision::kBf16 ? sd::kBf16DotInstruction : sd::kVnniInstruction;
    const bool amx = reference.description().find("amx") != std::string::npos;
    if (instruction && !amx) {
      CHECK(scorer.kernel_rows() == std::numeric_limits<Index>::max());
      CHECK_THAT(scorer.description(), Catch::Contains("for every query"));
      // The row-major copy and the primitives are released: only the packed table remains.
      CHECK(scorer.memory_bytes() < reference.memory_bytes() + (precision == serve::Precision::kBf16 ? 2 : 1) * num_items * d);
    } else {
      CHECK(scorer.kernel_rows() == 4);
    }
    CHECK(reference.kernel_rows() == 0);
    for (Index rows : {Index{1}, Index{4}, Index{8}, Index{13}, Index{40}}) {
      CAPTURE(rows);
      const Matrix<float> users = test::random_matrix<float>(rows, d, rng);
      Matrix<float> a(rows, num_items), b(rows, num_items);
      serve::ItemScorer<float>::Workspace ws;
      scorer.score_all(users, a, ws);
      reference.score_all(users, b, ws);
      CHECK((a - b).cwiseAbs().maxCoeff() <= 1e-5 * b.cwiseAbs().maxCoeff());
      std::vector<std::vector<serve::ScoredItem>> top_a, top_b;
      auto none_excluded = [](Index) -> const Sequence* { return nullptr; };
      scorer.top_k(users, 10, none_excluded, top_a, ws);
      reference.top_k(users, 10, none_excluded, top_b, ws);
      for (Index r = 0; r < rows; ++r) {
        const auto& x = top_a[static_cast<std::size_t>(r)];
        const auto& y = top_b[static_cast<std::size_t>(r)];
        REQUIRE(x.size() == y.size());
        std::size_t shared = 0;  // fp32 summation order may trade one near-tie at the border
        for (const auto& item : x) {
          for (const auto& other : y) shared += item.item == other.item ? 1 : 0;
        }
        CHECK(shared + 1 >= x.size());
      }
    }
  }
  serve::ScoringPolicy bad;
  bad.kernel_rows = -2;
  CHECK_THROWS_AS(bad.validate(), ConfigError);
}
