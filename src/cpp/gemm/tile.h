// Write-back of a micro-kernel's accumulator tile into C with the fused epilogue, shared by
// every ISA for edge tiles (m < MR or n < NR) and by the portable kernel for all tiles.
//
// Everything in this header (and gemv*.h) is `static`: each translation unit gets its own
// copy, compiled with its own ISA flags. With external linkage the linker would keep one copy
// for all, and might hand the AVX-512 build of a helper to the portable code (SIGILL on a CPU
// without AVX-512).
#pragma once

#include "context.h"

namespace fastmlp {

// The epilogue of one element (see TileEpilogue): v is the product, c_old the value in C,
// mask_value the mask's entry (ignored without a mask).
template <class T>
static inline T apply_epilogue(T v, T c_old, const TileEpilogue<T>& ep, index_t j, T mask_value) {
  if (ep.accumulate) v = c_old + v;
  if (ep.bias) v += ep.bias[j];
  // `v <= 0 ? 0 : v` lets NaN through, as np.maximum(v, 0) does: no silent NaN hiding.
  if (ep.relu) v = v <= T(0) ? T(0) : v;
  if (ep.mask && !(mask_value > T(0))) v = T(0);
  return v;
}

// acc (MR,NR) row-major, holding Σ_p a_p ⊗ b_p for one tile:
//   c[i,j] := epilogue(acc[i,j])   for i < m, j < n
template <class T, int NR>
static inline void write_tile(const T* acc, T* c, index_t ldc, index_t m, index_t n,
                       const TileEpilogue<T>& ep) {
  for (index_t i = 0; i < m; ++i) {
    T* c_row = c + i * ldc;
    const T* acc_row = acc + i * NR;
    const T* mask_row = ep.mask ? ep.mask + i * ep.ld_mask : nullptr;
    for (index_t j = 0; j < n; ++j)
      c_row[j] = apply_epilogue(acc_row[j], ep.accumulate ? c_row[j] : T(0), ep, j,
                                mask_row ? mask_row[j] : T(0));
  }
}

}  // namespace fastmlp
