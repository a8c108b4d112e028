"""The estimators' ``quantize``: a copy of a fitted ``MLPClassifier`` / ``MLPRegressor`` whose
network is the int8 ``QuantizedMLP`` (fastmlp.quantized), for inference only."""

from __future__ import annotations

import copy

from sklearn.utils.validation import check_is_fitted

from fastmlp.model import MLP

__all__ = ["Quantizable", "QuantizedHasNoError"]


class QuantizedHasNoError(TypeError, AttributeError):
    """What a quantized estimator lacks (fit, coefs_, ...): a TypeError, and an AttributeError
    so that ``hasattr(estimator, "coefs_")`` is False (as scikit-learn's NotFittedError)."""


class Quantizable:
    """A mixin of ``_BaseMLP`` (which provides ``_model`` and ``_check_X``)."""

    def quantize(self, dtype: str = "int8", calibration=None):
        """A copy of this fitted estimator on ``MLP.quantize(dtype, calibration)``'s int8
        ``QuantizedMLP`` (``calibration``: None for activation scales from each sample's own range,
        or a sample X for fixed ones): predicts and scores as this one (``classes_``
        included); it cannot be fitted (fit the original, quantize again) and has no
        ``coefs_`` / ``intercepts_``."""
        check_is_fitted(self)
        self._refuse_if_quantized("quantize (it is int8 already)")
        if calibration is not None:
            try:
                calibration = self._check_X(calibration)[0]
            except (ValueError, TypeError) as exc:  # (scikit-learn's checks say "Input X")
                raise type(exc)(f"calibration: {exc}") from None
        quantized = copy.copy(self)  # shallow: the copy never trains, so shares safely
        # ... except the lists the original's next fits append to (loss_curve_, the
        # validation curves): the copy gets its own.
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(quantized, name, list(value))
        quantized._model = self._model.quantize(dtype, calibration=calibration)
        return quantized

    def _refuse_if_quantized(self, what: str) -> None:
        if "_model" in self.__dict__ and not isinstance(self._model, MLP):
            raise QuantizedHasNoError(f"this estimator was quantized for inference and has no "
                                      f"{what}: fit the original estimator and call quantize() "
                                      "again")
