"""int8 inference of a trained MLP: ``MLP.quantize("int8")`` returns a ``QuantizedMLP``.

Legend: L layers, ``layer_sizes = [n_0, ..., n_L]``; N samples.

Hidden layers (l < L-1) run on the int8 GEMM (``ops.int8_path()``: AVX512-VNNI, AVX-VNNI or
portable loops); the last layer and the softmax / sigmoid stay float32. Weights: int8,
symmetric, one scale per output channel, ``s_w[j] = max_p |W[j,p]| / 127``,
``W_q = rint(W / s_w)``. Activations: uint8 with a zero point, ``x_q = clamp(rint(x / s_x) + z,
0, 255)``, (s_x, z) spanning [min(lo, 0), max(hi, 0)]: with ``calibration=None`` (dynamic)
each sample's (row's) own range at every layer, so that a sample's prediction is the same
bits alone as in any batch (onnxruntime's ``quantize_dynamic`` takes one range per tensor, the
whole batch's: there a sample's prediction depends on its batch mates); with a calibration
sample (static), one (s_x, z) per layer from the sample's float32 activations, the same for
every row and call (values outside the sample's range are clamped). Each hidden layer computes
``act(s_x s_w[j] (Σ x_q W_q[j] - z Σ W_q[j]) + b[j])`` with the sums exact in int32. The last
layer is float32, each logit one chain of additions in a fixed order (kernels of blocks of 16
or 32 outputs), so the row-independence above holds for the logits and probabilities too.
"""

from __future__ import annotations

import os

import numpy as np

from fastmlp import _core, io
from fastmlp._npz import read_npz
from fastmlp._outputs import Outputs
from fastmlp._sparse import SparseInput, is_sparse
from fastmlp._validation import check_activation, check_finite, feature_matrix

__all__ = ["QuantizedMLP", "quantize_weights"]

FORMAT_NAME = "fastmlp.QuantizedMLP"
FORMAT_VERSION = 1


def _logistic(a):
    # 1 / (1 + e^-a): e^-a overflows to inf for a < -88 (float32), giving the right 0, but
    # NumPy warns; the warning says nothing wrong about the user's calibration sample.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


_ACTIVATIONS = {"relu": lambda a: np.maximum(a, 0), "identity": lambda a: a,
                "tanh": np.tanh, "logistic": _logistic}
_OUTPUTS = ("softmax", "sigmoid", "identity", "multilabel", "poisson")


def quantize_weights(W) -> tuple[np.ndarray, np.ndarray]:
    """``(W_q int8 (n_out, n_in), s_w float32 (n_out,))``: per output channel, symmetric,
    ``s_w = max|W[j]| / 127`` (1 for an all-zero row), ``W_q = clip(rint(W / s_w), -127, 127)``."""
    W = np.asarray(W, np.float64)
    scale = (np.abs(W).max(axis=1) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    Wq = np.clip(np.rint(W / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return Wq, scale


def _checked_hidden_layer(l: int, Wq, scale, bias, inputs):
    """``(W_q, s_w, b, (s_x, z) or None)`` of hidden layer l as the core takes them, or
    ``ValueError``: W_q in [-127, 127], s_w finite and > 0, b finite, z an integer in [0, 255]
    (s_x is checked by the core). A hand-edited or corrupted archive must not compute garbage."""
    Wq, scale = np.ascontiguousarray(Wq, np.int8), np.ascontiguousarray(scale, np.float32)
    bias = np.ascontiguousarray(bias, np.float32)
    if Wq.size and Wq.min() < -127:
        raise ValueError(f"hidden layer {l}'s int8 weights hold -128; the symmetric "
                         "quantization uses [-127, 127]")
    check_finite(scale, f"hidden layer {l}'s weight scales")
    if scale.size and not scale.min() > 0:
        raise ValueError(f"hidden layer {l}'s weight scales must be > 0, got {scale.min()}")
    check_finite(bias, f"hidden layer {l}'s biases")
    if inputs is None:
        return Wq, scale, bias, None
    x_scale, zero = float(inputs[0]), float(inputs[1])
    if not (zero.is_integer() and 0 <= zero <= 255):
        raise ValueError(f"hidden layer {l}'s input zero point must be an integer in [0, 255], "
                         f"got {zero}")
    return Wq, scale, bias, (x_scale, int(zero))


class QuantizedMLP(Outputs):
    """An MLP whose hidden layers compute in int8 (see the module's documentation); built by
    ``MLP.quantize``, or read by ``QuantizedMLP.load``. ``predict``, ``predict_proba``,
    ``score`` and ``forward`` take what ``MLP``'s do (float32 computation)."""

    def __init__(self, layer_sizes, activation: str, output: str, hidden, last_weight,
                 last_bias) -> None:
        """hidden: one ``(W_q int8, s_w float32, bias float32, (s_x, z) or None)`` per hidden
        layer (None: dynamic); last_weight (n_L, n_{L-1}), last_bias (n_L,) float32."""
        self._layer_sizes = tuple(int(n) for n in layer_sizes)
        check_activation(activation)
        self._activation = activation
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self._output = output
        self._dtype = np.dtype(np.float32)
        self._hidden = [_checked_hidden_layer(l, *layer) for l, layer in enumerate(hidden)]
        self._last = (np.ascontiguousarray(last_weight, np.float32),
                      np.ascontiguousarray(last_bias, np.float32))
        check_finite(self._last[0], "the last layer's weights")
        check_finite(self._last[1], "the last layer's biases")
        self._network = _core.QuantizedNetwork(self._hidden, *self._last, self._activation)
        if tuple(self._network_sizes()) != self._layer_sizes:
            raise ValueError(f"the layers' shapes {self._network_sizes()} do not match "
                             f"layer_sizes {list(self._layer_sizes)}")

    def _network_sizes(self) -> list[int]:
        sizes = [Wq.shape[1] for Wq, *_ in self._hidden[:1]] or [self._last[0].shape[1]]
        return sizes + [Wq.shape[0] for Wq, *_ in self._hidden] + [self._last[0].shape[0]]

    @classmethod
    def from_mlp(cls, model, calibration=None) -> "QuantizedMLP":
        """``model`` (an ``MLP``) quantized; ``calibration`` (n, n_features) for static
        activation scales, None for dynamic ones."""
        weights = [np.asarray(w, np.float32) for w in model.weights]
        biases = [np.asarray(b, np.float32) for b in model.biases]
        for l, (w, b) in enumerate(zip(weights, biases)):  # (a diverged fit leaves NaN)
            check_finite(w, f"the model's weights[{l}] (as float32)")
            check_finite(b, f"the model's biases[{l}] (as float32)")
        inputs = [None] * (len(weights) - 1)
        if calibration is not None:
            X = model._features(calibration, "calibration")
            if isinstance(X, SparseInput):
                raise TypeError("calibration must be dense (a NumPy array)")
            X = np.asarray(X, np.float32)
            activation = _ACTIVATIONS[model.activation]
            for l in range(len(weights) - 1):
                # The float32 input of layer l: X, or the activation of layer l-1's output.
                h = X if l == 0 else activation(
                    _core.mlp_forward(X, weights[:l], biases[:l], model.activation))
                if not (np.isfinite(h.min()) and np.isfinite(h.max())):
                    raise ValueError(f"calibration's float32 activations at the input of layer "
                                     f"{l} overflow (beyond ±3.4e38): no int8 scale spans them; "
                                     "rescale the data")
                inputs[l] = _core.int8_quant_params(float(h.min()), float(h.max()))
        hidden = [(*quantize_weights(w), b, q)
                  for w, b, q in zip(weights[:-1], biases[:-1], inputs)]
        return cls(model.layer_sizes, model.activation, model.output, hidden, weights[-1],
                   biases[-1])

    # ---- description --------------------------------------------------------------------

    @property
    def calibration(self) -> str:
        """"static" (activation scales fixed from a calibration sample) or "dynamic"."""
        return "static" if self._hidden and self._hidden[0][3] is not None else "dynamic"

    @property
    def nbytes(self) -> int:
        """Bytes the computation keeps: packed int8 weights (padded to 64 channels), their row
        sums and scales, biases and the float32 last layer (twice where it has at most 32
        outputs: as given and transposed, for the few-outputs kernel)."""
        return self._network.nbytes

    def __repr__(self) -> str:
        return (f"QuantizedMLP({list(self._layer_sizes)}, activation={self._activation!r}, "
                f"output={self._output!r}, int8 hidden layers, {self.calibration})")

    # ---- inference ----------------------------------------------------------------------

    def _features(self, X, name: str = "X") -> np.ndarray:
        # A scipy.sparse X is made dense: the int8 kernels quantize dense rows.
        return feature_matrix(X.toarray() if is_sparse(X) else X, name, self._dtype,
                              self.n_features)

    def _forward(self, X) -> np.ndarray:
        return self._network.forward(X)

    def _softmax_in_one_call(self, X: np.ndarray) -> np.ndarray | None:
        return self._network.predict_proba(X)

    # ---- pickling (the core's network is rebuilt from the arrays) -----------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_network"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._network = _core.QuantizedNetwork(self._hidden, *self._last, self._activation)

    # ---- persistence (no pickle) --------------------------------------------------------

    def save(self, path) -> None:
        """Write to ``path`` as a ``.npz`` (no pickle), atomically."""
        arrays = {"format": np.array(FORMAT_NAME),
                  "format_version": np.array(FORMAT_VERSION, np.int64),
                  "layer_sizes": np.array(self._layer_sizes, np.int64),
                  "activation": np.array(self._activation), "output": np.array(self._output),
                  "last_W": self._last[0], "last_b": self._last[1]}
        for l, (Wq, s, b, q) in enumerate(self._hidden):
            arrays.update({f"Wq{l}": Wq, f"scale{l}": s, f"b{l}": b})
            if q is not None:
                arrays[f"input{l}"] = np.array([q[0], q[1]], np.float64)
        io.write_npz_atomically(path, arrays)

    @classmethod
    def load(cls, path) -> "QuantizedMLP":
        """Read a model written by ``save``; ``ValueError`` for anything malformed."""
        arrays = read_npz(path)
        name = repr(os.fspath(path))
        try:
            return cls._from_arrays(arrays)
        except (KeyError, ValueError, TypeError, IndexError, OverflowError) as exc:
            detail = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{name} is not a valid fastmlp QuantizedMLP: {detail}") from None

    @classmethod
    def _from_arrays(cls, arrays) -> "QuantizedMLP":
        if str(arrays["format"]) != FORMAT_NAME:
            raise ValueError(f"format is {str(arrays['format'])!r}, expected {FORMAT_NAME!r}")
        version = arrays["format_version"]
        if version.dtype.kind not in "iu" or version.ndim != 0:
            raise ValueError(f"format_version must be an integer scalar, got a {version.dtype} "
                             f"array of shape {version.shape}")
        if int(version) != FORMAT_VERSION:
            raise ValueError(f"format_version {int(version)} is not "
                             f"{FORMAT_VERSION}")
        if arrays["layer_sizes"].dtype.kind not in "iu" or arrays["layer_sizes"].ndim != 1:
            raise ValueError(f"layer_sizes is a {arrays['layer_sizes'].dtype} array of shape "
                             f"{arrays['layer_sizes'].shape}, expected 1-D integers")
        sizes = [int(n) for n in arrays["layer_sizes"]]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"layer_sizes {sizes} is not a list of >= 2 positive sizes")

        def typed(key, dtype, shape):
            a = arrays[key]
            if a.dtype != dtype or a.shape != shape:
                raise ValueError(f"entry {key!r} is a {a.dtype} array of shape {a.shape}, "
                                 f"expected {np.dtype(dtype)} {shape}")
            return a

        hidden = []
        for l in range(len(sizes) - 2):
            n_in, n_out = sizes[l], sizes[l + 1]
            q = None
            if f"input{l}" in arrays:
                scale, zero = typed(f"input{l}", np.float64, (2,))
                q = (float(scale), float(zero))  # (checked integral by _checked_hidden_layer)
            hidden.append((typed(f"Wq{l}", np.int8, (n_out, n_in)),
                           typed(f"scale{l}", np.float32, (n_out,)),
                           typed(f"b{l}", np.float32, (n_out,)), q))
        statics = {q is None for *_, q in hidden}
        if len(statics) > 1:
            raise ValueError("some layers have static input scales and others not")
        return cls(sizes, str(arrays["activation"]), str(arrays["output"]), hidden,
                   typed("last_W", np.float32, (sizes[-1], sizes[-2])),
                   typed("last_b", np.float32, (sizes[-1],)))
