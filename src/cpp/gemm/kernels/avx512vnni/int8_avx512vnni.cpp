// The int8 GEMM's AVX512-VNNI kernel (int8.h's contract): a tile of up to 6 rows × 64 columns,
// 24 zmm accumulators of 16 int32; per group of 4 k, 4 panel loads (64 bytes each), one
// 4-byte broadcast of each row's activations and 24 vpdpbusd (u8 × s8, 4 products per lane
// summed into int32). Compiled with AVX512-VNNI flags; called only where the CPU has it.
#include <immintrin.h>

#include "../../int8.h"

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
  for (int v = 0; v < 4 && 16 * v < n; ++v) {
    const index_t cols = n - 16 * v < 16 ? n - 16 * v : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
    if (ep.raw) {
      for (int r = 0; r < ROWS; ++r)
        _mm512_mask_storeu_epi32(ep.raw + r * ep.ld_raw + 16 * v, mask, acc[r][v]);
      continue;
    }
    const __m512i correction = _mm512_maskz_loadu_epi32(mask, ep.zero_correction + 16 * v);
    const __m512 scale = _mm512_maskz_loadu_ps(mask, ep.scale + 16 * v);
    const __m512 bias = _mm512_maskz_loadu_ps(mask, ep.bias + 16 * v);
    for (int r = 0; r < ROWS; ++r) {
      const __m512 product =
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], correction)), scale);
      __m512 value = _mm512_add_ps(product, bias);
      if (ep.relu) value = _mm512_max_ps(value, _mm512_setzero_ps());  // max(v, 0): 0 for NaN
      _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask, value);
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

}  // namespace fastmlp
