// One way to split a product over the thread pool, shared by the float32 GEMM (gemm.cpp) and
// the bfloat16 one (bf16.cpp).
#pragma once

#include <algorithm>

#include "../threads.h"
#include "gemm.h"

namespace fastmlp {

// Splits C into tm × tn rectangles aligned to the MR × NR micro-tile (`parts` of them at most),
// each computed by serial(part) into its block of the sink as one task of a parallel region:
// tasks share no output and never split the K reduction, so every element is computed by
// exactly the same sequence of micro-kernel operations whoever runs it and however many tasks
// there are — results are bitwise identical for any thread count. Each task packs the A rows
// and B columns it needs, so A is packed tn times and B tm times; (tm, tn) minimises the
// largest task's tile count, then that duplicated packing. Every row part gets at least two
// row tiles (or all rows), so no part is a lone one-row product, which the float32 in-place
// path would compute with its row kernel.
template <class T, class Serial>
void split_over_tiles(const GemmArgs<T>& g, index_t MR, index_t NR, index_t parts,
                      Serial&& serial) {
  const index_t row_tiles = (g.M + MR - 1) / MR;
  const index_t col_tiles = (g.N + NR - 1) / NR;
  index_t best_tm = 1, best_tn = 1, best_cost = row_tiles * col_tiles, best_packing = 0;
  for (index_t tm = 1; tm <= parts; ++tm) {
    if (tm > 1 && 2 * tm > row_tiles) break;
    const index_t tn = std::min(parts / tm, col_tiles);
    const index_t cost = ((row_tiles + tm - 1) / tm) * ((col_tiles + tn - 1) / tn);
    const index_t packing = (tn - 1) * g.M + (tm - 1) * g.N;  // elements packed twice, per K
    if (cost < best_cost || (cost == best_cost && packing < best_packing)) {
      best_tm = tm, best_tn = tn, best_cost = cost, best_packing = packing;
    }
  }
  const index_t tm = best_tm, tn = best_tn;
  if (tm * tn == 1) {
    serial(g);
    return;
  }
  parallel_for(static_cast<int>(tm * tn), [&](int task) {
    const index_t ti = task / tn, tj = task % tn;
    // Tiles [t·count/parts, (t+1)·count/parts): sizes differ by at most one tile.
    const index_t r0 = ti * row_tiles / tm * MR;
    const index_t r1 = std::min(g.M, (ti + 1) * row_tiles / tm * MR);
    const index_t c0 = tj * col_tiles / tn * NR;
    const index_t c1 = std::min(g.N, (tj + 1) * col_tiles / tn * NR);
    if (r0 >= r1 || c0 >= c1) return;
    GemmArgs<T> part = g;
    part.M = r1 - r0;
    part.N = c1 - c0;
    part.A = g.A + r0 * g.rs_a;
    part.B = g.B + c0 * g.cs_b;
    part.packed_b = g.packed_b ? g.packed_b + c0 * g.K : nullptr;  // c0: a multiple of NR
    part.sink = g.sink.block(r0, c0);
    serial(part);
  });
}

}  // namespace fastmlp
