// General matrix product C (M,N) = op(A) (M,K) · op(B) (K,N), with fused epilogues.
//
// Legend: M rows of C (batch, or out-features for weight gradients), N columns of C,
// K the reduction length. Operands are described by strides, so a transpose or a NumPy view
// (non-contiguous, negative stride) costs nothing: element (i,p) of op(A) is
// A[i*rs_a + p*cs_a], element (p,j) of op(B) is B[p*rs_b + j*cs_b]. C is row-major with
// leading dimension ldc.
//
// Structure (BLIS/GotoBLAS): blocks of op(B) (KC×NC) and op(A) (MC×KC) are packed into
// contiguous panels and a register-blocked micro-kernel computes MR×NR tiles of C. The
// micro-kernels live per ISA under kernels/; this file is the portable framework around them.
#pragma once

#include "common.h"

namespace fastmlp {

// Consumer of finished blocks of the product (GemmArgs::consumer). Instead of being stored in
// C, each finished block is handed over in a scratch buffer that the consumer may modify:
//   consume(context, tile, ld_tile, row, col, m, n):
//     tile[i*ld_tile + j] = (op(A)·op(B))[row + i, col + j]   for i < m, j < n.
// The blocks cover the product exactly once; with several threads, disjoint blocks are
// consumed concurrently. Why: the training engine applies the optimizer to each tile of a
// weight gradient while it is in L1, so the gradient never goes to memory and back.
template <class T>
struct TileConsumer {
  void (*consume)(void* context, T* tile, index_t ld_tile, index_t row, index_t col, index_t m,
                  index_t n) = nullptr;
  void* context = nullptr;
};

template <class T>
struct GemmArgs {
  index_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  index_t rs_a = 0, cs_a = 0;
  const T* B = nullptr;
  index_t rs_b = 0, cs_b = 0;
  T* C = nullptr;
  index_t ldc = 0;
  // Epilogue, applied as tiles are written back:
  //   C := [mask > 0] · relu?( (accumulate ? C : 0) + op(A) op(B) + bias )
  bool accumulate = false;  // beta = 1: gradient accumulation without an extra pass
  const T* bias = nullptr;  // (N), broadcast over rows; may be null
  bool relu = false;
  // (M,N) with row stride ld_mask, or null. Backprop through a ReLU: with mask = the ReLU's
  // output h, (G W) · [h > 0] is the gradient w.r.t. the ReLU's input, in the same pass.
  const T* mask = nullptr;
  index_t ld_mask = 0;
  // If set, C is not written (and may be null): finished blocks go to the consumer. No
  // epilogue (accumulate, bias, relu, mask) may be set with it.
  TileConsumer<T> consumer;
  index_t row0 = 0, col0 = 0;  // where this product's C sits in the consumer's result
};

// The epilogue of one tile, its pointers already offset to the tile's first row and column:
//   tile := [mask > 0] · relu?( (accumulate ? C : 0) + product + bias )
template <class T>
struct TileEpilogue {
  bool accumulate = false;
  const T* bias = nullptr;
  bool relu = false;
  const T* mask = nullptr;
  index_t ld_mask = 0;
};

// The micro-kernel contract, identical for every ISA:
//   tile := epilogue( Σ_p a_panel[p] ⊗ b_panel[p] )   (see TileEpilogue)
// over a packed MR×k panel of A (a_panel[p*MR + i]) and a packed k×NR panel of B
// (b_panel[p*NR + j]), written to the m×n top-left corner (m ≤ MR, n ≤ NR) of C at c (row
// stride ldc). Panels are zero-padded to MR/NR, so the kernel may always compute a full tile.
// k may be 0.
template <class T>
using MicroKernel = void (*)(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                             index_t m, index_t n, const TileEpilogue<T>& ep);

// The small-matrix path's kernel: the same tile computation, but reading operands in place.
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
// do in registers. Null: the portable scalar loop is used.
template <class T>
using PackTransposedKernel = void (*)(T* packed, const T* w, index_t ldw, index_t kc, index_t nc);

// Packs an mc×kc block of a row-major op(A) (row stride rs, columns contiguous) into MR-row
// panels, as pack_a in gemm.cpp (MR ≤ 16): a transpose, which an ISA can do in registers.
template <class T>
using PackRowsKernel = void (*)(T* packed, const T* a, index_t rs, index_t mc, index_t kc,
                                index_t MR);

// One ISA's kernels for one dtype, with the tile and cache-block sizes they were tuned for.
template <class T>
struct GemmKernel {
  MicroKernel<T> micro_kernel = nullptr;
  index_t MR = 0, NR = 0;          // register tile
  index_t MC = 0, KC = 0, NC = 0;  // cache blocks (A block MC×KC, B block KC×NC); see each ISA
  StridedKernel<T> small_kernel = nullptr;  // MR×NR tile, operands in place
  StridedKernel<T> narrow_kernel = nullptr; // MR×(NR/2) tile, in place: a narrow last panel
  StridedKernel<T> row_kernel = nullptr;    // 1×row_NR tile, operands in place (one row of C)
  index_t row_NR = 0;
  GemvKernel<T> gemv = nullptr;
  PackTransposedKernel<T> pack_b_transposed = nullptr;
  // In-place 4×NR and 8×NR tiles for a last row block of at most 4 or 8 rows (null: the MR×NR
  // tile on zero-padded rows). A batch of 64 is 5 tiles of 12 rows and one of 4: computed
  // as 12 rows, a ninth of the product would be padding.
  StridedKernel<T> rows4_kernel = nullptr;
  StridedKernel<T> rows8_kernel = nullptr;
  PackRowsKernel<T> pack_a_rows = nullptr;  // null: the portable scalar loop
};

// C := [mask > 0] · relu?((accumulate ? C : 0) + op(A) op(B) + bias). Small products read the operands in
// place; larger ones are packed. A product is split over the thread pool when the calling
// thread's ParallelMode (threads.h) says so, or, in automatic mode, when gemm_split_pays.
template <class T>
void gemm(const GemmArgs<T>& args);

// ---- the cost model: when splitting a product over the thread pool pays ----------------------
//
// Measured on first use, per ISA, dtype and thread count, on a 64×256×256 product (8.4 MFLOP):
// one thread's speed, and the cost of a region — what a split product takes beyond its share
// of the work, (split time) − (one-thread time) / threads, the median over nine pairs of runs
// with the workers awake. A product of F FLOPs is split when the time it saves,
// F / speed · (1 − 1/threads), is at least kParallelRiskFactor region costs: the measured
// cost varies 3-5× between runs on a virtual machine, and a split that saves little is not
// worth the chance of a worker being descheduled mid-task (a time slice, milliseconds; the
// training engine's guard catches that one at run time). A worker asleep since the last region
// costs nothing extra: the caller claims the tasks it has not reached (threads.h).
// Measured (benchmarks/README.md, "Threads"): on the 2-vCPU AMD EPYC (Zen 5), one thread runs
// the 64×256×256 product at ~245 GFLOP/s and a region costs 1-7 µs, so products from about
// 2-14 MFLOP up (8 · cost · speed, two threads) are split: the mnist-shaped net's 17- and
// 51-MFLOP layers are, the 1-MFLOP layers of the digits and [30,128,128,2] nets are not.
constexpr double kParallelRiskFactor = 4.0;

struct GemmCostModel {
  double flops_per_second = 0.0;  // one thread
  double region_seconds = 0.0;    // 0: a pool of one thread, nothing is ever split
  int threads = 1;
};
template <class T>
GemmCostModel gemm_cost_model();

// Whether a product of `flops` FLOPs gains from being split over the thread pool (see above).
// False with one thread and inside a task of a parallel region.
template <class T>
bool gemm_split_pays(double flops);

// The small-matrix path's limit (2·M·N·K FLOPs; a negative value restores the default).
// Returns the previous limit. For tests and crossover measurements.
constexpr double kSmallGemmMaxFlopsDefault = 1.0e6;
double set_small_gemm_max_flops(double flops);
// Test hook (fastmlp._testing): gemm_split_pays says yes to every product while the pool has
// more than one thread, so that tests reach the parallel paths with small shapes.
void testing_force_split(bool force);

// The plain triple loop in T arithmetic: the definition of the semantics, and the path of
// tiny products, where it beats any tiling.
template <class T>
void gemm_reference(const GemmArgs<T>& args);

}  // namespace fastmlp
