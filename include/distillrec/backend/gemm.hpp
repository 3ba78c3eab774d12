// distillrec/backend/gemm.hpp
//
// General matrix multiply, the one entry point every layer uses:
//
//     C = alpha * op(A) * op(B) + beta * C,      op(X) = X or X^T,  all matrices row-major.
//
// Two implementations: a plain Eigen reference (always available, used for double) and
// oneDNN's row-major sgemm, switched on by linking the CMake target distillrec::onednn, which
// carries both the link and the DISTILLREC_WITH_ONEDNN macro so the two can never disagree.
// With beta == 0 the previous contents of C are ignored (may be uninitialised or NaN).
// Shapes are checked on every call and a mismatch throws ShapeError.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>

#ifdef DISTILLREC_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace distillrec::backend {

enum class Trans { kNo, kYes };

/// Which implementation gemm() dispatches float products to.
enum class GemmBackend { kEigen, kOneDnn };

inline constexpr bool kHasOneDnn =
#ifdef DISTILLREC_WITH_ONEDNN
    true;
#else
    false;
#endif

namespace detail {

template <typename MatrixLike>
Index op_rows(const MatrixLike& m, Trans t) {
  return t == Trans::kNo ? m.rows() : m.cols();
}
template <typename MatrixLike>
Index op_cols(const MatrixLike& m, Trans t) {
  return t == Trans::kNo ? m.cols() : m.rows();
}

template <typename T>
void check_gemm_shapes(Trans trans_a, Trans trans_b, const Eigen::Ref<const Matrix<T>>& a,
                       const Eigen::Ref<const Matrix<T>>& b, const Eigen::Ref<Matrix<T>>& c) {
  const Index m = op_rows(a, trans_a);
  const Index k = op_cols(a, trans_a);
  const Index kb = op_rows(b, trans_b);
  const Index n = op_cols(b, trans_b);
  if (k != kb || c.rows() != m || c.cols() != n) {
    throw ShapeError(distillrec::detail::concat(
        "gemm: op(A) is ", m, "x", k, ", op(B) is ", kb, "x", n, ", C is ", c.rows(), "x",
        c.cols(), "; expected op(A) cols == op(B) rows and C == ", m, "x", n));
  }
}

template <typename T, typename A, typename B>
void eigen_product(T alpha, const A& a, const B& b, T beta, Eigen::Ref<Matrix<T>>& c) {
  if (beta == T(0)) {
    c.noalias() = alpha * (a * b);
  } else {
    if (beta != T(1)) c *= beta;
    c.noalias() += alpha * (a * b);
  }
}

}  // namespace detail

/// Eigen reference implementation (any scalar type).
template <typename T>
void gemm_eigen(Trans trans_a, Trans trans_b, T alpha, const Eigen::Ref<const Matrix<T>>& a,
                const Eigen::Ref<const Matrix<T>>& b, T beta, Eigen::Ref<Matrix<T>> c) {
  detail::check_gemm_shapes<T>(trans_a, trans_b, a, b, c);
  if (c.size() == 0) return;
  if (detail::op_cols(a, trans_a) == 0) {
    if (beta == T(0)) c.setZero(); else c *= beta;
    return;
  }
  if (trans_a == Trans::kNo && trans_b == Trans::kNo) {
    detail::eigen_product(alpha, a, b, beta, c);
  } else if (trans_a == Trans::kNo) {
    detail::eigen_product(alpha, a, b.transpose(), beta, c);
  } else if (trans_b == Trans::kNo) {
    detail::eigen_product(alpha, a.transpose(), b, beta, c);
  } else {
    detail::eigen_product(alpha, a.transpose(), b.transpose(), beta, c);
  }
}

#ifdef DISTILLREC_WITH_ONEDNN
/// oneDNN row-major sgemm (float only).
inline void gemm_onednn(Trans trans_a, Trans trans_b, float alpha,
                        const Eigen::Ref<const Matrix<float>>& a,
                        const Eigen::Ref<const Matrix<float>>& b, float beta,
                        Eigen::Ref<Matrix<float>> c) {
  detail::check_gemm_shapes<float>(trans_a, trans_b, a, b, c);
  if (c.size() == 0) return;
  const Index m = c.rows();
  const Index n = c.cols();
  const Index k = detail::op_cols(a, trans_a);
  if (k == 0) {
    if (beta == 0.0f) c.setZero(); else c *= beta;
    return;
  }
  // Leading dimensions of row-major operands are their outer strides (at least 1).
  const auto lda = static_cast<dnnl_dim_t>(std::max<Index>(a.outerStride(), a.cols()));
  const auto ldb = static_cast<dnnl_dim_t>(std::max<Index>(b.outerStride(), b.cols()));
  const auto ldc = static_cast<dnnl_dim_t>(std::max<Index>(c.outerStride(), c.cols()));
  const dnnl_status_t status =
      dnnl_sgemm(trans_a == Trans::kYes ? 'T' : 'N', trans_b == Trans::kYes ? 'T' : 'N', m, n, k,
                 alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  if (status != dnnl_success) {
    throw Error(distillrec::detail::concat("oneDNN sgemm failed with status ",
                                           static_cast<int>(status), " for ", m, "x", n, "x", k));
  }
}
#endif

/// The backend gemm() uses for float.
inline GemmBackend default_gemm_backend() {
  return kHasOneDnn ? GemmBackend::kOneDnn : GemmBackend::kEigen;
}

/// C = alpha * op(A) * op(B) + beta * C (float: oneDNN when linked, else Eigen).
inline void gemm(Trans trans_a, Trans trans_b, float alpha, const Eigen::Ref<const Matrix<float>>& a,
                 const Eigen::Ref<const Matrix<float>>& b, float beta, Eigen::Ref<Matrix<float>> c) {
#ifdef DISTILLREC_WITH_ONEDNN
  gemm_onednn(trans_a, trans_b, alpha, a, b, beta, c);
#else
  gemm_eigen<float>(trans_a, trans_b, alpha, a, b, beta, c);
#endif
}

/// C = alpha * op(A) * op(B) + beta * C (double: always Eigen; used by gradient checks).
inline void gemm(Trans trans_a, Trans trans_b, double alpha,
                 const Eigen::Ref<const Matrix<double>>& a, const Eigen::Ref<const Matrix<double>>& b,
                 double beta, Eigen::Ref<Matrix<double>> c) {
  gemm_eigen<double>(trans_a, trans_b, alpha, a, b, beta, c);
}

}  // namespace distillrec::backend
