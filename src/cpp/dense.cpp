// Dense layer forward/backward (see dense.h for shapes and math).
#include "dense.h"

#include <algorithm>

#include "activations.h"
#include "gemm/gemm.h"

namespace fastmlp {

template <class T>
void dense_forward(T* out, StridedMatrix<T> x, StridedMatrix<T> W, const T* b, index_t B,
                   index_t I, index_t O, Activation act) {
  GemmArgs<T> g;
  g.M = B;
  g.N = O;
  g.K = I;
  g.A = x.data;  // (B,I)
  g.rs_a = x.row_stride;
  g.cs_a = x.col_stride;
  g.B = W.data;  // Wᵀ (I,O): element (p,j) = W[j,p]
  g.rs_b = W.col_stride;
  g.cs_b = W.row_stride;
  g.C = out;
  g.ldc = O;
  g.bias = b;
  g.relu = act == Activation::relu;
  gemm(g);
  // tanh / logistic: one pass over the (B,O) output while it is still in cache.
  if (act == Activation::tanh || act == Activation::logistic)
    activation_forward_inplace(out, B * O, act);
}

template <class T>
void dense_backward(T* grad_x, T* grad_W, T* grad_b, T* scratch, StridedMatrix<T> x,
                    StridedMatrix<T> W, const T* out, const T* grad_out, index_t B, index_t I,
                    index_t O, Activation act) {
  const T* grad_a = grad_out;
  if (act != Activation::identity) {
    std::copy_n(grad_out, B * O, scratch);
    activation_backward_inplace(scratch, out, B * O, act);
    grad_a = scratch;
  }

  // grad_b[o] = Σ_r grad_a[r, o]: row after row, so the inner loop is contiguous.
  for (index_t o = 0; o < O; ++o) grad_b[o] = T(0);
  for (index_t r = 0; r < B; ++r) {
    const T* row = grad_a + r * O;
    for (index_t o = 0; o < O; ++o) grad_b[o] += row[o];
  }

  // grad_W (O,I) = grad_aᵀ (O,B) · x (B,I)
  GemmArgs<T> gw;
  gw.M = O;
  gw.N = I;
  gw.K = B;
  gw.A = grad_a;
  gw.rs_a = 1;
  gw.cs_a = O;
  gw.B = x.data;
  gw.rs_b = x.row_stride;
  gw.cs_b = x.col_stride;
  gw.C = grad_W;
  gw.ldc = I;
  gemm(gw);

  if (grad_x) {
    // grad_x (B,I) = grad_a (B,O) · W (O,I)
    GemmArgs<T> gx;
    gx.M = B;
    gx.N = I;
    gx.K = O;
    gx.A = grad_a;
    gx.rs_a = O;
    gx.cs_a = 1;
    gx.B = W.data;
    gx.rs_b = W.row_stride;
    gx.cs_b = W.col_stride;
    gx.C = grad_x;
    gx.ldc = I;
    gemm(gx);
  }
}

#define FASTMLP_INSTANTIATE(T)                                                                   \
  template void dense_forward<T>(T*, StridedMatrix<T>, StridedMatrix<T>, const T*, index_t,     \
                                 index_t, index_t, Activation);                                 \
  template void dense_backward<T>(T*, T*, T*, T*, StridedMatrix<T>, StridedMatrix<T>, const T*, \
                                  const T*, index_t, index_t, index_t, Activation);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
