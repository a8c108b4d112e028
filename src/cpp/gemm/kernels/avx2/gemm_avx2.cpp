// AVX2 + FMA micro-kernels (compiled with -mavx2 -mfma; only called when CPUID has them).
//
// Tile: MR rows × NV ymm vectors of columns, C row-major (the BLIS Haswell 6×16 shape):
// float 6×16 and double 6×8 hold 12 ymm accumulators + 2 B vectors + 1 broadcast in the 16
// ymm registers; 12 independent FMAs cover two pipes of latency 4 (8 needed). Edge tiles go
// through a small stack tile and the shared scalar write-back.
#include <immintrin.h>

#include "../../../cpu.h"
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
  static void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
};

template <>
struct Ymm<double> {
  using reg = __m256d;
  static constexpr int lanes = 4;
  static reg zero() { return _mm256_setzero_pd(); }
  static reg load(const double* p) { return _mm256_load_pd(p); }
  static reg loadu(const double* p) { return _mm256_loadu_pd(p); }
  static void storeu(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static reg broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
};

template <class T, int MR, int NV>
void micro_kernel_avx2(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                       index_t m, index_t n, bool accumulate, const T* bias, bool relu) {
  using V = Ymm<T>;
  using reg = typename V::reg;
  constexpr int L = V::lanes, NR = NV * L;
  reg acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();

  for (index_t p = 0; p < k; ++p) {
    const T* a = a_panel + p * MR;
    const T* b = b_panel + p * NR;
    reg bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const reg ai = V::broadcast(a + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(ai, bv[v], acc[i][v]);
    }
  }

  if (m < MR || n < NR) {
    alignas(64) T tile[MR * NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) V::storeu(tile + i * NR + v * L, acc[i][v]);
    write_tile<T, NR>(tile, c, ldc, m, n, accumulate, bias, relu);
    return;
  }
  const reg zero = V::zero();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    T* c_row = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      reg x = acc[i][v];
      if (accumulate) x = V::add(V::loadu(c_row + v * L), x);
      if (bias) x = V::add(x, V::loadu(bias + v * L));
      if (relu) x = V::max(zero, x);  // max(0, NaN) = NaN, as np.maximum
      V::storeu(c_row + v * L, x);
    }
  }
}

}  // namespace

IsaKernels avx2_kernels() {
  IsaKernels k;
  k.isa = Isa::avx2;
  k.name = "avx2";
  // KC = 256: B micro-panel 256×16 floats = 16 KiB in L1 (of 32 KiB), A micro-panel 6 KiB.
  // MC = 144 (a multiple of MR = 6): A block 144×256×4 = 144 KiB in L2 (BLIS Haswell: 168).
  // NC = 4080: B block ≈ 4 MiB in L3. double: same bytes per panel, half the elements.
  k.sgemm = {&micro_kernel_avx2<float, 6, 2>, 6, 16, 144, 256, 4080};
  k.dgemm = {&micro_kernel_avx2<double, 6, 2>, 6, 8, 72, 256, 2040};
  return k;
}

}  // namespace fastmlp
