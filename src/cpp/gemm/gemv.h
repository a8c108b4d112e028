// The batch-of-one product c = W x (+ bias, relu) with W row-major (n, k): n dot products.
// The portable version (the SIMD translation units have their own, with intrinsics). Each row keeps LANES independent partial sums, so the compiler vectorises the
// sum without reassociating it (no -ffast-math needed); ROWS rows at a time reuse each load of
// x and give ROWS independent FMA chains.
#pragma once

#include "tile.h"

namespace fastmlp {

template <class T, int LANES>
static void gemv_portable(index_t k, index_t n, const T* __restrict x, const T* __restrict w,
                   index_t ldw, T* __restrict c, const TileEpilogue<T>& ep) {
  constexpr int ROWS = 4;
  const index_t k_main = k / LANES * LANES;
  index_t j = 0;
  auto finish = [&](index_t row, const T* part, const T* w_row) {
    T sum = 0;
    for (int l = 0; l < LANES; ++l) sum += part[l];
    for (index_t q = k_main; q < k; ++q) sum += x[q] * w_row[q];
    c[row] = apply_epilogue(sum, ep.accumulate ? c[row] : T(0), ep, row,
                            ep.mask ? ep.mask[row] : T(0));
  };
  for (; j + ROWS <= n; j += ROWS) {
    const T* w0 = w + j * ldw;
    const T* w1 = w0 + ldw;
    const T* w2 = w1 + ldw;
    const T* w3 = w2 + ldw;
    T p0[LANES] = {}, p1[LANES] = {}, p2[LANES] = {}, p3[LANES] = {};
    for (index_t p = 0; p < k_main; p += LANES) {
      for (int l = 0; l < LANES; ++l) {
        const T xv = x[p + l];
        p0[l] += xv * w0[p + l];
        p1[l] += xv * w1[p + l];
        p2[l] += xv * w2[p + l];
        p3[l] += xv * w3[p + l];
      }
    }
    finish(j, p0, w0);
    finish(j + 1, p1, w1);
    finish(j + 2, p2, w2);
    finish(j + 3, p3, w3);
  }
  for (; j < n; ++j) {
    const T* w0 = w + j * ldw;
    T p0[LANES] = {};
    for (index_t p = 0; p < k_main; p += LANES)
      for (int l = 0; l < LANES; ++l) p0[l] += x[p + l] * w0[p + l];
    finish(j, p0, w0);
  }
}

}  // namespace fastmlp
