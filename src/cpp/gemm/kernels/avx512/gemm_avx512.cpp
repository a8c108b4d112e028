// AVX-512F micro-kernels (compiled with -mavx512f etc.; only called when CPUID has them).
//
// Tile: MR rows × NV zmm vectors of columns. C is row-major, so a row of the tile is NV
// contiguous vectors: per k step the kernel loads NV vectors of the packed B panel, broadcasts
// MR values of the packed A panel and issues MR·NV FMAs into MR·NV accumulators.
// float 12×32 (24 zmm accumulators + 2 B vectors + 1 broadcast = 27 of 32 registers): with two
// FMA pipes of latency 4, at least 8 independent accumulators must be in flight; 24 hide the
// latency with room to spare, and 12 broadcasts + 2 loads per 24 FMAs keep the load ports
// below the FMA rate. double 12×16 is the same shape in 8-lane vectors.
// Edge tiles (n < NR) use masked loads/stores: no scalar tail, no temporary tile.
#include <immintrin.h>

#include "../../../cpu.h"

namespace fastmlp {

namespace {

template <class T>
struct Zmm;

template <>
struct Zmm<float> {
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int lanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_load_ps(p); }
  static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg loadu(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void storeu(mask m, float* p, reg v) { _mm512_mask_storeu_ps(p, m, v); }
};

template <>
struct Zmm<double> {
  using reg = __m512d;
  using mask = __mmask8;
  static constexpr int lanes = 8;
  static reg zero() { return _mm512_setzero_pd(); }
  static reg load(const double* p) { return _mm512_load_pd(p); }
  static reg broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  static reg loadu(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void storeu(mask m, double* p, reg v) { _mm512_mask_storeu_pd(p, m, v); }
};

template <class T, int MR, int NV>
void micro_kernel_avx512(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                         index_t m, index_t n, bool accumulate, const T* bias, bool relu) {
  using V = Zmm<T>;
  using reg = typename V::reg;
  constexpr int L = V::lanes, NR = NV * L;
  reg acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();

  for (index_t p = 0; p < k; ++p) {
    const T* a = a_panel + p * MR;
    const T* b = b_panel + p * NR;
    reg bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * L);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const reg ai = V::broadcast(a + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(ai, bv[v], acc[i][v]);
    }
  }

  // Write-back: C := relu?((accumulate ? C : 0) + acc + bias), masked to the n valid columns.
  typename V::mask col_mask[NV];
  reg bias_v[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const index_t cols = n - v * L;
    col_mask[v] = cols >= L ? static_cast<typename V::mask>(~0u)
                  : cols <= 0 ? static_cast<typename V::mask>(0)
                              : static_cast<typename V::mask>((1u << cols) - 1u);
    bias_v[v] = bias ? V::loadu(col_mask[v], bias + v * L) : V::zero();
  }
  const reg zero = V::zero();
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    T* c_row = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      reg x = acc[i][v];
      if (accumulate) x = V::add(V::loadu(col_mask[v], c_row + v * L), x);
      if (bias) x = V::add(x, bias_v[v]);
      if (relu) x = V::max(zero, x);  // max(0, NaN) = NaN: the second operand passes through
      V::storeu(col_mask[v], c_row + v * L, x);
    }
  }
}

}  // namespace

IsaKernels avx512_kernels() {
  IsaKernels k;
  k.isa = Isa::avx512;
  k.name = "avx512";
  // Blocking (L1d ≥ 32 KiB, L2 ≥ 1 MiB per core):
  //   KC = 256: the B micro-panel KC×NR = 256×32 floats = 32 KiB stays in L1 while the kernel
  //     sweeps every A micro-panel of the block (12×256×4 = 12 KiB each, streamed from L2).
  //   MC = 480: the packed A block MC×KC = 480×256×4 = 480 KiB uses about half of a 1 MiB L2.
  //   NC = 4096: the packed B block KC×NC = 4 MiB lives in L3 and is reused by all A blocks.
  // double: same bytes, half the elements per row: KC = 256, NR = 16 (32 KiB), MC = 240.
  k.sgemm = {&micro_kernel_avx512<float, 12, 2>, 12, 32, 480, 256, 4096};
  k.dgemm = {&micro_kernel_avx512<double, 12, 2>, 12, 16, 240, 256, 2048};
  return k;
}

}  // namespace fastmlp
