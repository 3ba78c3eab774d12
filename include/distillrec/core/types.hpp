// distillrec/core/types.hpp
//
// Row-major matrix aliases used throughout the library. One row is one token, one example or
// one item: the layout of PyTorch tensors, safetensors files and oneDNN's row-major GEMM, so
// weights and activations cross those boundaries without transposes or copies.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <vector>

namespace distillrec {

/// Signed index type for sizes and offsets (Eigen's).
using Index = Eigen::Index;

/// Dense item id after remapping: 1..num_items are items, 0 is padding.
using ItemId = std::int32_t;

/// Id 0 is reserved for padding in every sequence and item table.
inline constexpr ItemId kPaddingId = 0;

template <typename T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

template <typename T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

/// Views on memory owned elsewhere (parameter buffers, workspaces, mapped files).
template <typename T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <typename T>
using VectorMap = Eigen::Map<Vector<T>>;
template <typename T>
using ConstVectorMap = Eigen::Map<const Vector<T>>;

/// Function arguments: accept matrices, maps and row blocks (inner stride 1) without copies.
template <typename T>
using MatrixRef = Eigen::Ref<Matrix<T>>;
template <typename T>
using ConstMatrixRef = Eigen::Ref<const Matrix<T>>;

/// A user's chronological item history (dense ids, no padding).
using Sequence = std::vector<ItemId>;

}  // namespace distillrec
