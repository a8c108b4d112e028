"""The multilabel output (one sigmoid + binary cross-entropy per label) and the Poisson output
(exp + half Poisson deviance): the fused kernels (src/cpp/loss.*) against float64 NumPy
references in float32 and float64, their gradients and the network's against central
differences, MLP(output=...), and the estimators against scikit-learn from the same initial
weights.

Legend: N samples, K outputs (labels, or Poisson targets); z the raw outputs (logits).
"""

import warnings

import numpy as np
import pytest
from scipy.special import expit, xlogy

from fastmlp import MLP, _core
from _helpers import DTYPES, F64, central_differences, eps, rng_for

sklearn = pytest.importorskip("sklearn")
from sklearn import neural_network  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from fastmlp import MLPClassifier, MLPRegressor  # noqa: E402


def ref_bce_multi(z, y, w=None):
    z, y = z.astype(F64), y.astype(F64)
    w = np.ones(len(z)) if w is None else w.astype(F64)
    losses = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    return (float(np.sum(w * losses) / w.sum()),
            (expit(z) - y) * (w / w.sum())[:, None])


def ref_poisson(z, y, w=None):
    z, y = z.astype(F64), y.astype(F64)
    w = np.ones(len(z)) if w is None else w.astype(F64)
    mu = np.exp(z)
    losses = (xlogy(y, y / mu) - y + mu).sum(axis=1)  # scikit-learn's poisson_loss, per row
    return float(np.sum(w * losses) / w.sum()), (mu - y) * (w / w.sum())[:, None]


SHAPES = [(1, 1), (1, 2), (7, 3), (33, 5), (256, 17)]

# ---- the kernels -----------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("n, k", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_multi_matches_reference(dtype, n, k, weighted):
    rng = rng_for("bce_multi", dtype, n, k, weighted)
    z = (3 * rng.standard_normal((n, k))).astype(dtype)
    y = rng.integers(0, 2, (n, k)).astype(dtype)
    w = rng.uniform(0, 2, n).astype(dtype) if weighted else None
    loss, dz = _core.sigmoid_bce_multi(z, y, w)
    assert isinstance(loss, float) and dz.dtype == dtype and dz.shape == (n, k)
    ref_loss, ref_d = ref_bce_multi(z, y, w)
    assert abs(loss - ref_loss) <= 8 * k * eps(dtype) * (1 + np.abs(z).max())
    np.testing.assert_allclose(dz, ref_d, rtol=0, atol=8 * eps(dtype) / n * (2 if weighted else 1))


def test_sigmoid_bce_multi_is_exact_and_finite_at_extreme_logits():
    z = np.array([[1e4, -1e4, 1e4, -1e4, 0.0]])
    y = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
    loss, dz = _core.sigmoid_bce_multi(z, y)
    assert loss == 2e4 + np.log(2.0)
    np.testing.assert_array_equal(dz, [[0.0, 0.0, 1.0, -1.0, -0.5]])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("n, k", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_deviance_matches_reference(dtype, n, k, weighted):
    rng = rng_for("poisson", dtype, n, k, weighted)
    z = rng.standard_normal((n, k)).astype(dtype)
    y = rng.poisson(np.exp(z.astype(F64))).astype(dtype)
    y[0, 0] = 0  # y = 0: 0 log 0 = 0
    w = rng.uniform(0, 2, n).astype(dtype) if weighted else None
    loss, dz = _core.poisson_deviance(z, y, w)
    assert isinstance(loss, float) and dz.dtype == dtype and dz.shape == (n, k)
    ref_loss, ref_d = ref_poisson(z, y, w)
    scale = 1 + np.exp(np.abs(z.astype(F64))).max() + y.max() * (1 + np.log1p(y.max()))
    assert abs(loss - ref_loss) <= 16 * k * eps(dtype) * scale
    np.testing.assert_allclose(dz, ref_d, rtol=0, atol=8 * eps(dtype) * scale / n * 2)


def test_poisson_deviance_is_computed_from_the_raw_output():
    # μ = exp(-800) underflows to 0 in float64: through log μ the loss would be infinite.
    z = np.array([[-800.0, 0.0]])
    y = np.array([[0.0, 1.0]])
    loss, dz = _core.poisson_deviance(z, y)
    assert loss == 0.0  # y = 0: loss μ ≈ 0; y = μ = 1: 0
    np.testing.assert_array_equal(dz, [[0.0, 0.0]])
    loss, _ = _core.poisson_deviance(np.array([[-800.0]]), np.array([[2.0]]))
    assert loss == pytest.approx(2 * np.log(2) - 2 + 1600)


@pytest.mark.parametrize("kernel", ["sigmoid_bce_multi", "poisson_deviance"])
def test_kernel_gradients_match_central_differences(kernel):
    rng = rng_for("fd", kernel)
    z = rng.standard_normal((6, 4))
    y = (rng.integers(0, 2, (6, 4)) if kernel == "sigmoid_bce_multi"
         else rng.poisson(2.0, (6, 4))).astype(F64)
    w = rng.uniform(0.5, 2, 6)
    f = getattr(_core, kernel)
    for weights in (None, w):
        _, dz = f(z, y, weights)
        fd = central_differences(lambda: f(z, y, weights)[0], z, h=1e-5)
        np.testing.assert_allclose(dz, fd, rtol=1e-6, atol=1e-9)


def test_kernels_refuse_bad_targets():
    z = np.zeros((2, 2))
    with pytest.raises(ValueError, match="not 0 or 1"):
        _core.sigmoid_bce_multi(z, np.array([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="negative"):
        _core.poisson_deviance(z, np.array([[0.0, 1.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="negative or not finite"):
        _core.poisson_deviance(z, np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="target"):
        _core.poisson_deviance(z, np.zeros((2, 3)))


# ---- the network and MLP ---------------------------------------------------------------------

def _data(output, n=40, k=3, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, 5))
    if output == "multilabel":
        y = (X[:, :k] + 0.5 * rng.normal(size=(n, k)) > 0).astype(int)
    else:
        y = rng.poisson(np.exp(0.5 * X[:, :k]))
    return X, y


@pytest.mark.parametrize("output", ["multilabel", "poisson"])
def test_network_gradients_match_central_differences(output):
    X, y = _data(output)
    model = MLP([5, 6, 3], activation="tanh", output=output, dtype="float64", seed=1)
    w = np.random.RandomState(2).uniform(0.5, 2, len(X))
    loss, gw, gb = model.loss_and_grad(X, y, sample_weight=w, alpha=0.1)
    assert loss == pytest.approx(model.loss(X, y, sample_weight=w, alpha=0.1), rel=1e-12)
    for grads, params in ((gw, model.weights), (gb, model.biases)):
        for g, p in zip(grads, params):
            fd = central_differences(lambda: model.loss(X, y, sample_weight=w, alpha=0.1), p,
                                     h=1e-6)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_multilabel_predictions_and_training(dtype):
    X, y = _data("multilabel", n=200)
    model = MLP([5, 16, 3], output="multilabel", dtype=dtype, seed=0)
    assert model.is_classifier and model.n_classes == 3
    history = model.fit(X, y, epochs=40, batch_size=20, seed=0, validation_data=(X, y))
    assert history.loss[-1] < 0.6 * history.loss[0]
    z = model.forward(X)
    proba = model.predict_proba(X)
    assert proba.shape == (200, 3) and proba.dtype == dtype
    np.testing.assert_allclose(proba, expit(z.astype(F64)), rtol=4 * eps(dtype), atol=0)
    pred = model.predict(X)
    assert pred.shape == (200, 3) and pred.dtype == np.int64
    np.testing.assert_array_equal(pred, (z > 0).astype(int))
    assert model.score(X, y) == np.mean(np.all(pred == y, axis=1)) == history.val_accuracy[-1]
    assert model.loss(X, y) == pytest.approx(ref_bce_multi(z, y.astype(dtype))[0],
                                             rel=100 * eps(dtype))
    with pytest.raises(ValueError, match="indicator matrix of 0 and 1"):
        model.loss(X, 2 * y)
    with pytest.raises(ValueError, match="shape"):
        model.loss(X, y[:, :2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_poisson_predictions_and_training(dtype):
    X, y = _data("poisson", n=200, k=2)
    model = MLP([5, 16, 2], output="poisson", dtype=dtype, seed=0)
    assert not model.is_classifier
    history = model.fit(X, y, epochs=40, batch_size=20, seed=0)
    assert history.loss[-1] < history.loss[0]
    pred = model.predict(X)
    assert pred.shape == (200, 2) and pred.dtype == dtype
    np.testing.assert_allclose(pred, np.exp(model.forward(X).astype(F64)), rtol=4 * eps(dtype))
    assert model.loss(X, y) == pytest.approx(ref_poisson(model.forward(X), y)[0],
                                             rel=100 * eps(dtype))
    with pytest.raises(ValueError, match="negative"):
        model.loss(X, -y)
    with pytest.raises(TypeError, match="classifier"):
        model.predict_proba(X)


# ---- the estimators against scikit-learn -------------------------------------------------------

def _problem(kind):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 5))
    if kind == "multilabel":
        y = (X[:, :3] @ rng.normal(size=(3, 3)) + 0.5 * rng.normal(size=(60, 3)) > 0)
        return X, y.astype(int), MLPClassifier, neural_network.MLPClassifier, {}
    y = rng.poisson(np.exp(0.4 * X[:, :2]))
    return X, y, MLPRegressor, neural_network.MLPRegressor, {"loss": "poisson"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("batch_size", [60, 20], ids=["full-batch", "3-batches"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["multilabel", "poisson"])
def test_loss_curve_equals_sklearn_from_the_same_initial_weights(kind, solver, batch_size):
    X, y, ours, theirs, extra = _problem(kind)
    params = dict(hidden_layer_sizes=(7, 6), activation="tanh", solver=solver, alpha=0.01,
                  batch_size=batch_size, shuffle=False, max_iter=15, random_state=3, tol=0.0,
                  learning_rate_init=0.02, momentum=0.8, nesterovs_momentum=True,
                  epsilon=1e-20, **extra)  # Adam's eps: see test_estimators.py
    mine = ours(dtype="float64", **params).fit(X, y)
    reference = theirs(**params).fit(X, y)
    np.testing.assert_allclose(mine.loss_curve_, reference.loss_curve_, rtol=1e-9)
    for a, b in zip(mine.coefs_ + mine.intercepts_, reference.coefs_ + reference.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert mine.out_activation_ == reference.out_activation_
    assert mine.n_outputs_ == reference.n_outputs_ == y.shape[1]
    _same_predictions(mine, reference, X, y, kind)


def _same_predictions(mine, reference, X, y, kind):
    if kind == "multilabel":
        np.testing.assert_array_equal(mine.classes_, reference.classes_)
        np.testing.assert_allclose(mine.predict_proba(X), reference.predict_proba(X),
                                   rtol=0, atol=1e-9)
        pred = mine.predict(X)
        assert pred.shape == y.shape and pred.dtype == reference.predict(X).dtype
        np.testing.assert_array_equal(pred, reference.predict(X))
        # (ours from the logits: where p rounds to 1, log p is -1e-15 rather than 0)
        np.testing.assert_allclose(mine.predict_log_proba(X), reference.predict_log_proba(X),
                                   rtol=1e-9, atol=1e-13)
    else:
        np.testing.assert_allclose(mine.predict(X), reference.predict(X), rtol=1e-9)
    assert mine.score(X, y) == pytest.approx(reference.score(X, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", ["multilabel", "poisson"])
def test_lbfgs_equals_sklearn(kind):
    X, y, ours, theirs, extra = _problem(kind)
    params = dict(hidden_layer_sizes=(7,), solver="lbfgs", max_iter=30, random_state=3,
                  alpha=0.01, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mine = ours(dtype="float64", **params).fit(X, y)
        reference = theirs(**params).fit(X, y)
    assert mine.n_iter_ == reference.n_iter_
    assert mine.loss_ == pytest.approx(reference.loss_, rel=1e-9)
    _same_predictions(mine, reference, X, y, kind)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_multilabel_classifier_float32_partial_fit_warm_start_and_validation():
    X, y, _, _, _ = _problem("multilabel")
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 3
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.predict_proba(X).shape == (60, 3) and clf.predict_proba(X).dtype == X.dtype
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float32
    assert clf.predict(X).shape == (60, 3)
    assert clf.__sklearn_tags__().classifier_tags.multi_label
    clf.set_params(warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="labels"):
        clf.fit(X, y[:, :2])
    stopper = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, early_stopping=True,
                            random_state=0).fit(X, y)
    assert len(stopper.validation_scores_) == stopper.n_iter_
    assert all(0 <= s <= 1 for s in stopper.validation_scores_)
    inc = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    inc.partial_fit(X, y, classes=[0, 1, 2])
    inc.partial_fit(X, y)
    assert inc.n_iter_ == 1 and inc.predict(X).shape == (60, 3)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="balanced").fit(X, y)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_poisson_regressor_validation_and_refusals():
    X, y, _, _, _ = _problem("poisson")
    reg = MLPRegressor(loss="poisson", hidden_layer_sizes=(8,), max_iter=5,
                       random_state=0).fit(X, y[:, 0])
    assert reg.out_activation_ == "exp" and reg.predict(X).shape == (60,)
    assert (reg.predict(X) > 0).all() and reg.predict(X).dtype == X.dtype
    assert reg.predict(X.astype(np.float32)).dtype == np.float32
    bad = y[:, 0].astype(float)
    bad[3] = -1.0
    with pytest.raises(ValueError, match="negative which is not allowed for Poisson"):
        MLPRegressor(loss="poisson").fit(X, bad)
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="absolute_error").fit(X, y[:, 0])
    with pytest.raises(TypeError):
        MLPClassifier(loss="poisson")  # the classifier has no loss parameter
    reg = MLPRegressor(loss="poisson", hidden_layer_sizes=(8,), max_iter=5,
                       random_state=0).fit(X, y, X_val=X, y_val=y)
    assert len(reg.validation_loss_curve_) == reg.n_iter_
    assert reg.validation_scores_[-1] == pytest.approx(reg.score(X, y), rel=1e-5)
