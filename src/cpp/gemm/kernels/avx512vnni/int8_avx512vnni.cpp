// The int8 GEMM's AVX512-VNNI kernel (int8.h's contract): a tile of up to 6 rows × 64 columns,
// 24 zmm accumulators of 16 int32; per group of 4 k, 4 panel loads (64 bytes each), one
// 4-byte broadcast of each row's activations and 24 vpdpbusd (u8 × s8, 4 products per lane
// summed into int32). Compiled with AVX512-VNNI flags; called only where the CPU has it.
#include <immintrin.h>

#include "../../int8.h"
#include "../avx512/masks_avx512.h"

namespace fastmlp {

namespace {

constexpr index_t kMR = 6;

// One row's 4 accumulators, named (not an array: GCC keeps an array of vectors updated in a
// loop in memory, a store per vpdpbusd).
#define FASTMLP_INT8_ROW(r)                                                      \
  if constexpr (ROWS > r) {                                                      \
    std::int32_t four;                                                           \
    __builtin_memcpy(&four, a + r * lda + 4 * g, 4);                             \
    const __m512i x = _mm512_set1_epi32(four);                                   \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, x, b0);                               \
    c##r##1 = _mm512_dpbusd_epi32(c##r##1, x, b1);                               \
    c##r##2 = _mm512_dpbusd_epi32(c##r##2, x, b2);                               \
    c##r##3 = _mm512_dpbusd_epi32(c##r##3, x, b3);                               \
  }

template <int ROWS>
void tile(index_t k4, const std::uint8_t* a, index_t lda, const std::int8_t* panels,
          index_t panel_stride, float* c, index_t ldc, index_t n, const Int8Epilogue& ep) {
  const __m512i z = _mm512_setzero_si512();
  __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
  __m512i c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
  __m512i c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z, c52 = z, c53 = z;
  const std::int8_t* p0 = panels;
  const std::int8_t* p1 = panels + panel_stride;
  const std::int8_t* p2 = panels + 2 * panel_stride;
  const std::int8_t* p3 = panels + 3 * panel_stride;
  for (index_t g = 0; g < k4; ++g) {
    const __m512i b0 = _mm512_load_si512(p0 + 64 * g);
    const __m512i b1 = _mm512_load_si512(p1 + 64 * g);
    const __m512i b2 = _mm512_load_si512(p2 + 64 * g);
    const __m512i b3 = _mm512_load_si512(p3 + 64 * g);
    FASTMLP_INT8_ROW(0)
    FASTMLP_INT8_ROW(1)
    FASTMLP_INT8_ROW(2)
    FASTMLP_INT8_ROW(3)
    FASTMLP_INT8_ROW(4)
    FASTMLP_INT8_ROW(5)
  }
  const __m512i acc[6][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23},
                             {c30, c31, c32, c33}, {c40, c41, c42, c43}, {c50, c51, c52, c53}};
  // The valid columns' masks; in raw mode the sums as they are.
  __mmask16 masks[4];
  for (int v = 0; v < 4; ++v) masks[v] = first_lanes(n - 16 * v);
  if (ep.raw) {
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < 4 && 16 * v < n; ++v)
        _mm512_mask_storeu_epi32(ep.raw + r * ep.ld_raw + 16 * v, masks[v], acc[r][v]);
    return;
  }
  __m512i sums[4];
  __m512 weight_scale[4], bias[4];
  for (int v = 0; v < 4; ++v) {
    sums[v] = _mm512_maskz_loadu_epi32(masks[v], ep.weight_sums + 16 * v);
    weight_scale[v] = _mm512_maskz_loadu_ps(masks[v], ep.weight_scale + 16 * v);
    bias[v] = _mm512_maskz_loadu_ps(masks[v], ep.bias + 16 * v);
  }
  for (int r = 0; r < ROWS; ++r) {
    const __m512i zero = _mm512_set1_epi32(ep.input_zero[r]);
    const __m512 input_scale = _mm512_set1_ps(ep.input_scale[r]);
    // The row's range lanes (int8.h): the valid columns' values folded in, masked.
    __m512 lane_min = _mm512_setzero_ps(), lane_max = _mm512_setzero_ps();
    if (ep.range_lanes) {
      lane_min = _mm512_loadu_ps(ep.range_lanes + kRangeLanes * r);
      lane_max = _mm512_loadu_ps(ep.range_lanes + kRangeLanes * r + 16);
    }
    for (int v = 0; v < 4 && 16 * v < n; ++v) {
      const __m512i corrected = _mm512_sub_epi32(acc[r][v], _mm512_mullo_epi32(zero, sums[v]));
      const __m512 product = _mm512_mul_ps(_mm512_cvtepi32_ps(corrected),
                                           _mm512_mul_ps(input_scale, weight_scale[v]));
      __m512 value = _mm512_add_ps(product, bias[v]);
      if (ep.relu) value = _mm512_max_ps(value, _mm512_setzero_ps());  // max(v, 0): 0 for NaN
      _mm512_mask_storeu_ps(c + r * ldc + 16 * v, masks[v], value);
      lane_min = _mm512_mask_min_ps(lane_min, masks[v], value, lane_min);
      lane_max = _mm512_mask_max_ps(lane_max, masks[v], value, lane_max);
    }
    if (ep.range_lanes) {
      _mm512_storeu_ps(ep.range_lanes + kRangeLanes * r, lane_min);
      _mm512_storeu_ps(ep.range_lanes + kRangeLanes * r + 16, lane_max);
    }
  }
}

void kernel(index_t k4, const std::uint8_t* a, index_t lda, index_t m, const std::int8_t* panels,
            index_t panel_stride, float* c, index_t ldc, index_t n, const Int8Epilogue& ep) {
  switch (m) {
    case 1: return tile<1>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    case 2: return tile<2>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    case 3: return tile<3>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    case 4: return tile<4>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    case 5: return tile<5>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    default: return tile<6>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
  }
}

#undef FASTMLP_INT8_ROW

}  // namespace

Int8Kernels avx512vnni_int8_kernels() { return Int8Kernels{kMR, &kernel}; }

// ---- activation quantization, 16 floats at a time (int8.h's contracts, rows contiguous) -----

void tensor_range_avx512(const float* x, index_t rs, index_t M, index_t K, float* lo, float* hi,
                         bool* has_nan) {
  // Four independent chains per bound: vminps's latency would otherwise set the pace (named
  // registers: GCC keeps an array of vectors updated in a loop in memory, a store and a
  // reload on every chain's step, which made this pass ~2× slower). The accumulator is the
  // second operand, which vminps / vmaxps return when either is NaN: NaN is skipped. It is
  // noticed by sums of the elements, which NaN turns NaN for good (one add per vector, where an
  // unordered compare and a mask OR were two); a NaN sum from finite elements (+inf and −inf
  // after overflows) is told apart by an exact scan. The tail loads are masked, their lanes 0
  // (0 is always in the range).
  const __m512 z = _mm512_setzero_ps();
  __m512 mn0 = z, mn1 = z, mn2 = z, mn3 = z, mx0 = z, mx1 = z, mx2 = z, mx3 = z;
  __m512 sum0 = z, sum1 = z, sum2 = z, sum3 = z;
  for (index_t i = 0; i < M; ++i) {
    const float* row = x + i * rs;
    index_t p = 0;
    for (; p + 64 <= K; p += 64) {
      const __m512 v0 = _mm512_loadu_ps(row + p), v1 = _mm512_loadu_ps(row + p + 16);
      const __m512 v2 = _mm512_loadu_ps(row + p + 32), v3 = _mm512_loadu_ps(row + p + 48);
      mn0 = _mm512_min_ps(v0, mn0);
      mn1 = _mm512_min_ps(v1, mn1);
      mn2 = _mm512_min_ps(v2, mn2);
      mn3 = _mm512_min_ps(v3, mn3);
      mx0 = _mm512_max_ps(v0, mx0);
      mx1 = _mm512_max_ps(v1, mx1);
      mx2 = _mm512_max_ps(v2, mx2);
      mx3 = _mm512_max_ps(v3, mx3);
      sum0 = _mm512_add_ps(sum0, v0);
      sum1 = _mm512_add_ps(sum1, v1);
      sum2 = _mm512_add_ps(sum2, v2);
      sum3 = _mm512_add_ps(sum3, v3);
    }
    for (; p < K; p += 16) {
      const __mmask16 valid = first_lanes(K - p);
      const __m512 v = _mm512_maskz_loadu_ps(valid, row + p);
      mn0 = _mm512_min_ps(v, mn0);
      mx0 = _mm512_max_ps(v, mx0);
      sum0 = _mm512_add_ps(sum0, v);
    }
  }
  *lo = _mm512_reduce_min_ps(_mm512_min_ps(_mm512_min_ps(mn0, mn1), _mm512_min_ps(mn2, mn3)));
  *hi = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(mx0, mx1), _mm512_max_ps(mx2, mx3)));
  if (!has_nan) return;
  const __m512 total = _mm512_add_ps(_mm512_add_ps(sum0, sum1), _mm512_add_ps(sum2, sum3));
  *has_nan = false;
  if (_mm512_cmp_ps_mask(total, total, _CMP_UNORD_Q) == 0) return;
  for (index_t i = 0; i < M && !*has_nan; ++i)
    for (index_t p = 0; p < K; ++p)
      if (x[i * rs + p] != x[i * rs + p]) {
        *has_nan = true;
        break;
      }
}

void reduce_range_lanes_avx512(const float* lanes, index_t sets, index_t set_stride, index_t M,
                               float* ranges) {
  for (index_t i = 0; i < M; ++i) {
    const float* row = lanes + i * kRangeLanes;
    __m512 mn = _mm512_loadu_ps(row), mx = _mm512_loadu_ps(row + 16);
    for (index_t s = 1; s < sets; ++s) {
      mn = _mm512_min_ps(mn, _mm512_loadu_ps(row + s * set_stride));
      mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + s * set_stride + 16));
    }
    ranges[2 * i] = _mm512_reduce_min_ps(mn);
    ranges[2 * i + 1] = _mm512_reduce_max_ps(mx);
  }
}

namespace {

// 16 floats quantized as quantize_rows: v = clamp(x · (1/s), −z, 255 − z) (vmaxps first with
// the bound second, so that NaN becomes −z, as std::max(lo, NaN) = lo in the portable loop),
// vcvtps2dq rounds ties to even, + z ∈ [0, 255] narrowed to bytes.
struct Quantizer16 {
  __m512 inverse, lo, hi;
  __m512i zero;
  explicit Quantizer16(QuantParams q)
      : inverse(_mm512_set1_ps(1.0f / q.scale)),
        lo(_mm512_set1_ps(static_cast<float>(-q.zero))),
        hi(_mm512_set1_ps(static_cast<float>(255 - q.zero))),
        zero(_mm512_set1_epi32(q.zero)) {}
  __m128i operator()(__m512 v) const {
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inverse), lo), hi);
    return _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(clamped), zero));
  }
};

template <bool kCheckFinite>
bool quantize_rows_impl(std::uint8_t* out, index_t ldo, const float* x, index_t rs, index_t M,
                        index_t K, QuantParams q) {
  // Non-finite: |x| > FLT_MAX or unordered.
  const Quantizer16 quantize(q);
  const __m512 largest = _mm512_set1_ps(3.40282347e38f);
  __mmask16 nonfinite = 0;
  auto sixteen = [&](const float* from, __mmask16 valid) {
    const __m512 v = _mm512_maskz_loadu_ps(valid, from);
    if constexpr (kCheckFinite)
      nonfinite |= _mm512_cmp_ps_mask(_mm512_abs_ps(v), largest, _CMP_NLE_UQ);
    return quantize(v);
  };
  for (index_t i = 0; i < M; ++i) {
    std::uint8_t* row = out + i * ldo;
    const float* xr = x + i * rs;
    index_t p = 0;
    for (; p + 16 <= K; p += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + p), sixteen(xr + p, 0xFFFF));
    if (p < K) {
      const __mmask16 valid = first_lanes(K - p);
      _mm_mask_storeu_epi8(row + p, valid, sixteen(xr + p, valid));
    }
    for (p = K; p < ldo; ++p) row[p] = 0;
  }
  return nonfinite == 0;
}

}  // namespace

bool quantize_rows_avx512(std::uint8_t* out, index_t ldo, const float* x, index_t rs, index_t M,
                          index_t K, QuantParams q, bool check_finite) {
  // Without the check, 2 of the ~9 operations per 16 floats fewer.
  return check_finite ? quantize_rows_impl<true>(out, ldo, x, rs, M, K, q)
                      : quantize_rows_impl<false>(out, ldo, x, rs, M, K, q);
}

bool quantize_rows_dynamic_avx512(std::uint8_t* out, index_t ldo, const float* x, index_t rs,
                                  index_t M, index_t K, float* scale, std::int32_t* zero,
                                  std::uint8_t* nonfinite) {
  // Row i is quantized in the same loop as row i + 2's range is found (tensor_range_avx512's
  // operations): row i comes from L1 (its range was found two rows before), and the loads of
  // row i + 2 from L2/L3 overlap the quantization's arithmetic instead of stalling a range
  // pass of their own (X read from memory once, at the pace of one pass). Two rows ahead, not
  // one: row i + 2's scale and zero point (a reduction and three divisions, ~60 cycles of
  // latency) are then computed a whole row before they are needed.
  bool any_nonfinite = false;
  QuantParams ahead[2];  // rows i and i + 1
  for (index_t i = 0; i < 2 && i < M; ++i) {
    float lo, hi;
    bool has_nan;
    tensor_range_avx512(x + i * rs, rs, 1, K, &lo, &hi, &has_nan);
    ahead[i] = dynamic_row_params(lo, hi, has_nan, i, scale, zero, nonfinite, &any_nonfinite);
  }
  for (index_t i = 0; i < M; ++i) {
    const Quantizer16 quantize(ahead[0]);
    std::uint8_t* row = out + i * ldo;
    const float* xr = x + i * rs;
    // (The last two rows range themselves again, from L1, rather than test for a row two ahead
    // at every step.)
    const float* next = i + 2 < M ? xr + 2 * rs : xr;
    const __m512 z = _mm512_setzero_ps();
    __m512 mn = z, mx = z, sum = z;
    auto range = [&](__m512 v) {
      mn = _mm512_min_ps(v, mn);
      mx = _mm512_max_ps(v, mx);
      sum = _mm512_add_ps(sum, v);
    };
    index_t p = 0;
    for (; p + 16 <= K; p += 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + p), quantize(_mm512_loadu_ps(xr + p)));
      range(_mm512_loadu_ps(next + p));
    }
    if (p < K) {
      const __mmask16 valid = first_lanes(K - p);
      _mm_mask_storeu_epi8(row + p, valid, quantize(_mm512_maskz_loadu_ps(valid, xr + p)));
      range(_mm512_maskz_loadu_ps(valid, next + p));
    }
    for (p = K; p < ldo; ++p) row[p] = 0;
    ahead[0] = ahead[1];
    if (i + 2 < M) {
      float lo = _mm512_reduce_min_ps(mn), hi = _mm512_reduce_max_ps(mx);
      bool has_nan = false;
      if (_mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q) != 0)  // (NaN, or opposite overflows)
        tensor_range_avx512(next, rs, 1, K, &lo, &hi, &has_nan);
      ahead[1] = dynamic_row_params(lo, hi, has_nan, i + 2, scale, zero, nonfinite,
                                    &any_nonfinite);
    }
  }
  return any_nonfinite;
}

bool quantize_rows_given_avx512(std::uint8_t* out, index_t ldo, const float* x, index_t rs,
                                index_t M, index_t K, const float* ranges, float* scale,
                                std::int32_t* zero, std::uint8_t* nonfinite) {
  // The rows' scales and zero points 16 at a time (quant_params' float32 operations lane by
  // lane: a scalar call per row, three divisions, cost ~2 µs of a mnist batch of 256), then
  // each row quantized.
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 z = _mm512_setzero_ps(), denominator = _mm512_set1_ps(255.0f);
  const __m512 largest = _mm512_set1_ps(3.40282347e38f), one = _mm512_set1_ps(1.0f);
  bool any_nonfinite = false;
  index_t i = 0;
  for (; i + 16 <= M; i += 16) {
    const __m512 first = _mm512_loadu_ps(ranges + 2 * i), second = _mm512_loadu_ps(ranges + 2 * i + 16);
    const __m512 lo = _mm512_min_ps(_mm512_permutex2var_ps(first, even, second), z);
    const __m512 hi = _mm512_max_ps(_mm512_permutex2var_ps(first, odd, second), z);
    const __mmask16 lo_finite = _mm512_cmp_ps_mask(_mm512_abs_ps(lo), largest, _CMP_LE_OQ);
    const __mmask16 hi_finite = _mm512_cmp_ps_mask(_mm512_abs_ps(hi), largest, _CMP_LE_OQ);
    __m512 s = _mm512_div_ps(_mm512_sub_ps(hi, lo), denominator);
    // A span beyond float32 divided before the subtraction (quant_params).
    const __mmask16 span_overflows =
        _mm512_cmp_ps_mask(_mm512_abs_ps(s), largest, _CMP_NLE_UQ) & lo_finite & hi_finite;
    s = _mm512_mask_sub_ps(s, span_overflows, _mm512_div_ps(hi, denominator),
                           _mm512_div_ps(lo, denominator));
    const __mmask16 usable = _mm512_cmp_ps_mask(s, z, _CMP_GT_OQ) &
                             _mm512_cmp_ps_mask(_mm512_abs_ps(s), largest, _CMP_LE_OQ);
    s = _mm512_mask_blend_ps(usable, one, s);
    // −lo / s clamped to [0, 255] (NaN to 0, as quant_params' std::max), rounded ties to even.
    const __m512 shift = _mm512_min_ps(
        _mm512_max_ps(_mm512_div_ps(_mm512_sub_ps(z, lo), s), z), denominator);
    _mm512_storeu_ps(scale + i, s);
    _mm512_storeu_si512(zero + i, _mm512_cvtps_epi32(shift));
    const __mmask16 bad = static_cast<__mmask16>(~(lo_finite & hi_finite));
    if (bad) {
      any_nonfinite = true;
      if (nonfinite)
        for (int lane = 0; lane < 16; ++lane)
          if ((bad >> lane) & 1) nonfinite[i + lane] = 1;
    }
  }
  for (; i < M; ++i)
    dynamic_row_params(ranges[2 * i], ranges[2 * i + 1], false, i, scale, zero, nonfinite,
                       &any_nonfinite);
  for (i = 0; i < M; ++i)
    quantize_rows_impl<false>(out + i * ldo, ldo, x + i * rs, rs, 1, K,
                              QuantParams{scale[i], zero[i]});
  return any_nonfinite;
}

}  // namespace fastmlp
