// The micro-kernel contract shared by every ISA, and the per-ISA context that gemm.cpp runs:
// the kernels and the register-tile and cache-block sizes they were tuned for (BLIS's cntx).
//
// Legend (as gemm.h): M, N, K the product's sizes; MR×NR the register tile of C; MC×KC the
// packed block of op(A), KC×NC the packed block of op(B); k, m, n one call's reduction length
// and valid tile size (m ≤ MR, n ≤ NR).
//
// Registration: generic_context() (kernels/generic/) sets every field to the portable
// kernels. An ISA's context starts from that and overrides, by field name, what it has
// (kernels/avx2/, kernels/avx512/); a kernel tied to a tile shape is overridden together with
// MR/NR. context.cpp builds the context of each ISA the CPU supports once, derives its cache
// blocks from the detected (or overridden) cache sizes (cpu_cache.h), and
// active_gemm_context() returns the one of the active ISA (cpu.h).
#pragma once

#include <type_traits>

#include "../common.h"
#include "../cpu.h"
#include "../cpu_cache.h"
#include "gemm.h"

namespace fastmlp {

// The micro-kernel contract, identical for every ISA:
//   tile := epilogue( Σ_p a_panel[p] ⊗ b_panel[p] )   (see TileEpilogue)
// over a packed MR×k panel of A (a_panel[p*MR + i]) and a packed k×NR panel of B
// (b_panel[p*NR + j]), written to the m×n top-left corner (m ≤ MR, n ≤ NR) of C at c (row
// stride ldc). Panels are zero-padded to MR/NR, so the kernel may always compute a full tile.
// k may be 0.
template <class T>
using MicroKernel = void (*)(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                             index_t m, index_t n, const TileEpilogue<T>& ep);

// The in-place path's kernel: the same tile computation, but reading operands in place.
// Element (i,p) of op(A) is a[i*a_rs + p*a_cs] for all MR rows (the caller guarantees MR valid
// rows); row p of op(B) is b[p*b_rs + j] for j < n, columns contiguous (only the n valid
// columns are read: masked at the edge).
template <class T>
using StridedKernel = void (*)(index_t k, const T* a, index_t a_rs, index_t a_cs, const T* b,
                               index_t b_rs, T* c, index_t ldc, index_t m, index_t n,
                               const TileEpilogue<T>& ep);

// Batch of one with op(B) = Wᵀ (columns of op(B) contiguous in p, i.e. rows of W):
//   c[j] = epilogue(Σ_p x[p] w[j*ldw + p]),  x contiguous (K), the epilogue of a 1×n tile.
template <class T>
using GemvKernel = void (*)(index_t k, index_t n, const T* x, const T* w, index_t ldw, T* c,
                            const TileEpilogue<T>& ep);

// Packs a kc×nc block of op(B) whose columns are contiguous (op(B) = Wᵀ, W row-major with
// row stride ldw) into NR-column panels, as pack_b in gemm.cpp: a transpose, which an ISA can
// do in registers.
template <class T>
using PackTransposedKernel = void (*)(T* packed, const T* w, index_t ldw, index_t kc, index_t nc);

// Packs an mc×kc block of a row-major op(A) (row stride rs, columns contiguous) into MR-row
// panels, as pack_a in gemm.cpp (MR ≤ 16): a transpose, which an ISA can do in registers.
template <class T>
using PackRowsKernel = void (*)(T* packed, const T* a, index_t rs, index_t mc, index_t kc,
                                index_t MR);

// y[0:n] += a · x[0:n] (gemm/axpy.h).
template <class T>
using AxpyKernel = void (*)(index_t n, T a, const T* x, T* y);

// One row of SGD without momentum, its old values saved to backup unless null
// (gemm/sgd_row.h): non-zero if a value overflowed.
template <class T>
using SgdRowKernel = unsigned (*)(T* param, const T* grad, T* backup, index_t n, T lr, T wd,
                                  bool decay);

// max |x| over rows × cols, rows row_stride apart; +inf if any value is not finite
// (gemm/max_abs.h).
template <class T>
using MaxAbsKernel = double (*)(const T* x, index_t rows, index_t cols, index_t row_stride);

// One ISA's kernels for one dtype, with the tile and cache-block sizes they were tuned for.
// Optional kernels are null where the ISA has none: the framework then uses the portable
// loop (pack_*) or the full MR×NR tile on zero-padded rows (rows*_kernel).
template <class T>
struct GemmContext {
  index_t MR = 0, NR = 0;          // register tile
  index_t MC = 0, KC = 0, NC = 0;  // cache blocks (A block MC×KC, B block KC×NC): derived from
                                   // the cache sizes by derive_cache_blocks()
  // How deep KC goes: 0 keeps the KC×NR B micro-panel in L1 (the analytical model); a
  // positive value sizes the panel to that multiple of L1d instead, streamed from L2, for a
  // kernel measured to gain from it (see derive_cache_blocks and each ISA's context).
  double b_panel_l1d_multiple = 0;
  MicroKernel<T> micro_kernel = nullptr;     // MR×NR tile, packed panels
  StridedKernel<T> small_kernel = nullptr;   // MR×NR tile, operands in place
  StridedKernel<T> narrow_kernel = nullptr;  // MR×(NR/2) tile, in place: a narrow last panel
  StridedKernel<T> row_kernel = nullptr;     // 1×row_NR tile, operands in place (one row of C)
  index_t row_NR = 0;
  GemvKernel<T> gemv = nullptr;
  // In-place 4×NR and 8×NR tiles for a last row block of at most 4 or 8 rows. A batch of 64
  // is 5 tiles of 12 rows and one of 4: computed as 12 rows, a ninth of the product would be
  // padding.
  StridedKernel<T> rows4_kernel = nullptr;
  StridedKernel<T> rows8_kernel = nullptr;
  PackTransposedKernel<T> pack_b_transposed = nullptr;
  PackRowsKernel<T> pack_a_rows = nullptr;
  // The copies among the packs: op(B) with contiguous rows (b[p*rs + j]; a PackTransposedKernel
  // with ldw = rs) and op(A) with contiguous columns (a[i + p*cs]; a PackRowsKernel with
  // rs = cs): vector loads and stores, masked at the edges.
  PackTransposedKernel<T> pack_b_rows = nullptr;
  PackRowsKernel<T> pack_a_columns = nullptr;
  AxpyKernel<T> axpy = nullptr;  // every ISA sets it
  MaxAbsKernel<T> max_abs = nullptr;  // every ISA sets it
  // Null: the rule's own loop (an ISA whose build might fuse the update's multiply and add).
  SgdRowKernel<T> sgd_row = nullptr;
};

// Both dtypes' contexts of one ISA.
struct IsaContext {
  GemmContext<float> sgemm;
  GemmContext<double> dgemm;
  // The measured float32 FMA peak of one core with this ISA's widest vectors, FLOP/s, timed
  // for about `seconds` (fma_peak.h); null for the portable code.
  double (*measure_float32_peak)(double seconds) = nullptr;

  template <class T>
  const GemmContext<T>& get() const {
    if constexpr (std::is_same_v<T, float>) return sgemm;
    else return dgemm;
  }
};

#ifdef FASTMLP_X86
// kernels/avx512/update_avx512.cpp: the AVX-512 context's optimizer row kernels.
void add_avx512_update_kernels(IsaContext& c);
#endif

// Sets k.MC, k.KC, k.NC from the caches c for k's register tile (MR×NR) and dtype: the
// analytical model of Low et al. 2016 ("Analytical modeling is enough for high-performance
// BLIS"), worked out in context.cpp.
template <class T>
void derive_cache_blocks(GemmContext<T>& k, const CacheSizes& c);

// Each ISA's context (defined in kernels/<isa>/), its cache blocks not yet derived. Only call
// the x86 ones after isa_supported() said yes: their translation units are compiled with that
// ISA's flags.
IsaContext generic_context();
#ifdef FASTMLP_X86
IsaContext avx2_context();
IsaContext avx512_context();
#endif

// The context of `isa`, which must be supported (the contexts are built on first use).
const IsaContext& isa_context(Isa isa);

// The active ISA's context for T: what gemm() runs.
template <class T>
const GemmContext<T>& active_gemm_context() {
  return isa_context(active_isa()).get<T>();
}

}  // namespace fastmlp
