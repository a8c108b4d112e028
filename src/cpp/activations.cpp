// Element-wise activations (see activations.h for the math).
#include "activations.h"

#include <algorithm>
#include <cmath>

namespace fastmlp {

template <class T>
void relu_forward(T* out, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i) out[i] = x[i] <= T(0) ? T(0) : x[i];
}

template <class T>
void relu_backward(T* grad_in, const T* grad_out, const T* out, index_t n) {
  for (index_t i = 0; i < n; ++i) grad_in[i] = out[i] > T(0) ? grad_out[i] : T(0);
}

template <class T>
void sigmoid_forward(T* out, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i) out[i] = sigmoid_scalar(x[i]);
}

template <class T>
void softmax_forward(T* out, const T* x, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* outr = out + r * cols;
    T row_max = xr[0];
    for (index_t j = 1; j < cols; ++j) row_max = std::max(row_max, xr[j]);
    T sum = 0;
    for (index_t j = 0; j < cols; ++j) {
      outr[j] = std::exp(xr[j] - row_max);
      sum += outr[j];
    }
    const T inv = T(1) / sum;
    for (index_t j = 0; j < cols; ++j) outr[j] *= inv;
  }
}

#define FASTMLP_INSTANTIATE(T)                                                \
  template void relu_forward<T>(T*, const T*, index_t);                      \
  template void relu_backward<T>(T*, const T*, const T*, index_t);           \
  template void sigmoid_forward<T>(T*, const T*, index_t);                   \
  template void softmax_forward<T>(T*, const T*, index_t, index_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
