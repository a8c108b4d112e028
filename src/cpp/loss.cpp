// Fused loss + gradient kernels (see loss.h for the math).
#include "loss.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "activations.h"

namespace fastmlp {

namespace {
[[noreturn]] void bad_label(index_t row, std::int64_t label, const char* expected) {
  throw std::invalid_argument("label " + std::to_string(label) + " at row " +
                              std::to_string(row) + " is out of range: expected " + expected);
}
}  // namespace

// Σ w (N when unweighted) as double; throws for a negative or non-finite weight or sum.
// With weights, each row's share w_r / Σw (≤ 1) is computed in double, so neither the
// weighted total Σ share_r · loss_r nor a float32 gradient scale overflows or underflows
// when the weights are huge (w_r · loss_r could, and a float32 1/Σw is 0 beyond ~1e45).
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
  if (!std::isfinite(sum))  // float64 weights near the largest double
    throw std::invalid_argument(
        "the sum of the sample weights overflows; scale them down (only their ratios matter)");
  return sum;
}

// exp(x) for x ≤ 0 (softmax's shifted logits), as straight-line arithmetic the compiler
// vectorises: the loop over a whole batch of shifted logits runs 4–16 lanes wide instead of
// one libm call per logit (a tenth of a digits training step, a third of a tiny one).
// Cody–Waite: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in a high part exact in T and a low
// part), exp(r) from Cephes' minimax polynomial (float) or Padé form (double), times 2ⁿ put
// straight into the exponent bits. Measured against libm over [-87, 0] / [-708, 0]: at most
// 1 ulp (float) and 2 ulp (double) apart. Below -87 (float) / -708 (double), where 2ⁿ would
// leave the normal range, the result is exactly 0 (the true value is under 1e-37 / 1e-307, and
// a softmax entry e^-10000 must be exactly 0). exp(0) = 1 exactly. The selects vectorise only
// without trapping-math: loss.cpp is compiled with -fno-trapping-math (CMakeLists.txt).
// 2ⁿ, for the integer n that the rounding trick left in t = magic + n (n in the low mantissa
// bits), built straight in the exponent field. Unsigned arithmetic: it wraps instead of
// overflowing when x was NaN (the result is NaN then anyway).
template <class T, class Bits, int kMantissaBits, int kExponentBias>
inline T power_of_two(T t, T magic) {
  Bits t_bits, magic_bits;
  std::memcpy(&t_bits, &t, sizeof t);
  std::memcpy(&magic_bits, &magic, sizeof magic);
  const Bits bits = (t_bits - magic_bits + static_cast<Bits>(kExponentBias)) << kMantissaBits;
  T out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

inline float exp_nonpositive(float x_in) {
  const float x = x_in < -87.0f ? -87.0f : x_in;  // n ≥ -126
  // Round x·log2(e) to the nearest integer with the 1.5·2²³ trick: n sits in the low
  // mantissa bits of t.
  const float magic = 12582912.0f;
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  const float r2 = r * r;
  const float p = ((((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
                      4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * r2 +
                   r) + 1.0f;
  return x_in < -87.0f ? 0.0f : p * power_of_two<float, std::uint32_t, 23, 127>(t, magic);
}

inline double exp_nonpositive(double x_in) {
  const double x = x_in < -708.0 ? -708.0 : x_in;  // n ≥ -1022
  const double magic = 6755399441055744.0;  // 1.5·2⁵²
  const double t = x * 1.4426950408889634074 + magic;
  const double n = t - magic;
  const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  const double r2 = r * r;
  // Cephes exp: e^r = 1 + 2·r·P(r²) / (Q(r²) - r·P(r²))
  const double px =
      r * ((1.26177193074810590878e-4 * r2 + 3.02994407707441961300e-2) * r2 +
           9.99999999999999999910e-1);
  const double qx = ((3.00198505138664455042e-6 * r2 + 2.52448340349684104192e-3) * r2 +
                     2.27265548208155028766e-1) * r2 + 2.00000000000000000009e0;
  const double p = 1.0 + 2.0 * (px / (qx - px));
  return x_in < -708.0 ? 0.0 : p * power_of_two<double, std::uint64_t, 52, 1023>(t, magic);
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
  // Three passes, so that the exponentials run as one vectorised loop over all N·K entries
  // whatever K is: shifted logits z - max(row), their exp (≤ 1: no overflow; the row max
  // contributes exactly 1), then per row the sum, the loss and the gradient.
  for (index_t r = 0; r < N; ++r) {
    const T* z = logits + r * K;
    T* dz = dlogits + r * K;
    T row_max = z[0];
    for (index_t j = 1; j < K; ++j) row_max = std::max(row_max, z[j]);
    for (index_t j = 0; j < K; ++j) dz[j] = z[j] - row_max;
  }
  for (index_t i = 0; i < N * K; ++i) dlogits[i] = exp_nonpositive(dlogits[i]);
  double total = 0.0;
  for (index_t r = 0; r < N; ++r) {
    const T* z = logits + r * K;
    T* dz = dlogits + r * K;
    T row_max = z[0];
    for (index_t j = 1; j < K; ++j) row_max = std::max(row_max, z[j]);
    T sum = 0;
    for (index_t j = 0; j < K; ++j) sum += dz[j];
    // -log softmax(z)[y] = log Σ exp(z - max) - (z[y] - max), with sum ≥ 1 so log is finite.
    const std::int64_t y = labels[r];
    const double nll = static_cast<double>(std::log(sum)) - static_cast<double>(z[y] - row_max);
    const double share = weights ? static_cast<double>(weights[r]) / total_weight : 0.0;
    const T row_scale = weights ? static_cast<T>(share) : inv_total;
    total += weights ? share * nll : nll;
    const T scale = row_scale / sum;
    for (index_t j = 0; j < K; ++j) dz[j] *= scale;
    dz[y] -= row_scale;
  }
  return weights ? total : total / total_weight;
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
    const double share = weights ? static_cast<double>(weights[r]) / total_weight : 0.0;
    total += weights ? share * loss : loss;
    dlogits[r] = (sigmoid_scalar(z) - y) * (weights ? static_cast<T>(share) : inv_total);
  }
  return weights ? total : total / total_weight;
}

// The frame of every loss over (N, K) outputs z and (N, K) targets y: the weight sum, the
// empty or weightless batch, and each row's share. term(z, y, &g) returns one element's loss
// (double) and sets g = dloss/dz of that element; the row's gradient is g · w_r / Σw and its
// loss Σ_k term weighted by w_r / Σw.
template <class T, class Term>
double targets_loss(T* dz, const T* z, const T* targets, const T* weights, index_t N,
                    index_t K, Term term) {
  const double total_weight = weight_sum(weights, N);
  if (N == 0 || total_weight == 0.0) {
    std::fill_n(dz, N * K, T(0));
    return 0.0;
  }
  const T inv_total = static_cast<T>(1.0 / total_weight);
  double total = 0.0;
  for (index_t r = 0; r < N; ++r) {
    const double share = weights ? static_cast<double>(weights[r]) / total_weight : 0.0;
    const T row_scale = weights ? static_cast<T>(share) : inv_total;
    double row = 0.0;
    for (index_t k = 0; k < K; ++k) {
      T g;
      row += term(z[r * K + k], targets[r * K + k], &g);
      dz[r * K + k] = g * row_scale;
    }
    total += weights ? share * row : row;
  }
  return weights ? total : total / total_weight;
}

template <class T>
double squared_error(T* dpred, const T* pred, const T* target, const T* weights, index_t N,
                     index_t K) {
  return targets_loss(dpred, pred, target, weights, N, K, [](T p, T y, T* g) {
    const T diff = p - y;
    *g = diff;
    return 0.5 * static_cast<double>(diff) * static_cast<double>(diff);  // (×0.5: exact)
  });
}

template <class T>
double sigmoid_bce_multi(T* dlogits, const T* logits, const T* targets, const T* weights,
                         index_t N, index_t K) {
  for (index_t i = 0; i < N * K; ++i)
    if (targets[i] != T(0) && targets[i] != T(1))
      throw std::invalid_argument("target at row " + std::to_string(i / std::max<index_t>(K, 1)) +
                                  " is not 0 or 1 (multilabel targets are an indicator matrix)");
  return targets_loss(dlogits, logits, targets, weights, N, K, [](T z, T y, T* g) {
    *g = sigmoid_scalar(z) - y;
    return static_cast<double>(std::max(z, T(0)) - z * y + std::log1p(std::exp(-std::abs(z))));
  });
}

template <class T>
double poisson_deviance(T* dz, const T* z, const T* targets, const T* weights, index_t N,
                        index_t K) {
  for (index_t i = 0; i < N * K; ++i)
    if (!(targets[i] >= T(0)) || !std::isfinite(static_cast<double>(targets[i])))
      throw std::invalid_argument("target at row " + std::to_string(i / std::max<index_t>(K, 1)) +
                                  " is negative or not finite (the Poisson loss needs y >= 0)");
  return targets_loss(dz, z, targets, weights, N, K, [](T zk, T y, T* g) {
    const T mu = std::exp(zk);
    *g = mu - y;
    const double yd = static_cast<double>(y);
    const double ylogy = y > T(0) ? yd * std::log(yd) : 0.0;
    return ylogy - yd - yd * static_cast<double>(zk) + static_cast<double>(mu);
  });
}

#define FASTMLP_INSTANTIATE(T)                                                                   \
  template double softmax_nll<T>(T*, const T*, const std::int64_t*, const T*, index_t, index_t); \
  template double sigmoid_bce<T>(T*, const T*, const std::int64_t*, const T*, index_t);          \
  template double squared_error<T>(T*, const T*, const T*, const T*, index_t, index_t);         \
  template double sigmoid_bce_multi<T>(T*, const T*, const T*, const T*, index_t, index_t);     \
  template double poisson_deviance<T>(T*, const T*, const T*, const T*, index_t, index_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
