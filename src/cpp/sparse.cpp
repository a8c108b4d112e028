// A first layer that reads sparse input (see sparse.h).
#include "sparse.h"

#include <algorithm>
#include <cstring>

#include "activations.h"
#include "gemm/context.h"

namespace fastmlp {

namespace {

template <class T>
void apply_activation(T* out, index_t n, Activation act) {
  if (act == Activation::relu) {
    relu_forward(out, out, n);
  } else {
    activation_forward_inplace(out, n, act);
  }
}

}  // namespace

template <class T>
index_t SparseRows<T>::nnz(index_t B) const {
  if (!row_ids) return static_cast<index_t>(indptr[first + B] - indptr[first]);
  index_t total = 0;
  for (index_t r = 0; r < B; ++r) total += indptr[row_ids[r] + 1] - indptr[row_ids[r]];
  return total;
}

template <class T>
void sparse_forward_transposed(T* out, const SparseRows<T>& x, index_t B, const T* W_t,
                               const T* b, index_t O, Activation act) {
  const double flops = 2.0 * static_cast<double>(x.nnz(B)) * static_cast<double>(O);
  const int tasks = sparse_tasks(sparse_split_pays<T>(flops));
  const AxpyKernel<T> axpy = active_gemm_context<T>().axpy;
  for_each_range(B, tasks, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      T* __restrict__ o = out + r * O;
      std::copy_n(b, O, o);
      const index_t i = x.row(r), k_end = x.indptr[i + 1];
      for (index_t k = x.indptr[i]; k < k_end; ++k) {
#if defined(__GNUC__)
        // The rows of W_t are scattered over a matrix far larger than the caches: ask for the
        // row four non-zeros ahead while this one is added.
        if (k + 4 < k_end) {
          const T* ahead = W_t + static_cast<index_t>(x.indices[k + 4]) * O;
          for (index_t j = 0; j < O; j += 64 / static_cast<index_t>(sizeof(T)))
            __builtin_prefetch(ahead + j);
        }
#endif
        axpy(O, x.values[k], W_t + static_cast<index_t>(x.indices[k]) * O, o);
      }
      apply_activation(o, O, act);
    }
  });
}

template <class T>
void sparse_forward(T* out, const SparseRows<T>& x, index_t B, const T* W, index_t I,
                    const T* b, index_t O, Activation act) {
  // Blocks of kRows rows of W: each batch row's non-zeros gather kRows values per column into
  // kRows sums, so that a line of W read for one row serves every row of the batch while the
  // block's lines are in cache.
  constexpr index_t kRows = 8;
  const index_t blocks = (O + kRows - 1) / kRows;
  const double flops = 2.0 * static_cast<double>(x.nnz(B)) * static_cast<double>(O);
  const int tasks = sparse_tasks(sparse_split_pays<T>(flops));
  for_each_range(blocks, tasks, [&](index_t begin, index_t end) {
    for (index_t blk = begin; blk < end; ++blk) {
      const index_t j0 = blk * kRows, rows = std::min(kRows, O - j0);
      for (index_t r = 0; r < B; ++r) {
        T sums[kRows];
        for (index_t j = 0; j < rows; ++j) sums[j] = b[j0 + j];
        const index_t i = x.row(r);
        for (index_t k = x.indptr[i]; k < x.indptr[i + 1]; ++k) {
          const T v = x.values[k];
          const T* w = W + j0 * I + x.indices[k];
          for (index_t j = 0; j < rows; ++j) sums[j] += v * w[j * I];
        }
        std::copy_n(sums, rows, out + r * O + j0);
      }
    }
  });
  // The activation over whole rows (the blocks above wrote columns).
  for (index_t r = 0; r < B; ++r) apply_activation(out + r * O, O, act);
}

template <class T>
void sparse_weight_gradient(T* grad_W, const T* grad_a, const SparseRows<T>& x, index_t B,
                            index_t I, index_t O) {
  const double flops = 2.0 * static_cast<double>(x.nnz(B)) * static_cast<double>(O);
  // Rows of grad_W are independent: each task owns a range of them (out-features j) and adds
  // every non-zero's contribution v · grad_a[r, j] to its column; nothing is shared.
  const int tasks = sparse_tasks(sparse_split_pays<T>(flops));
  for_each_range(O, tasks, [&](index_t begin, index_t end) {
    std::memset(grad_W + begin * I, 0, static_cast<std::size_t>((end - begin) * I) * sizeof(T));
    for (index_t r = 0; r < B; ++r) {
      const index_t i = x.row(r);
      for (index_t j = begin; j < end; ++j) {
        const T g = grad_a[r * O + j];
        T* row = grad_W + j * I;
        for (index_t k = x.indptr[i]; k < x.indptr[i + 1]; ++k)
          row[x.indices[k]] += g * x.values[k];
      }
    }
  });
}

// ---- TouchedColumns ---------------------------------------------------------------------

template <class T>
void TouchedColumns<T>::reset(index_t I) {
  slot_.assign(static_cast<std::size_t>(I), -1);
  columns_.clear();
}

template <class T>
void TouchedColumns<T>::collect(const SparseRows<T>& x, index_t B) {
  clear();
  const std::size_t nnz = static_cast<std::size_t>(x.nnz(B));
  entry_row_.resize(nnz);
  entry_slot_.resize(nnz);
  entry_value_.resize(nnz);
  // Pass 1: a slot per new column, each non-zero's slot, and the count per slot (in start_,
  // shifted by one for the prefix sum).
  start_.assign(1, 0);
  std::size_t e = 0;
  for (index_t r = 0; r < B; ++r) {
    const index_t i = x.row(r);
    for (index_t k = x.indptr[i]; k < x.indptr[i + 1]; ++k, ++e) {
      std::int32_t& s = slot_[static_cast<std::size_t>(x.indices[k])];
      if (s < 0) {
        s = static_cast<std::int32_t>(columns_.size());
        columns_.push_back(x.indices[k]);
        start_.push_back(0);
      }
      entry_slot_[e] = s;
      start_[static_cast<std::size_t>(s) + 1] += 1;
    }
  }
  for (std::size_t t = 1; t < start_.size(); ++t) start_[t] += start_[t - 1];
  // Pass 2: each non-zero to its column's group (stable: batch rows in order).
  next_.assign(start_.begin(), start_.end() - 1);
  e = 0;
  for (index_t r = 0; r < B; ++r) {
    const index_t i = x.row(r);
    for (index_t k = x.indptr[i]; k < x.indptr[i + 1]; ++k, ++e) {
      const std::size_t at =
          static_cast<std::size_t>(next_[static_cast<std::size_t>(entry_slot_[e])]++);
      entry_row_[at] = static_cast<std::int32_t>(r);
      entry_value_[at] = x.values[k];
    }
  }
}

template <class T>
void TouchedColumns<T>::clear() {
  for (const std::int32_t c : columns_) slot_[static_cast<std::size_t>(c)] = -1;
  columns_.clear();
}

template <class T>
void TouchedColumns<T>::gradient_row(T* out, index_t t, const T* grad_a, index_t O) const {
  const std::int64_t begin = start_[static_cast<std::size_t>(t)];
  const std::int64_t end = start_[static_cast<std::size_t>(t) + 1];
  const AxpyKernel<T> axpy = active_gemm_context<T>().axpy;
  std::fill_n(out, O, T(0));
  for (std::int64_t e = begin; e < end; ++e)
    axpy(O, entry_value_[static_cast<std::size_t>(e)],
         grad_a + static_cast<index_t>(entry_row_[static_cast<std::size_t>(e)]) * O, out);
}

// ---- transpose ---------------------------------------------------------------------------

template <class T>
void transpose_blocked(T* out, const T* in, index_t rows, index_t cols) {
  // Tiles of kTile × kTile: read along in's rows into an L1 buffer, transposed, then written
  // as runs of kTile contiguous elements of out. Writing out element by element instead sends
  // each store of a tile to a different line, and for 65,536-element rows (a power-of-two
  // stride) all those lines fall into the same cache set: measured on the Zen 5 VM, 64 MB
  // took 14-18 ms that way, 10-13 ms this way (a copy: 3.5 ms).
  constexpr index_t kTile = 64;
  const index_t row_tiles = (rows + kTile - 1) / kTile;
  // A copy is memory-bound: split when the matrix is large (the 2 FLOPs per element stand
  // for its two memory accesses).
  const double work = 2.0 * static_cast<double>(rows) * static_cast<double>(cols);
  const int tasks = sparse_tasks(sparse_split_pays<T>(work));
  for_each_range(row_tiles, tasks, [&](index_t begin, index_t end) {
    alignas(64) T tile[kTile * kTile];
    for (index_t rt = begin; rt < end; ++rt) {
      const index_t r0 = rt * kTile, n_rows = std::min(kTile, rows - r0);
      for (index_t c0 = 0; c0 < cols; c0 += kTile) {
        const index_t n_cols = std::min(kTile, cols - c0);
        for (index_t r = 0; r < n_rows; ++r) {
          const T* source = in + (r0 + r) * cols + c0;
          for (index_t c = 0; c < n_cols; ++c) tile[c * kTile + r] = source[c];
        }
        for (index_t c = 0; c < n_cols; ++c)
          std::copy_n(tile + c * kTile, n_rows, out + (c0 + c) * rows + r0);
      }
    }
  });
}

#define FASTMLP_INSTANTIATE(T)                                                                 \
  template struct SparseRows<T>;                                                               \
  template class TouchedColumns<T>;                                                            \
  template void sparse_forward_transposed<T>(T*, const SparseRows<T>&, index_t, const T*,      \
                                             const T*, index_t, Activation);                   \
  template void sparse_forward<T>(T*, const SparseRows<T>&, index_t, const T*, index_t,        \
                                  const T*, index_t, Activation);                              \
  template void sparse_weight_gradient<T>(T*, const T*, const SparseRows<T>&, index_t, index_t, \
                                          index_t);                                            \
  template void transpose_blocked<T>(T*, const T*, index_t, index_t);
FASTMLP_INSTANTIATE(float)
FASTMLP_INSTANTIATE(double)
#undef FASTMLP_INSTANTIATE

}  // namespace fastmlp
