// Inference's float32 pieces on AVX-512F: the last layer of a quantized network when it has few
// outputs (int8.h's narrow_dense_avx512), the batch of one on a model's packed weights
// (network.h's mlp_forward_row_avx512), and the softmax of predict_proba (activations.h's
// softmax_forward, float32). Compiled with AVX-512 flags; called only where the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "../../../activations.h"
#include "../../../network.h"
#include "../../int8.h"
#include "masks_avx512.h"

namespace fastmlp {

// ---- the last layer: few outputs ------------------------------------------------------------

namespace {

// Rows [0, ROWS) of out = h · WT + b, V vectors of 16 columns: per p, V loads of WT's row p
// and ROWS broadcasts of h[r, p], ROWS·V FMAs into as many accumulators.
template <int ROWS, int V>
void narrow_tile(float* out, index_t ldo, const float* h, index_t ldh, index_t K, const float* WT,
                 const float* b, index_t N) {
  __m512 acc[ROWS][V];
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (index_t p = 0; p < K; ++p) {
    __m512 w[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(WT + p * 16 * V + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const __m512 x = _mm512_set1_ps(h[r * ldh + p]);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) {
    const __mmask16 mask = first_lanes(N - 16 * v);
    const __m512 bias = _mm512_maskz_loadu_ps(mask, b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
      _mm512_mask_storeu_ps(out + r * ldo + 16 * v, mask, _mm512_add_ps(acc[r][v], bias));
  }
}

template <int ROWS, int V>
void narrow_rows(float* out, index_t ldo, const float* h, index_t ldh, index_t B, index_t K,
                 const float* WT, const float* b, index_t N) {
  // The last block overlaps the one before rather than run a narrower tile: its rows are
  // computed again by the same operations, the same values written.
  for (index_t i = 0; i < B; i += ROWS) {
    const index_t at = i + ROWS <= B ? i : B - ROWS;
    narrow_tile<ROWS, V>(out + at * ldo, ldo, h + at * ldh, ldh, K, WT, b, N);
  }
}

// N ≤ 16 outputs, 16 rows at a time with a row per lane: h's 16 rows × 8 columns p are
// transposed in registers (each 256-bit half an 8×8 transpose: rows 0–7 in the low half,
// 8–15 in the high) and each column meets W's N values of p by broadcast, N accumulators of
// 16 rows. Every lane does useful work, where a row per vector leaves 16 − N lanes idle
// (N = 10: 9.4 µs → ~5.5 for 256 rows of 256). The sums run over p in order, then + b.
template <int N>
void narrow_rows_transposed(float* out, index_t ldo, const float* h, index_t ldh, index_t B,
                            index_t K, const float* WT, const float* b) {
  const __m512i low_lanes = _mm512_set_epi32(27, 26, 25, 24, 11, 10, 9, 8, 19, 18, 17, 16, 3, 2,
                                             1, 0);
  const __m512i high_lanes = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 23, 22, 21, 20, 7,
                                              6, 5, 4);
  alignas(64) float sums[N][16];
  for (index_t i = 0; i < B; i += 16) {
    const index_t at = i + 16 <= B ? i : B - 16;  // the last block overlaps (as narrow_rows)
    const float* rows = h + at * ldh;
    __m512 acc[N];
#pragma GCC unroll 16
    for (int o = 0; o < N; ++o) acc[o] = _mm512_setzero_ps();
    for (index_t p0 = 0; p0 < K; p0 += 8) {
      const index_t width = K - p0 < 8 ? K - p0 : 8;
      const __mmask8 cols = static_cast<__mmask8>((1u << width) - 1u);
      __m512 z[8];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r)
        z[r] = _mm512_insertf32x8(
            _mm512_castps256_ps512(_mm256_maskz_loadu_ps(cols, rows + r * ldh + p0)),
            _mm256_maskz_loadu_ps(cols, rows + (r + 8) * ldh + p0), 1);
      // 8×8 transposes of both halves: t[q] = column p0 + q of the 16 rows.
      __m512 u[8], v[8], t[8];
#pragma GCC unroll 4
      for (int r = 0; r < 8; r += 2) {
        u[r] = _mm512_unpacklo_ps(z[r], z[r + 1]);
        u[r + 1] = _mm512_unpackhi_ps(z[r], z[r + 1]);
      }
#pragma GCC unroll 2
      for (int r = 0; r < 8; r += 4) {
        v[r] = _mm512_shuffle_ps(u[r], u[r + 2], 0x44);
        v[r + 1] = _mm512_shuffle_ps(u[r], u[r + 2], 0xEE);
        v[r + 2] = _mm512_shuffle_ps(u[r + 1], u[r + 3], 0x44);
        v[r + 3] = _mm512_shuffle_ps(u[r + 1], u[r + 3], 0xEE);
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        t[q] = _mm512_permutex2var_ps(v[q], low_lanes, v[q + 4]);
        t[q + 4] = _mm512_permutex2var_ps(v[q], high_lanes, v[q + 4]);
      }
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) {
        if (q >= width) break;
        const float* w = WT + (p0 + q) * 16;
#pragma GCC unroll 16
        for (int o = 0; o < N; ++o) acc[o] = _mm512_fmadd_ps(t[q], _mm512_set1_ps(w[o]), acc[o]);
      }
    }
#pragma GCC unroll 16
    for (int o = 0; o < N; ++o) _mm512_store_ps(sums[o], acc[o]);
    for (index_t r = 0; r < 16; ++r)
      for (int o = 0; o < N; ++o) out[(at + r) * ldo + o] = sums[o][r] + b[o];
  }
}

using NarrowTransposed = void (*)(float*, index_t, const float*, index_t, index_t, index_t,
                                  const float*, const float*);
template <int... Ns>
constexpr std::array<NarrowTransposed, sizeof...(Ns)> narrow_transposed_table(
    std::integer_sequence<int, Ns...>) {
  return {&narrow_rows_transposed<Ns + 1>...};
}

}  // namespace

bool narrow_dense_avx512(float* out, index_t ldo, const float* h, index_t ldh, index_t B,
                         index_t K, const float* WT, index_t N16, const float* b, index_t N) {
  // Every tile computes each output by the same operations (narrow_tile and
  // narrow_rows_transposed alike): the tile only sets the speed.
  if (N > N16 || (N16 != 16 && N16 != 32)) return false;
  if (N16 == 16) {
    if (B >= 16) {
      static constexpr auto table = narrow_transposed_table(std::make_integer_sequence<int, 16>());
      table[static_cast<std::size_t>(N - 1)](out, ldo, h, ldh, B, K, WT, b);
    } else if (B >= 12) {
      narrow_rows<12, 1>(out, ldo, h, ldh, B, K, WT, b, N);
    } else if (B >= 4) {
      narrow_rows<4, 1>(out, ldo, h, ldh, B, K, WT, b, N);
    } else {
      narrow_rows<1, 1>(out, ldo, h, ldh, B, K, WT, b, N);
    }
  } else {
    // 12 rows: 24 accumulators, 2 loads of WT per 24 FMAs (a block of a wide last layer
    // runs near the GEMM's pace).
    if (B >= 12)
      narrow_rows<12, 2>(out, ldo, h, ldh, B, K, WT, b, N);
    else if (B >= 6)
      narrow_rows<6, 2>(out, ldo, h, ldh, B, K, WT, b, N);
    else
      narrow_rows<1, 2>(out, ldo, h, ldh, B, K, WT, b, N);
  }
  return true;
}

// ---- the batch of one on packed weights --------------------------------------------------------

namespace {

// y (N) = relu?(Wx + b) from W's prepack_b panels: panel q holds Wᵀ's columns [NR·q,
// NR·(q+1)) as K rows of NR = 16·V floats. G panels at a time, x[p] broadcast against their
// rows p: one FMA chain per output vector, over p in order, then + b and max(0, ·), the very
// operations of the GEMM micro-kernel's row on the same panels (gemm_avx512.cpp's
// tile_avx512 with the whole of K in one tile): the batch of one gives the bits of its row
// in a batch that the GEMM computes so (network.h). G·V
// chains hide the FMA latency; the panels are contiguous streams, which the hardware
// prefetcher follows better than the 8 row streams of a GEMV on W in place.
template <int V, int G>
void panel_group(float* y, const float* x, const float* panels, index_t K, index_t N,
                 const float* b, bool relu) {
  constexpr index_t NR = 16 * V;
  __m512 acc[G][V];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[g][v] = _mm512_setzero_ps();
  for (index_t p = 0; p < K; ++p) {
    const __m512 xp = _mm512_set1_ps(x[p]);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v)
        acc[g][v] = _mm512_fmadd_ps(xp, _mm512_loadu_ps(panels + g * NR * K + p * NR + 16 * v),
                                    acc[g][v]);
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      const index_t j = g * NR + 16 * v, cols = N - j;
      if (cols <= 0) break;
      const __mmask16 mask = first_lanes(cols);
      __m512 sum = _mm512_add_ps(acc[g][v], _mm512_maskz_loadu_ps(mask, b + j));
      // max(0, v) returns v where v is NaN, as the GEMM's ReLU
      if (relu) sum = _mm512_max_ps(_mm512_setzero_ps(), sum);
      _mm512_mask_storeu_ps(y + j, mask, sum);
    }
}

// The groups of 4 panels first to last, or last to first (`backwards`): each output is its own
// chain, so the order changes no bit of y. A batch of one alternates it from call to call:
// the weights (1.1 MB for the mnist net) do not fit the 1 MB L2, and read in the same order
// every call each line is evicted just before it is read again (LRU); read backwards, the
// lines the call before read last (still in L2) come first. Three layers of the mnist net in
// a standalone loop: 7.4–8.3 µs → 6.1–6.8.
template <int V>
void panel_gemv(float* y, const float* x, const float* panels, index_t K, index_t N,
                const float* b, bool relu, bool backwards) {
  constexpr index_t NR = 16 * V;
  const index_t groups = (N + 4 * NR - 1) / (4 * NR);
  // 4 panels at a time (the last of them possibly part-filled), then the 1–3 left.
  for (index_t step = 0; step < groups; ++step) {
    const index_t j = (backwards ? groups - 1 - step : step) * 4 * NR;
    const index_t panels_left = (N - j + NR - 1) / NR;
    const float* at = panels + j * K;
    switch (panels_left) {
      case 1: panel_group<V, 1>(y + j, x, at, K, N - j, b + j, relu); break;
      case 2: panel_group<V, 2>(y + j, x, at, K, N - j, b + j, relu); break;
      case 3: panel_group<V, 3>(y + j, x, at, K, N - j, b + j, relu); break;
      default: panel_group<V, 4>(y + j, x, at, K, N - j, b + j, relu);
    }
  }
}

}  // namespace

bool mlp_forward_row_avx512(float* logits, const float* x, const NetworkShape& shape,
                            const float* const* panels, const float* const* biases,
                            index_t NR) {
  using Gemv = void (*)(float*, const float*, const float*, index_t, index_t, const float*, bool,
                        bool);
  const Gemv gemv = NR == 16 ? &panel_gemv<1> : NR == 32 ? &panel_gemv<2> : nullptr;
  if (!gemv) return false;
  static thread_local bool backwards = false;  // panel_gemv: alternates from call to call
  backwards = !backwards;
  static thread_local std::vector<float> ping_pong;
  const index_t L = shape.layers(), widest = std::max<index_t>(shape.widest_hidden(), 1);
  ping_pong.resize(static_cast<std::size_t>(2 * widest));
  const float* in = x;
  for (index_t l = 0; l < L; ++l) {
    const bool last = l == L - 1;
    float* out = last ? logits : ping_pong.data() + (l % 2) * widest;
    const index_t n_out = shape.sizes[l + 1];
    gemv(out, in, panels[l], shape.sizes[l], n_out, biases[l],
         !last && shape.hidden == Activation::relu, backwards);
    if (!last && (shape.hidden == Activation::tanh || shape.hidden == Activation::logistic))
      activation_forward_inplace(out, n_out, shape.hidden);
    in = out;
  }
  return true;
}

// ---- softmax --------------------------------------------------------------------------------

namespace {

// e^x for x ≤ 0 (a softmax's x − max): x = n·ln2 + r, |r| ≤ ln2/2 (ln2 split in two so that
// n·ln2 is exact), e^r by its degree-7 Taylor polynomial (truncation < 6e-9 relative on that
// interval, a tenth of float32's half-ulp), then scaled by 2ⁿ with vscalefps, which rounds
// subnormal results and gives 0 below them. x is first raised to −150 (e^−150 < 2^−149, the
// smallest float: still 0), so that −inf gives 0, not ∞ − ∞; vmaxps returns its second
// operand, x, when x is NaN, which stays NaN.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace

namespace {

// Rows of at most 16 columns (a classifier's few classes), 16 rows at a time: column j of the
// 16 rows gathered into one vector (a row per lane), so that each row's max, sum and 1/sum are
// lane-wise operations, where one row per vector spends its time in the latency of horizontal
// reductions; then each row again as one vector, e^(x − max) computed anew (the same
// operations on the same values: the same e as summed) and scaled by its 1/sum (no scatter:
// slow on AMD). 256 rows × 10 classes: 7.1 µs → 1.7 with the call. Lanes past the last row
// masked.
void softmax_narrow_rows(float* out, const float* x, index_t rows, index_t cols) {
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  const __m512i offsets = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi32(static_cast<int>(cols)));
  const __mmask16 columns = first_lanes(cols);
  alignas(64) float row_max[16], inverse[16];
  __m512 column[16];  // the gathered columns, kept (a gather costs more than a reload)
  for (index_t r = 0; r < rows; r += 16) {
    const index_t lanes = rows - r < 16 ? rows - r : 16;
    const __mmask16 valid = first_lanes(lanes);
    const float* xr = x + r * cols;
    __m512 m = minus_inf;
    for (index_t j = 0; j < cols; ++j) {
      column[j] = _mm512_mask_i32gather_ps(minus_inf, valid, offsets, xr + j, 4);
      m = _mm512_max_ps(m, column[j]);
    }
    __m512 sum = _mm512_setzero_ps();
    for (index_t j = 0; j < cols; ++j)
      sum = _mm512_add_ps(sum, exp_nonpositive(_mm512_sub_ps(column[j], m)));
    _mm512_store_ps(row_max, m);
    _mm512_store_ps(inverse, _mm512_div_ps(_mm512_set1_ps(1.0f), sum));
    for (index_t i = 0; i < lanes; ++i) {
      const __m512 v = _mm512_maskz_loadu_ps(columns, xr + i * cols);
      const __m512 e = exp_nonpositive(_mm512_sub_ps(v, _mm512_set1_ps(row_max[i])));
      _mm512_mask_storeu_ps(out + (r + i) * cols, columns,
                            _mm512_mul_ps(e, _mm512_set1_ps(inverse[i])));
    }
  }
}

}  // namespace

void softmax_rows_avx512(float* out, const float* x, index_t rows, index_t cols) {
  if (cols <= 16) return softmax_narrow_rows(out, x, rows, cols);
  // Per row: the max, e^(x − max) written and summed, then scaled by 1/sum (softmax_forward's
  // steps); 16 columns at a time, the last ones masked (their lanes −inf for the max, 0 for
  // the sum).
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  for (index_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* outr = out + r * cols;
    __m512 row_max = minus_inf;
    for (index_t j = 0; j < cols; j += 16)
      row_max =
          _mm512_max_ps(row_max, _mm512_mask_loadu_ps(minus_inf, first_lanes(cols - j), xr + j));
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(row_max));
    __m512 sum = _mm512_setzero_ps();
    for (index_t j = 0; j < cols; j += 16) {
      const __mmask16 m = first_lanes(cols - j);
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + j), shift));
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
      _mm512_mask_storeu_ps(outr + j, m, e);
    }
    const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (index_t j = 0; j < cols; j += 16) {
      const __mmask16 m = first_lanes(cols - j);
      _mm512_mask_storeu_ps(outr + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, outr + j),
                                                       inverse));
    }
  }
}

}  // namespace fastmlp
