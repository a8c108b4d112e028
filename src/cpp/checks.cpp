// Input checks (see checks.h).
#include "checks.h"

#include <cmath>
#include <limits>

#include "cpu.h"

namespace fastmlp {

template <class T>
index_t first_nonfinite(const T* data, index_t n) {
#ifdef FASTMLP_X86
  if (active_isa() == Isa::avx512) return first_nonfinite_avx512(data, n);
#endif
  // Blocks of 4096 values: a branch-free, vectorised OR over the block (|x| ≤ max is false
  // exactly for NaN and ±inf), and an element search only in the block that failed.
  constexpr index_t kBlock = 4096;
  for (index_t start = 0; start < n; start += kBlock) {
    const index_t end = start + kBlock < n ? start + kBlock : n;
    // 16 independent lanes (4 SSE2 vectors of floats): one OR chain would cap the loop at
    // a vector per cycle (measured: 24 µs → 13 µs for a 256 × 784 float32 X, Zen 5).
    constexpr index_t kLanes = 16;
    unsigned lanes[kLanes] = {};
    index_t i = start;
    for (; i + kLanes <= end; i += kLanes)
      for (index_t k = 0; k < kLanes; ++k)
        lanes[k] |= !(std::fabs(data[i + k]) <= std::numeric_limits<T>::max());
    unsigned bad = 0;
    for (const unsigned lane : lanes) bad |= lane;
    for (; i < end; ++i)
      bad |= !(std::fabs(data[i]) <= std::numeric_limits<T>::max());
    if (bad)
      for (index_t i = start; i < end; ++i)
        if (!(std::fabs(data[i]) <= std::numeric_limits<T>::max())) return i;
  }
  return -1;
}

template index_t first_nonfinite<float>(const float*, index_t);
template index_t first_nonfinite<double>(const double*, index_t);

}  // namespace fastmlp
