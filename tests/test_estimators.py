"""fastmlp.MLPClassifier / MLPRegressor: scikit-learn's estimator checks, agreement with
sklearn.neural_network on the same initial weights, every parameter's semantics, and a clear
ImportError without scikit-learn (the rest of fastmlp does not need it)."""

import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_blobs, make_regression  # noqa: E402
from sklearn.exceptions import (ConvergenceWarning, DataConversionWarning,  # noqa: E402
                                NotFittedError)
from sklearn.model_selection import (GridSearchCV, cross_val_score,  # noqa: E402
                                     train_test_split)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.class_weight import compute_sample_weight  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import MLPClassifier, MLPRegressor  # noqa: E402

# Training that stops at max_iter warns, as in scikit-learn; tests that cap max_iter on purpose
# say so with this mark.
stops_at_max_iter = pytest.mark.filterwarnings(
    "ignore::fastmlp.estimators.ConvergenceWarning")


def blobs(n=120, centers=3, seed=0, n_features=4):
    X, y = make_blobs(n_samples=n, centers=centers, n_features=n_features, random_state=seed)
    return StandardScaler().fit_transform(X), y


# ---- scikit-learn's estimator checks -------------------------------------------------------

FLOAT64_TOLERANCE = (
    "the check fits float64 X with integer sample weights and with the rows repeated instead, "
    "and compares the predictions at assert_allclose_dense_sparse's fixed rtol=1e-7, float64's "
    "rounding: computed in float32 (the default dtype), the weighted sums and the repeated "
    "rows' sums round apart by ~1e-7 relative, more or less than rtol with the SIMD flavour "
    "(the regressor passes on avx2/avx512, fails on generic); with dtype='float64' it passes "
    "(checked below)")


def expected_failed_checks(estimator):
    """Checks that hard-code float64 precision, with why. They fail or pass with the rounding
    of the CPU's kernels (not strict)."""
    if estimator.dtype == "float32":
        return {"check_sample_weight_equivalence_on_dense_data": FLOAT64_TOLERANCE,
                "check_sample_weight_equivalence_on_sparse_data": FLOAT64_TOLERANCE}
    return {}


CHECKED = [
    MLPClassifier(max_iter=50, random_state=0),
    MLPRegressor(max_iter=50, random_state=0),
    MLPClassifier(max_iter=50, random_state=0, dtype="float64"),
    MLPRegressor(max_iter=50, random_state=0, dtype="float64"),
    MLPClassifier(solver="lbfgs", max_iter=50, random_state=0, dtype="float64"),
    MLPRegressor(solver="lbfgs", max_iter=50, random_state=0, dtype="float64"),
]


# Checks with few samples stop at max_iter: expected; scikit-learn's own MLP does the same.
@stops_at_max_iter
@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks,
                         xfail_strict=False)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---- agreement with scikit-learn's MLP -------------------------------------------------------

SAME_TRAJECTORY = {
    "binary": (MLPClassifier, neural_network.MLPClassifier, 2),
    "multiclass": (MLPClassifier, neural_network.MLPClassifier, 3),
    "regression": (MLPRegressor, neural_network.MLPRegressor, 1),
    "multi-output": (MLPRegressor, neural_network.MLPRegressor, 3),
}


@stops_at_max_iter
@pytest.mark.parametrize("batch_size", [60, 20], ids=["full-batch", "3-batches"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("problem", SAME_TRAJECTORY)
def test_loss_curve_equals_sklearn_from_the_same_initial_weights(problem, solver, batch_size):
    """Same random_state: the same Glorot initial weights; steps in row order then follow
    scikit-learn's trajectory (SGD with Nesterov momentum; Adam with a negligible eps), and
    loss_ is reported as scikit-learn does (multi-output: divided by outputs, the L2 penalty
    not; with several batches an epoch's penalty is the engine's exact sum over its steps)."""
    ours, theirs, k = SAME_TRAJECTORY[problem]
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 5))
    if ours is MLPClassifier:
        y = rng.randint(0, k, size=60)
    else:
        y = X @ rng.normal(size=(5, k)) + 0.1 * rng.normal(size=(60, k))
        y = y[:, 0] if k == 1 else y
    params = dict(hidden_layer_sizes=(7, 6), activation="tanh", solver=solver, alpha=0.01,
                  batch_size=batch_size, shuffle=False, max_iter=15, random_state=3, tol=0.0,
                  learning_rate_init=0.05, momentum=0.8, nesterovs_momentum=True,
                  epsilon=1e-20)  # Adam's eps enters after the bias correction here, before it
    mine = ours(dtype="float64", **params).fit(X, y)
    reference = theirs(**params).fit(X, y)
    np.testing.assert_allclose(mine.loss_curve_, reference.loss_curve_, rtol=1e-9)
    for a, b in zip(mine.coefs_ + mine.intercepts_, reference.coefs_ + reference.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert mine.out_activation_ == reference.out_activation_
    assert mine.n_layers_ == reference.n_layers_ and mine.n_outputs_ == reference.n_outputs_


@stops_at_max_iter  # scikit-learn's defaults stop at max_iter on digits, ours alike
def test_digits_accuracy_matches_sklearn():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25,
                                                        stratify=y, random_state=0)
    params = dict(hidden_layer_sizes=(100,), random_state=0)  # otherwise the defaults
    ours = MLPClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
    theirs = neural_network.MLPClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
    assert theirs > 0.95
    assert abs(ours - theirs) <= 0.015


# ---- the estimator contract --------------------------------------------------------------------

def test_constructor_stores_parameters_verbatim_and_validates_in_fit():
    sizes = [5, 3]
    clf = MLPClassifier(hidden_layer_sizes=sizes, alpha=-1.0, solver="newton")
    assert clf.hidden_layer_sizes is sizes and clf.alpha == -1.0
    with pytest.raises(ValueError, match="'alpha' parameter"):
        clf.fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ValueError, match="'solver' parameter"):
        clf.set_params(alpha=1e-4).fit([[0.0], [1.0]], [0, 1])
    assert clf.get_params()["alpha"] == 1e-4
    with pytest.raises(ValueError, match="'max_fun' parameter"):
        clf.set_params(solver="lbfgs", max_fun=0).fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ValueError, match="Invalid parameter"):
        clf.set_params(loss="squared_error")


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate="optimal"), "learning_rate"),
    (dict(activation="softplus"), "activation"),
    (dict(hidden_layer_sizes=(3, 0)), "hidden_layer_sizes"),
    (dict(dtype="float16"), "dtype"),
    (dict(dtype=None), "dtype"),
    (dict(n_threads=0), "n_threads"),
    (dict(batch_size=0), "batch_size"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(momentum=1.5), "momentum"),
    (dict(class_weight="auto"), "class_weight"),
])
def test_invalid_parameters_raise_in_fit(bad, match):
    X, y = blobs(30)
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**bad).fit(X, y)


def test_unsupported_sklearn_options_are_refused_clearly():
    X, y = blobs(30)
    with pytest.raises(ValueError, match="'loss' parameter"):  # scikit-learn's constraint
        MLPRegressor(loss="huber").fit(X, y)


@stops_at_max_iter
def test_clone_pickle_repr():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X, y)
    assert repr(clf) == "MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0)"
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params() and not hasattr(fresh, "coefs_")
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    assert restored.loss_curve_ == clf.loss_curve_
    restored.partial_fit(X, y)  # keeps training: writable weights, optimizer state carried
    assert restored.t_ == clf.t_ + len(X)
    assert not restored.coefs_[0].flags.writeable


@stops_at_max_iter
def test_pipeline_grid_search_cross_val_score():
    X, y = blobs(150)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.8
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (16,)],
                               "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2).fit(X, y)
    assert grid.best_score_ > 0.8
    X_r, y_r = make_regression(n_samples=80, n_features=4, noise=0.1, random_state=0)
    r2 = cross_val_score(make_pipeline(StandardScaler(), MLPRegressor(
        learning_rate_init=0.01, max_iter=100, random_state=0)), X_r, y_r / y_r.std(), cv=2)
    assert r2.mean() > 0.8


@stops_at_max_iter
def test_invalid_input_leaves_a_fitted_estimator_unchanged():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    with pytest.raises(ValueError, match="only one such class"):
        clf.fit(X[:, :2], y % 2, sample_weight=(y == 0).astype(float))
    assert clf.n_features_in_ == 4 and clf.classes_.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


@stops_at_max_iter
def test_memory_mapped_estimator_predicts_and_keeps_training(tmp_path):
    joblib = pytest.importorskip("joblib")
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(X, y)
    joblib.dump(clf, tmp_path / "clf.joblib")
    mapped = joblib.load(tmp_path / "clf.joblib", mmap_mode="r")
    np.testing.assert_array_equal(mapped.predict_proba(X), clf.predict_proba(X))
    mapped.partial_fit(X, y)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(mapped.coefs_[0], clf.coefs_[0])


def test_warnings_point_at_the_callers_line():
    X, y = blobs(30)
    with pytest.warns(ConvergenceWarning) as caught:
        MLPClassifier(max_iter=1).fit(X, y)
    assert caught[0].filename == __file__


def test_ctrl_c_stops_training_with_a_warning_and_a_usable_model(monkeypatch):
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0)
    record_epoch = MLPClassifier._record_epoch

    def interrupted_at_epoch_3(self, validation, comm=None):
        if len(self.loss_curve_) == 3:
            raise KeyboardInterrupt
        return record_epoch(self, validation, comm)

    monkeypatch.setattr(MLPClassifier, "_record_epoch", interrupted_at_epoch_3)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf.fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    assert clf.predict(X).shape == (len(X),)


def test_docstring_examples():
    import doctest

    import fastmlp.estimators
    assert doctest.testmod(fastmlp.estimators).failed == 0


def test_unfitted_estimator_raises_not_fitted():
    for method in ("predict", "predict_proba", "predict_log_proba"):
        with pytest.raises(NotFittedError):
            getattr(MLPClassifier(), method)([[0.0]])
    with pytest.raises(NotFittedError):
        MLPRegressor().predict([[0.0]])


# ---- labels, outputs and fitted attributes --------------------------------------------------

@stops_at_max_iter
@pytest.mark.parametrize("labels", [
    np.array([3, 7, 100]),               # non-contiguous ints
    np.array(["cat", "dog", "emu"]),     # strings
    np.array([-1.0, 0.5 * 4, 9.0]),      # floats with integral values
    np.array(["x", "y", "z"], dtype=object),
])
def test_any_label_type(labels):
    X, y_index = blobs(90)
    y = labels[y_index]
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=100,
                        random_state=0).fit(X, y.tolist())
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    predicted = clf.predict(X)
    assert predicted.dtype == clf.classes_.dtype
    assert np.mean(predicted == y) > 0.9
    assert clf.out_activation_ == "softmax" and clf.n_outputs_ == 3
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], predicted)


@stops_at_max_iter
def test_binary_uses_one_logistic_output():
    X, y_index = blobs(80, centers=2)
    y = np.array(["no", "yes"])[y_index]
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0).fit(X, y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1
    assert [c.shape for c in clf.coefs_] == [(4, 5), (5, 1)]
    proba = clf.predict_proba(X)
    assert proba.shape == (80, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[(proba[:, 1] > 0.5).astype(int)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-5, atol=1e-6)


@stops_at_max_iter
def test_multilabel_targets_are_fitted_and_continuous_targets_refused():
    X = np.random.RandomState(0).normal(size=(20, 3))
    Y = np.eye(2, dtype=int)[np.arange(20) % 2]
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, Y)
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 2
    assert clf.predict(X).shape == clf.predict_proba(X).shape == (20, 2)
    with pytest.raises(ValueError, match="multi-output targets are not supported"):
        MLPClassifier().fit(X, np.stack([np.arange(20) % 3, np.arange(20) % 2], axis=1))
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        MLPClassifier().fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="Mix of label input types"):
        MLPClassifier().fit(X, np.array(["a", 1] * 10, dtype=object))


@stops_at_max_iter
def test_parameters_assigned_before_fitting_start_partial_fit_and_warm_start():
    """As in scikit-learn: coefs_ and intercepts_ assigned to an unfitted estimator are lists
    (item assignment works) that partial_fit and a warm-started fit start from; a plain fit
    draws its own initial weights."""
    X, y = blobs(30, centers=2)
    coefs, intercepts = [np.full((4, 3), 0.1), np.full((3, 1), -0.2)], [np.zeros(3), [0.5]]
    for Estimator, method in ((MLPClassifier, "partial_fit"), (MLPRegressor, "fit")):
        est = Estimator(hidden_layer_sizes=(3,), max_iter=1, solver="sgd",
                        learning_rate_init=1e-12, warm_start=True)
        est.coefs_, est.intercepts_ = [None, None], list(intercepts)
        est.coefs_[0], est.coefs_[1] = coefs
        kwargs = {"classes": [0, 1]} if method == "partial_fit" else {}
        getattr(est, method)(X, y, **kwargs)
        for got, want in zip(est.coefs_ + est.intercepts_, coefs + intercepts):
            np.testing.assert_allclose(got, want, atol=1e-6)
    plain = MLPRegressor(hidden_layer_sizes=(3,), max_iter=1)
    plain.coefs_, plain.intercepts_ = coefs, intercepts
    assert not np.allclose(plain.fit(X, y).coefs_[0], 0.1)
    wrong = MLPRegressor(hidden_layer_sizes=(5,), max_iter=1)
    wrong.coefs_, wrong.intercepts_ = coefs, intercepts
    with pytest.raises(ValueError, match=r"coefs_\[0\] has shape \(4, 3\), expected \(4, 5\)"):
        wrong.partial_fit(X, y)
    assert wrong.coefs_[0] is coefs[0] and not hasattr(wrong, "n_features_in_")  # as before


@stops_at_max_iter
def test_coefs_are_read_only_sklearn_oriented_views_and_assignable():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=10, random_state=0).fit(X, y)
    assert [c.shape for c in clf.coefs_] == [(4, 6), (6, 3)]
    assert [b.shape for b in clf.intercepts_] == [(6,), (3,)]
    hidden = np.maximum(X @ clf.coefs_[0] + clf.intercepts_[0], 0)
    logits = hidden @ clf.coefs_[1] + clf.intercepts_[1]
    np.testing.assert_allclose(clf.predict_proba(X), np.exp(logits) / np.exp(
        logits).sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="read-only"):
        clf.coefs_[0][0, 0] = 1.0
    clf.coefs_[1] = np.zeros((6, 3))       # assignment is copied into the model
    clf.intercepts_ = [clf.intercepts_[0], np.array([0.0, 5.0, 0.0])]
    assert (clf.predict(X) == clf.classes_[1]).all()
    assert clf.coefs_[1].dtype == np.float32 and not clf.coefs_[1].flags.writeable
    with pytest.raises(ValueError, match=r"coefs_\[1\] has shape \(5, 3\), expected \(6, 3\)"):
        clf.coefs_[1] = np.zeros((5, 3))   # refused when assigned, the model unchanged
    assert (clf.predict(X) == clf.classes_[1]).all()


@stops_at_max_iter
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_computes_and_predictions_come_in_the_inputs_dtype(dtype):
    """The weights (and all arithmetic) are in the dtype parameter; probabilities and
    regression outputs in X's float dtype, as scikit-learn's (other inputs: float64)."""
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, dtype=dtype, random_state=0)
    clf.fit(X.astype(np.float64), y)
    assert {c.dtype for c in clf.coefs_ + clf.intercepts_} == {np.dtype(dtype)}
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, dtype=dtype, random_state=0)
    reg.fit(X.astype(np.float32), X[:, :2])
    assert {c.dtype for c in reg.coefs_ + reg.intercepts_} == {np.dtype(dtype)}
    for X_kind, want in ((X.astype(np.float32), np.float32), (X, np.float64),
                         (X.round().astype(int), np.float64), (X.tolist(), np.float64)):
        assert clf.predict_proba(X_kind).dtype == want
        assert clf.predict_log_proba(X_kind).dtype == want
        assert reg.predict(X_kind).dtype == want and reg.predict(X_kind).shape == (len(X), 2)
    np.testing.assert_allclose(clf.predict_proba(X.astype(np.float32)), clf.predict_proba(X),
                               rtol=1e-5, atol=1e-7)


@stops_at_max_iter
def test_regressor_multi_output_and_column_vector():
    X, Y = make_regression(n_samples=100, n_features=4, n_targets=3, noise=0.1, random_state=0)
    Y /= Y.std(axis=0)
    reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=200,
                       random_state=0).fit(X, Y)
    assert reg.n_outputs_ == 3 and reg.out_activation_ == "identity"
    assert reg.predict(X).shape == (100, 3) and reg.score(X, Y) > 0.9
    with pytest.warns(fastmlp.estimators.DataConversionWarning, match="column-vector"):
        reg.fit(X, Y[:, :1])
    assert reg.predict(X).shape == (100,)


# ---- sample_weight and class_weight ------------------------------------------------------------

@stops_at_max_iter
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_integer_sample_weight_equals_repeated_rows(Estimator):
    """Full-batch training: weights act as repetition counts, the L2 penalty included."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 4))
    y = rng.randint(0, 3, size=30) if Estimator is MLPClassifier else rng.normal(size=30)
    w = rng.randint(0, 4, size=30)
    params = dict(hidden_layer_sizes=(5,), alpha=0.1, max_iter=20, random_state=0,
                  dtype="float64", shuffle=False)  # batch_size "auto": the whole data
    weighted = Estimator(**params).fit(X, y, sample_weight=w)
    repeated = Estimator(**params).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-10)
    for a, b in zip(weighted.coefs_, repeated.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@stops_at_max_iter
def test_scaling_sample_weight_equals_scaling_alpha():
    """Weights are repetition counts: 7× the weights is 7× the data, i.e. alpha / 7."""
    X, y = blobs()
    params = dict(hidden_layer_sizes=(5,), max_iter=10, random_state=0, dtype="float64")
    w = np.random.RandomState(1).uniform(0.5, 2, size=len(y))
    a = MLPClassifier(alpha=0.01, **params).fit(X, y, sample_weight=w)
    b = MLPClassifier(alpha=0.07, **params).fit(X, y, sample_weight=7 * w)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-8)


@stops_at_max_iter
def test_class_weight_balanced_and_dict_equal_sample_weights():
    X, y = blobs(90)
    keep = (y != 2) | (np.arange(90) % 5 == 0)  # class 2 rare
    X, y = X[keep], np.array(["a", "b", "c"])[y[keep]]
    params = dict(hidden_layer_sizes=(5,), max_iter=10, random_state=0, dtype="float64")
    balanced = MLPClassifier(class_weight="balanced", **params).fit(X, y)
    manual = MLPClassifier(**params).fit(X, y, sample_weight=compute_sample_weight(
        "balanced", y))
    np.testing.assert_allclose(balanced.loss_curve_, manual.loss_curve_, rtol=1e-10)
    weights = {"a": 1.0, "c": 4.0}
    as_dict = MLPClassifier(class_weight=weights, **params).fit(X, y, sample_weight=np.full(
        len(y), 2.0))
    manual = MLPClassifier(**params).fit(X, y, sample_weight=np.where(y == "c", 8.0, 2.0))
    np.testing.assert_allclose(as_dict.loss_curve_, manual.loss_curve_, rtol=1e-10)
    with pytest.raises(ValueError, match="not supported for partial_fit"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="are not in class_weight"):
        MLPClassifier(class_weight={"a": 1.0, "zzz": 2.0}, **params).fit(X, y)


def test_sample_weight_errors():
    X, y = blobs(30)
    with pytest.raises(ValueError, match="non-zero"):
        MLPClassifier().fit(X, y, sample_weight=np.zeros(30))
    with pytest.raises(ValueError, match="Negative"):
        MLPClassifier().fit(X, y, sample_weight=-np.ones(30))
    with pytest.raises(ValueError, match="only one such class"):
        MLPClassifier().fit(X, y, sample_weight=(y == 1).astype(float))


# ---- stopping: max_iter, tol, early stopping ----------------------------------------------

def test_convergence_warning_at_max_iter_and_none_when_converged():
    X, y = blobs()
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        clf = MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3 and clf.loss_ == clf.loss_curve_[-1]
    assert clf.best_loss_ == min(clf.loss_curve_)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(max_iter=200, tol=10.0, n_iter_no_change=2, random_state=0).fit(X, y)
    assert clf.n_iter_ == 4  # tol unreachable: 1 epoch, then n_iter_no_change + 1 without


@stops_at_max_iter
def test_early_stopping_split_is_stratified_and_keeps_the_best_weights():
    X, y = blobs(200, centers=4)
    clf = MLPClassifier(hidden_layer_sizes=(4,), early_stopping=True, validation_fraction=0.2,
                        n_iter_no_change=3, max_iter=60, random_state=0).fit(X, y)
    assert clf.best_loss_ is None
    assert len(clf.validation_scores_) == len(clf.validation_loss_curve_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert all(s * 40 == round(s * 40) for s in clf.validation_scores_)  # 40 held out


def test_early_stopping_on_given_validation_data_restores_the_best_epoch():
    X, y = blobs(300, centers=3, seed=1)
    X_val, y_val = X[200:], y[200:]
    clf = MLPClassifier(hidden_layer_sizes=(3,), learning_rate_init=0.05, early_stopping=True,
                        n_iter_no_change=4, max_iter=200, random_state=0)
    clf.fit(X[:200], y[:200], X_val=X_val, y_val=y_val)
    assert clf.n_iter_ < 200
    assert clf.score(X_val, y_val) == clf.best_validation_score_
    # The last improvement is the first best epoch; then n_iter_no_change + 1 epochs without.
    best = int(np.argmax(clf.validation_scores_))
    assert clf.n_iter_ == best + 1 + clf.n_iter_no_change + 1
    assert len(clf.loss_curve_) == len(clf.validation_scores_) == clf.n_iter_


def test_stratified_validation_split():
    from fastmlp._estimator_data import split_indices
    classes = np.repeat([0, 1, 2], [71, 24, 5])
    train, val = split_indices(100, 0.2, np.random.RandomState(0), classes)
    assert len(val) == 20 and len(train) == 80 and not np.intersect1d(train, val).size
    assert np.bincount(classes[val]).tolist() == [14, 5, 1]  # 14.2, 4.8, 1.0 rounded
    one_of_a_kind = np.array([0] * 9 + [1])
    train, val = split_indices(10, 0.5, np.random.RandomState(0), one_of_a_kind)
    assert 9 in train  # a class keeps at least one training row


@stops_at_max_iter
def test_validation_data_without_early_stopping_is_monitored():
    X, y = make_regression(n_samples=120, n_features=3, noise=1.0, random_state=0)
    y = y / y.std()
    reg = MLPRegressor(max_iter=8, random_state=0).fit(X[:80], y[:80], X_val=X[80:],
                                                        y_val=y[80:])
    assert len(reg.validation_scores_) == 8 and reg.best_loss_ == min(reg.loss_curve_)
    pred = reg.predict(X[80:]).astype(np.float64)
    assert reg.validation_loss_curve_[-1] == pytest.approx(0.5 * np.mean((pred - y[80:]) ** 2),
                                                          rel=1e-4)
    assert reg.validation_scores_[-1] == pytest.approx(reg.score(X[80:], y[80:]), rel=1e-6)
    without = MLPRegressor(max_iter=8, random_state=0).fit(X[:80], y[:80])
    assert without.validation_scores_ is None and without.validation_loss_curve_ is None
    assert without.loss_curve_ == reg.loss_curve_  # monitoring does not change training
    with pytest.raises(ValueError, match="together"):
        MLPRegressor().fit(X, y, X_val=X)


def test_early_stopping_with_partial_fit_fails_clearly():
    X, y = blobs(40)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


@stops_at_max_iter
def test_warm_start_continues_curves_and_best_weights():
    X, y = blobs(200)
    clf = MLPClassifier(hidden_layer_sizes=(4,), warm_start=True, early_stopping=True,
                        max_iter=5, random_state=0).fit(X, y)
    first_coefs = [c.copy() for c in clf.coefs_]
    curve = list(clf.validation_scores_)
    clf.fit(X, y)
    assert clf.validation_scores_[:5] == curve and len(clf.validation_scores_) == 10
    assert len(clf.loss_curve_) == 10 and clf.n_iter_ == 5 and clf.t_ == 10 * 180
    assert not np.array_equal(first_coefs[0], clf.coefs_[0])
    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X[y != 2], y[y != 2])
    with pytest.raises(ValueError, match="architecture"):
        clf.set_params(hidden_layer_sizes=(5,)).fit(X, y)
    cold = clone(clf).set_params(warm_start=False, hidden_layer_sizes=(4,)).fit(X, y)
    assert len(cold.loss_curve_) == 5


# ---- partial_fit -------------------------------------------------------------------------------

@stops_at_max_iter
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_repeated_partial_fit_equals_fit(solver):
    X, y = blobs(100)
    params = dict(hidden_layer_sizes=(6,), solver=solver, batch_size=32, shuffle=False,
                  max_iter=7, tol=0.0, random_state=0)
    fitted = MLPClassifier(**params).fit(X, y)
    partial = MLPClassifier(**params)
    for _ in range(7):
        partial.partial_fit(X, y, classes=[2, 0, 1])
    # (epoch losses are float64 sums whose grouping depends on how the engine was called)
    np.testing.assert_allclose(partial.loss_curve_, fitted.loss_curve_, rtol=1e-12)
    assert partial.n_iter_ == 1
    assert partial.t_ == fitted.t_ == 700
    for a, b in zip(partial.coefs_, fitted.coefs_):
        np.testing.assert_array_equal(a, b)


def test_partial_fit_classes_rules():
    X, y = blobs(60)
    clf = MLPClassifier(hidden_layer_sizes=(3,))
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[y == 0], y[y == 0], classes=[0, 1, 2, 3])  # a batch of one class
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2, 3])
    clf.partial_fit(X, y)
    with pytest.raises(ValueError, match="not the same as on last call"):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    messages = []
    theirs = neural_network.MLPClassifier(hidden_layer_sizes=(3,))
    for est in (clf, theirs.partial_fit(X, y, classes=[0, 1, 2, 3])):
        with pytest.raises(ValueError, match="classes not in") as error:
            est.partial_fit(X, np.where(y == 0, 10, y))
        messages.append(str(error.value))
    assert messages[0] == messages[1]  # scikit-learn's, word for word
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 4"):
        clf.partial_fit(X[:, :3], y)


# ---- learning-rate schedules ------------------------------------------------------------------

@stops_at_max_iter
def test_invscaling_and_adaptive_schedules():
    X, y = blobs(50)
    clf = MLPClassifier(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5,
                        power_t=0.5, max_iter=4, random_state=0).fit(X, y)
    assert clf._optimizer.lr == pytest.approx(0.5 / (clf.t_ + 1) ** 0.5)
    # Without momentum (whose velocity scikit-learn keeps in units of the old rate), the
    # rate schedule reproduces scikit-learn's trajectory.
    params = dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, max_iter=4,
                  random_state=0, shuffle=False, momentum=0.0)
    ours = MLPClassifier(dtype="float64", **params).fit(X, y)
    theirs = neural_network.MLPClassifier(**params).fit(X, y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6)
    # "adaptive": tol unreachable, so every n_iter_no_change + 1 epochs the rate is divided by
    # 5, until it is <= 1e-6: 0.1 / 5^8, then training stops, after 1 + 9 * 2 epochs.
    params = dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1, tol=10.0,
                  n_iter_no_change=1, max_iter=30, random_state=0)
    adaptive = MLPClassifier(**params).fit(X, y)
    reference = neural_network.MLPClassifier(**params).fit(X, y)
    assert adaptive._optimizer.lr == pytest.approx(0.1 / 5 ** 8)
    assert adaptive._optimizer.lr == pytest.approx(reference._optimizer.learning_rate)
    assert adaptive.n_iter_ == reference.n_iter_ == 19


# ---- input validation ------------------------------------------------------------------------

@stops_at_max_iter
def test_dataframe_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = blobs(60)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    clf = MLPClassifier(max_iter=5, random_state=0).fit(frame, pd.Series(y))
    np.testing.assert_array_equal(clf.feature_names_in_, ["a", "b", "c", "d"])
    assert clf.feature_names_in_.dtype == object and clf.n_features_in_ == 4
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(clf.predict(frame), clf.predict(X))
    with pytest.raises(ValueError, match="same order"):
        clf.predict(frame[["b", "a", "c", "d"]])
    assert not hasattr(clf.fit(X, y), "feature_names_in_")


def test_lists_ints_bools_and_tiny_data():
    clf = MLPClassifier(max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit([[0, 1], [1, 0], [True, False]], ["x", "y", "y"])
    assert clf.predict([[0, 1]]).tolist() in (["x"], ["y"])
    with pytest.warns(ConvergenceWarning):
        MLPRegressor(max_iter=2).fit([[1.0]], [3.0])  # one sample, one feature
    with pytest.raises(ValueError, match="Expected 2D array"):
        clf.predict([0, 1])


@pytest.mark.parametrize("value, message", [
    (np.nan, "Input X contains NaN"),
    (np.inf, "Input X contains infinity"),
])
def test_non_finite_inputs(value, message):
    X, y = blobs(20)
    X[3, 1] = value
    with pytest.raises(ValueError, match=message):
        MLPClassifier().fit(X, y)


@stops_at_max_iter
def test_values_beyond_float32s_range_saturate_with_a_warning():
    """Finite float64 values beyond float32's range become its largest magnitude, with a
    warning (training on them usually diverges, as scikit-learn's float64 training on values
    that overflow it)."""
    X, y = blobs(20)
    saturated = X.copy()
    X[3, 1], saturated[3, 1] = -1e300, -np.finfo(np.float32).max
    beyond = "X has values beyond the range of float32, the estimator's dtype: they are saturated"
    with pytest.warns(DataConversionWarning, match=beyond):
        fit = MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    reference = MLPClassifier(max_iter=3, random_state=0).fit(saturated, y)
    for a, b in zip(fit.coefs_, reference.coefs_):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(DataConversionWarning, match=beyond):
        np.testing.assert_array_equal(fit.predict_proba(X), fit.predict_proba(saturated))
    huge = np.finfo(np.float64).max * np.random.RandomState(0).uniform(size=(10, 2))
    with pytest.warns(DataConversionWarning, match=beyond):
        with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
            MLPRegressor().fit(huge, np.arange(10.0))


@stops_at_max_iter
@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "adam"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_sparse_input_trains_as_dense(solver, early_stopping):
    """scipy.sparse X (any format; CSR in the engine) gives the estimator fitted on the dense
    matrix: the same predictions, probabilities to rounding."""
    sparse = pytest.importorskip("scipy.sparse")
    X, y = blobs(120, n_features=30)
    X[X < 0.5] = 0  # mostly zeros
    fits = []
    for data in (X, sparse.csr_matrix(X), sparse.csc_array(X)):
        fits.append(MLPClassifier(hidden_layer_sizes=(12,), solver=solver, max_iter=15,
                                  early_stopping=early_stopping, random_state=0).fit(data, y))
    for fitted in fits[1:]:
        np.testing.assert_array_equal(fitted.predict(sparse.coo_matrix(X)), fits[0].predict(X))
        np.testing.assert_allclose(fitted.predict_proba(sparse.csr_matrix(X)),
                                   fits[0].predict_proba(X), rtol=1e-4, atol=1e-5)
    regressor = MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, random_state=0)
    dense_fit = regressor.fit(X, y.astype(float)).predict(X)
    np.testing.assert_allclose(regressor.fit(sparse.csr_matrix(X), y.astype(float))
                               .predict(sparse.csr_matrix(X)), dense_fit, rtol=1e-4, atol=1e-5)
    incremental = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    incremental.partial_fit(sparse.csr_matrix(X), y, classes=np.unique(y))
    assert incremental.score(sparse.csr_matrix(X), y) == incremental.score(X, y)


# ---- threads, reproducibility, verbosity -------------------------------------------------

@stops_at_max_iter
def test_n_threads_is_restored_and_does_not_change_results():
    X, y = blobs(300, n_features=20)
    before = fastmlp.get_num_threads()
    one = MLPClassifier(hidden_layer_sizes=(64,), max_iter=3, n_threads=1,
                        random_state=0).fit(X, y)
    two = clone(one).set_params(n_threads=2).fit(X, y)
    assert fastmlp.get_num_threads() == before
    assert one.loss_curve_ == two.loss_curve_
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


@stops_at_max_iter
def test_random_state_reproducibility():
    X, y = blobs()
    a = MLPClassifier(max_iter=3, random_state=5).fit(X, y)
    b = MLPClassifier(max_iter=3, random_state=5).fit(X, y)
    c = MLPClassifier(max_iter=3, random_state=6).fit(X, y)
    assert a.loss_curve_ == b.loss_curve_ and a.loss_curve_ != c.loss_curve_
    np.random.seed(0)
    d = MLPClassifier(max_iter=3).fit(X, y)
    np.random.seed(0)
    e = MLPClassifier(max_iter=3).fit(X, y)  # None: NumPy's global RandomState, as sklearn
    assert d.loss_curve_ == e.loss_curve_


@stops_at_max_iter
def test_verbose_prints_sklearn_format(capsys):
    X, y = blobs(40)
    MLPClassifier(max_iter=2, verbose=True, early_stopping=True, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Iteration 1, loss = ") and lines[1].startswith("Validation score")


# ---- without scikit-learn --------------------------------------------------------------------

def test_without_sklearn_the_estimators_name_the_extra_and_fastmlp_works():
    code = textwrap.dedent("""
        import sys
        import fastmlp
        assert "sklearn" not in sys.modules, "import fastmlp loaded scikit-learn"
        sys.modules["sklearn"] = None  # any import of scikit-learn now fails
        import numpy as np
        for name in ("MLPClassifier", "MLPRegressor"):
            try:
                getattr(fastmlp, name)
            except ImportError as exc:
                assert 'pip install "fastmlp[sklearn]"' in str(exc), exc
            else:
                raise AssertionError(f"fastmlp.{name} loaded without scikit-learn")
        X = np.random.RandomState(0).normal(size=(60, 3)).astype(np.float32)
        model = fastmlp.MLP([3, 8, 2], seed=0)
        model.fit(X, (X[:, 0] > 0).astype(np.int64), epochs=2)
        assert model.predict(X).shape == (60,)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@stops_at_max_iter
def test_prediction_input_kinds_agree_and_bad_ones_get_sklearns_errors():
    """predict takes plain numeric arrays through a shortcut; every kind of input gives the
    prediction (and every bad one the error) that scikit-learn's validation gives."""
    X, y = make_blobs(n_samples=60, centers=3, n_features=4, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    want = clf.predict_proba(X)
    for variant in (np.asfortranarray(X), X[::-1][::-1].copy(), np.repeat(X, 2, axis=1)[:, ::2],
                    X.tolist()):
        np.testing.assert_array_equal(clf.predict_proba(variant), want)
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(clf.predict_proba(np.asfortranarray(X32)),
                                  clf.predict_proba(X32))
    Xi = np.round(X).astype(np.int64)
    np.testing.assert_array_equal(clf.predict_proba(Xi), clf.predict_proba(Xi.astype(float)))
    for bad, match in ((np.where(X == X[0, 0], np.nan, X), "NaN"),
                       (np.where(X == X[0, 0], np.inf, X), "infinity"),
                       (X[:, :3], "features"), (X[:0], "0 sample")):
        with pytest.raises(ValueError, match=match):
            clf.predict(bad)
    pd = pytest.importorskip("pandas")
    named = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(
        pd.DataFrame(X, columns=list("abcd")), y)
    with pytest.warns(UserWarning, match="feature names"):
        named.predict(X)


# ---- scikit-learn's behaviours at the edges: one class, divergence, lone class members -----

@stops_at_max_iter
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_single_class_is_fitted_as_sklearn_fits_it(dtype):
    """scikit-learn fits a single class: one logistic unit trained towards 0 (its
    LabelBinarizer's encoding), predict returns the class, predict_proba has 2 columns."""
    X = np.random.RandomState(0).rand(20, 3)
    y = np.array(["a"] * 20)
    ours = MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0,
                         dtype=dtype).fit(X, y)
    theirs = neural_network.MLPClassifier(hidden_layer_sizes=(5,), max_iter=50,
                                          random_state=0).fit(X, y)
    for attribute in ("classes_", "n_outputs_", "out_activation_", "n_layers_", "n_iter_"):
        assert np.array_equal(getattr(ours, attribute), getattr(theirs, attribute)), attribute
    np.testing.assert_array_equal(ours.predict(X), ["a"] * 20)
    assert ours.score(X, y) == theirs.score(X, y) == 1.0
    rtol = 1e-5  # Adam's epsilon sits elsewhere (see the docstring): ~1e-7 apart in float64
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=rtol)
    np.testing.assert_allclose(ours.predict_log_proba(X), theirs.predict_log_proba(X),
                               rtol=rtol)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert ours.predict_proba(X).shape == (20, 2)
    # Weighted, and with early stopping (each validation score is 1.0: the class is predicted)
    weighted = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(
        X, y, sample_weight=np.arange(20.0))
    np.testing.assert_array_equal(weighted.predict(X[:3]), ["a"] * 3)
    stopped = MLPClassifier(hidden_layer_sizes=(5,), max_iter=30, early_stopping=True,
                            random_state=0).fit(X, y)
    assert set(stopped.validation_scores_) == {1.0} and stopped.best_validation_score_ == 1.0
    with pytest.raises(ValueError, match="no such class"):
        MLPClassifier(class_weight={"a": 0}).fit(X, y)


def test_single_class_partial_fit_as_sklearn():
    X = np.random.RandomState(0).rand(20, 3)
    y = np.array(["a"] * 20)
    ours = MLPClassifier(hidden_layer_sizes=(5,), random_state=0).partial_fit(X, y, classes=["a"])
    theirs = neural_network.MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    theirs.partial_fit(X, y, classes=["a"])
    np.testing.assert_array_equal(ours.classes_, ["a"])
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-5)
    ours.partial_fit(X, y)
    np.testing.assert_array_equal(ours.predict(X), ["a"] * 20)
    with pytest.raises(ValueError, match="classes not in `self.classes_`"):
        ours.partial_fit(X, np.array(["b"] * 20))


@stops_at_max_iter
def test_early_stopping_refuses_a_lone_class_member_as_sklearn():
    """scikit-learn stratifies the early-stopping split of one output unit (up to 2 classes)
    and refuses a class with a single member, with StratifiedShuffleSplit's message; with more
    classes it does not stratify and fits (fastmlp stratifies, the lone member trains)."""
    rng = np.random.RandomState(0)
    lone = "The least populated classes in y have only 1 member, which is too few"
    # Named as scikit-learn names them: by the binarized value, 'True' for the second class.
    for y, label in (([0, 0, 0, 1], "True"), (["p"] * 20 + ["q"], "True"),
                     (["p"] + ["q"] * 20, "False")):
        X = rng.rand(len(y), 2)
        with pytest.raises(ValueError, match=lone):
            neural_network.MLPClassifier(early_stopping=True).fit(X, y)
        with pytest.raises(ValueError, match=rf"{lone}.*Classes with too few members are: "
                                             rf"\[{label!r}\]"):
            MLPClassifier(early_stopping=True).fit(X, y)
        # No split, no refusal: given validation data, or no early stopping.
        MLPClassifier(early_stopping=True, max_iter=2).fit(X, y, X_val=X, y_val=y)
        MLPClassifier(max_iter=2).fit(X, y)
    y = np.array([0] * 30 + [1] * 30 + [2])
    X = rng.rand(len(y), 2)
    neural_network.MLPClassifier(early_stopping=True, max_iter=2).fit(X, y)
    clf = MLPClassifier(early_stopping=True, max_iter=2).fit(X, y)
    assert all(s * 7 == round(s * 7) for s in clf.validation_scores_)  # 7 held out


DIVERGING = dict(hidden_layer_sizes=100, activation="identity", solver="sgd",
                 learning_rate_init=1, max_iter=20, early_stopping=True, random_state=0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scikit-learn's overflows
def test_diverging_fit_with_early_stopping_keeps_the_best_weights_as_sklearn():
    """scikit-learn's test_mlp_diverging_loss: with early stopping a diverging fit does not
    raise; the diverged epoch's validation score is NaN and the best weights are restored.
    (scikit-learn then runs its remaining epochs on NaN weights, each scoring NaN, to max_iter;
    fastmlp's engine refuses the non-finite step and stops there, warning.)"""
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    theirs = neural_network.MLPRegressor(**DIVERGING)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        theirs.fit(X, y)
    ours = MLPRegressor(**DIVERGING, dtype="float64")
    with pytest.warns(ConvergenceWarning, match="non-finite parameter weights at iteration 6"):
        ours.fit(X, y)
    assert str(ours.validation_scores_[-1]) == "nan"
    assert isinstance(ours.validation_scores_[-1], float)
    assert str(ours.loss_) == str(ours.loss_curve_[-1]) == "nan"
    assert len(ours.loss_curve_) == len(ours.validation_scores_) == ours.n_iter_ == 6
    assert ours.t_ == 6 * 135
    # Epoch by epoch as scikit-learn's until the divergence (its 5th epoch scores NaN too).
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_[:6],
                               rtol=1e-9)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_,
                                                        rel=1e-9)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), rel=1e-9)
    # float32 (the default) diverges one epoch sooner, from the same best epoch.
    with pytest.warns(ConvergenceWarning, match="non-finite parameter weights at iteration 4"):
        single = MLPRegressor(**DIVERGING).fit(X, y)
    np.testing.assert_allclose(single.predict(X), theirs.predict(X), rtol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_diverging_fit_before_any_score_restores_the_initial_weights_as_sklearn():
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    params = {**DIVERGING, "learning_rate_init": 1e6, "batch_size": 10}
    theirs = neural_network.MLPRegressor(**params).fit(X * 1e6, y)
    ours = MLPRegressor(**params, dtype="float64").fit(X * 1e6, y)
    assert ours.n_iter_ == 1 and np.isnan(ours.validation_scores_).all()
    assert ours.best_validation_score_ == theirs.best_validation_score_ == -np.inf
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_diverging_fit_without_early_stopping_raises_as_sklearn():
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    params = {**DIVERGING, "early_stopping": False}
    for Estimator in (neural_network.MLPRegressor, MLPRegressor):
        with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
            Estimator(**params).fit(X, y)


# ---- solver="lbfgs" ------------------------------------------------------------------------

LBFGS_PARAMS = dict(hidden_layer_sizes=(7, 6), activation="tanh", solver="lbfgs", alpha=0.01,
                    random_state=3)


def problem_data(problem, n=60):
    ours, _, k = SAME_TRAJECTORY[problem]
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n, 5))
    if ours is MLPClassifier:
        return X, rng.randint(0, k, size=n)
    y = X @ rng.normal(size=(5, k)) + 0.1 * rng.normal(size=(n, k))
    return X, (y[:, 0] if k == 1 else y)


@stops_at_max_iter
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("problem", SAME_TRAJECTORY)
def test_lbfgs_follows_sklearn_from_the_same_initial_weights(problem, weighted, activation):
    """Same initial weights, scikit-learn's packing, objective and gradient (multi-output:
    the loss divided by outputs, the gradient of their sum; the log-loss clipped as its is:
    relu's line search meets a trial point where it matters): SciPy takes the same steps.
    (Over hundreds of iterations last-bit differences grow, as they do between two runs of
    scikit-learn on data perturbed by 1e-15.)"""
    if weighted and tuple(int(v) for v in sklearn.__version__.split(".")[:2]) < (1, 7):
        pytest.skip("scikit-learn's MLP takes sample_weight from 1.7")
    ours, theirs, _ = SAME_TRAJECTORY[problem]
    X, y = problem_data(problem)
    fit_params = {}
    if weighted:
        fit_params["sample_weight"] = np.random.RandomState(1).uniform(0.2, 3, size=len(y))
    params = {**LBFGS_PARAMS, "activation": activation, "max_iter": 25}
    mine = ours(dtype="float64", **params).fit(X, y, **fit_params)
    reference = theirs(**params).fit(X, y, **fit_params)
    assert mine.n_iter_ == reference.n_iter_ == 25
    np.testing.assert_allclose(mine.loss_, reference.loss_, rtol=1e-9)
    for a, b in zip(mine.coefs_ + mine.intercepts_, reference.coefs_ + reference.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)
    for name in ("loss_curve_", "best_loss_", "validation_scores_"):  # as scikit-learn's
        assert not hasattr(mine, name) and not hasattr(reference, name)
    assert mine.t_ == reference.t_ == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [2, 4])
def test_clipped_log_loss_is_sklearns(k, dtype):
    from fastmlp._estimator_data import clipped_log_loss
    from sklearn.neural_network._base import ACTIVATIONS, LOSS_FUNCTIONS
    rng = np.random.RandomState(0)
    logits = (rng.normal(size=(50, 1 if k == 2 else k)) * 40).astype(dtype)  # many clipped
    targets = rng.randint(0, k, size=50)
    probs = logits.copy()
    ACTIVATIONS["logistic" if k == 2 else "softmax"](probs)
    onehot = (targets[:, None] == np.arange(k)).astype(dtype)
    onehot = onehot[:, 1:] if k == 2 else onehot
    expected = LOSS_FUNCTIONS["binary_log_loss" if k == 2 else "log_loss"](onehot, probs)
    np.testing.assert_allclose(clipped_log_loss(logits, targets), expected,
                               rtol=1e-12 if dtype == np.float64 else 1e-6)


@stops_at_max_iter  # both converge here (~45 iterations); float32's line search could end early
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lbfgs_digits_accuracy_matches_sklearn(dtype):
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25,
                                                        stratify=y, random_state=0)
    params = dict(hidden_layer_sizes=(100,), solver="lbfgs", random_state=0)
    ours = MLPClassifier(dtype=dtype, **params).fit(X_train, y_train).score(X_test, y_test)
    theirs = neural_network.MLPClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
    assert theirs > 0.95
    assert abs(ours - theirs) <= 0.015


def test_lbfgs_max_iter_and_max_fun_stop_with_sklearns_warning():
    X, y = problem_data("multiclass")
    with pytest.warns(ConvergenceWarning, match=r"after 3 iteration\(s\)") as caught:
        clf = MLPClassifier(max_iter=3, dtype="float64", **LBFGS_PARAMS).fit(X, y)
    assert clf.n_iter_ == 3 and caught[0].filename == __file__
    with pytest.warns(ConvergenceWarning, match="EVALUATIONS EXCEEDS LIMIT"):
        clf = MLPClassifier(max_fun=6, dtype="float64", **LBFGS_PARAMS).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="EVALUATIONS EXCEEDS LIMIT"):
        reference = neural_network.MLPClassifier(max_fun=6, **LBFGS_PARAMS).fit(X, y)
    assert clf.n_iter_ == reference.n_iter_ <= 6
    np.testing.assert_allclose(clf.loss_, reference.loss_, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        params = {**LBFGS_PARAMS, "hidden_layer_sizes": (), "alpha": 1.0}  # convex
        reg = MLPRegressor(tol=1e-6, dtype="float64", **params).fit(*problem_data("regression"))
    assert 0 < reg.n_iter_ < 200


@stops_at_max_iter
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_lbfgs_has_no_partial_fit_and_hands_over_to_the_stochastic_solvers(Estimator):
    """scikit-learn's rule (its classifier applies it; its regressor's check is never called
    and runs a whole L-BFGS fit instead). A fitted lbfgs model can continue with sgd/adam."""
    X, y = problem_data("multiclass" if Estimator is MLPClassifier else "regression")
    est = Estimator(max_iter=10, **LBFGS_PARAMS)
    assert not hasattr(est, "partial_fit")
    assert not hasattr(neural_network.MLPClassifier(solver="lbfgs"), "partial_fit")
    with pytest.raises(AttributeError, match="partial_fit") as raised:
        est.partial_fit(X, y)
    assert "not stochastic" in str(raised.value.__cause__)
    est.fit(X, y)
    coefs = [c.copy() for c in est.coefs_]
    est.set_params(solver="sgd", warm_start=True).fit(X, y)
    assert len(est.loss_curve_) == est.n_iter_ == 10
    assert not np.array_equal(coefs[0], est.coefs_[0])
    est.partial_fit(X, y)
    assert len(est.loss_curve_) == 11


@stops_at_max_iter
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_lbfgs_integer_sample_weight_equals_repeated_rows(Estimator):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 4))
    y = rng.randint(0, 3, size=30) if Estimator is MLPClassifier else rng.normal(size=30)
    w = rng.randint(0, 4, size=30)
    params = dict(hidden_layer_sizes=(5,), solver="lbfgs", alpha=0.1, max_iter=20,
                  random_state=0, dtype="float64")
    weighted = Estimator(**params).fit(X, y, sample_weight=w)
    repeated = Estimator(**params).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    assert weighted.n_iter_ == repeated.n_iter_
    np.testing.assert_allclose(weighted.loss_, repeated.loss_, rtol=1e-9)
    for a, b in zip(weighted.coefs_, repeated.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


@stops_at_max_iter
def test_lbfgs_ignores_early_stopping_and_batch_size_and_refuses_validation_data():
    X, y = problem_data("binary")
    plain = MLPClassifier(max_iter=10, dtype="float64", **LBFGS_PARAMS).fit(X, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = MLPClassifier(max_iter=10, dtype="float64", early_stopping=True,
                              batch_size=1000, shuffle=False, **LBFGS_PARAMS).fit(X, y)
    assert [w.category for w in caught] == [ConvergenceWarning]  # none about batch_size
    for a, b in zip(plain.coefs_, other.coefs_):
        np.testing.assert_array_equal(a, b)
    assert not hasattr(other, "validation_scores_")
    with pytest.raises(ValueError, match="no epochs"):
        MLPClassifier(**LBFGS_PARAMS).fit(X, y, X_val=X, y_val=y)


def test_lbfgs_ctrl_c_keeps_the_best_weights_evaluated_with_a_warning(monkeypatch):
    X, y = problem_data("multiclass")
    params = dict(max_iter=8, dtype="float64", **LBFGS_PARAMS)
    with pytest.warns(ConvergenceWarning):
        eight = MLPClassifier(**params).fit(X, y)
    loss_and_grad, calls = fastmlp.MLP.loss_and_grad, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > eight.n_iter_ + 5:  # well past the 8 iterations
            raise KeyboardInterrupt
        return loss_and_grad(self, *args, **kwargs)

    monkeypatch.setattr(fastmlp.MLP, "loss_and_grad", interrupted)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf = MLPClassifier(**{**params, "max_iter": 200}).fit(X, y)
    assert clf.n_iter_ >= 8 and clf.loss_ <= eight.loss_
    assert clf.predict(X).shape == (len(X),)
    model = fastmlp.MLP([5, 7, 6, 3], activation="tanh", dtype="float64")
    model.weights = [c.T for c in clf.coefs_]
    model.biases = clf.intercepts_
    np.testing.assert_allclose(model.loss(X, y, alpha=0.01), clf.loss_, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (700, 97), (256, 300)])
def test_native_uniform_draws_are_numpys(dtype, shape):
    """The core's MT19937 draws (used for large layers) are RandomState.uniform's bit for bit,
    written transposed, and leave the generator where NumPy's would: the next draw agrees."""
    from fastmlp import _core
    from fastmlp._estimator_data import uniform_transposed_into
    rng, reference = np.random.RandomState(7), np.random.RandomState(7)
    rng.uniform(size=11), reference.uniform(size=11)  # start mid-block
    state = rng.get_state(legacy=False)
    key = np.array(state["state"]["key"], dtype=np.uint32)
    out = np.empty(shape[::-1], dtype)
    pos = _core.legacy_uniform_transposed(key, int(state["state"]["pos"]), out, -0.25, 0.5)
    expected = reference.uniform(-0.25, 0.5, shape).T.astype(dtype)
    np.testing.assert_array_equal(out, expected)
    state["state"]["key"], state["state"]["pos"] = key, pos
    rng.set_state(state)
    assert rng.uniform() == reference.uniform()
    # and through the estimators' helper, whichever path the size takes
    out2 = np.empty(shape[::-1], dtype)
    uniform_transposed_into(out2, rng, -1.0, 1.0)
    np.testing.assert_array_equal(out2, reference.uniform(-1.0, 1.0, shape).T.astype(dtype))
    assert rng.uniform() == reference.uniform()


@stops_at_max_iter
def test_sparse_updates_reaches_the_engine():
    sparse = pytest.importorskip("scipy.sparse")
    X, y = blobs(64, n_features=10)
    X[X < 0.5] = 0
    X[:, 3] = 0
    X[0, 3] = 1.0  # column 3 is touched by one row only
    fitted = {}
    for mode in ("exact", "lazy"):
        clf = MLPClassifier(hidden_layer_sizes=(6,), activation="tanh", solver="adam",
                            batch_size=8, max_iter=3, shuffle=False, random_state=0,
                            sparse_updates=mode)
        fitted[mode] = clf.fit(sparse.csr_matrix(X), y).coefs_[0][3].copy()
    # Lazy Adam moves row 3 of coefs_ at the one step that touches it; exact Adam goes on.
    assert not np.allclose(fitted["exact"], fitted["lazy"])
    with pytest.raises(ValueError, match="sparse_updates"):
        MLPClassifier(sparse_updates="sometimes").fit(X, y)
