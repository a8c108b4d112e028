// A first layer that reads sparse input: rows of a CSR matrix X (N, I), e.g. bag-of-words
// counts with a vocabulary of I = 10⁴–10⁶ and a few dozen non-zeros a row. X is never made
// dense: the products below touch only its non-zeros and the columns of W they select.
//
// Legend: B batch rows, I in-features (columns of X), O out-features; nnz the non-zeros of
// the batch. Row r of the batch has the non-zeros values[k] at columns indices[k] for k in
// [indptr[i], indptr[i+1]), i = its data row. Duplicate columns in a row add up (as scipy).
//
// Two layouts of the first layer's weights:
//   W   (O, I), the model's own (torch.nn.Linear) layout. A non-zero of column c needs W[:, c],
//       O values I elements apart: one cache line each. Used by inference and loss_and_grad,
//       whose callers hold W in that layout and run few batches per call.
//   W_t (I, O) = Wᵀ, the training engine's working copy (trainer.h): a non-zero needs row c of
//       W_t, O contiguous values. Measured on the 2-vCPU Zen 5 VM for I = 65,536, O = 256 and
//       a batch of 64 rows × 100 non-zeros, gathering the columns of W took 10.8 ms and the
//       rows of W_t 0.8 ms: the engine pays for a transposed copy (synchronised per call) to
//       make each step an order of magnitude cheaper.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "gemm/gemm.h"
#include "threads.h"

namespace fastmlp {

// Whether to split sparse work of `flops` FLOPs over the pool (not in a serial scope). The
// cost model (gemm.h) is measured on a GEMM, whose operands come from packed panels in L1; a
// gathered operand comes from L2 or memory, so the same FLOPs take longer (the 64-row,
// 100-non-zeros-a-row batch above: 3.3 MFLOP in 0.8 ms, ~4 GFLOP/s). Counting each FLOP 16
// times still under-estimates the time, which errs towards one thread.
template <class T>
bool sparse_split_pays(double flops) {
  constexpr double kGatherCostFactor = 16.0;
  return current_parallel_mode() != ParallelMode::serial &&
         gemm_split_pays<T>(kGatherCostFactor * flops);
}
// Tasks for split work: several per thread, so that a descheduled worker's share is small.
inline int sparse_tasks(bool split) { return split ? 4 * get_num_threads() : 1; }

// Splits [0, n) into `tasks` near-equal ranges, in a fixed way (results never depend on the
// threads), and runs body(begin, end) for each, over the pool when tasks > 1.
template <class F>
void for_each_range(index_t n, int tasks, F&& body) {
  if (tasks <= 1 || n <= 1) {
    body(index_t{0}, n);
    return;
  }
  tasks = static_cast<int>(std::min<index_t>(tasks, n));
  parallel_for(tasks, [&](int i) { body(n * i / tasks, n * (i + 1) / tasks); });
}

template <class T>
struct SparseRows {
  const std::int64_t* indptr = nullptr;   // (N + 1), non-decreasing, indptr[0] = 0
  const std::int32_t* indices = nullptr;  // (nnz) columns, each in [0, I)
  const T* values = nullptr;              // (nnz)
  const std::int64_t* row_ids = nullptr;  // (B) the batch's data rows, or null: first + r
  index_t first = 0;
  index_t row(index_t r) const { return row_ids ? row_ids[r] : first + r; }
  index_t nnz(index_t B) const;  // non-zeros in the batch's B rows
};

// out (B, O) = act(X W_tᵀ + b) with W_t (I, O): each output row is b plus, per non-zero,
// value · W_t[column, :]. Rows are split over the pool when it pays.
template <class T>
void sparse_forward_transposed(T* out, const SparseRows<T>& x, index_t B, const T* W_t,
                               const T* b, index_t O, Activation act);

// out (B, O) = act(X Wᵀ + b) with W (O, I): out[r, j] = b_j + Σ value · W[j, column]. Runs
// over W a few rows at a time, for every batch row, so that the lines of W a block of rows
// touches are read once for the whole batch; blocks of W's rows are split over the pool.
template <class T>
void sparse_forward(T* out, const SparseRows<T>& x, index_t B, const T* W, index_t I,
                    const T* b, index_t O, Activation act);

// grad_W (O, I) = grad_aᵀ X (grad_a (B, O) contiguous), dense: zero except in the batch's
// columns. For loss_and_grad; the engine updates touched columns without it (TouchedColumns).
template <class T>
void sparse_weight_gradient(T* grad_W, const T* grad_a, const SparseRows<T>& x, index_t B,
                            index_t I, index_t O);

// The columns of X a batch touches and, grouped by column, its non-zeros: the weight gradient
// of touched column c, dL/dW_t[c, :] = Σ over the batch's non-zeros (r, c, v) of v · grad_a[r, :],
// is then computed one column at a time (gradient_row) right where the optimizer needs it,
// never stored for the whole batch.
template <class T>
class TouchedColumns {
 public:
  // For inputs of I columns: slot_of() says -1 for every column until collect().
  void reset(index_t I);
  // Groups the batch's non-zeros by column (a counting sort over the columns in the order
  // they are first seen). Allocates only when the batch has more non-zeros than any before.
  void collect(const SparseRows<T>& x, index_t B);
  // Forgets the batch's columns (slot_of() is -1 again), in time proportional to them.
  void clear();

  index_t count() const { return static_cast<index_t>(columns_.size()); }
  std::int32_t column(index_t t) const { return columns_[static_cast<std::size_t>(t)]; }
  // The touched column's place in column(t), or -1 for a column the batch does not touch.
  std::int32_t slot_of(index_t c) const { return slot_[static_cast<std::size_t>(c)]; }
  // out (O) = Σ over touched column t's non-zeros (r, v) of v · grad_a[r, :]
  void gradient_row(T* out, index_t t, const T* grad_a, index_t O) const;

 private:
  std::vector<std::int32_t> slot_;     // (I): column → t, or -1
  std::vector<std::int32_t> columns_;  // t → column, first-seen order
  std::vector<std::int64_t> start_;    // (count + 1): column t's entries
  // Per non-zero of the batch: entry_slot_ its column's t (in batch order); entry_row_ and
  // entry_value_ its batch row and value, grouped by column (column t's at start_[t] …).
  std::vector<std::int32_t> entry_row_, entry_slot_;
  std::vector<T> entry_value_;
  std::vector<std::int64_t> next_;  // collect()'s fill position per column
};

// out (cols, rows) = inᵀ for in (rows, cols), both contiguous: 64×64 tiles through an L1
// buffer, so that both sides stream whole cache lines; tiles are split over the pool when the
// calling thread's mode allows and the matrix is large.
template <class T>
void transpose_blocked(T* out, const T* in, index_t rows, index_t cols);

}  // namespace fastmlp
