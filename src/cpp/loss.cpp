// Fused loss + gradient kernels (see loss.h for the math).
#include "loss.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "activations.h"

namespace fastmlp {

namespace {
[[noreturn]] void bad_label(index_t row, std::int64_t label, const char* expected) {
  throw std::invalid_argument("label " + std::to_string(label) + " at row " +
                              std::to_string(row) + " is out of range: expected " + expected);
}
}  // namespace

template <class T>
double softmax_nll(T* dlogits, const T* logits, const std::int64_t* labels, index_t N,
                   index_t K) {
  for (index_t r = 0; r < N; ++r)
    if (labels[r] < 0 || labels[r] >= K) bad_label(r, labels[r], "a class index in [0, K)");
  if (N == 0) return 0.0;
  const T inv_n = T(1) / static_cast<T>(N);
  double total = 0.0;
  for (index_t r = 0; r < N; ++r) {
    const T* z = logits + r * K;
    T* dz = dlogits + r * K;
    T row_max = z[0];
    for (index_t j = 1; j < K; ++j) row_max = std::max(row_max, z[j]);
    T sum = 0;
    for (index_t j = 0; j < K; ++j) {
      dz[j] = std::exp(z[j] - row_max);  // ≤ 1: no overflow; the row max contributes exactly 1
      sum += dz[j];
    }
    // -log softmax(z)[y] = log Σ exp(z - max) - (z[y] - max), with sum ≥ 1 so log is finite.
    const std::int64_t y = labels[r];
    total += static_cast<double>(std::log(sum)) - static_cast<double>(z[y] - row_max);
    const T scale = inv_n / sum;
    for (index_t j = 0; j < K; ++j) dz[j] *= scale;
    dz[y] -= inv_n;
  }
  return total / static_cast<double>(N);
}

template <class T>
double sigmoid_bce(T* dlogits, const T* logits, const std::int64_t* labels, index_t N) {
  for (index_t r = 0; r < N; ++r)
    if (labels[r] != 0 && labels[r] != 1) bad_label(r, labels[r], "0 or 1");
  if (N == 0) return 0.0;
  const T inv_n = T(1) / static_cast<T>(N);
  double total = 0.0;
  for (index_t r = 0; r < N; ++r) {
    const T z = logits[r];
    const T y = static_cast<T>(labels[r]);
    total += static_cast<double>(std::max(z, T(0)) - z * y + std::log1p(std::exp(-std::abs(z))));
    dlogits[r] = (sigmoid_scalar(z) - y) * inv_n;
  }
  return total / static_cast<double>(N);
}

template double softmax_nll<float>(float*, const float*, const std::int64_t*, index_t, index_t);
template double softmax_nll<double>(double*, const double*, const std::int64_t*, index_t, index_t);
template double sigmoid_bce<float>(float*, const float*, const std::int64_t*, index_t);
template double sigmoid_bce<double>(double*, const double*, const std::int64_t*, index_t);

}  // namespace fastmlp
