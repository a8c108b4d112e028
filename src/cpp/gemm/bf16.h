// The bfloat16 GEMM: C (M,N) = bf16(op(A)) (M,K) · bf16(op(B)) (K,N), float32 operands and
// result, products accumulated in float32. Only the operands are rounded, while they are packed
// (no separate conversion pass over memory); C is never rounded.
//
// Legend as gemm.h: M rows of C, N columns, K the reduction length; MR×NR the register tile,
// MC×KC / KC×NC the packed blocks of op(A) / op(B).
//
// Rounding (bf16_bits, bf16_round.h): round to nearest, ties to even; NaN stays a (quiet) NaN,
// ±inf stays ±inf, a float past bf16's largest finite value rounds to inf; float32 zeros and
// subnormals become a signed zero. The last is what x86's VCVTNE2PS2BF16 and VDPBF16PS do
// (they treat subnormal inputs as zero); the portable path does the same so that both paths
// multiply identical operands and differ only in the order of the float32 additions.
//
// Paths (Bf16Path), chosen at run time, each forceable (testing_force_bf16_path):
//   portable:   operands rounded to bf16 while packed into float32 panels (or, where the
//               active ISA has a float32 packer for the layout, each panel rounded right after
//               it is packed, while in cache), then the active ISA's float32 micro-kernel (a
//               product of two bf16 values is exact in float32).
//   avx512bf16: operands packed as bf16 pairs of k, VDPBF16PS micro-kernel (2× the float32
//               multiply rate per instruction). Automatic when the active ISA is avx512 and
//               CPUID says AVX512_BF16.
#pragma once

#include "../common.h"
#include "context.h"
#include "gemm.h"

namespace fastmlp {

enum class Bf16Path { automatic = 0, portable = 1, avx512bf16 = 2 };

const char* bf16_path_name(Bf16Path path);
Bf16Path parse_bf16_path(const std::string& name);  // throws std::invalid_argument

// CPUID leaf 7 subleaf 1 EAX bit 5 (AVX512_BF16), on a CPU whose OS saves AVX-512 state.
bool avx512bf16_supported();

// The path the next product takes: the forced one, else avx512bf16 when the active ISA is
// avx512 and the CPU has AVX512_BF16, else portable.
Bf16Path active_bf16_path();

// The product bf16(op(A)) · bf16(op(B)) into args.sink, with gemm()'s semantics (gemm.h's
// TileSink): C := [mask > 0] · relu?((accumulate ? C : 0) + product + bias), the epilogue on
// the float32 tile after its last K block, never rounded; or, with a consumer, each finished
// tile handed over (the whole product at once when K spans several blocks). A consumer with an
// epilogue: std::invalid_argument. gemm<float> calls this under PrecisionScope(bfloat16).
// Split over the thread pool as gemm() is (threads.h's ParallelMode, gemm_split_pays), with
// results bitwise identical for any count.
void gemm_bf16(const GemmArgs<float>& args);

// out[i] = the bf16 value the GEMM multiplies in place of x[i], as a float32.
void round_to_bf16(float* out, const float* x, index_t n);

// Every bf16 product takes `path` (automatic: the choice above again); forcing avx512bf16 on a
// CPU without it throws std::invalid_argument. Returns the previous forced path.
Bf16Path testing_force_bf16_path(Bf16Path path);

// ---- the packed-block driver's contract, shared by the paths ---------------------------------
//
// A path packs the mc×kc block of op(A) into MR-row panels and the kc×nc block of op(B) into
// NR-column panels, `k_group` consecutive values of k side by side (1: float32 panels as in
// context.h; 2: bf16 pairs, k zero-padded to even). The panel of rows ir.. starts
// ir·round_up(kc, k_group)·value_bytes bytes into the packed A block; likewise for columns.
struct Bf16Kernels {
  index_t MR = 0, NR = 0, MC = 0, KC = 0, NC = 0;  // KC a multiple of k_group; MC of MR
  index_t k_group = 1;
  index_t value_bytes = 4;
  // element (i,p) of op(A) is a[i*rs + p*cs]; packs rows [0, mc), zero-padded to MR rows.
  void (*pack_a)(void* packed, const float* a, index_t rs, index_t cs, index_t mc, index_t kc,
                 index_t MR) = nullptr;
  // element (p,j) of op(B) is b[p*rs + j*cs]; packs columns [0, nc), zero-padded to NR.
  void (*pack_b)(void* packed, const float* b, index_t rs, index_t cs, index_t kc, index_t nc,
                 index_t NR) = nullptr;
  // tile (m ≤ MR, n ≤ NR) := finish((accumulate ? tile : 0) + Σ_p a_panel[p] ⊗ b_panel[p]),
  // finish = the bias, ReLU and mask of `last` (its accumulate ignored) after the last K block,
  // the identity where `last` is null.
  void (*kernel)(index_t kc, const void* a_panel, const void* b_panel, float* c, index_t ldc,
                 index_t m, index_t n, bool accumulate,
                 const TileEpilogue<float>* last) = nullptr;
  // The portable path has no kernel of its own: it runs this float32 one (context.h's contract).
  MicroKernel<float> fp32_kernel = nullptr;
  // A batch of one against op(B) = Wᵀ with W (n,k) row-major: c[j] = epilogue(Σ_p bf16(x[p])
  // bf16(w[j,p])), W read in place and rounded in registers, never packed (gemv_simd.h's
  // contract). Null: the path rounds W row block by row block and runs the float32 GEMV.
  GemvKernel<float> gemv = nullptr;
};

// The active path's kernels, tile and blocks (what gemm_bf16 runs now).
Bf16Kernels active_bf16_kernels();

#ifdef FASTMLP_X86
// kernels/avx512bf16/: call only when avx512bf16_supported().
Bf16Kernels avx512bf16_kernels();
#endif

}  // namespace fastmlp
