"""The multilayer perceptron: parameters, forward, loss and gradients; ``fit`` runs the loop
of ``fastmlp._training``, ``save``/``load`` the archive format of ``fastmlp.io``,
``from_torch``/``to_torch`` the conversions of ``fastmlp.torch_interop`` (none of which import
this module).

Legend: N samples, L layers, ``layer_sizes = [n_0, ..., n_L]``; layer l maps n_{l-1}
features to n_l with ``W_l`` of shape (n_l, n_{l-1}) (the ``torch.nn.Linear`` layout: row =
target unit, column = source unit) and ``b_l`` of shape (n_l,). Hidden layers apply the
activation; the last layer gives the logits, turned into probabilities by softmax (K = n_L
classes) or, with ``output="sigmoid"`` and n_L = 1, by the logistic sigmoid (labels 0/1);
``output="identity"`` is regression: n_L real outputs, half squared error;
``output="multilabel"``: n_L independent labels 0/1, one sigmoid each (binary cross-entropy
summed over labels); ``output="poisson"``: regression of n_L targets >= 0 with the log link
(predictions exp(logits), loss the half Poisson deviance).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import weakref

import numpy as np

from fastmlp import _core, _distributed, _training, io, onnx_export, torch_interop
from fastmlp._outputs import Outputs
from fastmlp._parameters import read_only_alias, read_only_view
from fastmlp._sparse import SparseInput
from fastmlp._training import History
from fastmlp._validation import (cache_aligned, check_activation, check_precision, model_dtype,
                                 positive_float, positive_int, sample_weights, to_dtype)
from fastmlp.optim import Optimizer
from fastmlp.quantized import QuantizedMLP

__all__ = ["MLP", "History"]  # (History lives in _training, with the loop that fills it)


_OUTPUTS = ("softmax", "sigmoid", "identity", "multilabel", "poisson")

# Every MLP alive in this process, for _after_fork_in_child.
_LIVE_MODELS: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A fork while another thread trains a model copies its lock held, by a thread the child
    # does not have: the child would wait on it forever. In the child no fit runs: every
    # model's lock and training flag start afresh.
    for model in list(_LIVE_MODELS):
        model._lock = threading.RLock()
        model._training = False
        model._trainer_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _ParameterList(list):
    """The model's weights or biases: item assignment is validated, the length is fixed, and
    items read back are read-only views of the model's arrays (no copy): a
    change goes through assignment or ``Optimizer.step``, which the model sees (it drops its
    packed weights; fastmlp._parameters)."""

    def __init__(self, items, check):
        super().__init__(items)
        self._check = check  # a bound method of the model
        # Per array, its read_only_alias (built once: a view of it is as cheap as any view).
        self._aliases = [read_only_alias(a) for a in self.arrays()]

    def _view(self, position: int) -> np.ndarray:
        array, model = list.__getitem__(self, position), self._check.__self__
        return read_only_view(array, model._drop_pack, self._aliases[position],
                              functools.partial(model._holds, array))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._view(i) for i in range(len(self))[index]]
        return self._view(range(len(self))[index])

    def __iter__(self):
        return (self._view(i) for i in range(len(self)))

    def __add__(self, other):  # model.weights + model.biases: views too
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)

    def copy(self):
        return list(self)

    def arrays(self) -> list[np.ndarray]:
        """The model's own, writable arrays (for the engine and the fitting code, which drop
        the model's packed weights around their in-place updates)."""
        return list(super().__iter__())

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            raise TypeError("assign parameters one at a time, or replace the whole list")
        position = range(len(self))[index]
        checked = self._check(position, value)
        model = self._check.__self__
        with model._lock:
            super().__setitem__(position, checked)
            self._aliases[position] = read_only_alias(checked)
            # Dropped again now that the new array is in place: a prediction between the
            # check (which dropped it) and the store would have packed the old array.
            model._drop_pack()

    def _fixed(self, *args, **kwargs):
        raise TypeError("the number of layers is fixed; build a new MLP for another architecture")

    append = extend = insert = pop = remove = clear = sort = reverse = _fixed
    __delitem__ = __iadd__ = __imul__ = _fixed

    def __reduce__(self):
        return (_ParameterList, (self.arrays(), self._check))


class MLP(Outputs):
    """A multilayer perceptron classifier on fastmlp's C++ kernels.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_inputs, hidden..., n_outputs]``; ``[2, 3, 3]`` is 2 inputs, 3 hidden units,
        3 classes.
    activation : "relu", "tanh", "logistic" or "identity"
        Activation of the hidden layers.
    output : "softmax", "sigmoid", "identity", "multilabel" or "poisson"
        Softmax over n_outputs >= 2 classes; one logit (n_outputs = 1) and the sigmoid for
        binary labels 0/1; regression of n_outputs real targets (loss: ½ squared error);
        n_outputs independent labels 0/1 (y an (N, n_outputs) indicator matrix; one sigmoid
        and binary cross-entropy per label, summed); or regression of n_outputs targets >= 0
        with the log link (predictions exp(logits); loss: half the Poisson deviance,
        Σ y log(y/μ) - y + μ over outputs).
    dtype : "float32" or "float64"
        Dtype of parameters and computation. Inputs of another dtype are converted (copied).
    seed : int or None
        Seeds the initialisation: weights ~ N(0, 2 / fan_in) (He), biases 0.
    precision : "float32" or "bfloat16"
        The matrix products' precision (see the ``precision`` property).
    """

    def __init__(self, layer_sizes, activation: str = "relu", output: str = "softmax",
                 dtype="float32", seed=None, precision: str = "float32", *,
                 _init: bool = True) -> None:
        # _init=False (for callers that write every parameter right away: from_record, the
        # estimators' own initialisation) leaves the parameters unset instead of drawing a
        # He initialisation that would be overwritten (for a 65,536 × 256 first layer, ~0.2 s).
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
        self._precision = "float32"
        self.precision = precision
        n_parameters = sum(o * (i + 1) for i, o in zip(self._layer_sizes, self._layer_sizes[1:]))
        if n_parameters * self._dtype.itemsize >= 2**62:  # beyond any address space
            raise ValueError(f"layer_sizes {list(self._layer_sizes)} need {n_parameters:,} "
                             "parameters, more than any memory can hold")

        rng = np.random.default_rng(seed) if _init else None
        weights, biases = [], []
        for fan_in, fan_out in zip(self._layer_sizes[:-1], self._layer_sizes[1:]):
            if rng is None:
                weights.append(cache_aligned(np.empty((fan_out, fan_in), self._dtype)))
                biases.append(cache_aligned(np.zeros(fan_out), self._dtype))
                continue
            w = rng.standard_normal((fan_out, fan_in)) * math.sqrt(2.0 / fan_in)
            weights.append(cache_aligned(w, self._dtype))
            biases.append(cache_aligned(np.zeros(fan_out), self._dtype))
        self._weights = _ParameterList(weights, self._check_weight)
        self._biases = _ParameterList(biases, self._check_bias)
        # Held while the engine updates the parameters and while a prediction reads them.
        self._lock = threading.RLock()
        self._training = False
        self._trainer_thread = None
        self._packed = None  # the weights packed for inference (_packed_weights)
        self._packed_isa = None  # the ISA they were packed for (packed.isa, kept as a str)
        _LIVE_MODELS.add(self)

    # ---- architecture -------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The GEMMs' precision: "float32", or "bfloat16" (float32 models only): every
        matrix product of ``fit``, ``forward``/``predict*`` and ``loss_and_grad`` rounds its
        operands to bfloat16 (round to nearest even) and accumulates in float32, as
        ``torch.autocast("cpu", dtype=torch.bfloat16)``; the parameters, the optimizer's state,
        biases, activations and the loss stay float32. Nets narrow enough for the
        feature-major path and a sparse first layer run those products in float32. Settable at
        any time; not saved with the model (a way of computing, as autocast)."""
        return self._precision

    @precision.setter
    def precision(self, value) -> None:
        self._precision = check_precision(value, self._dtype)

    def __repr__(self) -> str:
        return (f"MLP({list(self._layer_sizes)}, activation={self._activation!r}, "
                f"output={self._output!r}, dtype={self._dtype.name!r})")

    # ---- parameters ---------------------------------------------------------------------

    @property
    def weights(self) -> list[np.ndarray]:
        """Weights ``W_l`` of shape (n_l, n_{l-1}): read-only views of the model's arrays (no
        copy; writing into one raises ``ValueError: assignment destination is
        read-only``, as the estimators' ``coefs_``). To change weights assign new arrays,
        ``model.weights[l] = W`` or ``model.weights = [...]`` (shape and values validated,
        copied in), e.g. ``model.weights[0] = model.weights[0] * 0.5``; a fastmlp optimizer's
        ``step(model.weights + model.biases, grads)`` updates them in place too.

        Why read-only: predictions at a batch of more than one row use a copy of the weights
        packed for the GEMM kernels (built on first use, about the size of the weights; see
        ``packed_nbytes``), which every assignment, ``fit`` and ``load`` renew; an in-place
        write could not be seen, and would silently give stale predictions."""
        return self._weights

    @weights.setter
    def weights(self, values) -> None:
        checked = _ParameterList(self._check_list(values, "weights", self._check_weight),
                                 self._check_weight)
        self._replace_parameters("_weights", checked)

    @property
    def biases(self) -> list[np.ndarray]:
        """Biases ``b_l`` of shape (n_l,): read-only views, assignable as ``weights``."""
        return self._biases

    @biases.setter
    def biases(self, values) -> None:
        checked = _ParameterList(self._check_list(values, "biases", self._check_bias),
                                 self._check_bias)
        self._replace_parameters("_biases", checked)

    def _replace_parameters(self, name: str, checked: "_ParameterList") -> None:
        # The pack is dropped after the new list is in place: a prediction between the checks
        # (which dropped it) and the store would have packed the old arrays.
        lock = getattr(self, "_lock", None)
        if lock is None:  # (being built)
            setattr(self, name, checked)
            return
        with lock:
            setattr(self, name, checked)
            self._packed = None

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
        # Always a copy (the model owns its parameters); a float64 value beyond float32's
        # range is reported as such, not as the infinity the cast would make of it.
        checked = cache_aligned(to_dtype(a, self._dtype, name))
        self._drop_pack()
        return checked

    def _check_weight(self, i: int, value) -> np.ndarray:
        shape = (self._layer_sizes[i + 1], self._layer_sizes[i])
        return self._check_param(f"weights[{i}]", value, shape)

    def _check_bias(self, i: int, value) -> np.ndarray:
        return self._check_param(f"biases[{i}]", value, (self._layer_sizes[i + 1],))

    def _holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` is one of this model's parameter arrays (not a replaced one)."""
        return any(a is array for a in self._weights.arrays() + self._biases.arrays())

    def _drop_pack(self) -> None:
        """Forgets the packed weights (the weights are about to change, or have)."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # (being built)
            self._packed = None
            return
        with lock:
            self._packed = None

    def _packed_weights(self, isa: str | None = None):
        """The weights packed for the active ISA's GEMM kernels (built now if missing or
        packed for another ISA), or None while the model trains (the engine is updating the
        weights in place) and for bfloat16 products (which pack their own operands).
        Call with the lock held."""
        if self._training or self._precision != "float32":
            return None
        isa = isa or _core.isa()
        packed = self._packed
        if packed is None or self._packed_isa != isa:
            pack_type = (_core.PackedWeightsFloat32 if self._dtype == np.float32
                         else _core.PackedWeightsFloat64)
            packed = self._packed = pack_type(self._weights, self._biases, self._activation)
            self._packed_isa = packed.isa
        return packed

    @property
    def packed_nbytes(self) -> int:
        """Bytes held by the packed copy of the weights that predictions of more than one row
        (and float32 ones of one row on AVX-512) read (0 until the first one): about the
        weights' size, each layer's output count rounded up to the kernels' panel width (32
        on AVX-512: a 10-class last layer is stored 32 wide), plus a copy of the biases (a
        float32 sample's ``predict_proba`` needs nothing else). Freed by any change of the
        weights, rebuilt by the next prediction."""
        packed = self._packed
        return 0 if packed is None else packed.nbytes

    @property
    def n_parameters(self) -> int:
        return sum(w.size + b.size for w, b in zip(self._weights, self._biases))

    # ---- inference ----------------------------------------------------------------------

    def _forward(self, X) -> np.ndarray:
        """Logits of a validated X: all layers in one call into the core."""
        with self._lock:
            if isinstance(X, SparseInput):
                return _core.mlp_forward_sparse(X.indptr, X.indices, X.values, X.shape[1],
                                                self._weights, self._biases, self._activation,
                                                self._precision)
            return _core.mlp_forward(X, self._weights, self._biases, self._activation,
                                     self._precision, self._inference_pack(X.shape[0]))

    def _row_from_the_pack(self, X, softmax: bool) -> np.ndarray | None:
        """One float32 sample's logits (or their softmax), once a prediction has packed the
        weights: the pack alone (its panels and its own copy of the biases) computes them,
        without the lock or the weights' lists (~1 µs of a ~10 µs mnist-shaped prediction),
        the bits of the general path. None where it does not apply. The pack is a snapshot,
        dropped by any change of the weights and by fit before it updates them: a prediction
        that took it just before sees the weights as they were."""
        packed = self._packed
        if (packed is None or type(X) is not np.ndarray or self._precision != "float32"
                or self._dtype.char != "f"):
            return None
        return packed.forward_row(X, softmax)  # None unless X is one such row

    def forward(self, X) -> np.ndarray:
        logits = self._row_from_the_pack(X, softmax=False)
        return logits if logits is not None else super().forward(X)

    forward.__doc__ = Outputs.forward.__doc__

    def _probabilities_in_one_call(self, X) -> np.ndarray | None:
        if self._output == "softmax":
            probabilities = self._row_from_the_pack(X, softmax=True)
            if probabilities is not None:
                return probabilities
        return super()._probabilities_in_one_call(X)

    def _softmax_in_one_call(self, X: np.ndarray) -> np.ndarray | None:
        with self._lock:
            return _core.mlp_predict_proba(X, self._weights, self._biases, self._activation,
                                           self._precision, self._inference_pack(X.shape[0]))

    def _inference_pack(self, rows: int):
        """The packed weights a prediction of `rows` rows reads (call under the lock): batches
        of more than one row, and a float32 batch of one on AVX-512 (a GEMV over the panels,
        one contiguous stream of weights), read the weights packed once, then reused; other
        batches of one read W in place (None)."""
        isa = _core.isa()
        if rows > 1 or (isa == "avx512" and self._dtype.char == "f"):
            return self._packed_weights(isa)
        return None

    # ---- loss and gradients -------------------------------------------------------------

    def _loss_and_dlogits(self, logits: np.ndarray, y: np.ndarray,
                          weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if self._output == "softmax":
            return _core.softmax_nll(logits, y, weights)
        if self._output == "sigmoid":
            return _core.sigmoid_bce(logits, y, weights)
        if self._output == "multilabel":
            return _core.sigmoid_bce_multi(logits, y, weights)
        if self._output == "poisson":
            return _core.poisson_deviance(logits, y, weights)
        return _core.squared_error(logits, y, weights)

    def loss(self, X, y, sample_weight=None, alpha: float = 0.0) -> float:
        """Mean loss over the batch: negative log-probability of the correct class (½ squared
        error for regression; binary cross-entropy summed over labels for multilabel; half
        Poisson deviance summed over outputs for poisson); weighted by ``sample_weight`` when
        given; plus the L2 penalty ``alpha/2 · Σ‖W‖² / n_samples`` (scikit-learn's ``alpha``;
        biases not penalised)."""
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

    def _loss_and_grad_locked(self, X, y: np.ndarray, weights):
        # The network's forward and backward in the core (network.h), as the engine runs them.
        if isinstance(X, SparseInput):
            return _core.network_gradients_sparse(X.indptr, X.indices, X.values, X.shape[1], y,
                                                  weights, self._weights, self._biases,
                                                  self._activation, self._output,
                                                  self._precision)
        return _core.network_gradients(X, y, weights, self._weights, self._biases,
                                       self._activation, self._output, self._precision)

    # ---- training -----------------------------------------------------------------------

    def fit(self, X, y=None, epochs: int = 10, batch_size: int = 32,
            optimizer: Optimizer | str | None = None,
            shuffle: bool | str = True, seed=None, validation_data=None, verbose=False,
            callbacks=None, sample_weight=None, alpha: float = 0.0, checkpoint=None,
            checkpoint_every: int = 1, resume: bool = False,
            sparse_updates: str = "exact", comm=None) -> History:
        """Train with mini-batch gradient descent; returns the per-epoch ``History``.

        Each epoch visits every sample once, in a fresh random order (``shuffle=True``, seeded
        by ``seed``) or in row order, in batches of ``batch_size`` (the last may be shorter; a
        batch size larger than the data is clamped to it). The optimizer defaults to
        ``SGD(lr=0.01)`` and keeps its state across calls when passed in again; a name,
        "sgd", "adam" or "adamw" (any case), builds a new one with its class's defaults
        (``SGD(lr=0.01)``, ``Adam(lr=1e-3)``, ``AdamW(lr=1e-3, weight_decay=0.01)``). ``verbose``
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

        Data larger than memory: ``X`` may be memory-mapped (``np.load(path, mmap_mode="r")``,
        ``np.memmap``), or a ``fastmlp.ParquetSource`` (with ``y=None``: its target column is
        y). Such data is read window by window on a background thread while the engine trains
        on the previous window, and ``shuffle=True`` then means a block-wise shuffle: each
        epoch permutes blocks of contiguous rows (~512 KiB of a mapped file; a Parquet file's
        row groups), then the rows inside each window of consecutive blocks (32 blocks, 16 MiB;
        ``ParquetSource(window_row_groups=...)``), reproducible from ``seed``. Unlike a full
        permutation, a batch mixes rows of one window only, so rows stored near each other
        stay near each other in the epoch (shuffle a file sorted by label once when writing
        it). The disk sees contiguous reads: an epoch from a file three times larger than the
        memory the process may use ran at about half the in-memory speed, at the disk's
        speed (benchmarks/README.md). Memory holds three windows, not the file, and the file
        is never written. A mapped X is checked for NaN and infinity in one sequential pass
        before training, and converted to the model's dtype window by window.
        ``shuffle="full"`` forces the full permutation on a mapped X (fast only while the file
        sits in the page cache); ``shuffle="block"`` asks for the block-wise one on an
        in-memory X; ``shuffle=False`` reads the rows in order. In-memory arrays keep the
        engine's full permutation under ``shuffle=True``, unchanged.

        ``X`` may be a scipy.sparse matrix (CSR is read in place; CSC, COO, … are converted
        to CSR), e.g. bag-of-words counts: the first layer then reads only the non-zeros and
        never makes X dense. Its weight gradient is zero outside the columns a batch touches.
        ``sparse_updates="exact"`` (the default) gives the same training as dense input: plain
        SGD (no momentum, weight decay or ``alpha``) updates only the touched rows, which
        is exact because a zero gradient changes nothing; Adam, momentum and any decay still
        move every weight each step (Adam's moments decay), a pass over the whole first layer
        per step. ``sparse_updates="lazy"`` updates only the touched weights whatever the
        optimizer, as ``torch.optim.SparseAdam``: untouched weights and their moments wait
        until a batch touches them (much faster with Adam on a large vocabulary; not the same
        numbers as dense training).

        Whole epochs run in the C++ engine with the GIL released; control comes back to
        Python about every 50 ms (with sparse X: after at least 20 times the engine's copy of
        the first layer into its working layout and back, ~0.5 s for 65,536 × 256), where
        Ctrl-C (``KeyboardInterrupt``) stops training at a step boundary: the weights and the
        optimizer are those after the last full step.
        ``fit`` on a model that another thread is training raises ``RuntimeError``; a
        prediction from another thread waits for the current engine call (≤ ~50 ms), so it
        never sees half-updated weights.

        ``comm``: an mpi4py communicator for data-parallel training over its ranks
        (docs/distributed.md): every rank calls ``fit`` with its own shard of the rows and
        the same other arguments; ``batch_size`` is per rank; the parameters (and the
        optimizer's state) start from rank 0's; each step's gradients are averaged over the
        ranks, so the replicas stay identical. Each epoch runs as many steps as the largest
        shard needs; smaller shards wrap around. A shard may be memory-mapped (each rank's
        ``X[fastmlp.shard_rows(len(X), comm)]``) or a ``ParquetSource(..., comm=comm)``:
        each rank streams only its rows. Validation scores are reduced over the
        ranks' ``validation_data``, checkpoints are written by rank 0, and an error on one
        rank ends ``fit`` on every rank (or, where the ranks cannot agree on it, the job,
        through ``comm.Abort``). Each rank uses at most its node's CPUs divided by the ranks
        on the node as threads, unless FASTMLP_NUM_THREADS or OMP_NUM_THREADS is set.
        """
        # Without comm, one process; with it, data-parallel over its ranks.
        train = _training.fit if comm is None else functools.partial(_distributed.fit,
                                                                     comm=comm)
        return train(self, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                     shuffle=shuffle, seed=seed, validation_data=validation_data,
                     verbose=verbose, callbacks=callbacks, sample_weight=sample_weight,
                     alpha=alpha, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                     resume=resume, sparse_updates=sparse_updates)

    # ---- concurrency and pickling -------------------------------------------------------

    def __getstate__(self):
        # A snapshot at a step boundary: the engine updates the parameters only while it
        # holds the lock (tile by tile), so copies taken under it match one step.
        with self._lock:
            state = self.__dict__.copy()
            state["_weights"] = [w.copy() for w in self._weights]
            state["_biases"] = [b.copy() for b in self._biases]
        del state["_lock"], state["_training"], state["_trainer_thread"], state["_packed"]
        state.pop("_packed_isa", None)
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
        self._packed = None
        self._packed_isa = None
        _LIVE_MODELS.add(self)

    def _snapshot(self) -> io.ModelRecord:
        """The model as it is between two training steps (copies, taken under the lock)."""
        with self._lock:
            return io.ModelRecord(list(self._layer_sizes), self._activation, self._output,
                                  self._dtype, [w.copy() for w in self._weights],
                                  [b.copy() for b in self._biases], self._precision)

    # ---- quantization -------------------------------------------------------------------

    def quantize(self, dtype: str = "int8", calibration=None):
        """A ``QuantizedMLP`` of this model for inference (``fastmlp.quantized``): hidden
        layers int8 (weights per output channel, symmetric), the last layer and the output
        function float32. ``calibration``: None for activation scales from each sample's own
        range (dynamic, per row), or a sample X (n, n_features) whose float32 activations fix them (static).
        A snapshot: later changes to this model do not reach it."""
        if dtype != "int8":
            raise ValueError(f"dtype must be 'int8', got {dtype!r}")
        with self._lock:
            return QuantizedMLP.from_mlp(self, calibration)

    # ---- PyTorch interop (optional; torch is never required) ----------------------------

    @classmethod
    def from_torch(cls, module, dtype=None) -> "MLP":
        """An MLP with the weights of a ``torch.nn.Sequential`` of ``Linear`` layers and one
        activation kind (see fastmlp.torch_interop)."""
        return cls.from_record(torch_interop.record_from_torch(module, dtype=dtype))

    def to_torch(self):
        """The equivalent ``torch.nn.Sequential`` (same weights, same logits)."""
        return torch_interop.mlp_to_torch(self)

    # ---- ONNX export (optional; the onnx package is never required) ---------------------

    def to_onnx(self, path=None):
        """The model as a standard ONNX graph (an ``onnx.ModelProto``), written atomically to
        ``path`` when given; needs ``pip install "fastmlp[onnx]"``. Input ``X`` (N, F) in the
        model's dtype, N symbolic; outputs ``probabilities`` (as ``predict_proba``; regression:
        ``predictions``, as ``predict``) and ``logits`` (as ``forward``): see
        fastmlp.onnx_export. The graph computes in the model's dtype whatever ``precision``
        is (float32 for a bfloat16-precision model, whose parameters are float32)."""
        return onnx_export.record_to_onnx(self._snapshot(), path)

    # ---- persistence --------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the model to ``path`` as a ``.npz`` (no pickle), atomically; from another
        thread during ``fit``, the weights of one step (not half of one)."""
        io.save_model(self._snapshot(), path)

    @classmethod
    def load(cls, path) -> "MLP":
        """Read a model written by ``save``; raises ``ValueError`` for anything malformed."""
        record = io.read_model(path)
        try:
            return cls.from_record(record)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{os.fspath(path)!r} is not a valid fastmlp model: {exc}") from None

    @classmethod
    def from_record(cls, record: io.ModelRecord) -> "MLP":
        """The MLP a ``fastmlp.io.ModelRecord`` describes (its parameters copied)."""
        model = cls(record.layer_sizes, activation=record.activation, output=record.output,
                    dtype=record.dtype, precision=record.precision, _init=False)
        model.weights = record.weights
        model.biases = record.biases
        return model
