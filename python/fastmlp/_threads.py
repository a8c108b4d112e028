"""Thread control of the C++ core: one persistent pool of fastmlp's own (not OpenMP), governed
like the other pools of the Python stack (threadpoolctl, OMP_NUM_THREADS). docs/threads.md
explains when the pool is used."""

from __future__ import annotations

import numbers

import numpy as np

from fastmlp import _core

__all__ = ["get_num_threads", "set_num_threads"]


def get_num_threads() -> int:
    """Threads the kernels may use, the calling thread included: the number the pool really
    runs (fewer than asked for, with a ``RuntimeWarning``, when the OS refused to create
    some). Default: ``FASTMLP_NUM_THREADS`` if set, else ``OMP_NUM_THREADS`` (which joblib
    sets in its worker processes), else the CPUs this process may use (its CPU affinity,
    capped by a cgroup CPU quota)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads, 1 <= n <= 4 x the CPUs this process may use. Work too small to gain
    from threads runs on the calling thread regardless (docs/threads.md). Results are
    bitwise identical for any ``n``: work is split over blocks of the output, never over a
    sum. ``threadpoolctl.threadpool_limits`` sets it too."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer, got {n!r}")
    cap = _core.max_num_threads()
    if not 1 <= n <= cap:
        raise ValueError(f"n must be positive and at most {cap} (4 x the "
                         f"{_core.available_cpus()} CPUs this process may use), got {n}")
    _core.set_num_threads(int(n))


def available_cpus() -> int:
    """The CPUs this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    return _core.available_cpus()


def one_thread_fallback_message(wall_to_cpu: float | None = None) -> str:
    """What ``verbose`` prints when the engine's contention guard fell back to one thread."""
    took = (f"took {wall_to_cpu:.2f}x the CPU time of its work" if wall_to_cpu is not None
            else "was slower than one thread")
    return (f"  threads: a step spread over {get_num_threads()} threads {took} (another "
            "process holds a core?); the rest of this epoch runs on one thread, with the same "
            "results")
