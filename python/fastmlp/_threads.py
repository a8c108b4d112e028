"""Thread control of the C++ core (one persistent pool of fastmlp's own, not OpenMP)."""

from __future__ import annotations

from fastmlp import _core
from fastmlp._validation import positive_int

__all__ = ["get_num_threads", "set_num_threads"]


def get_num_threads() -> int:
    """Threads the kernels may use. Default: the cores this process may run on (its CPU
    affinity, capped by a cgroup CPU quota), or ``FASTMLP_NUM_THREADS`` when set."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (n >= 1) from the next kernel call on. Products too small to gain
    from threads run on the calling thread regardless. Results are bitwise identical for
    any ``n``: work is split over blocks of the output, never over a sum."""
    _core.set_num_threads(positive_int(n, "n"))
