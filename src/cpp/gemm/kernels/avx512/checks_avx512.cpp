// checks.h's first_nonfinite on AVX-512F (checks.cpp calls it where the active ISA is avx512).
// Compiled with AVX-512 flags; called only where the CPU has them.
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "../../../checks.h"

namespace fastmlp {

namespace {

// x · 0 is ±0 for a finite x and NaN for NaN and ±inf, so acc + x · 0 stays 0 until the first
// non-finite value and NaN from then on: one FMA per vector (where |x| ≤ max needs an abs, a
// compare and an OR), four chains so that its latency does not set the pace. The tail's
// masked-off lanes load as 0. Blocks of 4096 values, the element search only in a block whose
// sum is NaN.
template <class T, class Vec, class Ops>
index_t first_nonfinite_blocks(const T* data, index_t n) {
  constexpr index_t kLanes = 64 / sizeof(T), kBlock = 4096;
  for (index_t start = 0; start < n; start += kBlock) {
    const index_t end = start + kBlock < n ? start + kBlock : n;
    const Vec zero = Ops::zero();
    Vec a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    index_t i = start;
    for (; i + 4 * kLanes <= end; i += 4 * kLanes) {
      a0 = Ops::fmadd(Ops::load(data + i), zero, a0);
      a1 = Ops::fmadd(Ops::load(data + i + kLanes), zero, a1);
      a2 = Ops::fmadd(Ops::load(data + i + 2 * kLanes), zero, a2);
      a3 = Ops::fmadd(Ops::load(data + i + 3 * kLanes), zero, a3);
    }
    for (; i < end; i += kLanes)
      a0 = Ops::fmadd(Ops::load_first(data + i, end - i), zero, a0);
    if (Ops::any_nan(Ops::add(Ops::add(a0, a1), Ops::add(a2, a3))))
      for (index_t k = start; k < end; ++k)
        if (!(std::fabs(data[k]) <= std::numeric_limits<T>::max())) return k;
  }
  return -1;
}

struct FloatOps {
  static __m512 zero() { return _mm512_setzero_ps(); }
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load_first(const float* p, index_t count) {
    const __mmask16 mask = count >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << count) - 1u);
    return _mm512_maskz_loadu_ps(mask, p);
  }
  static __m512 fmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static bool any_nan(__m512 v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
};

struct DoubleOps {
  static __m512d zero() { return _mm512_setzero_pd(); }
  static __m512d load(const double* p) { return _mm512_loadu_pd(p); }
  static __m512d load_first(const double* p, index_t count) {
    const __mmask8 mask = count >= 8 ? 0xFF : static_cast<__mmask8>((1u << count) - 1u);
    return _mm512_maskz_loadu_pd(mask, p);
  }
  static __m512d fmadd(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
  static __m512d add(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
  static bool any_nan(__m512d v) { return _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q) != 0; }
};

}  // namespace

index_t first_nonfinite_avx512(const float* data, index_t n) {
  return first_nonfinite_blocks<float, __m512, FloatOps>(data, n);
}

index_t first_nonfinite_avx512(const double* data, index_t n) {
  return first_nonfinite_blocks<double, __m512d, DoubleOps>(data, n);
}

}  // namespace fastmlp
