// checks.h's first_nonfinite on AVX-512F (checks.cpp calls it where the active ISA is avx512).
// Compiled with AVX-512 flags; called only where the CPU has them.
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "../../../checks.h"
#include "zmm_avx512.h"

namespace fastmlp {

namespace {

// x · 0 is ±0 for a finite x and NaN for NaN and ±inf, so acc + x · 0 stays 0 until the first
// non-finite value and NaN from then on: one FMA per vector (where |x| ≤ max needs an abs, a
// compare and an OR), four chains so that its latency does not set the pace. The tail's
// masked-off lanes load as 0. Blocks of 4096 values, the element search only in a block whose
// sum is NaN.
template <class T>
index_t first_nonfinite_blocks(const T* data, index_t n) {
  using V = Zmm<T>;
  constexpr index_t kLanes = V::lanes, kBlock = 4096;
  for (index_t start = 0; start < n; start += kBlock) {
    const index_t end = start + kBlock < n ? start + kBlock : n;
    const typename V::reg zero = V::zero();
    typename V::reg a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    index_t i = start;
    for (; i + 4 * kLanes <= end; i += 4 * kLanes) {
      a0 = V::fmadd(V::loadu(data + i), zero, a0);
      a1 = V::fmadd(V::loadu(data + i + kLanes), zero, a1);
      a2 = V::fmadd(V::loadu(data + i + 2 * kLanes), zero, a2);
      a3 = V::fmadd(V::loadu(data + i + 3 * kLanes), zero, a3);
    }
    for (; i < end; i += kLanes) a0 = V::fmadd(V::load_first(data + i, end - i), zero, a0);
    if (V::any_nan(V::add(V::add(a0, a1), V::add(a2, a3))))
      for (index_t k = start; k < end; ++k)
        if (!(std::fabs(data[k]) <= std::numeric_limits<T>::max())) return k;
  }
  return -1;
}

}  // namespace

index_t first_nonfinite_avx512(const float* data, index_t n) {
  return first_nonfinite_blocks(data, n);
}

index_t first_nonfinite_avx512(const double* data, index_t n) {
  return first_nonfinite_blocks(data, n);
}

}  // namespace fastmlp
