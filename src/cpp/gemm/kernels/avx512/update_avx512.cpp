// The optimizer's row kernels in AVX-512 (gemm/sgd_row.h). Compiled with the AVX-512 flags and
// -ffp-contract=off, so that the update's multiply and subtract stay two roundings, as in the
// rule's portable loop; only called when the CPU has AVX-512 (the avx512 context).
#include "../../context.h"
#include "../../sgd_row.h"

namespace fastmlp {

void add_avx512_update_kernels(IsaContext& c) {
  c.sgemm.sgd_row = &sgd_row_kernel<float>;
  c.dgemm.sgd_row = &sgd_row_kernel<double>;
}

}  // namespace fastmlp
