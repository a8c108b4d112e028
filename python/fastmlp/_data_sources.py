"""Training data that does not sit in memory: a memory-mapped array or a Parquet file, read
by ``MLP.fit`` window by window in a block-shuffled order (_shuffle.py) while the engine
trains on the previous window.

Legend: N rows (of this process's shard), F features, B batch rows; a window is W blocks
of contiguous rows, read together.

Why: a full permutation makes every batch gather B rows from random places in the file. From
a file in the page cache that is cheap, from disk it is B random reads per batch (an 819 MB
file did not finish one such epoch in 120 s when only a third of it fit in memory). Here the
disk sees W contiguous reads per window, announced to the kernel one window ahead
(``POSIX_FADV_WILLNEED``), and a background thread reads the next window (converted to the
model's dtype) while the engine trains on the current one, visiting its rows in the window's
permutation (Trainer.begin_epoch_with_order).

Memory: three windows (the one being trained on, one ready, one being read), not the file.
The page cache is left to the kernel: it is reclaimable, a memory limit evicts it first, and
files that fit in memory stay cached between epochs.
Nothing is ever written to the file (it is mapped or opened read-only).
"""

from __future__ import annotations

import itertools
import mmap
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from fastmlp._shuffle import block_shuffle_plan, fixed_blocks
from fastmlp._sparse import is_sparse
from fastmlp._validation import (check_finite, feature_layout, rank_and_size, sample_weights,
                                 to_dtype)

__all__ = ["ParquetSource", "is_memory_mapped", "training_data", "epoch_parts"]

# A memory-mapped array's blocks: ~512 KiB of rows each (a read large enough for a disk's
# throughput, small enough that a window mixes many places of the file), 32 per window
# (16 MiB read together).
BLOCK_BYTES = 512 * 1024
WINDOW_BLOCKS = 32
# Rows per chunk of the finite check of a memory-mapped X (converted chunk by chunk).
_CHECK_BYTES = 8 * 1024 * 1024


@dataclass
class EpochPart:
    """Rows the engine trains on in one go: X (n, F), y and weights (None) of the same rows,
    visited in `order` (row ids, Trainer.begin_epoch_with_order) or, without one, in the
    engine's own order (shuffle, seed: Trainer.begin_epoch)."""

    X: np.ndarray
    y: np.ndarray
    weights: np.ndarray | None
    shuffle: bool
    seed: int
    order: np.ndarray | None = None


def is_memory_mapped(X) -> bool:
    """Whether X's memory is a file mapping (np.memmap, np.load(mmap_mode=...), or an array
    viewing an mmap.mmap)."""
    return _mapping_of(X) is not None


def _mapping_of(X):
    a = X
    while a is not None:
        if isinstance(a, mmap.mmap):
            return a
        # np.frombuffer(an mmap) holds a memoryview of it.
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return None


def file_range_of(X):
    """(path, byte offset of row 0) where X's rows are one contiguous byte range of a file
    that np.memmap / np.load(mmap_mode="r" or "r+") maps shared; else None (an mmap.mmap of
    unknown file, a copy-on-write mapping whose changes the file does not hold, strided X)."""
    a = X
    while a is not None and not isinstance(a, np.memmap):
        a = getattr(a, "base", None)
    mapping = getattr(a, "_mmap", None)
    if (a is None or not X.flags.c_contiguous or not isinstance(a.filename, str)
            or a.mode == "c" or not isinstance(mapping, mmap.mmap) or not hasattr(os, "preadv")):
        return None
    try:
        base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError, BufferError):
        return None
    # np.memmap maps the file from `offset` rounded down to the allocation granularity.
    mapped_from = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY
    return a.filename, mapped_from + X.ctypes.data - base


class ArrayBlocks:
    """X (memory-mapped, or in memory with ``shuffle="block"``) read in blocks of rows; y and
    the weights (validated, in memory).

    A file mapped by np.memmap / np.load(mmap_mode=...) is read with pread(2) into the
    window's buffer, not through the mapping: measured in a memory cgroup of a third of an
    800 MB file, random 512 KiB blocks came at 84 MB/s through the mapping (379 MB/s with
    MADV_WILLNEED ahead) and at 835 MB/s with pread and POSIX_FADV_WILLNEED ahead (1 GB/s
    sequential): pages mapped into the process are slow to reclaim, read pages are not."""

    def __init__(self, X, name: str, dtype: np.dtype, n_features: int | None,
                 block_bytes: int | None = None):
        a = feature_layout(X, name, n_features)
        self.X, self.dtype, self.shape = a, np.dtype(dtype), a.shape
        self._row_bytes = a.shape[1] * a.itemsize
        self.block_rows = max(1, (block_bytes or BLOCK_BYTES) // max(1, self._row_bytes))
        self.block_lengths = fixed_blocks(a.shape[0], self.block_rows)
        self.file_range = file_range_of(a)
        self._fd = None
        # One sequential pass before any training: a NaN or an out-of-range value stops fit
        # before the first step, not in the middle of an epoch.
        chunk = max(1, _CHECK_BYTES // max(1, self._row_bytes))
        raw = np.empty((min(chunk, a.shape[0]), a.shape[1]), dtype=a.dtype)
        with self:
            for first in range(0, a.shape[0], chunk):
                rows = raw[:min(chunk, a.shape[0] - first)]
                self._read_raw(first, rows)
                to_dtype(rows, dtype, name, first_row=first)

    def labelled(self, y, weights):
        self.y, self.weights = y, weights
        return self

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    def __enter__(self):
        """Opens the file (read-only) for the reads that follow."""
        if self.file_range is not None:
            self._fd = os.open(self.file_range[0], os.O_RDONLY)
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return False

    def prefetch(self, blocks) -> None:
        """Asks the kernel to start reading these blocks (best effort, returns at once)."""
        if self._fd is None or not hasattr(os, "posix_fadvise"):
            return
        for b in blocks:
            start = self.file_range[1] + int(b) * self.block_rows * self._row_bytes
            try:
                os.posix_fadvise(self._fd, start, int(self.block_lengths[b]) * self._row_bytes,
                                 os.POSIX_FADV_WILLNEED)
            except OSError:
                return

    def _read_raw(self, first: int, out: np.ndarray) -> None:
        """Rows first … first + len(out) of X, as stored, into out (C-contiguous)."""
        if self._fd is None:
            np.copyto(out, self.X[first:first + len(out)])
            return
        view = memoryview(out).cast("B")
        position = self.file_range[1] + first * self._row_bytes
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], position + done)
            if n == 0:
                raise OSError(f"{self.file_range[0]!r} ended early: was it truncated while "
                              "training?")
            done += n

    def read(self, block: int, out: np.ndarray):
        """Block's rows into out (rows, F) of the model's dtype; returns its (y, weights)."""
        first = int(block) * self.block_rows
        last = first + int(self.block_lengths[block])
        if self.X.dtype == self.dtype:
            self._read_raw(first, out)
        else:
            raw = np.empty(out.shape, dtype=self.X.dtype)
            self._read_raw(first, raw)
            np.copyto(out, raw, casting="unsafe")
        return self.y[first:last], None if self.weights is None else self.weights[first:last]


def _check_numeric_column(path: str, name: str, arrow_type) -> None:
    """TypeError unless the Parquet column holds plain numbers (int, float, bool): strings,
    timestamps, decimals, dictionaries or lists would be parsed, cast to nanoseconds or
    refused by NumPy mid-epoch, never what the model should train on."""
    import pyarrow as pa
    if not (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
            or pa.types.is_boolean(arrow_type)):
        raise TypeError(f"{path!r}: column {name!r} holds {arrow_type}; features and target "
                        "must be numeric columns (int, float or bool)")


class ParquetSource:
    """Training data streamed from a Parquet file by row groups (needs pyarrow: the
    ``parquet`` extra). Pass it to ``MLP.fit`` in place of X, with ``y=None``.

    ``features``: the feature columns, in the model's input order (None: every column but
    ``target``); ``target``: the label column (classifiers: integer class ids; regression:
    numbers). Each epoch reads this process's row groups in a block-shuffled order (see
    ``fit``'s ``shuffle``): the row groups are permuted, then rows are permuted within each
    window of ``window_row_groups`` consecutive row groups; memory holds three windows.
    ``rank``/``size`` (or an mpi4py ``comm``) select a shard: this process reads row groups
    rank, rank + size, rank + 2·size, … of the file.
    """

    def __init__(self, path, features=None, target: str = "y", *, window_row_groups: int = 4,
                 rank: int | None = None, size: int | None = None, comm=None):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("ParquetSource needs pyarrow: pip install "
                              "'fastmlp[parquet]'") from None
        rank, size = rank_and_size(comm, rank, size)
        rank = 0 if rank is None else rank
        size = 1 if size is None else size
        if not (isinstance(size, (int, np.integer)) and size >= 1
                and isinstance(rank, (int, np.integer)) and 0 <= rank < size):
            raise ValueError(f"rank must be in [0, size) and size >= 1, got rank={rank!r}, "
                             f"size={size!r}")
        if not (isinstance(window_row_groups, (int, np.integer)) and window_row_groups >= 1):
            raise ValueError(f"window_row_groups must be an integer >= 1, got "
                             f"{window_row_groups!r}")
        self.path = os.fspath(path)
        self._open = pq.ParquetFile
        self._file = pq.ParquetFile(self.path)
        try:
            schema, metadata = self._file.schema_arrow, self._file.metadata
        finally:
            self._file.close()
            self._file = None
        names = schema.names
        if target not in names:
            raise ValueError(f"{self.path!r} has no column {target!r} (columns: {names})")
        if isinstance(features, (str, bytes)):  # list("ab") would be the columns a and b
            raise TypeError(f"features must be a list of column names, got the string "
                            f"{features!r} (use [{features!r}] for one column)")
        features = [c for c in names if c != target] if features is None else list(features)
        missing = [c for c in features if c not in names]
        if missing or not features or target in features:
            raise ValueError(f"features must be columns of {self.path!r} other than the target "
                             f"{target!r}; got {features} (columns: {names})")
        for name in features + [target]:
            _check_numeric_column(self.path, name, schema.field(name).type)
        self.features, self.target = features, target
        self.rank, self.size, self.window_blocks = int(rank), int(size), int(window_row_groups)
        self.row_groups = np.arange(self.rank, metadata.num_row_groups, self.size)
        self.block_lengths = np.array([metadata.row_group(int(g)).num_rows
                                       for g in self.row_groups], dtype=np.int64)
        if self.block_lengths.sum() == 0:
            raise ValueError(f"{self.path!r} has no rows for rank {self.rank} of {self.size} "
                             f"({metadata.num_row_groups} row groups)")
        self.shape = (int(self.block_lengths.sum()), len(features))

    def __repr__(self):
        return (f"ParquetSource({self.path!r}, {len(self.features)} features, "
                f"target={self.target!r}, rows={self.shape[0]}, rank={self.rank}/{self.size})")

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    def bind(self, model) -> "ParquetSource":
        """Checks the columns against the model; its dtype and label checks apply to reads."""
        if len(self.features) != model.n_features:
            raise ValueError(f"{self!r} has {len(self.features)} feature columns but the model "
                             f"expects {model.n_features}")
        self.dtype, self._labels = np.dtype(model.dtype), model._labels
        self._first_rows = np.concatenate([[0], np.cumsum(self.block_lengths)[:-1]])
        return self

    def __enter__(self):
        """Opens the file for the reads of an epoch."""
        self._file = self._open(self.path)
        return self

    def __exit__(self, *exc):
        self._file.close()
        self._file = None
        return False

    def prefetch(self, blocks) -> None:
        """Row groups are read whole by ``read``, on the reading thread."""

    def read(self, block: int, out: np.ndarray):
        table = self._file.read_row_group(int(self.row_groups[block]),
                                          columns=self.features + [self.target])
        columns = []
        for j, name in enumerate(self.features):
            column = table.column(name)
            if column.null_count:
                raise ValueError(f"{self.path!r}: column {name!r} has missing values in row "
                                 f"group {int(self.row_groups[block])}")
            columns.append(column.to_numpy())
            with np.errstate(over="ignore"):  # a float64 beyond float32: reported below
                np.copyto(out[:, j], columns[-1], casting="unsafe")
        first, name = int(self._first_rows[block]), f"{self.path!r} features"
        try:
            to_dtype(out, self.dtype, name, first_row=first)
        except ValueError:
            # Again with the file's values, which tell an overflow of the cast from a NaN.
            check_finite(out, name, source=np.column_stack(columns), first_row=first)
            raise
        y = self._labels(table.column(self.target).to_numpy(), out.shape[0])
        return y, None


def training_data(model, X, y, sample_weight, shuffle):
    """fit's (X, y, weights, shuffle) validated: X an ndarray, a SparseInput, an ArrayBlocks
    or a bound ParquetSource; shuffle False, True (the engine's full permutation) or
    "block"."""
    if isinstance(shuffle, str):
        if shuffle not in ("block", "full"):
            raise ValueError(f"shuffle must be True, False, 'block' or 'full', got {shuffle!r}")
    elif isinstance(shuffle, (bool, np.bool_)):
        shuffle = bool(shuffle)
    else:
        raise TypeError(f"shuffle must be True, False, 'block' or 'full', got {shuffle!r}")
    if isinstance(X, ParquetSource):
        if y is not None or sample_weight is not None:
            raise ValueError("with a ParquetSource, y comes from its target column: pass y=None "
                             "(and no sample_weight)")
        if shuffle == "full":
            raise ValueError("a ParquetSource is streamed: shuffle='full' is not possible, use "
                             "True or 'block' (block-wise) or False")
        return X.bind(model), None, None, "block" if shuffle else False
    if y is None:
        raise TypeError("fit needs y (labels or targets), unless X is a ParquetSource")
    if is_sparse(X):
        if shuffle == "block":
            raise ValueError("shuffle='block' needs dense X; sparse X is shuffled in memory "
                             "(shuffle=True)")
        blocks = False
    else:
        # A memory-mapped X is read window by window, also in file order (shuffle=False: the
        # same batches as reading it in place, converted to the model's dtype per window).
        blocks = shuffle == "block" or (shuffle != "full" and is_memory_mapped(X))
    if not blocks:
        X = model._features(X)
        return X, model._labels(y, X.shape[0]), sample_weights(
            sample_weight, X.shape[0], model._dtype), shuffle == "full" or shuffle is True
    X = ArrayBlocks(X, "X", model._dtype, model.n_features)
    y = model._labels(y, X.n_rows)
    return X.labelled(y, sample_weights(sample_weight, X.n_rows, model._dtype)), None, None, (
        "block" if shuffle else False)


def epoch_parts(data, y, weights, shuffle, seed, batch_size: int,
                epoch_length: int | None = None):
    """The parts of an epoch: in-memory X (an ndarray or SparseInput) is one part that the
    engine shuffles itself (a full permutation); a ArrayBlocks or ParquetSource is read by a
    background thread into batch-aligned parts. Use as a context manager (it stops the
    thread). epoch_length (data read from disk only; fit(comm=...)'s shorter shards): the
    epoch's rows, the epoch's order repeated from its start past the shard's end, as
    np.resize(order, epoch_length)."""
    if isinstance(data, (ArrayBlocks, ParquetSource)):
        return _WindowReader(data, shuffle, seed, batch_size, epoch_length)
    return _Single(EpochPart(data, y, weights, bool(shuffle), seed))


class _Single:
    def __init__(self, part):
        self.part = part

    def __enter__(self):
        return iter((self.part,))

    def __exit__(self, *exc):
        return False


_DONE = object()


class _WindowReader:
    """Reads an epoch's windows on a background thread, one part ahead.

    Batches cut the epoch's order (block_shuffled_order) every B rows, as if the engine read
    the whole epoch at once: each part ends on a batch boundary, and the rows of a window
    past the last whole batch (< B) start the next part; the last part holds the epoch's
    partial batch. The engine trains each part in row order.

    With epoch_length > N (a short shard of fit(comm=...)), the windows are read again from
    the first (the same order) until epoch_length rows are out: batches then span the end of
    one pass and the start of the next, exactly as np.resize(order, epoch_length) cuts."""

    def __init__(self, source, shuffle, seed, batch_size, epoch_length=None):
        window_blocks = getattr(source, "window_blocks", WINDOW_BLOCKS)
        self.windows = block_shuffle_plan(source.block_lengths, window_blocks, seed, shuffle)
        self.epoch_length = max(source.shape[0], epoch_length or 0)
        self.source, self.batch_size = source, batch_size
        self.parts = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="fastmlp-reader", daemon=True)

    def __enter__(self):
        self.source.__enter__()
        self.thread.start()
        return self._consume()

    def __exit__(self, *exc):
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.parts.get(timeout=0.05)
            except queue.Empty:
                pass
        self.source.__exit__(None, None, None)
        return False

    def _consume(self):
        while True:
            item = self.parts.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.parts.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _produce(self):
        try:
            self._read_windows()
            self._put(_DONE)
        except BaseException as exc:  # handed to the training thread, raised there
            self._put(exc)

    def _read_windows(self):
        source, windows, B = self.source, self.windows, self.batch_size
        lengths = source.block_lengths
        # (X, y, weights): rows of the previous window past its last whole batch (y and
        # weights are None while X has no rows).
        carry = (np.empty((0, source.shape[1]), source.dtype), None, None)
        if windows:
            source.prefetch(windows[0].blocks)
        # Buffers reused from window to window (fresh ones would be page-faulted in, and under
        # a memory limit each fault reclaims page cache): part m goes into buffer m mod 3. It
        # is free: part m - 1 went into the queue (size 1), so the engine took part m - 2 and
        # so had finished part m - 3.
        most = max(int(lengths[w.blocks].sum()) for w in windows) if windows else 0
        part_buffers = [None] * 3
        parts = emitted = 0  # parts and rows handed to the engine
        for k in itertools.count() if windows else ():
            window = windows[k % len(windows)]
            if self.stop.is_set():
                return
            if k + 1 < len(windows) or self.epoch_length > source.shape[0]:
                source.prefetch(windows[(k + 1) % len(windows)].blocks)
            c = carry[0].shape[0]
            rows = int(lengths[window.blocks].sum())
            # The part: the carried rows, then the window's rows as read (file order within
            # each block); the engine visits them in `order` (gathering rows, as it does for
            # an in-memory epoch): the carried rows first, then the window's permutation.
            if part_buffers[parts % 3] is None:
                part_buffers[parts % 3] = np.empty((most + B, source.shape[1]), source.dtype)
            X = part_buffers[parts % 3][:c + rows]
            X[:c] = carry[0]
            ys, ws, at = [], [], c
            for b in window.blocks:
                y_block, w_block = source.read(b, X[at:at + lengths[b]])
                ys.append(y_block)
                ws.append(w_block)
                at += int(lengths[b])
            if c:
                ys.insert(0, carry[1])
                ws.insert(0, carry[2])
            y, w = np.concatenate(ys), None if ws[-1] is None else np.concatenate(ws)
            order = None
            if window.permutation is not None:
                order = np.concatenate([np.arange(c), c + window.permutation])
            last = emitted + c + rows >= self.epoch_length
            whole = self.epoch_length - emitted if last else (c + rows) // B * B
            rest = np.arange(whole, c + rows) if order is None else order[whole:]
            carry = (X[rest], y[rest], None if w is None else w[rest])
            if not whole:
                continue
            if order is None:  # rows in file order, read in place by the engine
                part = EpochPart(X[:whole], y[:whole], None if w is None else w[:whole],
                                 False, 0)
            else:
                part = EpochPart(X, y, w, False, 0, order[:whole])
            if not self._put(part):
                return
            parts += 1
            emitted += whole
            if last:
                return
