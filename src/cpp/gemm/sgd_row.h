// One row of SGD without momentum (the engine's updates, a backup of the old values where the
// step is not proven finite, update_bound.h): g = grad + wd·p (with decay), p -= lr·g; returns
// non-zero if an updated value is not finite. The operations and their order are optim.cpp's
// sgd_loop's, so the bits are the same; included only by a translation unit built without FMA
// contraction (a fused p - lr·g would round once, not twice). The rule's own loop is built for
// the portable x86-64 (SSE2: 4 floats); the AVX-512 build of this one takes 16 at a time, and
// the wide net's tile-by-tile update spent 5 % of the step in the portable loop.
#pragma once

#include <cmath>
#include <limits>

#include "../common.h"

namespace fastmlp {

template <class T, bool kDecay, bool kBackup>
static unsigned sgd_row_loop(T* __restrict__ param, const T* __restrict__ grad,
                             T* __restrict__ backup, index_t n, T lr, T wd) {
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const T p = param[i];
    if (kBackup) backup[i] = p;
    T g = grad[i];
    if (kDecay) g = g + wd * p;
    const T updated = p - lr * g;
    bad |= !(std::fabs(updated) <= std::numeric_limits<T>::max());
    param[i] = updated;
  }
  return bad;
}

// backup: where the row's old values go, or null.
template <class T>
static unsigned sgd_row_kernel(T* param, const T* grad, T* backup, index_t n, T lr, T wd,
                               bool decay) {
  if (backup)
    return decay ? sgd_row_loop<T, true, true>(param, grad, backup, n, lr, wd)
                 : sgd_row_loop<T, false, true>(param, grad, backup, n, lr, wd);
  return decay ? sgd_row_loop<T, true, false>(param, grad, nullptr, n, lr, wd)
               : sgd_row_loop<T, false, false>(param, grad, nullptr, n, lr, wd);
}

}  // namespace fastmlp
