// AVX-512F micro-kernels (compiled with -mavx512f etc.; only called when CPUID has them).
//
// Tile: MR rows × NV zmm vectors of columns. C is row-major, so a row of the tile is NV
// contiguous vectors: per k step the kernel loads NV vectors of the packed B panel, broadcasts
// MR values of the packed A panel and issues MR·NV FMAs into MR·NV accumulators.
// float 12×32 (24 zmm accumulators + 2 B vectors + 1 broadcast = 27 of 32 registers): with two
// FMA pipes of latency 4, at least 8 independent accumulators must be in flight; 24 hide the
// latency with room to spare, and 12 broadcasts + 2 loads per 24 FMAs keep the load ports
// below the FMA rate. double 12×16 is the same shape in 8-lane vectors.
// Edge tiles (n < NR) use masked loads/stores: no scalar tail, no temporary tile. The one-row
// in-place kernel (1×64 floats: 4 accumulators) serves a single row of C.
#include <immintrin.h>

#include "../../axpy.h"
#include "../../max_abs.h"
#include "../../context.h"
#include "../../fma_peak.h"
#include "../../gemv_simd.h"
#include "../../tile.h"
#include "transpose_avx512.h"
#include "zmm_avx512.h"

namespace fastmlp {

namespace {

// The tile computation shared by the packed and the in-place kernels. kPacked: A and B are the
// zero-padded panels of context.h (a_rs = 1, a_cs = MR, b_rs = NR, aligned, full width); else
// they are read in place with the given strides and B's edge columns are masked.
template <class T, int MR, int NV, bool kPacked>
inline void tile_avx512(index_t k, const T* a, index_t a_rs, index_t a_cs, const T* b,
                        index_t b_rs, T* c, index_t ldc, index_t m, index_t n,
                        const TileEpilogue<T>& ep) {
  using V = Zmm<T>;
  using reg = typename V::reg;
  using mask = typename V::mask;
  constexpr int L = V::lanes, NR = NV * L;
  if constexpr (kPacked) {
    a_rs = 1;
    a_cs = MR;
    b_rs = NR;
  }
  mask col_mask[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) col_mask[v] = V::first(n - v * L);

  reg acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  if constexpr (kPacked) {
    // The tile of C is read (a later K block adds to it) or written only after the k loop:
    // ask for its lines now (for writing), so that they arrive during the FMAs instead of
    // stalling the write-back (a C of 1024² floats lives in L3, not L2).
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      __builtin_prefetch(c + i * ldc, 1, 3);
      __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
    }
  }

#pragma GCC unroll 4
  for (index_t p = 0; p < k; ++p) {
    const T* a_p = a + p * a_cs;
    const T* b_p = b + p * b_rs;
    if constexpr (kPacked) {
      // The panels are read strictly in order: ask for the cache lines 8 steps (1 KiB of B,
      // 384 B of A) ahead. With the 4-way unrolled loop: 1024³ 0.90–0.91× → 0.91–0.96× NumPy,
      // 2048³ 0.79–0.80× → 0.83–0.98× (same session, alternating builds; a noisy VM).
      __builtin_prefetch(b_p + 8 * NR, 0, 3);
      __builtin_prefetch(a_p + 8 * MR, 0, 3);
    } else {
      // In place, B's rows are b_rs apart (a row-major B, or packed panels): ask for both
      // lines of row p + 8. 128×784×256 A.B (B 800 KB read in place from L2): 219–231 →
      // 237–241 GFLOP/s (alternating builds, thread clock, busy machine); 32×1024×1024
      // A.Bt +2–3 %; unchanged where B is smaller.
      __builtin_prefetch(b_p + 8 * b_rs, 0, 3);
      if constexpr (NR * sizeof(T) > 64) __builtin_prefetch(b_p + 8 * b_rs + 64 / sizeof(T), 0, 3);
    }
    reg bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      bv[v] = kPacked ? V::load(b_p + v * L) : V::loadu(col_mask[v], b_p + v * L);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const reg ai = V::broadcast(a_p + i * a_rs);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(ai, bv[v], acc[i][v]);
    }
  }

  // Write-back: C := epilogue(acc) (see TileEpilogue), masked to the n valid columns.
  reg bias_v[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v)
    bias_v[v] = ep.bias ? V::loadu(col_mask[v], ep.bias + v * L) : V::zero();
  const reg zero = V::zero();
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    T* c_row = c + i * ldc;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      reg x = acc[i][v];
      if (ep.accumulate) x = V::add(V::loadu(col_mask[v], c_row + v * L), x);
      if (ep.bias) x = V::add(x, bias_v[v]);
      if (ep.relu) x = V::max(zero, x);  // max(0, NaN) = NaN: the second operand passes through
      if (ep.mask)
        x = V::keep(V::positive(V::loadu(col_mask[v], ep.mask + i * ep.ld_mask + v * L)), x);
      V::storeu(col_mask[v], c_row + v * L, x);
    }
  }
}

template <class T, int MR, int NV>
void micro_kernel_avx512(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                         index_t m, index_t n, const TileEpilogue<T>& ep) {
  tile_avx512<T, MR, NV, true>(k, a_panel, 1, MR, b_panel, 0, c, ldc, m, n, ep);
}

template <class T, int MR, int NV>
void strided_kernel_avx512(index_t k, const T* a, index_t a_rs, index_t a_cs, const T* b,
                           index_t b_rs, T* c, index_t ldc, index_t m, index_t n,
                           const TileEpilogue<T>& ep) {
  tile_avx512<T, MR, NV, false>(k, a, a_rs, a_cs, b, b_rs, c, ldc, m, n, ep);
}

// pack_b for op(B) = Wᵀ (see PackTransposedKernel): 16 rows of W × 16 values of p are loaded,
// transposed in registers and stored as 16 rows of a panel. Edges use the same path: rows of
// W past nc load as zeros (the panel's padding) and a last p block of fewer than 16 loads
// masked and stores only its rows. (A scalar edge loop cost the digits net's 10-class output
// layer as much as packing its 128-wide hidden layer.)
template <int NR>
void pack_b_transposed_avx512(float* packed, const float* w, index_t ldw, index_t kc,
                              index_t nc) {
  for (index_t jr = 0; jr < nc; jr += NR) {
    const index_t cols = nc - jr < NR ? nc - jr : NR;
    float* panel = packed + jr * kc;
    for (index_t j0 = 0; j0 < NR; j0 += 16) {
      const index_t rows_here = cols - j0 < 0 ? 0 : (cols - j0 > 16 ? 16 : cols - j0);
      const float* rows = w + (jr + j0) * ldw;
      for (index_t p = 0; p < kc; p += 16) {
        const index_t depth = kc - p < 16 ? kc - p : 16;
        const __mmask16 valid = static_cast<__mmask16>((1u << depth) - 1u);
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = i < rows_here ? _mm512_maskz_loadu_ps(valid, rows + i * ldw + p)
                               : _mm512_setzero_ps();
        transpose16x16(r);
        for (int i = 0; i < depth; ++i) _mm512_storeu_ps(panel + (p + i) * NR + j0, r[i]);
      }
    }
  }
}

// pack_a for a row-major op(A) (see PackRowsKernel): MR ≤ 16 rows × 16 values of p are
// loaded, transposed in registers, and each of the 16 resulting rows stores its first MR lanes
// as one p-row of the panel. Rows past mc load as zeros (the panel's padding); a last p block
// of fewer than 16 loads masked and stores only its rows. (The scalar loop wrote one float
// per store, MR floats apart: 4–9 % of a wide-net training step.)
void pack_a_rows_avx512(float* packed, const float* a, index_t rs, index_t mc, index_t kc,
                        index_t MR) {
  const __mmask16 panel_lanes = static_cast<__mmask16>((1u << MR) - 1u);
  for (index_t ir = 0; ir < mc; ir += MR) {
    const index_t rows = mc - ir < MR ? mc - ir : MR;
    float* panel = packed + ir * kc;
    const float* a_rows = a + ir * rs;
    for (index_t p = 0; p < kc; p += 16) {
      const index_t depth = kc - p < 16 ? kc - p : 16;
      const __mmask16 valid = static_cast<__mmask16>((1u << depth) - 1u);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(valid, a_rows + i * rs + p) : _mm512_setzero_ps();
      transpose16x16(r);
      for (int i = 0; i < depth; ++i) _mm512_mask_storeu_ps(panel + (p + i) * MR, panel_lanes, r[i]);
    }
  }
}

// pack_b for op(B) with contiguous rows (A.B: B row-major, row stride rs): each p-row of a
// panel is NV vector copies, the last panel's columns past nc masked to zeros (the padding).
// (The portable loop, compiled without AVX, copied a float at a time with a run-time stride.)
template <class T, int NV>
void pack_b_rows_avx512(T* packed, const T* b, index_t rs, index_t kc, index_t nc) {
  using V = Zmm<T>;
  constexpr int L = V::lanes, NR = NV * L;
  for (index_t jr = 0; jr < nc; jr += NR) {
    typename V::mask cols[NV];
    for (int v = 0; v < NV; ++v) cols[v] = V::first(nc - jr - v * L);
    T* panel = packed + jr * kc;
    const T* src = b + jr;
    for (index_t p = 0; p < kc; ++p)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v)
        V::storeu(static_cast<typename V::mask>(~0u), panel + p * NR + v * L,
                  V::loadu(cols[v], src + p * rs + v * L));
  }
}

// pack_a for op(A) with contiguous columns (At.B: op(A) = Gᵀ, G row-major with row stride cs):
// each p-row of an MR-row panel is a copy of MR contiguous values, rows past mc zeros.
template <class T>
void pack_a_columns_avx512(T* packed, const T* a, index_t cs, index_t mc, index_t kc,
                           index_t MR) {
  using V = Zmm<T>;
  constexpr int L = V::lanes;
  for (index_t ir = 0; ir < mc; ir += MR) {
    T* panel = packed + ir * kc;
    const T* src = a + ir;
    for (index_t v = 0; v < MR; v += L) {
      const typename V::mask valid = V::first(mc - ir - v), lanes = V::first(MR - v);
      for (index_t p = 0; p < kc; ++p)
        V::storeu(lanes, panel + p * MR + v, V::loadu(valid, src + p * cs + v));
    }
  }
}

__m512 fma_ps512(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }

// 24 chains, as many as the 12×32 tile's accumulators.
double measure_float32_peak_avx512(double seconds) {
  return measure_fma_peak<__m512, 16, 24, &fma_ps512>(_mm512_set1_ps(1.0f),
                                                      _mm512_set1_ps(1e-7f), seconds);
}

}  // namespace

IsaContext avx512_context() {
  IsaContext c = generic_context();
  add_avx512_update_kernels(c);
  c.sgemm.axpy = &axpy_kernel<float>;
  c.dgemm.axpy = &axpy_kernel<double>;
  c.sgemm.max_abs = &max_abs_kernel<float>;
  c.dgemm.max_abs = &max_abs_kernel<double>;
  c.measure_float32_peak = &measure_float32_peak_avx512;
  // Blocking (context.cpp derives it from the caches). The analytical model keeps the B
  // micro-panel (KC×NR) in L1: KC = 256 gives 256×32×4 B = 32 KiB of a 48 KiB L1d. Measured
  // deeper (Xeon with AVX-512, 48 KiB L1d, 2 MiB L2; 1 thread, float32, medians of 9; the
  // machine is shared, so each setting was run twice):
  //   KC 256 / MC 480:  1024³ 0.83–0.89× NumPy's OpenBLAS, 2048³ 0.77–0.83×
  //   KC 768 / MC 240:  1024³ 0.93×,                        2048³ 0.91×
  //   KC 1024 / MC 240: 1024³ 0.93–0.95×,                   2048³ 0.92–0.93×
  // and again on a 2-vCPU Zen 5 (48 KiB L1d, 1 MiB L2), 2048³, GFLOP/s, two runs each:
  //   KC 256 / MC 504: 184, 194   KC 512 / MC 252: 216, 216   KC 768 / MC 240: 224, 225
  //   KC 1024 / MC 180: 232, 224  (at 1024³ all four are within the noise, 225–250)
  // A deeper K block halves or thirds the passes over C (each K block reads and rewrites the
  // tile) and the hardware prefetcher streams the 96 KiB B micro-panel from L2 fast enough.
  // So the B micro-panel is sized to twice L1d: KC = 768 on a 48 KiB L1d, for float and
  // double alike (NR·sizeof(T) = 128 B either way); MC = 240 (float) and 120 (double) on a
  // 1 MiB L2, NC = 4096 and 2048 on a 16 MiB per-core share of L3 (context.cpp).
  GemmContext<float>& s = c.sgemm;
  s.MR = 12, s.NR = 32;
  s.b_panel_l1d_multiple = 2;
  s.micro_kernel = &micro_kernel_avx512<float, 12, 2>;
  s.small_kernel = &strided_kernel_avx512<float, 12, 2>;
  s.narrow_kernel = &strided_kernel_avx512<float, 12, 1>;
  s.row_kernel = &strided_kernel_avx512<float, 1, 4>;
  s.row_NR = 64;
  s.gemv = &gemv_simd<Zmm<float>, float>;
  s.rows4_kernel = &strided_kernel_avx512<float, 4, 2>;
  s.rows8_kernel = &strided_kernel_avx512<float, 8, 2>;
  s.pack_b_transposed = &pack_b_transposed_avx512<32>;
  s.pack_a_rows = &pack_a_rows_avx512;
  s.pack_b_rows = &pack_b_rows_avx512<float, 2>;
  s.pack_a_columns = &pack_a_columns_avx512<float>;
  GemmContext<double>& d = c.dgemm;
  d.MR = 12, d.NR = 16;
  d.b_panel_l1d_multiple = 2;
  d.micro_kernel = &micro_kernel_avx512<double, 12, 2>;
  d.small_kernel = &strided_kernel_avx512<double, 12, 2>;
  d.narrow_kernel = &strided_kernel_avx512<double, 12, 1>;
  d.row_kernel = &strided_kernel_avx512<double, 1, 4>;
  d.row_NR = 32;
  d.gemv = &gemv_simd<Zmm<double>, double>;
  d.rows4_kernel = &strided_kernel_avx512<double, 4, 2>;
  d.rows8_kernel = &strided_kernel_avx512<double, 8, 2>;
  d.pack_b_rows = &pack_b_rows_avx512<double, 2>;
  d.pack_a_columns = &pack_a_columns_avx512<double>;
  // pack_b_transposed, pack_a_rows: float only (transpose16x16); double packs portably.
  return c;
}

}  // namespace fastmlp
