#include <catch2/catch.hpp>

#include "distillrec/models/packing.hpp"

using namespace distillrec;
using models::PackedTokens;
using models::PackingRules;

namespace {

PackingRules rules(bool full_width = true) { return PackingRules{"TestModel", 20, 4, full_width}; }

// Rows: [0 0 3 4] -> targets [0 0 4 5]; [0 0 0 0] (all padding); [1 2 3 4] -> [2 3 4 6].
data::TrainingBatch batch_of_width(Index width, Index negatives_per_target) {
  data::TrainingBatch batch;
  batch.reset(3, width, negatives_per_target);
  batch.examples = {0, 1, 2};
  for (Index j = 0; j < width; ++j) {
    if (j >= width - 2) {
      batch.inputs()(0, j) = static_cast<ItemId>(3 + j - (width - 2));
      batch.targets()(0, j) = batch.inputs()(0, j) + 1;
    }
    batch.inputs()(2, j) = static_cast<ItemId>(1 + j);
    batch.targets()(2, j) = static_cast<ItemId>(j + 1 == width ? 6 : 2 + j);
    for (Index m = 0; m < negatives_per_target; ++m) {
      if (batch.targets()(0, j) != kPaddingId) batch.negatives()(0, j * negatives_per_target + m) = static_cast<ItemId>(10 + m);
      batch.negatives()(2, j * negatives_per_target + m) = static_cast<ItemId>(15 + m);
    }
  }
  return batch;
}

}  // namespace

TEST_CASE("pack_histories keeps the newest max_length items with their window positions", "[packing]") {
  PackedTokens packed;
  const std::vector<Sequence> histories = {{1, 2, 3, 4, 5, 6}, {7}, {8, 9}};
  models::pack_histories(histories, rules(), packed);
  REQUIRE(packed.layout.num_sequences() == 3);
  CHECK(packed.layout.num_tokens() == 4 + 1 + 2);
  CHECK(packed.items == std::vector<ItemId>{3, 4, 5, 6, 7, 8, 9});
  CHECK(packed.positions == std::vector<ItemId>{0, 1, 2, 3, 3, 2, 3});  // the newest item is at max_length - 1
  CHECK(packed.sequence_rows == std::vector<Index>{0, 1, 2});
  CHECK(packed.targets.empty());
  CHECK(packed.negatives.empty());

  SECTION("packing again replaces the previous call's tokens") {
    models::pack_histories({{2}}, rules(), packed);
    CHECK(packed.items == std::vector<ItemId>{2});
    CHECK(packed.layout.num_sequences() == 1);
  }
  SECTION("an empty history is an error naming it") {
    CHECK_THROWS_WITH(models::pack_histories({{1}, {}}, rules(), packed),
                      Catch::Contains("TestModel") && Catch::Contains("history 1 is empty"));
  }
  SECTION("an id outside the catalogue is an error naming the sequence and the id") {
    CHECK_THROWS_AS(models::pack_histories({{1, 21}}, rules(), packed), ShapeError);
    CHECK_THROWS_WITH(models::pack_histories({{1}, {0, 2}}, rules(), packed),
                      Catch::Contains("item id 0 in sequence 1 is outside 1..20"));
  }
}

TEST_CASE("pack_batch packs the non-padding tokens with their targets and negatives", "[packing]") {
  PackedTokens packed;
  models::pack_batch(batch_of_width(4, 2), rules(), packed);
  REQUIRE(packed.layout.num_sequences() == 2);  // the all-padding row contributes nothing
  CHECK(packed.sequence_rows == std::vector<Index>{0, 2});
  CHECK(packed.layout.begin(1) == 2);
  CHECK(packed.items == std::vector<ItemId>{3, 4, 1, 2, 3, 4});
  CHECK(packed.positions == std::vector<ItemId>{2, 3, 0, 1, 2, 3});
  CHECK(packed.targets == std::vector<ItemId>{4, 5, 2, 3, 4, 6});
  CHECK(packed.num_negatives == 2);
  CHECK(packed.negatives == std::vector<ItemId>{10, 11, 10, 11, 15, 16, 15, 16, 15, 16, 15, 16});

  SECTION("without negatives") {
    auto batch = batch_of_width(4, 0);
    models::pack_batch(batch, rules(), packed);
    CHECK(packed.num_negatives == 0);
    CHECK(packed.negatives.empty());
    CHECK(packed.targets.size() == 6);
  }
  SECTION("narrower windows are the newest columns of a max_length window where the model allows them") {
    models::pack_batch(batch_of_width(3, 1), rules(false), packed);
    CHECK(packed.items == std::vector<ItemId>{3, 4, 1, 2, 3});
    CHECK(packed.positions == std::vector<ItemId>{2, 3, 1, 2, 3});
    CHECK_THROWS_WITH(models::pack_batch(batch_of_width(3, 1), rules(true), packed),
                      Catch::Contains("batch windows have 3 columns but max_length is 4"));
    CHECK_THROWS_AS(models::pack_batch(batch_of_width(5, 1), rules(false), packed), ShapeError);
  }
  SECTION("bad ids are errors") {
    auto batch = batch_of_width(4, 1);
    batch.inputs()(2, 1) = 99;
    CHECK_THROWS_WITH(models::pack_batch(batch, rules(), packed), Catch::Contains("item id 99 in sequence 2"));
  }
}
