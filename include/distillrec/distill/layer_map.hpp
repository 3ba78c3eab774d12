// distillrec/distill/layer_map.hpp
//
// SLMRec's block-wise pairing of teacher and student layers (methods.md §1.7). A teacher of M
// layers and a student of N layers are both cut into B blocks; block i (1..B) ends at teacher
// hidden index m*i and student hidden index n*i, m = M / B, n = N / B. Hidden indices follow
// models/llm_rec.hpp: 0 = block input, k = after layer k, the last index (M or N) = after the
// final norm. With the defaults M = 32, N = 8, B = 4: teacher {8, 16, 24, 32} <-> student
// {2, 4, 6, 8}.
//
// The multi-supervision heads sit on the student's intermediate block ends n*i, i = 1..B-1 (the
// last block is supervised by the main cross-entropy). The reference computes them as
// ((N+1) // B) * i, which equals n*i whenever B divides N, the only case accepted here.
//
// M and N must be multiples of B (the reference silently floors m and n, so a 30-layer teacher
// with B = 4 would be aligned at layers 7, 14, 21, 28 and never at its output); anything else
// is a ConfigError.
#pragma once

#include "distillrec/core/error.hpp"
#include "distillrec/core/types.hpp"

#include <string>
#include <vector>

namespace distillrec::distill {

struct LayerPair {
  Index teacher = 0;  // teacher hidden-state index
  Index student = 0;  // student hidden-state index
};

struct LayerMap {
  Index teacher_layers = 0;
  Index student_layers = 0;
  Index blocks = 0;
  std::vector<LayerPair> pairs;              // one per block, in order
  std::vector<Index> supervision_layers;     // student indices of the B - 1 intermediate block ends

  std::vector<Index> teacher_indices() const {
    std::vector<Index> v;
    for (const auto& p : pairs) v.push_back(p.teacher);
    return v;
  }
  std::vector<Index> student_indices() const {
    std::vector<Index> v;
    for (const auto& p : pairs) v.push_back(p.student);
    return v;
  }

  std::string describe() const {
    std::string s;
    for (const auto& p : pairs) s += (s.empty() ? "" : ", ") + detail::concat("teacher ", p.teacher, " <-> student ", p.student);
    return s;
  }
};

inline LayerMap make_layer_map(Index teacher_layers, Index student_layers, Index blocks) {
  if (teacher_layers <= 0 || student_layers <= 0 || blocks <= 0) {
    throw ConfigError(detail::concat("layer map: teacher layers (", teacher_layers, "), student layers (", student_layers,
                                     ") and blocks (", blocks, ") must be positive"));
  }
  if (teacher_layers % blocks != 0 || student_layers % blocks != 0) {
    throw ConfigError(detail::concat("layer map: ", blocks, " blocks do not divide a ", teacher_layers, "-layer teacher and a ",
                                     student_layers, "-layer student (both layer counts must be multiples of the block count)"));
  }
  if (student_layers > teacher_layers) {
    throw ConfigError(detail::concat("layer map: the student (", student_layers, " layers) is deeper than the teacher (",
                                     teacher_layers, " layers)"));
  }
  LayerMap map;
  map.teacher_layers = teacher_layers;
  map.student_layers = student_layers;
  map.blocks = blocks;
  const Index m = teacher_layers / blocks, n = student_layers / blocks;
  for (Index i = 1; i <= blocks; ++i) map.pairs.push_back({m * i, n * i});
  for (Index i = 1; i < blocks; ++i) map.supervision_layers.push_back(n * i);
  return map;
}

}  // namespace distillrec::distill
