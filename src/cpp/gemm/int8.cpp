// The int8 GEMM's framework, its portable kernel and the choice of path (see int8.h).
#include "int8.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../cpu.h"
#include "../threads.h"
#include "gemm.h"

#if defined(FASTMLP_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>  // the x86-64 baseline: quantization 4 floats at a time
#endif

namespace fastmlp {

namespace {

std::atomic<Int8Path> g_forced_int8_path{Int8Path::automatic};

// CPUID leaf 7: subleaf 0 ECX bit 11 AVX512_VNNI, subleaf 1 EAX bit 4 AVX_VNNI; the OS saving
// the registers is checked by isa_supported.
bool cpuid_bit(unsigned subleaf, int reg, int bit) {
#if defined(FASTMLP_X86) && (defined(__GNUC__) || defined(__clang__))
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(7, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
#else
  (void)subleaf, (void)reg, (void)bit;
  return false;
#endif
}

// The portable kernel's epilogue of one row's n sums (int8.h's contract).
void finish_row(const std::int32_t* acc, index_t i, float* c, index_t ldc, index_t n,
                const Int8Epilogue& ep) {
  for (index_t j = 0; j < n; ++j) {
    if (ep.raw) {
      ep.raw[i * ep.ld_raw + j] = acc[j];
      continue;
    }
    c[i * ldc + j] = int8_output(acc[j], i, j, ep);
  }
}

// The portable kernel: the int8.h contract one row at a time. On x86-64 (SSE2, the baseline)
// pmaddwd multiplies 8 int16 pairs and adds adjacent products: bytes widened to int16, the
// row's 4 activations repeated twice against 2 channels' 4 weights give each channel's
// (x0w0 + x1w1, x2w2 + x3w3); the two halves are added at the end. Elsewhere plain loops.
void int8_kernel_portable(index_t k4, const std::uint8_t* a, index_t lda, index_t m,
                          const std::int8_t* panels, index_t panel_stride, float* c, index_t ldc,
                          index_t n, const Int8Epilogue& ep) {
  for (index_t i = 0; i < m; ++i) {
    alignas(16) std::int32_t acc[64] = {};
    const std::uint8_t* row = a + i * lda;
    for (index_t v = 0; v < 4 && 16 * v < n; ++v) {
      const std::int8_t* panel = panels + v * panel_stride;
#if defined(__SSE2__)
      // pairs[q]: for channels 2q and 2q+1 of the panel, 4 int32 partial sums.
      __m128i pairs[8];
      for (int q = 0; q < 8; ++q) pairs[q] = _mm_setzero_si128();
      const __m128i zero = _mm_setzero_si128();
      for (index_t g = 0; g < k4; ++g) {
        std::int32_t four;
        std::memcpy(&four, row + 4 * g, 4);
        // x0 x1 x2 x3 x0 x1 x2 x3 as int16 (uint8 zero-extended)
        const __m128i x = _mm_unpacklo_epi8(_mm_set1_epi32(four), zero);
        const std::int8_t* w = panel + 64 * g;
        for (int quarter = 0; quarter < 4; ++quarter) {  // 16 bytes: 4 channels × 4 k
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * quarter));
          const __m128i sign = _mm_cmpgt_epi8(zero, bytes);  // int8 → int16 sign extension
          const __m128i low = _mm_unpacklo_epi8(bytes, sign), high = _mm_unpackhi_epi8(bytes, sign);
          pairs[2 * quarter] = _mm_add_epi32(pairs[2 * quarter], _mm_madd_epi16(low, x));
          pairs[2 * quarter + 1] = _mm_add_epi32(pairs[2 * quarter + 1], _mm_madd_epi16(high, x));
        }
      }
      for (int q = 0; q < 8; ++q) {
        alignas(16) std::int32_t halves[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(halves), pairs[q]);
        acc[16 * v + 2 * q] = halves[0] + halves[1];
        acc[16 * v + 2 * q + 1] = halves[2] + halves[3];
      }
#else
      for (index_t g = 0; g < k4; ++g) {
        const std::uint8_t* x = row + 4 * g;
        const std::int8_t* w = panel + 64 * g;
        for (index_t col = 0; col < 16; ++col)
          acc[16 * v + col] += x[0] * w[4 * col] + x[1] * w[4 * col + 1] +
                               x[2] * w[4 * col + 2] + x[3] * w[4 * col + 3];
      }
#endif
    }
    finish_row(acc, i, c, ldc, n, ep);
  }
}

}  // namespace

const char* int8_path_name(Int8Path path) {
  switch (path) {
    case Int8Path::automatic: return "automatic";
    case Int8Path::portable: return "portable";
    case Int8Path::avxvnni: return "avxvnni";
    case Int8Path::avx512vnni: return "avx512vnni";
  }
  return "unknown";
}

Int8Path parse_int8_path(const std::string& name) {
  for (Int8Path p : {Int8Path::automatic, Int8Path::portable, Int8Path::avxvnni,
                     Int8Path::avx512vnni})
    if (name == int8_path_name(p)) return p;
  throw std::invalid_argument("unknown int8 path '" + name +
                              "': expected one of automatic, portable, avxvnni, avx512vnni");
}

bool int8_path_supported(Int8Path path) {
  switch (path) {
    case Int8Path::automatic:
    case Int8Path::portable: return true;
    case Int8Path::avxvnni: return isa_supported(Isa::avx2) && cpuid_bit(1, 0, 4);
    case Int8Path::avx512vnni: return isa_supported(Isa::avx512) && cpuid_bit(0, 2, 11);
  }
  return false;
}

Int8Path active_int8_path() {
  const Int8Path forced = g_forced_int8_path.load(std::memory_order_relaxed);
  if (forced != Int8Path::automatic) return forced;
  static const bool has_avx512vnni = int8_path_supported(Int8Path::avx512vnni);
  static const bool has_avxvnni = int8_path_supported(Int8Path::avxvnni);
  const Isa isa = active_isa();
  if (isa == Isa::avx512 && has_avx512vnni) return Int8Path::avx512vnni;
  if (isa != Isa::generic && has_avxvnni) return Int8Path::avxvnni;
  return Int8Path::portable;
}

Int8Path testing_force_int8_path(Int8Path path) {
  if (!int8_path_supported(path))
    throw std::invalid_argument(std::string("int8 path ") + int8_path_name(path) +
                                " is not supported by this CPU");
  return g_forced_int8_path.exchange(path);
}

Int8Kernels active_int8_kernels() {
  switch (active_int8_path()) {
#ifdef FASTMLP_X86
    case Int8Path::avx512vnni: return avx512vnni_int8_kernels();
    case Int8Path::avxvnni: return avxvnni_int8_kernels();
#endif
    default: return Int8Kernels{4, &int8_kernel_portable};
  }
}

PackedInt8Weights::PackedInt8Weights(const std::int8_t* Wq, index_t ldw, index_t n, index_t k)
    : N(n), K(k), K4((k + 3) / 4 * 4), padded_N((n + 63) / 64 * 64) {
  if (K > 65000) throw std::invalid_argument("int8 layers take at most 65,000 inputs");
  storage.assign(nbytes() + 63, 0);
  offset = (64 - reinterpret_cast<std::uintptr_t>(storage.data()) % 64) % 64;
  std::int8_t* data = storage.data() + offset;
  row_sums.assign(static_cast<std::size_t>(N), 0);
  for (index_t j = 0; j < N; ++j) {
    std::int8_t* panel = data + (j / 16) * 16 * K4 + (j % 16) * 4;
    std::int32_t sum = 0;
    for (index_t p = 0; p < K; ++p) {
      panel[(p / 4) * 64 + p % 4] = Wq[j * ldw + p];
      sum += Wq[j * ldw + p];
    }
    row_sums[static_cast<std::size_t>(j)] = sum;
  }
}

void int8_gemm(const std::uint8_t* Xq, index_t lda, index_t M, const PackedInt8Weights& W,
               float* c, index_t ldc, const Int8Epilogue& ep, float* row_ranges) {
  const Int8Kernels k = active_int8_kernels();
  const index_t panel_stride = 16 * W.K4;
  // Each task's range lanes (M rows of kRangeLanes, int8.h), 0 at first (0 is in every range):
  // tasks split over column groups write the same rows. (The tasks use the caller's buffer,
  // through lane_base: a thread_local named in the lambda would be each pool thread's own.)
  static thread_local std::vector<float> lanes;
  const index_t lane_set = M * kRangeLanes;
  float* lane_base = nullptr;
  // Rows [i0, i1) × column groups [g0, g1): column groups outer, so that a group's 4 panels
  // (64·K4 bytes, 50 KB for K = 784) stay in L1/L2 while every row block streams past them.
  auto run = [&](index_t i0, index_t i1, index_t g0, index_t g1, index_t task) {
    for (index_t j = 64 * g0; j < std::min(W.N, 64 * g1); j += 64) {
      const index_t n = std::min<index_t>(64, W.N - j);
      Int8Epilogue tile = ep;
      if (!ep.raw) {
        tile.weight_sums += j;
        tile.weight_scale += j;
        tile.bias += j;
      }
      for (index_t i = i0; i < i1; i += k.MR) {
        const index_t m = std::min(k.MR, i1 - i);
        if (ep.raw) {
          tile.raw = ep.raw + i * ep.ld_raw + j;
        } else {
          tile.input_zero = ep.input_zero + i;
          tile.input_scale = ep.input_scale + i;
          if (row_ranges) tile.range_lanes = lane_base + task * lane_set + i * kRangeLanes;
        }
        k.kernel(W.K4 / 4, Xq + i * lda, lda, m, W.data() + j * W.K4, panel_stride,
                 c ? c + i * ldc + j : nullptr, ldc, n, tile);
      }
    }
  };
  const index_t groups = (W.N + 63) / 64;
  const ParallelMode mode = current_parallel_mode();
  const index_t threads = mode == ParallelMode::serial ? 1 : get_num_threads();
  // gemm.h's cost model is measured on float32 products; an int8 product runs at ~3.5× the
  // float32 rate (benchmarks/README.md, "Inference"), so it weighs a third of its operations.
  const double weight = 2.0 * static_cast<double>(M) * static_cast<double>(W.N) *
                        static_cast<double>(W.K) / 3.0;
  const bool serial =
      threads <= 1 || (mode != ParallelMode::parallel && !gemm_split_pays<float>(weight));
  // One task per thread, over column groups when there are enough (each task then reads its
  // own weights), else over row blocks; every element is computed by the same kernel calls
  // whoever runs them, so the result is the same for any thread count.
  const index_t row_blocks = (M + k.MR - 1) / k.MR;
  const index_t tasks = serial ? 1 : std::min(threads, std::max(groups, row_blocks));
  const bool over_groups = groups >= tasks;
  // Split over row blocks, each row's lanes are written by one task: one set.
  const index_t sets = over_groups ? tasks : 1;
  if (row_ranges) {
    lanes.resize(static_cast<std::size_t>(sets * lane_set));
    lane_base = lanes.data();
    std::memset(lane_base, 0, lanes.size() * sizeof(float));  // (vector::assign: a scalar loop)
  }
  if (serial) {
    run(0, M, 0, groups, 0);
  } else {
    parallel_for(static_cast<int>(tasks), [&](int t) {
      if (over_groups)
        run(0, M, t * groups / tasks, (t + 1) * groups / tasks, t);
      else
        run(std::min(M, t * row_blocks / tasks * k.MR),
            std::min(M, (t + 1) * row_blocks / tasks * k.MR), 0, groups, 0);
    });
  }
  if (row_ranges) reduce_range_lanes(lanes.data(), sets, lane_set, M, row_ranges);
}

void reduce_range_lanes(const float* lanes, index_t sets, index_t set_stride, index_t M,
                        float* ranges) {
#ifdef FASTMLP_X86
  if (active_int8_path() == Int8Path::avx512vnni)
    return reduce_range_lanes_avx512(lanes, sets, set_stride, M, ranges);
#endif
  for (index_t i = 0; i < M; ++i) {
    float lo = 0.0f, hi = 0.0f;
    for (index_t s = 0; s < sets; ++s) {
      const float* row = lanes + s * set_stride + i * kRangeLanes;
      for (index_t lane = 0; lane < 16; ++lane) {
        lo = std::min(lo, row[lane]);
        hi = std::max(hi, row[16 + lane]);
      }
    }
    ranges[2 * i] = lo;
    ranges[2 * i + 1] = hi;
  }
}

namespace {

// rint(v) for |v| < 2²², ties to even (the FPU's rounding), without a libm call: adding and
// subtracting 1.5·2²³ leaves no fraction bits.
inline std::int32_t round_small(float v) {
  constexpr float kRound = 12582912.0f;
  return static_cast<std::int32_t>((v + kRound) - kRound);
}

}  // namespace

QuantParams quant_params(float lo, float hi) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  QuantParams q;
  q.scale = (hi - lo) / 255.0f;
  // A span beyond float32 (lo and hi both near ±3.4e38) is divided before the subtraction:
  // a scale of 1 would clamp nearly every value to 0 or 255.
  if (std::isinf(q.scale) && std::isfinite(lo) && std::isfinite(hi))
    q.scale = hi / 255.0f - lo / 255.0f;
  if (!(q.scale > 0.0f) || !std::isfinite(q.scale)) q.scale = 1.0f;
  // rint(−lo / s) clamped to [0, 255]: clamped first (the same, as the bounds are integers;
  // NaN becomes 0), then round_small (as quantize_rows): std::nearbyint is a libm call on the
  // x86-64 baseline, which saves and restores the FP environment, and the dynamic scales call
  // this once per row.
  q.zero = round_small(std::min(255.0f, std::max(0.0f, -lo / q.scale)));
  return q;
}

bool quantize_rows(std::uint8_t* out, index_t ldo, const float* x, index_t rs, index_t cs,
                   index_t M, index_t K, QuantParams q, bool check_finite) {
#ifdef FASTMLP_X86
  if (cs == 1 && active_int8_path() == Int8Path::avx512vnni)
    return quantize_rows_avx512(out, ldo, x, rs, M, K, q, check_finite);
#endif
  const float inverse = 1.0f / q.scale;
  const float lo = static_cast<float>(-q.zero), hi = static_cast<float>(255 - q.zero);
  // rint(x / s) + z clamped to [0, 255], clamped first to the integer bounds (which changes
  // nothing and keeps the value in round_small's range). x − x is 0 for a finite x, NaN for
  // ±inf and NaN: AND-ed over the elements.
  bool finite = true;
  auto quantize = [&](float x) {
    finite = finite && x - x == 0.0f;
    const float v = std::min(hi, std::max(lo, x * inverse));
    return static_cast<std::uint8_t>(round_small(v) + q.zero);
  };
  for (index_t i = 0; i < M; ++i) {
    std::uint8_t* row = out + i * ldo;
    const float* xr = x + i * rs;
    if (cs == 1) {
      index_t p = 0;
#if defined(__SSE2__)
      // cvtps2dq rounds to nearest even (MXCSR's default), as the loop below; then int32 →
      // int16 → uint8 with saturation (the values are in [0, 255] already).
      const __m128 v_inverse = _mm_set1_ps(inverse), v_lo = _mm_set1_ps(lo), v_hi = _mm_set1_ps(hi);
      const __m128i v_zero = _mm_set1_epi32(q.zero);
      __m128 v_unordered = _mm_setzero_ps();
      auto four = [&](index_t at) {
        const __m128 x4 = _mm_loadu_ps(xr + at);
        v_unordered = _mm_or_ps(v_unordered, _mm_cmpunord_ps(_mm_sub_ps(x4, x4), x4));
        const __m128 v = _mm_min_ps(v_hi, _mm_max_ps(v_lo, _mm_mul_ps(x4, v_inverse)));
        return _mm_add_epi32(_mm_cvtps_epi32(v), v_zero);
      };
      for (; p + 16 <= K; p += 16) {
        const __m128i low = _mm_packs_epi32(four(p), four(p + 4));
        const __m128i high = _mm_packs_epi32(four(p + 8), four(p + 12));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(row + p), _mm_packus_epi16(low, high));
      }
      finite = finite && _mm_movemask_ps(v_unordered) == 0;
#endif
      for (; p < K; ++p) row[p] = quantize(xr[p]);
    } else {
      for (index_t p = 0; p < K; ++p) row[p] = quantize(xr[p * cs]);
    }
    for (index_t p = K; p < ldo; ++p) row[p] = 0;
  }
  return finite || !check_finite;  // (checked anyway: a few cheap operations here)
}

bool quantize_rows_dynamic(std::uint8_t* out, index_t ldo, const float* x, index_t rs,
                           index_t cs, index_t M, index_t K, const float* ranges, float* scale,
                           std::int32_t* zero, std::uint8_t* nonfinite) {
#ifdef FASTMLP_X86
  if (cs == 1 && active_int8_path() == Int8Path::avx512vnni)
    return ranges ? quantize_rows_given_avx512(out, ldo, x, rs, M, K, ranges, scale, zero,
                                               nonfinite)
                  : quantize_rows_dynamic_avx512(out, ldo, x, rs, M, K, scale, zero, nonfinite);
#endif
  // Row by row: the range pass leaves the row (3 KB for K = 784) in L1 for its quantization.
  bool any_nonfinite = false;
  for (index_t i = 0; i < M; ++i) {
    const float* row = x + i * rs;
    float lo, hi;
    bool has_nan = false;
    if (ranges) {
      lo = ranges[2 * i];
      hi = ranges[2 * i + 1];
    } else {
      tensor_range(row, rs, cs, 1, K, &lo, &hi, &has_nan);
    }
    const QuantParams q = dynamic_row_params(lo, hi, has_nan, i, scale, zero, nonfinite,
                                             &any_nonfinite);
    quantize_rows(out + i * ldo, ldo, row, rs, cs, 1, K, q, /*check_finite=*/false);
  }
  return any_nonfinite;
}

void tensor_range(const float* x, index_t rs, index_t cs, index_t M, index_t K, float* lo,
                  float* hi, bool* has_nan) {
#ifdef FASTMLP_X86
  if (cs == 1 && active_int8_path() == Int8Path::avx512vnni)
    return tensor_range_avx512(x, rs, M, K, lo, hi, has_nan);
#endif
  // 16 lanes of partial minima and maxima, elementwise selects the compiler vectorises (a
  // min/max reduction it would not, without -ffinite-math-only); 0 starts them, as 0 is always
  // in the range (quant_params).
  // NaN passes every select unnoticed; has_nan (if given) says whether one was seen.
  constexpr index_t kLanes = 16;
  float mn[kLanes] = {}, mx[kLanes] = {};
  bool nan_seen = false;
  for (index_t i = 0; i < M; ++i) {
    const float* xr = x + i * rs;
    index_t p = 0;
#if defined(__SSE2__)
    if (cs == 1) {
      // Four independent chains: minps's latency (3 cycles) would otherwise set the pace.
      __m128 v_mn[4], v_mx[4], v_nan[4];
      for (int c = 0; c < 4; ++c) v_mn[c] = v_mx[c] = v_nan[c] = _mm_setzero_ps();
      for (; p + 16 <= K; p += 16)
        for (int c = 0; c < 4; ++c) {
          const __m128 v = _mm_loadu_ps(xr + p + 4 * c);
          v_mn[c] = _mm_min_ps(v_mn[c], v);
          v_mx[c] = _mm_max_ps(v_mx[c], v);
          v_nan[c] = _mm_or_ps(v_nan[c], _mm_cmpunord_ps(v, v));  // all ones where v is NaN
        }
      const __m128 any_nan = _mm_or_ps(_mm_or_ps(v_nan[0], v_nan[1]),
                                       _mm_or_ps(v_nan[2], v_nan[3]));
      nan_seen = nan_seen || _mm_movemask_ps(any_nan) != 0;
      float lanes[4];
      for (int c = 0; c < 4; ++c) {
        _mm_storeu_ps(lanes, v_mn[c]);
        for (const float v : lanes) mn[1] = v < mn[1] ? v : mn[1];
        _mm_storeu_ps(lanes, v_mx[c]);
        for (const float v : lanes) mx[1] = v > mx[1] ? v : mx[1];
      }
    }
#endif
    if (cs == 1)
      for (; p + kLanes <= K; p += kLanes)
        for (index_t t = 0; t < kLanes; ++t) {
          const float v = xr[p + t];
          mn[t] = v < mn[t] ? v : mn[t];
          mx[t] = v > mx[t] ? v : mx[t];
          nan_seen |= v != v;
        }
    for (; p < K; ++p) {
      const float v = xr[p * cs];
      mn[0] = v < mn[0] ? v : mn[0];
      mx[0] = v > mx[0] ? v : mx[0];
      nan_seen |= v != v;
    }
  }
  *lo = *std::min_element(mn, mn + kLanes);
  *hi = *std::max_element(mx, mx + kLanes);
  if (has_nan) *has_nan = nan_seen;
}

}  // namespace fastmlp
