"""Hooks for fastmlp's own tests, not part of the API: they reach into the thread pool, the
GEMM's dispatch and the training engine's choice of path to make rare situations happen on
demand, and count the engine's allocations."""

from __future__ import annotations

import contextlib

import numpy as np

from fastmlp import _core

_hooks = _core._testing


def force_gemm_path(path: str) -> str:
    """Every product takes ``path``: ``'reference'`` (the plain triple loop), ``'in-place'``
    (operands read in place), ``'packed'`` (packed panels around the micro-kernel), or
    ``'automatic'`` (the choice from the shape, the default). Returns the previous path. All
    paths give the same results to rounding."""
    return _hooks.force_gemm_path(path)


@contextlib.contextmanager
def gemm_path(path: str):
    """Every product takes ``path`` (see ``force_gemm_path``) until the block ends."""
    previous = force_gemm_path(path)
    try:
        yield
    finally:
        force_gemm_path(previous)


def force_bf16_path(path: str) -> str:
    """Every ``matmul(..., precision="bfloat16")`` takes ``path``: ``'portable'``,
    ``'avx512bf16'`` (``ValueError`` on a CPU without AVX512-BF16) or ``'automatic'`` (the
    choice from the ISA, the default). Returns the previous one."""
    return _hooks.force_bf16_path(path)


@contextlib.contextmanager
def bf16_path(path: str):
    """Every bfloat16 product takes ``path`` (see ``force_bf16_path``) until the block ends."""
    previous = force_bf16_path(path)
    try:
        yield
    finally:
        force_bf16_path(previous)


def force_int8_path(path: str) -> str:
    """Every int8 product takes ``path``: ``'portable'``, ``'avxvnni'``, ``'avx512vnni'``
    (``ValueError`` on a CPU without it) or ``'automatic'``. Returns the previous one."""
    return _hooks.force_int8_path(path)


@contextlib.contextmanager
def int8_path(path: str):
    """Every int8 product takes ``path`` (see ``force_int8_path``) until the block ends."""
    previous = force_int8_path(path)
    try:
        yield
    finally:
        force_int8_path(previous)


def int8_matmul(Xq: np.ndarray, Wq: np.ndarray) -> np.ndarray:
    """The int32 product ``Xq (M,K) uint8 · Wqᵀ``, Wq (N,K) int8, on the active int8 path."""
    return _hooks.int8_matmul(np.ascontiguousarray(Xq, np.uint8), np.ascontiguousarray(Wq, np.int8))


def quantize_rows(X: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """The C++ activation quantization of X (M,K) float32: uint8 (M,K)."""
    return quantize_rows_checked(X, scale, zero)[0]


def quantize_rows_checked(X: np.ndarray, scale: float, zero: int) -> tuple[np.ndarray, bool]:
    """``(quantize_rows(X, scale, zero), whether every element of X is finite)``."""
    return _hooks.quantize_rows(np.asarray(X, np.float32), float(scale), int(zero))


def quantize_rows_dynamic(X: np.ndarray, ranges: np.ndarray | None = None):
    """The C++ dynamic quantization of X (M,K) float32, one scale and zero point per row from
    the row's own range (``ranges`` None) or from ``ranges`` (M,2) ``[lo, hi]``: ``(X_q uint8
    (M,K), scales float32 (M,), zero points int32 (M,), whether each row is not finite (M,))``."""
    if ranges is not None:
        ranges = np.ascontiguousarray(ranges, np.float32)
    return _hooks.quantize_rows_dynamic(np.asarray(X, np.float32), ranges)


def tensor_range(X: np.ndarray) -> tuple[float, float, bool]:
    """The C++ range of X (M,K) float32 for a dynamic scale: (min(X, 0), max(X, 0), whether X
    holds NaN), NaN skipped by the min and max."""
    return _hooks.tensor_range(np.asarray(X, np.float32))


@contextlib.contextmanager
def gemm_precision(precision: str):
    """Every float32 GEMM product this thread runs until the block ends (``ops.matmul``,
    ``ops.dense_forward``/``dense_backward``, ``matmul_via_consumer``) multiplies in
    ``precision``: ``'bfloat16'`` (operands rounded to bfloat16, float32 accumulation) or
    ``'float32'``. The C++ engine's ``PrecisionScope``; float64 products ignore it."""
    previous = _hooks.set_gemm_precision(precision)
    try:
        yield
    finally:
        _hooks.set_gemm_precision(previous)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """The bfloat16 values, as float32, that ``matmul(..., precision="bfloat16")`` multiplies
    in place of ``x``'s float32 values (the C++ rounding, for its own tests)."""
    return _hooks.round_bf16(np.ascontiguousarray(x, dtype=np.float32))


def matmul_via_consumer(a: np.ndarray, b: np.ndarray, trans_a: bool = False,
                        trans_b: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``op(a) @ op(b)`` computed through a tile consumer (as the engine's fused optimizer
    update receives a weight gradient), and how many times each element was handed over."""
    return _hooks.matmul_via_consumer(a, b, bool(trans_a), bool(trans_b))


def matmul_with_epilogue(a: np.ndarray, b: np.ndarray, trans_a: bool = False,
                         trans_b: bool = False, *, c: np.ndarray | None = None,
                         bias: np.ndarray | None = None, relu: bool = False,
                         mask: np.ndarray | None = None) -> np.ndarray:
    """``[mask > 0] · relu?((c or 0) + op(a) @ op(b) + bias)`` through the GEMM's fused
    epilogue (``c`` given: beta = 1, accumulated into a copy of it)."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    start = np.zeros((m, n), dtype=a.dtype) if c is None else np.ascontiguousarray(c)
    return _hooks.matmul_with_epilogue(a, b, bool(trans_a), bool(trans_b), start,
                                       c is not None, bias, bool(relu), mask)


@contextlib.contextmanager
def layout(name: str):
    """Every engine built inside the block trains in layout ``name``: ``"features"`` (feature-
    major, every loop over the batch, see src/cpp/narrow.h) or ``"rows"`` (the GEMM path),
    whatever the net's widths and batch size; ``"automatic"`` is the measured choice."""
    previous = _hooks.force_layout(name)
    try:
        yield
    finally:
        _hooks.force_layout(previous)


def workspace_allocations() -> int:
    """How many times the C++ engine's work buffers (packing panels, training workspace) have
    been allocated or grown in this process. In steady-state training it stops moving, which
    is how the tests prove a training step allocates nothing."""
    return _hooks.workspace_allocations()


def check_regions(regions: int, tasks: int) -> bool:
    """Runs ``regions`` parallel regions of ``tasks`` tasks each; True if every task ran exactly
    once, before its region returned, and never again (also after stalled workers went on)."""
    return _hooks.check_regions(regions, tasks)


def failing_region(tasks: int, failing: int):
    """(message of the RuntimeError that reached the caller, or None; tasks that ran) of a
    region whose task ``failing`` throws."""
    return _hooks.failing_region(tasks, failing)


@contextlib.contextmanager
def stalled_workers(count: int):
    """The first ``count`` pool workers take no task, as if the OS never scheduled them,
    until the block ends."""
    _hooks.stall_workers(count)
    try:
        yield
    finally:
        _hooks.stall_workers(0)


@contextlib.contextmanager
def split_every_product():
    """The cost model says yes to splitting every product (while there are threads to split
    over), so small test shapes reach the parallel paths."""
    _hooks.force_split(True)
    try:
        yield
    finally:
        _hooks.force_split(False)


@contextlib.contextmanager
def without_update_proof():
    """The engine backs up every step's weights, as before its finite-update proof
    (src/cpp/update_bound.h), until the block ends: the same results, the old cost."""
    previous = _hooks.disable_update_proof(True)
    try:
        yield
    finally:
        _hooks.disable_update_proof(previous)


@contextlib.contextmanager
def slow_regions(factor: float = 3.0):
    """Every measured parallel region looks ``factor`` times slower to the engine's contention
    guard (3: slower than one thread even for a perfect split): a simulated busy machine. The
    guard's ledger and back-off start afresh on entry and exit."""
    _hooks.slow_regions(factor)
    try:
        yield
    finally:
        _hooks.slow_regions(1.0)


def optimizer_state_addresses(optimizer) -> list[int]:
    """The addresses of a fastmlp optimizer's state arrays, every parameter's, in order."""
    return list(_hooks.optimizer_state_addresses(optimizer._rule))
