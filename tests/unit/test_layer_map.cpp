#include "distillrec/distill/layer_map.hpp"

#include "support.hpp"

using namespace distillrec;

TEST_CASE("Layer map pairs block ends as in SLMRec", "[distill][layer_map]") {
  const auto map = distill::make_layer_map(32, 8, 4);
  REQUIRE(map.teacher_indices() == std::vector<Index>({8, 16, 24, 32}));
  REQUIRE(map.student_indices() == std::vector<Index>({2, 4, 6, 8}));
  REQUIRE(map.supervision_layers == std::vector<Index>({2, 4, 6}));
  const auto small = distill::make_layer_map(8, 2, 2);
  REQUIRE(small.teacher_indices() == std::vector<Index>({4, 8}));
  REQUIRE(small.student_indices() == std::vector<Index>({1, 2}));
  REQUIRE(small.supervision_layers == std::vector<Index>({1}));
  REQUIRE(distill::make_layer_map(6, 3, 1).supervision_layers.empty());
  REQUIRE(map.describe().find("teacher 8 <-> student 2") != std::string::npos);
}

TEST_CASE("Layer map rejects configurations that do not divide", "[distill][layer_map]") {
  REQUIRE_THROWS_AS(distill::make_layer_map(30, 8, 4), ConfigError);
  REQUIRE_THROWS_AS(distill::make_layer_map(32, 6, 4), ConfigError);
  REQUIRE_THROWS_AS(distill::make_layer_map(8, 16, 4), ConfigError);
  REQUIRE_THROWS_AS(distill::make_layer_map(8, 2, 0), ConfigError);
  try {
    distill::make_layer_map(30, 8, 4);
  } catch (const ConfigError& e) {
    REQUIRE(std::string(e.what()).find("30-layer teacher") != std::string::npos);
  }
}
