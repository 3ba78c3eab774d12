// distillrec/nn/dropout.hpp
//
// Inverted dropout (Srivastava et al., 2014): during training each element is zeroed with
// probability p and the rest scaled by 1 / (1 - p); at inference it is the identity. The mask
// is drawn from the run's generator (or, with per-example masks, row by row from each row's key:
// nn/run_mode.hpp) and kept in the workspace for backward.
#pragma once

#include "distillrec/backend/kernels.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/run_mode.hpp"

namespace distillrec::nn {

template <typename T>
class Dropout {
 public:
  using Scalar = T;

  struct Workspace {
    ScratchMatrix<T> mask;
    bool active = false;
  };

  explicit Dropout(double probability = 0.0) : p_(probability) {
    if (!(probability >= 0.0 && probability < 1.0)) {
      throw ConfigError(detail::concat("dropout probability must be in [0, 1), got ", probability));
    }
  }

  double probability() const { return p_; }

  /// Draws a rows x cols mask into ws (0 or 1 / (1 - p) per element) when training with p > 0
  /// and returns whether it did (ws.active); what forward() applies, for layers that apply it
  /// themselves (LoRA adapters).
  bool draw_mask(Index rows, Index cols, Workspace& ws, const RunMode& mode) const {
    ws.active = mode.training && p_ > 0.0;
    if (!ws.active) return false;
    auto mask = ws.mask.resize(rows, cols);
    if (mode.keyed()) {
      if (mode.num_rows != rows) {
        throw ShapeError(detail::concat("Dropout: per-example masks need one key per row: ", rows, " rows, ", mode.num_rows, " keys"));
      }
      const std::uint64_t site = mode.next_site_seed();
      for (Index i = 0; i < rows; ++i) {
        Rng rng = RunMode::keyed_stream(site, mode.row_keys[i]);
        backend::kernels::dropout_mask(mask.row(i).data(), cols, p_, rng);
      }
    } else {
      backend::kernels::dropout_mask(mask.data(), mask.size(), p_, mode.generator());
    }
    return true;
  }

  /// y = x * mask (training) or y = x (inference). x and y may be the same matrix.
  void forward(const ConstMatrixRef<T>& x, MatrixRef<T> y, Workspace& ws, const RunMode& mode) const {
    require_shape(y, x.rows(), x.cols(), "Dropout output");
    if (!draw_mask(x.rows(), x.cols(), ws, mode)) {
      if (y.data() != x.data()) y = x;
      return;
    }
    const auto mask = ws.mask.map();
    for (Index i = 0; i < x.rows(); ++i) {
      backend::kernels::multiply<T>(x.row(i).data(), mask.row(i).data(), y.row(i).data(), x.cols());
    }
  }

  /// dx = dy * mask (or dy). dx and dy may be the same matrix.
  void backward(const ConstMatrixRef<T>& dy, MatrixRef<T> dx, const Workspace& ws) const {
    require_shape(dx, dy.rows(), dy.cols(), "Dropout input gradient");
    if (!ws.active) {
      if (dx.data() != dy.data()) dx = dy;
      return;
    }
    const auto mask = ws.mask.map();
    for (Index i = 0; i < dy.rows(); ++i) {
      backend::kernels::multiply<T>(dy.row(i).data(), mask.row(i).data(), dx.row(i).data(), dy.cols());
    }
  }

 private:
  double p_;
};

}  // namespace distillrec::nn
