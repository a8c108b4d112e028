// CPU feature detection and the run-time choice of the SIMD flavour (ISA) the kernels use.
//
// Detection runs once, tries the widest ISA first and falls back to the portable kernels.
// FASTMLP_ISA=generic|avx2|avx512 forces a flavour; forcing one the CPU lacks is an error.
#pragma once

#include <string>

#include "gemm/gemm.h"

namespace fastmlp {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

struct IsaKernels {
  Isa isa;
  const char* name;
  GemmKernel<float> sgemm;
  GemmKernel<double> dgemm;
};

// The kernels of each flavour (defined in kernels/<isa>/). Only call the x86 ones after
// isa_supported() said yes: their code uses instructions older CPUs do not have.
IsaKernels generic_kernels();
#ifdef FASTMLP_X86
IsaKernels avx2_kernels();
IsaKernels avx512_kernels();
#endif

bool isa_supported(Isa isa);
Isa best_supported_isa();
Isa parse_isa(const std::string& name);  // throws std::invalid_argument
const char* isa_name(Isa isa);

// Reads FASTMLP_ISA (or picks the best) on first use; throws std::runtime_error when the
// variable names an unknown or unsupported flavour.
void init_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // throws std::invalid_argument if unsupported
const IsaKernels& active_kernels();

template <class T>
const GemmKernel<T>& active_gemm_kernel();

}  // namespace fastmlp
