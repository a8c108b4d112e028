"""pytest setup for tests/: the fixture that runs a kernel test once per SIMD flavour and
thread count. Shared functions (layouts, references, tolerances) are in tests/_helpers.py."""

import pytest

import fastmlp
from fastmlp import ops


def _isa_and_thread_counts():
    """Every SIMD flavour this CPU supports × 1 and 2 threads. The default run takes each
    flavour on one thread and the flavour this process chose (the newest, or FASTMLP_ISA) on
    two as well; the other flavours on two threads are `slow`. (The GEMM is the only kernel
    with per-flavour code and the only one that uses the pool; tests/test_gemm.py's own
    fixtures split every product over two threads on every flavour in the default run.)"""
    chosen = ops.isa()
    return [pytest.param((isa, threads), id=f"{isa}-{threads}t",
                         marks=() if threads == 1 or isa == chosen else pytest.mark.slow)
            for isa in ops.supported_isas() for threads in (1, 2)]


@pytest.fixture(params=_isa_and_thread_counts())
def every_isa_and_thread_count(request):
    """Forces the flavour and the pool size for every kernel call of the test (restored after).
    Requested with `_helpers.ON_EVERY_ISA_AND_THREAD_COUNT` or a module's `pytestmark`."""
    isa, threads = request.param
    previous = ops.isa(), fastmlp.get_num_threads()
    ops.set_isa(isa)
    fastmlp.set_num_threads(threads)
    yield
    ops.set_isa(previous[0])
    fastmlp.set_num_threads(previous[1])


@pytest.fixture(params=ops.supported_isas())
def isa(request):
    """Each SIMD flavour this CPU supports in turn, on the current thread count (restored
    after); the test gets the flavour's name."""
    previous = ops.isa()
    ops.set_isa(request.param)
    yield request.param
    ops.set_isa(previous)
