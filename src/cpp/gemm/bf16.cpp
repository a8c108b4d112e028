// The bfloat16 GEMM's choice of path, its portable path and the packed-block loop nest that
// every path runs (bf16.h).
#include "bf16.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#if defined(FASTMLP_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "../threads.h"
#include "bf16_round.h"
#include "context.h"
#include "split.h"
#include "tile.h"

namespace fastmlp {

namespace {

std::atomic<Bf16Path> g_forced_bf16_path{Bf16Path::automatic};

// ---- the portable path: bf16 values widened to float32 in context.h's panel layout ----------

// x[0..n) := bf16_round(x): on a panel just packed, while it is in cache.
void round_panel(float* x, index_t n) {
  for (index_t i = 0; i < n; ++i) x[i] = bf16_round(x[i]);
}

// Both packers round each value as they copy it, walking the source along its contiguous axis
// when it has one (a transposed walk reads one value per cache line: 4-10× slower on the
// layers' shapes). Where the active ISA has a packer for the layout (AVX-512's in-register
// transposes), that packs one panel and round_panel rounds it right after, in L1/L2 (the
// portable path on AVX-512, mnist and digits layers: 1.1-1.3× the rounding copy's GFLOP/s).
void pack_a_rounded(void* packed_bytes, const float* a, index_t rs, index_t cs, index_t mc,
                    index_t kc, index_t MR) {
  float* packed = static_cast<float*>(packed_bytes);
  const PackRowsKernel<float> rows_kernel = active_gemm_context<float>().pack_a_rows;
  for (index_t ir = 0; ir < mc; ir += MR) {
    const index_t rows = std::min(MR, mc - ir);
    float* panel = packed + ir * kc;
    const float* a_rows = a + ir * rs;
    if (cs == 1 && rows_kernel && MR <= 16) {
      rows_kernel(panel, a_rows, rs, rows, kc, MR);
      round_panel(panel, MR * kc);
      continue;
    }
    if (cs == 1) {
      for (index_t i = 0; i < rows; ++i)
        for (index_t p = 0; p < kc; ++p) panel[p * MR + i] = bf16_round(a_rows[i * rs + p]);
    } else {
      for (index_t p = 0; p < kc; ++p)
        for (index_t i = 0; i < rows; ++i) panel[p * MR + i] = bf16_round(a_rows[i * rs + p * cs]);
    }
    for (index_t p = 0; p < kc; ++p)
      for (index_t i = rows; i < MR; ++i) panel[p * MR + i] = 0.0f;
  }
}

void pack_b_rounded(void* packed_bytes, const float* b, index_t rs, index_t cs, index_t kc,
                    index_t nc, index_t NR) {
  float* packed = static_cast<float*>(packed_bytes);
  const PackTransposedKernel<float> transposed = active_gemm_context<float>().pack_b_transposed;
  for (index_t jr = 0; jr < nc; jr += NR) {
    const index_t cols = std::min(NR, nc - jr);
    float* panel = packed + jr * kc;
    const float* b_cols = b + jr * cs;
    if (rs == 1 && transposed) {
      transposed(panel, b_cols, cs, kc, cols);
      round_panel(panel, NR * kc);
      continue;
    }
    if (rs == 1) {
      for (index_t j = 0; j < cols; ++j)
        for (index_t p = 0; p < kc; ++p) panel[p * NR + j] = bf16_round(b_cols[j * cs + p]);
    } else {
      for (index_t p = 0; p < kc; ++p)
        for (index_t j = 0; j < cols; ++j) panel[p * NR + j] = bf16_round(b_cols[p * rs + j * cs]);
    }
    for (index_t p = 0; p < kc; ++p)
      for (index_t j = cols; j < NR; ++j) panel[p * NR + j] = 0.0f;
  }
}

// The active ISA's float32 tile and blocking, with rounding packers.
Bf16Kernels portable_kernels() {
  const GemmContext<float>& cntx = active_gemm_context<float>();
  Bf16Kernels k;
  k.MR = cntx.MR, k.NR = cntx.NR, k.MC = cntx.MC, k.KC = cntx.KC, k.NC = cntx.NC;
  k.k_group = 1;
  k.value_bytes = sizeof(float);
  k.pack_a = &pack_a_rounded;
  k.pack_b = &pack_b_rounded;
  k.fp32_kernel = cntx.micro_kernel;
  return k;
}

const Bf16Kernels& kernels_of(Bf16Path path) {
#ifdef FASTMLP_X86
  if (path == Bf16Path::avx512bf16) {
    static const Bf16Kernels avx512bf16 = [] {
      Bf16Kernels k = avx512bf16_kernels();
      // The float32 AVX-512 blocks (the same 12×32 tile; derived from the caches, context.cpp)
      // in bytes: a bf16 value is half a float, so twice the KC gives the same B micro-panel
      // and A block, and the same MC and NC the same B block. KC stays even: no pair of k
      // straddles two K blocks.
      const GemmContext<float>& f32 = isa_context(Isa::avx512).sgemm;
      k.MC = f32.MC, k.KC = 2 * f32.KC, k.NC = f32.NC;
      return k;
    }();
    return avx512bf16;
  }
#endif
  (void)path;
  // Per call, not cached: the portable path follows the active ISA, which set_isa may change.
  thread_local Bf16Kernels portable;
  portable = portable_kernels();
  return portable;
}

// Grow-only packing buffers, one pair per thread (as gemm.cpp's).
AlignedBuffer<unsigned char>& packed_a_bytes() {
  static thread_local AlignedBuffer<unsigned char> buffer;
  return buffer;
}
AlignedBuffer<unsigned char>& packed_b_bytes() {
  static thread_local AlignedBuffer<unsigned char> buffer;
  return buffer;
}

// Where a product with a consumer puts each finished tile (MR×NR) before handing it over, and,
// when K spans several blocks, the whole product; per thread, like the packing buffers.
AlignedBuffer<float>& consumer_tile_buffer() {
  static thread_local AlignedBuffer<float> buffer;
  return buffer;
}
AlignedBuffer<float>& whole_product_buffer() {
  static thread_local AlignedBuffer<float> buffer;
  return buffer;
}

// The portable GEMV's rounded x and block of W; per thread.
AlignedBuffer<float>& gemv_operands_buffer() {
  static thread_local AlignedBuffer<float> buffer;
  return buffer;
}

index_t round_up(index_t x, index_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// The rest of the epilogue on an m×n block of C already holding the product (beta applied):
// the empty product's.
void finish_tile(float* c, index_t ldc, index_t m, index_t n, const TileEpilogue<float>& ep) {
  for (index_t i = 0; i < m; ++i) {
    float* c_row = c + i * ldc;
    const float* mask_row = ep.mask ? ep.mask + i * ep.ld_mask : nullptr;
    for (index_t j = 0; j < n; ++j)
      c_row[j] = apply_epilogue(c_row[j], 0.0f, ep, j, mask_row ? mask_row[j] : 0.0f);
  }
}

// A batch of one against op(B) = Wᵀ (W (N,K) row-major, rows g.cs_b apart): c = bf16(x)ᵀ
// bf16(W)ᵀ, W read in place. The path's own GEMV kernel rounds in registers; the portable path
// rounds x once and W a block of rows at a time into a per-thread buffer (in L1/L2), then runs
// the active ISA's float32 GEMV on the block: the same rounded operands, float32 products.
void gemv_bf16(const GemmArgs<float>& g, const Bf16Kernels& k) {
  const TileSink<float>& out = g.sink;
  float* scratch = out.consumes()
                       ? consumer_tile_buffer().reserve(static_cast<std::size_t>(g.N))
                       : nullptr;
  // Rows per block of the portable path: about 16 KiB of rounded W, at least 8 (the GEMV's
  // rows per pass); the path's own kernel needs no block.
  const index_t block_rows =
      k.gemv ? 0 : std::max<index_t>(8, 4096 / std::max<index_t>(g.K, 1));
  const bool copy_x = !k.gemv || g.cs_a != 1;
  float* buffer = gemv_operands_buffer().reserve(static_cast<std::size_t>(
      (copy_x ? g.K : 0) + std::min(block_rows, g.N) * g.K));
  // x contiguous, rounded where the portable path needs it (the path's kernel rounds a strided
  // x's copy again, unchanged).
  const float* x = g.A;
  if (copy_x) {
    for (index_t p = 0; p < g.K; ++p) buffer[p] = bf16_round(g.A[p * g.cs_a]);
    x = buffer;
  }
  if (k.gemv) {
    out.put(0, 0, 1, g.N, true, true, scratch, g.N,
            [&](float* c, index_t, const TileEpilogue<float>& ep) {
              k.gemv(g.K, g.N, x, g.B, g.cs_b, c, ep);
            });
    return;
  }
  const GemmContext<float>& cntx = active_gemm_context<float>();
  float* w_block = buffer + g.K;
  for (index_t j0 = 0; j0 < g.N; j0 += block_rows) {
    const index_t rows = std::min(block_rows, g.N - j0);
    for (index_t r = 0; r < rows; ++r)
      round_to_bf16(w_block + r * g.K, g.B + (j0 + r) * g.cs_b, g.K);
    out.put(0, j0, 1, rows, true, true, scratch, rows,
            [&](float* c, index_t, const TileEpilogue<float>& ep) {
              cntx.gemv(g.K, rows, x, w_block, g.K, c, ep);
            });
  }
}

// GotoBLAS's loop nest around one path's packers and tile kernel (gemm.cpp's gemm_packed):
// K blocks of KC after the first add to C, which holds the float32 partial sums (so does the
// first when the sink accumulates); after the last, bias, ReLU and mask apply to the tile.
// With a consumer, K fits one block (gemm_bf16 sees to it): each tile is final as soon as the
// kernel has written it into the scratch tile, and is handed over at once.
void gemm_blocked(const GemmArgs<float>& g, const Bf16Kernels& k) {
  const index_t MR = k.MR, NR = k.NR;
  const index_t KC = std::min(k.KC, round_up(g.K, k.k_group));
  const index_t NC = std::min(k.NC, round_up(g.N, NR));
  const index_t MC = std::min(k.MC, round_up(g.M, MR));
  unsigned char* packed_a = packed_a_bytes().reserve(
      static_cast<std::size_t>(round_up(MC, MR) * KC * k.value_bytes));
  unsigned char* packed_b = packed_b_bytes().reserve(
      static_cast<std::size_t>(KC * round_up(NC, NR) * k.value_bytes));
  const TileSink<float>& out = g.sink;
  float* scratch = out.consumes() ? consumer_tile_buffer().reserve(
                                        static_cast<std::size_t>(MR * NR))
                                  : nullptr;
  const bool finishes = out.bias || out.relu || out.mask;
  for (index_t jc = 0; jc < g.N; jc += NC) {
    const index_t nc = std::min(NC, g.N - jc);
    for (index_t pc = 0; pc < g.K; pc += KC) {
      const index_t kc = std::min(KC, g.K - pc);
      const index_t panel_bytes = round_up(kc, k.k_group) * k.value_bytes;  // per row/column
      k.pack_b(packed_b, g.B + pc * g.rs_b + jc * g.cs_b, g.rs_b, g.cs_b, kc, nc, NR);
      for (index_t ic = 0; ic < g.M; ic += MC) {
        const index_t mc = std::min(MC, g.M - ic);
        k.pack_a(packed_a, g.A + ic * g.rs_a + pc * g.cs_a, g.rs_a, g.cs_a, mc, kc, MR);
        for (index_t jr = 0; jr < nc; jr += NR) {
          const index_t n = std::min(NR, nc - jr);
          const unsigned char* b_panel = packed_b + jr * panel_bytes;
          for (index_t ir = 0; ir < mc; ir += MR) {
            const index_t m = std::min(MR, mc - ir);
            const unsigned char* a_panel = packed_a + ir * panel_bytes;
            const index_t row = ic + ir, col = jc + jr;
            float* c = scratch ? scratch : out.C + row * out.ldc + col;
            const index_t ldc = scratch ? NR : out.ldc;
            const bool accumulate = !scratch && (out.accumulate || pc > 0);
            // After the last K block the kernel applies bias, ReLU and mask to the tile while
            // it holds it in registers.
            const bool last_block = finishes && pc + kc == g.K;
            TileEpilogue<float> ep;
            if (last_block) ep = out.epilogue(row, col);
            ep.accumulate = accumulate;
            if (k.kernel) {
              k.kernel(kc, a_panel, b_panel, c, ldc, m, n, accumulate, last_block ? &ep : nullptr);
            } else {
              k.fp32_kernel(kc, reinterpret_cast<const float*>(a_panel),
                            reinterpret_cast<const float*>(b_panel), c, ldc, m, n, ep);
            }
            if (scratch)
              out.consumer.consume(out.consumer.context, scratch, NR, out.row0 + row,
                                   out.col0 + col, m, n);
          }
        }
      }
    }
  }
}

// The float32 GEMM's split (split.h): bitwise identical results for any thread count.
void gemm_bf16_parallel(const GemmArgs<float>& g, const Bf16Kernels& k, index_t parts) {
  split_over_tiles(g, k.MR, k.NR, parts,
                   [&](const GemmArgs<float>& part) { gemm_blocked(part, k); });
}

}  // namespace

const char* bf16_path_name(Bf16Path path) {
  switch (path) {
    case Bf16Path::automatic: return "automatic";
    case Bf16Path::portable: return "portable";
    case Bf16Path::avx512bf16: return "avx512bf16";
  }
  return "unknown";
}

Bf16Path parse_bf16_path(const std::string& name) {
  for (Bf16Path path : {Bf16Path::automatic, Bf16Path::portable, Bf16Path::avx512bf16})
    if (name == bf16_path_name(path)) return path;
  throw std::invalid_argument("unknown bf16 path '" + name +
                              "': expected one of automatic, portable, avx512bf16");
}

bool avx512bf16_supported() {
#if defined(FASTMLP_X86) && (defined(__GNUC__) || defined(__clang__))
  // isa_supported(avx512) also checks that the OS saves the AVX-512 state (XCR0).
  if (!isa_supported(Isa::avx512)) return false;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 5) & 1u;
#else
  return false;
#endif
}

Bf16Path active_bf16_path() {
  const Bf16Path forced = g_forced_bf16_path.load(std::memory_order_relaxed);
  if (forced != Bf16Path::automatic) return forced;
  static const bool has_bf16 = avx512bf16_supported();
  return active_isa() == Isa::avx512 && has_bf16 ? Bf16Path::avx512bf16 : Bf16Path::portable;
}

Bf16Path testing_force_bf16_path(Bf16Path path) {
  if (path == Bf16Path::avx512bf16 && !avx512bf16_supported())
    throw std::invalid_argument("bf16 path avx512bf16: this CPU lacks AVX512_BF16");
  return g_forced_bf16_path.exchange(path);
}

Bf16Kernels active_bf16_kernels() { return kernels_of(active_bf16_path()); }

void round_to_bf16(float* out, const float* x, index_t n) {
  for (index_t i = 0; i < n; ++i) out[i] = bf16_round(x[i]);
}

void gemm_bf16(const GemmArgs<float>& g) {
  if (g.M <= 0 || g.N <= 0) return;
  const TileSink<float>& out = g.sink;
  if (out.consumes() && out.has_epilogue())
    throw std::invalid_argument("a GEMM with a tile consumer takes no epilogue");
  const Bf16Kernels& k = kernels_of(active_bf16_path());
  // A batch of one: a GEMV, on one thread (it streams W once; a split would share that
  // traffic between the threads' caches, not shorten it much).
  if (g.M == 1 && g.rs_b == 1 && g.K > 0) return gemv_bf16(g, k);
  // A consumer's tiles must be final when handed over: with K = 0 or K over one block, the
  // product goes to a per-thread buffer and is handed over whole (as gemm.cpp does).
  if (out.consumes() && (g.K <= 0 || g.K > k.KC)) {
    float* whole = whole_product_buffer().reserve(static_cast<std::size_t>(g.M * g.N));
    GemmArgs<float> plain = g;
    plain.sink = TileSink<float>{};
    plain.sink.C = whole;
    plain.sink.ldc = g.N;
    gemm_bf16(plain);
    out.consumer.consume(out.consumer.context, whole, g.N, out.row0, out.col0, g.M, g.N);
    return;
  }
  if (g.K <= 0) {  // an empty product: the epilogue alone
    for (index_t i = 0; i < g.M; ++i) {
      float* c = out.C + i * out.ldc;
      if (!out.accumulate) std::fill_n(c, g.N, 0.0f);
      TileEpilogue<float> ep = out.epilogue(i, 0);
      ep.accumulate = false;
      finish_tile(c, out.ldc, 1, g.N, ep);
    }
    return;
  }
  const double flops = 2.0 * static_cast<double>(g.M) * static_cast<double>(g.N) *
                       static_cast<double>(g.K);
  const ParallelMode mode = current_parallel_mode();
  const int n_threads = mode == ParallelMode::serial ? 1 : get_num_threads();
  // The float32 cost model at half the FLOPs: VDPBF16PS does twice the work of an FMA.
  if (n_threads > 1 && (mode == ParallelMode::parallel || gemm_split_pays<float>(flops / 2)))
    return gemm_bf16_parallel(g, k, n_threads);
  gemm_blocked(g, k);
}

}  // namespace fastmlp
