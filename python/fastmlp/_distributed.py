"""Data-parallel training over MPI ranks: ``MLP.fit(..., comm=comm)`` (docs/distributed.md).

Each rank holds its own shard of the rows and a replica of the model. A step is two engine
calls with an allreduce between them: ``gradient_step`` writes the batch's gradient into ONE
flat buffer (trainer.h: per layer from the last to the first, dW_l then db_l), the buffer is
summed over the ranks with ``comm.Allreduce`` (mpi4py's buffer interface: no pickling, the
GIL released), in buckets of up to ``BUCKET_BYTES`` taken in that reverse layer order, and
``apply_gradients`` runs the optimizer's rule (optim.cpp, the same code as the fused path) on
the average. Every rank applies the same update to the same parameters, so the replicas stay
bitwise identical.

Legend: R ranks, N_r rows of rank r's shard, B rows per rank and step (``batch_size``),
E = max_r N_r the rows of an epoch on every rank (smaller shards wrap around their order),
G gradient elements, plus TAIL = 3 values carried in the same allreduce:
    [Σ sample weights of the batch, Σ weights × loss, failure flag]
so that each step needs one collective: the global weighted mean of the gradient and the loss
(exact: each rank's mean gradient is scaled by its weight sum before the sum, the sum divided
by the total after), and the ranks' agreement on whether the step failed.

Failures: a rank whose step raises (bad labels in its shard) or whose loss is not finite sets
the flag; after the allreduce every rank sees it and raises (``FloatingPointError`` for a
divergence, the failing rank's own error there, ``RuntimeError`` naming it elsewhere). Errors
outside a step (validation of the arguments, callbacks, checkpoints) are agreed on with an
allgather before going on. Anything else (Ctrl-C, an error the other ranks cannot know
about) prints the traceback and calls ``comm.Abort``: the job ends, it never hangs.

Overlap of the allreduce with the rest of the backward pass is not done: see
docs/distributed.md for the measurement behind that decision.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
import zlib

import numpy as np

from fastmlp import _core
from fastmlp._data_sources import ArrayBlocks, ParquetSource, epoch_parts
from fastmlp._node_exchange import NodeExchange, shard_ranges
from fastmlp._shuffle import block_shuffled_order
from fastmlp._sparse import SparseInput
from fastmlp._threads import available_cpus, get_num_threads, set_num_threads
from fastmlp._validation import rank_and_size
from fastmlp._training import (History, _parameter_ids, _resume, _save_checkpoint,
                               _draw_epoch_seed, diverged, fit_arguments, new_trainer,
                               print_epoch, training_guard, validation_scores)

__all__ = ["fit", "rank_epoch_seed", "rank_epoch_order", "rank_block_epoch_order", "shard_rows",
           "run_agreed", "BUCKET_BYTES"]

BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket (bucket_cap_mb=25)
# Ranks that share one node exchange gradients over shared memory (_node_exchange.py) unless
# this is False or FASTMLP_MPI_NODE_EXCHANGE=0 (then MPI allreduce, as across nodes).
NODE_EXCHANGE = True
_TAIL = 3
_OK, _DIVERGED, _RAISED = 0, 1, 2


class _AgreedError(Exception):
    """Carries an error every rank raises together (no Abort needed)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def rank_epoch_seed(epoch_seed: int, rank: int) -> int:
    """Rank's shuffling seed for an epoch: every rank draws the same epoch seeds from fit's
    ``seed`` (rank 0's generator), and each mixes in its rank."""
    return int(np.random.SeedSequence([epoch_seed, rank]).generate_state(1, np.uint64)[0])


def rank_epoch_order(n_samples: int, epoch_length: int, epoch_seed: int, rank: int,
                     shuffle: bool = True) -> np.ndarray:
    """The rows of rank's shard that an epoch visits, in order (epoch_length of them: the
    shard's order repeated when the shard is smaller than the largest one)."""
    order = (_core.shuffled_indices(n_samples, rank_epoch_seed(epoch_seed, rank)) if shuffle
             else np.arange(n_samples, dtype=np.int64))
    return np.resize(order, max(epoch_length, n_samples))


def rank_block_epoch_order(block_lengths, window_blocks: int, epoch_length: int,
                           epoch_seed: int, rank: int, shuffle: bool = True) -> np.ndarray:
    """The rows of rank's memory-mapped or Parquet shard (row ids into the concatenation of
    its blocks: a memory-mapped array's rows, the rank's row groups in file order) that an
    epoch visits, in order: its block-shuffled order (_shuffle.block_shuffled_order), repeated
    up to epoch_length rows when the shard is shorter."""
    order = block_shuffled_order(block_lengths, window_blocks,
                                 rank_epoch_seed(epoch_seed, rank) if shuffle else 0, shuffle)
    return np.resize(order, max(epoch_length, order.shape[0]))


def shard_rows(n_rows: int, comm=None, *, rank: int | None = None,
               size: int | None = None) -> slice:
    """The contiguous rows of rank (comm's rank, or rank of size) in n_rows split as evenly as
    possible (lengths differ by at most 1): ``X[shard_rows(len(X), comm)]`` of a memory-mapped
    X is a view of that byte range only, which fit(comm=...) reads (and nothing else)."""
    rank, size = rank_and_size(comm, rank, size)
    rank, size = (0 if rank is None else rank), (1 if size is None else size)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
               for v in (n_rows, rank, size)) or not (size >= 1 and 0 <= rank < size
                                                      and n_rows >= 0):
        raise ValueError(f"shard_rows needs n_rows >= 0 and 0 <= rank < size, got "
                         f"n_rows={n_rows!r}, rank={rank!r}, size={size!r}")
    base, extra = divmod(int(n_rows), int(size))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - comm given without mpi4py is not an mpi4py comm
        raise ImportError("fit(comm=...) needs mpi4py: pip install 'fastmlp[mpi]'") from None
    return MPI


def _agree(comm, error: BaseException | None, what: str) -> None:
    """Collective: raises on every rank when any rank met an error (its own error on that
    rank, a RuntimeError naming the first failing rank elsewhere)."""
    reports = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [r for r, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if error is not None:
        raise _AgreedError(error)
    raise _AgreedError(RuntimeError(
        f"rank {failed[0]} of {comm.Get_size()} failed while {what}: {reports[failed[0]]}"))


def run_agreed(comm, what: str, action):
    """Collective: action()'s result on every rank, or its error raised on every rank when it
    failed on any (for callers outside fit: the estimators). comm None: action()."""
    if comm is None:
        return action()
    try:
        return _collective(comm, what, action)
    except _AgreedError as agreed:
        raise agreed.error from None


def _collective(comm, what: str, action):
    """Runs action() on every rank and agrees on its failure (see _agree)."""
    result, error = None, None
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - every error is reported to the other ranks
        error = exc
    _agree(comm, error, what)
    return result


def default_threads(comm) -> int | None:
    """Threads per rank when neither FASTMLP_NUM_THREADS nor OMP_NUM_THREADS is set: this
    node's CPUs shared among the ranks on it (at least 1); None when a variable decides."""
    if os.environ.get("FASTMLP_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return None
    node = comm.Split_type(_mpi().COMM_TYPE_SHARED)
    try:
        local_ranks = node.Get_size()
    finally:
        node.Free()
    return max(1, available_cpus() // local_ranks)


def fit(model, X, y, *, comm, epochs, batch_size, optimizer, shuffle, seed, validation_data,
        verbose, callbacks, sample_weight, alpha, checkpoint, checkpoint_every, resume,
        sparse_updates) -> History:
    """``MLP.fit(..., comm=comm)``: see the module's documentation."""
    MPI = _mpi()
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an mpi4py communicator, got {comm!r}")
    threads = default_threads(comm)
    saved_threads = get_num_threads()
    try:
        if threads is not None and threads < saved_threads:
            set_num_threads(threads)
        return _fit(model, X, y, comm, epochs, batch_size, optimizer, shuffle, seed,
                    validation_data, verbose, callbacks, sample_weight, alpha, checkpoint,
                    checkpoint_every, resume, sparse_updates)
    except _AgreedError as agreed:
        raise agreed.error from None
    except BaseException as exc:  # noqa: BLE001 - one rank alone: end the job, never hang
        sys.stderr.write(f"fastmlp: rank {comm.Get_rank()} of {comm.Get_size()} failed "
                         "where the other ranks cannot follow; aborting the MPI job\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(130 if isinstance(exc, KeyboardInterrupt) else 1)
        raise  # pragma: no cover - Abort does not return
    finally:
        if get_num_threads() != saved_threads:
            set_num_threads(saved_threads)


def _fit(model, X, y, comm, epochs, batch_size, optimizer, shuffle, seed, validation_data,
         verbose, callbacks, sample_weight, alpha, checkpoint, checkpoint_every, resume,
         sparse_updates) -> History:
    MPI = _mpi()
    rank, ranks = comm.Get_rank(), comm.Get_size()

    def validate():
        args = fit_arguments(model, X, y, epochs=epochs, batch_size=batch_size,
                             optimizer=optimizer, shuffle=shuffle,
                             validation_data=validation_data, callbacks=callbacks,
                             sample_weight=sample_weight, alpha=alpha,
                             checkpoint_every=checkpoint_every, sparse_updates=sparse_updates)
        if isinstance(args.X, SparseInput):
            raise TypeError("fit(comm=...) takes dense X (in memory, memory-mapped or a "
                            "ParquetSource); sparse input trains in one process")
        return args, np.random.default_rng(seed)
    args, rng = _collective(comm, "validating its arguments", validate)
    # True, "full", "block": each rank shuffles its shard (data read from disk block-wise).
    streamed = isinstance(args.X, (ArrayBlocks, ParquetSource))
    shuffle = bool(args.shuffle)
    _check_same_setup(comm, model, args, shuffle, checkpoint, resume)
    _check_distinct_shards(comm, args.X)
    shard_rows = comm.allgather(args.X.shape[0])
    epoch_length = max(shard_rows)
    batch_size = min(args.batch_size, epoch_length)
    steps_per_epoch = -(-epoch_length // batch_size)
    optimizer, history, start_epoch = args.optimizer, History(), 0

    with training_guard(model):
        # One generator of epoch seeds, rank 0's, on every rank.
        rng.bit_generator.state = comm.bcast(rng.bit_generator.state if rank == 0 else None)

        def resume_on_rank_0():
            if rank == 0 and checkpoint is not None and resume and os.path.exists(checkpoint):
                opt, start = _resume(model, checkpoint, rng, history, batch_size, bool(shuffle))
                return opt, start, history, rng.bit_generator.state
            return None
        resumed = comm.bcast(_collective(comm, "resuming from the checkpoint",
                                         resume_on_rank_0))
        if resumed is not None:  # the checkpoint's optimizer, history and generator
            optimizer, start_epoch, saved_history, rng_state = resumed
            if rank != 0:
                history = saved_history
                rng.bit_generator.state = rng_state
        else:
            # An optimizer used before (its state and step count) continues as rank 0's.
            state = comm.bcast(optimizer.state_dict() if rank == 0 else None)
            if rank != 0:
                optimizer.load_state_dict(state)
        exchange = _Exchange.create(comm, MPI, model, args.weights is not None)
        exchange.broadcast_parameters(model)
        trainer = new_trainer(model, optimizer, batch_size, args.alpha)
        exchange.trained = _parameter_ids(model)

        def make_trainer(parameters):
            return new_trainer(model, optimizer, batch_size, args.alpha, parameters=parameters)
        with _freed_together(exchange, model):
            for epoch in range(start_epoch, args.epochs):
                trainer = exchange.begin_epoch(model, trainer, make_trainer)
                started = time.perf_counter()
                epoch_seed = _draw_epoch_seed(rng) if shuffle else 0
                make = _streamed_batches if streamed else _in_memory_batches
                total = penalty = 0.0
                samples, fell_back = 0, False
                with contextlib.closing(make(trainer, args, epoch_seed, rank, batch_size,
                                             epoch_length)) as batches:
                    for _ in range(steps_per_epoch):
                        # A read that fails (data read from disk) fails this rank's step: the
                        # other ranks learn it in the step's allreduce.
                        data, error = None, None
                        try:
                            data = next(batches)
                        except Exception as exc:  # noqa: BLE001 - agreed on in _step
                            error = exc
                        loss, penalty_step, rows, fell = exchange.step(trainer, data, error,
                                                                       args, batch_size, epoch)
                        total += (loss + penalty_step) * rows
                        penalty += penalty_step * rows
                        samples += rows
                        fell_back |= fell
                elapsed = time.perf_counter() - started
                exchange.end_epoch(model)
                history.loss.append(total / samples)
                history.l2_penalty.append(penalty / samples)
                history.samples_per_second.append(samples / elapsed if elapsed > 0 else math.inf)
                # (any rank's contention guard: docs/threads.md)
                history.one_thread_fallback.append(comm.allreduce(fell_back, op=MPI.LOR))
                stop = _collective(comm, "ending an epoch", lambda: _end_epoch(
                    comm, model, args, history, optimizer, rng, epoch, batch_size, shuffle,
                    checkpoint, verbose, rank))
                exchange.check_replicas(model, epoch)
                if comm.allreduce(bool(stop), op=MPI.LOR):
                    break

        return history

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
        _check_replicas(comm, model, when)
    except _AgreedError as agreed:
        raise agreed.error from None


def _check_replicas(comm, model, epoch) -> None:
    """Collective: RuntimeError on every rank unless the replicas are bitwise equal after an
    epoch (a CRC-32 of the parameters, ~1 ms per MB: what the design promises, checked, e.g.
    against an MPI whose allreduce differs between ranks, or a callback that changed the
    weights on one rank only). epoch: the 0-based epoch, or words saying when."""
    digest = 0
    for array in list(model.weights) + list(model.biases):
        digest = zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"), digest)
    digests = comm.allgather(digest)
    _raise_if_replicas_differ([r for r, d in enumerate(digests) if d != digests[0]], epoch)


def _raise_if_replicas_differ(differ: list[int], epoch) -> None:
    """The RuntimeError every rank raises when the ranks differ (from rank 0)."""
    if differ:
        raise _AgreedError(RuntimeError(
            f"{f'after epoch {epoch + 1}' if isinstance(epoch, int) else epoch} the parameters "
            f"of rank(s) {differ} differ from rank 0's (a callback that changes the model "
            "differently on each rank?)"))


def _buckets(size: int, itemsize: int) -> list[slice]:
    """Contiguous slices of the flat buffer of at most BUCKET_BYTES each: the buffer's order
    is reverse layer order, so the first bucket holds the last layers (the first finished)."""
    per_bucket = max(1, BUCKET_BYTES // itemsize)
    return [slice(start, min(start + per_bucket, size)) for start in range(0, size, per_bucket)]


def _in_memory_batches(trainer, args, epoch_seed, rank, batch_size, epoch_length):
    """Yields (X, y, weights) of the shard once per step of the epoch (the engine takes the
    next batch in its epoch order): a full permutation of the shard, a short shard's order
    repeated up to epoch_length rows (rank_epoch_order)."""
    n_rows = args.X.shape[0]
    shuffle = bool(args.shuffle)
    if n_rows < epoch_length:  # a short shard wraps around its order
        trainer.begin_epoch_with_order(
            rank_epoch_order(n_rows, epoch_length, epoch_seed, rank, shuffle), n_rows)
    else:
        trainer.begin_epoch(n_rows, shuffle, rank_epoch_seed(epoch_seed, rank) if shuffle else 0)
    while True:
        yield args.X, args.y, args.weights


def _streamed_batches(trainer, args, epoch_seed, rank, batch_size, epoch_length):
    """Yields the part (X, y, weights) holding the next batch, once per step: a memory-mapped
    or Parquet shard read window by window in its block-shuffled order (_data_sources.py,
    seeded with rank_epoch_seed), the order repeated past the shard's end up to epoch_length
    rows (rank_block_epoch_order gives the rows). Parts end on batch boundaries."""
    seed = rank_epoch_seed(epoch_seed, rank) if args.shuffle else 0
    with epoch_parts(args.X, None, None, args.shuffle, seed, batch_size,
                     epoch_length) as parts:
        for part in parts:
            if part.order is not None:
                trainer.begin_epoch_with_order(part.order, part.X.shape[0])
                rows = part.order.shape[0]
            else:
                trainer.begin_epoch(part.X.shape[0], False, 0)
                rows = part.X.shape[0]
            for _ in range(-(-rows // batch_size)):
                yield part.X, part.y, part.weights


def _local_gradient(trainer, data, error, buffer, batch_size, ranks, weighted):
    """This rank's part of a step: the gradient of its next batch of data (X, y, weights) into
    buffer[:-TAIL] and the tail [weight sum, weight sum × loss, flag] into buffer[-TAIL:]
    (error: this rank could not get the batch). Returns (the error it met or None, rows,
    Σ‖W‖² before the step, whether its contention guard fell back to one thread)."""
    try:
        if error is not None:
            raise error
        # Unweighted, every rank's batch has the same rows: the global mean is the mean of
        # the ranks' means, 1/R applied to dL/dlogits in the engine (no pass over the
        # buffer). Weighted: each mean is scaled by its weight sum, the sum by 1/Σ after.
        loss, rows, weight_sum, squares, fell_back = trainer.gradient_step(
            *data, batch_size, buffer[:-_TAIL], 1.0 if weighted else 1.0 / ranks)
        flag = _OK if math.isfinite(loss) else _DIVERGED
    except Exception as exc:  # noqa: BLE001 - reported to every rank through the flag
        error, flag, loss, rows, weight_sum, squares = exc, _RAISED, 0.0, batch_size, 0.0, 0.0
        fell_back = False
    buffer[-_TAIL:] = (weight_sum, loss * weight_sum if flag == _OK else 0.0, flag)
    return error, rows, squares, fell_back


def _agreed_outcome(comm, tails, error, epoch):
    """Every rank's tail summed (in rank order): raises on every rank when a rank's step
    failed; else (total weight, Σ weight × loss)."""
    flag = max(float(t[2]) for t in tails)  # (a sum of flags from the allreduce: its max)
    if flag != _OK:
        if flag >= _RAISED:
            _agree(comm, error, f"computing a step of epoch {epoch + 1}")
        raise _AgreedError(diverged(epoch))
    return sum(float(t[0]) for t in tails), sum(float(t[1]) for t in tails)


class _Exchange:
    """How a step's gradients are summed over the ranks and the update applied: over shared
    memory when every rank is on one node (_node_exchange.py), else MPI allreduce. Also
    chooses the engine of each epoch (begin_epoch): on the model's own arrays, or, for a
    sharded update, on the node's one shared copy of the parameters."""

    def __init__(self, comm, MPI, elements, weighted):
        self.comm, self.MPI, self.weighted = comm, MPI, weighted
        self.rank, self.ranks = comm.Get_rank(), comm.Get_size()
        self.elements, self.steps, self.node = elements, 0, None
        self.grad = None  # the allreduce's buffer
        # The engine's parameters: None (the model's arrays, `trained` their ids) or the
        # shared copy's (weights, biases), in which case the model's are current only when
        # model_current (after end_epoch).
        self.shared_parameters, self.trained, self.model_current = None, None, True

    @classmethod
    def create(cls, comm, MPI, model, weighted) -> _Exchange:
        """Collective: the node's shared memory when every rank wants it (NODE_EXCHANGE, the
        FASTMLP_MPI_NODE_EXCHANGE variable not "0") and it can be had, else the allreduce."""
        sizes = model.layer_sizes
        elements = sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes, sizes[1:]))
        exchange = cls(comm, MPI, elements, weighted)
        wanted = NODE_EXCHANGE and os.environ.get("FASTMLP_MPI_NODE_EXCHANGE", "1") != "0"
        if comm.allreduce(wanted, op=MPI.LAND):
            # (one more value per slot: whether the rank's sharded update stayed finite)
            exchange.node = NodeExchange.create(comm, MPI, elements + _TAIL + 1, elements,
                                                model._dtype)
        if exchange.node is None:
            exchange.grad = np.empty(elements + _TAIL, dtype=model._dtype)
            exchange.buckets = _buckets(exchange.grad.size, exchange.grad.itemsize)
        else:
            exchange.ranges = shard_ranges(elements, exchange.ranks)
        return exchange

    def free(self) -> None:
        """Collective: releases the shared memory (call where every rank does)."""
        if self.node is not None:
            self.node.free()
            self.node = None

    def begin_epoch(self, model, trainer, make_trainer):
        """Collective: the engine for the next epoch, trainer or a new one (make_trainer(
        parameters=...) gives it). A rule without state (plain SGD) on 2+ ranks of one node
        trains the node's shared copy of the parameters, which every rank reads, each
        updating its slice (step); rank 0 copies its model's parameters there (the replicas
        were checked equal). Otherwise the engine trains each rank's model."""
        if self.node is not None and self.ranks > 1 and not trainer.update_reads_state():
            views = _parameter_views(model, self.node.parameters)
            if self.rank == 0:
                for array, view in zip(list(model.weights) + list(model.biases), views):
                    view[...] = array
            self.node.exchange()
            if self.shared_parameters is None:
                count = len(model.weights)
                self.shared_parameters = (views[:count], views[count:])
                trainer = make_trainer(parameters=self.shared_parameters)
            self.model_current = False
        elif self.shared_parameters is not None or _parameter_ids(model) != self.trained:
            self.shared_parameters = None  # (the rule has state now)
            trainer = make_trainer(parameters=None)
            self.trained = _parameter_ids(model)  # (a callback may assign new arrays)
        return trainer

    def end_epoch(self, model) -> None:
        """The model's arrays get the parameters trained in shared memory (this rank's
        copy; no rank writes them before the next begin_epoch)."""
        if not self.model_current:
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
        into its slot of the next step (which no rank reads now) and compares their bytes
        with rank 0's, then the ranks agree (an allgather, after which the slots are free)."""
        if self.node is None:
            return _check_replicas(self.comm, model, epoch)
        slots = self.node.sources(self.steps)
        mine = _parameter_views(model, slots[self.rank])
        for array, view in zip(list(model.weights) + list(model.biases), mine):
            view[...] = array
        self.node.exchange()
        size = sum(view.size for view in mine)
        bits = np.dtype(f"u{slots[0].itemsize}")  # bitwise: NaN equals the same NaN
        same = np.array_equal(slots[self.rank][:size].view(bits), slots[0][:size].view(bits))
        verdicts = self.comm.allgather(same)
        _raise_if_replicas_differ([r for r, ok in enumerate(verdicts) if not ok], epoch)

    def step(self, trainer, data, error, args, batch_size, epoch):
        """One data-parallel step on the next batch of data, or, when this rank could not
        get it, a step that reports error; returns (global data loss, L2 penalty, global
        rows, whether this rank's contention guard fell back to one thread)."""
        step = self.steps
        self.steps += 1
        slot = self.grad if self.node is None else self.node.slot(step)[:-1]
        error, rows, squares, fell_back = _local_gradient(
            trainer, data, error, slot, batch_size, self.ranks, self.weighted)
        global_rows = rows * self.ranks  # every rank runs the same rows per step (shards wrap)
        if self.node is None:
            total_weight, loss_sum = self._allreduce_update(trainer, error, global_rows, epoch)
        else:
            total_weight, loss_sum = self._node_update(trainer, error, global_rows, epoch, step)
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
            raise _AgreedError(diverged(epoch))  # identical replicas: every rank sees it
        return total_weight, loss_sum

    def _node_update(self, trainer, error, global_rows, epoch, step):
        node = self.node
        node.exchange()  # every rank's gradient is in its slot; nobody reads parameters now
        slots = node.sources(step)
        total_weight, loss_sum = _agreed_outcome(
            self.comm, [s[-_TAIL - 1:-1] for s in slots], error, epoch)
        gradients = [s[:self.elements] for s in slots]
        coefficients = ([float(s[-_TAIL - 1]) / total_weight for s in slots] if self.weighted
                        else [1.0] * self.ranks)
        if self.shared_parameters is None:
            # Every rank updates its own model from the same sum (its optimizer's state
            # stays current): the same numbers everywhere, so the same verdict.
            finite = trainer.apply_gradient_sum(gradients, coefficients, global_rows, 0,
                                                self.elements)
            trainer.finish_gradient_sum(finite, 0, self.elements)
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
            raise _AgreedError(diverged(epoch))  # every rank knows it
        return total_weight, loss_sum


def _parameter_views(model, flat):
    """Views of flat shaped as model's weights then biases, one after the other."""
    views, start = [], 0
    for array in list(model.weights) + list(model.biases):
        views.append(flat[start:start + array.size].reshape(array.shape))
        start += array.size
    return views


@contextlib.contextmanager
def _freed_together(exchange, model):
    """Frees the exchange's shared memory (collective) when fit ends on every rank together:
    normally or with an error all ranks raise (the model gets the last parameters first).
    Any other error aborts the job (fit)."""
    try:
        yield exchange
    except _AgreedError:
        exchange.end_epoch(model)
        exchange.free()
        raise
    exchange.free()


def _end_epoch(comm, model, args, history, optimizer, rng, epoch, batch_size, shuffle,
               checkpoint, verbose, rank):
    """Validation (reduced over the ranks), printing and checkpoint (rank 0), callbacks.
    Returns whether a callback asked to stop."""
    if args.validation is not None:
        X_val, y_val = args.validation
        val_loss, val_accuracy = validation_scores(model, X_val, y_val)
        n_val = X_val.shape[0]
        sums = comm.allreduce(np.array([val_loss * n_val, (val_accuracy or 0.0) * n_val,
                                        n_val], dtype=np.float64))
        history.val_loss.append(float(sums[0] / sums[2]))
        if val_accuracy is not None:
            history.val_accuracy.append(float(sums[1] / sums[2]))
    if verbose and rank == 0:
        print_epoch(history, args.epochs, verbose, None)
    done = epoch + 1
    if (rank == 0 and checkpoint is not None
            and (done % args.checkpoint_every == 0 or done == args.epochs)):
        _save_checkpoint(model, checkpoint, optimizer, rng, history, done, batch_size,
                         bool(shuffle))
    stop = False
    for callback in args.callbacks:
        stop = bool(callback(model, history)) or stop
    return stop


def _check_distinct_shards(comm, X) -> None:
    """Collective: ValueError on every rank when two ranks of one host read the same rows of
    the same file (every rank passed the whole memory-mapped file, or a ParquetSource made
    without comm/rank/size): each rank must pass its own shard."""
    if isinstance(X, ParquetSource):
        key = ("row groups", os.path.realpath(X.path), X.rank, X.size)
    elif isinstance(X, ArrayBlocks) and X.file_range is not None:
        key = ("rows", os.path.realpath(X.file_range[0]), X.file_range[1], X.shape[0])
    else:
        key = None  # (still collective: the other ranks' X may be files)
    keys = comm.allgather((_mpi().Get_processor_name(), key))
    for r, theirs in enumerate(keys):
        if theirs[1] is not None and keys.index(theirs) != r:
            raise _AgreedError(ValueError(
                f"ranks {keys.index(theirs)} and {r} read the same {key[0]} of "
                f"{theirs[1][1]!r}: each rank must pass its own shard (ParquetSource(path, "
                "comm=comm); a memory-mapped X[fastmlp.shard_rows(len(X), comm)])"))


def _check_same_setup(comm, model, args, shuffle, checkpoint, resume) -> None:
    """Collective: ValueError on every rank unless all ranks train the same model the same
    way (the shards may differ in length)."""
    optimizer = args.optimizer
    setup = {
        "model": (tuple(model.layer_sizes), model.activation, model.output,
                  np.dtype(model.dtype).name, model.precision),
        "batch_size": args.batch_size, "epochs": args.epochs, "shuffle": bool(shuffle),
        "alpha": args.alpha, "checkpoint_every": args.checkpoint_every,
        "optimizer": (type(optimizer).__name__, sorted(optimizer.hyperparameters().items())),
        "validation_data": args.validation is not None,
        "sample_weight": args.weights is not None,
        "checkpoint": (checkpoint is not None, bool(resume)),
    }
    setups = comm.allgather(setup)
    for r, theirs in enumerate(setups):
        differ = [key for key in setup if theirs[key] != setups[0][key]]
        if differ:
            details = ", ".join(f"{key}={theirs[key]!r} vs {setups[0][key]!r}"
                                for key in differ)
            raise _AgreedError(ValueError(
                f"fit(comm=...) needs the same arguments on every rank: rank {r} differs "
                f"from rank 0 in {details}"))
