"""What an MLP's outputs mean, shared by ``MLP`` and ``QuantizedMLP``: input validation,
labels and targets, probabilities, predictions and scores from the logits. A class using it
has ``_layer_sizes``, ``_activation``, ``_output``, ``_dtype`` and ``_forward(X)`` (the logits
of a validated X)."""

from __future__ import annotations

import numpy as np

from fastmlp import _core
from fastmlp._sparse import is_sparse, sparse_features
from fastmlp._validation import (feature_matrix, indicator_targets, integer_labels,
                                 poisson_targets, regression_targets)

__all__ = ["Outputs"]


class Outputs:
    """The output side of an MLP (see the module's documentation)."""

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
        """The model's dtype: its parameters' (an MLP), or that of the computation outside
        the int8 products and of ``forward`` (a QuantizedMLP)."""
        return self._dtype

    @property
    def n_features(self) -> int:
        return self._layer_sizes[0]

    @property
    def is_classifier(self) -> bool:
        return self._output in ("softmax", "sigmoid", "multilabel")

    @property
    def n_classes(self) -> int:
        """Classes of a classifier (2 for a sigmoid output; the labels for multilabel);
        ValueError for regression."""
        if not self.is_classifier:
            raise ValueError(f"a regression MLP (output={self._output!r}) has no classes")
        return 2 if self._output == "sigmoid" else self._layer_sizes[-1]

    def _features(self, X, name: str = "X"):
        """X validated: a finite 2-D array of the model's dtype, or, for a scipy.sparse
        matrix, a SparseInput (CSR, never made dense)."""
        if is_sparse(X):
            return sparse_features(X, name, self._dtype, self.n_features)
        return feature_matrix(X, name, self._dtype, self.n_features)

    def _labels(self, y, n_samples: int) -> np.ndarray:
        """Class labels (int64, (n,)) of a classifier; targets ((n, n_outputs), the model's
        dtype) of a regression MLP; indicator targets ((n, n_outputs) of 0/1) for multilabel."""
        if self._output == "multilabel":
            return indicator_targets(y, "y", n_samples, self._layer_sizes[-1], self._dtype)
        if self._output == "poisson":
            return poisson_targets(y, "y", n_samples, self._layer_sizes[-1], self._dtype)
        if not self.is_classifier:
            return regression_targets(y, "y", n_samples, self._layer_sizes[-1], self._dtype)
        return integer_labels(y, "y", self.n_classes, n_samples,
                              allow_bool=self._output == "sigmoid", allow_integral_float=True)

    def forward(self, X) -> np.ndarray:
        """Logits (N, n_outputs) for inputs X (N, n_features), a NumPy array or a
        scipy.sparse matrix (read as CSR, never made dense)."""
        return self._forward(self._features(X))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, K); for ``output='sigmoid'``, columns [P(0), P(1)]; for
        ``output='multilabel'``, each label's probability P(y_k = 1) (N, n_outputs)."""
        probabilities = self._probabilities_in_one_call(X)  # (softmax outputs only)
        if probabilities is not None:
            return probabilities
        if not self.is_classifier:
            raise TypeError("predict_proba needs a classifier "
                            "(output 'softmax', 'sigmoid' or 'multilabel')")
        logits = self.forward(X)
        if self._output == "softmax":
            return _core.softmax(logits)
        if self._output == "multilabel":
            return _core.sigmoid(logits)
        p1 = _core.sigmoid(logits)
        return np.concatenate([1.0 - p1, p1], axis=1)

    def _probabilities_in_one_call(self, X) -> np.ndarray | None:
        """predict_proba's result from one call into the core (finite check, forward pass,
        softmax) for the common case: a softmax output and X already what validation would
        make of it, a C-contiguous, aligned 2-D array of the model's dtype and width. None
        otherwise, or when X is not finite: the general path then runs, and its validation
        says what is wrong with X. (A single-sample prediction is ~12 µs, of which the
        Python-side validation and a second call for the softmax took ~2.)"""
        if (self._output != "softmax" or type(X) is not np.ndarray or X.dtype != self._dtype
                or X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != self._layer_sizes[0]):
            return None
        # (C-contiguous and aligned: checked by the core, which answers None otherwise; the
        # two flags cost ~0.1 µs here, 1 % of a float32 single-sample prediction.)
        return self._softmax_in_one_call(X)

    def _softmax_in_one_call(self, X: np.ndarray) -> np.ndarray | None:
        """The model's one-call path for such an X (None: it has none, or X is not finite)."""
        return None

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (N,), int64; for regression the outputs (N, n_outputs)
        (``exp(logits)`` for ``output='poisson'``); for multilabel the indicator matrix
        (N, n_outputs), int64 0/1."""
        return self._predict_logits(self.forward(X))

    def _predict_logits(self, logits: np.ndarray) -> np.ndarray:
        if self._output == "identity":
            return logits
        if self._output == "poisson":
            with np.errstate(over="ignore"):
                return np.exp(logits)
        if self._output == "multilabel":
            return (logits > 0).astype(np.int64)
        if self._output == "softmax":
            return np.argmax(logits, axis=1).astype(np.int64, copy=False)
        return (logits[:, 0] > 0).astype(np.int64)

    def score(self, X, y) -> float:
        """Accuracy (the fraction of samples whose predicted label equals y; for multilabel,
        whose every label does, scikit-learn's subset accuracy); for regression the
        coefficient of determination R², averaged over outputs (as scikit-learn)."""
        X = self._features(X)
        y = self._labels(y, X.shape[0])
        prediction = self._predict_logits(self._forward(X))
        if self.is_classifier:
            return self._accuracy(prediction, y)
        residual = ((y - prediction) ** 2).sum(axis=0, dtype=np.float64)
        total = ((y - y.mean(axis=0)) ** 2).sum(axis=0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(total > 0, 1 - residual / total, np.where(residual > 0, 0.0, 1.0))
        return float(r2.mean())

    def _accuracy(self, prediction: np.ndarray, y: np.ndarray) -> float:
        if self._output == "multilabel":
            return float(np.mean(np.all(prediction == y, axis=1)))
        return float(np.mean(prediction == y))
