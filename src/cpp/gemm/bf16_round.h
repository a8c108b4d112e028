// float32 → bfloat16 rounding as the bf16 GEMM applies it (see bf16.h for the semantics).
// `static`, like tile.h: each translation unit keeps its own copy, built with its own ISA flags.
#pragma once

#include <cstdint>
#include <cstring>

namespace fastmlp {

// The bf16 bit pattern (the high half of a float32) nearest to x:
//   zero or subnormal → signed zero; NaN → the same NaN with its quiet bit set;
//   else bits + 0x7FFF + (bit 16), truncated: ties go to the even half (bit 16 clear). The carry
//   of a value past the largest bf16 runs into the exponent and gives ±inf, as it should;
//   ±inf itself (mantissa 0) does not move.
// Selects rather than branches, so that loops over it vectorise (the portable packers).
static inline std::uint16_t bf16_bits(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const std::uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  const std::uint32_t quiet_nan = bits | 0x00400000u;
  const std::uint32_t signed_zero = bits & 0x80000000u;
  std::uint32_t out = (bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded;
  out = (bits & 0x7F800000u) == 0 ? signed_zero : out;
  return static_cast<std::uint16_t>(out >> 16);
}

// The bf16 value nearest to x, widened back to float32 (exactly).
static inline float bf16_round(float x) {
  const std::uint32_t bits = static_cast<std::uint32_t>(bf16_bits(x)) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

}  // namespace fastmlp
