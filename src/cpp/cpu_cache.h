// The data caches of the CPU the process runs on, from which the GEMM derives its cache
// blocks (gemm/context.cpp). Beside cpu.h (ISA detection), kept apart from it.
//
// Detection runs once: CPUID's deterministic cache parameters on x86 (leaf 4 on Intel,
// 0x8000001D on AMD), else Linux's /sys/devices/system/cpu/cpu0/cache, else defaults.
// FASTMLP_CACHE_SIZES overrides it, key by key, e.g. "l1d=32K,l2=1M,l3=32M,l3_sharing=8":
//   l1d, l2, l3                   sizes in bytes, with an optional K, M or G suffix (×1024^k)
//   l1d_ways, l2_ways, l3_ways    associativity
//   l3_sharing                    logical CPUs sharing the L3 (its per-core share is l3 / it)
//   line                          line size in bytes
// A key not given keeps the detected value. It simulates another CPU's blocking (not its
// hardware): how the Zen 4 and Sapphire Rapids configurations are measured on one machine.
#pragma once

#include <string>

#include "common.h"

namespace fastmlp {

struct CacheSizes {
  index_t l1d = 0, l2 = 0, l3 = 0;  // bytes; L1d and L2 per core, L3 whole (0: none)
  int l1d_ways = 0, l2_ways = 0, l3_ways = 0;
  int l3_sharing = 1;  // logical CPUs sharing the L3
  int line = 0;        // bytes
  std::string source;  // "cpuid", "sysfs", "default", with "+FASTMLP_CACHE_SIZES" if overridden

  // The part of the L3 one core can count on when every core sharing it works.
  index_t l3_per_core() const { return l3 / (l3_sharing > 0 ? l3_sharing : 1); }
};

// What the hardware reports (no override).
CacheSizes detect_cache_sizes();

// `base` with the keys of `spec` (FASTMLP_CACHE_SIZES's syntax) applied; throws
// std::invalid_argument naming the bad key or value. The result must be consistent
// (L1d ≥ 1 KiB, L2 ≥ L1d, L3 0 or ≥ L2, none over 16 GiB, power-of-two line, ways ≥ 1).
CacheSizes apply_cache_override(const CacheSizes& base, const std::string& spec);

// Detection plus FASTMLP_CACHE_SIZES, once; throws std::runtime_error on a bad override
// (the bindings call it at import, as init_isa()).
const CacheSizes& cache_sizes();

}  // namespace fastmlp
