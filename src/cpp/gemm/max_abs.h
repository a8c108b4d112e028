// max |x| over a strided block: the inputs of the engine's finite-update proof (update_bound.h).
// Included by each ISA's translation unit and compiled with its flags, as axpy.h: the loop
// vectorises to that ISA's width (each step's proof reads every layer's input: 3 MiB a step on
// the wide net).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../common.h"

namespace fastmlp {

// max |x[r·row_stride + c]| over rows × cols (cols contiguous); +inf if any value is NaN or
// infinite. On the bits: |x|'s bit patterns order as the values do, NaN's above inf's, and an
// unsigned integer max vectorises where a float max (NaN semantics) does not. One running max
// per lane of a 64-byte vector across all rows (GCC's and Clang's vector extension: the ISA's
// registers, one zmm on AVX-512; other compilers take the scalar loop): the loop GCC
// vectorised by itself reduced each row horizontally, costly for short rows.
template <class T>
static double max_abs_kernel(const T* x, index_t rows, index_t cols, index_t row_stride) {
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr Bits kMagnitude = ~Bits{0} >> 1;
  Bits largest = 0;
  auto take = [&](const T* value) {
    Bits bits;
    std::memcpy(&bits, value, sizeof bits);
    bits &= kMagnitude;
    largest = bits > largest ? bits : largest;
  };
#if defined(__GNUC__)
  typedef Bits Vector __attribute__((vector_size(64)));
  constexpr int kLanes = 64 / sizeof(T);
  Vector lane_max = {};
  for (index_t r = 0; r < rows; ++r) {
    const T* row = x + r * row_stride;
    index_t c = 0;
    for (; c + kLanes <= cols; c += kLanes) {
      Vector bits;
      std::memcpy(&bits, row + c, sizeof bits);
      bits &= kMagnitude;
      lane_max = bits > lane_max ? bits : lane_max;
    }
    for (; c < cols; ++c) take(row + c);
  }
  for (int j = 0; j < kLanes; ++j) largest = lane_max[j] > largest ? lane_max[j] : largest;
#else
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) take(x + r * row_stride + c);
#endif
  T value;
  std::memcpy(&value, &largest, sizeof value);
  return value <= std::numeric_limits<T>::max() ? static_cast<double>(value)
                                                 : std::numeric_limits<double>::infinity();
}

}  // namespace fastmlp
