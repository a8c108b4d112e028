// Element-wise activations (see activations.h for the math).
#include "activations.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu.h"

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
#ifdef FASTMLP_X86
  if constexpr (std::is_same_v<T, float>)
    if (active_isa() == Isa::avx512) return softmax_rows_avx512(out, x, rows, cols);
#endif
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

template <class T>
void activation_forward_inplace(T* x, index_t n, Activation act) {
  switch (act) {
    case Activation::tanh:
      for (index_t i = 0; i < n; ++i) x[i] = std::tanh(x[i]);
      break;
    case Activation::logistic:
      for (index_t i = 0; i < n; ++i) x[i] = sigmoid_scalar(x[i]);
      break;
    case Activation::relu:
      relu_forward(x, x, n);
      break;
    case Activation::identity:
      break;
  }
}

template <class T>
void activation_backward_inplace(T* grad, const T* out, index_t n, Activation act) {
  switch (act) {
    case Activation::relu:
      relu_backward(grad, grad, out, n);
      break;
    case Activation::tanh:
      for (index_t i = 0; i < n; ++i) grad[i] *= T(1) - out[i] * out[i];
      break;
    case Activation::logistic:
      for (index_t i = 0; i < n; ++i) grad[i] *= out[i] * (T(1) - out[i]);
      break;
    case Activation::identity:
      break;
  }
}

#define FASTMLP_INSTANTIATE(T)                                                \
  template void relu_forward<T>(T*, const T*, index_t);                      \
  template void relu_backward<T>(T*, const T*, const T*, index_t);           \
  template void sigmoid_forward<T>(T*, const T*, index_t);                   \
  template void softmax_forward<T>(T*, const T*, index_t, index_t);         \
  template void activation_forward_inplace<T>(T*, index_t, Activation);     \
  template void activation_backward_inplace<T>(T*, const T*, index_t, Activation);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
