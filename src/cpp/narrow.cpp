// Feature-major dense layers for narrow networks (see narrow.h).
#include "narrow.h"

#include <algorithm>
#include <atomic>

#include "activations.h"

namespace fastmlp {

// kNarrowMaxWidth (narrow.h), the widest layer run feature-major. Measured on the development
// VM (AVX-512 Xeon, float32, one SGD epoch, samples/s feature-major ÷ GEMM path, batches
// 32 / 64 / 128 / 512): [2,3,3] 2.1 / 2.5 / 2.6 / 1.7×; [4,6,3] 2.9 / 3.0 / 2.2 / 1.4×;
// [8,8,4] 2.6 / 1.5 / 0.72 / 0.80×; [16,16,10] 0.4× and wider nets lose more. Hence also
// use_narrow_path's batch rule.

namespace {

// Σ_i a[i] · b[i] (b null: Σ_i a[i]) with kLanes independent partial sums, so the compiler
// vectorises the loop without reassociating floating-point sums on its own (no -ffast-math):
// the order is fixed by this code, the same on every run.
template <class T>
T batch_sum(const T* a, const T* b, index_t n) {
  constexpr int kLanes = 64 / sizeof(T);  // one cache line: 16 floats or 8 doubles
  T partial[kLanes] = {};
  index_t i = 0;
  if (b) {
    for (; i + kLanes <= n; i += kLanes)
      for (int k = 0; k < kLanes; ++k) partial[k] += a[i + k] * b[i + k];
    for (int k = 0; i < n; ++i, ++k) partial[k] += a[i] * b[i];
  } else {
    for (; i + kLanes <= n; i += kLanes)
      for (int k = 0; k < kLanes; ++k) partial[k] += a[i + k];
    for (int k = 0; i < n; ++i, ++k) partial[k] += a[i];
  }
  T sum = 0;
  for (int k = 0; k < kLanes; ++k) sum += partial[k];
  return sum;
}

}  // namespace

bool use_narrow_path(const std::vector<index_t>& sizes, index_t max_batch) {
  index_t widest = 0, weights = 0;
  for (std::size_t l = 0; l < sizes.size(); ++l) {
    widest = std::max(widest, sizes[l]);
    if (l + 1 < sizes.size()) weights += sizes[l] * sizes[l + 1];
  }
  // Up to 64 weights the feature-major step wins at any batch measured; beyond, only up to
  // batches of 64 ([8,8,4] at 128: the GEMM path's SIMD kernels take over).
  return widest <= kNarrowMaxWidth && (weights <= 64 || max_batch <= 64);
}

template <class T>
void narrow_forward(T* outT, const T* xT, const T* W, const T* b, index_t B, index_t I,
                    index_t O, Activation act) {
  for (index_t j = 0; j < O; ++j) {
    T* out = outT + j * B;
    const T* w = W + j * I;
    const T w0 = w[0];
    for (index_t i = 0; i < B; ++i) out[i] = w0 * xT[i];
    for (index_t p = 1; p < I; ++p) {
      const T wp = w[p];
      const T* x = xT + p * B;
      for (index_t i = 0; i < B; ++i) out[i] += wp * x[i];
    }
    const T bias = b[j];
    for (index_t i = 0; i < B; ++i) out[i] += bias;
  }
  activation_forward_inplace(outT, O * B, act);
}

template <class T>
void narrow_parameter_gradients(T* grad_W, T* grad_b, const T* gT, const T* xT, index_t B,
                                index_t I, index_t O) {
  for (index_t j = 0; j < O; ++j) {
    const T* g = gT + j * B;
    grad_b[j] = batch_sum<T>(g, nullptr, B);
    for (index_t p = 0; p < I; ++p) grad_W[j * I + p] = batch_sum(g, xT + p * B, B);
  }
}

template <class T>
void narrow_input_gradient(T* gxT, const T* gT, const T* W, index_t B, index_t I, index_t O) {
  for (index_t p = 0; p < I; ++p) {
    T* gx = gxT + p * B;
    const T w0 = W[p];
    for (index_t i = 0; i < B; ++i) gx[i] = w0 * gT[i];
    for (index_t j = 1; j < O; ++j) {
      const T wj = W[j * I + p];
      const T* g = gT + j * B;
      for (index_t i = 0; i < B; ++i) gx[i] += wj * g[i];
    }
  }
}

template <class T>
void transpose_into(T* out, const T* in, index_t rows, index_t cols, index_t ld_in) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * ld_in + c];
}

#define FASTMLP_INSTANTIATE(T)                                                                 \
  template void narrow_forward<T>(T*, const T*, const T*, const T*, index_t, index_t, index_t, \
                                  Activation);                                                 \
  template void narrow_parameter_gradients<T>(T*, T*, const T*, const T*, index_t, index_t,    \
                                              index_t);                                        \
  template void narrow_input_gradient<T>(T*, const T*, const T*, index_t, index_t, index_t);   \
  template void transpose_into<T>(T*, const T*, index_t, index_t, index_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
