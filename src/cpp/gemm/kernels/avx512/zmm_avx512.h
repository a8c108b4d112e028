// One zmm register's operations for float (16 lanes) and double (8), so that a kernel is
// written once for both. In an anonymous namespace, like masks_avx512.h's `static`: each
// AVX-512 translation unit that includes it keeps its own copy, compiled with its own flags.
#pragma once

#include <immintrin.h>

#include "../../../common.h"

namespace fastmlp {

namespace {

template <class T>
struct Zmm;

template <>
struct Zmm<float> {
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int lanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_load_ps(p); }
  static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg loadu(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_first(const float* p, index_t count) { return loadu(first(count), p); }
  static mask first(index_t count) {
    return count >= lanes ? static_cast<mask>(~0u)
           : count <= 0   ? static_cast<mask>(0)
                          : static_cast<mask>((1u << count) - 1u);
  }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
  static mask positive(reg v) { return _mm512_cmp_ps_mask(v, zero(), _CMP_GT_OQ); }
  static reg keep(mask m, reg v) { return _mm512_maskz_mov_ps(m, v); }
  static void storeu(mask m, float* p, reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static bool any_nan(reg v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
};

template <>
struct Zmm<double> {
  using reg = __m512d;
  using mask = __mmask8;
  static constexpr int lanes = 8;
  static reg zero() { return _mm512_setzero_pd(); }
  static reg load(const double* p) { return _mm512_load_pd(p); }
  static reg broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  static reg loadu(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static reg loadu(const double* p) { return _mm512_loadu_pd(p); }
  static reg load_first(const double* p, index_t count) { return loadu(first(count), p); }
  static mask first(index_t count) {
    return count >= lanes ? static_cast<mask>(~0u)
           : count <= 0   ? static_cast<mask>(0)
                          : static_cast<mask>((1u << count) - 1u);
  }
  static double sum(reg v) { return _mm512_reduce_add_pd(v); }
  static mask positive(reg v) { return _mm512_cmp_pd_mask(v, zero(), _CMP_GT_OQ); }
  static reg keep(mask m, reg v) { return _mm512_maskz_mov_pd(m, v); }
  static void storeu(mask m, double* p, reg v) { _mm512_mask_storeu_pd(p, m, v); }
  static bool any_nan(reg v) { return _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q) != 0; }
};

}  // namespace

}  // namespace fastmlp
