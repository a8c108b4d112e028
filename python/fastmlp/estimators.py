"""scikit-learn estimators on fastmlp's engine: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in counterparts of ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` (same
parameter names and meanings, same fitted attributes, same initialisation and stopping rules)
whose epochs run in fastmlp's C++ training engine. scikit-learn is optional: when it is
installed the estimators inherit from ``sklearn.base.BaseEstimator`` and its mixins (so
``clone``, ``Pipeline``, ``GridSearchCV``, metadata routing and ``check_estimator`` work);
without it they implement the same ``get_params`` / ``set_params`` / ``repr`` protocol
themselves. Either way the estimators validate their inputs, train and predict the same way.

Legend: N samples, F features (``n_features_in_``), K classes or regression outputs,
``layer_units = [F, *hidden_layer_sizes, n_outputs]``. scikit-learn's orientation:
``coefs_[i]`` (layer_units[i], layer_units[i+1]) maps rows of inputs to rows of outputs,
``h_{i+1} = act(h_i @ coefs_[i] + intercepts_[i])``; fastmlp's ``MLP.weights[i]`` is its
transpose (the ``torch.nn.Linear`` layout).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
import sys
import warnings

import numpy as np

from fastmlp._threads import get_num_threads, one_thread_fallback_message, set_num_threads
from fastmlp.model import MLP
from fastmlp.optim import SGD, Adam

try:  # scikit-learn is optional; everything below also works without it
    from sklearn.base import BaseEstimator as _BaseEstimator
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.base import RegressorMixin as _RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    _HAVE_SKLEARN = True
except ImportError:
    _HAVE_SKLEARN = False

__all__ = ["MLPClassifier", "MLPRegressor", "ConvergenceWarning", "NotFittedError",
           "DataConversionWarning"]


# ---- the estimator protocol without scikit-learn ----------------------------------------------

if not _HAVE_SKLEARN:

    class ConvergenceWarning(UserWarning):
        """Training stopped at ``max_iter`` before the stopping criterion was met
        (``sklearn.exceptions.ConvergenceWarning`` when scikit-learn is installed)."""

    class DataConversionWarning(UserWarning):
        """Input was converted implicitly, e.g. a column-vector y raveled
        (``sklearn.exceptions.DataConversionWarning`` when scikit-learn is installed)."""

    class NotFittedError(ValueError, AttributeError):
        """A method that needs a fitted estimator was called before ``fit``
        (``sklearn.exceptions.NotFittedError`` when scikit-learn is installed)."""

    class _BaseEstimator:
        """scikit-learn's parameter protocol: ``__init__`` stores its keyword arguments
        verbatim; ``get_params``/``set_params`` read and write them (``name__param`` reaches
        into nested estimators); ``repr`` shows the ones that differ from the defaults."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            parameters = inspect.signature(cls.__init__).parameters.values()
            return sorted(p.name for p in parameters
                          if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

        def get_params(self, deep: bool = True) -> dict:
            params = {}
            for name in self._get_param_names():
                value = getattr(self, name)
                if deep and hasattr(value, "get_params") and not isinstance(value, type):
                    params.update((f"{name}__{k}", v) for k, v in value.get_params().items())
                params[name] = value
            return params

        def set_params(self, **params):
            valid = self.get_params(deep=True)
            nested: dict[str, dict] = {}
            for key, value in params.items():
                name, _, sub = key.partition("__")
                if name not in valid:
                    raise ValueError(
                        f"Invalid parameter {name!r} for estimator {self}. Valid parameters "
                        f"are: {self._get_param_names()!r}.")
                if sub:
                    nested.setdefault(name, {})[sub] = value
                else:
                    setattr(self, name, value)
                    valid[name] = value
            for name, sub_params in nested.items():
                valid[name].set_params(**sub_params)
            return self

        def __repr__(self) -> str:
            defaults = {p.name: p.default
                        for p in inspect.signature(type(self).__init__).parameters.values()}
            changed = []
            for name in self._get_param_names():
                value = getattr(self, name)
                default = defaults.get(name, inspect.Parameter.empty)
                if not _same_value(value, default):
                    changed.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(changed)})"

    class _ClassifierMixin:
        _estimator_type = "classifier"

    class _RegressorMixin:
        _estimator_type = "regressor"


def _same_value(a, b) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # arrays and other objects without a scalar ==
        return False


# ---- input validation (one path, with or without scikit-learn; its messages) -----------------

def _warn(message: str, category) -> None:
    """warnings.warn attributed to the first caller outside this module (the user's line)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _is_sparse(value) -> bool:
    sparse = sys.modules.get("scipy.sparse")  # a sparse input means scipy is already imported
    return sparse is not None and sparse.issparse(value)


def _feature_names(X):
    """Column names of a DataFrame when all are strings (scikit-learn's rule), else None."""
    columns = getattr(X, "columns", None)
    if columns is None or not (hasattr(X, "__dataframe__") or hasattr(X, "iloc")):
        return None
    names = np.asarray(list(columns), dtype=object)
    if names.size == 0:
        return None
    kinds = sorted({type(v).__qualname__ for v in names})
    if len(kinds) > 1 and "str" in kinds:
        raise TypeError(
            "Feature names are only supported if all input features have string names, but "
            f"your input has {kinds} as feature name / column name types. If you want feature "
            "names to be stored and validated, you must convert them all to strings, by using "
            "X.columns = X.columns.astype(str) for example. Otherwise you can remove feature / "
            "column names from your input data, or convert them all to a non-string data type.")
    return names if kinds == ["str"] else None


def _check_finite(a: np.ndarray, name: str) -> None:
    if a.dtype.kind != "f" or np.isfinite(a).all():
        return
    if np.isnan(a).any():
        raise ValueError(f"Input {name} contains NaN.")
    raise ValueError(f"Input {name} contains infinity or a value too large for {a.dtype!r}.")


def _as_numeric(value, name: str, dtype=None) -> np.ndarray:
    """An ndarray of real numbers from array-likes, DataFrames and Series (converted to
    ``dtype`` when given); sparse, complex and string data are refused."""
    if _is_sparse(value):
        raise TypeError(f"sparse input is not supported: {name} is a {type(value).__name__}; "
                        f"convert it with {name}.toarray() (the engine reads dense rows)")
    if value is None:
        raise ValueError(f"Expected array-like (array or non-string sequence), got None "
                         f"for {name}")
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):  # pandas, polars
        try:
            value = value.to_numpy(dtype=dtype, na_value=np.nan) if dtype is not None else \
                value.to_numpy()
        except TypeError:
            value = value.to_numpy()
    a = np.asarray(value)
    if a.dtype.kind == "c":
        raise ValueError(f"Complex data not supported\n{name} has dtype {a.dtype}")
    if a.dtype.kind in "USV":
        raise ValueError(f"dtype='numeric' is not compatible with arrays of bytes/strings: "
                         f"{name} has dtype {a.dtype}. Convert your data to numeric values "
                         "explicitly instead.")
    if a.dtype.kind == "O":
        a = a.astype(np.float64 if dtype is None else dtype)  # TypeError for non-numbers
    elif a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        with np.errstate(over="ignore"):  # float64 beyond float32's range -> inf, reported below
            a = a.astype(dtype)
    return a


def _check_X(estimator, X, *, reset: bool, dtype: np.dtype) -> np.ndarray:
    """X as a finite C-contiguous (N, F) array of ``dtype``; on ``reset`` records
    ``n_features_in_`` / ``feature_names_in_``, otherwise checks X against them."""
    names = _feature_names(X)
    cls = type(estimator).__name__
    if reset:
        if names is not None:
            estimator.feature_names_in_ = names
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    else:
        _check_feature_names(estimator, names)
    X = _as_numeric(X, "X", dtype)
    if X.ndim != 2:
        hint = ("Reshape your data either using array.reshape(-1, 1) if your data has a "
                "single feature or array.reshape(1, -1) if it contains a single sample."
                if X.ndim == 1 else "")
        raise ValueError(f"Expected 2D array, got {X.ndim}D array instead (shape {X.shape}). "
                         + hint)
    if X.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of "
                         "1 is required.")
    if X.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of "
                         "1 is required.")
    _check_finite(X, "X")
    if reset:
        estimator.n_features_in_ = X.shape[1]
    elif X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {cls} is expecting "
                         f"{estimator.n_features_in_} features as input.")
    return np.require(X, requirements=["C", "A"])


def _check_feature_names(estimator, names) -> None:
    fitted = getattr(estimator, "feature_names_in_", None)
    cls = type(estimator).__name__
    if fitted is None and names is None:
        return
    if fitted is None:
        _warn(f"X has feature names, but {cls} was fitted without feature names", UserWarning)
        return
    if names is None:
        _warn(f"X does not have valid feature names, but {cls} was fitted with feature "
              "names", UserWarning)
        return
    if len(fitted) == len(names) and np.all(fitted == names):
        return
    message = "The feature names should match those that were passed during fit.\n"
    unexpected = sorted(set(names) - set(fitted))
    missing = sorted(set(fitted) - set(names))

    def listing(items):
        lines = [f"- {item}\n" for item in items[:5]]
        return "".join(lines) + ("- ...\n" if len(items) > 5 else "")

    if unexpected:
        message += "Feature names unseen at fit time:\n" + listing(unexpected)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + listing(missing)
    if not unexpected and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def _check_length(n_samples: int, other: np.ndarray, name: str) -> None:
    if other.shape[0] != n_samples:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                         f"[{n_samples}, {other.shape[0]}] (X and {name})")


def _column_or_1d(y: np.ndarray, name: str = "y") -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        _warn("A column-vector y was passed when a 1d array was expected. Please change the "
              "shape of y to (n_samples, ), for example using ravel().", DataConversionWarning)
        return y[:, 0]
    return y


def _check_sample_weight(sample_weight, n_samples: int, name: str = "sample_weight"):
    """None, or a finite non-negative float64 (N,) copy with a positive sum."""
    if sample_weight is None:
        return None
    w = _as_numeric(sample_weight, name, np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.ndim != 1:
        raise ValueError(f"{name} must be 1D array or scalar, got shape {w.shape}")
    if w.shape[0] != n_samples:
        raise ValueError(f"{name}.shape == {w.shape}, expected ({n_samples},)!")
    _check_finite(w, name)
    if (w < 0).any():
        raise ValueError(f"Negative values in data passed to {name}: weights must be >= 0")
    if not w.any():
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return np.array(w, dtype=np.float64, copy=True)


def _class_labels(y, name: str = "y") -> np.ndarray:
    """1-D class labels (any sortable kind: ints, floats with integral values, strings,
    bools, objects); refuses continuous, multilabel and mixed string/number targets."""
    if _is_sparse(y):
        raise TypeError(f"sparse input is not supported: {name} is a {type(y).__name__}")
    if y is None:
        raise ValueError("requires y to be passed, but the target y is None")
    if hasattr(y, "to_numpy") and not isinstance(y, np.ndarray):
        y = y.to_numpy()
    y = np.asarray(y)
    if y.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    y = _column_or_1d(y, name)
    if y.ndim == 2:
        raise ValueError(
            f"multilabel and multi-output targets are not supported: {name} has shape "
            f"{y.shape}. Use 1-D class labels, or one classifier per output "
            "(sklearn.multioutput.MultiOutputClassifier).")
    if y.ndim != 1:
        raise ValueError(f"{name} should be a 1d array, got an array of shape {y.shape} instead.")
    if y.dtype.kind == "O":
        is_str = np.array([isinstance(v, str) for v in y], dtype=bool)
        if is_str.any() and not is_str.all():
            raise ValueError("Mix of label input types (string and number)")
        if not is_str.any() and y.size:
            try:
                y = np.asarray(y.tolist())  # numbers held as objects
            except Exception:
                raise ValueError("Unknown label type: unknown") from None
            if y.dtype.kind not in "biuf":
                raise ValueError(f"Unknown label type: {y.dtype}")
    if y.dtype.kind == "f":
        _check_finite(y, name)
        if (y != np.round(y)).any():
            raise ValueError(
                "Unknown label type: continuous. Maybe you are trying to fit a classifier, "
                "which expects discrete classes on a regression target with continuous values.")
    return y


def _random_state(seed) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``: None is NumPy's global RandomState."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {seed!r}")


@contextlib.contextmanager
def _num_threads(n):
    """fastmlp's thread count set to n for the block (n None: left as it is)."""
    if n is None:
        yield
        return
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def _split_indices(n: int, fraction: float, rng: np.random.RandomState, classes=None):
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


def _r2(y: np.ndarray, pred: np.ndarray, weights=None) -> float:
    """R² per output (columns), averaged; scikit-learn's ``r2_score`` (force_finite)."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    w = np.ones((len(y), 1)) if weights is None else np.asarray(weights).reshape(-1, 1)
    numerator = (w * (y - pred) ** 2).sum(axis=0)
    denominator = (w * (y - np.average(y, axis=0, weights=w[:, 0])) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(denominator > 0, 1.0 - numerator / denominator,
                      np.where(numerator > 0, 0.0, 1.0))
    return float(r2.mean())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _squared_norm(arrays) -> float:
    return float(sum(np.dot(a.ravel(), a.ravel()) for a in arrays))


_DOC_PARAMETERS = """
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Units of each hidden layer; ``()`` is no hidden layer (a linear model).

    activation : {"relu", "tanh", "logistic", "identity"}, default="relu"
        Activation of the hidden layers.

    solver : {"adam", "sgd"}, default="adam"
        Mini-batch optimizer. ``"lbfgs"`` (and with it scikit-learn's ``max_fun``) is not
        supported: it raises ``ValueError``.

    alpha : float >= 0, default=1e-4
        L2 penalty: each batch's loss gains ``alpha/2 · Σ‖W‖² / n_batch`` (biases are not
        penalised), as in scikit-learn. With ``sample_weight`` (or ``class_weight``), weights act
        like repetition counts: ``alpha`` is scaled by ``N / Σ weights`` (scikit-learn divides by
        each batch's weight total; the two agree exactly for full-batch training and when the
        weights average 1, e.g. ``class_weight="balanced"``).

    batch_size : int or "auto", default="auto"
        Rows per step; ``"auto"`` is ``min(200, n_samples)``. Larger than the data: clipped,
        with a warning (as scikit-learn).

    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Step-size schedule of ``solver="sgd"`` (ignored by Adam), as scikit-learn:
        ``"invscaling"`` uses ``learning_rate_init / (t + 1) ** power_t`` with t the samples seen
        before the epoch; ``"adaptive"`` divides the rate by 5 whenever ``n_iter_no_change``
        epochs fail to improve by ``tol`` and stops once it is below 1e-6. The rate changes
        between epochs only.

    learning_rate_init : float > 0, default=1e-3
        Initial step size.

    power_t : float >= 0, default=0.5
        Exponent of ``learning_rate="invscaling"``.

    max_iter : int >= 1, default=200
        Most epochs per ``fit``. Reaching it before the stopping rule fires warns with
        ``ConvergenceWarning``.

    shuffle : bool, default=True
        Visit the rows in a fresh random order every epoch (drawn from ``random_state``).

    random_state : None, int or numpy.random.RandomState, default=None
        Seeds the initial weights (scikit-learn's Glorot-uniform scheme, drawn in its order:
        the same ``random_state`` gives the same initial weights as scikit-learn), the
        validation split and the shuffles. None uses NumPy's global RandomState.

    tol : float >= 0, default=1e-4
        Improvement threshold of the stopping rule: training stops after ``n_iter_no_change``
        consecutive epochs whose training loss (validation score with early stopping) fails to
        beat the best by ``tol``.

    verbose : bool or int, default=False
        Print the loss (and validation score) after every epoch, in scikit-learn's format.

    warm_start : bool, default=False
        ``fit`` continues from the current weights instead of reinitialising (the architecture,
        classes and dtype must stay the same). The optimizer starts afresh (as in scikit-learn);
        ``loss_curve_``, ``validation_scores_`` and the best values found so far carry over,
        while ``n_iter_`` and the no-improvement counter restart.

    momentum : float in [0, 1], default=0.9
        SGD momentum. fastmlp uses PyTorch's formulation, equal to scikit-learn's for a
        constant step size; when an ``"adaptive"``/``"invscaling"`` schedule changes the step,
        the accumulated velocity follows the new step immediately.

    nesterovs_momentum : bool, default=True
        Nesterov momentum (with ``momentum > 0``).

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified by class for the
        classifier), or use ``X_val``/``y_val`` given to ``fit``, score it after every epoch
        (``score``'s metric), stop when the score fails to improve by ``tol`` for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch. Not available
        with ``partial_fit`` (``ValueError``).

    validation_fraction : float in [0, 1), default=0.1
        Share of the training data held out for early stopping (at least 2 rows).

    beta_1, beta_2 : float in [0, 1), default=0.9, 0.999
        Adam's moment decay rates.

    epsilon : float > 0, default=1e-8
        Adam's denominator term. fastmlp adds it to the bias-corrected ``sqrt(v̂)`` (PyTorch),
        scikit-learn to the uncorrected ``sqrt(v)``: the steps differ only while ``sqrt(v)``
        is comparable to ``epsilon``.

    n_iter_no_change : int >= 1 or numpy.inf, default=10
        Epochs without improvement before stopping (or lowering an adaptive rate).

    dtype : "float32" or "float64", default="float32"
        Precision of the weights and of all arithmetic. float32 is the default (scikit-learn
        trains in float64 unless given float32 data): inputs of other dtypes are converted once
        per call, and weights, probabilities and regression outputs stay in this dtype (no
        silent upcast).

    n_threads : int >= 1 or None, default=None
        Threads of fastmlp's kernels during ``fit``/``partial_fit``/``predict*``/``score``
        (``fastmlp.set_num_threads`` is set for the call and restored after; it is
        process-wide while the call runs). None leaves the current setting (by default every
        core the process may use, or ``OMP_NUM_THREADS``, which joblib sets in its workers:
        ``GridSearchCV(n_jobs=...)`` needs no setting). Results do not depend on it; see
        docs/threads.md for when threads are used at all.
"""

_DOC_ATTRIBUTES = """
    loss_ : float
        Training loss of the last epoch: the mean over its batches (weighted by their rows)
        of each batch's mean loss plus the L2 penalty, as scikit-learn reports it.

    loss_curve_ : list of float
        ``loss_`` after every epoch (all calls with ``warm_start``/``partial_fit``).

    best_loss_ : float or None
        Lowest ``loss_`` seen; None when ``early_stopping`` is on (scikit-learn's convention:
        then the validation score decides).

    validation_scores_ : list of float or None
        Validation score (accuracy / R², weighted by ``sample_weight_val``) after every epoch;
        present with early stopping or ``X_val``, otherwise None.

    validation_loss_curve_ : list of float or None
        Validation loss after every epoch (the data loss without the L2 penalty; for the
        regressor divided by the number of outputs, like ``loss_``); None like
        ``validation_scores_``.

    best_validation_score_ : float or None
        Best of ``validation_scores_`` (the epoch whose weights early stopping keeps).

    n_iter_ : int
        Epochs run by the last ``fit`` (1 after a ``partial_fit``), as scikit-learn.

    t_ : int
        Training samples seen by the optimizer across all calls.

    coefs_ : list of ndarray, shapes (layer_units[i], layer_units[i+1])
        Weights in scikit-learn's (in, out) orientation, i.e. ``MLP.weights[i].T``. Read-only
        views of the live weights (no copy, always current; writing into them raises). To
        change weights, assign new arrays (``est.coefs_[i] = W`` or ``est.coefs_ = [...]``):
        they are validated and copied in at the next use.

    intercepts_ : list of ndarray, shapes (layer_units[i+1],)
        Biases, read-only views like ``coefs_``.

    n_features_in_ : int
        Features seen during ``fit``.

    feature_names_in_ : ndarray of str, shape (n_features_in_,)
        Column names, when ``fit`` got a DataFrame whose column names are all strings.

    n_layers_ : int
        ``len(layer_units)``: input, hidden and output layers.

    n_outputs_ : int
        Units of the output layer.

    out_activation_ : str
        ``"logistic"`` (binary classification, one output unit), ``"softmax"`` (multiclass) or
        ``"identity"`` (regression).
"""


# ---- the shared estimator -----------------------------------------------------------------

class _BaseMLP(_BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, validation, the training loop."""

    _is_classifier = False

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dtype="float32", n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.n_threads = n_threads

    # ---- parameter validation (in fit, as scikit-learn) ---------------------------------

    def _param_error(self, name: str, expected: str):
        return ValueError(f"The {name!r} parameter of {type(self).__name__} must be "
                          f"{expected}. Got {getattr(self, name)!r} instead.")

    def _real(self, name, low, high=math.inf, low_closed=True, high_closed=False) -> float:
        value = getattr(self, name)
        ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
              and not np.isnan(value)
              and (value >= low if low_closed else value > low)
              and (value <= high if high_closed else value < high))
        if not ok:
            brackets = ("[" if low_closed else "(") + f"{low}, {high}" + \
                ("]" if high_closed else ")")
            raise self._param_error(name, f"a float in the range {brackets}")
        return float(value)

    def _int(self, name, low) -> int:
        value = getattr(self, name)
        if (not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_))
                or value < low):
            raise self._param_error(name, f"an int in the range [{low}, inf)")
        return int(value)

    def _bool(self, name) -> bool:
        value = getattr(self, name)
        if not isinstance(value, (bool, np.bool_)):
            raise self._param_error(name, "an instance of 'bool'")
        return bool(value)

    def _validate_params(self) -> None:
        """Checks every parameter; the normalised values go to private attributes."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise self._param_error("hidden_layer_sizes",
                                    "an int or a sequence of ints >= 1") from None
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_))
                   and s >= 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {self.hidden_layer_sizes}.")
        self._hidden = [int(s) for s in sizes]
        if self.activation not in ("relu", "tanh", "logistic", "identity"):
            raise self._param_error("activation",
                                    "a str among {'identity', 'logistic', 'relu', 'tanh'}")
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by fastmlp (its engine trains "
                             "with mini-batches): use solver='adam' or solver='sgd'")
        if self.solver not in ("sgd", "adam"):
            raise self._param_error("solver", "a str among {'adam', 'sgd'}")
        self._real("alpha", 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            self._int("batch_size", 1)
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise self._param_error("learning_rate",
                                    "a str among {'adaptive', 'constant', 'invscaling'}")
        self._real("learning_rate_init", 0, low_closed=False)
        self._real("power_t", 0)
        self._int("max_iter", 1)
        self._bool("shuffle")
        self._real("tol", 0)
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise self._param_error("verbose", "a bool or an int")
        self._bool("warm_start")
        self._real("momentum", 0, 1, high_closed=True)
        self._bool("nesterovs_momentum")
        self._bool("early_stopping")
        self._real("validation_fraction", 0, 1)
        self._real("beta_1", 0, 1)
        self._real("beta_2", 0, 1)
        self._real("epsilon", 0, low_closed=False)
        if not (isinstance(self.n_iter_no_change, float) and self.n_iter_no_change == np.inf):
            self._int("n_iter_no_change", 1)
        try:
            dtype = None if self.dtype is None else np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise self._param_error("dtype", "'float32' or 'float64'")
        self._dtype = dtype
        if self.n_threads is not None:
            self._int("n_threads", 1)
        _random_state(self.random_state)

    # ---- fitted state --------------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_model")

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "_model"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator.")

    def _publish_parameters(self) -> None:
        """coefs_/intercepts_: read-only (in, out) views of the model's live arrays."""
        coefs, intercepts = [], []
        for w, b in zip(self._model.weights, self._model.biases):
            view = w.T.view()
            view.flags.writeable = False
            coefs.append(view)
            view = b.view()
            view.flags.writeable = False
            intercepts.append(view)
        self.coefs_ = coefs
        self.intercepts_ = intercepts
        self._published = (coefs, tuple(coefs), intercepts, tuple(intercepts))

    def _model_in_use(self) -> MLP:
        """The fitted MLP, after taking in any arrays assigned to coefs_/intercepts_."""
        self._check_is_fitted()
        coefs, coef_items, intercepts, intercept_items = self._published
        current_coefs, current_intercepts = self.coefs_, self.intercepts_
        if (current_coefs is not coefs or current_intercepts is not intercepts
                or len(current_coefs) != len(coef_items)
                or len(current_intercepts) != len(intercept_items)
                or any(a is not b for a, b in zip(current_coefs, coef_items))
                or any(a is not b for a, b in zip(current_intercepts, intercept_items))):
            self._model.weights = [np.asarray(c).T for c in current_coefs]
            self._model.biases = [np.asarray(b) for b in current_intercepts]
            self._publish_parameters()
        return self._model

    def __getstate__(self):
        if hasattr(self, "_model"):
            self._model_in_use()
        state = super().__getstate__() if hasattr(super(), "__getstate__") else None
        state = dict(self.__dict__ if state is None else state)
        for name in ("coefs_", "intercepts_", "_published"):  # views, rebuilt on load
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)
        if hasattr(self, "_model"):
            optimizer = getattr(self, "_optimizer", None)
            state = [a for entry in getattr(optimizer, "_state", []) for a in entry.values()
                     if isinstance(a, np.ndarray)]
            if not all(a.flags.writeable
                       for a in (*self._model.weights, *self._model.biases, *state)):
                # e.g. joblib.load(mmap_mode="r"): train on private copies, not the map.
                self._model = copy.deepcopy(self._model)
                self._optimizer = copy.deepcopy(getattr(self, "_optimizer", None))
                self._best = copy.deepcopy(getattr(self, "_best", None))
            self._publish_parameters()

    # ---- subclass hooks ------------------------------------------------------------------

    def _encode_targets(self, y, n_samples, *, first_pass, incremental, classes=None,
                        sample_weight=None, validation=False):
        """(targets for the engine, n_outputs, per-sample class weights or None); with
        ``validation`` the targets of X_val (checked against the fitted model)."""
        raise NotImplementedError

    def _output_kind(self) -> str:
        raise NotImplementedError

    # ---- training ------------------------------------------------------------------------

    def _init_model(self, layer_units, rng: np.random.RandomState) -> None:
        """A new MLP with scikit-learn's Glorot-uniform initial weights and biases, drawn from
        rng in scikit-learn's order (coefs then intercepts, layer by layer)."""
        model = MLP(layer_units, activation=self.activation, output=self._output_kind(),
                    dtype=self._dtype, seed=0)
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights, biases = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)).T)
            biases.append(rng.uniform(-bound, bound, fan_out))
        model.weights = weights
        model.biases = biases
        self._model = model
        self.n_layers_ = len(layer_units)
        self.n_outputs_ = layer_units[-1]
        self.out_activation_ = {"softmax": "softmax", "sigmoid": "logistic",
                                "identity": "identity"}[self._output_kind()]
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self.best_loss_ = None if self.early_stopping else np.inf
        self.validation_scores_ = None
        self.validation_loss_curve_ = None
        self.best_validation_score_ = None
        self._best = None
        if hasattr(self, "_optimizer"):
            del self._optimizer
        self._publish_parameters()

    def _new_optimizer(self):
        if self.solver == "sgd":
            return SGD(lr=self.learning_rate_init, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                    eps=self.epsilon)

    def _fit(self, X, y, sample_weight=None, *, incremental: bool, classes=None, X_val=None,
             y_val=None, sample_weight_val=None):
        """fit (incremental=False) and partial_fit (True): validate, initialise on the first
        pass, split off the validation set, then train for max_iter epochs (1 for partial_fit).
        """
        self._validate_params()
        with _num_threads(self.n_threads):
            return self._fit_validated(X, y, sample_weight, incremental, classes, X_val, y_val,
                                       sample_weight_val)

    def _fit_validated(self, X, y, sample_weight, incremental, classes, X_val, y_val,
                       sample_weight_val):
        before = dict(self.__dict__)
        try:
            prepared = self._prepare(X, y, sample_weight, incremental, classes, X_val, y_val,
                                     sample_weight_val)
        except BaseException:
            # Invalid input leaves a fitted estimator as it was (classes_, n_features_in_,
            # feature_names_in_ and the model belong together).
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        self._train(*prepared, epochs=1 if incremental else int(self.max_iter),
                    incremental=incremental)
        return self

    def _prepare(self, X, y, sample_weight, incremental, classes, X_val, y_val,
                 sample_weight_val):
        """Validates everything and sets up the model, optimizer and validation set; returns
        the arguments of _train (all before any weight changes)."""
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True: early stopping "
                             "needs whole passes over a fixed training set; use fit, or keep "
                             "early_stopping=False and score your own validation set between "
                             "partial_fit calls")
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be given together")
        if sample_weight_val is not None and X_val is None:
            raise ValueError("sample_weight_val needs X_val and y_val")
        first_pass = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        X = _check_X(self, X, reset=first_pass, dtype=self._dtype)
        n = X.shape[0]
        targets, n_outputs, class_weights = self._encode_targets(
            y, n, first_pass=first_pass, incremental=incremental, classes=classes,
            sample_weight=sample_weight)
        sw = _check_sample_weight(sample_weight, n)
        if class_weights is not None:
            sw = class_weights if sw is None else sw * class_weights
        if sw is not None and self._is_classifier and not incremental:
            present = np.unique(targets[sw > 0])
            if present.size < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes with a positive "
                    "weight, but the data contains only one such class: "
                    f"{self.classes_[present[0]]!r}")

        rng = _random_state(self.random_state)
        layer_units = [X.shape[1], *self._hidden, n_outputs]
        if first_pass:
            self._init_model(layer_units, rng)
        else:
            model = self._model_in_use()
            if (list(model.layer_sizes) != layer_units or model.activation != self.activation
                    or model.dtype != self._dtype):
                raise ValueError(
                    f"warm_start/partial_fit need the architecture of the fitted model: layers "
                    f"{list(model.layer_sizes)}, activation {model.activation!r}, dtype "
                    f"{model.dtype.name}; got layers {layer_units}, activation "
                    f"{self.activation!r}, dtype {self._dtype.name}")
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        if not incremental:
            self._no_improvement_count = 0

        validation = None
        if X_val is not None:
            X_val = _check_X(self, X_val, reset=False, dtype=self._dtype)
            val_targets, _, _ = self._encode_targets(y_val, X_val.shape[0], first_pass=False,
                                                     incremental=True, validation=True)
            sw_val = _check_sample_weight(sample_weight_val, X_val.shape[0],
                                          "sample_weight_val")
            validation = (X_val, val_targets, sw_val)
        elif self.early_stopping:
            train, val = _split_indices(n, self.validation_fraction, rng,
                                        targets if self._is_classifier else None)
            validation = (X[val], targets[val], None if sw is None else sw[val])
            X, targets, sw = X[train], targets[train], None if sw is None else sw[train]
            n = X.shape[0]
        if validation is not None and self.validation_scores_ is None:
            self.validation_scores_ = []
            self.validation_loss_curve_ = []
            self.best_validation_score_ = -np.inf

        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                _warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                      "to be clipped", UserWarning)
            batch_size = min(int(self.batch_size), n)
        # Weights act as repetition counts: the L2 penalty is relative to their total.
        alpha = float(self.alpha) * (1.0 if sw is None else n / float(sw.sum()))
        if sw is not None:
            sw = sw.astype(self._dtype)
        return X, targets, sw, validation, batch_size, alpha, rng

    def _train(self, X, targets, sw, validation, batch_size, alpha, rng, epochs, incremental):
        """Up to ``epochs`` epochs in the engine, in as few ``MLP.fit`` calls as the schedule
        allows (one, unless the learning rate changes); between epochs (in the callback) it
        records the loss, scores the validation set and applies the stopping rule."""
        model, optimizer = self._model, self._optimizer
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        # The engine's regression loss sums ½ error² over outputs; scikit-learn reports it
        # divided by the number of outputs (not the L2 penalty), and so does loss_. The
        # penalty's share of the epoch loss, Σ_batches ½ alpha ‖W_b‖² / N, is interpolated
        # linearly between ‖W‖² at the epoch's start and end (exact with one batch per epoch,
        # one output or alpha = 0).
        outputs = 1 if self._is_classifier else self.n_outputs_
        track_penalty = outputs > 1 and alpha > 0
        sgd_schedule = self.learning_rate if self.solver == "sgd" else "constant"
        state = {"epochs": 0, "action": None, "stop": None,
                 "w2": _squared_norm(model.weights) if track_penalty else 0.0}

        def after_epoch(_model, history) -> bool:
            state["epochs"] += 1
            loss = history.loss[-1]
            if outputs > 1:
                penalty = 0.0
                if track_penalty:
                    w2 = _squared_norm(model.weights)
                    start, end = state["w2"], w2
                    squares = n_batches * start + (end - start) * (n_batches - 1) / 2
                    penalty = 0.5 * alpha * squares / n
                    state["w2"] = w2
                loss = (loss - penalty) / outputs + penalty
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = float(loss)
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                if history.one_thread_fallback[-1]:
                    print(one_thread_fallback_message())
            if self._record_epoch(validation):
                self._no_improvement_count = 0
            else:
                self._no_improvement_count += 1
            if sgd_schedule == "invscaling":
                optimizer.lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
                state["action"] = "restart"  # the engine reads lr when MLP.fit starts
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                message = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                if sgd_schedule == "adaptive" and optimizer.lr > 1e-6:
                    optimizer.lr /= 5.0
                    self._no_improvement_count = 0
                    state["action"] = "restart"
                    if self.verbose:
                        print(f"{message} Setting learning rate to {optimizer.lr:f}")
                else:
                    state["action"] = state["stop"] = "stop"
                    if self.verbose:
                        small = " Learning rate too small." if sgd_schedule == "adaptive" else ""
                        print(f"{message}{small} Stopping.")
            return state["action"] is not None

        self.n_iter_ = 0
        try:
            while state["epochs"] < epochs and state["stop"] is None:
                state["action"] = None
                try:
                    model.fit(X, targets, epochs=epochs - state["epochs"], batch_size=batch_size,
                              optimizer=optimizer, shuffle=bool(self.shuffle),
                              seed=int(rng.randint(np.iinfo(np.int32).max)),
                              callbacks=[after_epoch], sample_weight=sw, alpha=alpha)
                except FloatingPointError as exc:
                    raise ValueError(f"Solver produced non-finite parameter weights: {exc} The "
                                     "input data may contain large values and need to be "
                                     "preprocessed.") from exc
            if not incremental and state["stop"] is None:
                _warn(f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and the "
                      "optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            _warn("Training interrupted by user.", UserWarning)
        finally:
            if self.early_stopping and self._best is not None:
                model.weights, model.biases = self._best
            self._publish_parameters()

    def _record_epoch(self, validation) -> bool:
        """Scores the validation set (when there is one), keeps the best values (and, with
        early stopping, the best weights); True when the epoch counts as an improvement."""
        if validation is not None:
            X_val, val_targets, sw_val = validation
            score, loss = self._validation_metrics(self._model.forward(X_val), val_targets,
                                                   sw_val)
            self.validation_scores_.append(score)
            self.validation_loss_curve_.append(loss)
            if self.verbose:
                print(f"Validation score: {score:f}")
            best = self.best_validation_score_
            if score > best:
                self.best_validation_score_ = score
                if self.early_stopping:
                    self._best = ([w.copy() for w in self._model.weights],
                                  [b.copy() for b in self._model.biases])
            if self.early_stopping:
                return not score < best + self.tol
        if self.best_loss_ is None:  # early stopping was on in an earlier warm-started fit
            self.best_loss_ = np.inf
        last, best = self.loss_curve_[-1], self.best_loss_
        self.best_loss_ = min(best, last)
        return not last > best - self.tol

    def _validation_metrics(self, logits, targets, weights) -> tuple[float, float]:
        raise NotImplementedError

    def _predict_logits(self, X) -> np.ndarray:
        model = self._model_in_use()
        return model.forward(_check_X(self, X, reset=False, dtype=model.dtype))


class MLPClassifier(_ClassifierMixin, _BaseMLP):
    __doc__ = f"""Multi-layer perceptron classifier on fastmlp's C++ engine, with scikit-learn's
    ``MLPClassifier`` interface.

    Minimises the log-loss with mini-batch Adam or SGD. Binary problems use one output unit
    and the logistic function (``out_activation_ = "logistic"``), more classes a softmax.
    Beyond scikit-learn: float32 end to end, ``class_weight``, a stratified early-stopping
    split or a validation set passed to ``fit`` (``X_val``, ``y_val``), the validation loss
    curve, and ``n_threads``. Not supported: ``solver="lbfgs"`` (and ``max_fun``), multilabel
    targets (``ValueError``), sparse inputs (``TypeError``: convert with ``.toarray()``).

    Parameters
    ----------{_DOC_PARAMETERS}
    class_weight : dict, "balanced" or None, default=None
        Multiplies each sample's weight by its class's weight: ``{{label: weight}}`` (labels
        left out weigh 1) or ``"balanced"``, ``n_samples / (n_classes · class count)`` (counts
        weighted by ``sample_weight``). ``"balanced"`` is not available in ``partial_fit``
        (``ValueError``): pass a dict computed on all the data.

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
        The class labels, sorted (any label type: ints, strings, ...).
{_DOC_ATTRIBUTES}
    Examples
    --------
    >>> import numpy as np
    >>> from fastmlp import MLPClassifier
    >>> X = np.array([[0., 0.], [0., 1.], [1., 0.], [1., 1.]] * 25)
    >>> y = np.array(["no", "yes", "yes", "no"] * 25)
    >>> clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.05, max_iter=500,
    ...                     random_state=0).fit(X, y)
    >>> clf.predict([[0., 1.], [1., 1.]])
    array(['yes', 'no'], dtype='<U3')
    """

    _is_classifier = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dtype="float32", n_threads=None, class_weight=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            dtype=dtype, n_threads=n_threads)
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, sample_weight_val=None):
        """Train on X (N, F) and class labels y (N,) for up to ``max_iter`` epochs.

        ``sample_weight`` (N,) weighs each sample's loss (each batch's loss is its weighted
        mean). ``X_val``/``y_val`` (and ``sample_weight_val``): the validation set for early
        stopping instead of a ``validation_fraction`` split; without early stopping it is only
        scored (``validation_scores_``, ``validation_loss_curve_``). Returns self.
        """
        return self._fit(X, y, sample_weight, incremental=False, X_val=X_val, y_val=y_val,
                         sample_weight_val=sample_weight_val)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over X, y from the current weights (initialising on the first call).

        ``classes`` (every label that will ever occur) is required on the first call and
        optional later (it must not change). The optimizer's state (Adam moments, momentum)
        carries over between calls. Returns self.
        """
        if classes is None and not hasattr(self, "_model"):
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _output_kind(self) -> str:
        return "sigmoid" if len(self.classes_) == 2 else "softmax"

    def _encode_targets(self, y, n_samples, *, first_pass, incremental, classes=None,
                        sample_weight=None, validation=False):
        name = "y_val" if validation else "y"
        y = _class_labels(y, name)
        _check_length(n_samples, y, name)
        if validation:
            return self._encode(y, name), 1, None
        if classes is not None:
            classes = np.unique(_class_labels(classes, "classes"))
            if not first_pass and not np.array_equal(classes, self.classes_):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                                 f"partial_fit, was: {self.classes_!r}")
        if first_pass:
            new_classes = classes if incremental else np.unique(y)
            if len(new_classes) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                    f"but the data contains only one class: {new_classes[0]!r}")
            self.classes_ = new_classes
        elif self.warm_start and not incremental:
            seen = np.unique(y)
            if not (len(seen) == len(self.classes_) and np.array_equal(seen, self.classes_)):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the "
                    f"previous call to fit. Previously got {self.classes_}, `y` has {seen}")
        encoded = self._encode(y, name)
        return encoded, (1 if len(self.classes_) == 2 else len(self.classes_)), \
            self._class_weights(encoded, sample_weight, incremental)

    def _encode(self, y, name) -> np.ndarray:
        """Indices into classes_ (int64) of labels y; ValueError for unknown labels."""
        try:
            index = np.searchsorted(self.classes_, y)
            known = self.classes_.take(np.minimum(index, len(self.classes_) - 1)) == y
        except TypeError:  # labels of another kind than classes_ (e.g. str vs int)
            known = np.zeros(len(y), dtype=bool)
            index = None
        if not np.all(known):
            unknown = np.unique(np.asarray(y)[~np.asarray(known, dtype=bool)])
            raise ValueError(f"{name} has classes not in `self.classes_`. `self.classes_` has "
                             f"{self.classes_}. {name!r} has unknown labels {unknown}.")
        return np.ascontiguousarray(index, dtype=np.int64)

    def _class_weights(self, encoded, sample_weight, incremental):
        """Per-sample weights of class_weight (None without it)."""
        cw = self.class_weight
        if cw is None:
            return None
        k = len(self.classes_)
        if isinstance(cw, str) and cw == "balanced":
            if incremental:
                raise ValueError(
                    "class_weight 'balanced' is not supported for partial_fit: each call sees "
                    "only a part of the data. Pass a dict computed on all of it instead, e.g. "
                    "dict(zip(classes, sklearn.utils.class_weight.compute_class_weight("
                    "'balanced', classes=classes, y=y_all))).")
            sw = _check_sample_weight(sample_weight, len(encoded))
            counts = np.bincount(encoded, weights=sw, minlength=k).astype(np.float64)
            present = counts > 0
            per_class = np.zeros(k)
            per_class[present] = counts.sum() / (np.count_nonzero(present) * counts[present])
        elif isinstance(cw, dict):
            per_class = np.ones(k)
            unweighted = []
            for i, label in enumerate(self.classes_):
                key = label.item() if hasattr(label, "item") else label
                if key in cw:
                    value = cw[key]
                    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                            or not np.isfinite(value) or value < 0):
                        raise ValueError(f"class_weight[{key!r}] must be a finite number >= 0, "
                                         f"got {value!r}")
                    per_class[i] = float(value)
                else:
                    unweighted.append(key)
            if unweighted and k - len(unweighted) != len(cw):
                raise ValueError(f"The classes, {unweighted}, are not in class_weight")
        else:
            raise self._param_error("class_weight", "a dict, 'balanced' or None")
        return per_class[encoded]

    def _validation_metrics(self, logits, targets, weights):
        logits = logits.astype(np.float64)
        if logits.shape[1] == 1:
            z = logits[:, 0]
            predicted = (z > 0).astype(np.int64)
            # -log σ(z) = softplus(-z), -log(1 - σ(z)) = softplus(z)
            losses = np.logaddexp(0.0, np.where(targets == 1, -z, z))
        else:
            predicted = np.argmax(logits, axis=1)
            losses = -_log_softmax(logits)[np.arange(len(targets)), targets]
        accuracy = float(np.average(predicted == targets, weights=weights))
        return accuracy, float(np.average(losses, weights=weights))

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (N,), of ``classes_``'s kind."""
        with _num_threads(self.n_threads):
            logits = self._predict_logits(X)
        if logits.shape[1] == 1:
            index = (logits[:, 0] > 0).astype(np.intp)
        else:
            index = np.argmax(logits, axis=1)
        return self.classes_.take(index)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, n_classes) in the estimator's dtype, columns in the order
        of ``classes_``."""
        with _num_threads(self.n_threads):
            model = self._model_in_use()
            return model.predict_proba(_check_X(self, X, reset=False, dtype=model.dtype))

    def predict_log_proba(self, X) -> np.ndarray:
        """Log of ``predict_proba`` (N, n_classes), computed from the logits (log-softmax;
        log-sigmoid for binary problems), so it stays finite where the probability
        underflows to 0."""
        with _num_threads(self.n_threads):
            logits = self._predict_logits(X)
        if logits.shape[1] == 1:
            z = logits[:, 0]
            return np.stack([-np.logaddexp(0, z), -np.logaddexp(0, -z)], axis=1)
        return _log_softmax(logits)

    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy of ``predict(X)`` against y (weighted by ``sample_weight``)."""
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        predicted = self.predict(X)
        _check_length(len(predicted), y, "y")
        weights = _check_sample_weight(sample_weight, len(y))
        return float(np.average(predicted == y, weights=weights))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_label = False
        tags.target_tags.multi_output = False
        return tags


class MLPRegressor(_RegressorMixin, _BaseMLP):
    __doc__ = f"""Multi-layer perceptron regressor on fastmlp's C++ engine, with scikit-learn's
    ``MLPRegressor`` interface.

    Minimises the squared error (identity output, one unit per target; multi-output y of shape
    (N, K) is supported) with mini-batch Adam or SGD. The engine's loss is ½·Σ over outputs of
    the squared error; scikit-learn reports it divided by the number of outputs, and so do
    ``loss_``, ``loss_curve_`` and the stopping rule based on them (the gradients, as in
    scikit-learn, are those of the sum). Predictions are in the estimator's dtype (float32 by
    default). Not supported: ``solver="lbfgs"`` (and ``max_fun``), ``loss="poisson"``
    (``ValueError``), sparse inputs (``TypeError``: convert with ``.toarray()``).

    Parameters
    ----------{_DOC_PARAMETERS}
    loss : "squared_error", default="squared_error"
        scikit-learn's parameter; only the squared error is supported.

    Attributes
    ----------{_DOC_ATTRIBUTES}
    Examples
    --------
    >>> import numpy as np
    >>> from fastmlp import MLPRegressor
    >>> X = np.linspace(-1, 1, 200).reshape(-1, 1)
    >>> reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300,
    ...                    random_state=0).fit(X, X[:, 0] ** 2)
    >>> reg.predict([[0.5]]).dtype
    dtype('float32')
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dtype="float32", n_threads=None, loss="squared_error"):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            dtype=dtype, n_threads=n_threads)
        self.loss = loss

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.loss == "poisson":
            raise ValueError("loss='poisson' is not supported by fastmlp (its engine has the "
                             "identity output with the squared error only)")
        if self.loss != "squared_error":
            raise self._param_error("loss", "'squared_error'")

    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, sample_weight_val=None):
        """Train on X (N, F) and targets y (N,) or (N, K) for up to ``max_iter`` epochs.

        ``sample_weight`` (N,) weighs each sample's loss (each batch's loss is its weighted
        mean). ``X_val``/``y_val`` (and ``sample_weight_val``): the validation set for early
        stopping instead of a ``validation_fraction`` split; without early stopping it is only
        scored (``validation_scores_``, ``validation_loss_curve_``). Returns self.
        """
        return self._fit(X, y, sample_weight, incremental=False, X_val=X_val, y_val=y_val,
                         sample_weight_val=sample_weight_val)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X, y from the current weights (initialising on the first call); the
        optimizer's state carries over between calls. Returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _output_kind(self) -> str:
        return "identity"

    def _encode_targets(self, y, n_samples, *, first_pass, incremental, classes=None,
                        sample_weight=None, validation=False):
        name = "y_val" if validation else "y"
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = _column_or_1d(_as_numeric(y, name, self._dtype), name)
        if y.ndim not in (1, 2):
            raise ValueError(f"{name} must be 1-D (N,) or 2-D (N, n_outputs), got shape "
                             f"{y.shape}")
        _check_length(n_samples, y, name)
        _check_finite(y, name)
        targets = np.ascontiguousarray(y.reshape(n_samples, -1))
        if targets.shape[1] == 0:
            raise ValueError(f"{name} has 0 outputs (shape {y.shape})")
        if not first_pass and targets.shape[1] != self.n_outputs_:
            raise ValueError(f"{name} has {targets.shape[1]} outputs but the fitted model has "
                             f"{self.n_outputs_}")
        return targets, targets.shape[1], None

    def _validation_metrics(self, logits, targets, weights):
        error = logits.astype(np.float64) - targets
        loss = 0.5 * np.average(np.mean(error * error, axis=1), weights=weights)
        return _r2(targets, logits, weights), float(loss)

    def predict(self, X) -> np.ndarray:
        """Predictions (N,) for one target, (N, n_outputs) for several, in the estimator's
        dtype."""
        with _num_threads(self.n_threads):
            out = self._predict_logits(X)
        return out[:, 0] if self.n_outputs_ == 1 else out

    def score(self, X, y, sample_weight=None) -> float:
        """Coefficient of determination R² of ``predict(X)`` (averaged over outputs, weighted
        by ``sample_weight``), as scikit-learn's ``r2_score``."""
        predicted = self.predict(X)
        y = _as_numeric(y, "y")
        _check_length(len(predicted), y, "y")
        weights = _check_sample_weight(sample_weight, len(y))
        return _r2(y, predicted, weights)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        return tags
