"""The multilayer perceptron: parameters, forward, loss and gradients, training loop.

Legend: N samples, L layers, ``layer_sizes = [n_0, ..., n_L]``; layer l maps n_{l-1}
features to n_l with ``W_l`` of shape (n_l, n_{l-1}) (the ``torch.nn.Linear`` layout: row =
target unit, column = source unit) and ``b_l`` of shape (n_l,). Hidden layers apply the
activation; the last layer gives the logits, turned into probabilities by softmax (K = n_L
classes) or, with ``output="sigmoid"`` and n_L = 1, by the logistic sigmoid (labels 0/1);
``output="identity"`` is regression: n_L real outputs, half squared error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from fastmlp import _core
from fastmlp._threads import one_thread_fallback_message
from fastmlp._validation import (cache_aligned, check_activation, feature_matrix, integer_labels,
                                 model_dtype,
                                 positive_float,
                                 positive_int, regression_targets, sample_weights)
from fastmlp.optim import SGD, Optimizer

__all__ = ["MLP", "History"]


def _draw_epoch_seed(rng: np.random.Generator) -> int:
    """The next epoch's shuffling seed, drawn from fit's generator (default_rng(seed))."""
    return int(rng.integers(0, 2**63))


def _epoch_seeds(seed):
    """The seed of each epoch's shuffle, as fit draws them from ``seed`` (None: fresh
    entropy)."""
    rng = np.random.default_rng(seed)
    while True:
        yield _draw_epoch_seed(rng)


def _epoch_order(n_samples: int, epoch_seed: int) -> np.ndarray:
    """The sample order of an epoch, as the engine draws it (for reproducing its batches)."""
    return _core.shuffled_indices(n_samples, epoch_seed)


def _new_trainer(model, optimizer, batch_size: int, alpha: float):
    """The C++ engine for model's parameters, updated in place by optimizer's rule."""
    trainer_type = _core.TrainerFloat32 if model.dtype == np.float32 else _core.TrainerFloat64
    optimizer._prepare(list(model.weights) + list(model.biases))
    return trainer_type(list(model.weights), list(model.biases), model.activation, model.output,
                        optimizer._rule, alpha, batch_size)

_OUTPUTS = ("softmax", "sigmoid", "identity")


@dataclass
class History:
    """What ``MLP.fit`` measured, one entry per epoch.

    loss: mean training loss over the epoch's samples (batch losses weighted by batch size),
    computed while training. val_loss / val_accuracy: on ``validation_data`` after each epoch
    (empty without it). samples_per_second: training throughput of each epoch.
    one_thread_fallback: whether, in that epoch, a training step spread over several threads
    measured slower than one thread would have been (another process held a core), so the
    rest of the epoch ran on one thread (docs/threads.md). The results are the same either way.
    """

    loss: list[float] = field(default_factory=list)
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


class _ParameterList(list):
    """The model's weights or biases: item assignment is validated, the length is fixed."""

    def __init__(self, items, check):
        super().__init__(items)
        self._check = check

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            raise TypeError("assign parameters one at a time, or replace the whole list")
        position = range(len(self))[index]
        super().__setitem__(position, self._check(position, value))

    def _fixed(self, *args, **kwargs):
        raise TypeError("the number of layers is fixed; build a new MLP for another architecture")

    append = extend = insert = pop = remove = clear = sort = reverse = _fixed
    __delitem__ = __iadd__ = __imul__ = _fixed

    def __reduce__(self):
        return (_ParameterList, (list(self), self._check))


class MLP:
    """A multilayer perceptron classifier on fastmlp's C++ kernels.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_inputs, hidden..., n_outputs]``; ``[2, 3, 3]`` is 2 inputs, 3 hidden units,
        3 classes.
    activation : "relu", "tanh", "logistic" or "identity"
        Activation of the hidden layers.
    output : "softmax", "sigmoid" or "identity"
        Softmax over n_outputs >= 2 classes; one logit (n_outputs = 1) and the sigmoid for
        binary labels 0/1; or regression of n_outputs real targets (loss: ½ squared error).
    dtype : "float32" or "float64"
        Dtype of parameters and computation. Inputs of another dtype are converted (copied).
    seed : int or None
        Seeds the initialisation: weights ~ N(0, 2 / fan_in) (He), biases 0.
    """

    def __init__(self, layer_sizes, activation: str = "relu", output: str = "softmax",
                 dtype="float32", seed=None) -> None:
        try:
            sizes = tuple(layer_sizes)
        except TypeError:
            raise TypeError(f"layer_sizes must be a sequence of ints, got {layer_sizes!r}") from None
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least 2 entries (inputs, outputs), got {sizes}")
        self._layer_sizes = tuple(positive_int(s, f"layer_sizes[{i}]") for i, s in enumerate(sizes))
        check_activation(activation)
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        if output == "sigmoid" and self._layer_sizes[-1] != 1:
            raise ValueError(f"output='sigmoid' needs a final layer size of 1, got {self._layer_sizes[-1]}")
        if output == "softmax" and self._layer_sizes[-1] < 2:
            raise ValueError("output='softmax' needs at least 2 classes; "
                             "use output='sigmoid' for one logit")
        self._activation = activation
        self._output = output
        self._dtype = model_dtype(dtype)
        n_parameters = sum(o * (i + 1) for i, o in zip(self._layer_sizes, self._layer_sizes[1:]))
        if n_parameters * self._dtype.itemsize >= 2**62:  # beyond any address space
            raise ValueError(f"layer_sizes {list(self._layer_sizes)} need {n_parameters:,} "
                             "parameters, more than any memory can hold")

        rng = np.random.default_rng(seed)
        weights, biases = [], []
        for fan_in, fan_out in zip(self._layer_sizes[:-1], self._layer_sizes[1:]):
            w = rng.standard_normal((fan_out, fan_in)) * math.sqrt(2.0 / fan_in)
            weights.append(cache_aligned(w, self._dtype))
            biases.append(cache_aligned(np.zeros(fan_out), self._dtype))
        self._weights = _ParameterList(weights, self._check_weight)
        self._biases = _ParameterList(biases, self._check_bias)
        # Held while the engine updates the parameters and while a prediction reads them.
        self._lock = threading.RLock()
        self._training = False
        self._trainer_thread = None

    # ---- architecture -------------------------------------------------------------------

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return self._layer_sizes

    @property
    def activation(self) -> str:
        return self._activation

    @property
    def output(self) -> str:
        return self._output

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def n_features(self) -> int:
        return self._layer_sizes[0]

    @property
    def is_classifier(self) -> bool:
        return self._output != "identity"

    @property
    def n_classes(self) -> int:
        """Classes of a classifier (2 for a sigmoid output); ValueError for regression."""
        if not self.is_classifier:
            raise ValueError("a regression MLP (output='identity') has no classes")
        return 2 if self._output == "sigmoid" else self._layer_sizes[-1]

    def __repr__(self) -> str:
        return (f"MLP({list(self._layer_sizes)}, activation={self._activation!r}, "
                f"output={self._output!r}, dtype={self._dtype.name!r})")

    # ---- parameters ---------------------------------------------------------------------

    @property
    def weights(self) -> list[np.ndarray]:
        """Weights ``W_l`` of shape (n_l, n_{l-1}); assignable (shape and values validated)."""
        return self._weights

    @weights.setter
    def weights(self, values) -> None:
        self._weights = _ParameterList(self._check_list(values, "weights", self._check_weight),
                                       self._check_weight)

    @property
    def biases(self) -> list[np.ndarray]:
        """Biases ``b_l`` of shape (n_l,); assignable (shape and values validated)."""
        return self._biases

    @biases.setter
    def biases(self, values) -> None:
        self._biases = _ParameterList(self._check_list(values, "biases", self._check_bias),
                                      self._check_bias)

    def _check_list(self, values, name, check):
        values = list(values)
        if len(values) != len(self._layer_sizes) - 1:
            raise ValueError(f"{name} needs {len(self._layer_sizes) - 1} arrays (one per layer), "
                             f"got {len(values)}")
        return [check(i, v) for i, v in enumerate(values)]

    def _check_param(self, name: str, value, shape: tuple[int, ...]) -> np.ndarray:
        if getattr(self, "_training", False) and self._trainer_thread != threading.get_ident():
            raise RuntimeError(f"cannot assign {name} while another thread trains the model")
        a = np.asarray(value)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
        a = cache_aligned(a, self._dtype)  # always a copy: the model owns its parameters
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity")
        return a

    def _check_weight(self, i: int, value) -> np.ndarray:
        shape = (self._layer_sizes[i + 1], self._layer_sizes[i])
        return self._check_param(f"weights[{i}]", value, shape)

    def _check_bias(self, i: int, value) -> np.ndarray:
        return self._check_param(f"biases[{i}]", value, (self._layer_sizes[i + 1],))

    @property
    def n_parameters(self) -> int:
        return sum(w.size + b.size for w, b in zip(self._weights, self._biases))

    # ---- inference ----------------------------------------------------------------------

    def _features(self, X) -> np.ndarray:
        return feature_matrix(X, "X", self._dtype, self.n_features)

    def _labels(self, y, n_samples: int) -> np.ndarray:
        """Class labels (int64, (n,)) of a classifier; targets ((n, n_outputs), the model's
        dtype) of a regression MLP."""
        if not self.is_classifier:
            return regression_targets(y, "y", n_samples, self._layer_sizes[-1], self._dtype)
        return integer_labels(y, "y", self.n_classes, n_samples,
                              allow_bool=self._output == "sigmoid", allow_integral_float=True)

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """Logits of a validated X: all layers in one call into the core."""
        with self._lock:
            return _core.mlp_forward(X, self._weights, self._biases, self._activation)

    def forward(self, X) -> np.ndarray:
        """Logits (N, n_outputs) for inputs X (N, n_features)."""
        return self._forward(self._features(X))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, K); for ``output='sigmoid'``, columns [P(0), P(1)]."""
        if not self.is_classifier:
            raise TypeError("predict_proba needs a classifier (output 'softmax' or 'sigmoid')")
        logits = self.forward(X)
        if self._output == "softmax":
            return _core.softmax(logits)
        p1 = _core.sigmoid(logits)
        return np.concatenate([1.0 - p1, p1], axis=1)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (N,), int64; for regression the outputs (N, n_outputs)."""
        return self._predict_logits(self.forward(X))

    def _predict_logits(self, logits: np.ndarray) -> np.ndarray:
        if self._output == "identity":
            return logits
        if self._output == "softmax":
            return np.argmax(logits, axis=1).astype(np.int64)
        return (logits[:, 0] > 0).astype(np.int64)

    def score(self, X, y) -> float:
        """Accuracy (the fraction of samples whose predicted label equals y); for regression
        the coefficient of determination R², averaged over outputs (as scikit-learn)."""
        X = self._features(X)
        y = self._labels(y, X.shape[0])
        prediction = self._predict_logits(self._forward(X))
        if self.is_classifier:
            return float(np.mean(prediction == y))
        residual = ((y - prediction) ** 2).sum(axis=0, dtype=np.float64)
        total = ((y - y.mean(axis=0)) ** 2).sum(axis=0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(total > 0, 1 - residual / total, np.where(residual > 0, 0.0, 1.0))
        return float(r2.mean())

    # ---- loss and gradients -------------------------------------------------------------

    def _loss_and_dlogits(self, logits: np.ndarray, y: np.ndarray,
                          weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if self._output == "softmax":
            return _core.softmax_nll(logits, y, weights)
        if self._output == "sigmoid":
            return _core.sigmoid_bce(logits, y, weights)
        return _core.squared_error(logits, y, weights)

    def loss(self, X, y, sample_weight=None, alpha: float = 0.0) -> float:
        """Mean loss over the batch: negative log-probability of the correct class (½ squared
        error for regression); weighted by ``sample_weight`` when given; plus the L2 penalty
        ``alpha/2 · Σ‖W‖² / n_samples`` (scikit-learn's ``alpha``; biases not penalised)."""
        X = self._features(X)
        y = self._labels(y, X.shape[0])
        weights = sample_weights(sample_weight, X.shape[0], self._dtype)
        alpha = positive_float(alpha, "alpha", allow_zero=True)
        return (self._loss_and_dlogits(self._forward(X), y, weights)[0]
                + self._l2_penalty(alpha, X.shape[0]))

    def _l2_penalty(self, alpha: float, n_samples: int) -> float:
        if alpha == 0.0:
            return 0.0
        squares = sum(float(np.dot(w.ravel(), w.ravel())) for w in self._weights)
        return 0.5 * alpha * squares / n_samples

    def loss_and_grad(self, X, y, sample_weight=None, alpha: float = 0.0
                      ) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
        """``(loss, grad_weights, grad_biases)`` for the batch (loss is the batch mean, or the
        ``sample_weight``-weighted mean, plus the L2 penalty of ``alpha`` as in ``loss``).

        Backpropagation: ``dlogits = (softmax - onehot) / N`` (or ``(σ - y) / N``), then for
        each layer from the last, ``grad_a = grad_out * act'``, ``grad_W = grad_aᵀ h_in``,
        ``grad_b = Σ grad_a``, and ``grad_out`` of the layer below ``= grad_a W``.
        """
        X = self._features(X)
        y = self._labels(y, X.shape[0])
        weights = sample_weights(sample_weight, X.shape[0], self._dtype)
        alpha = positive_float(alpha, "alpha", allow_zero=True)
        loss, grad_weights, grad_biases = self._loss_and_grad(X, y, weights)
        if alpha:
            loss += self._l2_penalty(alpha, X.shape[0])
            for g, w in zip(grad_weights, self._weights):
                g += (alpha / X.shape[0]) * w
        return loss, grad_weights, grad_biases

    def _loss_and_grad(self, X: np.ndarray, y: np.ndarray, weights=None):
        with self._lock:
            return self._loss_and_grad_locked(X, y, weights)

    def _loss_and_grad_locked(self, X: np.ndarray, y: np.ndarray, weights):
        # The network's forward and backward in the core (network.h), as the engine runs them.
        return _core.network_gradients(X, y, weights, self._weights, self._biases,
                                       self._activation, self._output)

    # ---- training -----------------------------------------------------------------------

    def fit(self, X, y, epochs: int = 10, batch_size: int = 32, optimizer: Optimizer | None = None,
            shuffle: bool = True, seed=None, validation_data=None, verbose=False,
            callbacks=None, sample_weight=None, alpha: float = 0.0, checkpoint=None,
            checkpoint_every: int = 1, resume: bool = False) -> History:
        """Train with mini-batch gradient descent; returns the per-epoch ``History``.

        Each epoch visits every sample once, in a fresh random order (``shuffle=True``, seeded
        by ``seed``) or in row order, in batches of ``batch_size`` (the last may be shorter; a
        batch size larger than the data is clamped to it). The optimizer defaults to
        ``SGD(lr=0.01)`` and keeps its state across calls when passed in again. ``verbose``
        prints one line per epoch to stdout (or to the file object given instead of True);
        each of ``callbacks`` is called as ``callback(model, history)`` after every epoch, and
        one that returns True stops training after that epoch. ``sample_weight`` (n,) weights
        each sample's loss (a batch's loss is its weighted mean); ``alpha`` is scikit-learn's
        L2 penalty (see ``loss``).

        ``checkpoint``: a path where the model, the optimizer's state, the shuffling state and
        the history are saved (atomically) every ``checkpoint_every`` epochs and at the end.
        With ``resume=True`` and an existing checkpoint, training continues from it up to
        ``epochs`` in total, and ends with the same weights as an uninterrupted run (the
        checkpoint's optimizer replaces ``optimizer``; batch_size and shuffle must match).

        Whole epochs run in the C++ engine with the GIL released; control comes back to
        Python about every 50 ms, where Ctrl-C (``KeyboardInterrupt``) stops training at a
        step boundary: the weights and the optimizer are those after the last full step.
        ``fit`` on a model that another thread is training raises ``RuntimeError``; a
        prediction from another thread waits for the current engine call (≤ ~50 ms), so it
        never sees half-updated weights.
        """
        X = self._features(X)
        y = self._labels(y, X.shape[0])
        weights = sample_weights(sample_weight, X.shape[0], self._dtype)
        alpha = positive_float(alpha, "alpha", allow_zero=True)
        epochs = positive_int(epochs, "epochs")
        batch_size = min(positive_int(batch_size, "batch_size"), X.shape[0])
        checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
        if optimizer is None:
            optimizer = SGD(lr=0.01)
        elif not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastmlp optimizer (SGD, Adam), got {optimizer!r}")
        callbacks = list(callbacks or [])
        if not all(callable(c) for c in callbacks):
            raise TypeError("callbacks must be callables taking (model, history)")
        if validation_data is not None:
            try:
                X_val, y_val = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (X_val, y_val)") from None
            X_val = feature_matrix(X_val, "validation X", self._dtype, self.n_features)
            y_val = self._labels(y_val, X_val.shape[0])
        X = np.require(X, requirements=["C", "A"])  # the engine reads rows in place

        with self._lock:
            if self._training:
                raise RuntimeError("this model is already being trained (fit is running in "
                                   "another thread); wait for it or train a copy")
            self._training = True
            self._trainer_thread = threading.get_ident()
        try:
            # Draws each epoch's shuffling seed. Without shuffling the seeds are unused: no
            # generator is made (it costs ~10 µs, a lot for a fit of a few small batches),
            # unless a checkpoint will store its state.
            rng = (np.random.default_rng(seed) if shuffle or checkpoint is not None
                   else None)
            history = History()
            start_epoch = 0
            if checkpoint is not None and resume and os.path.exists(checkpoint):
                optimizer, start_epoch = self._resume(checkpoint, rng, history, batch_size,
                                                      bool(shuffle))
            trainer = _new_trainer(self, optimizer, batch_size, alpha)
            n = X.shape[0]
            # The first engine call runs about 0.5 GFLOP (a few ms), then the count adapts so
            # that Python regains control about every 50 ms (Ctrl-C, progress).
            flops_per_step = 6 * batch_size * sum(
                i * o for i, o in zip(self._layer_sizes, self._layer_sizes[1:]))
            steps_per_call = max(1, int(5e8 // flops_per_step))
            for epoch in range(start_epoch, epochs):
                started = time.perf_counter()
                trainer.begin_epoch(n, bool(shuffle), _draw_epoch_seed(rng) if rng else 0)
                total = 0.0
                fell_back = None  # the engine's wall/CPU ratio of the step that lost, if one did
                while True:
                    call_started = time.perf_counter()
                    with self._lock:
                        result = trainer.run(X, y, weights, batch_size, steps_per_call)
                    if result.nonfinite:
                        raise FloatingPointError(
                            f"training diverged at epoch {epoch + 1}: the loss, the gradients "
                            "or the updated weights were not finite (NaN or infinity). The "
                            "model keeps its weights from before that step; the optimizer's "
                            "state may be corrupt, use a new one. Lower the learning rate or "
                            "scale the inputs.")
                    total += result.data_loss_sum + result.penalty_sum
                    if result.fell_back:
                        fell_back = result.wall_to_cpu
                    if result.epoch_done:
                        break
                    # Back to Python about every 50 ms: responsive to Ctrl-C, cheap per step.
                    elapsed = max(time.perf_counter() - call_started, 1e-6)
                    steps_per_call = max(1, min(steps_per_call * 4,
                                                int(steps_per_call * 0.05 / elapsed)))
                elapsed = time.perf_counter() - started
                history.loss.append(total / n)
                history.samples_per_second.append(n / elapsed if elapsed > 0 else math.inf)
                history.one_thread_fallback.append(fell_back is not None)
                if validation_data is not None:
                    logits = self._forward(X_val)
                    history.val_loss.append(self._loss_and_dlogits(logits, y_val)[0])
                    if self.is_classifier:
                        history.val_accuracy.append(
                            float(np.mean(self._predict_logits(logits) == y_val)))
                if verbose:
                    self._print_epoch(history, epochs, verbose, fell_back)
                done = epoch + 1
                if checkpoint is not None and (done % checkpoint_every == 0 or done == epochs):
                    self._save_checkpoint(checkpoint, optimizer, rng, history, done,
                                          batch_size, bool(shuffle))
                stop = False
                for callback in callbacks:
                    stop = bool(callback(self, history)) or stop
                if stop:
                    break
            return history
        finally:
            self._training = False

    def _print_epoch(self, history: History, epochs: int, verbose, fell_back) -> None:
        line = f"epoch {history.epochs:>3}/{epochs}  loss {history.loss[-1]:.4f}"
        if history.val_loss:
            line += f"  val_loss {history.val_loss[-1]:.4f}"
        if history.val_accuracy:
            line += f"  val_accuracy {history.val_accuracy[-1]:.4f}"
        line += f"  {history.samples_per_second[-1]:,.0f} samples/s"
        if fell_back is not None:
            line += "\n" + one_thread_fallback_message(fell_back)
        print(line, file=verbose if hasattr(verbose, "write") else sys.stdout, flush=True)

    def _save_checkpoint(self, path, optimizer, rng, history, epochs_done, batch_size, shuffle):
        from fastmlp.io import save_checkpoint
        save_checkpoint(path, self, optimizer, {
            "epochs_done": epochs_done, "rng_state": rng.bit_generator.state,
            "history": dataclasses.asdict(history), "batch_size": batch_size,
            "shuffle": shuffle, "steps": optimizer.steps})

    def _resume(self, path, rng, history: History, batch_size: int, shuffle: bool):
        """Loads a checkpoint into this model, rng and history; returns (optimizer, epoch)."""
        from fastmlp.io import load_checkpoint
        saved, optimizer, meta = load_checkpoint(path)
        mine = (self.layer_sizes, self.activation, self.output, self.dtype)
        theirs = (saved.layer_sizes, saved.activation, saved.output, saved.dtype)
        if mine != theirs:
            raise ValueError(f"checkpoint {os.fspath(path)!r} holds a {saved!r}, not this {self!r}")
        if (meta["batch_size"], meta["shuffle"]) != (batch_size, shuffle):
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} was written with batch_size="
                f"{meta['batch_size']}, shuffle={meta['shuffle']}; resume with the same values")
        try:
            rng.bit_generator.state = meta["rng_state"]
            for key, values in meta["history"].items():
                kind = bool if key == "one_thread_fallback" else float
                getattr(history, key).extend(kind(v) for v in values)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"checkpoint {os.fspath(path)!r} is malformed: {exc}") from None
        self.weights, self.biases = saved.weights, saved.biases
        return optimizer, int(meta["epochs_done"])

    # ---- concurrency and pickling -------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"], state["_training"], state["_trainer_thread"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # Unpickled arrays come back with NumPy's default alignment: realign those (a
        # memory-mapped, aligned array is left as it is).
        def realigned(a):
            return a if a.ctypes.data % 64 == 0 else cache_aligned(a)
        self._weights = _ParameterList([realigned(w) for w in self._weights], self._check_weight)
        self._biases = _ParameterList([realigned(b) for b in self._biases], self._check_bias)
        self._lock = threading.RLock()
        self._training = False
        self._trainer_thread = None

    # ---- PyTorch interop (optional; torch is never required) ----------------------------

    @classmethod
    def from_torch(cls, module, dtype=None) -> "MLP":
        """An MLP with the weights of a ``torch.nn.Sequential`` of ``Linear`` layers and one
        activation kind (see fastmlp.torch_interop)."""
        from fastmlp.torch_interop import mlp_from_torch
        return mlp_from_torch(module, dtype=dtype)

    def to_torch(self):
        """The equivalent ``torch.nn.Sequential`` (same weights, same logits)."""
        from fastmlp.torch_interop import mlp_to_torch
        return mlp_to_torch(self)

    # ---- persistence --------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the model to ``path`` as a ``.npz`` (no pickle), atomically."""
        from fastmlp.io import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path) -> "MLP":
        """Read a model written by ``save``; raises ``ValueError`` for anything malformed."""
        from fastmlp.io import load_model
        return load_model(path)
