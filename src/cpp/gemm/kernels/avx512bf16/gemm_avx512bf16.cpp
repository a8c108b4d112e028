// AVX512-BF16 packers and micro-kernel of the bf16 GEMM (bf16.h). Compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512bf16; only called when avx512bf16_supported().
//
// VDPBF16PS multiplies pairs: for each of 16 float32 lanes j,
//   acc[j] += a[2j]·b[2j] + a[2j+1]·b[2j+1]   (a, b: 32 bf16 values; products exact in float32)
// so both packed panels hold bf16 *pairs of consecutive k* in one 32-bit word (the even k in
// the low half), k zero-padded to even:
//   A panel (MR rows):    word[q*MR + i] = (op(A)[i, 2q], op(A)[i, 2q+1])
//   B panel (NR columns): word[q*NR + j] = (op(B)[2q, j], op(B)[2q+1, j])
// Per pair q the kernel loads NR/16 = 2 vectors of B words, broadcasts each row's A word and
// issues MR·2 VDPBF16PS: each broadcast pair meets the same pair of every column.
//
// Tile 12×32: 24 zmm accumulators + 2 B vectors + 1 broadcast = 27 of 32 registers. VDPBF16PS
// has a latency of 6 cycles on Zen 4 and issues up to 2 per cycle on Zen 5 (full-width
// AVX-512), so 12 independent accumulators must be in flight to keep the pipes busy; 24 give
// twice that. Measured with the panels in cache (2-vCPU Zen 5, 1 thread, best of 200, kc 256,
// 768 and 1536): 8×32, 12×32 and 14×32 all run at 528–540 GFLOP/s, so the latency is hidden
// from 16 accumulators on. The rows set the traffic instead: each pair's 128 B of B serve MR
// rows, so 12 rows read B from L2 1.5× less often per FLOP than 8; 14×32 (31 registers) would
// save 14 % more but leaves no register spare, and 12 keeps float32's tile, so the bf16 blocks
// are the float32 ones in bytes (bf16.cpp).
// Rounding: VCVTNE2PS2BF16 (round to nearest even; subnormal inputs to zero; NaN quieted),
// which is bf16_bits() of bf16_round.h; the scalar packer for arbitrary strides uses that.
#include <immintrin.h>

#include <cstdint>

#include "../../bf16.h"
#include "../../bf16_round.h"
#include "../../gemv_simd.h"
#include "../avx512/masks_avx512.h"
#include "../avx512/transpose_avx512.h"

namespace fastmlp {

namespace {

constexpr index_t kMR = 12, kNR = 32;

// 32 float32 values x[0..15] = lo, x[16..31] = hi → 16 words of bf16 pairs (x[2q], x[2q+1]).
inline __m512i bf16_pairs(__m512 lo, __m512 hi) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

// The packers below write `lanes` rows of A or columns of B (lane l's k-th value at
// src[l*lane_stride + p*k_stride]) as dst[q*ld_dst + l] for l < store_lanes ≤ 16 (one panel),
// the lanes past `lanes` and the k past `k` as zeros; pack_lanes_contiguous a whole block.

// Each lane's values contiguous in k (a row-major op(A), op(B) = Wᵀ): 16 lanes × 32 values
// become 16 lanes × 16 pairs, transposed in registers to 16 rows of 16 pairs' words.
void pack_k_contiguous(std::uint32_t* dst, index_t ld_dst, const float* src, index_t lane_stride,
                       index_t lanes, index_t store_lanes, index_t k) {
  const __mmask16 store_mask = first_lanes(store_lanes);
  for (index_t p = 0; p < k; p += 32) {
    const index_t depth = k - p < 32 ? k - p : 32;
    const __mmask16 lo = first_lanes(depth), hi = first_lanes(depth - 16);
    __m512 r[16];
    for (int l = 0; l < 16; ++l) {
      if (l < lanes) {
        const float* row = src + l * lane_stride + p;
        r[l] = _mm512_castsi512_ps(
            bf16_pairs(_mm512_maskz_loadu_ps(lo, row), _mm512_maskz_loadu_ps(hi, row + 16)));
      } else {
        r[l] = _mm512_setzero_ps();
      }
    }
    transpose16x16(r);
    const index_t pairs = (depth + 1) / 2;
    for (index_t q = 0; q < pairs; ++q)
      _mm512_mask_storeu_epi32(dst + (p / 2 + q) * ld_dst, store_mask,
                               _mm512_castps_si512(r[q]));
  }
}

// The lanes contiguous (a column-major op(A), a row-major op(B)), for a whole block of
// `lanes` lanes in panels of `width` (MR or NR): per pair, two vectors of up to 16 lanes (k
// even, k odd), converted together and interleaved into (even, odd) words. The pair loop is
// the outer one, so the source is read row after row of op(B) (column after column of op(A)):
// walking one 16-lane panel down all of k touched a new page per row.
void pack_lanes_contiguous(std::uint32_t* dst, index_t width, const float* src,
                           index_t k_stride, index_t lanes, index_t k) {
  // bf16 value 2l of the result is value l of the even k's vector, 2l+1 value l of the odd k's
  // (which VCVTNE2PS2BF16 puts at 16 + l).
  alignas(64) static const std::uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  const index_t pairs = (k + 1) / 2;
  for (index_t p = 0; p < k; p += 2) {
    const float* even_row = src + p * k_stride;
    const float* odd_row = p + 1 < k ? src + (p + 1) * k_stride : nullptr;
    for (index_t l0 = 0; l0 < lanes; l0 += width) {
      std::uint32_t* panel_row = dst + l0 * pairs + (p / 2) * width;
      for (index_t j0 = 0; j0 < width; j0 += 16) {
        const index_t store_lanes = width - j0 < 16 ? width - j0 : 16;
        const __mmask16 valid = first_lanes(lanes - l0 - j0 < store_lanes ? lanes - l0 - j0
                                                                          : store_lanes);
        const __m512 even = _mm512_maskz_loadu_ps(valid, even_row + l0 + j0);
        const __m512 odd = odd_row ? _mm512_maskz_loadu_ps(valid, odd_row + l0 + j0)
                                   : _mm512_setzero_ps();
        const __m512i words = _mm512_permutexvar_epi16(interleave, bf16_pairs(even, odd));
        _mm512_mask_storeu_epi32(panel_row + j0, first_lanes(store_lanes), words);
      }
    }
  }
}

// Any strides (a view strided both ways): one value at a time.
void pack_strided(std::uint32_t* dst, index_t ld_dst, const float* src, index_t lane_stride,
                  index_t k_stride, index_t lanes, index_t store_lanes, index_t k) {
  for (index_t p = 0; p < k; p += 2)
    for (index_t l = 0; l < store_lanes; ++l) {
      std::uint32_t word = 0;
      if (l < lanes) {
        word = bf16_bits(src[l * lane_stride + p * k_stride]);
        if (p + 1 < k) word |= std::uint32_t{bf16_bits(src[l * lane_stride + (p + 1) * k_stride])}
                               << 16;
      }
      dst[(p / 2) * ld_dst + l] = word;
    }
}

void pack_a_bf16(void* packed, const float* a, index_t rs, index_t cs, index_t mc, index_t kc,
                 index_t MR) {
  std::uint32_t* words = static_cast<std::uint32_t*>(packed);
  if (rs == 1 && cs != 1) return pack_lanes_contiguous(words, MR, a, cs, mc, kc);
  const index_t pairs = (kc + 1) / 2;
  for (index_t ir = 0; ir < mc; ir += MR) {
    const index_t rows = mc - ir < MR ? mc - ir : MR;
    std::uint32_t* panel = words + ir * pairs;
    if (cs == 1) pack_k_contiguous(panel, MR, a + ir * rs, rs, rows, MR, kc);
    else pack_strided(panel, MR, a + ir * rs, rs, cs, rows, MR, kc);
  }
}

void pack_b_bf16(void* packed, const float* b, index_t rs, index_t cs, index_t kc, index_t nc,
                 index_t NR) {
  std::uint32_t* words = static_cast<std::uint32_t*>(packed);
  if (cs == 1 && rs != 1) return pack_lanes_contiguous(words, NR, b, rs, nc, kc);
  const index_t pairs = (kc + 1) / 2;
  for (index_t jr = 0; jr < nc; jr += NR)
    for (index_t j0 = 0; j0 < NR; j0 += 16) {
      const index_t cols = nc - jr - j0 < 0 ? 0 : (nc - jr - j0 > 16 ? 16 : nc - jr - j0);
      const float* src = cols > 0 ? b + (jr + j0) * cs : b;
      std::uint32_t* panel = words + jr * pairs + j0;
      if (rs == 1) pack_k_contiguous(panel, NR, src, cs, cols, 16, kc);
      else pack_strided(panel, NR, src, cs, rs, cols, 16, kc);
    }
}

// tile (m ≤ MR, n ≤ 32) := finish((accumulate ? tile : 0) + Σ_q A pair q ⊗ B pair q), finish
// the bias, ReLU and mask of `last` (bf16.h), applied in registers. A separate pass over the
// stored tile took 5-6 % of the wide net's step in perf, stalled on reloading the tile just
// stored (presumably masked stores do not forward to loads).
// MR: the rows computed, the first MR of the kMR-row panel.
template <int MR>
void kernel_rows(index_t kc, const void* a_panel, const void* b_panel, float* c, index_t ldc,
                 index_t m, index_t n, bool accumulate, const TileEpilogue<float>* last) {
  const std::uint32_t* a = static_cast<const std::uint32_t*>(a_panel);
  const std::uint32_t* b = static_cast<const std::uint32_t*>(b_panel);
  const index_t pairs = (kc + 1) / 2;
  __m512 acc[MR][2];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (index_t q = 0; q < pairs; ++q) {
    const std::uint32_t* a_q = a + q * kMR;
    const std::uint32_t* b_q = b + q * kNR;
    // The panels are read in order: ask for B 8 pairs (1 KiB) and A 8 pairs ahead, as the
    // float32 kernel does.
    __builtin_prefetch(b_q + 8 * kNR, 0, 3);
    __builtin_prefetch(a_q + 8 * kMR, 0, 3);
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_load_si512(b_q));
    const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_load_si512(b_q + 16));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai =
          reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a_q[i])));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
  const __mmask16 cols0 = first_lanes(n), cols1 = first_lanes(n - 16);
  const __m512 zero = _mm512_setzero_ps();
  const float* bias = last ? last->bias : nullptr;
  const bool relu = last && last->relu;
  const float* mask = last ? last->mask : nullptr;
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(cols0, bias) : zero;
  const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(cols1, bias + 16) : zero;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    float* row = c + i * ldc;
    __m512 x0 = acc[i][0], x1 = acc[i][1];
    if (accumulate) {
      x0 = _mm512_add_ps(_mm512_maskz_loadu_ps(cols0, row), x0);
      x1 = _mm512_add_ps(_mm512_maskz_loadu_ps(cols1, row + 16), x1);
    }
    // tile.h's apply_epilogue, lane by lane: ReLU's ordered `v <= 0` lets NaN through, the
    // mask's ordered `mask > 0` zeroes where the mask is NaN.
    if (bias) x0 = _mm512_add_ps(x0, bias0), x1 = _mm512_add_ps(x1, bias1);
    if (relu) {
      x0 = _mm512_maskz_mov_ps(_knot_mask16(_mm512_cmp_ps_mask(x0, zero, _CMP_LE_OQ)), x0);
      x1 = _mm512_maskz_mov_ps(_knot_mask16(_mm512_cmp_ps_mask(x1, zero, _CMP_LE_OQ)), x1);
    }
    if (mask) {
      const float* mask_row = mask + i * last->ld_mask;
      const __m512 m0 = _mm512_maskz_loadu_ps(cols0, mask_row);
      const __m512 m1 = _mm512_maskz_loadu_ps(cols1, mask_row + 16);
      x0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m0, zero, _CMP_GT_OQ), x0);
      x1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m1, zero, _CMP_GT_OQ), x1);
    }
    _mm512_mask_storeu_ps(row, cols0, x0);
    _mm512_mask_storeu_ps(row + 16, cols1, x1);
  }
}

// A tile of m ≤ 4 or ≤ 8 rows (the last of a block whose rows are not a multiple of 12)
// computes only those rows: the wide net's batch of 256 rows is 21·12 + 4, and its last row
// tile cost as much as a full one, 3 % of the forward and input-gradient products. Each row's
// sums are the same whichever kernel computes them.
void kernel_avx512bf16(index_t kc, const void* a_panel, const void* b_panel, float* c,
                       index_t ldc, index_t m, index_t n, bool accumulate,
                       const TileEpilogue<float>* last) {
  if (m <= 4) return kernel_rows<4>(kc, a_panel, b_panel, c, ldc, m, n, accumulate, last);
  if (m <= 8) return kernel_rows<8>(kc, a_panel, b_panel, c, ldc, m, n, accumulate, last);
  kernel_rows<kMR>(kc, a_panel, b_panel, c, ldc, m, n, accumulate, last);
}

// The batch of one (gemv_simd.h's loop): x and each row of W rounded in registers by
// VCVTNE2PS2BF16 (the packers' rounding) 32 values at a time, so both operands put the same
// pair of k in each 32-bit lane and VDPBF16PS sums matching products. Per 32 values of a row:
// two loads, one conversion, one VDPBF16PS: the float32 GEMV's count of loads, for the same
// traffic (W is read as float32 either way).
struct Bf16Pairs {
  static constexpr int lanes = 32;
  static __m512 zero() { return _mm512_setzero_ps(); }
  // Masked loads: lanes past the count hold +0 in both operands.
  static __m512bh load_first(const float* p, index_t count) {
    return _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(first_lanes(count - 16), p + 16),
                               _mm512_maskz_loadu_ps(first_lanes(count), p));
  }
  static __m512bh loadu(const float* p) {
    return _mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p));
  }
  static __m512 fmadd(__m512bh a, __m512bh b, __m512 acc) { return _mm512_dpbf16_ps(acc, a, b); }
  static float sum(__m512 acc) { return _mm512_reduce_add_ps(acc); }
};

}  // namespace

Bf16Kernels avx512bf16_kernels() {
  Bf16Kernels k;
  k.MR = kMR, k.NR = kNR;
  // MC, KC, NC: from the float32 AVX-512 context's, derived from the caches (bf16.cpp).
  k.k_group = 2;
  k.value_bytes = 2;
  k.pack_a = &pack_a_bf16;
  k.pack_b = &pack_b_bf16;
  k.kernel = &kernel_avx512bf16;
  k.gemv = &gemv_simd<Bf16Pairs, float>;
  return k;
}

}  // namespace fastmlp
