// Optimizer update rules, element-wise over one parameter array of n elements, in place.
// The rules are those documented for torch.optim.SGD (dampening 0) and torch.optim.Adam
// (amsgrad off), in the same order of operations, so results agree to rounding.
#pragma once

#include "common.h"

namespace fastmlp {

// g = grad + weight_decay·p
// momentum ≠ 0:  buf = g on the first step, else buf = momentum·buf + g
//                g = nesterov ? g + momentum·buf : buf
// p -= lr·g
// Both rules: if backup is not null it receives the parameters as they were before the update
// (in the same pass); the result says whether every updated parameter is finite.
template <class T>
bool sgd_update(T* param, const T* grad, T* momentum_buffer, index_t n, double lr,
                double momentum, double weight_decay, bool nesterov, bool first_step,
                T* backup = nullptr);

// The same rule over a (rows, cols) block: param, momentum_buffer and backup with row stride
// ld, grad with row stride ld_grad (the engine updates a weight matrix tile by tile, from
// the weight-gradient GEMM's finished tiles).
template <class T>
bool sgd_update_block(T* param, index_t ld, const T* grad, index_t ld_grad, T* momentum_buffer,
                      index_t rows, index_t cols, double lr, double momentum,
                      double weight_decay, bool nesterov, bool first_step, T* backup);

// g = grad + weight_decay·p;  m = m + (1-β1)(g - m);  v = β2 v + (1-β2) g²
// p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)        (t = step, counted from 1)
template <class T>
bool adam_update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, index_t n, double lr,
                 double beta1, double beta2, double eps, double weight_decay, std::int64_t step,
                 T* backup = nullptr);

// Adam's per-step constants in T, computed once per step (two pow calls) for every block.
template <class T>
struct AdamCoefficients {
  T step_size, bc2_sqrt, one_minus_b1, b2, one_minus_b2, eps, weight_decay;
  bool decay;
};
template <class T>
AdamCoefficients<T> adam_coefficients(double lr, double beta1, double beta2, double eps,
                                      double weight_decay, std::int64_t step);
// Adam over a (rows, cols) block, strides as sgd_update_block.
template <class T>
bool adam_update_block(T* param, index_t ld, const T* grad, index_t ld_grad, T* exp_avg,
                       T* exp_avg_sq, index_t rows, index_t cols,
                       const AdamCoefficients<T>& c, T* backup);

}  // namespace fastmlp
