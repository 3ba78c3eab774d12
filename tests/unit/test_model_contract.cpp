#include "distillrec/models/gru4rec.hpp"
#include "distillrec/models/llm_rec.hpp"
#include "distillrec/models/model.hpp"
#include "distillrec/models/popularity.hpp"
#include "distillrec/models/registry.hpp"
#include "distillrec/models/sasrec.hpp"

#include "support.hpp"

using namespace distillrec;

namespace {

// Pieces of a model, to assemble models that miss one piece each.
struct ScoringBase {
  using Scalar = float;
  struct Workspace : models::PackedTokens {};
  ItemId num_items() const { return 1; }
  nn::HeadWeights<float> output_weights() const { return {}; }
};
struct WithEncode : ScoringBase {
  void encode(const std::vector<Sequence>&, MatrixRef<float>, Workspace&) const {}
};
struct WithoutHead {
  using Scalar = float;
  struct Workspace {};
  ItemId num_items() const { return 1; }
  void encode(const std::vector<Sequence>&, MatrixRef<float>, Workspace&) const {}
};
struct IntegerScalar : WithEncode {
  using Scalar = int;
};

}  // namespace

TEST_CASE("The library's models conform to the model contract, incomplete ones are recognised", "[models][contract]") {
  STATIC_REQUIRE(models::is_sequence_model_v<models::SASRec<float>>);
  STATIC_REQUIRE(models::is_sequence_model_v<models::SASRec<double>>);
  STATIC_REQUIRE(models::is_sequence_model_v<models::LLMRec<float>>);
  STATIC_REQUIRE(models::is_sequence_model_v<models::GRU4Rec<float>>);
  STATIC_REQUIRE(models::check_sequence_model<models::GRU4Rec<double>>());
  // The popularity baseline scores and serves but does not train.
  STATIC_REQUIRE(models::is_scoring_model_v<models::Popularity<float>>);
  STATIC_REQUIRE_FALSE(models::is_sequence_model_v<models::Popularity<float>>);
  // Missing pieces.
  STATIC_REQUIRE(models::is_scoring_model_v<WithEncode>);
  STATIC_REQUIRE_FALSE(models::is_scoring_model_v<ScoringBase>);   // no encode
  STATIC_REQUIRE_FALSE(models::is_scoring_model_v<WithoutHead>);   // no output head
  STATIC_REQUIRE_FALSE(models::is_scoring_model_v<IntegerScalar>);  // not a floating-point scalar
  STATIC_REQUIRE_FALSE(models::is_sequence_model_v<WithEncode>);   // no config, parameters, training
}

TEST_CASE("Models are found by their checkpoint names", "[models][contract]") {
  for (const std::string name : {"sasrec", "gru4rec", "llm_rec"}) {
    const std::string found = models::with_model_type<float>(name, [](auto tag) {
      using Model = typename decltype(tag)::type;
      return std::string(Model::kModelName);
    });
    REQUIRE(found == name);
  }
  REQUIRE_THROWS_WITH(models::with_model_type<float>("bert4rec", [](auto) { return 0; }),
                      Catch::Matchers::Contains("unknown model \"bert4rec\" (known: sasrec, gru4rec, llm_rec)"));
}
