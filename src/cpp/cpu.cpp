// CPU feature detection and the choice of the active ISA (see cpu.h).
#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

namespace fastmlp {

namespace {

std::atomic<int> g_active{-1};
std::once_flag g_init_once;

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  if (name == "generic") return Isa::generic;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument("unknown ISA '" + name + "': expected one of generic, avx2, avx512");
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::generic: return true;
#if defined(FASTMLP_X86) && (defined(__GNUC__) || defined(__clang__))
    // libgcc's __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("fma");
#endif
    default: return false;
  }
}

Isa best_supported_isa() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::generic;
}

void init_isa() {
  std::call_once(g_init_once, [] {
    Isa chosen = best_supported_isa();
    if (const char* forced = std::getenv("FASTMLP_ISA"); forced && *forced) {
      Isa wanted;
      try {
        wanted = parse_isa(forced);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(std::string("FASTMLP_ISA: ") + e.what());
      }
      if (!isa_supported(wanted))
        throw std::runtime_error(std::string("FASTMLP_ISA=") + forced +
                                 " but this CPU does not support it (best available: " +
                                 isa_name(best_supported_isa()) + ")");
      chosen = wanted;
    }
    g_active.store(static_cast<int>(chosen));
  });
}

Isa active_isa() {
  init_isa();
  return static_cast<Isa>(g_active.load(std::memory_order_relaxed));
}

void set_active_isa(Isa isa) {
  init_isa();
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("ISA ") + isa_name(isa) +
                                " is not supported by this CPU");
  g_active.store(static_cast<int>(isa));
}

}  // namespace fastmlp
