// Input checks that run over whole data sets, where NumPy's isfinite(a).all() would write and
// re-read a boolean temporary as large as a quarter of the data.
#pragma once

#include "common.h"

namespace fastmlp {

// The index of the first NaN or ±infinity among data[0 … n-1], or -1 if all are finite.
template <class T>
index_t first_nonfinite(const T* data, index_t n);

#ifdef FASTMLP_X86
// The same on AVX-512F (kernels/avx512/checks_avx512.cpp): only where the CPU has it.
index_t first_nonfinite_avx512(const float* data, index_t n);
index_t first_nonfinite_avx512(const double* data, index_t n);
#endif

}  // namespace fastmlp
