"""The gradient exchange of ranks that share one node: MPI shared-memory windows in place of
the allreduce (``fit(comm=...)``, _distributed.py; docs/distributed.md).

Every rank owns one slot of one window: the flat gradient (the engine's layout, trainer.h)
followed by the step's TAIL values and one flag; a second window holds one copy of the
parameters for the whole node. A step:

1. the rank's ``gradient_step`` writes straight into its slot (no copy) and fills the tail;
2. ``exchange()``: a memory fence and a barrier, after which every slot of this step is
   complete and visible;
3. the update reads the slots of all ranks, summed in rank order (the same sum, bit for bit,
   on every rank: ``Trainer.apply_gradient_sum``):
   - sharded (a rule without state, plain SGD): the ranks' engines all train the ONE shared
     copy of the parameters; rank r updates only its slice ``shard_ranges(...)[r]`` of it,
     sets its flag (finite or not), and after a second ``exchange()`` the next step reads
     the whole copy: a reduce-scatter and update with no allgather at all, each rank doing
     1/R of the update. A slice that is not finite makes every rank put its slice back;
   - full (momentum, Adam: each rank's optimizer state must stay current): every rank
     updates its own model from the sum, all of it, then a second ``exchange()``.

The second barrier is what lets one slot per rank serve every step: after it every rank has
finished reading the slots, so the next step's gradient may overwrite them. (Two slots, for
even and odd steps, would save the full update's second barrier at the cost of a second
gradient buffer per rank; the ranks passed the first barrier together and do the same
update, so the second one waits little: SGD with momentum on the mnist-shaped net, 2 ranks,
measured the same with one slot and with two, 269k–283k against 267k–272k samples/s.)

The windows outlive a fit: making them and touching their pages the first time costs ~40 ms
(measured here with two slots a rank, 42 MB for the wide net; 25 MB with one), as much as a
few steps, so ``acquire`` keeps them for the next fit over the same ranks with the same sizes
(an estimator's partial_fit, a second fit) and frees them when the sizes change; the rest
goes with the process.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NodeExchange", "shard_ranges"]

_PAGE = 4096
_KEPT: list[NodeExchange] = []  # windows between fits, one per set of ranks


class NodeExchange:
    """Per-rank slots of a shared-memory window; see the module's documentation."""

    def __init__(self, comm, windows, slot_elements: int, parameters: int, dtype: np.dtype):
        self.comm, self.windows = comm, windows
        self.sizes, self.in_use = (slot_elements, parameters, dtype), False
        ranks = comm.Get_size()
        self.slots: list[np.ndarray] = []  # [rank]
        for r in range(ranks):
            memory, _ = windows[0].Shared_query(r)
            self.slots.append(np.frombuffer(memory, dtype=dtype)[:slot_elements])
        memory, _ = windows[1].Shared_query(0)
        self.parameters = np.frombuffer(memory, dtype=dtype)[:parameters]
        self.rank = comm.Get_rank()

    @classmethod
    def acquire(cls, comm, MPI, slot_elements: int, parameters: int,
                dtype) -> NodeExchange | None:
        """Collective: the exchange over comm when all its ranks share a node and every rank
        allocated its windows (slots of slot_elements, one copy of `parameters` elements);
        None on every rank otherwise (the caller's allreduce then). The windows kept from a
        fit over the same ranks with the same sizes when there are; release() when done."""
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        one_node = comm.allreduce(node.Get_size() == comm.Get_size(), op=MPI.LAND)
        if not one_node:
            node.Free()
            return None
        dtype = np.dtype(dtype)
        kept = next((k for k in _KEPT if not k.in_use and _same_ranks(MPI, k.comm, node)), None)
        usable = kept is not None and kept.sizes == (slot_elements, parameters, dtype)
        if node.allreduce(usable, op=MPI.LAND):
            node.Free()
            kept.in_use = True
            return kept
        if node.allreduce(kept is not None, op=MPI.LAND):  # all its ranks are here to free it
            _KEPT.remove(kept)
            kept.free()
        exchange = cls._create(node, MPI, slot_elements, parameters, dtype)
        if exchange is not None:
            exchange.in_use = True
            _KEPT.append(exchange)
        return exchange

    def release(self) -> None:
        """The fit is done with the windows (kept for the next; see acquire)."""
        self.in_use = False

    @classmethod
    def _create(cls, node, MPI, slot_elements, parameters, dtype) -> NodeExchange | None:
        """Collective over node: new windows, or None on every rank when any failed."""
        # One slot a rank, each rank's window on its own pages (alloc_shared_noncontig); the
        # parameters' window held by rank 0.
        slot_bytes = -(-slot_elements * dtype.itemsize // _PAGE) * _PAGE
        windows, error = [], None
        info = MPI.Info.Create()
        try:
            info.Set("alloc_shared_noncontig", "true")
            for size in (slot_bytes, parameters * dtype.itemsize if node.Get_rank() == 0
                         else 0):
                windows.append(MPI.Win.Allocate_shared(size, dtype.itemsize, info, comm=node))
        except MPI.Exception as exc:
            error = exc
        finally:
            info.Free()
        if not node.allreduce(error is None, op=MPI.LAND):
            for window in windows:
                window.Free()
            node.Free()
            return None
        for window in windows:
            window.Lock_all(MPI.MODE_NOCHECK)
        return cls(node, windows, slot_elements, parameters, dtype)

    def sources(self) -> list[np.ndarray]:
        """Every rank's slot, in rank order (read another rank's only after exchange)."""
        return self.slots

    def exchange(self) -> None:
        """Collective: what each rank wrote into the windows before is visible to all after
        (MPI's unified memory model: a fence, the barrier, a fence)."""
        for window in self.windows:
            window.Sync()
        self.comm.Barrier()
        for window in self.windows:
            window.Sync()

    def free(self) -> None:
        """Collective: releases the windows (call only where every rank does)."""
        self.slots, self.parameters = [], None
        for window in self.windows:
            window.Unlock_all()
            window.Free()
        self.comm.Free()


def _same_ranks(MPI, a, b) -> bool:
    """Whether communicators a and b hold the same processes in the same order."""
    groups = a.Get_group(), b.Get_group()
    try:
        return MPI.Group.Compare(*groups) == MPI.IDENT
    finally:
        for group in groups:
            group.Free()


def shard_ranges(elements: int, ranks: int) -> list[tuple[int, int]]:
    """Rank r's slice [begin, end) of the flat parameters when the update is sharded: equal
    parts, each starting on a 64-byte boundary of float32 (16 elements) but the first."""
    per_rank = -(-elements // ranks)
    per_rank = -(-per_rank // 16) * 16
    return [(min(r * per_rank, elements), min((r + 1) * per_rank, elements))
            for r in range(ranks)]
