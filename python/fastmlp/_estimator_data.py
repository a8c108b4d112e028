"""Targets, weights and validation data of the scikit-learn estimators (``estimators.py``).

Input checking itself is scikit-learn's (``validate_data``, ``check_classification_targets``,
``_check_sample_weight``); this module turns checked inputs into what the engine trains on:
class indices, per-sample class weights, regression targets in the model's dtype, the
(stratified) early-stopping split, the validation metrics, and scikit-learn's clipped
log-loss (which ``solver="lbfgs"`` needs to take scikit-learn's steps).

Legend: N samples, K classes or regression outputs.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.special import expit, xlogy
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import _check_sample_weight, check_array, column_or_1d

from fastmlp import _core
from fastmlp._core import first_nonfinite
from fastmlp._sparse import SparseInput, is_sparse, sparse_features
from fastmlp._validation import FLOAT_DTYPES

# The dtypes validate_data keeps (anything else becomes float64): scikit-learn's MLP computes
# in them and predicts in them; fastmlp computes in the estimator's dtype, predicts in them.
INPUT_DTYPES = (np.float64, np.float32)


def sample_weights(sample_weight, X) -> np.ndarray | None:
    """None, or float64 (N,) weights: finite, >= 0, not all zero."""
    if sample_weight is None:
        return None
    w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    if not w.any():  # scikit-learn checks this itself from 1.9 on
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w


def in_model_dtype(X, dtype: np.dtype, warn):
    """Checked X (finite, of ``INPUT_DTYPES``) as C-contiguous ``dtype``. Finite values beyond
    float32's range saturate to its largest magnitude, with a DataConversionWarning given to
    ``warn(message, category)``: as scikit-learn's float64 training on values that overflow
    it, training on them usually ends in "Solver produced non-finite parameter weights".
    A sparse X (CSR from validate_data) becomes the engine's SparseInput (its non-zeros
    converted the same way), made once per fit rather than at every epoch's validation or
    every L-BFGS evaluation."""
    if is_sparse(X):
        values = in_model_dtype(X.data, dtype, warn)
        if values is not X.data:
            X = type(X)((values, X.indices, X.indptr), shape=X.shape)
        return sparse_features(X, "X", dtype)
    if X.dtype == dtype:
        return X
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(X, dtype=dtype)
    if first_nonfinite(converted) >= 0:
        limit = np.finfo(dtype).max
        warn(f"X has values beyond the range of {dtype.name}, the estimator's dtype: they are "
             f"saturated to ±{limit:.8g}. Scale the data, or use dtype='float64'.",
             DataConversionWarning)
        converted = np.ascontiguousarray(np.clip(X, -limit, limit), dtype=dtype)
    return converted


# Below this many weights NumPy's own draws cost less than handing the generator's state over.
_NATIVE_DRAWS_FROM = 1 << 16


def uniform_transposed_into(out: np.ndarray, rng: np.random.RandomState, low: float,
                            high: float) -> None:
    """out (fan_out, fan_in) ← the transpose of ``rng.uniform(low, high, (fan_in, fan_out))``,
    as scikit-learn draws its coefs_, advancing rng the same. A large layer's draws are made by
    the core (MT19937, NumPy's legacy stream bit for bit) straight into out: for 65,536 × 256,
    ~50 ms instead of ~0.37 s for NumPy's draws and the transposed copy."""
    state = rng.get_state(legacy=False)
    if out.size < _NATIVE_DRAWS_FROM or state["bit_generator"] != "MT19937":
        out[...] = rng.uniform(low, high, out.shape[::-1]).T
        return
    key = np.array(state["state"]["key"], dtype=np.uint32)
    state["state"]["pos"] = _core.legacy_uniform_transposed(key, int(state["state"]["pos"]),
                                                            out, float(low), float(high))
    state["state"]["key"] = key
    rng.set_state(state)


def take_rows(X, index: np.ndarray):
    """Rows `index` of a dense X or of a SparseInput."""
    return X.rows(index) if isinstance(X, SparseInput) else X[index]


def output_dtype(X: np.ndarray) -> np.dtype:
    """The dtype of scikit-learn's predictions (probabilities, regression outputs) for an
    ndarray X: its own if float32 or float64, else float64 (what validate_data makes of it)."""
    return X.dtype if X.dtype in FLOAT_DTYPES else np.dtype(np.float64)


def probabilities(logits: np.ndarray, output_kind: str) -> np.ndarray:
    """predict_proba of logits (N, K) in their dtype: softmax; for one logistic unit
    [1 - p, p]; multilabel each label's p."""
    if output_kind == "softmax":
        return np.exp(log_softmax(logits))
    p = expit(logits)
    return p if output_kind == "multilabel" else np.concatenate([1 - p, p], axis=1)


def is_multilabel(y) -> bool:
    """Whether y (as ``validate_data`` returns it) is a multilabel indicator matrix (N, L),
    L >= 2, of 0 and 1, as scikit-learn's ``type_of_target`` says "multilabel-indicator"."""
    return (y.ndim == 2 and y.shape[1] > 1
            and type_of_target(y) == "multilabel-indicator")


def indicator_targets(y, dtype: np.dtype, name: str = "y") -> np.ndarray:
    """A multilabel indicator matrix (N, L) as C-contiguous 0./1. of ``dtype`` (LabelBinarizer
    keeps a "multilabel-indicator" y as it is: its classes_ are arange(L))."""
    if not is_multilabel(y):
        raise ValueError(f"{name} must be a multilabel indicator matrix like the fitted y, "
                         f"got {type_of_target(y)!r} targets of shape {np.shape(y)}")
    t = np.asarray(y)
    if not np.all((t == 0) | (t == 1)):
        raise ValueError(f"{name} must be an indicator matrix of 0 and 1")
    return np.ascontiguousarray(t, dtype=dtype)


def class_labels(y) -> np.ndarray:
    """Labels (N,) of a single-output classification target (y as ``validate_data`` returns
    it with ``multi_output=True``)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim != 1:
        raise ValueError(
            f"multi-output targets are not supported: y has shape {y.shape} and is not a "
            "multilabel indicator matrix of 0 and 1. Use 1-D class labels, a multilabel "
            "indicator matrix, or one classifier per output "
            "(sklearn.multioutput.MultiOutputClassifier).")
    if y.dtype.kind in "iubU":
        # 1-D ints, bools and strings are always "binary" or "multiclass", which the check
        # accepts. Skipping it saves 0.12 ms on 50 int labels, 0.2 ms on digits' 1797 and
        # 0.8 ms on 1797 strings (a digits fit takes 7 ms), and skips the warning of
        # scikit-learn >= 1.7 when over half the samples have a class of their own.
        return y
    try:
        check_classification_targets(y)
    except TypeError as exc:  # labels that do not sort, e.g. strings among numbers
        raise ValueError(f"Mix of label input types: {exc}") from None
    return y


def encode_labels(classes: np.ndarray, y: np.ndarray, name: str = "y") -> np.ndarray:
    """int64 (N,) indices into the sorted ``classes`` of labels y; ValueError for others."""
    try:
        index = np.searchsorted(classes, y)
        known = classes.take(np.minimum(index, len(classes) - 1)) == y
    except TypeError:  # labels of another kind than classes (e.g. str vs int)
        known = np.zeros(len(y), dtype=bool)
        index = None
    if not np.all(known):
        try:
            present = np.unique(y)
        except TypeError:  # labels that do not sort together: in order of appearance
            present = np.array(list(dict.fromkeys(np.asarray(y).tolist())), dtype=object)
        # scikit-learn's message, word for word
        raise ValueError(f"`{name}` has classes not in `self.classes_`. `self.classes_` has "
                         f"{classes}. '{name}' has {present}.")
    return np.ascontiguousarray(index, dtype=np.int64)


def class_weights(class_weight, classes: np.ndarray, encoded: np.ndarray, sample_weight,
                  incremental: bool) -> np.ndarray | None:
    """Per-sample weights (N,) of ``class_weight`` (None without it). "balanced" is
    ``n / (n_classes · count)`` over the classes present, counts weighted by sample_weight
    (``compute_class_weight``'s rule; it takes sample_weight from scikit-learn 1.7 on, and
    gives a class whose samples all weigh 0 an infinite weight where this gives 0)."""
    if class_weight is None:
        return None
    k = len(classes)
    if isinstance(class_weight, str):  # "balanced", the one string the constraints allow
        if incremental:
            raise ValueError(
                "class_weight 'balanced' is not supported for partial_fit: each call sees "
                "only a part of the data. Pass a dict computed on all of it instead, e.g. "
                "dict(zip(classes, sklearn.utils.class_weight.compute_class_weight("
                "'balanced', classes=classes, y=y_all))).")
        return balanced_class_weights(class_counts(encoded, sample_weight, k))[encoded]
    per_class = np.ones(k)
    unweighted = []
    for i, label in enumerate(classes):
        key = label.item() if hasattr(label, "item") else label
        if key in class_weight:
            value = class_weight[key]
            if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                    or not np.isfinite(value) or value < 0):
                raise ValueError(f"class_weight[{key!r}] must be a finite number >= 0, "
                                 f"got {value!r}")
            per_class[i] = float(value)
        else:
            unweighted.append(key)
    if unweighted and k - len(unweighted) != len(class_weight):
        raise ValueError(f"The classes, {unweighted}, are not in class_weight")
    return per_class[encoded]


def class_counts(encoded: np.ndarray, sample_weight, n_classes: int) -> np.ndarray:
    """Each class's count (K,) in float64, weighted by sample_weight (None: 1 each)."""
    return np.bincount(encoded, weights=sample_weight, minlength=n_classes).astype(np.float64)


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """class_weight="balanced" per class (K,) from the class counts: total / (classes
    present · count), 0 for a class with no count."""
    present = counts > 0
    per_class = np.zeros(counts.size)
    per_class[present] = counts.sum() / (np.count_nonzero(present) * counts[present])
    return per_class


def regression_targets(y: np.ndarray, dtype: np.dtype, name: str = "y") -> np.ndarray:
    """Finite C-contiguous (N, K) targets of ``dtype`` from a checked y (N,) or (N, K);
    a column vector (N, 1) warns, as scikit-learn."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused by the check
        return check_array(y.reshape(len(y), -1), dtype=dtype, order="C", input_name=name)


def check_stratifiable(n_classes: int, encoded: np.ndarray) -> None:
    """scikit-learn's refusal (``StratifiedShuffleSplit``) to stratify the targets of one
    output unit (up to 2 classes, ``encoded`` 0/1) where a class has a single member, with its
    message, which names the binarized value it stratifies on: ``'True'`` for the second
    class, ``'False'`` for the first (or only) one."""
    counts = np.bincount(encoded, minlength=n_classes)
    lone = (counts > 0) & (counts < 2)
    if lone.any():
        raise ValueError(
            "The least populated classes in y have only 1 member, which is too few. The "
            "minimum number of groups for any class cannot be less than 2. Classes with too "
            f"few members are: {[str(bool(k)) for k in np.flatnonzero(lone)]}")


def split_indices(n: int, fraction: float, rng: np.random.RandomState, classes=None):
    """(train, validation) row indices, both sorted: ``ceil(fraction · n)`` rows held out at
    random; with ``classes`` (encoded labels) stratified: each class keeps its share of the
    validation rows (largest remainders round) and at least one training row."""
    n_val = int(math.ceil(fraction * n))
    if n_val < 2 or n - n_val < 1:
        raise ValueError("The validation set is too small. Increase 'validation_fraction' or "
                         f"the size of your dataset (got {n} samples, {n_val} held out).")
    if classes is None:
        order = rng.permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    counts = np.bincount(classes)
    exact = n_val * counts / n
    take = np.minimum(np.floor(exact).astype(np.int64), np.maximum(counts - 1, 0))
    # Hand out the rest by largest remainder (ties at random), one per class per round.
    remainder = exact - take + rng.uniform(0, 1e-9, size=counts.size)
    for cap in (np.maximum(counts - 1, 0), counts):
        while take.sum() < n_val and (take < cap).any():
            room = np.where(take < cap, remainder, -np.inf)
            k = int(np.argmax(room))
            take[k] += 1
            remainder[k] -= 1.0
    val = []
    for k in np.flatnonzero(take):
        members = np.flatnonzero(classes == k)
        val.append(members[rng.permutation(members.size)[:take[k]]])
    val = np.sort(np.concatenate(val))
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def clipped_log_loss(logits, targets, weights=None) -> float:
    """scikit-learn's MLP log-loss: probabilities clipped to [eps, 1 - eps] (eps of their
    dtype) before the log, so a sample's loss is at most -log(eps) (36.04 in float64, 15.94
    in float32), and the binary probability of class 0 is ``1 - σ(z)`` as it computes it.
    logits (N, K) or (N, 1) for binary problems; targets (N,) class indices, or (N, L) 0/1
    for multilabel (each label's probability clipped, the losses summed over labels)."""
    eps = np.finfo(logits.dtype).eps
    if targets.ndim == 2:
        p = np.clip(expit(logits), eps, 1 - eps)
        losses = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(axis=1)
    elif logits.shape[1] == 1:
        p = np.clip(expit(logits[:, 0]), eps, 1 - eps)
        losses = -np.log(np.where(targets == 1, p, 1 - p))
    else:
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        losses = -np.log(np.clip(p[np.arange(len(targets)), targets], eps, 1 - eps))
    return float(np.average(losses, weights=weights))


def classification_metrics(logits, targets, weights, n_classes: int) -> tuple[float, float]:
    """(accuracy, mean log-loss) of logits (N, 1 or K) against class indices (N,); one
    class (one logistic unit, target 0) is always predicted, as scikit-learn's ``predict``.
    Multilabel (targets (N, L) of 0/1): subset accuracy (every label right, scikit-learn's
    ``accuracy_score``) and the binary log-loss summed over labels."""
    logits = logits.astype(np.float64)
    if targets.ndim == 2:
        correct = np.all((logits > 0) == (targets == 1), axis=1)
        losses = np.logaddexp(0.0, np.where(targets == 1, -logits, logits)).sum(axis=1)
        return (float(np.average(correct, weights=weights)),
                float(np.average(losses, weights=weights)))
    if logits.shape[1] == 1:
        z = logits[:, 0]
        predicted = (z > 0).astype(np.int64) if n_classes == 2 else np.zeros_like(targets)
        # -log σ(z) = softplus(-z), -log(1 - σ(z)) = softplus(z)
        losses = np.logaddexp(0.0, np.where(targets == 1, -z, z))
    else:
        predicted = np.argmax(logits, axis=1)
        losses = -log_softmax(logits)[np.arange(len(targets)), targets]
    accuracy = float(np.average(predicted == targets, weights=weights))
    return accuracy, float(np.average(losses, weights=weights))


def poisson_metrics(raw, targets, weights) -> tuple[float, float]:
    """(R² of exp(raw), mean half Poisson deviance summed over outputs) of raw outputs (N, K)
    against targets (N, K) >= 0, as scikit-learn's poisson_loss (with y log y, 0 log 0 = 0)."""
    raw = raw.astype(np.float64)
    y = np.asarray(targets, dtype=np.float64)
    with np.errstate(over="ignore"):
        mu = np.exp(raw)
    deviance = (xlogy(y, y) - y - y * raw + mu).sum(axis=1)
    return r2(targets, mu, weights), float(np.average(deviance, weights=weights))


def regression_metrics(outputs, targets, weights) -> tuple[float, float]:
    """(R², ½ mean squared error per output) of outputs (N, K) against targets (N, K)."""
    error = outputs.astype(np.float64) - targets
    loss = 0.5 * np.average(np.mean(error * error, axis=1), weights=weights)
    return r2(targets, outputs, weights), float(loss)


def r2(y: np.ndarray, pred: np.ndarray, weights=None) -> float:
    """R² per output (columns), averaged: ``r2_score`` (force_finite) at a fraction of its
    cost, for scoring the validation set after every epoch."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    w = np.ones((len(y), 1)) if weights is None else np.asarray(weights).reshape(-1, 1)
    numerator = (w * (y - pred) ** 2).sum(axis=0)
    denominator = (w * (y - np.average(y, axis=0, weights=w[:, 0])) ** 2).sum(axis=0)
    return r2_of_sums(numerator, denominator)


def r2_of_sums(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """R² averaged over outputs from each output's Σw(y - pred)² and Σw(y - mean y)²
    (force_finite: a constant target scores 1 when predicted exactly, else 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(denominator > 0, 1.0 - numerator / denominator,
                      np.where(numerator > 0, 0.0, 1.0))
    return float(r2.mean())
