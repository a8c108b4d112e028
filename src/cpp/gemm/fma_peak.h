// The float32 FMA peak of one core, measured: what benchmarks/gemm_peak.py divides GEMM
// throughput by. `static`, like tile.h: each ISA's translation unit compiles its own copy
// with its own vector type and flags.
#pragma once

#include <chrono>

#include "../common.h"

namespace fastmlp {

// Kept independent FMA chains acc = acc·a + b, all in registers (no loads, no stores): with
// kChains ≥ latency × pipes (4 × 2 on the AVX-512 cores of interest) the FMA pipes never
// wait, so the rate is the core's FMA throughput at the clock it runs this loop at. Reg is
// a vector type (__m512 / __m256) and Fma its fused multiply-add. Chunks of kSteps steps
// are timed until `seconds` have passed; the fastest chunk's rate is returned (FLOP/s: 2 per
// lane per FMA), the peak being the rate the core reaches when nothing else runs on it.
template <class Reg, int kLanes, int kChains, Reg (*Fma)(Reg, Reg, Reg)>
static double measure_fma_peak(Reg one, Reg tiny, double seconds) {
  constexpr long kSteps = 1 << 20;
  Reg acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = tiny;
  double best = 0;
  const auto stop = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  do {
    const auto start = std::chrono::steady_clock::now();
    for (long step = 0; step < kSteps; ++step)
#pragma GCC unroll 32
      for (int i = 0; i < kChains; ++i) acc[i] = Fma(acc[i], one, tiny);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = 2.0 * kLanes * kChains * static_cast<double>(kSteps) / elapsed;
    if (rate > best) best = rate;
  } while (std::chrono::steady_clock::now() < stop);
  // Keeps the chains live: a volatile store of their combination (never read back).
  Reg sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = Fma(sum, one, acc[i]);
  volatile Reg sink = sum;
  (void)sink;
  return best;
}

}  // namespace fastmlp
