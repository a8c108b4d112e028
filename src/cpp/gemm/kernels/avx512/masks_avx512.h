// The lane mask of a 16-float AVX-512 vector's first `count` lanes, for the masked loads and
// stores at the edge of a row. `static`, like transpose_avx512.h: each AVX-512 translation
// unit that includes it keeps its own copy, compiled with its own ISA flags.
#pragma once

#include <immintrin.h>

#include "../../../common.h"

namespace fastmlp {

// Lanes [0, count) set: none for count ≤ 0, all 16 for count ≥ 16.
static inline __mmask16 first_lanes(index_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF)
         : count <= 0 ? static_cast<__mmask16>(0)
                      : static_cast<__mmask16>((1u << count) - 1u);
}

}  // namespace fastmlp
