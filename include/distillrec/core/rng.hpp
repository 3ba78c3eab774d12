// distillrec/core/rng.hpp
//
// Seeded random numbers with results that are identical on every platform and standard
// library: xoshiro256** (Blackman & Vigna, 2018) seeded through splitmix64, with its own
// integer, uniform and normal draws (std:: distributions differ between implementations).
//
// Parallel code never shares a generator: it derives an independent stream per unit of work
// (`derive(stream_id)`), so results depend on the seed only, not on the thread count.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>

namespace distillrec {

namespace detail {
__extension__ typedef unsigned __int128 Uint128;  // GCC/Clang extension, silenced for -Wpedantic
}  // namespace detail

class Rng {
 public:
  using result_type = std::uint64_t;

  explicit Rng(std::uint64_t seed = 0x5eed) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& word : state_) word = splitmix64(x);
  }

  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  result_type operator()() { return next(); }

  /// Next raw 64-bit value.
  std::uint64_t next() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  /// Uniform integer in [0, bound); bound must be positive. Unbiased (Lemire's method).
  std::uint64_t uniform_int(std::uint64_t bound) {
    detail::Uint128 product = static_cast<detail::Uint128>(next()) * bound;
    auto low = static_cast<std::uint64_t>(product);
    if (low < bound) {
      const std::uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) {
        product = static_cast<detail::Uint128>(next()) * bound;
        low = static_cast<std::uint64_t>(product);
      }
    }
    return static_cast<std::uint64_t>(product >> 64);
  }

  /// Uniform integer in [low, high] (inclusive).
  std::int64_t uniform_int(std::int64_t low, std::int64_t high) {
    return low + static_cast<std::int64_t>(uniform_int(static_cast<std::uint64_t>(high - low) + 1));
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Standard normal draw (Box-Muller; one of the pair is discarded to keep the state simple).
  double normal() {
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  /// Bernoulli draw with probability p of true.
  bool bernoulli(double p) { return uniform() < p; }

  /// The generator's whole state (to save a run and resume it exactly), and a generator with it.
  std::array<std::uint64_t, 4> state() const { return state_; }
  static Rng from_state(const std::array<std::uint64_t, 4>& state) {
    Rng rng;
    rng.state_ = state;
    return rng;
  }

  /// An independent generator for sub-stream `stream` of this generator's current state.
  /// Does not advance this generator.
  Rng derive(std::uint64_t stream) const {
    std::uint64_t x = state_[0] ^ rotl(state_[1], 13) ^ rotl(state_[2], 29) ^ rotl(state_[3], 41);
    x ^= splitmix64_value(stream + 0x9e3779b97f4a7c15ULL);
    return Rng(splitmix64_value(x));
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) {
    x += 0x9e3779b97f4a7c15ULL;
    return splitmix64_value(x);
  }
  static std::uint64_t splitmix64_value(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  std::array<std::uint64_t, 4> state_{};
};

}  // namespace distillrec
