// distillrec/backend/bf16_gemm.hpp
//
// bfloat16 products with fp32 accumulation, for the catalogue-sized GEMMs of training
// (loss/softmax_ce.hpp under MatmulPrecision::kBf16) and the same conversions serving uses
// (serve/item_scorer.hpp):
//
//     C[m, n] = op(A) op(B)  (+ C when accumulating),   A, B bfloat16 (row-major, contiguous),
//                                                       C fp32 (row stride ldc)
//
// Where oneDNN is linked and has a bf16 matmul for the CPU (AVX512-BF16 or AMX; oneDNN 2.6
// creates none on AVX2-only CPUs), the product runs as a oneDNN matmul primitive, created the
// first time a shape is seen and cached in the Bf16Gemm object (M may be a runtime dimension, so
// blocks of varying height share one primitive). Elsewhere, or with `portable`, the bfloat16
// operands are widened to fp32 and multiplied by gemm(): the same products (a bf16 x bf16
// product is exact in fp32) summed in fp32, in another order, and slower than fp32 itself.
// description() says which path runs.
//
// A Bf16Gemm is not safe to use from several threads at once (each owner keeps its own, e.g. in a
// loss's workspace); the primitives it runs use all of the library's threads.
#pragma once

#include "distillrec/backend/gemm.hpp"
#include "distillrec/backend/parallel.hpp"
#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#ifdef DISTILLREC_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace distillrec::backend {

/// Precision of the catalogue GEMMs in training: fp32, or bfloat16 inputs with fp32 accumulation.
enum class MatmulPrecision { kFp32, kBf16 };

inline std::string to_string(MatmulPrecision precision) {
  return precision == MatmulPrecision::kBf16 ? "bf16" : "fp32";
}

inline MatmulPrecision parse_matmul_precision(const std::string& name) {
  if (name == "fp32") return MatmulPrecision::kFp32;
  if (name == "bf16") return MatmulPrecision::kBf16;
  throw ConfigError("unknown matmul precision \"" + name + "\" (expected fp32 or bf16)");
}

namespace bf16 {

/// float to bfloat16, rounding to nearest even (the conversion oneDNN and AVX512-BF16 use);
/// NaN stays NaN. Branch-free, so loops over it vectorise.
inline std::uint16_t from_float(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<std::uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

inline float to_float(std::uint16_t value) {
  const std::uint32_t bits = static_cast<std::uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

/// dst[i] = from_float(src[i]) for i < n.
inline void convert(const float* src, std::uint16_t* dst, Index n) {
  for (Index i = 0; i < n; ++i) dst[i] = from_float(src[i]);
}

/// The rows of a float matrix (any row stride) as contiguous bfloat16 rows; rows run in parallel
/// when there are many (not from inside a parallel region).
inline void convert_rows(const ConstMatrixRef<float>& src, std::uint16_t* dst) {
  const Index rows = src.rows(), cols = src.cols();
  parallel::for_each(rows, rows * cols > 65536 && !parallel::in_parallel(),
                     [&](Index r, int) { convert(src.row(r).data(), dst + r * cols, cols); });
}

}  // namespace bf16

/// Whether this build and CPU multiply bfloat16 natively through oneDNN (false without oneDNN
/// and on CPUs without AVX512-BF16 or AMX). Creates, and discards, one small primitive.
inline bool has_native_bf16_matmul() {
#ifdef DISTILLREC_WITH_ONEDNN
  try {
    using dnnl::memory;
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    const memory::desc a({16, 32}, memory::data_type::bf16, memory::format_tag::ab);
    const memory::desc b({32, 16}, memory::data_type::bf16, memory::format_tag::ab);
    const memory::desc c({16, 16}, memory::data_type::f32, memory::format_tag::ab);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), engine);
    return std::string(pd.impl_info_str()).rfind("ref", 0) != 0;  // a reference kernel is no native path
  } catch (const dnnl::error&) {
    return false;
  }
#else
  return false;
#endif
}

#ifdef DISTILLREC_WITH_ONEDNN
namespace onednn {

/// A row-major-or-transposed 2-D memory descriptor built on stack arrays (the C++ API's
/// memory::dims are std::vectors: a heap allocation per descriptor).
inline dnnl_memory_desc_t plain_desc(Index rows, Index cols, dnnl_data_type_t type, Index row_stride, Index col_stride) {
  dnnl_memory_desc_t desc;
  const dnnl_dims_t dims = {static_cast<dnnl_dim_t>(rows), static_cast<dnnl_dim_t>(cols)};
  const dnnl_dims_t strides = {static_cast<dnnl_dim_t>(row_stride), static_cast<dnnl_dim_t>(col_stride)};
  if (dnnl_memory_desc_init_by_strides(&desc, 2, dims, type, strides) != dnnl_success) {
    throw Error(distillrec::detail::concat("oneDNN: cannot describe a ", rows, "x", cols, " matrix"));
  }
  return desc;
}

/// A buffer of `bytes` bytes (a user-managed scratchpad).
inline dnnl_memory_desc_t bytes_desc(std::size_t bytes) {
  dnnl_memory_desc_t desc;
  const dnnl_dims_t dims = {static_cast<dnnl_dim_t>(bytes)};
  if (dnnl_memory_desc_init_by_tag(&desc, 1, dims, dnnl_u8, dnnl_a) != dnnl_success) {
    throw Error(distillrec::detail::concat("oneDNN: cannot describe a buffer of ", bytes, " bytes"));
  }
  return desc;
}

/// One argument of a primitive: its oneDNN argument id, descriptor and data.
struct Argument {
  int id;
  dnnl_memory_desc_t desc;
  void* data;
};

/// Executes a primitive on up to 4 arguments and waits for it. Through the C API with stack
/// arrays, so the calling code allocates nothing (the C++ API's memory handles and argument map
/// allocate on every call; what oneDNN allocates inside is its own, as in its sgemm).
inline void execute(const dnnl::primitive& primitive, const dnnl::engine& engine, const dnnl::stream& stream,
                    std::initializer_list<Argument> arguments) {
  constexpr std::size_t kMax = 4;
  DISTILLREC_ASSERT(arguments.size() <= kMax);
  dnnl_memory_t memories[kMax] = {};
  dnnl_exec_arg_t args[kMax];
  int count = 0;
  dnnl_status_t status = dnnl_success;
  for (const Argument& a : arguments) {
    status = dnnl_memory_create(&memories[count], &a.desc, engine.get(), a.data);
    if (status != dnnl_success) break;
    args[count] = {a.id, memories[count]};
    ++count;
  }
  if (status == dnnl_success) status = dnnl_primitive_execute(primitive.get(), stream.get(), count, args);
  if (status == dnnl_success) status = dnnl_stream_wait(stream.get());
  for (int i = 0; i < count; ++i) dnnl_memory_destroy(memories[i]);
  if (status != dnnl_success) throw Error(distillrec::detail::concat("oneDNN: executing a primitive failed with status ", static_cast<int>(status)));
}

}  // namespace onednn
#endif

class Bf16Gemm {
 public:
  /// portable: always widen to fp32 and use gemm() (the path of CPUs without bf16 matmul).
  explicit Bf16Gemm(bool portable = false) : portable_(portable) {}

  /// c (m x n, row stride ldc >= n) = op(a) op(b) (+ c when `accumulate`). a is stored
  /// [m, k] (kNo) or [k, m] (kYes), b [k, n] (kNo) or [n, k] (kYes), both contiguous bfloat16.
  /// `fixed_m`: m is part of the cached shape (for oneDNN's fastest kernels, when the same m
  /// recurs); otherwise one primitive serves every m.
  void run(Trans trans_a, Trans trans_b, Index m, Index n, Index k, const std::uint16_t* a, const std::uint16_t* b,
           float* c, Index ldc, bool accumulate, bool fixed_m = false) {
    if (m < 0 || n < 0 || k < 0 || ldc < n) {
      throw ShapeError(distillrec::detail::concat("bf16 gemm: invalid shape ", m, "x", n, "x", k, " with row stride ", ldc));
    }
    if (m == 0 || n == 0) return;
    if (k == 0) {
      if (!accumulate) {
        for (Index i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
      }
      return;
    }
#ifdef DISTILLREC_WITH_ONEDNN
    if (!portable_) {
      if (Entry* entry = primitive_for(trans_a, trans_b, fixed_m ? m : -1, n, k, ldc, accumulate)) {
        execute(*entry, trans_a, trans_b, m, n, k, a, b, c, ldc);
        return;
      }
    }
#else
    (void)fixed_m;  // only oneDNN's primitives have shapes to cache
#endif
    widen_and_multiply(trans_a, trans_b, m, n, k, a, b, c, ldc, accumulate);
  }

  /// What the products ran on: the oneDNN implementations used, and/or the widened path.
  std::string description() const {
    std::string impls;
#ifdef DISTILLREC_WITH_ONEDNN
    for (const Entry& e : cache_) {
      if (e.used && impls.find(e.impl) == std::string::npos) impls += (impls.empty() ? "" : ", ") + e.impl;
    }
#endif
    std::string out = impls.empty() ? std::string() : "oneDNN bf16 matmul (" + impls + ")";
    if (widened_) {
      out += out.empty() ? "" : "; ";
      out += portable_ ? "portable path: bfloat16 widened to fp32, fp32 GEMM"
                       : "bfloat16 widened to fp32, fp32 GEMM (no oneDNN bf16 matmul on this machine)";
    }
    return out.empty() ? "no product run yet" : out;
  }

  /// True once a product ran on a oneDNN bf16 primitive.
  bool native() const {
    return std::any_of(cache_.begin(), cache_.end(), [](const Entry& e) { return e.used; });
  }

 private:
  struct Entry {
    Trans trans_a, trans_b;
    Index m, n, k, ldc;  // m = -1: a runtime dimension
    bool accumulate;
    bool used = false;  // has run a product
#ifdef DISTILLREC_WITH_ONEDNN
    std::shared_ptr<dnnl::matmul> primitive;  // null: oneDNN has no native bf16 kernel for it
    std::string impl;
#endif
  };

  void widen_and_multiply(Trans trans_a, Trans trans_b, Index m, Index n, Index k, const std::uint16_t* a,
                          const std::uint16_t* b, float* c, Index ldc, bool accumulate) {
    const Index a_rows = trans_a == Trans::kNo ? m : k, a_cols = trans_a == Trans::kNo ? k : m;
    const Index b_rows = trans_b == Trans::kNo ? k : n, b_cols = trans_b == Trans::kNo ? n : k;
    wide_a_.resize(static_cast<std::size_t>(a_rows * a_cols));
    wide_b_.resize(static_cast<std::size_t>(b_rows * b_cols));
    widen(a, wide_a_.data(), a_rows * a_cols);
    widen(b, wide_b_.data(), b_rows * b_cols);
    const ConstMatrixMap<float> wa(wide_a_.data(), a_rows, a_cols), wb(wide_b_.data(), b_rows, b_cols);
    MatrixStridedMap out(c, m, n, Eigen::OuterStride<>(ldc));
    gemm(trans_a, trans_b, 1.0f, wa, wb, accumulate ? 1.0f : 0.0f, out);
    widened_ = true;
  }

  static void widen(const std::uint16_t* src, float* dst, Index n) {
    parallel::for_each((n + 65535) / 65536, n > 65536 && !parallel::in_parallel(), [&](Index chunk, int) {
      const Index begin = chunk * 65536, end = std::min(n, begin + 65536);
      for (Index i = begin; i < end; ++i) dst[i] = bf16::to_float(src[i]);
    });
  }

  using MatrixStridedMap = Eigen::Map<Matrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;

#ifdef DISTILLREC_WITH_ONEDNN
  Entry* primitive_for(Trans trans_a, Trans trans_b, Index m, Index n, Index k, Index ldc, bool accumulate) {
    for (Entry& e : cache_) {
      if (e.trans_a == trans_a && e.trans_b == trans_b && e.m == m && e.n == n && e.k == k && e.ldc == ldc &&
          e.accumulate == accumulate) {
        return e.primitive ? &e : nullptr;
      }
    }
    using dnnl::memory;
    Entry entry{trans_a, trans_b, m, n, k, ldc, accumulate, false, nullptr, {}};
    try {
      if (!engine_) engine_ = std::make_unique<dnnl::engine>(dnnl::engine::kind::cpu, 0);
      const memory::dim rm = m < 0 ? DNNL_RUNTIME_DIM_VAL : static_cast<memory::dim>(m);
      const auto dn = static_cast<memory::dim>(n), dk = static_cast<memory::dim>(k);
      const memory::desc a({rm, dk}, memory::data_type::bf16, trans_a == Trans::kNo ? memory::format_tag::ab : memory::format_tag::ba);
      const memory::desc b({dk, dn}, memory::data_type::bf16, trans_b == Trans::kNo ? memory::format_tag::ab : memory::format_tag::ba);
      const memory::desc c({rm, dn}, memory::data_type::f32, {static_cast<memory::dim>(ldc), 1});
      dnnl::primitive_attr attr;
      if (accumulate) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
      }
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, *engine_);
      entry.impl = pd.impl_info_str();
      if (entry.impl.rfind("ref", 0) != 0) entry.primitive = std::make_shared<dnnl::matmul>(pd);
    } catch (const dnnl::error&) {
      entry.primitive.reset();  // e.g. no bf16 matmul on an AVX2-only CPU: the portable path runs
    }
    cache_.push_back(std::move(entry));
    return cache_.back().primitive ? &cache_.back() : nullptr;
  }

  void execute(Entry& entry, Trans trans_a, Trans trans_b, Index m, Index n, Index k, const std::uint16_t* a,
               const std::uint16_t* b, float* c, Index ldc) {
    if (!stream_) stream_ = std::make_unique<dnnl::stream>(*engine_);
    // op(a) [m, k] and op(b) [k, n] over row-major storage: a transposed operand swaps strides.
    const auto a_desc = trans_a == Trans::kNo ? onednn::plain_desc(m, k, dnnl_bf16, k, 1) : onednn::plain_desc(m, k, dnnl_bf16, 1, m);
    const auto b_desc = trans_b == Trans::kNo ? onednn::plain_desc(k, n, dnnl_bf16, n, 1) : onednn::plain_desc(k, n, dnnl_bf16, 1, k);
    onednn::execute(*entry.primitive, *engine_, *stream_,
                    {{DNNL_ARG_SRC, a_desc, const_cast<std::uint16_t*>(a)},
                     {DNNL_ARG_WEIGHTS, b_desc, const_cast<std::uint16_t*>(b)},
                     {DNNL_ARG_DST, onednn::plain_desc(m, n, dnnl_f32, ldc, 1), c}});
    entry.used = true;
  }

  std::unique_ptr<dnnl::engine> engine_;
  std::unique_ptr<dnnl::stream> stream_;
#endif

  bool portable_ = false;
  bool widened_ = false;
  std::vector<Entry> cache_;
  std::vector<float> wide_a_, wide_b_;
};

}  // namespace distillrec::backend
