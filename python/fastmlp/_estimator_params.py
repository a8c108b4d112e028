"""The estimators' ``coefs_`` and ``intercepts_``: views of their MLP's parameters in
scikit-learn's layout (a weight (in, out), the transpose of fastmlp's (out, in))."""

from __future__ import annotations

import numpy as np

from fastmlp.model import MLP

__all__ = ["LayerViews"]


class LayerViews(list):
    """``coefs_`` or ``intercepts_``: read-only views of the model's weights, transposed to
    (in, out), or of its biases. Assigned arrays are shape-checked, then the model checks
    their values and copies them in."""

    def __init__(self, model: MLP, kind: str):
        self._model, self._kind = model, kind
        self._name = "coefs_" if kind == "weights" else "intercepts_"
        super().__init__(self._view(a) for a in getattr(model, kind))

    def _view(self, a: np.ndarray) -> np.ndarray:
        view = (a.T if self._kind == "weights" else a).view()
        view.flags.writeable = False
        return view

    def _for_model(self, i: int, value) -> np.ndarray:
        value = np.asarray(value)
        if value.shape != self[i].shape:
            raise ValueError(f"{self._name}[{i}] has shape {value.shape}, expected "
                             f"{self[i].shape}")
        return value.T if self._kind == "weights" else value

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            raise TypeError("assign parameters one at a time, or replace the whole list")
        i = range(len(self))[index]
        params = getattr(self._model, self._kind)
        params[i] = self._for_model(i, value)
        super().__setitem__(i, self._view(params[i]))

    def assign(self, values) -> None:
        """Replaces every layer's array (all or none)."""
        values = list(values)
        if len(values) != len(self):
            raise ValueError(f"{self._name} needs {len(self)} arrays (one per layer), got "
                             f"{len(values)}")
        setattr(self._model, self._kind, [self._for_model(i, v) for i, v in enumerate(values)])
