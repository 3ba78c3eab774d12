// distillrec/nn/gru.hpp
//
// Gated recurrent unit (Cho et al., 2014) over packed sequences, one layer, with PyTorch's
// torch.nn.GRU conventions (gate order r, z, n; the reset gate applied after the recurrent
// product; two bias vectors), the recurrent layer of GRU4Rec (Hidasi et al., 2016):
//
//   r_t = sigmoid(x_t W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)
//   z_t = sigmoid(x_t W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)
//   n_t = tanh(x_t W_in^T + b_in + r_t * (h_{t-1} W_hn^T + b_hn))
//   h_t = (1 - z_t) * n_t + z_t * h_{t-1},          h_{-1} = 0 for every sequence
//
// Shapes: x [tokens, input_size] packed as a SequenceLayout says (rows [begin(s), end(s)) are
// sequence s, oldest token first) -> y [tokens, hidden_size], row t the state after token t.
// forward_last() returns only the state after each sequence's newest token [sequences, hidden]
// and step() advances a batch of independent states by one token (incremental serving).
//
// Parameters (declared in this order, PyTorch's layout with rows stacked r, z, n):
//   "<name>.weight_ih" [3H, input_size]   "<name>.weight_hh" [3H, H]
//   "<name>.bias_ih"   [1, 3H]            "<name>.bias_hh"   [1, 3H]
// initialize() draws all four from U(-1/sqrt(H), 1/sqrt(H)), PyTorch's default.
//
// backward() follows nn/backward.hpp: backpropagation through time from a gradient at every
// output row; dx is overwritten or accumulated as InputGrad says, and the four parameter
// gradients are added into Parameters::grads().
//
// Cost model. The input projection of all tokens is one GEMM [tokens, input] x [input, 3H].
// The recurrence runs step by step over the sequences still active at that step: sequences are
// ordered by decreasing length, so the active ones are a prefix and their states one
// contiguous [active, H] block, and each step is one GEMM [active, H] x [H, 3H] followed by the
// fused gate kernel (backend/kernels/gru_gates.hpp) on every active row. Backward mirrors it:
// one GEMM per step, [active, 3H] x [3H, H], for the gradient carried to the previous states,
// then one GEMM each over all tokens for dW_ih, dW_hh (the workspace keeps every token's
// previous state) and dx. States and gates are stored step-major (step t, then active sequence
// j), so each step's rows are contiguous. The workspace holds 11 H values per token.
//
// Threads: every product is cut into blocks of a fixed number of rows (32 sequences, 256 tokens,
// 48 weight rows) that run in parallel, each block's GEMM and gate kernels on one thread. The
// steps of different sequences are independent, so a block of 32 sequences runs its whole
// recurrence on one thread and the recurrence is one parallel region, not one per step. Every sum then has one order whatever the thread count (the GEMM backends' own
// threading may split a product's inner dimension differently for 1 and 2 threads), so results
// do not depend on the number of threads. After the first call with the largest shapes nothing
// allocates.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/kernels/gru_gates.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/params.hpp"
#include "distillrec/core/rng.hpp"
#include "distillrec/core/workspace.hpp"
#include "distillrec/nn/backward.hpp"
#include "distillrec/nn/sequence_layout.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace distillrec::nn {

template <typename T>
class GRU {
 public:
  using Scalar = T;

  /// What backward() needs from forward(), and scratch space; owned by the caller, one per
  /// thread. Rows marked step-major are ordered (step t, active sequence j), see step_offsets.
  struct Workspace {
    ScratchMatrix<T> input_gates;         // x W_ih^T, token order [tokens, 3H]; dL/d(x W_ih^T) in backward
    ScratchMatrix<T> hidden_gates;        // h W_hh^T of one step [active, 3H]
    ScratchMatrix<T> gates;               // r, z, n, h W_hn^T + b_hn, step-major [tokens, 4H]
    ScratchMatrix<T> prev_states;         // h_{t-1} of every token, step-major [tokens, H] (zero at t = 0)
    ScratchMatrix<T> grad_hidden_gates;   // dL/d(h W_hh^T), step-major [tokens, 3H]
    ScratchMatrix<T> state;               // running state (forward_last) or its gradient (backward) [sequences, H]
    std::vector<Index> order;             // sequences by decreasing length, ties by index
    std::vector<Index> order_begin;       // first token row of sequence order[j]
    std::vector<Index> batch_sizes;       // sequences active at step t: order[0, batch_sizes[t])
    std::vector<Index> step_offsets;      // first step-major row of step t (size steps + 1)
    bool holds_forward = false;           // forward() ran and nothing since invalidated it
  };

  GRU(Parameters<T>& params, const std::string& name, Index input_size, Index hidden_size)
      : params_(&params), input_(input_size), hidden_(hidden_size) {
    if (input_size <= 0 || hidden_size <= 0) {
      throw ConfigError(detail::concat("GRU \"", name, "\": input size and hidden size must be positive, got ",
                                       input_size, " and ", hidden_size));
    }
    weight_ih_ = params.declare(name + ".weight_ih", 3 * hidden_size, input_size);
    weight_hh_ = params.declare(name + ".weight_hh", 3 * hidden_size, hidden_size);
    bias_ih_ = params.declare(name + ".bias_ih", 1, 3 * hidden_size);
    bias_hh_ = params.declare(name + ".bias_hh", 1, 3 * hidden_size);
  }

  /// PyTorch's default: every weight and bias from U(-1/sqrt(H), 1/sqrt(H)).
  void initialize(Rng& rng) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(hidden_));
    for (Index id : {weight_ih_, weight_hh_, bias_ih_, bias_hh_}) {
      auto m = params_->value(id);
      for (Index i = 0; i < m.rows(); ++i)
        for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<T>(bound * (2.0 * rng.uniform() - 1.0));
    }
  }

  Index input_size() const { return input_; }
  Index hidden_size() const { return hidden_; }
  Index weight_ih_id() const { return weight_ih_; }
  Index weight_hh_id() const { return weight_hh_; }
  Index bias_ih_id() const { return bias_ih_; }
  Index bias_hh_id() const { return bias_hh_; }

  /// y [tokens, H]: row t is the state after reading token t of its sequence. Keeps in ws what
  /// backward() needs.
  void forward(const ConstMatrixRef<T>& x, const SequenceLayout& layout, MatrixRef<T> y, Workspace& ws) const {
    const Index n = layout.num_tokens(), hidden = hidden_;
    require_shape(x, n, input_, "GRU input");
    require_shape(y, n, hidden, "GRU output");
    plan(layout, ws);
    auto input_gates = ws.input_gates.resize(n, 3 * hidden);
    auto gates = ws.gates.resize(n, 4 * hidden);
    auto prev = ws.prev_states.resize(n, hidden);
    ws.holds_forward = true;
    if (n == 0) return;
    gemm_row_blocks(backend::Trans::kNo, backend::Trans::kYes, x, weight(weight_ih_), T(0), input_gates, kTokenBlock);
    const auto w_hh = weight(weight_hh_);
    const T* bias_ih = weight(bias_ih_).data();
    const T* bias_hh = weight(bias_hh_).data();
    auto hidden_gates = ws.hidden_gates.resize(ws.batch_sizes[0], 3 * hidden);
    const Index steps = static_cast<Index>(ws.batch_sizes.size());
    // A block of sequences runs all its steps on one thread: the steps of different sequences
    // are independent, so one parallel region covers the whole recurrence.
    for_each_block(ws.batch_sizes[0], kStateBlock, recurrence_cost(n), [&](Index begin, Index block) {
      for (Index t = 0; t < steps; ++t) {
        const Index active = ws.batch_sizes[static_cast<std::size_t>(t)];
        if (active <= begin) break;
        const Index rows = std::min(block, active - begin);
        const Index offset = ws.step_offsets[static_cast<std::size_t>(t)];
        const Index next_active = t + 1 < steps ? ws.batch_sizes[static_cast<std::size_t>(t) + 1] : 0;
        const Index next_offset = ws.step_offsets[static_cast<std::size_t>(t) + 1];
        // gh = h_{t-1} W_hh^T for these sequences (zero at the first step), then the gates.
        auto step_gates = hidden_gates.middleRows(begin, rows);
        if (t == 0) {
          prev.middleRows(offset + begin, rows).setZero();
          step_gates.setZero();
        } else {
          backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), prev.middleRows(offset + begin, rows), w_hh,
                        T(0), step_gates);
        }
        for (Index j = begin; j < begin + rows; ++j) {
          const Index token = ws.order_begin[static_cast<std::size_t>(j)] + t;
          T* h_next = row_ptr(y, token);
          backend::kernels::gru_gates_forward<T>(row_ptr(input_gates, token), row_ptr(hidden_gates, j), bias_ih,
                                                 bias_hh, row_ptr(prev, offset + j), h_next,
                                                 row_ptr(gates, offset + j), hidden);
          if (j < next_active) std::copy(h_next, h_next + hidden, row_ptr(prev, next_offset + j));
        }
      }
    });
  }

  /// Inference: y_last [sequences, H] = the state after each sequence's newest token (the last
  /// rows of forward()). Stores nothing for backward (a later backward() needs a new forward()).
  void forward_last(const ConstMatrixRef<T>& x, const SequenceLayout& layout, MatrixRef<T> y_last,
                    Workspace& ws) const {
    const Index n = layout.num_tokens(), num_seq = layout.num_sequences(), hidden = hidden_;
    require_shape(x, n, input_, "GRU input");
    require_shape(y_last, num_seq, hidden, "GRU last-token output");
    ws.holds_forward = false;
    plan(layout, ws);
    if (n == 0) return;
    auto input_gates = ws.input_gates.resize(n, 3 * hidden);
    gemm_row_blocks(backend::Trans::kNo, backend::Trans::kYes, x, weight(weight_ih_), T(0), input_gates, kTokenBlock);
    const auto w_hh = weight(weight_hh_);
    const T* bias_ih = weight(bias_ih_).data();
    const T* bias_hh = weight(bias_hh_).data();
    auto state = ws.state.zeros(num_seq, hidden);
    auto hidden_gates = ws.hidden_gates.resize(num_seq, 3 * hidden);
    const Index steps = static_cast<Index>(ws.batch_sizes.size());
    for_each_block(ws.batch_sizes[0], kStateBlock, recurrence_cost(n), [&](Index begin, Index block) {
      for (Index t = 0; t < steps; ++t) {
        const Index active = ws.batch_sizes[static_cast<std::size_t>(t)];
        if (active <= begin) break;
        const Index rows = std::min(block, active - begin);
        auto step_gates = hidden_gates.middleRows(begin, rows);
        if (t == 0) {
          step_gates.setZero();
        } else {
          backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), state.middleRows(begin, rows), w_hh, T(0),
                        step_gates);
        }
        for (Index j = begin; j < begin + rows; ++j) {  // the state is updated in place
          const Index token = ws.order_begin[static_cast<std::size_t>(j)] + t;
          backend::kernels::gru_gates_forward<T>(row_ptr(input_gates, token), row_ptr(hidden_gates, j), bias_ih,
                                                 bias_hh, row_ptr(state, j), row_ptr(state, j), nullptr, hidden);
        }
      }
    });
    for (Index j = 0; j < num_seq; ++j) y_last.row(ws.order[static_cast<std::size_t>(j)]) = state.row(j);
  }

  /// One time step for a batch of independent states: x [b, input], h [b, H] -> h_next [b, H]
  /// (h_next may be h itself). Equal to forward() step by step; appends one event to a session.
  void step(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, MatrixRef<T> h_next, Workspace& ws) const {
    const Index batch = x.rows(), hidden = hidden_;
    require_shape(x, batch, input_, "GRU step input");
    require_shape(h, batch, hidden, "GRU step state");
    require_shape(h_next, batch, hidden, "GRU step next state");
    if (batch == 0) return;
    auto input_gates = ws.input_gates.resize(batch, 3 * hidden);
    auto hidden_gates = ws.hidden_gates.resize(batch, 3 * hidden);
    const auto w_ih = weight(weight_ih_), w_hh = weight(weight_hh_);
    const T* bias_ih = weight(bias_ih_).data();
    const T* bias_hh = weight(bias_hh_).data();
    const double cost = static_cast<double>(batch) * 3.0 * hidden * (input_ + hidden);
    for_each_block(batch, kStateBlock, cost, [&](Index begin, Index rows) {
      // Each block reads its rows of h before writing the same rows of h_next.
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), x.middleRows(begin, rows), w_ih, T(0),
                    input_gates.middleRows(begin, rows));
      backend::gemm(backend::Trans::kNo, backend::Trans::kYes, T(1), h.middleRows(begin, rows), w_hh, T(0),
                    hidden_gates.middleRows(begin, rows));
      for (Index j = begin; j < begin + rows; ++j) {
        backend::kernels::gru_gates_forward<T>(row_ptr(input_gates, j), row_ptr(hidden_gates, j), bias_ih, bias_hh,
                                               row_ptr(h, j), row_ptr(h_next, j), nullptr, hidden);
      }
    });
  }

  /// Backpropagation through time. dy [tokens, H] is the gradient w.r.t. every output row of
  /// the matching forward(x, layout, ...), whose workspace ws must be passed back unchanged.
  /// Writes dx [tokens, input] as `mode` says and adds the gradients of all four parameters.
  void backward(const ConstMatrixRef<T>& x, const SequenceLayout& layout, const ConstMatrixRef<T>& dy,
                MatrixRef<T> dx, Workspace& ws, InputGrad mode = InputGrad::kOverwrite) {
    const Index n = layout.num_tokens(), num_seq = layout.num_sequences(), hidden = hidden_;
    require_shape(x, n, input_, "GRU input");
    require_shape(dy, n, hidden, "GRU output gradient");
    require_shape(dx, n, input_, "GRU input gradient");
    check_workspace(layout, ws);
    if (n == 0) return;
    const auto gates = ws.gates.map();
    const auto prev = ws.prev_states.map();
    // dL/d(x W_ih^T) in token order, over the forward projections (no longer needed).
    auto grad_input_gates = ws.input_gates.resize(n, 3 * hidden);
    auto grad_hidden_gates = ws.grad_hidden_gates.resize(n, 3 * hidden);
    auto grad_state = ws.state.resize(num_seq, hidden);
    const auto w_hh = weight(weight_hh_);
    const Index steps = static_cast<Index>(ws.batch_sizes.size());
    for_each_block(ws.batch_sizes[0], kStateBlock, recurrence_cost(n), [&](Index begin, Index block) {
      for (Index t = steps - 1; t >= 0; --t) {
        const Index active = ws.batch_sizes[static_cast<std::size_t>(t)];
        if (active <= begin) continue;  // these sequences start at an earlier step
        const Index rows = std::min(block, active - begin);
        const Index offset = ws.step_offsets[static_cast<std::size_t>(t)];
        const Index next_active = t + 1 < steps ? ws.batch_sizes[static_cast<std::size_t>(t) + 1] : 0;
        // Rows [0, next_active) of grad_state hold dL/dh_t carried back from step t + 1; the
        // sequences whose last token is at step t start from zero.
        const Index fresh = std::max(begin, next_active);
        if (fresh < begin + rows) grad_state.middleRows(fresh, begin + rows - fresh).setZero();
        for (Index j = begin; j < begin + rows; ++j) {
          const Index token = ws.order_begin[static_cast<std::size_t>(j)] + t;
          backend::kernels::gru_gates_backward<T>(row_ptr(gates, offset + j), row_ptr(prev, offset + j),
                                                  row_ptr(dy, token), row_ptr(grad_state, j),
                                                  row_ptr(grad_input_gates, token),
                                                  row_ptr(grad_hidden_gates, offset + j), hidden);
        }
        if (t > 0) {  // dL/dh_{t-1} = dL/dh_t * z + dL/d(h_{t-1} W_hh^T) W_hh
          backend::gemm(backend::Trans::kNo, backend::Trans::kNo, T(1),
                        grad_hidden_gates.middleRows(offset + begin, rows), w_hh, T(1),
                        grad_state.middleRows(begin, rows));
        }
      }
    });
    // dW_hh += sum over tokens of dL/d(h W_hh^T)^T h_{t-1}; the first step (h = 0) adds nothing.
    const Index first = ws.batch_sizes[0];
    if (n > first) {
      gemm_row_blocks(backend::Trans::kYes, backend::Trans::kNo, grad_hidden_gates.bottomRows(n - first),
                      prev.bottomRows(n - first), T(1), params_->grad(weight_hh_), kWeightBlock);
    }
    gemm_row_blocks(backend::Trans::kYes, backend::Trans::kNo, grad_input_gates, x, T(1), params_->grad(weight_ih_),
                    kWeightBlock);
    gemm_row_blocks(backend::Trans::kNo, backend::Trans::kNo, grad_input_gates, weight(weight_ih_),
                    mode == InputGrad::kAccumulate ? T(1) : T(0), dx, kTokenBlock);
    add_column_sums(grad_input_gates, params_->grad(bias_ih_));
    add_column_sums(grad_hidden_gates, params_->grad(bias_hh_));
  }

 private:
  // Work is split into blocks of a fixed number of rows, whatever the thread count, and every
  // GEMM of a block runs single-threaded: each sum then has one order, so results do not depend
  // on the number of threads (oneDNN's and Eigen's own threading may split a product's inner
  // dimension differently for 1 and 2 threads).
  static constexpr Index kStateBlock = 32;    // sequences per block of a recurrent step
  static constexpr Index kTokenBlock = 256;   // tokens per block of the input projection and dx
  static constexpr Index kWeightBlock = 48;   // weight rows per block of dW_ih and dW_hh
  // Multiply-adds below which a region runs on the calling thread only (waking threads costs more).
  static constexpr double kParallelCost = 200000.0;

  /// Multiply-adds of the recurrence over `tokens` tokens.
  double recurrence_cost(Index tokens) const { return static_cast<double>(tokens) * 3.0 * hidden_ * hidden_; }

  ConstMatrixMap<T> weight(Index id) const { return std::as_const(*params_).value(id); }

  /// Start of row i of a row-major matrix, map or Ref.
  template <typename MatrixLike>
  static auto row_ptr(MatrixLike&& m, Index i) {
    return m.data() + i * m.outerStride();
  }

  /// Calls body(begin, rows) for consecutive blocks of at most block_rows of [0, total), on the
  /// library's threads when `cost` (multiply-adds) pays for them. GEMMs inside run single-threaded.
  template <typename Body>
  static void for_each_block(Index total, Index block_rows, double cost, Body&& body) {
    const Index blocks = (total + block_rows - 1) / block_rows;
    if (!(blocks > 1 && cost >= kParallelCost && !parallel::in_parallel())) {
      // On this thread, without entering an OpenMP region (a one-thread region still makes
      // libgomp allocate a team): nested GEMMs single-threaded as in the parallel case.
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      try {
        for (Index b = 0; b < blocks; ++b) body(b * block_rows, std::min(block_rows, total - b * block_rows));
      } catch (...) {
        omp_set_num_threads(threads);
        throw;
      }
      omp_set_num_threads(threads);
      return;
    }
    parallel::ExceptionCollector errors;
#pragma omp parallel
    {
      omp_set_num_threads(1);  // this region's tasks only: nested GEMMs stay on their thread
#pragma omp for schedule(dynamic, 1)  // recurrence blocks differ in length (sequences sorted by it)
      for (Index b = 0; b < blocks; ++b) {
        errors.run([&] { body(b * block_rows, std::min(block_rows, total - b * block_rows)); });
      }
    }
    errors.rethrow();
  }

  /// C = op(A) op(B) + beta C in blocks of block_rows rows of C (rows of A, or columns of A^T).
  static void gemm_row_blocks(backend::Trans trans_a, backend::Trans trans_b, const ConstMatrixRef<T>& a,
                              const ConstMatrixRef<T>& b, T beta, MatrixRef<T> c, Index block_rows) {
    const Index inner = trans_a == backend::Trans::kNo ? a.cols() : a.rows();
    const double cost = static_cast<double>(c.rows()) * c.cols() * inner;
    for_each_block(c.rows(), block_rows, cost, [&](Index begin, Index rows) {
      if (trans_a == backend::Trans::kNo) {
        backend::gemm(trans_a, trans_b, T(1), a.middleRows(begin, rows), b, beta, c.middleRows(begin, rows));
      } else {
        backend::gemm(trans_a, trans_b, T(1), a.middleCols(begin, rows), b, beta, c.middleRows(begin, rows));
      }
    });
  }

  /// bias += the sum of m's rows, row after row (a fixed order; three times faster than
  /// Eigen's colwise().sum() on row-major storage).
  static void add_column_sums(const MatrixMap<T>& m, MatrixMap<T> bias) {
    auto total = bias.row(0);
    for (Index i = 0; i < m.rows(); ++i) total += m.row(i);
  }

  /// Orders the sequences by decreasing length and lays out the steps (no allocation once the
  /// vectors have grown).
  static void plan(const SequenceLayout& layout, Workspace& ws) {
    const Index num_seq = layout.num_sequences();
    ws.order.resize(static_cast<std::size_t>(num_seq));
    std::iota(ws.order.begin(), ws.order.end(), Index(0));
    std::sort(ws.order.begin(), ws.order.end(), [&layout](Index a, Index b) {
      const Index la = layout.length(a), lb = layout.length(b);
      return la != lb ? la > lb : a < b;
    });
    ws.order_begin.resize(static_cast<std::size_t>(num_seq));
    for (Index j = 0; j < num_seq; ++j) {
      ws.order_begin[static_cast<std::size_t>(j)] = layout.begin(ws.order[static_cast<std::size_t>(j)]);
    }
    const Index steps = num_seq > 0 ? layout.length(ws.order[0]) : 0;
    ws.batch_sizes.resize(static_cast<std::size_t>(steps));
    ws.step_offsets.resize(static_cast<std::size_t>(steps) + 1);
    ws.step_offsets[0] = 0;
    Index active = num_seq;
    for (Index t = 0; t < steps; ++t) {
      while (active > 0 && layout.length(ws.order[static_cast<std::size_t>(active) - 1]) <= t) --active;
      ws.batch_sizes[static_cast<std::size_t>(t)] = active;
      ws.step_offsets[static_cast<std::size_t>(t) + 1] = ws.step_offsets[static_cast<std::size_t>(t)] + active;
    }
  }

  /// backward() needs the workspace of a forward() over the same layout (same token count and
  /// the same first row of every sequence, which fixes every length).
  static void check_workspace(const SequenceLayout& layout, const Workspace& ws) {
    const Index num_seq = layout.num_sequences();
    bool same = ws.holds_forward && ws.gates.rows() == layout.num_tokens() &&
                static_cast<Index>(ws.order.size()) == num_seq;
    for (Index j = 0; same && j < num_seq; ++j) {
      const Index s = ws.order[static_cast<std::size_t>(j)];
      same = s >= 0 && s < num_seq && layout.begin(s) == ws.order_begin[static_cast<std::size_t>(j)];
    }
    if (!same) {
      throw ShapeError(detail::concat("GRU backward: the workspace does not hold a forward() over this layout (",
                                      num_seq, " sequences, ", layout.num_tokens(), " tokens)"));
    }
  }

  Parameters<T>* params_;
  Index input_, hidden_;
  Index weight_ih_ = -1, weight_hh_ = -1, bias_ih_ = -1, bias_hh_ = -1;
};

}  // namespace distillrec::nn
