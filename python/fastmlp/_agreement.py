"""Agreement among MPI ranks (fit(comm=...), the estimators with comm): errors every rank
raises together, rank 0's parameters on every rank, and the check that the replicas are
bitwise equal. docs/distributed.md, "Failures end the job, never hang it"."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["AgreedError", "agree", "run_agreed", "collective", "broadcast_parameters",
           "check_replicas", "check_replicas_crc", "raise_if_replicas_differ"]


class AgreedError(Exception):
    """Carries an error every rank raises together (no Abort needed)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def agree(comm, error: BaseException | None, what: str) -> None:
    """Collective: raises on every rank when any rank met an error (its own error on that
    rank, a RuntimeError naming the first failing rank elsewhere)."""
    reports = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [r for r, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if error is not None:
        raise AgreedError(error)
    raise AgreedError(RuntimeError(
        f"rank {failed[0]} of {comm.Get_size()} failed while {what}: {reports[failed[0]]}"))


def run_agreed(comm, what: str, action):
    """Collective: action()'s result on every rank, or its error raised on every rank when it
    failed on any (for callers outside fit: the estimators). comm None: action()."""
    if comm is None:
        return action()
    try:
        return collective(comm, what, action)
    except AgreedError as agreed:
        raise agreed.error from None


def collective(comm, what: str, action):
    """Runs action() on every rank and agrees on its failure (see _agree)."""
    result, error = None, None
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - every error is reported to the other ranks
        error = exc
    agree(comm, error, what)
    return result


def broadcast_parameters(comm, model) -> None:
    """Collective: rank 0's parameters received into every rank's model's own arrays (its
    public weights are read-only views); its packed weights are dropped."""
    for array in model._weights.arrays() + model._biases.arrays():
        comm.Bcast(array, root=0)
    model._drop_pack()


def check_replicas(comm, model, when: str) -> None:
    """Collective: RuntimeError on every rank unless the replicas are bitwise equal (for
    callers outside fit: the estimators' L-BFGS)."""
    try:
        check_replicas_crc(comm, model, when)
    except AgreedError as agreed:
        raise agreed.error from None


def check_replicas_crc(comm, model, epoch) -> None:
    """Collective: RuntimeError on every rank unless the replicas are bitwise equal after an
    epoch (a CRC-32 of the parameters, ~1 ms per MB: what the design promises, checked, e.g.
    against an MPI whose allreduce differs between ranks, or a callback that changed the
    weights on one rank only). epoch: the 0-based epoch, or words saying when."""
    digest = 0
    for array in list(model.weights) + list(model.biases):
        digest = zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"), digest)
    digests = comm.allgather(digest)
    raise_if_replicas_differ([r for r, d in enumerate(digests) if d != digests[0]], epoch)


def raise_if_replicas_differ(differ: list[int], epoch) -> None:
    """The RuntimeError every rank raises when the ranks differ (from rank 0)."""
    if differ:
        raise AgreedError(RuntimeError(
            f"{f'after epoch {epoch + 1}' if isinstance(epoch, int) else epoch} the parameters "
            f"of rank(s) {differ} differ from rank 0's (a callback that changes the model "
            "differently on each rank?)"))
