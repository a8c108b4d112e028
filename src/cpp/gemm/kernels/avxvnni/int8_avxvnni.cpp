// The int8 GEMM's AVX-VNNI kernel (int8.h's contract) for CPUs with AVX2 and the VEX-encoded
// vpdpbusd (Alder Lake and later, Zen 5): 16 ymm registers hold a tile of up to 3 rows × 32
// columns (12 accumulators of 8 int32), so a 64-column group is computed as two halves.
// Compiled with AVX-VNNI flags; called only where the CPU has it.
#include <immintrin.h>

#include "../../int8.h"

namespace fastmlp {

namespace {

constexpr index_t kMR = 3;

// Columns [16·half2, 16·half2 + 32) of the group: panels 2·half2 and 2·half2 + 1.
// One row's 4 accumulators, named (GCC keeps an array of vectors in memory).
#define FASTMLP_INT8_ROW(r)                                                      \
  if constexpr (ROWS > r) {                                                      \
    std::int32_t four;                                                           \
    __builtin_memcpy(&four, a + r * lda + 4 * g, 4);                             \
    const __m256i x = _mm256_set1_epi32(four);                                   \
    c##r##0 = _mm256_dpbusd_avx_epi32(c##r##0, x, b0);                           \
    c##r##1 = _mm256_dpbusd_avx_epi32(c##r##1, x, b1);                           \
    c##r##2 = _mm256_dpbusd_avx_epi32(c##r##2, x, b2);                           \
    c##r##3 = _mm256_dpbusd_avx_epi32(c##r##3, x, b3);                           \
  }

template <int ROWS>
void half_tile(index_t k4, const std::uint8_t* a, index_t lda, const std::int8_t* panels,
               index_t panel_stride, float* c, index_t ldc, index_t n, const Int8Epilogue& ep) {
  const __m256i z = _mm256_setzero_si256();
  __m256i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
  __m256i c20 = z, c21 = z, c22 = z, c23 = z;
  const std::int8_t* p0 = panels;
  const std::int8_t* p1 = panels + panel_stride;
  for (index_t g = 0; g < k4; ++g) {
    const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p0 + 64 * g));
    const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p0 + 64 * g + 32));
    const __m256i b2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p1 + 64 * g));
    const __m256i b3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p1 + 64 * g + 32));
    FASTMLP_INT8_ROW(0)
    FASTMLP_INT8_ROW(1)
    FASTMLP_INT8_ROW(2)
  }
  const __m256i acc[3][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23}};
  // Through memory for the epilogue: 8 columns per register, the last ones masked by count.
  for (int r = 0; r < ROWS; ++r) {
    alignas(32) std::int32_t sums[32];
    for (int v = 0; v < 4; ++v)
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums + 8 * v), acc[r][v]);
    const index_t cols = n < 32 ? n : 32;
    for (index_t j = 0; j < cols; ++j) {
      if (ep.raw) {
        ep.raw[r * ep.ld_raw + j] = sums[j];
        continue;
      }
      c[r * ldc + j] = int8_output(sums[j], r, j, ep);
    }
  }
}

template <int ROWS>
void tile(index_t k4, const std::uint8_t* a, index_t lda, const std::int8_t* panels,
          index_t panel_stride, float* c, index_t ldc, index_t n, const Int8Epilogue& ep) {
  half_tile<ROWS>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
  if (n <= 32) return;
  Int8Epilogue second = ep;
  if (ep.raw) {
    second.raw += 32;
  } else {
    second.weight_sums += 32;
    second.weight_scale += 32;
    second.bias += 32;
  }
  half_tile<ROWS>(k4, a, lda, panels + 2 * panel_stride, panel_stride, c ? c + 32 : nullptr,
                  ldc, n - 32, second);
}

void kernel(index_t k4, const std::uint8_t* a, index_t lda, index_t m, const std::int8_t* panels,
            index_t panel_stride, float* c, index_t ldc, index_t n, const Int8Epilogue& ep) {
  switch (m) {
    case 1: return tile<1>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    case 2: return tile<2>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
    default: return tile<3>(k4, a, lda, panels, panel_stride, c, ldc, n, ep);
  }
}

#undef FASTMLP_INT8_ROW

}  // namespace

Int8Kernels avxvnni_int8_kernels() { return Int8Kernels{kMR, &kernel}; }

}  // namespace fastmlp
