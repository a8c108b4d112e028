// The int8 GEMM of quantized inference: C (M,N) = epilogue(Xq (M,K) · Wqᵀ (K,N)), Xq uint8
// activations, Wq int8 weights, products accumulated exactly in int32.
//
// Legend: M rows (batch), N output channels, K the reduction; K4 = K rounded up to a multiple
// of 4 (vpdpbusd multiplies groups of 4 bytes); MR the kernel's row tile; a column group is
// 64 channels (4 panels of 16).
//
// Quantization (affine: uint8 activations with a zero point, int8 weights, as onnxruntime's
// QUInt8 / QInt8):
//   x[i,:] ≈ s_i · (x_q[i,:] − z_i),  x_q = clamp(rint(x / s_i) + z_i, 0, 255) uint8
//     (one s_i, z_i per row i: dynamic, each sample's own range; static: the same for all rows)
//   W[j,:] ≈ s_w[j] · W_q[j,:],  W_q = clamp(rint(W / s_w), −127, 127) int8  (per output channel)
// so  x[i,:]·W[j,:] ≈ s_i s_w[j] (Σ_p x_q[i,p] W_q[j,p] − z_i Σ_p W_q[j,p]);
// the sum is exact in int32 for K ≤ 65,000 (|(x_q − z) W_q| ≤ 255·127), and the weight sums
// Σ_p W_q[j,p] are computed once with the pack. vpdpbusd multiplies unsigned by signed bytes:
// hence uint8 activations with a zero point, int8 weights.
//
// Paths (Int8Path), chosen at run time from the active ISA, each forceable by a test hook:
//   portable:    plain loops (any CPU);
//   avxvnni:     VEX vpdpbusd on 256-bit registers (AVX-VNNI: Alder Lake+, Zen 5), when the
//                active ISA is avx2 or avx512 and the CPU has AVX-VNNI but not AVX512-VNNI, or
//                the active ISA is avx2;
//   avx512vnni:  EVEX vpdpbusd on 512-bit registers (AVX512-VNNI), when the active ISA is
//                avx512 and the CPU has it.
// AMX-INT8 is not implemented (no CPU to test it on).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../common.h"

namespace fastmlp {

enum class Int8Path { automatic = 0, portable = 1, avxvnni = 2, avx512vnni = 3 };

const char* int8_path_name(Int8Path path);
Int8Path parse_int8_path(const std::string& name);  // throws std::invalid_argument
bool int8_path_supported(Int8Path path);
Int8Path active_int8_path();
// Every int8 product takes `path` (automatic: the choice above again); an unsupported one
// throws std::invalid_argument. Returns the previous forced path.
Int8Path testing_force_int8_path(Int8Path path);

// What a kernel does with its int32 tile acc (m ≤ MR rows × n ≤ 64 columns):
//   raw set:  raw[i*ld_raw + j] = acc[i][j]
//   else:     c[i*ldc + j] = relu?( float(acc[i][j] − z_i · Σ_j) · (s_i · s_w[j]) + b[j] )
// with z_i = input_zero[i], s_i = input_scale[i], Σ_j = weight_sums[j], s_w[j] = weight_scale[j]
// (a product of the two scales, then a multiply and an add, never fused: the tests' NumPy
// reference does the same float32 operations, and a row's outputs do not depend on the rows
// beside it). The column arrays are offset to the tile's first column and hold its n valid
// columns; the row arrays to its first row.
struct Int8Epilogue {
  const std::int32_t* weight_sums = nullptr;  // (columns) Σ_p W_q[j,p]
  const float* weight_scale = nullptr;        // (columns) s_w[j]
  const float* bias = nullptr;                // (columns)
  const std::int32_t* input_zero = nullptr;   // (rows) z_i
  const float* input_scale = nullptr;         // (rows) s_i
  bool relu = false;
  std::int32_t* raw = nullptr;
  index_t ld_raw = 0;
  // Optional (not with raw): 32 floats per row (row stride 32), the row's lane minima [0, 16)
  // and maxima [16, 32), lowered and raised by every value the kernel writes in that row (in
  // any lane: reduce_range_lanes folds them), so that the next layer's per-row dynamic scales
  // need no pass of their own over this output.
  float* range_lanes = nullptr;
};
constexpr index_t kRangeLanes = 32;

// The epilogue of element (i, j)'s int32 sum, as every kernel applies it to the elements it
// writes back one by one (`static`: each ISA's translation unit keeps its own copy, as tile.h's).
static inline float int8_output(std::int32_t sum, index_t i, index_t j, const Int8Epilogue& ep) {
  const std::int32_t correction = ep.input_zero[i] * ep.weight_sums[j];
  const float scale = ep.input_scale[i] * ep.weight_scale[j];
  const float product = static_cast<float>(sum - correction) * scale;
  const float value = product + ep.bias[j];
  const float out = ep.relu && !(value > 0.0f) ? 0.0f : value;
  if (ep.range_lanes) {
    float* lanes = ep.range_lanes + kRangeLanes * i;
    lanes[0] = out < lanes[0] ? out : lanes[0];
    lanes[16] = out > lanes[16] ? out : lanes[16];
  }
  return out;
}

// W_q (N,K) packed: panels of 16 channels, each K4/4 groups of 64 bytes (channel-major inside
// a group: byte 4·c + t is W_q[16·panel + c, 4·g + t]); N padded to a multiple of 64 and K to
// K4 with zeros:
//   data[(j/16)·16·K4 + (p/4)·64 + (j%16)·4 + p%4] = W_q[j, p].
struct PackedInt8Weights {
  index_t N = 0, K = 0, K4 = 0, padded_N = 0;
  std::vector<std::int8_t> storage;      // padded_N · K4 bytes from a 64-byte boundary on
  std::vector<std::int32_t> row_sums;    // (N) Σ_p W_q[j,p] (the epilogue's weight_sums)
  PackedInt8Weights(const std::int8_t* Wq, index_t ldw, index_t N, index_t K);
  PackedInt8Weights(PackedInt8Weights&& other) noexcept = default;  // (the buffer moves too)
  PackedInt8Weights(const PackedInt8Weights&) = delete;  // a copy's buffer aligns elsewhere
  // The panels: each 64-byte group on a cache line of its own (a load split over two lines
  // costs two).
  const std::int8_t* data() const { return storage.data() + offset; }
  std::size_t nbytes() const { return static_cast<std::size_t>(padded_N * K4); }

 private:
  std::size_t offset = 0;
};

// The kernel of a path: rows [0, m) (m ≤ MR) of a (row stride lda, ≥ K4 readable bytes per
// row) against the column group at `panels` (4 panels, panel_stride bytes apart), k4 = K4/4
// groups; n ≤ 64 valid columns; the tile goes through ep (above).
using Int8Kernel = void (*)(index_t k4, const std::uint8_t* a, index_t lda, index_t m,
                            const std::int8_t* panels, index_t panel_stride, float* c,
                            index_t ldc, index_t n, const Int8Epilogue& ep);
struct Int8Kernels {
  index_t MR = 0;
  Int8Kernel kernel = nullptr;
};
Int8Kernels active_int8_kernels();
#ifdef FASTMLP_X86
Int8Kernels avx512vnni_int8_kernels();  // kernels/avx512vnni/: only where supported
Int8Kernels avxvnni_int8_kernels();     // kernels/avxvnni/
#endif

// The product of Xq (M rows of K4 bytes, row stride lda, bytes K..K4 of a row zero or any
// value: the weights' padding is zero) with the packed weights through ep (its column arrays
// of N channels, its row arrays of M rows; raw, if set, (M,N) with row stride ld_raw), into
// c (M,N) row stride ldc. row_ranges (if given, not with raw): (M, 2), row i's {min, max} of
// the outputs written and 0, as quantize_rows_dynamic takes them (the outputs are never NaN:
// finite or ±inf).
void int8_gemm(const std::uint8_t* Xq, index_t lda, index_t M, const PackedInt8Weights& W,
               float* c, index_t ldc, const Int8Epilogue& ep, float* row_ranges = nullptr);

// ---- activation quantization ---------------------------------------------------------------

// The scale and zero point of a tensor whose values span [lo, hi] (0 always included, so that
// zero and ReLU outputs are exact): s = (hi − lo)/255 (hi/255 − lo/255 where hi − lo
// overflows; 1 if it is 0 or lo or hi is not finite), z = clamp(rint(−lo/s), 0, 255), in
// float32 arithmetic.
struct QuantParams {
  float scale = 1.0f;
  std::int32_t zero = 0;
};
QuantParams quant_params(float lo, float hi);

// out[i*ldo + p] = clamp(rint(x[i,p] · (1/s)), −z, 255 − z) + z for p < K (float32 product,
// ties to even), and 0 for K ≤ p < ldo. x element (i,p) at x[i*rs + p*cs]. One (s, z) for
// every row: the static scales.
// With check_finite, returns whether every x[i,p] is finite (NaN quantizes to z − z = 0,
// ±inf to the bounds); without, true (a range pass has checked, or nobody asks).
bool quantize_rows(std::uint8_t* out, index_t ldo, const float* x, index_t rs, index_t cs,
                   index_t M, index_t K, QuantParams q, bool check_finite = true);
// The dynamic scales: each row i quantized as above with its own (s_i, z_i) = quant_params(lo_i,
// hi_i), written to scale[i] and zero[i]. [lo_i, hi_i] is ranges[2i], ranges[2i+1] where given
// (int8_gemm's row_ranges of the layer before), else row i's own min and max, found in the same
// pass (the row is read from memory once, then again from L1 to quantize). A row holding NaN or
// ±inf (or whose given range is not finite) gets nonfinite[i] = 1 (if given; other entries are
// left as they are) and quantizes with whatever quant_params makes of its range; returns
// whether any row did.
bool quantize_rows_dynamic(std::uint8_t* out, index_t ldo, const float* x, index_t rs,
                           index_t cs, index_t M, index_t K, const float* ranges, float* scale,
                           std::int32_t* zero, std::uint8_t* nonfinite);
// quantize_rows_dynamic's bookkeeping for row i of range [lo, hi] (has_nan: a NaN was seen):
// its (s_i, z_i) = quant_params(lo, hi) stored and returned, its non-finite flag set (and *any).
inline QuantParams dynamic_row_params(float lo, float hi, bool has_nan, index_t i, float* scale,
                                      std::int32_t* zero, std::uint8_t* nonfinite, bool* any) {
  if (has_nan || !(lo >= -3.40282347e38f) || !(hi <= 3.40282347e38f)) {
    *any = true;
    if (nonfinite) nonfinite[i] = 1;
  }
  const QuantParams q = quant_params(lo, hi);
  scale[i] = q.scale;
  zero[i] = q.zero;
  return q;
}
// min and max over the (M,K) elements and 0; has_nan (if given): whether any element is NaN
// (which the min and max skip).
void tensor_range(const float* x, index_t rs, index_t cs, index_t M, index_t K, float* lo,
                  float* hi, bool* has_nan = nullptr);
// ranges (M, 2): {min, max} of row i's 32 range lanes (int8.h's Int8Epilogue) over `sets`
// arrays of them, set_stride floats apart.
void reduce_range_lanes(const float* lanes, index_t sets, index_t set_stride, index_t M,
                        float* ranges);
#ifdef FASTMLP_X86
// quantize_rows, tensor_range and reduce_range_lanes with contiguous rows (cs = 1) on AVX-512,
// 16 floats at a time, in the AVX512-VNNI kernel's translation unit (the path that uses them);
// the same results.
bool quantize_rows_avx512(std::uint8_t* out, index_t ldo, const float* x, index_t rs, index_t M,
                          index_t K, QuantParams q, bool check_finite);
// quantize_rows_dynamic without given ranges, and with them.
bool quantize_rows_given_avx512(std::uint8_t* out, index_t ldo, const float* x, index_t rs,
                                index_t M, index_t K, const float* ranges, float* scale,
                                std::int32_t* zero, std::uint8_t* nonfinite);
bool quantize_rows_dynamic_avx512(std::uint8_t* out, index_t ldo, const float* x, index_t rs,
                                  index_t M, index_t K, float* scale, std::int32_t* zero,
                                  std::uint8_t* nonfinite);
void tensor_range_avx512(const float* x, index_t rs, index_t M, index_t K, float* lo, float* hi,
                         bool* has_nan);
void reduce_range_lanes_avx512(const float* lanes, index_t sets, index_t set_stride, index_t M,
                               float* ranges);
// The float32 last layer of a quantized network, a block of N ≤ N16 of its outputs at a time
// (quantized.cpp): out (B,N) row stride ldo = h (B,K) row stride ldh · WT + b, WT (K, N16) Wᵀ
// with zero columns up to N16 = 16 or 32. Each output is one FMA chain over p in order, then
// + b, whatever the batch and the tile that computes it: a row gets the same bits in any batch
// (where a float32 GEMM's kernels and blocking change with the batch). Returns false, computing
// nothing, unless N16 is 16 or 32 and N ≤ N16.
bool narrow_dense_avx512(float* out, index_t ldo, const float* h, index_t ldh, index_t B,
                         index_t K, const float* WT, index_t N16, const float* b, index_t N);
#endif

}  // namespace fastmlp
