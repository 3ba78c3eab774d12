#include "distillrec/serve/item_scorer.hpp"

#include "support.hpp"

#include <cmath>
#include <limits>
#include <set>

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

/// The scorer's top-K with a vector of exclusion lists (empty: none).
std::vector<std::vector<serve::ScoredItem>> scorer_top_k(const serve::ItemScorer<float>& scorer, const Matrix<float>& users, Index k,
                                                         const std::vector<const Sequence*>& excluded,
                                                         serve::ItemScorer<float>::Workspace& ws) {
  std::vector<std::vector<serve::ScoredItem>> top;
  scorer.top_k(users, k, [&](Index r) { return excluded.empty() ? nullptr : excluded[static_cast<std::size_t>(r)]; }, top, ws);
  return top;
}

serve::ScoringPolicy policy(serve::Precision precision, Index block = serve::ScoringPolicy{}.item_block, bool portable = false) {
  serve::ScoringPolicy p;
  p.precision = precision;
  p.item_block = block;
  p.portable = portable;
  return p;
}

}  // namespace

TEST_CASE("ItemScorer equals the whole-row top-K for every policy and block size, with ties, bias and exclusions", "[serve][scoring]") {
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
          serve::ItemScorer<float>::Workspace ws;  // shared by every scorer below
          for (Index block : {Index{0}, Index{1}, Index{7}, Index{64}, Index{4096}}) {
            // Quarters are exact in bf16 too, and int8 re-scores a shortlist of the whole
            // catalogue exactly: every policy and path must give the fp32 result exactly.
            const Index shortlist = num_items + 5;
            for (auto precision : {serve::Precision::kFp32, serve::Precision::kBf16, serve::Precision::kInt8}) {
              for (bool portable : {false, true}) {
                CAPTURE(num_items, rows, with_bias, k, block, serve::to_string(precision), portable);
                auto p = policy(precision, block, portable);
                p.shortlist = shortlist;
                const serve::ItemScorer<float> scorer(head, p);
                if (portable && precision != serve::Precision::kFp32) REQUIRE_THAT(scorer.description(), Catch::Contains("portable path"));
                REQUIRE(scorer_top_k(scorer, users, k, excluded, ws) == expected);
                REQUIRE(scorer_top_k(scorer, users, k, {}, ws) == expected_all);  // the same workspace again
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("ItemScorer keeps its scratch at one block of items whatever the catalogue size", "[serve][scoring]") {
  Rng rng(22);
  const Index rows = 16, d = 4, num_items = 50000, block = 256;
  const Matrix<float> weight = quarter_matrix(num_items, d, rng);
  const Matrix<float> users = quarter_matrix(rows, d, rng);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), num_items, d), nullptr};
  for (auto precision : {serve::Precision::kFp32, serve::Precision::kBf16, serve::Precision::kInt8}) {
    CAPTURE(serve::to_string(precision));
    const serve::ItemScorer<float> scorer(head, policy(precision, block));
    serve::ItemScorer<float>::Workspace ws;
    const auto top = scorer_top_k(scorer, users, 10, {}, ws);
    CHECK(ws.block.capacity() <= static_cast<std::size_t>(rows * block));
    if (precision == serve::Precision::kInt8) CHECK(ws.sums.capacity() <= static_cast<std::size_t>(rows * block));
    REQUIRE(top == whole_row_top_k(users, head, 10, {}));
  }
}

TEST_CASE("bf16 and int8 scoring agree with fp32 on realistic tables", "[serve][scoring]") {
  // Gaussian item table and users, with a bias: top-10 overlap with fp32 and the error of the
  // approximate scores. int8's results carry the exact fp32 scores of its shortlist.
  Rng rng(24);
  const Index num_items = 6000, d = 48, rows = 64, k = 10;
  const Matrix<float> weight = test::random_matrix<float>(num_items, d, rng);
  const Matrix<float> users = test::random_matrix<float>(rows, d, rng);
  std::vector<float> bias(static_cast<std::size_t>(num_items));
  for (auto& b : bias) b = static_cast<float>(0.1 * rng.normal());
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), num_items, d), bias.data()};
  const auto expected = whole_row_top_k(users, head, k, {});
  Matrix<float> exact(rows, num_items);
  serve::score_items<float>(users, head, exact);
  for (auto precision : {serve::Precision::kBf16, serve::Precision::kInt8}) {
    for (bool portable : {false, true}) {
      CAPTURE(serve::to_string(precision), portable);
      const serve::ItemScorer<float> scorer(head, policy(precision, 1000, portable));
      INFO(scorer.description());
      serve::ItemScorer<float>::Workspace ws;
      const auto top = scorer_top_k(scorer, users, k, {}, ws);
      double overlap = 0.0;
      for (Index r = 0; r < rows; ++r) {
        std::set<ItemId> want;
        for (const auto& s : expected[static_cast<std::size_t>(r)]) want.insert(s.item);
        for (const auto& s : top[static_cast<std::size_t>(r)]) overlap += static_cast<double>(want.count(s.item));
        if (precision == serve::Precision::kInt8) {  // the scores returned are the exact ones
          for (const auto& s : top[static_cast<std::size_t>(r)]) CHECK(s.score == Approx(exact(r, s.item - 1)).epsilon(1e-5));
        }
      }
      CHECK(overlap / static_cast<double>(rows * k) >= 0.99);
      // The policy's scores of every item stay close to fp32's (relative to the score scale).
      Matrix<float> approx(rows, num_items);
      scorer.score_all(users, approx, ws);
      const double scale = exact.cwiseAbs().maxCoeff();
      const double worst = (approx - exact).cwiseAbs().maxCoeff() / scale;
      CHECK(worst < (precision == serve::Precision::kBf16 ? 0.02 : 0.05));
      CHECK(worst > 0.0);  // the approximation is real, not fp32 in disguise
    }
  }
}

TEST_CASE("ItemScorer rejects bad arguments, NaN scores and non-finite tables with clear errors", "[serve][scoring]") {
  Rng rng(23);
  const Matrix<float> weight = test::random_matrix<float>(300, 4, rng);
  const nn::HeadWeights<float> head{ConstMatrixMap<float>(weight.data(), 300, 4), nullptr};
  const serve::ItemScorer<float> scorer(head, {});
  serve::ItemScorer<float>::Workspace ws;
  const Matrix<float> users = test::random_matrix<float>(40, 4, rng);
  CHECK_THROWS_WITH(scorer_top_k(scorer, test::random_matrix<float>(2, 5, rng), 10, {}, ws), Catch::Contains("5 columns, the output head 4"));
  CHECK_THROWS_AS(scorer_top_k(scorer, users, -1, {}, ws), ConfigError);
  CHECK_THROWS_AS(serve::ItemScorer<float>(head, policy(serve::Precision::kFp32, -1)), ConfigError);
  serve::ScoringPolicy negative_shortlist;
  negative_shortlist.shortlist = -2;
  CHECK_THROWS_AS(serve::ItemScorer<float>(head, negative_shortlist), ConfigError);
  CHECK_THROWS_WITH(serve::parse_precision("fp16"), Catch::Contains("expected fp32, bf16 or int8"));
  CHECK(serve::parse_precision("int8") == serve::Precision::kInt8);
  const Matrix<double> weight_d = weight.cast<double>();
  const nn::HeadWeights<double> head_d{ConstMatrixMap<double>(weight_d.data(), 300, 4), nullptr};
  CHECK_THROWS_WITH(serve::ItemScorer<double>(head_d, policy(serve::Precision::kBf16)), Catch::Contains("needs float weights"));
  const auto none = scorer_top_k(scorer, users, 0, {}, ws);
  REQUIRE(none.size() == 40);
  for (const auto& t : none) CHECK(t.empty());
  // A NaN in the item table: an error from inside the threaded scan, never a silent skip; the
  // bf16 and int8 copies refuse it when built, naming the item.
  Matrix<float> broken = weight;
  broken(123, 2) = std::numeric_limits<float>::quiet_NaN();
  const nn::HeadWeights<float> broken_head{ConstMatrixMap<float>(broken.data(), 300, 4), nullptr};
  const serve::ItemScorer<float> broken_scorer(broken_head, {});
  const Matrix<float> many = test::random_matrix<float>(512, 4, rng);
  CHECK_THROWS_WITH(scorer_top_k(broken_scorer, many, 10, {}, ws), Catch::Contains("NaN score for item 124"));
  CHECK_THROWS_WITH(serve::ItemScorer<float>(broken_head, policy(serve::Precision::kBf16)), Catch::Contains("item 124 is not finite"));
  CHECK_THROWS_WITH(serve::ItemScorer<float>(broken_head, policy(serve::Precision::kInt8)), Catch::Contains("item 124 is not finite"));
  // A non-finite user vector under int8 (its scale would be NaN).
  Matrix<float> bad_users = users;
  bad_users(3, 1) = std::numeric_limits<float>::infinity();
  const serve::ItemScorer<float> int8(head, policy(serve::Precision::kInt8));
  CHECK_THROWS_WITH(scorer_top_k(int8, bad_users, 10, {}, ws), Catch::Contains("row 3 is not finite"));
  // Still usable afterwards.
  const auto after = scorer_top_k(int8, users, 10, {}, ws);
  REQUIRE(after.size() == 40);
  for (const auto& t : after) CHECK(t.size() == 10);
}
