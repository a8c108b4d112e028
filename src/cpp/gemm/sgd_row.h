// SGD's per-element loop, the one definition of its arithmetic: the rule's own build
// (optim.cpp, every flag, the portable x86-64 build: SSE2, no FMA to contract into) and the
// row kernel of SGD without momentum (sgd_row_kernel; the AVX-512 build takes 16 floats at a
// time and is compiled with -ffp-contract=off, so that p - lr·g stays two roundings: the same
// bits). The wide net's tile-by-tile update spent 5 % of the step in the SSE2 loop.
#pragma once

#include <cmath>
#include <limits>

#include "../common.h"

namespace fastmlp {

// Specialised on every flag (template parameters), so that each compiled loop is branch-free
// and vectorises; the pointers never alias (restrict). Returns non-zero if an updated value is
// not finite.
template <class T, bool kBackup, bool kDecay, bool kMomentum, bool kNesterov, bool kFirst>
static unsigned sgd_loop(T* __restrict__ param, const T* __restrict__ grad,
                         T* __restrict__ momentum_buffer, T* __restrict__ backup, index_t n,
                         T lr, T mu, T wd) {
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const T p = param[i];
    if (kBackup) backup[i] = p;
    T g = grad[i];
    if (kDecay) g = g + wd * p;
    if (kMomentum) {
      const T buf = kFirst ? g : mu * momentum_buffer[i] + g;
      momentum_buffer[i] = buf;
      g = kNesterov ? g + mu * buf : buf;
    }
    const T updated = p - lr * g;
    bad |= !(std::fabs(updated) <= std::numeric_limits<T>::max());
    param[i] = updated;
  }
  return bad;
}

// One row of SGD without momentum; backup: where the row's old values go, or null.
template <class T>
static unsigned sgd_row_kernel(T* param, const T* grad, T* backup, index_t n, T lr, T wd,
                               bool decay) {
  const T mu = 0;
  if (backup)
    return decay ? sgd_loop<T, true, true, false, false, false>(param, grad, nullptr, backup, n,
                                                                lr, mu, wd)
                 : sgd_loop<T, true, false, false, false, false>(param, grad, nullptr, backup, n,
                                                                 lr, mu, wd);
  return decay ? sgd_loop<T, false, true, false, false, false>(param, grad, nullptr, nullptr, n,
                                                              lr, mu, wd)
               : sgd_loop<T, false, false, false, false, false>(param, grad, nullptr, nullptr, n,
                                                               lr, mu, wd);
}

}  // namespace fastmlp
