// distillrec/serve/packed_table.hpp
//
// Item tables packed in panels of 16 items, and the kernels that score a few users against
// them: one user's query, a session's recommendation, the last users of a batch. A general
// GEMM tiles for many rows and runs far below the memory bandwidth at one row; these kernels
// read every byte of the table once per pass, 16 items at a time, with the users' values
// broadcast, so one user's scoring costs about what streaming the table costs.
//
//   PackedBf16Table  word (panel p, pair c, lane i) = item 16p + i's dimensions 2c (low half)
//                    and 2c + 1 (high half) in bfloat16; users as the same bfloat16 pairs.
//                    Each word is one VDPBF16PS step on CPUs with AVX512-BF16; elsewhere the
//                    two products are summed in the same order (high, then low) with fp32
//                    FMAs of xsimd batches.
//   PackedInt8Table  word (p, c, i) = item 16p + i's int8 dimensions 4c .. 4c + 3; users as
//                    unsigned 8-bit quadruples. One VPDPBUSD step per word with AVX512-VNNI;
//                    elsewhere exact int32 arithmetic on xsimd batches (the sums are exact
//                    integers either way, so every path gives identical results).
//
// Dimensions are padded to whole pairs or quadruples with zero weights, items to whole panels
// with zero rows (their scores are computed and never written out). Both are read-only after
// build: any number of threads may score against one table at once.
//
// Which instructions run is fixed when the library is compiled (__AVX512BF16__,
// __AVX512VNNI__: -march=native on such a CPU, or the matching -m flags); code compiled for
// AVX2 runs the xsimd paths, correct on every x86-64 CPU it was compiled for.
#pragma once

#include "distillrec/core/types.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && (defined(__AVX512BF16__) || defined(__AVX512VNNI__))
#include <immintrin.h>
#endif

namespace distillrec::serve::detail {

/// Items per panel (one 512-bit vector of fp32 or int32 scores).
inline constexpr Index kPanel = 16;

/// The compiled code uses AVX512-BF16's VDPBF16PS for bf16 tables.
inline constexpr bool kBf16DotInstruction =
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    true;
#else
    false;
#endif

/// The compiled code uses AVX512-VNNI's VPDPBUSD for int8 tables.
inline constexpr bool kVnniInstruction =
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
    true;
#else
    false;
#endif

inline Index panels_for(Index items) { return (items + kPanel - 1) / kPanel; }

/// A table in panels (see the top of this file): each 32-bit word holds kPerWord consecutive
/// dimensions of one item (element b in bits 32 / kPerWord * b and up), dimensions padded with
/// zeros to whole words. Element is the table's (std::uint16_t bfloat16 bits, or std::int8_t).
template <typename Element, int kPerWord>
struct PackedTable {
  static_assert(sizeof(Element) * kPerWord == sizeof(std::uint32_t), "a word holds kPerWord elements");
  Index items = 0, dim = 0, words_per_item = 0, panels = 0;
  std::vector<std::uint32_t> words;  // [panels][words_per_item][16]

  /// From a row-major [items, dim] table.
  void build(const Element* rows, Index num_items, Index num_dims) {
    items = num_items;
    dim = num_dims;
    words_per_item = (dim + kPerWord - 1) / kPerWord;
    panels = panels_for(items);
    words.assign(static_cast<std::size_t>(panels * words_per_item * kPanel), 0u);
    for (Index j = 0; j < items; ++j) {
      std::uint32_t* panel = words.data() + (j / kPanel) * words_per_item * kPanel + j % kPanel;
      for (Index c = 0; c < words_per_item; ++c) panel[c * kPanel] = word(rows + j * dim, c);
    }
  }

  std::size_t bytes() const { return words.size() * sizeof(std::uint32_t); }

  /// A user's values (the same element width: bfloat16 bits, or unsigned 8-bit codes) as the
  /// table's words (out has words_per_item of them; padding multiplies zero weights).
  template <typename UserElement>
  void pack_user(const UserElement* user, std::uint32_t* out) const {
    static_assert(sizeof(UserElement) == sizeof(Element), "users are packed like the table");
    for (Index c = 0; c < words_per_item; ++c) out[c] = word(user, c);
  }

 private:
  template <typename E>
  std::uint32_t word(const E* values, Index c) const {
    constexpr int kBits = 32 / kPerWord;
    std::uint32_t w = 0;
    for (Index b = 0; b < kPerWord; ++b) {
      if (kPerWord * c + b < dim) {
        w |= static_cast<std::uint32_t>(static_cast<std::make_unsigned_t<E>>(values[kPerWord * c + b])) << (kBits * b);
      }
    }
    return w;
  }
};

/// bfloat16 pairs: word (panel p, c, lane i) = item 16p + i's dimensions 2c (low half), 2c + 1.
using PackedBf16Table = PackedTable<std::uint16_t, 2>;
/// int8 quadruples: word (p, c, i) = item 16p + i's dimensions 4c .. 4c + 3.
using PackedInt8Table = PackedTable<std::int8_t, 4>;

/// Where the kernels write: row r's score of panel-relative item j goes to out[r * ld + j], for
/// j < count (the items first_panel * 16 .. first_panel * 16 + count - 1).
struct PanelOutput {
  float* out;
  Index ld;
  Index count;
};

namespace kernels {

// f(integral_constant<int, 0>) .. f(integral_constant<int, N - 1>), unrolled whatever the
// optimisation level: the kernels' accumulators stay in registers when a host compiles at -O2
// (a loop over them is not unrolled there, and every step then goes through the stack).
template <typename F, int... I>
inline void unrolled_impl(F& f, std::integer_sequence<int, I...> /*indices*/) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void unrolled(F&& f) {
  unrolled_impl(f, std::make_integer_sequence<int, N>{});
}

// Writes the 16 scores of panel q (relative to the pass's first panel) of one row, or the part
// of them inside `count`.
template <typename Store>
inline void store_panel(const PanelOutput& o, Index row, Index q, Store&& store) {
  const Index begin = q * kPanel;
  const Index n = std::min<Index>(kPanel, o.count - begin);
  if (n <= 0) return;
  float* dst = o.out + row * o.ld + begin;
  if (n == kPanel) {
    store(dst);
  } else {
    alignas(64) float tmp[kPanel];
    store(tmp);
    std::memcpy(dst, tmp, static_cast<std::size_t>(n) * sizeof(float));
  }
}

// ---- bf16 -------------------------------------------------------------------------------------

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// R users x P consecutive panels: R * P independent accumulators hide the dot's latency.
template <int R, int P>
inline void bf16_native(const PackedBf16Table& t, const std::uint32_t* users, Index panel, Index q, const PanelOutput& o) {
  const Index pairs = t.words_per_item;
  const std::uint32_t* w = t.words.data() + panel * pairs * kPanel;
  __m512 acc[R][P];
  unrolled<R>([&](auto r) { unrolled<P>([&](auto p) { acc[r][p] = _mm512_setzero_ps(); }); });
  for (Index c = 0; c < pairs; ++c) {
    __m512bh v[P];
    unrolled<P>([&](auto p) { v[p] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + (p * pairs + c) * kPanel)); });
    unrolled<R>([&](auto r) {
      const __m512bh u = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(users[r * pairs + c])));
      unrolled<P>([&](auto p) { acc[r][p] = _mm512_dpbf16_ps(acc[r][p], v[p], u); });
    });
  }
  unrolled<R>([&](auto r) {
    unrolled<P>([&](auto p) { store_panel(o, r, q + p, [&](float* dst) { _mm512_storeu_ps(dst, acc[r][p]); }); });
  });
}
#endif

// The same arithmetic on xsimd batches (W lanes, 16 / W per panel): per pair, the high
// product then the low one, each an fp32 FMA of exact bfloat16 products.
template <int R, int P>
inline void bf16_portable(const PackedBf16Table& t, const std::uint32_t* users, Index panel, Index q, const PanelOutput& o) {
  using F = xsimd::batch<float>;
  using U = xsimd::batch<std::uint32_t>;
  constexpr int W = static_cast<int>(F::size);
  constexpr int S = static_cast<int>(kPanel) / W;
  static_assert(S * W == kPanel, "a panel is a whole number of SIMD vectors");
  const Index pairs = t.words_per_item;
  const std::uint32_t* w = t.words.data() + panel * pairs * kPanel;
  F acc[R][P][S];
  unrolled<R>([&](auto r) { unrolled<P>([&](auto p) { unrolled<S>([&](auto s) { acc[r][p][s] = F(0.0f); }); }); });
  const U high_mask(0xffff0000u);
  for (Index c = 0; c < pairs; ++c) {
    F high[R], low[R];
    unrolled<R>([&](auto r) {
      const std::uint32_t u = users[r * pairs + c];
      const std::uint32_t hb = u & 0xffff0000u, lb = u << 16;
      float hf, lf;
      std::memcpy(&hf, &hb, sizeof hf);
      std::memcpy(&lf, &lb, sizeof lf);
      high[r] = F(hf);
      low[r] = F(lf);
    });
    unrolled<P>([&](auto p) {
      unrolled<S>([&](auto s) {
        const U v = U::load_unaligned(w + (p * pairs + c) * kPanel + s * W);
        const F vh = xsimd::bitwise_cast<F>(v & high_mask);
        const F vl = xsimd::bitwise_cast<F>(v << 16);
        unrolled<R>([&](auto r) {
          acc[r][p][s] = xsimd::fma(vh, high[r], acc[r][p][s]);
          acc[r][p][s] = xsimd::fma(vl, low[r], acc[r][p][s]);
        });
      });
    });
  }
  unrolled<R>([&](auto r) {
    unrolled<P>([&](auto p) {
      store_panel(o, r, q + p, [&](float* dst) { unrolled<S>([&](auto s) { acc[r][p][s].store_unaligned(dst + s * W); }); });
    });
  });
}

// ---- int8 -------------------------------------------------------------------------------------

// Scores from the integer sums: user_scale * (scale * sum - offset), per lane.
struct Int8Rescale {
  const float* scale;   // per item (padded to whole panels)
  const float* offset;  // per item: scale * zero point * the row's sum
  const float* user_scale;
};

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
template <int R, int P>
inline void int8_native(const PackedInt8Table& t, const std::uint32_t* users, Index panel, Index q, const PanelOutput& o,
                        const Int8Rescale& rs) {
  const Index quads = t.words_per_item;
  const std::uint32_t* w = t.words.data() + panel * quads * kPanel;
  __m512i acc[R][P];
  unrolled<R>([&](auto r) { unrolled<P>([&](auto p) { acc[r][p] = _mm512_setzero_si512(); }); });
  for (Index c = 0; c < quads; ++c) {
    __m512i v[P];
    unrolled<P>([&](auto p) { v[p] = _mm512_loadu_si512(w + (p * quads + c) * kPanel); });
    unrolled<R>([&](auto r) {
      const __m512i u = _mm512_set1_epi32(static_cast<int>(users[r * quads + c]));
      unrolled<P>([&](auto p) { acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], u, v[p]); });
    });
  }
  unrolled<P>([&](auto p) {
    const Index item = (panel + p) * kPanel;
    const __m512 scale = _mm512_loadu_ps(rs.scale + item), offset = _mm512_loadu_ps(rs.offset + item);
    unrolled<R>([&](auto r) {
      const __m512 us = _mm512_set1_ps(rs.user_scale[r]);
      const __m512 s = _mm512_mul_ps(us, _mm512_sub_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(acc[r][p])), offset));
      store_panel(o, r, q + p, [&](float* dst) { _mm512_storeu_ps(dst, s); });
    });
  });
}
#endif

// Exact int32 arithmetic on xsimd batches: the four signed bytes of each word sign-extended by
// shifts, times the user's four codes.
template <int R, int P>
inline void int8_portable(const PackedInt8Table& t, const std::uint32_t* users, Index panel, Index q, const PanelOutput& o,
                          const Int8Rescale& rs) {
  using F = xsimd::batch<float>;
  using I = xsimd::batch<std::int32_t>;
  constexpr int W = static_cast<int>(I::size);
  constexpr int S = static_cast<int>(kPanel) / W;
  static_assert(S * W == kPanel && F::size == I::size, "a panel is a whole number of SIMD vectors");
  const Index quads = t.words_per_item;
  const std::uint32_t* w = t.words.data() + panel * quads * kPanel;
  I acc[R][P][S];
  unrolled<R>([&](auto r) { unrolled<P>([&](auto p) { unrolled<S>([&](auto s) { acc[r][p][s] = I(0); }); }); });
  for (Index c = 0; c < quads; ++c) {
    unrolled<P>([&](auto p) {
      unrolled<S>([&](auto s) {
        const I v = xsimd::bitwise_cast<I>(xsimd::batch<std::uint32_t>::load_unaligned(w + (p * quads + c) * kPanel + s * W));
        const I b0 = (v << 24) >> 24, b1 = (v << 16) >> 24, b2 = (v << 8) >> 24, b3 = v >> 24;
        unrolled<R>([&](auto r) {
          const std::uint32_t u = users[r * quads + c];
          acc[r][p][s] += b0 * I(static_cast<std::int32_t>(u & 0xffu)) + b1 * I(static_cast<std::int32_t>((u >> 8) & 0xffu)) +
                          b2 * I(static_cast<std::int32_t>((u >> 16) & 0xffu)) + b3 * I(static_cast<std::int32_t>(u >> 24));
        });
      });
    });
  }
  unrolled<P>([&](auto p) {
    const Index item = (panel + p) * kPanel;
    unrolled<R>([&](auto r) {
      const F us(rs.user_scale[r]);
      store_panel(o, r, q + p, [&](float* dst) {
        unrolled<S>([&](auto s) {
          const F scale = F::load_unaligned(rs.scale + item + s * W), offset = F::load_unaligned(rs.offset + item + s * W);
          const F v = us * (scale * xsimd::batch_cast<float>(acc[r][p][s]) - offset);
          v.store_unaligned(dst + s * W);
        });
      });
    });
  });
}

// Panels first_panel .. first_panel + ceil(count / 16) - 1 for R users, P panels per step
// while P remain, then one at a time.
template <int R, int P, typename Kernel>
inline void over_panels(Index first_panel, Index count, Kernel&& kernel) {
  const Index panels = panels_for(count);
  Index q = 0;
  for (; q + P <= panels; q += P) kernel(std::integral_constant<int, P>{}, first_panel + q, q);
  for (; q < panels; ++q) kernel(std::integral_constant<int, 1>{}, first_panel + q, q);
}

}  // namespace kernels

namespace kernels {

// run(r0, integral_constant<int, R>) for the users r0 .. r0 + R - 1 over all rows: groups of
// kMaxRows (8 or 4) while they last, then of at most 4.
template <int kMaxRows, typename Run>
inline void for_row_groups(Index rows, Run&& run) {
  static_assert(kMaxRows == 4 || kMaxRows == 8, "groups of 4 or 8 users");
  Index r0 = 0;
  if constexpr (kMaxRows == 8) {
    for (; r0 + 8 <= rows; r0 += 8) run(r0, std::integral_constant<int, 8>{});
  }
  for (; r0 < rows; r0 += 4) {
    switch (std::min<Index>(4, rows - r0)) {
      case 1: run(r0, std::integral_constant<int, 1>{}); break;
      case 2: run(r0, std::integral_constant<int, 2>{}); break;
      case 3: run(r0, std::integral_constant<int, 3>{}); break;
      default: run(r0, std::integral_constant<int, 4>{}); break;
    }
  }
}

// Panels per step for R users: enough independent accumulators for the dot's latency (R * P
// >= 4 .. 16) within AVX-512's 32 registers: 8 users share each table load (one pass over the
// table per 8 users of a batch), P = 2 keeps 16 accumulators, 2 loads and 8 broadcasts. The
// portable paths group at most 4 users (AVX2 has 16 registers).
template <int R>
inline constexpr int kNativePanels = R == 1 ? 8 : (R == 2 ? 4 : 2);
template <int R>
inline constexpr int kPortablePanels = R == 1 ? 4 : (R == 2 ? 2 : 1);

}  // namespace kernels

/// scores[r * ld + j] (r < rows, j < count) = bf16 scores of items first_panel * 16 + j for the
/// users' packed pairs (users[r * t.words_per_item ...]). `native` false runs the xsimd path.
inline void score_bf16_panels(const PackedBf16Table& t, const std::uint32_t* users, Index rows, Index first_panel, Index count,
                              float* scores, Index ld, bool native) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  if (native) {
    kernels::for_row_groups<8>(rows, [&](Index r0, auto rows_c) {
      constexpr int R = decltype(rows_c)::value;
      const std::uint32_t* u = users + r0 * t.words_per_item;
      const PanelOutput o{scores + r0 * ld, ld, count};
      kernels::over_panels<R, kernels::kNativePanels<R>>(first_panel, count, [&](auto p_c, Index panel, Index q) {
        kernels::bf16_native<R, decltype(p_c)::value>(t, u, panel, q, o);
      });
    });
    return;
  }
#endif
  (void)native;
  kernels::for_row_groups<4>(rows, [&](Index r0, auto rows_c) {
    constexpr int R = decltype(rows_c)::value;
    const std::uint32_t* u = users + r0 * t.words_per_item;
    const PanelOutput o{scores + r0 * ld, ld, count};
    kernels::over_panels<R, kernels::kPortablePanels<R>>(first_panel, count, [&](auto p_c, Index panel, Index q) {
      kernels::bf16_portable<R, decltype(p_c)::value>(t, u, panel, q, o);
    });
  });
}

/// The same for an int8 table: scores = user_scale[r] * (scale[j] * sum - offset[j]).
inline void score_int8_panels(const PackedInt8Table& t, const std::uint32_t* users, const float* user_scale, const float* scale,
                              const float* offset, Index rows, Index first_panel, Index count, float* scores, Index ld, bool native) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
  if (native) {
    kernels::for_row_groups<8>(rows, [&](Index r0, auto rows_c) {
      constexpr int R = decltype(rows_c)::value;
      const std::uint32_t* u = users + r0 * t.words_per_item;
      const PanelOutput o{scores + r0 * ld, ld, count};
      const kernels::Int8Rescale rs{scale, offset, user_scale + r0};
      kernels::over_panels<R, kernels::kNativePanels<R>>(first_panel, count, [&](auto p_c, Index panel, Index q) {
        kernels::int8_native<R, decltype(p_c)::value>(t, u, panel, q, o, rs);
      });
    });
    return;
  }
#endif
  (void)native;
  kernels::for_row_groups<4>(rows, [&](Index r0, auto rows_c) {
    constexpr int R = decltype(rows_c)::value;
    const std::uint32_t* u = users + r0 * t.words_per_item;
    const PanelOutput o{scores + r0 * ld, ld, count};
    const kernels::Int8Rescale rs{scale, offset, user_scale + r0};
    kernels::over_panels<R, kernels::kPortablePanels<R>>(first_panel, count, [&](auto p_c, Index panel, Index q) {
      kernels::int8_portable<R, decltype(p_c)::value>(t, u, panel, q, o, rs);
    });
  });
}

}  // namespace distillrec::serve::detail
