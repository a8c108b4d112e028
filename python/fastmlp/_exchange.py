"""How the ranks of fit(comm=...) sum a step's gradients and apply the update (_distributed.py,
docs/distributed.md): over the node's shared memory when every rank is on one node
(_node_exchange.py), else MPI allreduce on one flat buffer in buckets.

Legend: R ranks, G gradient elements (the engine's flat layout, trainer.h: per layer from the
last to the first, dW_l then db_l), TAIL = 3 values after the gradient:
    [Σ sample weights of the batch, Σ weights × loss, failure flag]
so that each step needs one collective: the global weighted mean of the gradient and the loss,
and the ranks' agreement on whether the step failed.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from fastmlp._agreement import (AgreedError, agree, broadcast_parameters, check_replicas_crc,
                                raise_if_replicas_differ)
from fastmlp._node_exchange import NodeExchange, shard_ranges
from fastmlp._training import _parameter_ids, diverged

__all__ = ["Exchange", "released_together", "BUCKET_BYTES", "NODE_EXCHANGE"]

BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket (bucket_cap_mb=25)
# Ranks that share one node exchange gradients over shared memory (_node_exchange.py) unless
# this is False or FASTMLP_MPI_NODE_EXCHANGE=0 (then MPI allreduce, as across nodes).
NODE_EXCHANGE = True
_TAIL = 3
_OK, _DIVERGED, _RAISED = 0, 1, 2


def _buckets(size: int, itemsize: int) -> list[slice]:
    """Contiguous slices of the flat buffer of at most BUCKET_BYTES each: the buffer's order
    is reverse layer order, so the first bucket holds the last layers (the first finished)."""
    per_bucket = max(1, BUCKET_BYTES // itemsize)
    return [slice(start, min(start + per_bucket, size)) for start in range(0, size, per_bucket)]


def _local_gradient(trainer, data, error, gradient, tail, batch_size, ranks, weighted):
    """This rank's part of a step: the gradient of its next batch of data (X, y, weights) into
    gradient and [weight sum, weight sum × loss, flag] into tail (error: this rank could not
    get the batch). Returns (the error it met or None, rows, Σ‖W‖² before the step, whether
    its contention guard fell back to one thread)."""
    try:
        if error is not None:
            raise error
        # Unweighted, every rank's batch has the same rows: the global mean is the mean of
        # the ranks' means, 1/R applied to dL/dlogits in the engine (no pass over the
        # buffer). Weighted: each mean is scaled by its weight sum, the sum by 1/Σ after.
        loss, rows, weight_sum, squares, fell_back = trainer.gradient_step(
            *data, batch_size, gradient, 1.0 if weighted else 1.0 / ranks)
        flag = _OK if math.isfinite(loss) else _DIVERGED
    except Exception as exc:  # noqa: BLE001 - reported to every rank through the flag
        error, flag, loss, rows, weight_sum, squares = exc, _RAISED, 0.0, batch_size, 0.0, 0.0
        fell_back = False
    tail[:] = (weight_sum, loss * weight_sum if flag == _OK else 0.0, flag)
    return error, rows, squares, fell_back


def _agreed_outcome(comm, tails, error, epoch):
    """Every rank's tail summed (in rank order): raises on every rank when a rank's step
    failed; else (total weight, Σ weight × loss)."""
    flag = max(float(t[2]) for t in tails)  # (a sum of flags from the allreduce: its max)
    if flag != _OK:
        if flag >= _RAISED:
            agree(comm, error, f"computing a step of epoch {epoch + 1}")
        raise AgreedError(diverged(epoch))
    return sum(float(t[0]) for t in tails), sum(float(t[1]) for t in tails)


class Exchange:
    """How a step's gradients are summed over the ranks and the update applied: over shared
    memory when every rank is on one node (_node_exchange.py), else MPI allreduce. Also
    chooses the engine of each epoch (begin_epoch): on the model's own arrays, or, for a
    sharded update, on the node's one shared copy of the parameters."""

    def __init__(self, comm, MPI, elements, weighted):
        self.comm, self.MPI, self.weighted = comm, MPI, weighted
        self.rank, self.ranks = comm.Get_rank(), comm.Get_size()
        self.elements, self.node = elements, None
        self.grad = None  # the allreduce's buffer
        # The engine's parameters: None (the model's arrays, `trained` their ids) or the
        # shared copy's (weights, biases), in which case the model's are current only when
        # model_current (after end_epoch).
        self.shared_parameters, self.trained, self.model_current = None, None, True

    @classmethod
    def create(cls, comm, MPI, model, weighted) -> Exchange:
        """Collective: the node's shared memory when every rank wants it (NODE_EXCHANGE, the
        FASTMLP_MPI_NODE_EXCHANGE variable not "0") and it can be had, else the allreduce."""
        sizes = model.layer_sizes
        elements = sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes, sizes[1:]))
        exchange = cls(comm, MPI, elements, weighted)
        wanted = NODE_EXCHANGE and os.environ.get("FASTMLP_MPI_NODE_EXCHANGE", "1") != "0"
        if comm.allreduce(wanted, op=MPI.LAND):
            # (one more value per slot: whether the rank's sharded update stayed finite)
            exchange.node = NodeExchange.acquire(comm, MPI, elements + _TAIL + 1, elements,
                                                 model._dtype)
        if exchange.node is None:
            exchange.grad = np.empty(elements + _TAIL, dtype=model._dtype)
            exchange.buckets = _buckets(exchange.grad.size, exchange.grad.itemsize)
        else:
            exchange.ranges = shard_ranges(elements, exchange.ranks)
            # Every rank's slot, its gradient and its tail (views made once: a step of the
            # mnist-shaped net lasts ~1 ms).
            slots = exchange.node.sources()
            exchange.views = (slots, [s[:elements] for s in slots],
                              [s[elements:-1] for s in slots])
            exchange.ones = [1.0] * exchange.ranks
        return exchange

    def release(self) -> None:
        """Done with the shared memory (kept for the next fit: NodeExchange.acquire)."""
        if self.node is not None:
            self.node.release()
            self.node = None

    def begin_epoch(self, model, optimizer, trainer, make_trainer):
        """Collective: the engine for the next epoch, trainer (None: none yet) or a new one
        (make_trainer(parameters=...) gives it). A rule without state (plain SGD) on 2+ ranks
        of one node trains the node's shared copy of the parameters, which every rank reads,
        each updating its slice (step); when the model's arrays are current (the first
        epoch, or after end_epoch copied them for validation, checkpoints or callbacks, which
        may have changed them) each rank copies its part of them there (the replicas were
        checked equal). Otherwise the engine trains each rank's model."""
        if self.node is not None and self.ranks > 1 and not optimizer._rule.reads_state:
            views = _parameter_views(model, self.node.parameters)
            if self.model_current:
                for array, view in zip(list(model.weights) + list(model.biases), views):
                    first, last = shard_ranges(array.size, self.ranks)[self.rank]
                    view.reshape(-1)[first:last] = array.reshape(-1)[first:last]
                self.node.exchange()
            if trainer is None or self.shared_parameters is None:
                count = len(model.weights)
                self.shared_parameters = (views[:count], views[count:])
                trainer = make_trainer(parameters=self.shared_parameters)
            self.model_current = False
        elif (trainer is None or self.shared_parameters is not None
              or _parameter_ids(model) != self.trained):
            self.end_epoch(model)  # (the model's arrays current before they are trained)
            self.shared_parameters = None  # (the rule has state now)
            trainer = make_trainer(parameters=None)
            self.trained = _parameter_ids(model)  # (a callback may assign new arrays)
        return trainer

    def end_epoch(self, model, needed: bool = True) -> None:
        """The model's arrays get the parameters trained in shared memory (this rank's
        copy; no rank writes them before the next begin_epoch), unless not needed: nothing
        reads the model before the next epoch (no validation, checkpoint or callback; not
        the last epoch), and the shared copy stays the only one until the fit ends."""
        if not self.model_current and needed:
            arrays = model._weights.arrays() + model._biases.arrays()
            shared = self.shared_parameters[0] + self.shared_parameters[1]
            for array, view in zip(arrays, shared):
                array[...] = view
            model._drop_pack()
            self.model_current = True

    def broadcast_parameters(self, model) -> None:
        """Collective: rank 0's parameters into every rank's model (broadcast_parameters),
        over shared memory: through the parameters' window, before any epoch uses it."""
        if self.node is None:
            return broadcast_parameters(self.comm, model)
        views = _parameter_views(model, self.node.parameters)
        arrays = model._weights.arrays() + model._biases.arrays()
        if self.rank == 0:
            for array, view in zip(arrays, views):
                view[...] = array
        self.node.exchange()
        if self.rank != 0:
            for array, view in zip(arrays, views):
                array[...] = view
        self.node.exchange()  # (read by every rank before begin_epoch writes it again)
        model._drop_pack()

    def check_replicas(self, model, epoch) -> None:
        """Collective: _check_replicas, over shared memory: every rank writes its parameters
        into its slot (which no rank reads between steps) and compares their bytes with rank
        0's, then the ranks agree (an allgather, after which the slots are free)."""
        if self.node is None:
            return check_replicas_crc(self.comm, model, epoch)
        if not self.model_current:
            return  # the ranks train one shared copy, which no one else changed
        slots = self.node.sources()
        mine = _parameter_views(model, slots[self.rank])
        for array, view in zip(list(model.weights) + list(model.biases), mine):
            view[...] = array
        self.node.exchange()
        size = sum(view.size for view in mine)
        bits = np.dtype(f"u{slots[0].itemsize}")  # bitwise: NaN equals the same NaN
        same = np.array_equal(slots[self.rank][:size].view(bits), slots[0][:size].view(bits))
        verdicts = self.comm.allgather(same)
        raise_if_replicas_differ([r for r, ok in enumerate(verdicts) if not ok], epoch)

    def step(self, trainer, data, error, args, batch_size, epoch):
        """One data-parallel step on the next batch of data, or, when this rank could not
        get it, a step that reports error; returns (global data loss, L2 penalty, global
        rows, whether this rank's contention guard fell back to one thread)."""
        if self.node is None:
            gradient, tail = self.grad[:-_TAIL], self.grad[-_TAIL:]
        else:
            _, gradients, tails = self.views
            gradient, tail = gradients[self.rank], tails[self.rank]
        error, rows, squares, fell_back = _local_gradient(
            trainer, data, error, gradient, tail, batch_size, self.ranks, self.weighted)
        global_rows = rows * self.ranks  # every rank runs the same rows per step (shards wrap)
        if self.node is None:
            total_weight, loss_sum = self._allreduce_update(trainer, error, global_rows, epoch)
        else:
            total_weight, loss_sum = self._node_update(trainer, error, global_rows, epoch)
        penalty = 0.5 * args.alpha * squares / global_rows
        return loss_sum / total_weight, penalty, global_rows, fell_back

    def _allreduce_update(self, trainer, error, global_rows, epoch):
        MPI, grad = self.MPI, self.grad
        gradient, tail = grad[:-_TAIL], grad[-_TAIL:]
        if self.weighted and tail[2] == _OK:
            gradient *= tail[0]
        for bucket in self.buckets:
            self.comm.Allreduce(MPI.IN_PLACE, grad[bucket], op=MPI.SUM)
        total_weight, loss_sum = _agreed_outcome(self.comm, [tail], error, epoch)
        if self.weighted:
            gradient *= 1.0 / total_weight
        if not trainer.apply_gradients(gradient, global_rows):
            raise AgreedError(diverged(epoch))  # identical replicas: every rank sees it
        return total_weight, loss_sum

    def _node_update(self, trainer, error, global_rows, epoch):
        node = self.node
        node.exchange()  # every rank's gradient is in its slot; nobody reads parameters now
        slots, gradients, tails = self.views
        total_weight, loss_sum = _agreed_outcome(self.comm, tails, error, epoch)
        coefficients = ([float(t[0]) / total_weight for t in tails] if self.weighted
                        else self.ones)
        if self.shared_parameters is None:
            # Every rank updates its own model from the same sum (its optimizer's state
            # stays current): the same numbers everywhere, so the same verdict.
            finite = trainer.apply_gradient_sum(gradients, coefficients, global_rows, 0,
                                                self.elements)
            trainer.finish_gradient_sum(finite, 0, self.elements)
            node.exchange()  # every rank done reading the slots: the next step rewrites them
        else:
            # The shared parameters: this rank updates its slice, then the ranks agree on
            # whether every slice stayed finite (else each puts its slice back).
            begin, end = self.ranges[self.rank]
            slots[self.rank][-1] = trainer.apply_gradient_sum(
                gradients, coefficients, global_rows, begin, end)
            node.exchange()
            finite = all(s[-1] == 1 for s in slots)
            trainer.finish_gradient_sum(finite, begin, end)
            if not finite:
                node.exchange()  # (every slice restored before anyone reads them)
        if not finite:
            raise AgreedError(diverged(epoch))  # every rank knows it
        return total_weight, loss_sum


def _parameter_views(model, flat):
    """Views of flat shaped as model's weights then biases, one after the other."""
    views, start = [], 0
    for array in list(model.weights) + list(model.biases):
        views.append(flat[start:start + array.size].reshape(array.shape))
        start += array.size
    return views


@contextlib.contextmanager
def released_together(exchange, model):
    """Releases the exchange's shared memory when fit ends on every rank together: normally
    or with an error all ranks raise (the model gets the last shared parameters first, and a
    barrier keeps the next fit from writing them while a rank still reads). Any other error
    aborts the job (fit)."""
    try:
        yield exchange
    except AgreedError:
        if exchange.node is not None:
            exchange.end_epoch(model)
            exchange.node.exchange()
        exchange.release()
        raise
    exchange.release()
