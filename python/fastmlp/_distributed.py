"""Data-parallel training over MPI ranks: ``MLP.fit(..., comm=comm)`` (docs/distributed.md).

Each rank holds its own shard of the rows and a replica of the model. A step is two engine
calls with the ranks' exchange between them (_exchange.py): ``gradient_step`` writes the
batch's gradient into ONE flat buffer (trainer.h: per layer from the last to the first, dW_l
then db_l); then
- ranks that share one node (the usual case, and the only one this machine can test) read
  each other's buffers from an MPI shared-memory window (_node_exchange.py) and sum them in
  rank order inside the update (``apply_gradient_sum``, the optimizer's rule of optim.cpp,
  the same code as the fused path); with a rule without state (plain SGD) the ranks train one
  shared copy of the parameters, each updating its 1/R slice;
- otherwise the buffer is summed with ``comm.Allreduce`` (mpi4py's buffer interface: no
  pickling, the GIL released), in buckets of up to ``BUCKET_BYTES``, and ``apply_gradients``
  updates each rank's model.
Either way every rank's parameters get the same update from the same sum, so the replicas
stay bitwise identical (checked after every epoch).

Legend: R ranks, N_r rows of rank r's shard, B rows per rank and step (``batch_size``),
E = max_r N_r the rows of an epoch on every rank (smaller shards wrap around their order).
Each rank's buffer carries 3 more values: [Σ sample weights, Σ weights × loss, failure flag],
so that one exchange gives the global weighted mean of the gradient and the loss (exact: each
rank's mean gradient is weighted by its weight sum over the total) and the ranks' agreement
on whether the step failed.

Failures: a rank whose step raises (bad labels in its shard) or whose loss is not finite sets
the flag; after the exchange every rank sees it and raises (``FloatingPointError`` for a
divergence, the failing rank's own error there, ``RuntimeError`` naming it elsewhere). Errors
outside a step (validation of the arguments, callbacks, checkpoints) are agreed on with an
allgather before going on (_agreement.py). Anything else (Ctrl-C, an error the other ranks
cannot know about) prints the traceback and calls ``comm.Abort``: the job ends, it never
hangs.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback

import numpy as np

from fastmlp import _core
from fastmlp._data_sources import ArrayBlocks, ParquetSource, epoch_parts
from fastmlp._agreement import (AgreedError, broadcast_parameters, check_replicas, collective,
                                run_agreed)
from fastmlp._exchange import Exchange, released_together
from fastmlp._shuffle import block_shuffled_order
from fastmlp._sparse import SparseInput
from fastmlp._threads import available_cpus, get_num_threads, set_num_threads
from fastmlp._validation import rank_and_size
from fastmlp._training import (History, _draw_epoch_seed, _resume,
                               _save_checkpoint, fit_arguments, new_trainer, print_epoch,
                               training_guard, validation_scores)

# (run_agreed, broadcast_parameters, check_replicas: _agreement.py's, for the estimators)
__all__ = ["fit", "rank_epoch_seed", "rank_epoch_order", "rank_block_epoch_order", "shard_rows",
           "run_agreed", "broadcast_parameters", "check_replicas"]



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
    except AgreedError as agreed:
        raise agreed.error from None
    except BaseException as exc:  # noqa: BLE001 - one rank alone: end the job, never hang
        sys.stderr.write(f"fastmlp: rank {comm.Get_rank()} of {comm.Get_size()} failed "
                         "where the other ranks cannot follow; aborting the MPI job\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
        # The rank's stderr reaches the terminal through mpiexec's proxy, which the abort
        # kills: on a busy machine the traceback was lost (an empty stderr, exit 130). A
        # moment to forward it first; the job is ending anyway.
        time.sleep(0.5)
        comm.Abort(130 if isinstance(exc, KeyboardInterrupt) else 1)
        raise  # pragma: no cover - Abort does not return
    finally:
        if get_num_threads() != saved_threads:
            set_num_threads(saved_threads)


def _fit(model, X, y, comm, epochs, batch_size, optimizer, shuffle, seed, validation_data,
         verbose, callbacks, sample_weight, alpha, checkpoint, checkpoint_every, resume,
         sparse_updates) -> History:
    MPI = _mpi()
    rank = comm.Get_rank()

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
    args, rng = collective(comm, "validating its arguments", validate)
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
        resumed = comm.bcast(collective(comm, "resuming from the checkpoint",
                                         resume_on_rank_0))
        if resumed is not None:  # the checkpoint's optimizer, history and generator
            optimizer, start_epoch, saved_history, rng_state = resumed
            if rank != 0:
                history = saved_history
                rng.bit_generator.state = rng_state
        else:
            # An optimizer used before (its state and step count) continues as rank 0's.
            broadcast_optimizer_state(comm, optimizer)
        exchange = Exchange.create(comm, MPI, model, args.weights is not None)
        exchange.broadcast_parameters(model)
        trainer = None  # (the engine of each epoch: exchange.begin_epoch)

        def make_trainer(parameters):
            return new_trainer(model, optimizer, batch_size, args.alpha, parameters=parameters)
        with released_together(exchange, model):
            for epoch in range(start_epoch, args.epochs):
                trainer = exchange.begin_epoch(model, optimizer, trainer, make_trainer)
                started = time.perf_counter()
                epoch_seed = _draw_epoch_seed(rng) if shuffle else 0
                make = _streamed_batches if streamed else _in_memory_batches
                total = penalty = 0.0
                samples, fell_back = 0, False
                with contextlib.closing(make(trainer, args, epoch_seed, rank, batch_size,
                                             epoch_length)) as batches:
                    for _ in range(steps_per_epoch):
                        # A read that fails (data read from disk) fails this rank's step: the
                        # other ranks learn it in the step's exchange.
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
                # (the model's arrays are read by validation, checkpoints and callbacks)
                exchange.end_epoch(model, needed=bool(
                    args.validation is not None or checkpoint is not None or args.callbacks
                    or epoch + 1 == args.epochs))
                history.loss.append(total / samples)
                history.l2_penalty.append(penalty / samples)
                history.samples_per_second.append(samples / elapsed if elapsed > 0 else math.inf)
                # (any rank's contention guard: docs/threads.md)
                history.one_thread_fallback.append(comm.allreduce(fell_back, op=MPI.LOR))
                stop = collective(comm, "ending an epoch", lambda: _end_epoch(
                    comm, model, args, history, optimizer, rng, epoch, batch_size, shuffle,
                    checkpoint, verbose, rank))
                exchange.check_replicas(model, epoch)
                if comm.allreduce(bool(stop), op=MPI.LOR):
                    break

        return history

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


def broadcast_optimizer_state(comm, optimizer) -> None:
    """Collective: rank 0's optimizer state on every rank. The step count and flags go
    pickled; the state arrays (as large as the model: 8 MB for the wide net, ~30 ms pickled
    and broadcast) by Bcast, and not at all when they hold zeros on every rank in the same
    shapes (plain SGD's unused momentum buffers; an optimizer not used yet)."""
    MPI, rule, rank = _mpi(), optimizer._rule, comm.Get_rank()
    layout = (tuple(map(tuple, rule.shapes)), rule.dtype, tuple(rule.state_names))
    zeros = comm.allreduce(rule.state_is_zero, op=MPI.LAND)
    header = {"steps": rule.steps, "started": [rule.started(i) for i in range(len(layout[0]))],
              "layout": layout}
    header = comm.bcast(header if rank == 0 else None)
    if zeros and header["layout"] == layout:  # the same zeros here: count and flags only
        optimizer.steps = header["steps"]
        for i, started in enumerate(header["started"]):
            rule.set_started(i, bool(started))
        return
    state = optimizer.state_dict() if rank == 0 else None
    state = comm.bcast(None if state is None else dict(state, state=None))
    shapes, dtype, names = header["layout"]
    arrays = []
    for i, shape in enumerate(shapes):
        arrays.append({})
        for name in names:
            array = (rule.state(i, name) if rank == 0 else
                     np.zeros(shape, dtype=dtype) if zeros else np.empty(shape, dtype=dtype))
            if not zeros:
                comm.Bcast(array, root=0)
            arrays[i][name] = array
    if rank != 0:
        optimizer.load_state_dict(dict(state, state=arrays))


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
            raise AgreedError(ValueError(
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
            raise AgreedError(ValueError(
                f"fit(comm=...) needs the same arguments on every rank: rank {r} differs "
                f"from rank 0 in {details}"))
