// The batch-of-one product c = epilogue(W x) with W row-major (n, k): n dot products, for any
// SIMD flavour V (included by each ISA's translation unit, compiled with its flags).
// V provides: lanes, zero() (an accumulator), loadu(p) (the operand register of p[0..lanes)),
// load_first(p, count) (lanes < count, rest 0, memory beyond not read), fmadd(a, b, acc)
// (acc + a·b lane-wise, or pairwise for the bf16 flavour), sum(acc).
#pragma once

#include "tile.h"

namespace fastmlp {

// ROWS dot products at a time: ROWS independent FMA chains sharing each load of x; the K tail
// is a masked load.
template <class V, class T>
static void gemv_simd(index_t k, index_t n, const T* x, const T* w, index_t ldw, T* c,
               const TileEpilogue<T>& ep) {
  using accumulator = decltype(V::zero());
  constexpr int L = V::lanes, ROWS = 8;
  const index_t k_main = k / L * L;
  for (index_t j = 0; j < n; j += ROWS) {
    const int rows = static_cast<int>(n - j < ROWS ? n - j : ROWS);
    const T* w_row[ROWS];
    for (int r = 0; r < ROWS; ++r) w_row[r] = w + (j + (r < rows ? r : rows - 1)) * ldw;
    accumulator acc[ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) acc[r] = V::zero();
    for (index_t p = 0; p < k_main; p += L) {
      const auto xv = V::loadu(x + p);
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) acc[r] = V::fmadd(xv, V::loadu(w_row[r] + p), acc[r]);
    }
    if (k_main < k) {
      const auto xv = V::load_first(x + k_main, k - k_main);
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r)
        acc[r] = V::fmadd(xv, V::load_first(w_row[r] + k_main, k - k_main), acc[r]);
    }
    for (int r = 0; r < rows; ++r)
      c[j + r] = apply_epilogue(V::sum(acc[r]), ep.accumulate ? c[j + r] : T(0), ep, j + r,
                                ep.mask ? ep.mask[j + r] : T(0));
  }
}

}  // namespace fastmlp
