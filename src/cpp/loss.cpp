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

// Σ w (N when unweighted) as T and double; throws for a negative or non-finite weight.
template <class T>
double weight_sum(const T* weights, index_t N) {
  if (!weights) return static_cast<double>(N);
  double sum = 0.0;
  for (index_t r = 0; r < N; ++r) {
    if (!(weights[r] >= T(0)) || !std::isfinite(static_cast<double>(weights[r])))
      throw std::invalid_argument("sample weight at row " + std::to_string(r) +
                                  " is negative or not finite");
    sum += static_cast<double>(weights[r]);
  }
  return sum;
}

template <class T>
double softmax_nll(T* dlogits, const T* logits, const std::int64_t* labels, const T* weights,
                   index_t N, index_t K) {
  for (index_t r = 0; r < N; ++r)
    if (labels[r] < 0 || labels[r] >= K) bad_label(r, labels[r], "a class index in [0, K)");
  const double total_weight = weight_sum(weights, N);
  if (N == 0 || total_weight == 0.0) {
    std::fill_n(dlogits, N * K, T(0));
    return 0.0;
  }
  const T inv_total = static_cast<T>(1.0 / total_weight);
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
    const double nll = static_cast<double>(std::log(sum)) - static_cast<double>(z[y] - row_max);
    const T row_scale = weights ? weights[r] * inv_total : inv_total;
    total += weights ? static_cast<double>(weights[r]) * nll : nll;
    const T scale = row_scale / sum;
    for (index_t j = 0; j < K; ++j) dz[j] *= scale;
    dz[y] -= row_scale;
  }
  return total / total_weight;
}

template <class T>
double sigmoid_bce(T* dlogits, const T* logits, const std::int64_t* labels, const T* weights,
                   index_t N) {
  for (index_t r = 0; r < N; ++r)
    if (labels[r] != 0 && labels[r] != 1) bad_label(r, labels[r], "0 or 1");
  const double total_weight = weight_sum(weights, N);
  if (N == 0 || total_weight == 0.0) {
    std::fill_n(dlogits, N, T(0));
    return 0.0;
  }
  const T inv_total = static_cast<T>(1.0 / total_weight);
  double total = 0.0;
  for (index_t r = 0; r < N; ++r) {
    const T z = logits[r];
    const T y = static_cast<T>(labels[r]);
    const double loss =
        static_cast<double>(std::max(z, T(0)) - z * y + std::log1p(std::exp(-std::abs(z))));
    total += weights ? static_cast<double>(weights[r]) * loss : loss;
    dlogits[r] = (sigmoid_scalar(z) - y) * (weights ? weights[r] * inv_total : inv_total);
  }
  return total / total_weight;
}

template <class T>
double squared_error(T* dpred, const T* pred, const T* target, const T* weights, index_t N,
                     index_t K) {
  const double total_weight = weight_sum(weights, N);
  if (N == 0 || total_weight == 0.0) {
    std::fill_n(dpred, N * K, T(0));
    return 0.0;
  }
  const T inv_total = static_cast<T>(1.0 / total_weight);
  double total = 0.0;
  for (index_t r = 0; r < N; ++r) {
    const T row_scale = weights ? weights[r] * inv_total : inv_total;
    double row = 0.0;
    for (index_t k = 0; k < K; ++k) {
      const T diff = pred[r * K + k] - target[r * K + k];
      row += static_cast<double>(diff) * static_cast<double>(diff);
      dpred[r * K + k] = diff * row_scale;
    }
    total += 0.5 * (weights ? static_cast<double>(weights[r]) * row : row);
  }
  return total / total_weight;
}

#define FASTMLP_INSTANTIATE(T)                                                                   \
  template double softmax_nll<T>(T*, const T*, const std::int64_t*, const T*, index_t, index_t); \
  template double sigmoid_bce<T>(T*, const T*, const std::int64_t*, const T*, index_t);          \
  template double squared_error<T>(T*, const T*, const T*, const T*, index_t, index_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
