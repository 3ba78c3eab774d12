// distillrec/optim/adam.hpp
//
// Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), step for step as PyTorch's
// torch.optim.Adam / AdamW:
//     g = grad (+ weight_decay * p for Adam's L2 form)
//     m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//     p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//     AdamW instead decays first: p *= 1 - lr * weight_decay.
// The optimiser holds the hyper-parameters; the moments live in an AdamState created for one
// Parameters buffer. Frozen slices (ParameterInfo::trainable == false) are left untouched.
//
// Lazy rows (AdamConfig::lazy_rows > 0, TensorFlow Addons' LazyAdam): in a tensor of at least
// that many rows (item tables), only the rows whose gradient has any bit set this step are
// updated, each exactly as above with the global step's bias corrections; an untouched row keeps
// its value and both moments. That differs from dense Adam, where an untouched row's moments
// decay and its momentum still moves it (and weight decay shrinks it) every step; in exchange a
// step reads the table's gradient once instead of reading and writing four table-sized arrays.
// Its speed and its effect on quality are measured in the README ("Lazy Adam for item tables").
#pragma once

#include "distillrec/backend/kernels/adam.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/params.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace distillrec::optim {

struct AdamConfig {
  double learning_rate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // true: AdamW
  /// > 0: tensors with at least this many rows update only the rows their gradient touches
  /// (see the header comment); 0: every tensor dense, exactly as PyTorch.
  Index lazy_rows = 0;

  void validate() const {
    if (!(learning_rate >= 0.0)) throw ConfigError(detail::concat("Adam: learning rate must be >= 0, got ", learning_rate));
    if (!(beta1 >= 0.0 && beta1 < 1.0)) throw ConfigError(detail::concat("Adam: beta1 must be in [0, 1), got ", beta1));
    if (!(beta2 >= 0.0 && beta2 < 1.0)) throw ConfigError(detail::concat("Adam: beta2 must be in [0, 1), got ", beta2));
    if (!(eps > 0.0)) throw ConfigError(detail::concat("Adam: eps must be positive, got ", eps));
    if (!(weight_decay >= 0.0)) throw ConfigError(detail::concat("Adam: weight decay must be >= 0, got ", weight_decay));
    if (lazy_rows < 0) throw ConfigError(detail::concat("Adam: lazy_rows must be >= 0 (0 = dense), got ", lazy_rows));
  }
};

/// The moments of one Parameters buffer, in its layout. Their memory comes zero-filled from the
/// same allocator as the parameters, unwritten: the slices of frozen tensors are never touched,
/// so a LoRA model's optimiser state is resident for its adapters only.
template <typename T>
struct AdamState {
  using Buffer = typename Parameters<T>::Buffer;
  Buffer first_moment, second_moment;
  long step = 0;
};

class Adam {
 public:
  explicit Adam(AdamConfig config = {}) : config_(config) { config_.validate(); }

  const AdamConfig& config() const { return config_; }

  template <typename T>
  AdamState<T> make_state(const Parameters<T>& params) const {
    AdamState<T> state;
    state.first_moment.resize(static_cast<std::size_t>(params.buffer_size()));  // zeros, not written (see AdamState)
    state.second_moment.resize(static_cast<std::size_t>(params.buffer_size()));
    return state;
  }

  /// One update with the gradients in params; learning_rate < 0 uses the configured one
  /// (schedules pass theirs here).
  template <typename T>
  void step(Parameters<T>& params, AdamState<T>& state, double learning_rate = -1.0) const {
    if (static_cast<Index>(state.first_moment.size()) != params.buffer_size()) {
      throw ShapeError("Adam: state was made for a different parameter buffer");
    }
    const double lr = learning_rate >= 0.0 ? learning_rate : config_.learning_rate;
    ++state.step;
    const double bias1 = 1.0 - std::pow(config_.beta1, static_cast<double>(state.step));
    const double bias2 = 1.0 - std::pow(config_.beta2, static_cast<double>(state.step));
    backend::kernels::AdamCoefficients<T> c;
    c.beta1 = static_cast<T>(config_.beta1);
    c.beta2 = static_cast<T>(config_.beta2);
    c.step_size = static_cast<T>(lr / bias1);
    c.inv_sqrt_bias2 = static_cast<T>(1.0 / std::sqrt(bias2));
    c.eps = static_cast<T>(config_.eps);
    c.weight_decay = static_cast<T>(config_.weight_decay);
    c.decoupled = config_.decoupled_weight_decay;
    c.decay = static_cast<T>(1.0 - lr * config_.weight_decay);
    T* values = params.values();
    const T* grads = params.grads();
    T* m = state.first_moment.data();
    T* v = state.second_moment.data();
    for (const auto& info : params.infos()) {
      if (!info.trainable) continue;
      const Index begin = info.offset, size = info.size();
      if (config_.lazy_rows > 0 && info.rows >= config_.lazy_rows) {
        // Rows in chunks; each row is tested (its gradient is then in L1) and updated if touched.
        const Index cols = info.cols, row_chunk = std::max<Index>(1, kChunk / cols);
        const Index chunks = (info.rows + row_chunk - 1) / row_chunk;
        parallel::for_each(chunks, chunks > 4 && !parallel::in_parallel(), [&](Index chunk, int) {
          const Index last = std::min(info.rows, (chunk + 1) * row_chunk);
          for (Index r = chunk * row_chunk; r < last; ++r) {
            const Index i = begin + r * cols;
            if (row_touched(grads + i, cols)) backend::kernels::adam_update(values + i, grads + i, m + i, v + i, cols, c);
          }
        });
        continue;
      }
      // Ranges of kChunk elements (a multiple of every SIMD width), one kernel call each.
      const Index chunks = (size + kChunk - 1) / kChunk;
      parallel::for_each(chunks, chunks > 4 && !parallel::in_parallel(), [&](Index chunk, int) {
        const Index i = begin + chunk * kChunk;
        backend::kernels::adam_update(values + i, grads + i, m + i, v + i, std::min(kChunk, size - chunk * kChunk), c);
      });
    }
  }

 private:
  // Whether any value of the row has a bit set (-0.0 counts): an OR of the bit patterns, which
  // vectorises, with no early exit.
  template <typename T>
  static bool row_touched(const T* row, Index cols) {
    using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    Bits any = 0;
    for (Index c = 0; c < cols; ++c) {
      Bits bits;
      std::memcpy(&bits, row + c, sizeof(T));
      any |= bits;
    }
    return any != 0;
  }

  static constexpr Index kChunk = 16384;
  AdamConfig config_;
};

}  // namespace distillrec::optim
