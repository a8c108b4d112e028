"""scikit-learn estimators on fastmlp's engine: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in counterparts of ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` (same
parameter names and meanings, same fitted attributes, same initialisation and stopping rules)
whose epochs run in fastmlp's C++ training engine. They are scikit-learn estimators
(``BaseEstimator`` and its mixins; parameters, inputs and fitted state are checked by
scikit-learn's own validation), so this module needs scikit-learn: ``pip install
"fastmlp[sklearn]"``.

Legend: N samples, F features (``n_features_in_``), K classes or regression outputs,
``layer_units = [F, *hidden_layer_sizes, n_outputs]``. scikit-learn's orientation:
``coefs_[i]`` (layer_units[i], layer_units[i+1]) maps rows of inputs to rows of outputs,
``h_{i+1} = act(h_i @ coefs_[i] + intercepts_[i])``; fastmlp's ``MLP.weights[i]`` is its
transpose (the ``torch.nn.Linear`` layout).
"""

from __future__ import annotations

import numpy as np

from fastmlp._validation import ACTIVATIONS

try:
    from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    from sklearn.utils._param_validation import StrOptions
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import _check_partial_fit_first_call

    from fastmlp import _estimator_data as data
    from fastmlp._estimator_base import _BaseMLP, _num_threads
except ImportError as exc:  # no scikit-learn, or one older than 1.6 (no validate_data)
    if not (exc.name or "").startswith("sklearn"):
        raise
    raise ImportError('fastmlp.estimators needs scikit-learn >= 1.6: '
                      'pip install "fastmlp[sklearn]"') from exc

__all__ = ["MLPClassifier", "MLPRegressor", "ConvergenceWarning", "NotFittedError",
           "DataConversionWarning"]

_DOC_PARAMETERS = f"""
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Units of each hidden layer; ``()`` is no hidden layer (a linear model).

    activation : {{{", ".join(f'"{a}"' for a in ACTIVATIONS)}}}, default="relu"
        Activation of the hidden layers.

    solver : {{"lbfgs", "sgd", "adam"}}, default="adam"
        ``"adam"`` and ``"sgd"``: mini-batch epochs in fastmlp's engine. ``"lbfgs"``: SciPy's
        L-BFGS-B on the full-batch loss and gradient (each evaluation one pass of fastmlp's
        network over all rows), as scikit-learn's; it ignores the mini-batch and schedule
        parameters, ``shuffle`` and ``early_stopping``, has no ``partial_fit`` and records no
        curves; Ctrl-C keeps the best weights it evaluated, with a warning. In float32 (the
        default dtype) its line search may stop earlier than in float64, with a
        ``ConvergenceWarning``.

    alpha : float >= 0, default=1e-4
        L2 penalty: each batch's loss gains ``alpha/2 · Σ‖W‖² / n_batch`` (biases are not
        penalised), as in scikit-learn. With ``sample_weight`` (or ``class_weight``), weights act
        like repetition counts: ``alpha`` is scaled by ``N / Σ weights`` (scikit-learn divides by
        each batch's weight total; the two agree exactly for full-batch training, ``"lbfgs"``
        included, and when the weights average 1, e.g. ``class_weight="balanced"``).

    batch_size : int or "auto", default="auto"
        Rows per step; ``"auto"`` is ``min(200, n_samples)``. Larger than the data: clipped,
        with a warning (as scikit-learn).

    learning_rate : {{"constant", "invscaling", "adaptive"}}, default="constant"
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
        Most epochs per ``fit`` (``"lbfgs"``: most L-BFGS iterations). Reaching it before the
        stopping rule fires warns with ``ConvergenceWarning``.

    shuffle : bool, default=True
        Visit the rows in a fresh random order every epoch (drawn from ``random_state``).

    random_state : None, int or numpy.random.RandomState, default=None
        Seeds the initial weights (scikit-learn's Glorot-uniform scheme, drawn in its order:
        the same ``random_state`` gives the same initial weights as scikit-learn), the
        validation split and the shuffles. None uses NumPy's global RandomState.

    tol : float >= 0, default=1e-4
        Improvement threshold of the stopping rule: training stops after ``n_iter_no_change``
        consecutive epochs whose training loss (validation score with early stopping) fails to
        beat the best by ``tol``. ``"lbfgs"``: SciPy's ``gtol`` (it stops once every
        component of the projected gradient is at most ``tol``).

    verbose : bool or int, default=False
        Print the loss (and validation score) after every epoch, in scikit-learn's format.
        ``"lbfgs"`` passes it to SciPy as ``iprint`` where SciPy (< 1.15) still prints.

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
        with ``partial_fit`` (``ValueError``); ignored by ``"lbfgs"`` (as in scikit-learn),
        which refuses ``X_val`` (``ValueError``). As in scikit-learn, a binary (or single-class)
        split refuses a class with a single member (``ValueError``); with more classes a lone
        member stays in the training rows. A fit that diverges (a step with non-finite
        weights, which the engine refuses) raises ``ValueError`` without early stopping; with
        it, the epoch is recorded with a NaN loss and validation score, training stops with a
        ``ConvergenceWarning`` and the best weights are kept (scikit-learn, whose weights
        become NaN, goes on scoring NaN to ``max_iter``).

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

    max_fun : int >= 1, default=15000
        ``"lbfgs"`` only: most loss evaluations per ``fit`` (SciPy's ``maxfun``; the line
        search may exceed it slightly); reaching it warns with ``ConvergenceWarning``.

    dtype : "float32" or "float64" (or their NumPy types or dtypes), default="float32"
        Precision of the weights and of all arithmetic. float32 is the default (scikit-learn
        trains in float64 unless given float32 data): inputs of other dtypes are converted once
        per call (finite values beyond float32's range saturate to its largest magnitude,
        with a ``DataConversionWarning``).
        Probabilities and regression outputs come in X's dtype, as scikit-learn's: float32 X
        gives float32, float64 (or int, or lists) float64, cast from this dtype's results.

    n_threads : int >= 1 or None, default=None
        Threads of fastmlp's kernels during ``fit``/``partial_fit``/``predict*``/``score``
        (``fastmlp.set_num_threads`` is set for the call and restored after; it is
        process-wide while the call runs). None leaves the current setting (by default every
        core the process may use, or ``OMP_NUM_THREADS``, which joblib sets in its workers:
        ``GridSearchCV(n_jobs=...)`` needs no setting). Results do not depend on it; see
        docs/threads.md for when threads are used at all.

    sparse_updates : {"exact", "lazy"}, default="exact"
        With sparse X, the first layer's gradient is zero outside the columns a batch
        touches. "exact": training as on the dense matrix (plain SGD updates only the touched
        weights, which is exact; Adam, momentum and ``alpha`` move every weight each step,
        Adam's moments decaying). "lazy": only the touched weights and their moments change
        (``torch.optim.SparseAdam``'s rule), much faster with Adam on a large vocabulary, not
        the same numbers. No effect on dense X or ``solver="lbfgs"``.

    precision : {"float32", "bfloat16"}, default="float32"
        The matrix products' precision in ``fit`` and in the fitted model's predictions:
        "bfloat16" rounds their operands to bfloat16 and accumulates in float32 (as
        ``torch.autocast``; ``MLP.precision``). The weights, the optimizer's state and the loss
        stay float32; ``dtype="float64"`` refuses it.
"""

_DOC_ATTRIBUTES = """
    loss_ : float
        Training loss of the last epoch: the mean over its batches (weighted by their rows)
        of each batch's mean loss plus the L2 penalty, as scikit-learn reports it
        (``"lbfgs"``: the full-batch loss with the penalty at the final weights).

    loss_curve_ : list of float
        ``loss_`` after every epoch (all calls with ``warm_start``/``partial_fit``). Like
        ``best_loss_`` and the validation attributes, absent after an ``"lbfgs"`` fit from
        fresh weights (as in scikit-learn).

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
        Epochs run by the last ``fit`` (1 after a ``partial_fit``; ``"lbfgs"``: its
        iterations), as scikit-learn.

    t_ : int
        Training samples seen by the stochastic optimizers across all calls (0 after an
        ``"lbfgs"`` fit from fresh weights).

    coefs_ : list of ndarray, shapes (layer_units[i], layer_units[i+1])
        Weights in scikit-learn's (in, out) orientation, i.e. ``MLP.weights[i].T``. Read-only
        views of the live weights (no copy, always current; writing into them raises). To
        change weights, assign new arrays (``est.coefs_[i] = W`` or ``est.coefs_ = [...]``):
        their shapes are checked and they are copied into the model. Assigned (with
        ``intercepts_``) before the first fit, they are plain lists, the starting weights of
        ``partial_fit`` and of a ``warm_start`` fit, as in scikit-learn (a plain fit draws
        new ones).

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
        ``"logistic"`` (binary or single-class classification, one output unit; multilabel,
        one unit per label), ``"softmax"`` (multiclass), ``"identity"`` (regression) or
        ``"exp"`` (``loss="poisson"``).
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = f"""Multi-layer perceptron classifier on fastmlp's C++ engine, with scikit-learn's
    ``MLPClassifier`` interface.

    Minimises the log-loss with mini-batch Adam or SGD, or full-batch L-BFGS. Binary problems
    use one output unit and the logistic function (``out_activation_ = "logistic"``), more
    classes a softmax. A single class is fitted as scikit-learn fits it: one logistic unit
    trained towards 0, ``predict`` always returns the class and ``predict_proba`` has two
    columns. A multilabel indicator matrix y (N, L) of 0/1 is fitted as scikit-learn fits it:
    one logistic unit per label, the binary log-loss summed over labels (mean over samples),
    ``classes_ = arange(L)``, ``predict`` the (N, L) indicator matrix and ``predict_proba``
    each label's probability (N, L).
    Beyond scikit-learn: float32 arithmetic, ``class_weight``, a stratified early-stopping
    split or a validation set passed to ``fit`` (``X_val``, ``y_val``), the validation loss
    curve, and ``n_threads``. Not supported: multiclass-multioutput targets (``ValueError``),
    ``class_weight`` with multilabel targets (``ValueError``).
    Sparse X (scipy.sparse, e.g. word counts) is read as CSR and never made dense: the first
    layer touches only the non-zeros (``MLP.fit``'s ``sparse_updates`` explains the updates).

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

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32", n_threads=None, sparse_updates="exact", precision="float32",
                 class_weight=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, dtype=dtype, n_threads=n_threads, sparse_updates=sparse_updates,
            precision=precision)
        self.class_weight = class_weight

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, sample_weight_val=None,
            comm=None):
        """Train on X (N, F) and class labels y (N,) for up to ``max_iter`` epochs (or
        L-BFGS iterations).

        ``sample_weight`` (N,) weighs each sample's loss (each batch's loss is its weighted
        mean). ``X_val``/``y_val`` (and ``sample_weight_val``): the validation set for early
        stopping instead of a ``validation_fraction`` split; without early stopping it is only
        scored (``validation_scores_``, ``validation_loss_curve_``). ``comm``: an mpi4py
        communicator, each rank passing its shard (and its X_val): data-parallel training as
        ``MLP.fit(comm=...)``, validation scores, early stopping, "balanced" class weights
        and "lbfgs" over the union of the ranks' rows (docs/distributed.md). Returns self.
        """
        return self._fit(X, y, sample_weight, incremental=False, X_val=X_val, y_val=y_val,
                         sample_weight_val=sample_weight_val, comm=comm)

    @available_if(_BaseMLP._check_solver)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over X, y from the current weights (initialising on the first call).

        ``classes`` (every label that will ever occur) is required on the first call and
        optional later (it must not change). The optimizer's state (Adam moments, momentum)
        carries over between calls. Parameters are validated on the first call only, as in
        scikit-learn. Only for ``solver="sgd"``/``"adam"``: with ``"lbfgs"`` the method does
        not exist (``AttributeError``, ``hasattr`` is False), as in scikit-learn. Returns self.
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _output_kind(self) -> str:
        if getattr(self, "_multilabel", False):
            return "multilabel"
        # One class (scikit-learn fits it too): one logistic unit trained towards 0, as
        # scikit-learn's LabelBinarizer encodes a lone class.
        return "sigmoid" if len(self.classes_) <= 2 else "softmax"

    def _encode_targets(self, y, *, first_pass, incremental, classes=None,
                        sample_weight=None, validation=False):
        if validation:
            if getattr(self, "_multilabel", False):
                return data.indicator_targets(y, self._dtype, "y_val"), len(self.classes_), None
        elif (data.is_multilabel(y) if first_pass
              else getattr(self, "_multilabel", False)):
            return self._encode_multilabel(y, first_pass=first_pass, incremental=incremental,
                                           classes=classes)
        elif first_pass:
            self._multilabel = False
        y = data.class_labels(y)
        if validation:
            return data.encode_labels(self.classes_, y, "y_val"), 1, None
        if incremental:
            _check_partial_fit_first_call(self, classes)  # sets classes_ on the first call
        elif first_pass:  # (fit with comm: the union of the ranks' labels)
            self.classes_ = np.unique(y) if classes is None else classes
        else:  # warm start
            seen = np.unique(y)
            if not (len(seen) == len(self.classes_) and np.array_equal(seen, self.classes_)):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the "
                    f"previous call to fit. Previously got {self.classes_}, `y` has {seen}")
        encoded = data.encode_labels(self.classes_, y)
        weights = data.class_weights(self.class_weight, self.classes_, encoded, sample_weight,
                                     incremental)
        return encoded, (1 if len(self.classes_) <= 2 else len(self.classes_)), weights

    def _encode_multilabel(self, y, *, first_pass, incremental, classes):
        """Targets of a multilabel indicator matrix y (N, L): the matrix itself, in the
        model's dtype; classes_ = arange(L) (scikit-learn's LabelBinarizer)."""
        if self.class_weight is not None:
            raise ValueError("class_weight is not supported for multilabel targets")
        targets = data.indicator_targets(y, self._dtype)
        n_labels = targets.shape[1]
        if first_pass:
            if incremental:
                _check_partial_fit_first_call(self, classes)  # sets classes_ on the first call
                if not np.array_equal(self.classes_, np.arange(n_labels)):
                    raise ValueError(f"`classes` of a multilabel y with {n_labels} labels must "
                                     f"be {list(range(n_labels))}, got {list(self.classes_)}")
            else:
                self.classes_ = np.arange(n_labels)
            self._multilabel = True
        elif n_labels != len(self.classes_):
            raise ValueError(f"y has {n_labels} labels but the fitted model has "
                             f"{len(self.classes_)}")
        return targets, n_labels, None

    def _validation_metrics(self, logits, targets, weights):
        return data.classification_metrics(logits, targets, weights, len(self.classes_))

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (N,), of ``classes_``'s kind; for multilabel the indicator
        matrix (N, L) of 0/1 (int), as scikit-learn."""
        with _num_threads(self.n_threads):
            logits = self._predict_logits(X)
        if getattr(self, "_multilabel", False):
            return (logits > 0).astype(int)
        if len(self.classes_) == 1:  # scikit-learn predicts the lone class whatever the output
            index = np.zeros(logits.shape[0], dtype=np.intp)
        elif logits.shape[1] == 1:
            index = (logits[:, 0] > 0).astype(np.intp)
        else:
            index = np.argmax(logits, axis=1)
        return self.classes_.take(index)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, n_classes) in X's float dtype, columns in the order
        of ``classes_``. Fitted on one class, (N, 2) as scikit-learn: [1 - p, p] of the one
        logistic unit, which is trained towards p = 0. Multilabel: each label's probability
        (N, L)."""
        with _num_threads(self.n_threads):
            X, dtype = self._check_X(X)
            if dtype == self._model.dtype:
                return self._model.predict_proba(X)
            logits = self._model.forward(X).astype(dtype)
        return data.probabilities(logits, self._output_kind())

    def predict_log_proba(self, X) -> np.ndarray:
        """``np.log(predict_proba(X))``, as scikit-learn defines it: -inf where a probability
        rounds to 0, and equal log-probabilities where probabilities round to the same value
        (so both rank the classes alike)."""
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = f"""Multi-layer perceptron regressor on fastmlp's C++ engine, with scikit-learn's
    ``MLPRegressor`` interface.

    Minimises the squared error (identity output, one unit per target; multi-output y of shape
    (N, K) is supported) with mini-batch Adam or SGD, or full-batch L-BFGS; with
    ``loss="poisson"``, half the Poisson deviance of ``exp`` of the outputs (scikit-learn's
    ``out_activation_ = "exp"``: targets must be >= 0, ``predict`` returns ``exp(raw)``, the
    loss is summed over outputs and computed from the raw outputs). The engine's loss
    is ½·Σ over outputs of the squared error; scikit-learn reports it divided by the number of
    outputs, and so do ``loss_``, ``loss_curve_``, the stopping rule based on them and the
    objective L-BFGS sees (the gradients, as in scikit-learn, are those of the sum). Predictions
    come in X's float dtype (float64 for other inputs), as scikit-learn's. Sparse X
    (scipy.sparse) is read as CSR and never made dense.

    Parameters
    ----------{_DOC_PARAMETERS}
    loss : "squared_error" or "poisson", default="squared_error"
        Half the squared error (identity output), or half the Poisson deviance with the log
        link (exp output; y >= 0).

    Attributes
    ----------{_DOC_ATTRIBUTES}
    Examples
    --------
    >>> import numpy as np
    >>> from fastmlp import MLPRegressor
    >>> X = np.linspace(-1, 1, 200).reshape(-1, 1)
    >>> reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300,
    ...                    random_state=0).fit(X, X[:, 0] ** 2)
    >>> reg.coefs_[0].dtype, reg.predict([[0.5]]).dtype
    (dtype('float32'), dtype('float64'))
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32", n_threads=None, sparse_updates="exact", precision="float32",
                 loss="squared_error"):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, dtype=dtype, n_threads=n_threads, sparse_updates=sparse_updates,
            precision=precision)
        self.loss = loss

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, sample_weight_val=None,
            comm=None):
        """Train on X (N, F) and targets y (N,) or (N, K) for up to ``max_iter`` epochs (or
        L-BFGS iterations).

        ``sample_weight`` (N,) weighs each sample's loss (each batch's loss is its weighted
        mean). ``X_val``/``y_val`` (and ``sample_weight_val``): the validation set for early
        stopping instead of a ``validation_fraction`` split; without early stopping it is only
        scored (``validation_scores_``, ``validation_loss_curve_``). ``comm``: an mpi4py
        communicator, each rank passing its shard (and its X_val): data-parallel training as
        ``MLP.fit(comm=...)``, validation scores, early stopping, "balanced" class weights
        and "lbfgs" over the union of the ranks' rows (docs/distributed.md). Returns self.
        """
        return self._fit(X, y, sample_weight, incremental=False, X_val=X_val, y_val=y_val,
                         sample_weight_val=sample_weight_val, comm=comm)

    @available_if(_BaseMLP._check_solver)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X, y from the current weights (initialising on the first call); the
        optimizer's state carries over between calls. Parameters are validated on the first
        call only, as in scikit-learn. Only for ``solver="sgd"``/``"adam"``: with ``"lbfgs"``
        the method does not exist (``AttributeError``; scikit-learn's regressor means to do the
        same, but its check is never called, so it runs a whole L-BFGS fit). Returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _output_kind(self) -> str:
        return "poisson" if self.loss == "poisson" else "identity"

    def _encode_targets(self, y, *, first_pass, incremental, classes=None,
                        sample_weight=None, validation=False):
        name = "y_val" if validation else "y"
        targets = data.regression_targets(y, self._dtype, name)
        if self.loss == "poisson" and np.any(targets < 0):
            raise ValueError(f"Some value(s) of {name} are negative which is not allowed for "
                             "Poisson regression.")
        if not first_pass and targets.shape[1] != self.n_outputs_:
            raise ValueError(f"{name} has {targets.shape[1]} outputs but the fitted model has "
                             f"{self.n_outputs_}")
        return targets, targets.shape[1], None

    def _validation_metrics(self, logits, targets, weights):
        if self.loss == "poisson":
            return data.poisson_metrics(logits, targets, weights)
        return data.regression_metrics(logits, targets, weights)

    def predict(self, X) -> np.ndarray:
        """Predictions (N,) for one target, (N, n_outputs) for several, in X's float dtype
        (float64 for other inputs)."""
        with _num_threads(self.n_threads):
            X, dtype = self._check_X(X)
            out = self._model.forward(X).astype(dtype, copy=False)
        if self.loss == "poisson":
            with np.errstate(over="ignore"):
                out = np.exp(out)
        return out[:, 0] if self.n_outputs_ == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        return tags
