// A dense (fully connected) layer, forward and backward, on top of the GEMM.
//
// Legend: B batch rows, I in-features, O out-features.
//   x (B,I) strided, W (O,I) strided (the torch.nn.Linear layout), b (O) contiguous,
//   out (B,O) contiguous.
// Strided operands are (pointer, row stride, column stride) in elements, so transposed and
// non-contiguous NumPy views are read in place.
#pragma once

#include "common.h"
#include "gemm/gemm.h"

namespace fastmlp {

template <class T>
struct StridedMatrix {
  const T* data;
  index_t row_stride, col_stride;
};

// out = act(x Wᵀ + b): bias and ReLU are applied in the GEMM's write-back; tanh and logistic
// in one pass over the output right after. packed_w: W (contiguous rows) already packed by
// prepack_b (gemm.h) with panels packed_nr wide, or null.
template <class T>
void dense_forward(T* out, StridedMatrix<T> x, StridedMatrix<T> W, const T* b, index_t B,
                   index_t I, index_t O, Activation act, const T* packed_w = nullptr,
                   index_t packed_nr = 0);

// Given out = act(x Wᵀ + b) and grad_out = dL/d out (B,O, contiguous), with a = x Wᵀ + b:
//   grad_a = grad_out · act'(a)     (from out: see activation_backward_inplace; in scratch (B,O))
//   grad_W = grad_aᵀ x  (O,I)       grad_b = Σ_rows grad_a  (O)       grad_x = grad_a W  (B,I)
// All three gradients are overwritten, not accumulated. grad_x may be null (first layer: the
// input needs no gradient, which saves a third of the backward FLOPs). scratch may be null
// when act is identity.
template <class T>
void dense_backward(T* grad_x, T* grad_W, T* grad_b, T* scratch, StridedMatrix<T> x,
                    StridedMatrix<T> W, const T* out, const T* grad_out, index_t B, index_t I,
                    index_t O, Activation act);

// The three pieces of dense_backward, for callers that fuse around them (the trainer):
//   grad_b (O) = Σ_rows grad_a (B,O)
template <class T>
void bias_gradient(T* grad_b, const T* grad_a, index_t B, index_t O);
//   grad_W (O,I) = grad_aᵀ · x            (grad_a (B,O) contiguous)
// With a consumer, grad_W is not written (may be null): its tiles go to the consumer (gemm.h).
template <class T>
void weight_gradient(T* grad_W, const T* grad_a, StridedMatrix<T> x, index_t B, index_t I,
                     index_t O, const TileConsumer<T>* consumer = nullptr);
//   grad_x (B,I) = (grad_a · W) · [relu_mask > 0]   (relu_mask (B,I) contiguous, or null: the
//   ReLU backward of the layer below, applied in the product's write-back)
template <class T>
void input_gradient(T* grad_x, const T* grad_a, StridedMatrix<T> W, index_t B, index_t I,
                    index_t O, const T* relu_mask);

}  // namespace fastmlp
