"""Hooks for fastmlp's own tests, not part of the API: they reach into the thread pool and
the GEMM's cost model to make rare situations happen on demand."""

from __future__ import annotations

import contextlib

from fastmlp import _core

_hooks = _core.testing


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
