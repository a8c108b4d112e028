// Portable micro-kernels: plain C++ the compiler vectorises for whatever the target baseline is
// (SSE2 on x86-64, NEON on aarch64). Also the fallback on CPUs without AVX2.
#include "../../axpy.h"
#include "../../max_abs.h"
#include "../../context.h"
#include "../../gemv.h"
#include "../../tile.h"

namespace fastmlp {

namespace {

// MR×NR accumulators kept in registers: with 16 vector registers of 16 bytes (SSE2/NEON),
// float 4×8 = 8 registers of accumulators, double 4×4 = 8; the rest hold a and b values.
// In-place variant (see StridedKernel in context.h): reads only the n valid columns of B.
template <class T, int MR, int NR>
void strided_kernel_generic(index_t k, const T* a, index_t a_rs, index_t a_cs, const T* b,
                            index_t b_rs, T* c, index_t ldc, index_t m, index_t n,
                            const TileEpilogue<T>& ep) {
  T acc[MR * NR] = {};
  const index_t cols = n < NR ? n : NR;
  for (index_t p = 0; p < k; ++p) {
    const T* b_p = b + p * b_rs;
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i * a_rs + p * a_cs];
      for (index_t j = 0; j < cols; ++j) acc[i * NR + j] += ai * b_p[j];
    }
  }
  write_tile<T, NR>(acc, c, ldc, m, n, ep);
}

template <class T, int MR, int NR>
void micro_kernel_generic(index_t k, const T* a_panel, const T* b_panel, T* c, index_t ldc,
                          index_t m, index_t n, const TileEpilogue<T>& ep) {
  T acc[MR * NR] = {};
  for (index_t p = 0; p < k; ++p) {
    const T* a = a_panel + p * MR;
    const T* b = b_panel + p * NR;
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += ai * b[j];
    }
  }
  write_tile<T, NR>(acc, c, ldc, m, n, ep);
}

}  // namespace

IsaContext generic_context() {
  IsaContext c;
  c.sgemm.axpy = &axpy_kernel<float>;
  c.dgemm.axpy = &axpy_kernel<double>;
  c.sgemm.max_abs = &max_abs_kernel<float>;
  c.dgemm.max_abs = &max_abs_kernel<double>;
  // Cache blocks: the analytical model (context.cpp), the B micro-panel in L1.
  GemmContext<float>& s = c.sgemm;
  s.MR = 4, s.NR = 8;
  s.micro_kernel = &micro_kernel_generic<float, 4, 8>;
  s.small_kernel = &strided_kernel_generic<float, 4, 8>;
  s.narrow_kernel = &strided_kernel_generic<float, 4, 4>;
  s.row_kernel = &strided_kernel_generic<float, 1, 16>;
  s.row_NR = 16;
  s.gemv = &gemv_portable<float, 4>;
  // double: the same bytes per register tile, half the elements.
  GemmContext<double>& d = c.dgemm;
  d.MR = 4, d.NR = 4;
  d.micro_kernel = &micro_kernel_generic<double, 4, 4>;
  d.small_kernel = &strided_kernel_generic<double, 4, 4>;
  d.narrow_kernel = &strided_kernel_generic<double, 4, 2>;
  d.row_kernel = &strided_kernel_generic<double, 1, 8>;
  d.row_NR = 8;
  d.gemv = &gemv_portable<double, 2>;
  return c;
}

}  // namespace fastmlp
