"""The gradient exchange of ranks that share one node: an MPI shared-memory window in place of
the allreduce (``fit(comm=...)``, _distributed.py; docs/distributed.md).

Every rank owns two slots of the window (even and odd steps), each the flat gradient (the
engine's layout, trainer.h) followed by the step's TAIL values. A step:

1. the rank's ``gradient_step`` writes straight into its slot (no copy) and fills the tail;
2. ``exchange()``: a memory fence and a barrier, after which every slot of this step is
   complete and visible;
3. the update reads the slots of all ranks, summed in rank order (the same sum, bit for bit,
   on every rank: ``Trainer.apply_gradient_sum``):
   - sharded (a rule without state, SGD without momentum): rank r updates only its slice
     ``ranges[r]`` of the parameters, publishes the new values into its own slot over its
     gradient (which only it reads), and after a second ``exchange()`` each rank copies the
     other slices: a reduce-scatter, update and allgather with one copy each way, and each
     rank does 1/R of the update;
   - full (momentum, Adam: the rule's state must stay current on every rank): every rank
     updates every parameter from the sum.

A slot is rewritten two steps later, after everyone passed the next step's barrier and so has
finished reading it: the two slots make one barrier per step enough (two when sharded).
"""

from __future__ import annotations

import numpy as np

__all__ = ["NodeExchange", "shard_ranges"]

_PAGE = 4096


class NodeExchange:
    """Per-rank slots of a shared-memory window; see the module's documentation."""

    def __init__(self, comm, window, slot_elements: int, dtype: np.dtype):
        self.comm, self.window = comm, window
        ranks = comm.Get_size()
        self.slots: list[list[np.ndarray]] = [[], []]  # [parity][rank]
        for r in range(ranks):
            memory, _ = window.Shared_query(r)
            whole = np.frombuffer(memory, dtype=dtype)
            stride = whole.size // 2
            for parity in (0, 1):
                self.slots[parity].append(whole[parity * stride:parity * stride + slot_elements])
        self.rank = comm.Get_rank()

    @classmethod
    def create(cls, comm, MPI, slot_elements: int, dtype) -> NodeExchange | None:
        """Collective: the exchange over comm when all its ranks share a node and every rank
        allocated its window; None on every rank otherwise (the caller's allreduce then)."""
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        one_node = comm.allreduce(node.Get_size() == comm.Get_size(), op=MPI.LAND)
        if not one_node:
            node.Free()
            return None
        dtype = np.dtype(dtype)
        # Two slots, each rank's window on its own pages (alloc_shared_noncontig).
        slot_bytes = -(-slot_elements * dtype.itemsize // _PAGE) * _PAGE
        window, error = None, None
        info = MPI.Info.Create()
        try:
            info.Set("alloc_shared_noncontig", "true")
            window = MPI.Win.Allocate_shared(2 * slot_bytes, dtype.itemsize, info, comm=node)
        except MPI.Exception as exc:
            error = exc
        finally:
            info.Free()
        if not node.allreduce(error is None, op=MPI.LAND):
            if window is not None:
                window.Free()
            node.Free()
            return None
        window.Lock_all(MPI.MODE_NOCHECK)
        return cls(node, window, slot_elements, dtype)

    def slot(self, step: int) -> np.ndarray:
        """This rank's slot for step (writable)."""
        return self.slots[step % 2][self.rank]

    def sources(self, step: int) -> list[np.ndarray]:
        """Every rank's slot for step, in rank order (read only these after exchange)."""
        return self.slots[step % 2]

    def exchange(self) -> None:
        """Collective: what each rank wrote into the window before is visible to all after."""
        self.window.Sync()
        self.comm.Barrier()
        self.window.Sync()

    def free(self) -> None:
        """Collective: releases the window (call only where every rank does)."""
        self.slots = [[], []]
        self.window.Unlock_all()
        self.window.Free()
        self.comm.Free()


def shard_ranges(elements: int, ranks: int) -> list[tuple[int, int]]:
    """Rank r's slice [begin, end) of the flat parameters when the update is sharded: equal
    parts, each starting on a 64-byte boundary of float32 (16 elements) but the first."""
    per_rank = -(-elements // ranks)
    per_rank = -(-per_rank // 16) * 16
    return [(min(r * per_rank, elements), min((r + 1) * per_rank, elements))
            for r in range(ranks)]
