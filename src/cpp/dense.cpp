// Dense layer forward/backward (see dense.h for shapes and math).
#include "dense.h"

#include <algorithm>

#include "activations.h"
#include "gemm/gemm.h"

namespace fastmlp {

template <class T>
void dense_forward(T* out, StridedMatrix<T> x, StridedMatrix<T> W, const T* b, index_t B,
                   index_t I, index_t O, Activation act, const T* packed_w,
                   index_t packed_nr) {
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
  g.packed_b = packed_w;
  g.packed_b_nr = packed_nr;
  g.sink.C = out;
  g.sink.ldc = O;
  g.sink.bias = b;
  g.sink.relu = act == Activation::relu;
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

  bias_gradient(grad_b, grad_a, B, O);
  weight_gradient(grad_W, grad_a, x, B, I, O);
  if (grad_x) input_gradient(grad_x, grad_a, W, B, I, O, static_cast<const T*>(nullptr));
}

template <class T>
void bias_gradient(T* grad_b, const T* grad_a, index_t B, index_t O) {
  // Row after row, so the inner loop is contiguous.
  std::fill_n(grad_b, O, T(0));
  for (index_t r = 0; r < B; ++r) {
    const T* row = grad_a + r * O;
    for (index_t o = 0; o < O; ++o) grad_b[o] += row[o];
  }
}

template <class T>
void weight_gradient(T* grad_W, const T* grad_a, StridedMatrix<T> x, index_t B, index_t I,
                     index_t O, const TileConsumer<T>* consumer) {
  GemmArgs<T> g;  // grad_W (O,I) = grad_aᵀ (O,B) · x (B,I)
  g.M = O;
  g.N = I;
  g.K = B;
  g.A = grad_a;
  g.rs_a = 1;
  g.cs_a = O;
  g.B = x.data;
  g.rs_b = x.row_stride;
  g.cs_b = x.col_stride;
  g.sink.C = grad_W;
  g.sink.ldc = I;
  if (consumer) g.sink.consumer = *consumer;
  gemm(g);
}

template <class T>
void input_gradient(T* grad_x, const T* grad_a, StridedMatrix<T> W, index_t B, index_t I,
                    index_t O, const T* relu_mask) {
  GemmArgs<T> g;  // grad_x (B,I) = grad_a (B,O) · W (O,I), masked in the write-back
  g.M = B;
  g.N = I;
  g.K = O;
  g.A = grad_a;
  g.rs_a = O;
  g.cs_a = 1;
  g.B = W.data;
  g.rs_b = W.row_stride;
  g.cs_b = W.col_stride;
  g.sink.C = grad_x;
  g.sink.ldc = I;
  g.sink.mask = relu_mask;
  g.sink.ld_mask = I;
  gemm(g);
}

#define FASTMLP_INSTANTIATE(T)                                                                   \
  template void dense_forward<T>(T*, StridedMatrix<T>, StridedMatrix<T>, const T*, index_t,     \
                                 index_t, index_t, Activation, const T*, index_t);              \
  template void dense_backward<T>(T*, T*, T*, T*, StridedMatrix<T>, StridedMatrix<T>, const T*, \
                                  const T*, index_t, index_t, index_t, Activation);              \
  template void bias_gradient<T>(T*, const T*, index_t, index_t);                               \
  template void weight_gradient<T>(T*, const T*, StridedMatrix<T>, index_t, index_t, index_t,   \
                                   const TileConsumer<T>*);                                     \
  template void input_gradient<T>(T*, const T*, StridedMatrix<T>, index_t, index_t, index_t,    \
                                  const T*);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
