"""The training loop behind ``MLP.fit``: validation of fit's arguments, the epochs in the C++
engine (trainer.h) with control back in Python about every 50 ms, divergence, history,
validation scores, checkpoints and resume, callbacks.

Legend: N samples, B batch rows; an epoch visits every sample once, in ceil(N / B) steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from fastmlp import _core, io
from fastmlp._threads import one_thread_fallback_message
from fastmlp._sparse import SparseInput, sparse_updates_mode
from fastmlp._data_sources import epoch_parts, training_data
from fastmlp._validation import positive_float, positive_int
from fastmlp.optim import SGD, Optimizer, by_name

__all__ = ["History", "fit"]


@dataclass
class History:
    """What ``MLP.fit`` measured, one entry per epoch.

    loss: mean training loss over the epoch's samples (batch losses weighted by batch size),
    computed while training, the L2 penalty included. l2_penalty: that penalty's share of
    ``loss`` (0 without ``alpha``). val_loss / val_accuracy: on ``validation_data`` after each
    epoch (empty without it). samples_per_second: training throughput of each epoch.
    one_thread_fallback: whether, in that epoch, a training step spread over several threads
    measured slower than one thread would have been (another process held a core), so the
    rest of the epoch ran on one thread (docs/threads.md). The results are the same either way.
    """

    loss: list[float] = field(default_factory=list)
    l2_penalty: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    samples_per_second: list[float] = field(default_factory=list)
    one_thread_fallback: list[bool] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def plot(self, path=None, ax=None):
        """Loss (and validation accuracy) curves with matplotlib (the ``plot`` extra); saved
        to ``path`` when given. Returns the matplotlib Figure."""
        from fastmlp.plot import plot_history
        return plot_history(self, path=path, ax=ax)


def _draw_epoch_seed(rng: np.random.Generator) -> int:
    """The next epoch's shuffling seed, drawn from fit's generator (default_rng(seed))."""
    return int(rng.integers(0, 2**63))


def epoch_seeds(seed):
    """The seed of each epoch's shuffle, as fit draws them from ``seed`` (None: fresh
    entropy)."""
    rng = np.random.default_rng(seed)
    while True:
        yield _draw_epoch_seed(rng)


def epoch_order(n_samples: int, epoch_seed: int) -> np.ndarray:
    """The sample order of an epoch, as the engine draws it (for reproducing its batches)."""
    return _core.shuffled_indices(n_samples, epoch_seed)


def new_trainer(model, optimizer: Optimizer, batch_size: int, alpha: float,
                sparse_input: bool = False, lazy_sparse_updates: bool = False,
                parameters=None):
    """The C++ engine for model's parameters, updated in place by optimizer's rule.
    parameters: (weights, biases), arrays of model's shapes and dtype the engine trains in
    their place (shared memory: _distributed.py)."""
    trainer_type = _core.TrainerFloat32 if model.dtype == np.float32 else _core.TrainerFloat64
    weights, biases = (parameters if parameters is not None  # (the writable ones)
                       else (model._weights.arrays(), model._biases.arrays()))
    optimizer._prepare(weights + biases)
    return trainer_type(weights, biases, model.activation, model.output,
                        optimizer._rule, alpha, batch_size, sparse_input, lazy_sparse_updates,
                        model.precision)


_CALL_SECONDS = 0.05  # how long an engine call lasts, about


def run_steps(trainer, X, y, weights, batch_size: int, max_steps: int):
    """One engine call: up to max_steps mini-batches of the epoch, on dense or sparse X.

    With sparse X each call also copies the first layer into the engine's working layout and
    back (StepsResult.sync_seconds): the engine is asked for the rest of the epoch and stops
    after ~50 ms or 20 times that copy, whichever is longer (Trainer::run)."""
    if isinstance(X, SparseInput):
        return trainer.run_sparse(X.indptr, X.indices, X.values, y, weights, batch_size,
                                  2**62, _CALL_SECONDS)
    return trainer.run(X, y, weights, batch_size, max_steps)


def _parameter_ids(model) -> list[int]:
    """Which arrays the model's parameters are (the engine holds the ones it was built with,
    so an id is never reused while it runs)."""
    return [id(a) for a in model._weights.arrays() + model._biases.arrays()]


@dataclass
class FitArguments:
    """fit's arguments, validated and converted (shared with _distributed.fit)."""
    X: object  # ndarray (C-contiguous), SparseInput or data read window by window
    y: np.ndarray | None
    weights: np.ndarray | None
    shuffle: object  # False, True, "full" or "block" (_data_sources.training_data)
    sparse: bool
    lazy: bool
    alpha: float
    epochs: int
    batch_size: int  # the requested size; fit clamps it to the rows it trains on
    checkpoint_every: int
    optimizer: Optimizer
    callbacks: list
    validation: tuple | None  # (X_val, y_val)


def fit_arguments(model, X, y, *, epochs, batch_size, optimizer, shuffle, validation_data,
                  callbacks, sample_weight, alpha, checkpoint_every,
                  sparse_updates) -> FitArguments:
    """Validates fit's arguments (ValueError / TypeError saying what is wrong)."""
    # X: an ndarray, a SparseInput, or data read window by window (_data_sources.py).
    X, y, weights, shuffle = training_data(model, X, y, sample_weight, shuffle)
    lazy = sparse_updates_mode(sparse_updates)
    sparse = isinstance(X, SparseInput)
    alpha = positive_float(alpha, "alpha", allow_zero=True)
    epochs = positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    if optimizer is None:
        optimizer = SGD(lr=0.01)
    elif isinstance(optimizer, str):
        optimizer = by_name(optimizer)
    elif not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastmlp optimizer (SGD, Adam, AdamW) or its name, "
                        f"got {optimizer!r}")
    callbacks = list(callbacks or [])
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be callables taking (model, history)")
    validation = None
    if validation_data is not None:
        try:
            X_val, y_val = validation_data
        except (TypeError, ValueError):
            raise TypeError("validation_data must be a pair (X_val, y_val)") from None
        X_val = model._features(X_val, "validation X")
        validation = (X_val, model._labels(y_val, X_val.shape[0]))
    if isinstance(X, np.ndarray):
        X = np.require(X, requirements=["C", "A"])  # the engine reads rows in place
    return FitArguments(X, y, weights, shuffle, sparse, lazy, alpha, epochs, batch_size,
                        checkpoint_every, optimizer, callbacks, validation)


@contextlib.contextmanager
def training_guard(model):
    """Marks model as being trained for the block; RuntimeError if it already is."""
    with model._lock:
        if model._training:
            raise RuntimeError("this model is already being trained (fit is running in "
                               "another thread); wait for it or train a copy")
        model._training = True
        model._trainer_thread = threading.get_ident()
        model._drop_pack()  # the engine updates the weights in place
    try:
        yield
    finally:
        with model._lock:
            model._drop_pack()
            model._training = False


def validation_scores(model, X_val, y_val) -> tuple[float, float | None]:
    """(loss, accuracy or None for regression) of the model on validation data."""
    logits = model._forward(X_val)
    loss = model._loss_and_dlogits(logits, y_val)[0]
    accuracy = (model._accuracy(model._predict_logits(logits), y_val)
                if model.is_classifier else None)
    return loss, accuracy


def fit(model, X, y, *, epochs, batch_size, optimizer, shuffle, seed, validation_data, verbose,
        callbacks, sample_weight, alpha, checkpoint, checkpoint_every, resume,
        sparse_updates="exact") -> History:
    """``MLP.fit`` (see its documentation) in one process; _distributed.fit with comm."""
    args = fit_arguments(model, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                         shuffle=shuffle, validation_data=validation_data, callbacks=callbacks,
                         sample_weight=sample_weight, alpha=alpha,
                         checkpoint_every=checkpoint_every, sparse_updates=sparse_updates)
    X, y, weights, shuffle = args.X, args.y, args.weights, args.shuffle
    sparse, lazy, alpha, epochs = args.sparse, args.lazy, args.alpha, args.epochs
    checkpoint_every, optimizer, callbacks = args.checkpoint_every, args.optimizer, args.callbacks
    batch_size = min(args.batch_size, X.shape[0])

    with training_guard(model):
        # Draws each epoch's shuffling seed. Without shuffling the seeds are unused: no
        # generator is made (it costs ~10 µs, a lot for a fit of a few small batches),
        # unless a checkpoint will store its state.
        rng = (np.random.default_rng(seed) if shuffle or checkpoint is not None
               else None)
        history = History()
        start_epoch = 0
        if checkpoint is not None and resume and os.path.exists(checkpoint):
            optimizer, start_epoch = _resume(model, checkpoint, rng, history, batch_size,
                                             shuffle)
        trainer = new_trainer(model, optimizer, batch_size, alpha, sparse, lazy)
        trained = _parameter_ids(model)
        n = X.shape[0]
        # The first engine call runs about 0.5 GFLOP (a few ms), then the count adapts so
        # that Python regains control about every 50 ms (Ctrl-C, progress).
        flops_per_step = 6 * batch_size * sum(
            i * o for i, o in zip(model._layer_sizes, model._layer_sizes[1:]))
        steps_per_call = max(1, int(5e8 // flops_per_step))
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            epoch_seed = _draw_epoch_seed(rng) if rng else 0
            total = penalty = 0.0
            fell_back = None  # the engine's wall/CPU ratio of the step that lost, if one did
            # In-memory X is one part, shuffled by the engine; data read from disk comes in
            # parts of whole batches, in a block-shuffled order (_shuffle.py).
            with epoch_parts(X, y, weights, shuffle, epoch_seed, batch_size) as parts:
                for part in parts:
                    steps_per_call, part_loss, part_penalty, part_fell_back = _train_part(
                        model, trainer, part, batch_size, steps_per_call, epoch)
                    total += part_loss
                    penalty += part_penalty
                    fell_back = part_fell_back if part_fell_back is not None else fell_back
            elapsed = time.perf_counter() - started
            history.loss.append(total / n)
            history.l2_penalty.append(penalty / n)
            history.samples_per_second.append(n / elapsed if elapsed > 0 else math.inf)
            history.one_thread_fallback.append(fell_back is not None)
            if args.validation is not None:
                val_loss, val_accuracy = validation_scores(model, *args.validation)
                history.val_loss.append(val_loss)
                if val_accuracy is not None:
                    history.val_accuracy.append(val_accuracy)
            if verbose:
                print_epoch(history, epochs, verbose, fell_back)
            done = epoch + 1
            if checkpoint is not None and (done % checkpoint_every == 0 or done == epochs):
                _save_checkpoint(model, checkpoint, optimizer, rng, history, done,
                                 batch_size, shuffle)
            stop = False
            for callback in callbacks:
                stop = bool(callback(model, history)) or stop
            if stop:
                break
            if _parameter_ids(model) != trained:
                # A callback assigned new parameter arrays (model.weights[l] = ..., or whole
                # lists): the engine points into the arrays it was built with, so it follows
                # the new ones by being rebuilt (microseconds; the optimizer's state stays).
                trainer = new_trainer(model, optimizer, batch_size, alpha, sparse, lazy)
                trained = _parameter_ids(model)
        return history


def _train_part(model, trainer, part, batch_size: int, steps_per_call: int, epoch: int):
    """Trains on one part of an epoch (_data_sources.EpochPart) in engine calls of about
    50 ms; returns (steps_per_call for the next call, loss sum, penalty sum, the wall/CPU
    ratio of a step that fell back to one thread or None)."""
    if part.order is not None:
        trainer.begin_epoch_with_order(part.order, part.X.shape[0])
    else:
        trainer.begin_epoch(part.X.shape[0], part.shuffle, part.seed)
    total = penalty = 0.0
    fell_back = None
    while True:
        call_started = time.perf_counter()
        with model._lock:
            result = run_steps(trainer, part.X, part.y, part.weights, batch_size,
                               steps_per_call)
        if result.nonfinite:
            raise diverged(epoch)
        total += result.data_loss_sum + result.penalty_sum
        penalty += result.penalty_sum
        if result.fell_back:
            fell_back = result.wall_to_cpu
        if result.epoch_done:
            return steps_per_call, total, penalty, fell_back
        # Back to Python about every 50 ms: responsive to Ctrl-C, cheap per step.
        elapsed = max(time.perf_counter() - call_started, 1e-6)
        steps_per_call = max(1, min(steps_per_call * 4,
                                    int(steps_per_call * _CALL_SECONDS / elapsed)))


def diverged(epoch: int) -> FloatingPointError:
    """The error of a step whose loss, gradients or update were not finite (0-based epoch)."""
    return FloatingPointError(
        f"training diverged at epoch {epoch + 1}: the loss, the gradients or the updated "
        "weights were not finite (NaN or infinity). The model keeps its weights from before "
        "that step; the optimizer's state may be corrupt, use a new one. Lower the learning "
        "rate or scale the inputs.")


def print_epoch(history: History, epochs: int, verbose, fell_back) -> None:
    # Losses to 4 significant digits: a small loss does not print as 0.0000.
    line = f"epoch {history.epochs:>3}/{epochs}  loss {history.loss[-1]:.4g}"
    if history.val_loss:
        line += f"  val_loss {history.val_loss[-1]:.4g}"
    if history.val_accuracy:
        line += f"  val_accuracy {history.val_accuracy[-1]:.4f}"
    line += f"  {history.samples_per_second[-1]:,.0f} samples/s"
    if fell_back is not None:
        line += "\n" + one_thread_fallback_message(fell_back)
    print(line, file=verbose if hasattr(verbose, "write") else sys.stdout, flush=True)


def _save_checkpoint(model, path, optimizer, rng, history, epochs_done, batch_size, shuffle):
    io.save_checkpoint(path, model, optimizer, {
        "epochs_done": epochs_done, "rng_state": rng.bit_generator.state,
        "history": dataclasses.asdict(history), "batch_size": batch_size,
        "shuffle": shuffle, "steps": optimizer.steps})


def _resume(model, path, rng, history: History, batch_size: int, shuffle: bool):
    """Loads a checkpoint into this model, rng and history; returns (optimizer, epoch)."""
    saved, optimizer, meta = io.read_checkpoint(path)
    mine = (model.layer_sizes, model.activation, model.output, model.dtype)
    theirs = (tuple(saved.layer_sizes), saved.activation, saved.output, saved.dtype)
    if mine != theirs:
        raise ValueError(f"checkpoint {os.fspath(path)!r} holds a {saved.describe()}, not this "
                         f"{model!r}")
    if (meta["batch_size"], meta["shuffle"]) != (batch_size, shuffle):
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} was written with batch_size="
            f"{meta['batch_size']}, shuffle={meta['shuffle']}; resume with the same values")
    try:
        rng.bit_generator.state = meta["rng_state"]
        for key, values in meta["history"].items():
            kind = bool if key == "one_thread_fallback" else float
            getattr(history, key).extend(kind(v) for v in values)
        # (A checkpoint of fastmlp 0.1 has no l2_penalty: unknown, NaN.)
        history.l2_penalty.extend([math.nan] * (len(history.loss) - len(history.l2_penalty)))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"checkpoint {os.fspath(path)!r} is malformed: {exc}") from None
    model.weights, model.biases = saved.weights, saved.biases
    return optimizer, int(meta["epochs_done"])

