// CPU feature detection and the run-time choice of the SIMD flavour (ISA) the kernels use.
//
// Detection runs once, tries the widest ISA first and falls back to the portable kernels.
// FASTMLP_ISA=generic|avx2|avx512 forces a flavour; forcing one the CPU lacks is an error.
// Detection only: what each flavour provides is its context, in gemm/context.h.
#pragma once

#include <string>

namespace fastmlp {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };
constexpr int kIsaCount = 3;

bool isa_supported(Isa isa);
Isa best_supported_isa();
Isa parse_isa(const std::string& name);  // throws std::invalid_argument
const char* isa_name(Isa isa);

// Reads FASTMLP_ISA (or picks the best) on first use; throws std::runtime_error when the
// variable names an unknown or unsupported flavour.
void init_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // throws std::invalid_argument if unsupported

}  // namespace fastmlp
