// y[0:n] += a · x[0:n]: the row operation of the sparse first layer (sparse.h: each non-zero
// adds a row of W_0ᵀ to an output row, each touched column's gradient adds rows of dL/da).
// Included by each ISA's translation unit and compiled with its flags: the loop vectorises to
// that ISA's width (portable x86-64 code has SSE2 only, 4 floats; AVX-512 has 16), and the
// function has internal linkage, so every ISA keeps its own copy.
#pragma once

#include "../common.h"

namespace fastmlp {

template <class T>
static void axpy_kernel(index_t n, T a, const T* __restrict__ x, T* __restrict__ y) {
  for (index_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace fastmlp
