// The portable GEMM framework: the choice of path, cache blocking and packing around the
// active ISA's kernels (gemm.h: the operand conventions; context.h: the kernel contract).
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "../threads.h"
#include "bf16.h"
#include "context.h"
#include "split.h"
#include "tile.h"

namespace fastmlp {

namespace {

// At most this many FLOPs: the direct triple loop (see gemm()).
constexpr double kTinyGemmMaxFlops = 4096;

// At most this many FLOPs: the in-place path, whatever the shape.
constexpr double kSmallGemmMaxFlops = 1.0e6;

// The in-place path re-reads op(B) once per MR-row block of A instead of packing it once. Measured
// (benchmarks/README.md, "GEMM crossover"; Xeon with AVX-512, 1 thread, float32): in-place wins
// for every product up to 1 MFLOP (packing a 256×784 B for one row costs 10× the product), and
// for batches up to 128 rows whenever op(B) fits in about 1 MiB of L2 (32×1024×256: 131 µs in
// place vs 192 µs packed; 128×256×256: 117 vs 127 µs); at 256 rows the two are within noise.
constexpr index_t kSmallPathMaxRows = 128;
constexpr double kSmallPathMaxBBytes = 1 << 20;

// The path of a product, from its shape alone (never the thread count, so that results are
// bitwise identical for any number of threads). Tiny products (the lecture's [2, 3, 3] net:
// 32×3×2) cost less than any packing, tiling or dispatch: a plain loop over C is fastest.
template <class T>
GemmPath choose_path(const GemmArgs<T>& g, double flops) {
  if (flops <= kTinyGemmMaxFlops) return GemmPath::reference;
  if (flops <= kSmallGemmMaxFlops) return GemmPath::in_place;
  // A batch of one against op(B) = Wᵀ, W's rows contiguous: the GEMV reads W once, which is
  // the least any path can; packing would read it and write a copy (the wide net's 1024×1024
  // layer: 2× the GEMV's time).
  if (g.M == 1 && g.rs_b == 1) return GemmPath::in_place;
  const double b_bytes = static_cast<double>(g.K) * static_cast<double>(g.N) * sizeof(T);
  if (g.M <= kSmallPathMaxRows && b_bytes <= kSmallPathMaxBBytes) return GemmPath::in_place;
  // Up to twice as many rows, the in-place path still wins while op(B) stays in L2 for every
  // row block: its panels as they are (pre-packed, or packed once when its columns are rows
  // of W) up to the L2 size, a row-major B read in place (a 32-column slice of every row per
  // panel, a strided stream) up to a quarter of it. Measured (2-vCPU Zen 5, 1 MiB L2, 1
  // thread, float32, GFLOP/s in place vs packed): 256×256×256 A.B 253 vs 235, A.Bt 244 vs
  // 236, At.B 251 vs 237; 256×64×64 A.B 225 vs 192; 256×256×784 A.Bt (800 KB) 237 vs 225;
  // but 256×784×256 A.B (800 KB in place) 227 vs 234 and 256×512×512 A.B 207 vs 234. AVX2
  // forced: 256×256×256 A.B 126 vs 114, 256×256×784 A.Bt 119 vs 109, 256×64×64 A.B 121 vs 96.
  const bool b_panels = g.packed_b != nullptr || g.cs_b != 1;
  const double l2 = static_cast<double>(cache_sizes().l2);
  if (g.M <= 2 * kSmallPathMaxRows && b_bytes <= (b_panels ? l2 : l2 / 4))
    return GemmPath::in_place;
  return GemmPath::packed;
}

// testing_force_gemm_path's override; GemmPath::automatic: choose_path decides.
std::atomic<GemmPath> g_forced_path{GemmPath::automatic};

// Packs the mc×kc block of op(A) starting at `a` into MR-row panels:
//   packed[(ir/MR)*MR*kc + p*MR + i] = op(A)[ir+i, p], zero-padded to a multiple of MR rows.
// An ISA's pack_a_rows kernel, if any, does the row-major case (cs = 1).
template <class T>
void pack_a(T* packed, const T* a, index_t rs, index_t cs, index_t mc, index_t kc, index_t MR,
            PackRowsKernel<T> rows_kernel = nullptr, PackRowsKernel<T> columns_kernel = nullptr) {
  if (cs == 1 && rows_kernel && MR <= 16) return rows_kernel(packed, a, rs, mc, kc, MR);
  if (rs == 1 && columns_kernel && MR <= 16) return columns_kernel(packed, a, cs, mc, kc, MR);
  for (index_t ir = 0; ir < mc; ir += MR) {
    const index_t rows = std::min(MR, mc - ir);
    T* panel = packed + ir * kc;
    const T* a_rows = a + ir * rs;
    if (cs == 1) {
      // Row-major op(A): each row is contiguous in p.
      for (index_t i = 0; i < rows; ++i) {
        const T* src = a_rows + i * rs;
        for (index_t p = 0; p < kc; ++p) panel[p * MR + i] = src[p];
      }
    } else {
      for (index_t p = 0; p < kc; ++p) {
        const T* src = a_rows + p * cs;
        for (index_t i = 0; i < rows; ++i) panel[p * MR + i] = src[i * rs];
      }
    }
    if (rows < MR)
      for (index_t p = 0; p < kc; ++p)
        for (index_t i = rows; i < MR; ++i) panel[p * MR + i] = T(0);
  }
}

// Packs the kc×nc block of op(B) starting at `b` into NR-column panels:
//   packed[(jr/NR)*NR*kc + p*NR + j] = op(B)[p, jr+j], zero-padded to a multiple of NR columns.
template <class T>
void pack_b(T* packed, const T* b, index_t rs, index_t cs, index_t kc, index_t nc, index_t NR,
            PackTransposedKernel<T> transposed = nullptr,
            PackTransposedKernel<T> rows_kernel = nullptr) {
  if (rs == 1 && transposed) return transposed(packed, b, cs, kc, nc);
  if (cs == 1 && rows_kernel) return rows_kernel(packed, b, rs, kc, nc);
  for (index_t jr = 0; jr < nc; jr += NR) {
    const index_t cols = std::min(NR, nc - jr);
    T* panel = packed + jr * kc;
    const T* b_cols = b + jr * cs;
    if (rs == 1) {
      // op(B) = Wᵀ for a row-major W: column j of op(B) is row j of W, contiguous in p.
      for (index_t j = 0; j < cols; ++j) {
        const T* src = b_cols + j * cs;
        for (index_t p = 0; p < kc; ++p) panel[p * NR + j] = src[p];
      }
    } else {
      for (index_t p = 0; p < kc; ++p) {
        const T* src = b_cols + p * rs;
        for (index_t j = 0; j < cols; ++j) panel[p * NR + j] = src[j * cs];
      }
    }
    if (cols < NR)
      for (index_t p = 0; p < kc; ++p)
        for (index_t j = cols; j < NR; ++j) panel[p * NR + j] = T(0);
  }
}

// K = 0: the product is empty, only the epilogue remains (into C: gemm() hands a consumer
// a zero product through a buffer).
template <class T>
void epilogue_only(const GemmArgs<T>& g) {
  const TileSink<T>& out = g.sink;
  const TileEpilogue<T> ep = out.epilogue(0, 0);
  for (index_t i = 0; i < g.M; ++i) {
    T* c = out.C + i * out.ldc;
    for (index_t j = 0; j < g.N; ++j)
      c[j] = apply_epilogue(T(0), c[j], ep, j, out.mask ? out.mask[i * out.ld_mask + j] : T(0));
  }
}

// Each thread's packing buffers are sized for a full cache block the first time they are used,
// whatever the first product's size: a thread then never allocates again, whichever tasks of
// a parallel region it happens to pick up (the in-place path's larger packs aside).
template <class T>
std::size_t packed_a_size(const GemmContext<T>& cntx, index_t needed) {
  return static_cast<std::size_t>(std::max(needed, cntx.MC * cntx.KC));
}
template <class T>
std::size_t packed_b_size(const GemmContext<T>& cntx, index_t needed) {
  return static_cast<std::size_t>(std::max(needed, cntx.KC * cntx.NC));
}

template <class T>
AlignedBuffer<T>& packed_a_buffer() {
  static thread_local AlignedBuffer<T> buffer;
  return buffer;
}
template <class T>
AlignedBuffer<T>& packed_b_buffer() {
  static thread_local AlignedBuffer<T> buffer;
  return buffer;
}

// Where a product with a consumer writes each finished tile before handing it over (MR×NR,
// a row of N for the GEMV, or the whole product); per thread, like the packing buffers.
template <class T>
AlignedBuffer<T>& consumer_tile_buffer() {
  static thread_local AlignedBuffer<T> buffer;
  return buffer;
}

// Splits `total` into the fewest blocks of at most `limit` and returns the size of each (the
// last may be smaller), a multiple of `multiple`: blocks as even as the multiple allows. The
// cache blocks are upper bounds; a plain min(limit, rest) would leave a sliver after the
// full blocks (K = 784 with KC = 768: a K block of 16 that re-reads and rewrites all of C for
// 2 % of the FLOPs; M = 256 with MC = 240: a 16-row A block that streams the whole packed B
// from L3 for two micro-panels of A).
index_t even_block(index_t total, index_t limit, index_t multiple) {
  const index_t units = (total + multiple - 1) / multiple;
  const index_t units_per_limit = std::max<index_t>(1, limit / multiple);
  const index_t blocks = (units + units_per_limit - 1) / units_per_limit;
  return (units + blocks - 1) / blocks * multiple;
}

// The kernel of one packed tile of m ≤ MR rows and n ≤ NR columns: the full micro-kernel, or,
// on an edge, an in-place kernel reading the packed panels (A: a_rs 1, a_cs MR; B: row stride
// NR) that computes only the rows or columns needed: a last panel of 4 valid rows (M = 256 =
// 21·12 + 4) would otherwise cost a full 12-row tile, a 10-column panel a full 32-column one.
template <class T>
StridedKernel<T> packed_edge_kernel(const GemmContext<T>& cntx, index_t m, index_t n) {
  if (m <= 4 && cntx.rows4_kernel) return cntx.rows4_kernel;
  if (m <= 8 && cntx.rows8_kernel && cntx.MR > 8) return cntx.rows8_kernel;
  if (2 * n <= cntx.NR && cntx.narrow_kernel) return cntx.narrow_kernel;
  return nullptr;
}

// The packed path: one thread's blocked loop nest over the whole of g (M, N, K > 0).
template <class T>
void gemm_packed(const GemmArgs<T>& g, const GemmContext<T>& cntx) {
  const index_t MR = cntx.MR, NR = cntx.NR;
  const index_t KC = even_block(g.K, cntx.KC, 1);
  const index_t NC = even_block(g.N, cntx.NC, NR);
  const index_t MC = even_block(g.M, cntx.MC, MR);
  T* packed_b = packed_b_buffer<T>().reserve(packed_b_size(cntx, KC * NC));
  T* packed_a = packed_a_buffer<T>().reserve(packed_a_size(cntx, KC * MC));
  // With a consumer, K fits one block (gemm() sees to it): every tile is final as soon as the
  // micro-kernel has written it.
  const TileSink<T>& out = g.sink;
  T* scratch = out.consumes()
                   ? consumer_tile_buffer<T>().reserve(static_cast<std::size_t>(MR * NR))
                   : nullptr;

  for (index_t jc = 0; jc < g.N; jc += NC) {
    const index_t nc = std::min(NC, g.N - jc);
    for (index_t pc = 0; pc < g.K; pc += KC) {
      const index_t kc = std::min(KC, g.K - pc);
      // The first K block applies beta and the bias, the last one the activation.
      const bool first = pc == 0, last = pc + kc == g.K;
      // A pre-packed op(B): the jr-th panel of this block is the slice [pc, pc+kc) of the
      // whole-K panel (jc+jr)/NR, panels NR·K apart instead of NR·kc.
      const T* b_block = g.packed_b ? g.packed_b + jc * g.K + pc * NR : packed_b;
      const index_t b_panel_step = g.packed_b ? g.K : kc;
      if (!g.packed_b)
        pack_b(packed_b, g.B + pc * g.rs_b + jc * g.cs_b, g.rs_b, g.cs_b, kc, nc, NR,
               cntx.pack_b_transposed, cntx.pack_b_rows);
      for (index_t ic = 0; ic < g.M; ic += MC) {
        const index_t mc = std::min(MC, g.M - ic);
        pack_a(packed_a, g.A + ic * g.rs_a + pc * g.cs_a, g.rs_a, g.cs_a, mc, kc, MR,
               cntx.pack_a_rows, cntx.pack_a_columns);
        for (index_t jr = 0; jr < nc; jr += NR) {
          const index_t n = std::min(NR, nc - jr);
          const T* b_panel = b_block + jr * b_panel_step;
          for (index_t ir = 0; ir < mc; ir += MR) {
            const index_t m = std::min(MR, mc - ir);
            const T* a_panel = packed_a + ir * kc;
            const StridedKernel<T> edge = packed_edge_kernel(cntx, m, n);
            out.put(ic + ir, jc + jr, m, n, first, last, scratch, NR,
                    [&](T* c, index_t ldc, const TileEpilogue<T>& ep) {
                      if (edge) edge(kc, a_panel, 1, MR, b_panel, NR, c, ldc, m, n, ep);
                      else cntx.micro_kernel(kc, a_panel, b_panel, c, ldc, m, n, ep);
                    });
          }
        }
      }
    }
  }
}

// The in-place path: operands read in place, no packing of A (edge rows aside) and none of B
// when its rows are contiguous. Every tile runs over the whole of K at once.
template <class T>
void gemm_in_place(const GemmArgs<T>& g, const GemmContext<T>& cntx) {
  const TileSink<T>& out = g.sink;
  // A batch of one against op(B) = Wᵀ: n dot products over contiguous rows of W.
  if (g.M == 1 && g.rs_b == 1) {
    const T* x = g.A;
    if (g.cs_a != 1) {
      T* copy = packed_a_buffer<T>().reserve(packed_a_size(cntx, g.K));
      for (index_t p = 0; p < g.K; ++p) copy[p] = g.A[p * g.cs_a];
      x = copy;
    }
    T* scratch = out.consumes()
                     ? consumer_tile_buffer<T>().reserve(static_cast<std::size_t>(g.N))
                     : nullptr;
    out.put(0, 0, 1, g.N, true, true, scratch, g.N,
            [&](T* c, index_t, const TileEpilogue<T>& ep) {
              cntx.gemv(g.K, g.N, x, g.B, g.cs_b, c, ep);
            });
    return;
  }
  const bool one_row = g.M == 1;
  const index_t NR = one_row ? cntx.row_NR : cntx.NR;
  const StridedKernel<T> tile_kernel = one_row ? cntx.row_kernel : cntx.small_kernel;
  // op(B) in place when its rows are contiguous; otherwise packed once into NR-column panels
  // (row stride NR, panels K·NR apart), which is the same access pattern.
  const T* b = g.B;
  index_t b_rs = g.rs_b, panel_step = NR;
  if (g.packed_b && !one_row) {
    b = g.packed_b;
    b_rs = NR;
    panel_step = NR * g.K;
  } else if (g.cs_b != 1) {
    const index_t padded_n = (g.N + NR - 1) / NR * NR;
    T* packed = packed_b_buffer<T>().reserve(packed_b_size(cntx, g.K * padded_n));
    pack_b(packed, g.B, g.rs_b, g.cs_b, g.K, g.N, NR,
           one_row ? nullptr : cntx.pack_b_transposed);
    b = packed;
    b_rs = NR;
    panel_step = NR * g.K;
  }
  const index_t MR = one_row ? 1 : cntx.MR;
  T* scratch = out.consumes()
                   ? consumer_tile_buffer<T>().reserve(static_cast<std::size_t>(MR * NR))
                   : nullptr;
  for (index_t ir = 0; ir < g.M; ir += MR) {
    const index_t m = std::min(MR, g.M - ir);
    const T* a = g.A + ir * g.rs_a;
    index_t a_rs = g.rs_a, a_cs = g.cs_a;
    // A last, partial row block takes the shortest tile that covers it, if the ISA has one.
    StridedKernel<T> rows_kernel = nullptr;
    index_t rows_read = MR;
    if (!one_row && m <= 4 && cntx.rows4_kernel) {
      rows_kernel = cntx.rows4_kernel;
      rows_read = 4;
    } else if (!one_row && m <= 8 && cntx.rows8_kernel) {
      rows_kernel = cntx.rows8_kernel;
      rows_read = 8;
    }
    if (m < rows_read) {
      // The kernel reads rows_read rows: copy the partial row block into a zero-padded panel.
      T* panel = packed_a_buffer<T>().reserve(packed_a_size(cntx, rows_read * g.K));
      pack_a(panel, a, g.rs_a, g.cs_a, m, g.K, rows_read, cntx.pack_a_rows);
      a = panel;
      a_rs = 1;
      a_cs = rows_read;
    }
    for (index_t jr = 0; jr < g.N; jr += NR) {
      const index_t n = std::min(NR, g.N - jr);
      // A last panel at most half as wide (10 classes: 10 of 32 columns) runs the half-width
      // tile: half the FMAs, no masked-off lanes computed.
      const StridedKernel<T> kernel = rows_kernel                        ? rows_kernel
                                      : (!one_row && 2 * n <= NR)         ? cntx.narrow_kernel
                                                                          : tile_kernel;
      const T* b_panel = b + (jr / NR) * panel_step;
      out.put(ir, jr, m, n, true, true, scratch, NR,
              [&](T* c, index_t ldc, const TileEpilogue<T>& ep) {
                kernel(g.K, a, a_rs, a_cs, b_panel, b_rs, c, ldc, m, n, ep);
              });
    }
  }
}

// The split (split.h) with the path chosen from the whole shape beforehand.
template <class T>
void gemm_parallel(const GemmArgs<T>& g, const GemmContext<T>& cntx, index_t parts,
                   void (*serial)(const GemmArgs<T>&, const GemmContext<T>&)) {
  split_over_tiles(g, cntx.MR, cntx.NR, parts,
                   [&](const GemmArgs<T>& part) { serial(part, cntx); });
}

std::atomic<bool> g_force_split{false};

thread_local GemmPrecision t_precision = GemmPrecision::float32;

}  // namespace

PrecisionScope::PrecisionScope(GemmPrecision precision) : saved_(t_precision) {
  t_precision = precision;
}
PrecisionScope::~PrecisionScope() { t_precision = saved_; }
GemmPrecision current_gemm_precision() { return t_precision; }

GemmPrecision testing_set_gemm_precision(GemmPrecision precision) {
  const GemmPrecision previous = t_precision;
  t_precision = precision;
  return previous;
}

template <class T>
GemmCostModel gemm_cost_model() {
  // Measured once per ISA and thread count (a few distinct counts per process at most).
  static std::mutex mutex;
  static std::map<std::pair<int, int>, GemmCostModel> measured;
  const int isa = static_cast<int>(active_isa());
  const int threads = get_num_threads();
  std::lock_guard<std::mutex> lock(mutex);
  if (auto found = measured.find({isa, threads}); found != measured.end()) return found->second;
  GemmCostModel& model = measured[{isa, threads}];

  constexpr index_t M = 64, N = 256, K = 256;
  std::vector<T> a(M * K, T(0.5)), b(K * N, T(0.25)), c(M * N);
  GemmArgs<T> g;
  g.M = M, g.N = N, g.K = K;
  g.A = a.data(), g.rs_a = K, g.cs_a = 1;
  g.B = b.data(), g.rs_b = N, g.cs_b = 1;
  g.sink.C = c.data(), g.sink.ldc = N;
  // The float32 model, whatever the caller's precision (gemm_bf16 derives its own from it).
  const PrecisionScope float32_products(GemmPrecision::float32);
  auto seconds = [&](ParallelMode mode) {
    const ParallelScope scope(mode);
    const auto started = std::chrono::steady_clock::now();
    gemm(g);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  // Warm-up of both (packing buffers, workers awake), then the best of each, alternating,
  // until eight splits have shown a gain (or 10 ms have passed: a busy machine, where the
  // model then sees little gain and splits only very large products). A worker just woken
  // can need tens of microseconds to move to a free core (threads.cpp), so early splits
  // may run as slowly as one thread.
  seconds(ParallelMode::serial);
  if (threads > 1) seconds(ParallelMode::parallel);
  // Each pair's overhead is split − serial / threads; the model takes the median of the pairs
  // that gained (robust to a pair hit by an interrupt), or the best split if none did.
  double serial = 1e30, split = 1e30;
  std::vector<double> overheads;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(10);
  for (int trial = 0;; ++trial) {
    const double this_serial = seconds(ParallelMode::serial);
    serial = std::min(serial, this_serial);
    if (threads == 1) {
      if (trial >= 4) break;
      continue;
    }
    const double this_split = seconds(ParallelMode::parallel);
    split = std::min(split, this_split);
    if (this_split < 0.75 * this_serial) overheads.push_back(this_split - this_serial / threads);
    if (overheads.size() >= 15 || std::chrono::steady_clock::now() > give_up) break;
  }
  serial = std::max(serial, 1e-9);
  model.flops_per_second = 2.0 * M * N * K / serial;
  model.threads = threads;
  double overhead = split - serial / threads;
  if (!overheads.empty()) {
    std::nth_element(overheads.begin(), overheads.begin() + overheads.size() / 2, overheads.end());
    overhead = overheads[overheads.size() / 2];
  }
  // At least 1 % of the product: a split can measure faster than a perfect one (two cores'
  // caches), which would make every product look worth splitting.
  model.region_seconds = threads > 1 ? std::max(overhead, 0.01 * serial) : 0.0;
  return model;
}

template <class T>
bool gemm_split_pays(double flops) {
  if (inside_parallel_task() || get_num_threads() <= 1) return false;
  if (g_force_split.load(std::memory_order_relaxed)) return true;
  const GemmCostModel model = gemm_cost_model<T>();
  if (model.threads <= 1) return false;
  const double saved = flops / model.flops_per_second * (1.0 - 1.0 / model.threads);
  return saved >= kParallelRiskFactor * model.region_seconds;
}

void testing_force_split(bool force) { g_force_split.store(force); }

GemmPath testing_force_gemm_path(GemmPath path) { return g_forced_path.exchange(path); }

template <class T>
void gemm(const GemmArgs<T>& g) {
  if constexpr (std::is_same_v<T, float>)
    if (t_precision == GemmPrecision::bfloat16) return gemm_bf16(g);
  if (g.M <= 0 || g.N <= 0) return;
  const GemmContext<T>& cntx = active_gemm_context<T>();
  if (g.packed_b && g.packed_b_nr != cntx.NR) {  // panels of another ISA's kernels
    GemmArgs<T> unpacked = g;
    unpacked.packed_b = nullptr;
    return gemm(unpacked);
  }
  const double flops = 2.0 * static_cast<double>(g.M) * static_cast<double>(g.N) *
                       static_cast<double>(g.K);
  const GemmPath forced = g_forced_path.load(std::memory_order_relaxed);
  const GemmPath path = forced == GemmPath::automatic ? choose_path(g, flops) : forced;
  if (g.sink.consumes()) {
    if (g.sink.has_epilogue())
      throw std::invalid_argument("a GEMM with a tile consumer takes no epilogue");
    // Tiles are handed over as the kernels finish them, when every tile is final at once:
    // the in-place path (the whole of K per tile) or the packed path with K in one block.
    // Otherwise (the reference loop, K = 0, K > KC) the product goes to a per-thread buffer
    // and is handed over whole.
    if (g.K <= 0 || path == GemmPath::reference || (path == GemmPath::packed && g.K > cntx.KC)) {
      T* whole = consumer_tile_buffer<T>().reserve(static_cast<std::size_t>(g.M * g.N));
      GemmArgs<T> plain = g;
      plain.sink = TileSink<T>{};
      plain.sink.C = whole;
      plain.sink.ldc = g.N;
      gemm(plain);
      g.sink.consumer.consume(g.sink.consumer.context, whole, g.N, g.sink.row0, g.sink.col0,
                              g.M, g.N);
      return;
    }
  }
  if (g.K <= 0) return epilogue_only(g);
  // The reference loop is never worth a second thread.
  if (path == GemmPath::reference) return gemm_reference(g);
  auto* serial = path == GemmPath::in_place ? &gemm_in_place<T> : &gemm_packed<T>;
  const ParallelMode mode = current_parallel_mode();
  const int n_threads = mode == ParallelMode::serial ? 1 : get_num_threads();
  if (n_threads > 1 && (mode == ParallelMode::parallel || gemm_split_pays<T>(flops)))
    // One task per thread: finer splits let a late worker's share go to the others, but each
    // task re-reads or re-packs its operands. Measured (mnist-shaped net, 2 threads, 2-vCPU
    // Zen 5): 2t/1t 1.40 with one task per thread, 1.25 with two, 1.12 with four.
    return gemm_parallel(g, cntx, n_threads, serial);
  serial(g, cntx);
}

template <class T>
void gemm_reference(const GemmArgs<T>& g) {
  const TileSink<T>& out = g.sink;
  const TileEpilogue<T> ep = out.epilogue(0, 0);
  for (index_t i = 0; i < g.M; ++i)
    for (index_t j = 0; j < g.N; ++j) {
      T sum = 0;
      for (index_t p = 0; p < g.K; ++p)
        sum += g.A[i * g.rs_a + p * g.cs_a] * g.B[p * g.rs_b + j * g.cs_b];
      T* c = out.C + i * out.ldc + j;
      *c = apply_epilogue(sum, *c, ep, j, out.mask ? out.mask[i * out.ld_mask + j] : T(0));
    }
}

template <class T>
index_t prepack_nr(Isa isa) {
  return isa_context(isa).get<T>().NR;
}

template <class T>
index_t prepacked_b_elements(index_t N, index_t K, Isa isa) {
  const index_t NR = prepack_nr<T>(isa);
  return (N + NR - 1) / NR * NR * K;
}

template <class T>
void prepack_b(T* packed, const T* W, index_t ldw, index_t N, index_t K, Isa isa) {
  const GemmContext<T>& cntx = isa_context(isa).get<T>();
  // op(B) = Wᵀ: element (p, j) = W[j*ldw + p], so rs = 1, cs = ldw.
  pack_b(packed, W, index_t{1}, ldw, K, N, cntx.NR, cntx.pack_b_transposed);
}

template index_t prepack_nr<float>(Isa);
template index_t prepack_nr<double>(Isa);
template index_t prepacked_b_elements<float>(index_t, index_t, Isa);
template index_t prepacked_b_elements<double>(index_t, index_t, Isa);
template void prepack_b<float>(float*, const float*, index_t, index_t, index_t, Isa);
template void prepack_b<double>(double*, const double*, index_t, index_t, index_t, Isa);
template void gemm<float>(const GemmArgs<float>&);
template void gemm<double>(const GemmArgs<double>&);
template void gemm_reference<float>(const GemmArgs<float>&);
template void gemm_reference<double>(const GemmArgs<double>&);
template GemmCostModel gemm_cost_model<float>();
template GemmCostModel gemm_cost_model<double>();
template bool gemm_split_pays<float>(double);
template bool gemm_split_pays<double>(double);

}  // namespace fastmlp
