// Losses of the output layer, each fused with its gradient w.r.t. the logits.
//
// Legend: N rows (batch), K classes. Labels are int64 in [0, K) (softmax) or {0, 1} (sigmoid),
// targets 0/1 (multilabel) or ≥ 0 (poisson); callers validate them, these functions check
// again and throw std::invalid_argument.
#pragma once

#include "common.h"

namespace fastmlp {

// Sample weights w (N, ≥ 0) or null (all 1): every loss is the weighted mean over rows,
// Σ_r w_r loss_r / Σ_r w_r, and every gradient row is scaled by w_r / Σ w (so with w = 1 the
// scale is 1/N). A batch whose weights sum to 0 has loss 0 and gradient 0. Each row's share
// w_r / Σw is computed in double (no overflow for weights near the largest double, no float32
// 1/Σw rounding to 0); a sum that overflows throws std::invalid_argument.

// logits (N,K), labels (N) -> loss_r = logsumexp(logits[r]) - logits[r, y_r], and dlogits
// (N,K) = (softmax(logits) - onehot(labels)) · w_r / Σw, one pass per row, never through
// log(p) or 1/p: finite for any finite logits.
template <class T>
double softmax_nll(T* dlogits, const T* logits, const std::int64_t* labels, const T* weights,
                   index_t N, index_t K);

// logits (N), labels (N) in {0,1} -> loss_r = max(z,0) - z y + log1p(exp(-|z|)) (the stable
// form of -y log σ(z) - (1-y) log(1-σ(z))) and dlogits = (σ(z) - y) · w_r / Σw.
template <class T>
double sigmoid_bce(T* dlogits, const T* logits, const std::int64_t* labels, const T* weights,
                   index_t N);

// Regression, pred and target (N,K) -> loss_r = ½ Σ_k (pred - target)², and
// dpred = (pred - target) · w_r / Σw. (scikit-learn's MLPRegressor reports the same loss
// divided by K as well; for one output they agree.)
template <class T>
double squared_error(T* dpred, const T* pred, const T* target, const T* weights, index_t N,
                     index_t K);

// Multilabel: logits and targets (N,K), targets 0 or 1 -> loss_r = Σ_k max(z,0) - z y +
// log1p(exp(-|z|)) (one sigmoid + BCE per label, summed over labels) and
// dlogits = (σ(z) - y) · w_r / Σw per element.
template <class T>
double sigmoid_bce_multi(T* dlogits, const T* logits, const T* targets, const T* weights,
                         index_t N, index_t K);

// Poisson regression with the log link, raw outputs z and targets y ≥ 0 (N,K) ->
// loss_r = Σ_k y log y - y - y z + exp(z) (half the Poisson deviance of μ = exp(z), with
// 0 log 0 = 0; from z, never through log μ) and dz = (exp(z) - y) · w_r / Σw.
template <class T>
double poisson_deviance(T* dz, const T* z, const T* targets, const T* weights, index_t N,
                        index_t K);

}  // namespace fastmlp
