// The table of per-ISA GEMM contexts (see context.h).
#include "context.h"

#include <algorithm>
#include <array>

namespace fastmlp {

namespace {

index_t round_down(index_t value, index_t multiple) {
  return std::max(multiple, value / multiple * multiple);
}

index_t round_nearest(index_t value, index_t multiple) {
  return std::max(multiple, (value + multiple / 2) / multiple * multiple);
}

void derive_both_dtypes_cache_blocks(IsaContext& isa, const CacheSizes& c) {
  derive_cache_blocks(isa.sgemm, c);
  derive_cache_blocks(isa.dgemm, c);
}

// Built once, the first time a product runs: the contexts of the ISAs this CPU supports.
std::array<IsaContext, kIsaCount> build_contexts() {
  std::array<IsaContext, kIsaCount> contexts;
  contexts[static_cast<int>(Isa::generic)] = generic_context();
#ifdef FASTMLP_X86
  if (isa_supported(Isa::avx2)) contexts[static_cast<int>(Isa::avx2)] = avx2_context();
  if (isa_supported(Isa::avx512)) contexts[static_cast<int>(Isa::avx512)] = avx512_context();
#endif
  for (IsaContext& isa : contexts)
    if (isa.sgemm.MR > 0) derive_both_dtypes_cache_blocks(isa, cache_sizes());
  return contexts;
}

}  // namespace

// S = sizeof(T). L1d has W1 ways of N1 sets of lines of L bytes (size W1·N1·L).
//
// KC (Low et al. 2016, §4): the B micro-panel KC×NR stays in L1 while the A micro-panels
// MR×KC stream through it; of the W1 ways one is left to C and the rest shared in proportion
// to the panels' widths, so A gets C_A = ⌊(W1 − 1) / (1 + NR/MR)⌋ ways and
//   KC = C_A · N1 · L / (MR · S).
// Zen 5 / Sapphire Rapids (48 KiB, 12 ways), AVX-512 float 12×32: C_A = 3, KC = 256.
// A kernel may instead ask for a B micro-panel of b_panel_l1d_multiple × L1d (AVX-512: 2,
// KC = 768 on these cores): measured faster (kernels/avx512/), because each K block reads and
// rewrites every C tile once and a tile of a large C misses to memory, while the 12×32 tile
// does 17.5 FLOP per byte of panel, little enough for L2 to feed it.
//
// MC: the A block MC×KC takes about 70 % of L2, the rest left to the B micro-panel, C tiles
// and what streams through; MC rounded to the nearest multiple of MR. On Zen 5 (1 MiB) this
// is the 240 that was tuned; measured there, 168 to 276 run the same (within 2 %).
//
// The three are upper bounds: gemm_packed splits M, K and N into the fewest blocks within
// them, as even as MR / NR allow (even_block in gemm.cpp), so that no sliver block is left.
//
// NC: the B block KC×NC takes 3/4 of this core's share of L3 (of L2 without one), rounded
// down to a multiple of NR: 4096 floats on the 2-vCPU Zen 5 (32 MiB L3 shared by 2). NC
// only sets how often A is repacked; 2720 to 8192 measured the same there.
template <class T>
void derive_cache_blocks(GemmContext<T>& k, const CacheSizes& c) {
  const index_t S = sizeof(T), MR = k.MR, NR = k.NR;
  index_t kc;
  if (k.b_panel_l1d_multiple > 0) {
    kc = static_cast<index_t>(k.b_panel_l1d_multiple * static_cast<double>(c.l1d)) / (NR * S);
  } else {
    const index_t sets = c.l1d / (index_t{c.l1d_ways} * c.line);
    const index_t ways_a = std::max<index_t>(1, (c.l1d_ways - 1) * MR / (MR + NR));
    kc = ways_a * sets * c.line / (MR * S);
  }
  k.KC = round_down(kc, 16);
  k.MC = round_nearest(c.l2 * 7 / 10 / (k.KC * S), MR);
  k.NC = round_down(std::max(c.l3_per_core(), c.l2) * 3 / 4 / (k.KC * S), NR);
}

template void derive_cache_blocks<float>(GemmContext<float>&, const CacheSizes&);
template void derive_cache_blocks<double>(GemmContext<double>&, const CacheSizes&);

const IsaContext& isa_context(Isa isa) {
  static const std::array<IsaContext, kIsaCount> contexts = build_contexts();
  return contexts[static_cast<int>(isa)];
}

}  // namespace fastmlp
