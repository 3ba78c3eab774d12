#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/workspace.hpp"

#include "support.hpp"

#include <cstdint>
#include <fstream>
#include <set>
#include <unistd.h>

using namespace distillrec;

TEST_CASE("Rng is deterministic per seed and streams are independent", "[core][rng]") {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) {
    const auto x = a.next();
    REQUIRE(x == b.next());
    (void)c.next();
  }
  Rng d(42);
  Rng s1 = d.derive(1), s2 = d.derive(2), s1_again = d.derive(1);
  REQUIRE(s1.next() == s1_again.next());
  REQUIRE(s1.next() != s2.next());
  REQUIRE(Rng(1).next() != Rng(2).next());
}

TEST_CASE("Rng draws have the right ranges and moments", "[core][rng]") {
  Rng rng(7);
  const int n = 200000;
  double sum = 0, sum_sq = 0, usum = 0;
  std::vector<int> counts(10, 0);
  for (int i = 0; i < n; ++i) {
    const double z = rng.normal();
    sum += z;
    sum_sq += z * z;
    const double u = rng.uniform();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    usum += u;
    const auto k = rng.uniform_int(std::uint64_t{10});
    REQUIRE(k < 10);
    ++counts[k];
  }
  CHECK(std::abs(sum / n) < 0.01);
  CHECK(std::abs(sum_sq / n - 1.0) < 0.02);
  CHECK(std::abs(usum / n - 0.5) < 0.01);
  for (int c : counts) CHECK(std::abs(c - n / 10) < n / 100);
  for (int i = 0; i < 1000; ++i) {
    const auto v = rng.uniform_int(-3, 3);
    REQUIRE(v >= -3);
    REQUIRE(v <= 3);
  }
}

TEST_CASE("Parameters lay out named slices in one aligned flat buffer", "[core][params]") {
  Parameters<float> params;
  const auto w = params.declare("linear.weight", 3, 5);
  const auto b = params.declare("linear.bias", 1, 3);
  REQUIRE_THROWS_AS(params.declare("linear.bias", 1, 3), ConfigError);
  REQUIRE_THROWS_AS(params.declare("empty", 0, 3), ShapeError);
  params.allocate();
  REQUIRE_THROWS_AS(params.declare("late", 1, 1), ConfigError);
  REQUIRE(params.num_scalars() == 18);
  REQUIRE(params.info(b).offset % Parameters<float>::kAlignElements == 0);
  REQUIRE(params.info(b).offset >= 15);
  params.value(w)(2, 4) = 7.0f;
  params.grad(b)(0, 1) = 3.0f;
  REQUIRE(params.values()[params.info(w).offset + 2 * 5 + 4] == 7.0f);
  REQUIRE(params.grads()[params.info(b).offset + 1] == 3.0f);
  REQUIRE(params.find("linear.weight") == w);
  REQUIRE(params.find("missing") == -1);
  params.zero_grad();
  REQUIRE(params.grad(b).isZero());
  params.set_trainable(w, false);
  REQUIRE(params.num_trainable_scalars() == 3);
}

namespace {

// Resident bytes of this process (/proc/self/statm), or -1 where that file is absent.
double resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return -1.0;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

}  // namespace

TEST_CASE("Parameters start at zero without touching memory: an unwritten gradient buffer is never resident",
          "[core][params]") {
  Parameters<float> small;
  const auto s = small.declare("s", 3, 7);
  small.allocate();
  REQUIRE(small.value(s).isZero());
  REQUIRE(small.grad(s).isZero());
  REQUIRE(reinterpret_cast<std::uintptr_t>(small.values()) % 64 == 0);

  const double before = resident_mib();
  if (before < 0) {
    WARN("no /proc/self/statm: residency not checked");
    return;
  }
  Parameters<float> big;
  const auto w = big.declare("w", 4096, 4096);  // 64 MiB of values, 64 MiB of gradients
  big.allocate();
  REQUIRE(reinterpret_cast<std::uintptr_t>(big.grads()) % 64 == 0);
  auto values = big.value(w);
  values.setConstant(1.0f);  // the weights are written (loaded), the gradients are not
  const double after_values = resident_mib();
  CHECK(after_values - before >= 60.0);
  CHECK(after_values - before < 80.0);  // not 128 MiB: the gradient twin is not resident
  CHECK(big.grad(w).row(4095).isZero());
  big.zero_grad();  // training writes it
  CHECK(resident_mib() - before >= 120.0);
}

TEST_CASE("ScratchMatrix reuses its memory for smaller shapes", "[core][workspace]") {
  ScratchMatrix<float> scratch;
  auto big = scratch.resize(10, 10);
  const float* first = big.data();
  auto small = scratch.zeros(4, 6);
  REQUIRE(small.data() == first);
  REQUIRE(small.rows() == 4);
  REQUIRE(small.isZero());
}

TEST_CASE("require_shape names the tensor and both shapes", "[core][error]") {
  Matrix<float> m(2, 3);
  REQUIRE_NOTHROW(require_shape(m, 2, 3, "m"));
  try {
    require_shape(m, 3, 3, "attention.query");
    FAIL("expected ShapeError");
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    CHECK(what.find("attention.query") != std::string::npos);
    CHECK(what.find("3x3") != std::string::npos);
    CHECK(what.find("2x3") != std::string::npos);
  }
  const FormatError fe("log.txt", 12, "expected an integer");
  CHECK(std::string(fe.what()).find("log.txt:12: expected an integer") != std::string::npos);
}
