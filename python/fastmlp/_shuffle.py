"""Block-wise shuffling: an epoch's sample order for data read from disk (a memory-mapped
array, a Parquet file), where a full permutation would read every batch's rows from random
places on disk.

Legend: N rows, blocks of contiguous rows (a memory-mapped array's fixed-size row ranges, a
Parquet file's row groups), W blocks per window.

An epoch's order is drawn from its seed in two levels:
1. the blocks are permuted (every permutation equally likely);
2. consecutive runs of W blocks in that order form windows, and the rows of each window are
   permuted (a full permutation of the window's rows).
So a window is read as W contiguous ranges (sequential reads, W of them in flight), and a row
travels at most one window from its block's place in the shuffled block order.

How it differs from a full permutation: two rows land in the same batch only if their blocks
fall in the same window, so rows of one block stay near each other in the epoch (within a
window's span of positions). Data whose rows are sorted (by label, by time) on disk keeps that
correlation inside blocks: make blocks small against the data, or the window large (W blocks
per window read together), or shuffle the file once when writing it. With W ≥ the number of
blocks the order is a full permutation of all rows (drawn in two steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Window", "block_shuffle_plan", "block_shuffled_order", "fixed_blocks"]


@dataclass(frozen=True)
class Window:
    """Rows read together: ``blocks`` (block ids, in reading order) and ``permutation`` of
    the concatenation of their rows (None: rows in that order)."""

    blocks: np.ndarray
    permutation: np.ndarray | None


def fixed_blocks(n_rows: int, block_rows: int) -> np.ndarray:
    """Lengths of the blocks of a row range cut every block_rows rows (the last may be
    shorter)."""
    lengths = np.full(n_rows // block_rows, block_rows, dtype=np.int64)
    if n_rows % block_rows:
        lengths = np.append(lengths, n_rows % block_rows)
    return lengths


def block_shuffle_plan(block_lengths, window_blocks: int, seed, shuffle: bool = True):
    """The windows of an epoch over blocks of ``block_lengths`` rows (see the module's
    documentation), drawn from ``np.random.default_rng(seed)``; without ``shuffle``, blocks
    and rows in file order."""
    lengths = np.asarray(block_lengths, dtype=np.int64)
    if window_blocks < 1:
        raise ValueError(f"window_blocks must be >= 1, got {window_blocks}")
    rng = np.random.default_rng(seed) if shuffle else None
    block_order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    windows = []
    for first in range(0, len(block_order), window_blocks):
        blocks = block_order[first:first + window_blocks]
        rows = int(lengths[blocks].sum())
        windows.append(Window(blocks, rng.permutation(rows) if shuffle else None))
    return windows


def block_shuffled_order(block_lengths, window_blocks: int, seed, shuffle: bool = True):
    """The epoch's sample order as one int64 array: row ids into the concatenation of all
    blocks (for a memory-mapped array, row ids of the array), as ``fit`` visits them."""
    lengths = np.asarray(block_lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parts = []
    for window in block_shuffle_plan(lengths, window_blocks, seed, shuffle):
        rows = np.concatenate([np.arange(starts[b], starts[b] + lengths[b]) for b in
                               window.blocks]) if len(window.blocks) else np.empty(0, np.int64)
        parts.append(rows if window.permutation is None else rows[window.permutation])
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
