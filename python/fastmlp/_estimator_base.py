"""The shared base of fastmlp's scikit-learn estimators (``estimators.py``): parameters and
their constraints, the fitted state (``coefs_``/``intercepts_`` as views of the ``MLP``), the
fit path shared by ``fit`` and ``partial_fit``, the training loop around the engine, and
``solver="lbfgs"`` (SciPy's L-BFGS-B: _estimator_lbfgs.py).

Legend: N samples, F features, K classes or regression outputs,
``layer_units = [F, *hidden_layer_sizes, K]``; ``coefs_[i]`` (layer_units[i],
layer_units[i+1]) is ``MLP.weights[i].T``.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from fastmlp import _estimator_data as data, onnx_export
from fastmlp import _estimator_distributed as distributed
from fastmlp._estimator_lbfgs import train_lbfgs
from fastmlp._threads import get_num_threads, one_thread_fallback_message, set_num_threads
from fastmlp._core import first_nonfinite
from fastmlp._estimator_params import LayerViews
from fastmlp._estimator_quantize import Quantizable
from fastmlp._validation import ACTIVATIONS
from fastmlp.model import MLP
from fastmlp.optim import SGD, Adam


_MODULES = {__name__, "fastmlp.estimators", "fastmlp._estimator_data",
            "fastmlp._estimator_lbfgs", "fastmlp._estimator_distributed"}


def _warn(message: str, category) -> None:
    """warnings.warn attributed to the user's line: the first caller outside fastmlp's
    estimator modules and scikit-learn's ``_fit_context`` wrapper around ``fit``."""
    frame, level = sys._getframe(0), 1
    while frame is not None and _internal(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _internal(frame) -> bool:
    module = frame.f_globals.get("__name__")
    return module in _MODULES or (module == "sklearn.base" and frame.f_code.co_name == "wrapper")


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


_PARAM_NAMES: dict[type, tuple[str, ...]] = {}


class _BaseMLP(Quantizable, BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, validation, the training loop."""

    _is_classifier = False

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64}),
                  Options(np.dtype, {np.dtype(np.float32), np.dtype(np.float64)})],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "sparse_updates": [StrOptions({"exact", "lazy"})],
        "precision": [StrOptions({"float32", "bfloat16"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32", n_threads=None, sparse_updates="exact",
                 precision="float32"):
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
        self.max_fun = max_fun
        self.dtype = dtype
        self.n_threads = n_threads
        self.sparse_updates = sparse_updates
        self.precision = precision

    @classmethod
    def _get_param_names(cls) -> list[str]:
        # scikit-learn reads the constructor's signature (inspect, ~40 µs) on every get_params,
        # which every fit's parameter validation calls; the signature never changes.
        names = _PARAM_NAMES.get(cls)
        if names is None:
            names = _PARAM_NAMES[cls] = tuple(super()._get_param_names())
        return list(names)

    # ---- fitted state --------------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_model")

    # Before the first fit, coefs_ and intercepts_ are plain lists, as in scikit-learn, where
    # partial_fit and a warm-started fit start from them when both are assigned.

    @property
    def coefs_(self) -> list[np.ndarray]:
        if not hasattr(self, "_model") and "_initial_coefs" in self.__dict__:
            return self._initial_coefs
        check_is_fitted(self)
        self._refuse_if_quantized("coefs_")
        return LayerViews(self._model, "weights")

    @coefs_.setter
    def coefs_(self, values) -> None:
        if not hasattr(self, "_model"):
            self._initial_coefs = list(values)
        else:
            self.coefs_.assign(values)

    @property
    def intercepts_(self) -> list[np.ndarray]:
        if not hasattr(self, "_model") and "_initial_intercepts" in self.__dict__:
            return self._initial_intercepts
        check_is_fitted(self)
        self._refuse_if_quantized("intercepts_")
        return LayerViews(self._model, "biases")

    @intercepts_.setter
    def intercepts_(self, values) -> None:
        if not hasattr(self, "_model"):
            self._initial_intercepts = list(values)
        else:
            self.intercepts_.assign(values)

    def __setstate__(self, state):
        super().__setstate__(state)
        # (An optimizer's state is rebuilt in the core's own memory when it is unpickled.)
        if isinstance(self.__dict__.get("_model"), MLP):  # (not a quantized copy's)
            if not all(a.flags.writeable for a in (*self._model._weights.arrays(),
                                                   *self._model._biases.arrays())):
                # e.g. joblib.load(mmap_mode="r"): train on private copies, not the map.
                self._model = copy.deepcopy(self._model)
                self._best = copy.deepcopy(getattr(self, "_best", None))

    # ---- subclass hooks ------------------------------------------------------------------

    def _encode_targets(self, y, *, first_pass, incremental, classes=None,
                        sample_weight=None, validation=False):
        """(targets for the engine, n_outputs, per-sample class weights or None) of y as
        ``validate_data`` returns it; with ``validation`` the targets of y_val."""
        raise NotImplementedError

    def _output_kind(self) -> str:
        raise NotImplementedError

    def _validation_metrics(self, logits, targets, weights) -> tuple[float, float]:
        raise NotImplementedError

    # ---- training ------------------------------------------------------------------------

    def _init_model(self, layer_units, rng: np.random.RandomState, *, adopt: bool) -> None:
        """A new MLP with scikit-learn's Glorot-uniform initial weights and biases, drawn from
        rng in scikit-learn's order (coefs then intercepts, layer by layer); with ``adopt``,
        those assigned to coefs_ and intercepts_ before, where both were."""
        initial = (self.__dict__.pop("_initial_coefs", None),
                   self.__dict__.pop("_initial_intercepts", None))
        model = MLP(layer_units, activation=self.activation, output=self._output_kind(),
                    dtype=self._dtype, _init=False)
        factor = 2.0 if self.activation == "logistic" else 6.0
        # Drawn (in, out) as scikit-learn's coefs_, written into the model's (out, in) arrays
        # in place (rounded to its dtype): no intermediate copy of a large first layer.
        for layer, (fan_in, fan_out) in enumerate(zip(layer_units[:-1], layer_units[1:])):
            bound = np.sqrt(factor / (fan_in + fan_out))
            data.uniform_transposed_into(model._weights.arrays()[layer], rng, -bound, bound)
            model._biases.arrays()[layer][...] = rng.uniform(-bound, bound, fan_out)
        self._model = model
        if adopt and None not in initial:
            self.coefs_, self.intercepts_ = initial  # shapes checked against layer_units
        self.n_layers_ = len(layer_units)
        self.n_outputs_ = layer_units[-1]
        self.out_activation_ = {"softmax": "softmax", "sigmoid": "logistic",
                                "multilabel": "logistic", "identity": "identity",
                                "poisson": "exp"}[self._output_kind()]
        self.n_iter_ = 0
        self.t_ = 0
        for name in ("loss_curve_", "best_loss_", "validation_scores_", "validation_loss_curve_",
                     "best_validation_score_", "_optimizer"):
            self.__dict__.pop(name, None)
        if self.solver != "lbfgs":  # scikit-learn's lbfgs fits have no curves
            self._init_epoch_state()

    def _init_epoch_state(self) -> None:
        """The per-epoch record of the stochastic solvers: curves, best values, stopping."""
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self.best_loss_ = None if self.early_stopping else np.inf
        self.validation_scores_ = None
        self.validation_loss_curve_ = None
        self.best_validation_score_ = None
        self._best = None

    def _new_optimizer(self):
        if self.solver == "sgd":
            return SGD(lr=self.learning_rate_init, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                    eps=self.epsilon)

    def _fit(self, X, y, sample_weight=None, *, incremental: bool, classes=None, X_val=None,
             y_val=None, sample_weight_val=None, comm=None):
        """fit (incremental=False) and partial_fit (True): validate, initialise on the first
        pass, split off the validation set, then train for max_iter epochs (1 for partial_fit),
        or for solver="lbfgs" up to max_iter L-BFGS iterations on the whole data. With comm:
        data-parallel over its ranks, each passing its shard (_estimator_distributed).
        """
        self._refuse_if_quantized("fit")
        lbfgs = self.solver == "lbfgs"
        if lbfgs and X_val is not None:
            raise ValueError("X_val/y_val are scored after every epoch of solver='adam' or "
                             "'sgd'; solver='lbfgs' has no epochs (score your validation set "
                             "after fit)")
        with _num_threads(self.n_threads):
            before = dict(self.__dict__)
            try:
                if comm is not None:  # classes_: the union of every rank's labels
                    classes = distributed.agreed_classes(comm, self, y, X_val)
                if not lbfgs and hasattr(self, "_model") and not hasattr(self, "loss_curve_"):
                    self._init_epoch_state()  # warm start after an lbfgs fit
                # (with comm, a shard that fails validation raises on every rank)
                with distributed.global_class_weight(comm, self, y, sample_weight, classes):
                    prepared = distributed.run_agreed(comm, "validating its data", lambda: (
                        self._prepare(X, y, sample_weight, incremental, classes, X_val, y_val,
                                      sample_weight_val)))
            except BaseException:
                # Invalid input leaves a fitted estimator as it was (classes_, n_features_in_,
                # feature_names_in_ and the model belong together).
                self.__dict__.clear()
                self.__dict__.update(before)
                raise
            if lbfgs:
                X, targets, sw, _, _, alpha, _ = prepared
                self._train_lbfgs(X, targets, sw, alpha, comm)
            else:
                self._train(*prepared, epochs=1 if incremental else int(self.max_iter),
                            incremental=incremental, comm=comm)
        return self

    def _check_solver(self) -> bool:
        """``partial_fit`` exists for the stochastic solvers only (scikit-learn's rule)."""
        if self.solver not in ("sgd", "adam"):
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    def _check_X_y(self, X, y, *, reset: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=data.INPUT_DTYPES, order="C",
                             accept_sparse="csr", multi_output=True,
                             y_numeric=not self._is_classifier)
        return data.in_model_dtype(X, dtype, _warn), y

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
        sizes = self.hidden_layer_sizes
        hidden = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if not all(isinstance(h, Integral) and not isinstance(h, (bool, np.bool_))
                   and h >= 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        self._dtype = np.dtype(self.dtype)
        first_pass = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        X, y = self._check_X_y(X, y, reset=first_pass, dtype=self._dtype)
        n = X.shape[0]
        sw = data.sample_weights(sample_weight, X)
        targets, n_outputs, class_weights = self._encode_targets(
            y, first_pass=first_pass, incremental=incremental, classes=classes,
            sample_weight=sw)
        if class_weights is not None:
            sw = class_weights if sw is None else sw * class_weights
        if sw is not None and self._is_classifier and not incremental and targets.ndim == 1:
            present = np.unique(targets[sw > 0])
            if present.size < min(2, len(self.classes_)):
                found = (f"only one such class: {self.classes_[present[0]]!r}" if present.size
                         else "no such class")
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes "
                                 f"with a positive weight, but the data contains {found}")

        rng = check_random_state(self.random_state)
        layer_units = [X.shape[1], *[int(h) for h in hidden], n_outputs]
        if first_pass:
            self._init_model(layer_units, rng, adopt=incremental or self.warm_start)
        else:
            model = self._model
            if (list(model.layer_sizes) != layer_units or model.activation != self.activation
                    or model.dtype != self._dtype):
                raise ValueError(
                    f"warm_start/partial_fit need the architecture of the fitted model: layers "
                    f"{list(model.layer_sizes)}, activation {model.activation!r}, dtype "
                    f"{model.dtype.name}; got layers {layer_units}, activation "
                    f"{self.activation!r}, dtype {self._dtype.name}")
        self._model.precision = self.precision  # (a float64 model refuses bfloat16)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        if not incremental:
            self._no_improvement_count = 0

        validation = None
        if X_val is not None:
            X_val, y_val = self._check_X_y(X_val, y_val, reset=False, dtype=self._dtype)
            val_targets, _, _ = self._encode_targets(y_val, first_pass=False, incremental=True,
                                                     validation=True)
            validation = (X_val, val_targets, data.sample_weights(sample_weight_val, X_val))
        elif self.early_stopping and self.solver != "lbfgs":
            if self._is_classifier and n_outputs == 1:
                # scikit-learn stratifies one output unit's targets (up to 2 classes) and
                # refuses a class of one; with more it splits at random, where fastmlp
                # stratifies and keeps a lone member in the training rows.
                data.check_stratifiable(len(self.classes_), targets)
            # (scikit-learn does not stratify multilabel targets)
            train, val = data.split_indices(
                n, self.validation_fraction, rng,
                targets if self._is_classifier and targets.ndim == 1 else None)
            validation = (data.take_rows(X, val), targets[val], None if sw is None else sw[val])
            X, targets = data.take_rows(X, train), targets[train]
            sw = None if sw is None else sw[train]
            n = X.shape[0]
        if validation is not None and self.validation_scores_ is None:
            self.validation_scores_ = []
            self.validation_loss_curve_ = []
            self.best_validation_score_ = -np.inf

        if self.batch_size == "auto" or self.solver == "lbfgs":
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

    def _train(self, X, targets, sw, validation, batch_size, alpha, rng, epochs, incremental,
               comm=None):
        """Up to ``epochs`` epochs in one ``MLP.fit`` call; after each epoch (in the callback)
        it records the loss, scores the validation set, applies the learning-rate schedule
        (the engine reads the optimizer's lr at every step) and the stopping rule."""
        model, optimizer = self._model, self._optimizer
        n = n_largest = X.shape[0]
        if comm is not None:  # every rank: the same batch, penalty scale, t_ and shuffle flag
            n, n_largest, batch_size, alpha = distributed.global_settings(comm, self, n, sw)
        # The engine's regression loss sums ½ error² over outputs; scikit-learn reports it
        # divided by the number of outputs (not the L2 penalty, whose share the engine
        # reports apart: History.l2_penalty), and so does loss_. (The Poisson deviance and
        # the multilabel log-loss it sums over outputs, as the engine.)
        outputs = self.n_outputs_ if self._output_kind() == "identity" else 1
        sgd_schedule = self.learning_rate if self.solver == "sgd" else "constant"
        stopped = False

        def after_epoch(_model, history) -> bool:
            nonlocal stopped
            penalty = history.l2_penalty[-1]
            loss = (history.loss[-1] - penalty) / outputs + penalty
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = float(loss)
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                if history.one_thread_fallback[-1]:
                    print(one_thread_fallback_message())
            if self._record_epoch(validation, comm):
                self._no_improvement_count = 0
            else:
                self._no_improvement_count += 1
            if sgd_schedule == "invscaling":
                optimizer.lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                message = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                if sgd_schedule == "adaptive" and optimizer.lr > 1e-6:
                    optimizer.lr /= 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"{message} Setting learning rate to {optimizer.lr:f}")
                else:
                    stopped = True
                    if self.verbose:
                        small = " Learning rate too small." if sgd_schedule == "adaptive" else ""
                        print(f"{message}{small} Stopping.")
            return stopped

        self.n_iter_ = 0
        # Where no epoch scores before a divergence, early stopping ends on the weights the
        # fit started from (scikit-learn's initial weights).
        start = None
        if self.early_stopping and self._best is None:
            start = ([w.copy() for w in model.weights], [b.copy() for b in model.biases])
        try:
            try:
                # A batch of every row is the same batch in any order, but its float32 sums
                # are not: fit and partial_fit would drift apart where scikit-learn's agree.
                model.fit(X, targets, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                          shuffle=bool(self.shuffle) and batch_size < n_largest,
                          seed=int(rng.randint(np.iinfo(np.int32).max)),
                          callbacks=[after_epoch], sample_weight=sw, alpha=alpha,
                          sparse_updates=self.sparse_updates, comm=comm)
            except FloatingPointError as exc:
                if not self.early_stopping:
                    raise ValueError("Solver produced non-finite parameter weights. The input "
                                     "data may contain large values and need to be "
                                     f"preprocessed. ({exc})") from exc
                self._record_divergence(n)
                if self._best is None:
                    self._best = start
                _warn(f"Solver produced non-finite parameter weights at iteration "
                      f"{self.n_iter_}: training stopped, the weights of the best validation "
                      "score are kept. The input data may contain large values and need to be "
                      "preprocessed, or the learning rate may be too high.", ConvergenceWarning)
            else:
                if not incremental and not stopped:
                    _warn(f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and "
                          "the optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            _warn("Training interrupted by user.", UserWarning)
        finally:
            if self.early_stopping and self._best is not None:
                model.weights, model.biases = self._best

    def _record_divergence(self, n: int) -> None:
        """Records the epoch in which the engine refused a non-finite step (with early stopping)
        as scikit-learn records an epoch whose weights are no longer finite: loss and
        validation score NaN, the no-improvement count reset (NaN compares false)."""
        nan = float("nan")
        self.n_iter_ += 1
        self.t_ += n
        self.loss_ = nan
        self.loss_curve_.append(nan)
        self.validation_scores_.append(nan)
        self.validation_loss_curve_.append(nan)
        self._no_improvement_count = 0
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {nan:.8f}")
            print(f"Validation score: {nan:f}")

    def _train_lbfgs(self, X, targets, sw, alpha, comm=None) -> None:
        """solver="lbfgs": _estimator_lbfgs.train_lbfgs (with comm, data-parallel)."""
        train_lbfgs(self, X, targets, sw, alpha, _warn, comm)

    def _record_epoch(self, validation, comm=None) -> bool:
        """Scores the validation set (when there is one; with comm, every rank's together),
        keeps the best values (and, with early stopping, the best weights); True when the
        epoch counts as an improvement."""
        if validation is not None:
            score, loss = distributed.validation_metrics(comm, self, *validation)
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

    def _check_X(self, X) -> tuple[np.ndarray, np.dtype]:
        """(X (N, F) in the model's dtype, checked against the fitted estimator; the dtype of
        its predictions: scikit-learn's, X's own float32 or float64, else float64)."""
        model = getattr(self, "_model", None)
        # A plain numeric ndarray of the fitted width, with no feature names to compare, is
        # converted as validate_data would (C order, the model's dtype); if it is then finite,
        # that is validate_data's result, without its ~50 µs (four times the prediction of 50
        # digits rows). Anything else, or anything it would refuse, goes through it.
        if (model is not None and type(X) is np.ndarray and X.ndim == 2
                and X.dtype.kind in "fiu" and X.shape[0] > 0 and X.shape[1] == self.n_features_in_
                and not hasattr(self, "feature_names_in_")):
            with np.errstate(over="ignore"):  # beyond float32's range: inf, saturated below
                # (as check_array would; aligned too: the core reads it as floats)
                converted = np.require(X, dtype=model.dtype, requirements=["C", "A"])
            if first_nonfinite(converted) < 0:
                return converted, data.output_dtype(X)
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=data.INPUT_DTYPES, order="C",
                          accept_sparse="csr")
        return data.in_model_dtype(X, self._model.dtype, _warn), X.dtype

    def _predict_logits(self, X) -> np.ndarray:
        """The network's outputs (N, K) for X, in the model's dtype."""
        X, _ = self._check_X(X)
        return self._model.forward(X)

    def to_onnx(self, path=None):
        """The fitted network as an ONNX graph (``onnx.ModelProto``), written atomically to
        ``path`` when given (``pip install "fastmlp[onnx]"``; fastmlp.onnx_export has the
        graph). Input ``X`` (N, F) in the estimator's ``dtype``; a classifier's first output
        is ``probabilities``, ``predict_proba``'s columns in ``classes_`` order (stored in
        ``metadata_props["classes"]``), a regressor's ``predictions``, ``predict``'s (N,) for
        one target; the second is ``logits``. NotFittedError before ``fit``."""
        check_is_fitted(self)
        return onnx_export.record_to_onnx(
            self._model._snapshot(), path, classes=getattr(self, "classes_", None),
            feature_names=getattr(self, "feature_names_in_", None), squeeze_single_output=True)
