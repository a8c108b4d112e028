// The table of per-ISA GEMM contexts (see context.h).
#include "context.h"

#include <array>

namespace fastmlp {

namespace {

// Built once, the first time a product runs: the contexts of the ISAs this CPU supports.
std::array<IsaContext, kIsaCount> build_contexts() {
  std::array<IsaContext, kIsaCount> contexts;
  contexts[static_cast<int>(Isa::generic)] = generic_context();
#ifdef FASTMLP_X86
  if (isa_supported(Isa::avx2)) contexts[static_cast<int>(Isa::avx2)] = avx2_context();
  if (isa_supported(Isa::avx512)) contexts[static_cast<int>(Isa::avx512)] = avx512_context();
#endif
  return contexts;
}

}  // namespace

const IsaContext& isa_context(Isa isa) {
  static const std::array<IsaContext, kIsaCount> contexts = build_contexts();
  return contexts[static_cast<int>(isa)];
}

}  // namespace fastmlp
