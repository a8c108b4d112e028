// AVX2 + FMA micro-kernels (compiled with -mavx2 -mfma; only called when CPUID has them).
//
// Tile: MR rows × NV ymm vectors of columns, C row-major (the BLIS Haswell 6×16 shape):
// float 6×16 and double 6×8 hold 12 ymm accumulators + 2 B vectors + 1 broadcast in the 16
// ymm registers; 12 independent FMAs cover two pipes of latency 4 (8 needed). Edge tiles go
// through a small stack tile and the shared scalar write-back.
#include <immintrin.h>

#include "../../axpy.h"
#include "../../max_abs.h"
#include "../../context.h"
#include "../../fma_peak.h"
#include "../../gemv_simd.h"
#include "../../tile.h"

namespace fastmlp {

namespace {

template <class T>
struct Ymm;

template <>
struct Ymm<float> {
  using reg = __m256;
  static constexpr int lanes = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_load_ps(p); }
  static reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  // Lanes j < cols of p (cols ≤ 0: none); lanes beyond are 0 and their memory is not read.
  static reg load_first(const float* p, index_t cols) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int limit = static_cast<int>(cols < 0 ? 0 : (cols > lanes ? lanes : cols));
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(limit), lane));
  }
  static void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static float sum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  // v where mask > 0, else 0 (a NaN mask entry counts as not positive).
  static reg keep_where_positive(reg mask, reg v) {
    return _mm256_and_ps(_mm256_cmp_ps(mask, zero(), _CMP_GT_OQ), v);
  }
};

template <>
struct Ymm<double> {
  using reg = __m256d;
  static constexpr int lanes = 4;
  static reg zero() { return _mm256_setzero_pd(); }
  static reg load(const double* p) { return _mm256_load_pd(p); }
  static reg loadu(const double* p) { return _mm256_loadu_pd(p); }
  static reg load_first(const double* p, index_t cols) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const long long limit = cols < 0 ? 0 : (cols > lanes ? lanes : cols);
    return _mm256_maskload_pd(p, _mm256_cmpgt_epi64(_mm256_set1_epi64x(limit), lane));
  }
  static void storeu(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static reg broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static double sum(reg v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
  static reg keep_where_positive(reg mask, reg v) {
    return _mm256_and_pd(_mm256_cmp_pd(mask, zero(), _CMP_GT_OQ), v);
  }
};

// The tile computation shared by the packed and the in-place kernels. kPacked: A and B are the
// zero-padded panels of context.h (a_rs = 1, a_cs = MR, b_rs = NR, aligned, full width); else
// they are read in place with the given strides and B's edge columns are masked.
template <class T, int MR, int NV, bool kPacked>
inline void tile_avx2(index_t k, const T* a, index_t a_rs, index_t a_cs, const T* b,
                      index_t b_rs, T* c, index_t ldc, index_t m, index_t n,
                      const TileEpilogue<T>& ep) {
  using V = Ymm<T>;
  using reg = typename V::reg;
  constexpr int L = V::lanes, NR = NV * L;
  if constexpr (kPacked) {
    a_rs = 1;
    a_cs = MR;
    b_rs = NR;
  }
  const bool full_width = n >= NR;
  reg acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();

  for (index_t p = 0; p < k; ++p) {
    const T* a_p = a + p * a_cs;
    const T* b_p = b + p * b_rs;
    reg bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      bv[v] = kPacked ? V::load(b_p + v * L)
              : full_width ? V::loadu(b_p + v * L)
                           : V::load_first(b_p + v * L, n - v * L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const reg ai = V::broadcast(a_p + i * a_rs);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(ai, bv[v], acc[i][v]);
    }
  }

  if (m < MR || n < NR) {
    alignas(64) T tile[MR * NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) V::storeu(tile + i * NR + v * L, acc[i][v]);
    write_tile<T, NR>(tile, c, ldc, m, n, ep);
    return;
  }
  const reg zero = V::zero();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    T* c_row = c + i * ldc;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      reg x = acc[i][v];
      if (ep.accumulate) x = V::add(V::loadu(c_row + v * L), x);
      if (ep.bias) x = V::add(x, V::loadu(ep.bias + v * L));
      if (ep.relu) x = V::max(zero, x);  // max(0, NaN) = NaN, as np.maximum
      if (ep.mask) x = V::keep_where_positive(V::loadu(ep.mask + i * ep.ld_mask + v * L), x);
      V::storeu(c_row + v * L, x);
    }
  }
}

template <class T, int MR, int NV>
void micro_kernel_avx2(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                       index_t m, index_t n, const TileEpilogue<T>& ep) {
  tile_avx2<T, MR, NV, true>(k, a_panel, 1, MR, b_panel, 0, c, ldc, m, n, ep);
}

template <class T, int MR, int NV>
void strided_kernel_avx2(index_t k, const T* a, index_t a_rs, index_t a_cs, const T* b,
                         index_t b_rs, T* c, index_t ldc, index_t m, index_t n,
                         const TileEpilogue<T>& ep) {
  tile_avx2<T, MR, NV, false>(k, a, a_rs, a_cs, b, b_rs, c, ldc, m, n, ep);
}


__m256 fma_ps256(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }

// 12 chains (of 16 ymm registers).
double measure_float32_peak_avx2(double seconds) {
  return measure_fma_peak<__m256, 8, 12, &fma_ps256>(_mm256_set1_ps(1.0f), _mm256_set1_ps(1e-7f),
                                                     seconds);
}

}  // namespace

IsaContext avx2_context() {
  IsaContext c = generic_context();
  c.sgemm.axpy = &axpy_kernel<float>;
  c.dgemm.axpy = &axpy_kernel<double>;
  c.sgemm.max_abs = &max_abs_kernel<float>;
  c.dgemm.max_abs = &max_abs_kernel<double>;
  c.measure_float32_peak = &measure_float32_peak_avx2;
  // Cache blocks: the analytical model (context.cpp), the B micro-panel in L1: float KC = 512
  // on a 48 KiB 12-way L1d; 160 on a 32 KiB 8-way one (Haswell to Zen 4: A gets one way of
  // the seven, ⌊7 / (1 + 16/6)⌋), where the constant before was 256 (not re-measured there).
  GemmContext<float>& s = c.sgemm;
  s.MR = 6, s.NR = 16;
  s.micro_kernel = &micro_kernel_avx2<float, 6, 2>;
  s.small_kernel = &strided_kernel_avx2<float, 6, 2>;
  s.narrow_kernel = &strided_kernel_avx2<float, 6, 1>;
  s.row_kernel = &strided_kernel_avx2<float, 1, 4>;
  s.row_NR = 32;
  s.gemv = &gemv_simd<Ymm<float>, float>;
  GemmContext<double>& d = c.dgemm;
  d.MR = 6, d.NR = 8;
  d.micro_kernel = &micro_kernel_avx2<double, 6, 2>;
  d.small_kernel = &strided_kernel_avx2<double, 6, 2>;
  d.narrow_kernel = &strided_kernel_avx2<double, 6, 1>;
  d.row_kernel = &strided_kernel_avx2<double, 1, 4>;
  d.row_NR = 16;
  d.gemv = &gemv_simd<Ymm<double>, double>;
  return c;
}

}  // namespace fastmlp
