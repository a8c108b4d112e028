// Write-back of a micro-kernel's accumulator tile into C with the fused epilogue, shared by
// every ISA for edge tiles (m < MR or n < NR) and by the portable kernel for all tiles.
#pragma once

#include "../common.h"

namespace fastmlp {

// acc (MR,NR) row-major, holding Σ_p a_p ⊗ b_p for one tile.
//   c[i,j] := relu?( (accumulate ? c[i,j] : 0) + acc[i,j] + bias[j] )   for i < m, j < n
template <class T, int NR>
inline void write_tile(const T* acc, T* c, index_t ldc, index_t m, index_t n, bool accumulate,
                       const T* bias, bool relu) {
  for (index_t i = 0; i < m; ++i) {
    T* c_row = c + i * ldc;
    const T* acc_row = acc + i * NR;
    for (index_t j = 0; j < n; ++j) {
      T v = acc_row[j];
      if (accumulate) v = c_row[j] + v;
      if (bias) v += bias[j];
      // `v <= 0 ? 0 : v` lets NaN through, as np.maximum(v, 0) does: no silent NaN hiding.
      if (relu) v = v <= T(0) ? T(0) : v;
      c_row[j] = v;
    }
  }
}

}  // namespace fastmlp
