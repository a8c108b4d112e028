// Element-wise activations and their local derivatives; row-wise softmax.
// All arrays are contiguous; n is the element count, (rows, cols) a row-major matrix.
#pragma once

#include <cmath>

#include "common.h"

namespace fastmlp {

// out = max(x, 0); NaN stays NaN (as np.maximum).                       d out/dx = [x > 0]
template <class T> void relu_forward(T* out, const T* x, index_t n);
// grad_in = grad_out · [out > 0], where out = relu(x) (the ReLU's output, not its input).
template <class T> void relu_backward(T* grad_in, const T* grad_out, const T* out, index_t n);
// out = 1 / (1 + exp(-x)), evaluated as exp(x) / (1 + exp(x)) for x < 0 so that neither
// branch overflows; exact limits 0 and 1.                            d out/dx = out (1 - out)
template <class T> void sigmoid_forward(T* out, const T* x, index_t n);
// x := act(x) in place for tanh and logistic (identity: nothing; ReLU is the GEMM epilogue).
template <class T> void activation_forward_inplace(T* x, index_t n, Activation act);
// grad := grad · act'(a), written in terms of the activation's output out = act(a):
//   relu: [out > 0]   tanh: 1 - out²   logistic: out (1 - out)   identity: 1
template <class T> void activation_backward_inplace(T* grad, const T* out, index_t n, Activation act);

// out[r, :] = exp(x[r, :] - max_r) / Σ exp(x[r, :] - max_r)   (row max subtracted: no overflow)
// (float32 on the avx512 ISA: softmax_rows_avx512, the same steps with a polynomial e^x within
// ~2 ulp of std::exp, 16 columns at a time.)
template <class T> void softmax_forward(T* out, const T* x, index_t rows, index_t cols);
#ifdef FASTMLP_X86
void softmax_rows_avx512(float* out, const float* x, index_t rows, index_t cols);  // kernels/avx512
#endif

template <class T>
inline T sigmoid_scalar(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

}  // namespace fastmlp
