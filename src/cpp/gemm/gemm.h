// General matrix product C (M,N) = op(A) (M,K) · op(B) (K,N), with fused epilogues.
//
// Legend: M rows of C (batch, or out-features for weight gradients), N columns of C,
// K the reduction length. Operands are described by strides, so a transpose or a NumPy view
// (non-contiguous, negative stride) costs nothing: element (i,p) of op(A) is
// A[i*rs_a + p*cs_a], element (p,j) of op(B) is B[p*rs_b + j*cs_b]. C is row-major with
// leading dimension ldc.
//
// Structure (BLIS/GotoBLAS): blocks of op(B) (KC×NC) and op(A) (MC×KC) are packed into
// contiguous panels and a register-blocked micro-kernel computes MR×NR tiles of C. This file
// is the API; gemm.cpp the portable framework; context.h the micro-kernel contract and each
// ISA's context (its kernels and block sizes), whose kernels live under kernels/<isa>/.
#pragma once

#include "common.h"
#include "../cpu.h"

namespace fastmlp {

// Consumer of finished blocks of the product (TileSink::consumer). Instead of being stored in
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

// Where the finished tiles of a product (M,N) go: into C through the epilogue, or, when
// consumer.consume is set, to the consumer (C is then not written and may be null, and no
// epilogue may be set). The framework passes this one object down and delivers every tile
// through put(); a block of the product has the sink block(row, col).
template <class T>
struct TileSink {
  // C (M,N) row-major with leading dimension ldc, written as
  //   C := [mask > 0] · relu?( (accumulate ? C : 0) + op(A) op(B) + bias )
  T* C = nullptr;
  index_t ldc = 0;
  bool accumulate = false;  // beta = 1: gradient accumulation without an extra pass
  const T* bias = nullptr;  // (N), broadcast over rows; may be null
  bool relu = false;
  // (M,N) with row stride ld_mask, or null. Backprop through a ReLU: with mask = the ReLU's
  // output h, (G W) · [h > 0] is the gradient w.r.t. the ReLU's input, in the same pass.
  const T* mask = nullptr;
  index_t ld_mask = 0;
  TileConsumer<T> consumer;
  index_t row0 = 0, col0 = 0;  // where this product's C sits in the consumer's result

  bool consumes() const { return consumer.consume != nullptr; }
  bool has_epilogue() const { return accumulate || bias || relu || mask; }

  // The sink of the block of C that starts at (row, col).
  TileSink block(index_t row, index_t col) const {
    TileSink part = *this;
    part.C = C ? C + row * ldc + col : nullptr;  // null with a consumer
    part.bias = bias ? bias + col : nullptr;
    part.mask = mask ? mask + row * ld_mask + col : nullptr;
    part.row0 = row0 + row;
    part.col0 = col0 + col;
    return part;
  }

  // The epilogue of the tile at (row, col) of C. `first`/`last`: is this the first / last K
  // block (beta and bias apply once, first; ReLU and mask once, last).
  TileEpilogue<T> epilogue(index_t row, index_t col, bool first = true, bool last = true) const {
    TileEpilogue<T> ep;
    ep.accumulate = accumulate || !first;
    ep.bias = (first && bias) ? bias + col : nullptr;
    ep.relu = relu && last;
    ep.mask = (last && mask) ? mask + row * ld_mask + col : nullptr;
    ep.ld_mask = ld_mask;
    return ep;
  }

  // Delivers the m×n tile at (row, col): compute(c, ldc, epilogue) writes it either straight
  // into C with the epilogue, or (with a consumer) into `scratch` (row stride ld_scratch, the
  // calling thread's buffer) with no epilogue, and the consumer gets it. Inlined into each
  // loop nest: one predictable branch per tile.
  template <class Compute>
  void put(index_t row, index_t col, index_t m, index_t n, bool first, bool last, T* scratch,
           index_t ld_scratch, Compute&& compute) const {
    if (consumer.consume) {
      compute(scratch, ld_scratch, TileEpilogue<T>{});
      consumer.consume(consumer.context, scratch, ld_scratch, row0 + row, col0 + col, m, n);
    } else {
      compute(C + row * ldc + col, ldc, epilogue(row, col, first, last));
    }
  }
};

template <class T>
struct GemmArgs {
  index_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  index_t rs_a = 0, cs_a = 0;
  const T* B = nullptr;
  index_t rs_b = 0, cs_b = 0;
  // Optional: op(B) already packed by prepack_b (NR-column panels spanning all of K) and the
  // NR they were packed with; the in-place and packed paths then read its panels instead of
  // packing op(B), provided the kernels gemm() runs have that NR (another thread's set_isa
  // may have switched them since the pack was checked: gemm() then packs op(B) itself). B
  // itself must still be given (the reference loop, the GEMV of a batch of one, the bfloat16
  // product and an NR mismatch read it).
  const T* packed_b = nullptr;
  index_t packed_b_nr = 0;
  TileSink<T> sink;  // C and its epilogue, or a consumer
};

// ---- pre-packed op(B): weights packed once for inference --------------------------------------
//
// op(B) = Wᵀ, W (N,K) row-major (row stride ldw), packed into NR-column panels of the whole
// reduction: packed[(j/NR)·NR·K + p·NR + j%NR] = W[j, p], zero-padded to a multiple of NR
// columns. A K-block [pc, pc+kc) of a panel is then the contiguous kc×NR panel that
// gemm_packed's micro-kernel reads, and the whole panel the in-place path's one.
// Elements (≥ N·K: the padding of the last panel) the pack of (N,K) takes; the NR is `isa`'s
// (prepack_nr), so a pack is only valid for kernels of that NR. The ISA is a parameter, not
// read from the active one at each call: another thread may switch it in between.
template <class T>
index_t prepacked_b_elements(index_t N, index_t K, Isa isa);
template <class T>
index_t prepack_nr(Isa isa);
template <class T>
void prepack_b(T* packed, const T* W, index_t ldw, index_t N, index_t K, Isa isa);

// The ways gemm() can compute a product. The automatic choice depends on the shape only
// (gemm.cpp): the reference loop for tiny products, the in-place path for small ones and
// batches whose op(B) fits in L2, the packed path for the rest.
enum class GemmPath {
  automatic,  // chosen from the shape
  reference,  // gemm_reference: the plain triple loop
  in_place,   // operands read in place (no packing of B when its rows are contiguous)
  packed,     // cache blocks of A and B packed into panels around the micro-kernel
};

// The product into args.sink (see TileSink): C := epilogue(op(A) op(B)), or the consumer gets
// its tiles. The path is chosen from the shape (GemmPath); under PrecisionScope(bfloat16) a
// float32 product runs gemm_bf16 instead (below). A product is split over the thread pool
// when the calling thread's ParallelMode (threads.h) says so, or, in automatic mode, when
// gemm_split_pays.
template <class T>
void gemm(const GemmArgs<T>& args);

// ---- precision: float32 products in bfloat16 --------------------------------------------------

// How gemm<float> multiplies: float32 (the default), or bfloat16 (gemm/bf16.h: operands rounded
// to bf16 while packed, float32 accumulation, C float32). gemm<double> ignores it: float64
// never rounds to bf16 (the Python layer refuses bfloat16 for float64 models).
enum class GemmPrecision { float32, bfloat16 };

// Sets the calling thread's precision for the lifetime of the scope (scopes nest), as
// ParallelScope (threads.h) does for the thread mode. Under bfloat16 every gemm<float> of this
// thread, whatever its shape and sink (epilogue or consumer), runs gemm_bf16: its packed driver,
// or for a batch of one against Wᵀ its GEMV (W read in place, rounded in registers). GemmPath,
// forced or chosen, applies to float32 products only, so the operands of every bf16 product
// are rounded, a batch of one's included. The workers of a product's
// parallel region need no scope (only the calling thread dispatches); code that calls gemm()
// from inside its own parallel tasks opens the scope in each task.
class PrecisionScope {
 public:
  explicit PrecisionScope(GemmPrecision precision);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  GemmPrecision saved_;
};
GemmPrecision current_gemm_precision();
// What a caller that asks for `requested` opens its scope with: bfloat16 when asked; for
// float32 (every default) the calling thread's precision as it is, float32 unless a test hook
// set bfloat16 around the call.
inline GemmPrecision requested_gemm_precision(GemmPrecision requested) {
  return requested == GemmPrecision::bfloat16 ? requested : current_gemm_precision();
}

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

// The plain triple loop in T arithmetic: the definition of the semantics, and the path of
// tiny products, where it beats any tiling. Into C only (args.sink without a consumer).
template <class T>
void gemm_reference(const GemmArgs<T>& args);

// ---- test hooks (fastmlp._testing) ----------------------------------------------------------

// Every product takes `path` (GemmPath::automatic: the choice from the shape again), so that
// tests and crossover measurements reach each path with any shape. Returns the previous one.
GemmPath testing_force_gemm_path(GemmPath path);
// gemm_split_pays says yes to every product while the pool has more than one thread, so that
// tests reach the parallel paths with small shapes.
void testing_force_split(bool force);
// Sets the calling thread's precision outside any scope (Python's test hook, which cannot hold
// an RAII scope across calls); returns the previous one. C++ code opens a PrecisionScope.
GemmPrecision testing_set_gemm_precision(GemmPrecision precision);

}  // namespace fastmlp
