// Losses of the output layer, each fused with its gradient w.r.t. the logits.
//
// Legend: N rows (batch), K classes. Labels are int64 in [0, K) (softmax) or {0, 1} (sigmoid);
// callers validate them, these functions check again and throw std::invalid_argument.
#pragma once

#include "common.h"

namespace fastmlp {

// logits (N,K), labels (N) -> returns loss = (1/N) Σ_r [logsumexp(logits[r]) - logits[r, y_r]]
// and writes dlogits (N,K) = (softmax(logits) - onehot(labels)) / N, one pass per row, never
// through log(p) or 1/p: finite for any finite logits.
template <class T>
double softmax_nll(T* dlogits, const T* logits, const std::int64_t* labels, index_t N, index_t K);

// logits (N), labels (N) in {0,1} -> returns loss = (1/N) Σ [max(z,0) - z y + log1p(exp(-|z|))]
// (the stable form of -y log σ(z) - (1-y) log(1-σ(z))) and writes dlogits = (σ(z) - y) / N.
template <class T>
double sigmoid_bce(T* dlogits, const T* logits, const std::int64_t* labels, index_t N);

}  // namespace fastmlp
