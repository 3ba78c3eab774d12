#include "distillrec/serve/streaming_top_k.hpp"

#include "support.hpp"

#include <cmath>
#include <limits>

using namespace distillrec;

namespace {

/// The reference: every item scored at once, the exclusions masked, top_k per row.
std::vector<std::vector<serve::ScoredItem>> whole_row_top_k(const Matrix<float>& users, const nn::HeadWeights<float>& head, Index k,
                                                            const std::vector<const Sequence*>& excluded) {
  Matrix<float> scores(users.rows(), head.num_items());
  serve::score_items<float>(users, head, scores);
  std::vector<std::vector<serve::ScoredItem>> top(static_cast<std::size_t>(users.rows()));
  for (Index r = 0; r < users.rows(); ++r) {
    if (!excluded.empty() && excluded[static_cast<std::size_t>(r)]) serve::mask_items<float>(scores, r, *excluded[static_cast<std::size_t>(r)]);
    serve::top_k(scores.row(r).data(), scores.cols(), k, top[static_cast<std::size_t>(r)]);
  }
  return top;
}

/// Entries in quarters up to about ±3: every product and sum of 8 of them is exact in float, so
/// any GEMM kernel and block size computes the same scores and the comparison can be exact.
Matrix<float> quarter_matrix(Index rows, Index cols, Rng& rng) {
  Matrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(std::round(rng.normal() * 4.0) / 4.0);
  return m;
}

}  // namespace

TEST_CASE("streaming_top_k equals the whole-row top-K for every block size, with ties, bias and exclusions", "[serve][scoring]") {
  Rng rng(21);
  const Index d = 8;
  for (Index num_items : {Index{1}, Index{37}, Index{2000}}) {
    // Items in pairs with identical rows (and bias): every score ties with another item's.
    Matrix<float> weight = quarter_matrix(num_items, d, rng);
    for (Index i = 1; i < num_items; i += 2) weight.row(i) = weight.row(i - 1);
    std::vector<float> bias(static_cast<std::size_t>(num_items));
    for (Index i = 0; i < num_items; ++i) bias[static_cast<std::size_t>(i)] = static_cast<float>(std::round(rng.normal() * 4.0) / 4.0);
    for (Index i = 1; i < num_items; i += 2) bias[static_cast<std::size_t>(i)] = bias[static_cast<std::size_t>(i - 1)];
    for (Index rows : {Index{1}, Index{64}}) {
      const Matrix<float> users = quarter_matrix(rows, d, rng);
      std::vector<Sequence> histories(static_cast<std::size_t>(rows));
      std::vector<const Sequence*> excluded(static_cast<std::size_t>(rows), nullptr);
      for (Index r = 0; r < rows; r += 2) {  // every other user has a history, with ids outside the catalogue too
        auto& h = histories[static_cast<std::size_t>(r)];
        for (int j = 0; j < 12; ++j) h.push_back(static_cast<ItemId>(1 + rng.uniform_int(std::int64_t{0}, static_cast<std::int64_t>(num_items) - 1)));
        h.push_back(0);
        h.push_back(static_cast<ItemId>(num_items + 3));
        excluded[static_cast<std::size_t>(r)] = &h;
      }
      for (bool with_bias : {false, true}) {
        const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), num_items, d), with_bias ? bias.data() : nullptr};
        for (Index k : {Index{1}, Index{10}, num_items + 5}) {
          const auto expected = whole_row_top_k(users, head, k, excluded);
          const auto expected_all = whole_row_top_k(users, head, k, {});
          for (Index block : {Index{1}, Index{7}, Index{64}, serve::kDefaultItemBlock}) {
            CAPTURE(num_items, rows, with_bias, k, block);
            serve::StreamingTopKWorkspace<float> ws;
            std::vector<std::vector<serve::ScoredItem>> top;
            serve::streaming_top_k<float>(users, head, k, excluded, top, ws, block);
            REQUIRE(top == expected);
            serve::streaming_top_k<float>(users, head, k, {}, top, ws, block);  // the same workspace again, nothing excluded
            REQUIRE(top == expected_all);
          }
        }
      }
    }
  }
}

TEST_CASE("streaming_top_k keeps its scratch at one block of items whatever the catalogue size", "[serve][scoring]") {
  Rng rng(22);
  const Index rows = 16, d = 4, num_items = 50000, block = 256;
  const Matrix<float> weight = quarter_matrix(num_items, d, rng);
  const Matrix<float> users = quarter_matrix(rows, d, rng);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), num_items, d), nullptr};
  serve::StreamingTopKWorkspace<float> ws;
  std::vector<std::vector<serve::ScoredItem>> top;
  serve::streaming_top_k<float>(users, head, 10, {}, top, ws, block);
  CHECK(ws.block.capacity_bytes() <= static_cast<std::size_t>(rows * block) * sizeof(float) + 64);
  REQUIRE(top == whole_row_top_k(users, head, 10, {}));
}

TEST_CASE("streaming_top_k rejects bad arguments and NaN scores with clear errors", "[serve][scoring]") {
  Rng rng(23);
  const Matrix<float> weight = test::random_matrix<float>(300, 4, rng);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), 300, 4), nullptr};
  serve::StreamingTopKWorkspace<float> ws;
  std::vector<std::vector<serve::ScoredItem>> top;
  const Matrix<float> users = test::random_matrix<float>(40, 4, rng);
  CHECK_THROWS_WITH(serve::streaming_top_k<float>(test::random_matrix<float>(2, 5, rng), head, 10, {}, top, ws),
                    Catch::Contains("5 columns, the output head 4"));
  const Sequence h{1, 2};
  CHECK_THROWS_WITH(serve::streaming_top_k<float>(users, head, 10, {&h}, top, ws), Catch::Contains("1 exclusion lists for 40 users"));
  CHECK_THROWS_AS(serve::streaming_top_k<float>(users, head, -1, {}, top, ws), ConfigError);
  CHECK_THROWS_AS(serve::streaming_top_k<float>(users, head, 10, {}, top, ws, 0), ConfigError);
  serve::streaming_top_k<float>(users, head, 0, {}, top, ws);
  REQUIRE(top.size() == 40);
  for (const auto& t : top) CHECK(t.empty());
  // A NaN in the item table: an error from inside the threaded scan, never a silent skip.
  Matrix<float> broken = weight;
  broken(123, 2) = std::numeric_limits<float>::quiet_NaN();
  const nn::HeadWeights<float> broken_head{ConstMatrixMap<float>(broken.data(), 300, 4), nullptr};
  const Matrix<float> many = test::random_matrix<float>(512, 4, rng);
  CHECK_THROWS_WITH(serve::streaming_top_k<float>(many, broken_head, 10, {}, top, ws), Catch::Contains("NaN score for item 124"));
}
