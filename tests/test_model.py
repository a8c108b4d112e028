"""The MLP model: construction, parameters, forward, gradients (vs finite differences),
training semantics and the lecture's non-linearly-separable data set."""

import math

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, SGD, Adam, AdamW

from _helpers import misaligned, set_entry


def numpy_forward(model, X):
    """Plain NumPy forward in float64: h = relu(h Wᵀ + b) for hidden layers, logits last."""
    h = np.asarray(X, dtype=np.float64)
    for i, (W, b) in enumerate(zip(model.weights, model.biases)):
        h = h @ W.astype(np.float64).T + b
        if i < len(model.weights) - 1 and model.activation == "relu":
            h = np.maximum(h, 0)
    return h


def spirals(n_per_class=100, n_classes=3, seed=0):
    """Interleaved spirals (CS231n): no set of lines separates the classes."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(n_classes):
        r = np.linspace(0.0, 1.0, n_per_class)
        t = np.linspace(k * 4.0, (k + 1) * 4.0, n_per_class) + rng.normal(0, 0.2, n_per_class)
        X.append(np.c_[r * np.sin(t), r * np.cos(t)])
        y.append(np.full(n_per_class, k))
    return np.concatenate(X), np.concatenate(y)


# ---- construction ---------------------------------------------------------------------------

def test_lecture_network_layout():
    model = MLP([2, 3, 3], seed=0)
    assert [w.shape for w in model.weights] == [(3, 2), (3, 3)]
    assert [b.shape for b in model.biases] == [(3,), (3,)]
    assert all(w.dtype == np.float32 for w in model.weights)
    assert model.n_parameters == 3 * 2 + 3 + 3 * 3 + 3


def test_init_is_he_normal_and_reproducible():
    a, b, c = MLP([400, 300, 5], seed=1), MLP([400, 300, 5], seed=1), MLP([400, 300, 5], seed=2)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.weights[0], c.weights[0])
    w = a.weights[0].astype(np.float64)
    assert abs(w.mean()) < 0.01
    assert w.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert all(not b.any() for b in a.biases)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layer_sizes=[3]), ValueError, "at least 2"),
    (dict(layer_sizes=[3, 0, 2]), ValueError, "positive"),
    (dict(layer_sizes=[3, -1, 2]), ValueError, "positive"),
    (dict(layer_sizes=[3, 2.5, 2]), TypeError, "integer"),
    (dict(layer_sizes=[3, True, 2]), TypeError, "integer"),
    (dict(layer_sizes=5), TypeError, "sequence"),
    (dict(layer_sizes=[3, 2], activation="tanhh"), ValueError, "activation"),
    (dict(layer_sizes=[3, 2], output="softplus"), ValueError, "output"),
    (dict(layer_sizes=[3, 2], output="sigmoid"), ValueError, "final layer size of 1"),
    (dict(layer_sizes=[3, 1]), ValueError, "at least 2 classes"),
    (dict(layer_sizes=[3, 2], dtype="float16"), ValueError, "dtype"),
    (dict(layer_sizes=[3, 2], dtype="int32"), ValueError, "dtype"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        MLP(**kwargs)


@pytest.mark.parametrize("dtype", ["garbage", "float32 ", None, True, 3, [1], {"a": 1}, object,
                                   "int32", np.int64, np.float16, np.dtype("complex64"), ">f4",
                                   "S4"])
def test_every_bad_dtype_spelling_is_a_value_error(dtype):
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        MLP([3, 2], dtype=dtype)


@pytest.mark.parametrize("dtype, expected", [("f4", np.float32), (np.float32, np.float32),
                                             (np.dtype("float64"), np.float64), (float, np.float64),
                                             ("double", np.float64)])
def test_good_dtype_spellings(dtype, expected):
    assert MLP([3, 2], dtype=dtype).dtype == np.dtype(expected)


@pytest.mark.parametrize("value", [1e39, 1e300, -1e300])
def test_float64_values_beyond_float32_are_reported_as_out_of_range(value):
    model = MLP([3, 2], seed=0)  # float32
    X = np.zeros((4, 3))
    X[2, 1] = value
    y = np.array([0, 1, 0, 1])
    message = r"X holds values outside the float32 range \(first at row 2, column 1"
    with pytest.raises(ValueError, match=message):
        model.predict(X)
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, epochs=1)
    with pytest.raises(ValueError, match="validation " + message):
        model.fit(np.zeros((4, 3)), y, epochs=1, validation_data=(X, y))
    w = np.ones(4)
    w[3] = abs(value)
    with pytest.raises(ValueError, match=r"sample_weight holds values outside the float32 range "
                                         r"\(first at index 3"):
        model.fit(np.zeros((4, 3)), y, epochs=1, sample_weight=w)
    regressor = MLP([3, 1], output="identity", seed=0)
    t = np.zeros(4)
    t[1] = value
    with pytest.raises(ValueError, match=r"y holds values outside the float32 range "
                                         r"\(first at row 1"):
        regressor.fit(np.zeros((4, 3)), t, epochs=1)
    # a NaN before the overflowing value is reported as NaN; a float64 model takes the value
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.predict(X)
    X[0, 0] = 0.0
    MLP([3, 2], dtype="float64", seed=0).predict(X)


def test_a_sum_of_sample_weights_that_overflows_is_refused():
    from fastmlp import ops
    X = np.random.default_rng(0).normal(size=(4, 3))
    y = np.array([0, 1, 0, 1])
    w = np.full(4, 1e308)
    model = MLP([3, 2], dtype="float64", seed=0)
    for call in (lambda: model.fit(X, y, sample_weight=w, epochs=1),
                 lambda: model.loss(X, y, sample_weight=w),
                 lambda: ops.softmax_nll(X[:, :2], y, sample_weight=w),
                 lambda: ops.sigmoid_bce(X[:, :1], y, sample_weight=w),
                 lambda: ops.squared_error(X, X * 2, sample_weight=w)):
        with pytest.raises(ValueError, match="sum of sample_weight overflows"):
            call()


def test_huge_weights_whose_sum_is_finite_give_the_weighted_mean():
    """Σw finite but Σ w·loss beyond the double range, and float32 weights whose Σw has no
    float32 reciprocal: the loss and gradient equal those of the same weights scaled down."""
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    model = MLP([3, 4, 2], dtype="float64", seed=0)
    small = model.loss_and_grad(X, y, sample_weight=np.full(20, 1.0))
    huge = model.loss_and_grad(X, y, sample_weight=np.full(20, 8e306))  # Σw = 1.6e308
    assert huge[0] == pytest.approx(small[0], rel=1e-12)
    np.testing.assert_allclose(huge[1][0], small[1][0], rtol=1e-12)
    model32 = MLP([3, 4, 2], seed=0)
    small = model32.loss_and_grad(X, y, sample_weight=np.full(20, 1.0, np.float32))
    huge = model32.loss_and_grad(X, y, sample_weight=np.full(20, 3e38, np.float32))
    assert huge[0] == pytest.approx(small[0], rel=1e-5)
    np.testing.assert_allclose(huge[1][0], small[1][0], rtol=1e-5)
    history = model.fit(X, y, sample_weight=np.full(20, 8e306), epochs=2)
    assert np.isfinite(history.loss).all()


def test_parameter_assignment_is_validated():
    model = MLP([4, 3, 2], dtype="float64", seed=0)
    new = [np.ones((3, 4)), np.ones((2, 3))]
    model.weights = new
    new[0][0, 0] = 5.0  # the model holds a copy
    assert model.weights[0][0, 0] == 1.0
    model.weights[1] = np.full((2, 3), 2, dtype=np.int32)  # converted to the model dtype
    assert model.weights[1].dtype == np.float64 and model.weights[1][0, 0] == 2.0
    with pytest.raises(ValueError, match=r"weights\[0\] has shape \(4, 3\), expected \(3, 4\)"):
        model.weights[0] = np.ones((4, 3))
    with pytest.raises(ValueError, match="needs 2 arrays"):
        model.weights = [np.ones((3, 4))]
    with pytest.raises(ValueError, match="NaN"):
        model.biases = [np.array([0, np.nan, 0]), np.zeros(2)]
    with pytest.raises(TypeError, match="real numbers"):
        model.biases[1] = np.array(["a", "b"])
    with pytest.raises(TypeError, match="fixed"):
        model.weights.append(np.ones((2, 2)))
    with pytest.raises(TypeError, match="fixed"):
        del model.biases[0]
    assert model.weights[0].shape == (3, 4)  # failed assignments changed nothing


# ---- inference ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-4), ("float64", 1e-12)])
@pytest.mark.parametrize("sizes", [[2, 3, 3], [5, 7], [13, 17, 11, 4]])
def test_forward_matches_numpy(sizes, dtype, rtol):
    model = MLP(sizes, dtype=dtype, seed=3)
    model.biases = [np.random.default_rng(1).normal(size=b.shape) for b in model.biases]
    X = np.random.default_rng(2).normal(size=(19, sizes[0]))
    logits = model.forward(X)
    assert logits.dtype == np.dtype(dtype) and logits.shape == (19, sizes[-1])
    np.testing.assert_allclose(logits, numpy_forward(model, X), rtol=rtol, atol=rtol)


def test_predict_proba_predict_score_softmax():
    model = MLP([6, 8, 4], seed=0)
    X = np.random.default_rng(0).normal(size=(30, 6))
    logits = numpy_forward(model, X)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(model.predict(X), logits.argmax(1))
    y = logits.argmax(1)
    y[:10] = (y[:10] + 1) % 4
    assert model.score(X, y) == pytest.approx(20 / 30)


@pytest.mark.parametrize("dtype, precision", [("float32", "float32"), ("float64", "float32"),
                                              ("float32", "bfloat16")])
def test_predict_proba_in_one_call_is_the_general_path(dtype, precision):
    """predict_proba of a C-contiguous X of the model's dtype runs validation, forward pass
    and softmax in one call into the core: the very bits of softmax(forward(X)) at a batch
    of one (the GEMV), small batches and a packed one; X in any other form takes the
    general path and gets the same probabilities; non-finite X the same error."""
    from fastmlp import _core
    model = MLP([37, 29, 11, 5], dtype=dtype, precision=precision, seed=0)
    rng = np.random.default_rng(0)
    for batch in (1, 2, 7, 300):
        X = rng.normal(size=(batch, 37)).astype(dtype)
        expected = _core.softmax(model.forward(X))
        assert model._probabilities_in_one_call(X) is not None
        got = model.predict_proba(X)
        assert got.dtype == np.dtype(dtype) and got.shape == (batch, 5)
        np.testing.assert_array_equal(got, expected)
        tolerance = 1e-6 if dtype == "float32" else 1e-13
        for other in (np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2], X.tolist(),
                      misaligned(X)):
            if (batch > 1 or not isinstance(other, np.ndarray)  # (1 row: still C order)
                    or not other.flags.aligned):
                assert model._probabilities_in_one_call(other) is None
            np.testing.assert_allclose(model.predict_proba(other), expected, rtol=tolerance,
                                       atol=tolerance)
    X = rng.normal(size=(4, 37)).astype(dtype)
    for bad in (np.nan, np.inf):
        X[2, 30] = bad
        assert _core.mlp_predict_proba(X, model._weights, model._biases, "relu",
                                       precision) is None
        with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first at row 2\)"):
            model.predict_proba(X)
        with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first at row 2\)"):
            model.predict_proba(X[:3])


def test_predict_proba_sigmoid_has_two_columns():
    model = MLP([3, 5, 1], output="sigmoid", dtype="float64", seed=0)
    X = np.random.default_rng(0).normal(size=(12, 3))
    z = numpy_forward(model, X)[:, 0]
    p1 = 1 / (1 + np.exp(-z))
    proba = model.predict_proba(X)
    assert proba.shape == (12, 2)
    np.testing.assert_allclose(proba, np.c_[1 - p1, p1], rtol=1e-12)
    np.testing.assert_array_equal(model.predict(X), (z > 0).astype(int))


@pytest.mark.parametrize("X, error, match", [
    (np.ones((4, 5)), ValueError, "5 features but the model expects 3"),
    (np.ones(3), ValueError, "2-D"),
    (np.ones((0, 3)), ValueError, "0 samples"),
    (np.array([["a", "b", "c"]]), TypeError, "real numbers"),
    (np.ones((2, 3), dtype=complex), TypeError, "real numbers"),
    (np.array([[0, 1, 2], [0, np.nan, 1]]), ValueError, "row 1"),
    (np.array([[0, 1, np.inf]]), ValueError, "row 0"),
])
def test_bad_X(X, error, match):
    with pytest.raises(error, match=match):
        MLP([3, 2], seed=0).predict(X)


def test_int_bool_and_strided_X_are_accepted():
    model = MLP([3, 4, 2], dtype="float64", seed=0)
    X = np.arange(12).reshape(4, 3)
    np.testing.assert_allclose(model.forward(X), numpy_forward(model, X), rtol=1e-12)
    np.testing.assert_array_equal(model.forward(X.astype(bool)), model.forward(X.astype(bool) * 1.0))
    big = np.random.default_rng(0).normal(size=(10, 9))
    view = big[::-2, ::3]
    np.testing.assert_allclose(model.forward(view), numpy_forward(model, view), rtol=1e-12)


# ---- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[4, 5, 3], [4, 6, 5, 3], [3, 5, 4, 6, 3]],
                         ids=["1-hidden", "2-hidden", "3-hidden"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_loss_and_grad_matches_finite_differences(sizes, output, activation, weighted):
    if output == "sigmoid":
        sizes = sizes[:-1] + [1]
    model = MLP(sizes, activation=activation, output=output, dtype="float64", seed=7)
    rng = np.random.default_rng(8)
    model.biases = [rng.normal(scale=0.1, size=b.shape) for b in model.biases]
    X = rng.normal(size=(9, sizes[0]))
    if output == "identity":
        y = rng.normal(size=(9, sizes[-1]))
    else:
        y = rng.integers(0, model.n_classes, size=9)
    weights = rng.uniform(0.0, 3.0, size=9) if weighted else None
    loss, grad_w, grad_b = model.loss_and_grad(X, y, sample_weight=weights)
    assert loss == pytest.approx(model.loss(X, y, sample_weight=weights), rel=1e-14)

    def finite_difference_grads(model, X, y, eps=1e-6):
        grads = []
        for param in list(model.weights) + list(model.biases):
            g = np.zeros_like(param)
            for idx in np.ndindex(param.shape):
                saved = param[idx]
                set_entry(param, idx, saved + eps)
                up = model.loss(X, y, sample_weight=weights)
                set_entry(param, idx, saved - eps)
                down = model.loss(X, y, sample_weight=weights)
                set_entry(param, idx, saved)
                g[idx] = (up - down) / (2 * eps)
            grads.append(g)
        return grads

    expected = finite_difference_grads(model, X, y)
    for got, want in zip(grad_w + grad_b, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_sample_weights_are_a_weighted_mean():
    model = MLP([3, 4, 3], dtype="float64", seed=0)
    X = np.random.default_rng(0).normal(size=(6, 3))
    y = np.array([0, 1, 2, 2, 1, 0])
    w = np.array([1.0, 2.0, 0.0, 1.0, 3.0, 1.0])
    per_sample = [model.loss(X[i:i + 1], y[i:i + 1]) for i in range(6)]
    assert model.loss(X, y, sample_weight=w) == pytest.approx(np.dot(w, per_sample) / w.sum())
    # integer weights = repeating samples
    repeated = np.repeat(np.arange(6), w.astype(int))
    _, gw_weighted, _ = model.loss_and_grad(X, y, sample_weight=w)
    _, gw_repeated, _ = model.loss_and_grad(X[repeated], y[repeated])
    np.testing.assert_allclose(gw_weighted[0], gw_repeated[0], rtol=1e-12)
    with pytest.raises(ValueError, match="negative"):
        model.loss(X, y, sample_weight=-w)
    with pytest.raises(ValueError, match="all zeros"):
        model.loss(X, y, sample_weight=np.zeros(6))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        model.loss(X, y, sample_weight=np.ones(5))


def test_regression_output():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(300, 2))
    y = np.c_[np.sin(X[:, 0]) + X[:, 1] ** 2, X[:, 0] * X[:, 1]]
    model = MLP([2, 32, 2], activation="tanh", output="identity", dtype="float64", seed=0)
    assert not model.is_classifier
    model.fit(X, y, epochs=300, batch_size=32, optimizer=Adam(lr=0.01), seed=0)
    assert model.score(X, y) > 0.95  # R²
    assert model.predict(X).shape == (300, 2)
    pred = model.predict(X)
    assert model.loss(X, y) == pytest.approx(0.5 * ((pred - y) ** 2).sum(1).mean(), rel=1e-10)
    with pytest.raises(TypeError, match="classifier"):
        model.predict_proba(X)
    with pytest.raises(ValueError, match="no classes"):
        model.n_classes
    with pytest.raises(ValueError, match=r"shape \(300, 2\)"):
        model.fit(X, y[:, 0])


def test_loss_is_mean_nll():
    model = MLP([3, 4, 3], dtype="float64", seed=0)
    X = np.random.default_rng(0).normal(size=(7, 3))
    y = np.array([0, 1, 2, 2, 1, 0, 1])
    logits = numpy_forward(model, X)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    assert model.loss(X, y) == pytest.approx(-log_p[np.arange(7), y].mean(), rel=1e-12)


@pytest.mark.parametrize("y, error, match", [
    (np.array([0, 1, 3]), ValueError, r"y\[2\] = 3 is out of range"),
    (np.array([0, -1, 1]), ValueError, "out of range"),
    (np.array([0, 1.5, 1]), ValueError, "not an integer"),
    (np.array([0, 1]), ValueError, "2 labels but there are 3 samples"),
    (np.array(["a", "b", "c"]), TypeError, "integer"),
])
def test_bad_labels(y, error, match):
    with pytest.raises(error, match=match):
        MLP([2, 3], seed=0).loss_and_grad(np.ones((3, 2)), y)


# ---- training -------------------------------------------------------------------------------

def test_fit_equals_manual_steps_on_consecutive_batches():
    """shuffle=False: batches are consecutive rows, the last one shorter (10 = 4 + 4 + 2)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 3, size=10)
    model, manual = MLP([3, 5, 3], seed=1), MLP([3, 5, 3], seed=1)
    history = model.fit(X, y, epochs=2, batch_size=4, optimizer=SGD(lr=0.1, momentum=0.9),
                        shuffle=False)
    optimizer = SGD(lr=0.1, momentum=0.9)
    for epoch in range(2):
        total = 0.0
        for start in (0, 4, 8):
            xb, yb = X[start:start + 4], y[start:start + 4]
            loss, gw, gb = manual.loss_and_grad(xb, yb)
            optimizer.step(manual.weights + manual.biases, gw + gb)
            total += loss * len(yb)
        assert history.loss[epoch] == pytest.approx(total / 10, rel=1e-6)
    for a, b in zip(model.weights + model.biases, manual.weights + manual.biases):
        np.testing.assert_array_equal(a, b)


def test_fit_shuffle_is_reproducible_and_batch_size_clamped():
    X, y = spirals(20)
    runs = [MLP([2, 8, 3], seed=0) for _ in range(3)]
    for model, seed in zip(runs, (5, 5, 6)):
        model.fit(X, y, epochs=3, batch_size=10_000, optimizer=Adam(lr=0.01), seed=seed)
    np.testing.assert_array_equal(runs[0].weights[0], runs[1].weights[0])
    # one batch of the whole data set: the order does not matter up to rounding
    np.testing.assert_allclose(runs[0].weights[0], runs[2].weights[0], rtol=1e-5, atol=1e-6)


def test_fit_history_with_validation():
    X, y = spirals(30)
    model = MLP([2, 16, 3], seed=0)
    history = model.fit(X, y, epochs=4, batch_size=16, optimizer=Adam(lr=0.01), seed=0,
                        validation_data=(X[:20], y[:20]))
    assert history.epochs == 4 and len(history.val_loss) == 4 and len(history.val_accuracy) == 4
    assert history.val_loss[-1] == pytest.approx(model.loss(X[:20], y[:20]), rel=1e-6)
    assert history.val_accuracy[-1] == model.score(X[:20], y[:20])
    assert all(s > 0 for s in history.samples_per_second)
    assert history.loss[-1] < history.loss[0]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(batch_size=-3), ValueError, "batch_size"),
    (dict(batch_size=2.0), TypeError, "batch_size"),
    (dict(optimizer=0.01), TypeError, "optimizer"),
    (dict(optimizer="rmsprop"), ValueError, "unknown optimizer 'rmsprop'.*'sgd', 'adam', 'adamw'"),
    (dict(validation_data=np.ones((3, 2))), TypeError, "validation_data"),
])
def test_bad_fit_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MLP([2, 3], seed=0).fit(np.ones((4, 2)), np.array([0, 1, 2, 0]), **kwargs)


@pytest.mark.parametrize("name, optimizer", [
    ("sgd", SGD(lr=0.01)), ("Adam", Adam(lr=1e-3)), ("ADAMW", AdamW(lr=1e-3, weight_decay=0.01)),
])
def test_fit_accepts_an_optimizer_by_name_with_its_class_defaults(name, optimizer):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2)), rng.integers(0, 3, size=40)
    by_name, by_object = MLP([2, 4, 3], seed=0), MLP([2, 4, 3], seed=0)
    by_name.fit(X, y, epochs=3, optimizer=name, seed=0)
    by_object.fit(X, y, epochs=3, optimizer=optimizer, seed=0)
    for a, b in zip(by_name.weights + by_name.biases, by_object.weights + by_object.biases):
        np.testing.assert_array_equal(a, b)
    assert type(fastmlp.optim.by_name(name)) is type(optimizer)
    assert fastmlp.optim.by_name(name).state_dict()["hyperparameters"] == \
        optimizer.state_dict()["hyperparameters"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lr", [1e6, 1e30])
def test_divergence_stops_with_a_clear_error_and_finite_weights(dtype, lr):
    X, y = spirals(30)
    X = X * 1e3
    model = MLP([2, 64, 3], dtype=dtype, seed=0)
    with pytest.raises(FloatingPointError, match="diverged"):
        model.fit(X, y, epochs=50, optimizer=SGD(lr=lr), seed=0)
    assert all(np.isfinite(p).all() for p in model.weights + model.biases)


def test_sigmoid_output_learns_a_binary_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)  # XOR of signs: needs a hidden layer
    model = MLP([2, 16, 1], output="sigmoid", seed=0)
    model.fit(X, y, epochs=200, batch_size=32, optimizer=Adam(lr=0.02), seed=0)
    assert model.score(X, y) >= 0.95


def test_the_lecture_point_hidden_layer_separates_spirals_a_linear_model_cannot():
    X, y = spirals(100)
    deep = MLP([2, 32, 3], seed=0)
    deep.fit(X, y, epochs=400, batch_size=32, optimizer=Adam(lr=0.01), seed=0)
    linear = MLP([2, 3], seed=0)
    linear.fit(X, y, epochs=400, batch_size=32, optimizer=Adam(lr=0.01), seed=0)
    assert deep.score(X, y) >= 0.95
    assert linear.score(X, y) < 0.70


def test_version_comes_from_package_metadata():
    from importlib.metadata import version

    assert fastmlp.__version__ == version("fastmlp")


def test_parameters_and_optimizer_state_start_on_a_cache_line():
    """64-byte aligned (full-width vector loads never straddle two cache lines): as built,
    assigned, unpickled, loaded, and the optimizer's state."""
    import os
    import pickle
    import tempfile

    from fastmlp.io import save_model

    def aligned(arrays):
        return [a.ctypes.data % 64 for a in arrays] == [0] * len(arrays)

    model = MLP([13, 7, 3], seed=0)
    assert aligned(model.weights + model.biases)
    model.weights[1] = np.ones((3, 7))
    model.biases = [np.zeros(7), np.ones(3)]
    assert aligned(model.weights + model.biases)
    assert aligned(pickle.loads(pickle.dumps(model)).weights)
    optimizer = Adam()
    X = np.random.default_rng(0).standard_normal((20, 13))
    model.fit(X, np.arange(20) % 3, epochs=1, optimizer=optimizer)
    from fastmlp import _testing
    addresses = _testing.optimizer_state_addresses(optimizer)
    assert len(addresses) == 2 * 4 and all(address % 64 == 0 for address in addresses)
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, os.path.join(folder, "m.npz"))
        loaded = MLP.load(os.path.join(folder, "m.npz"))
    assert aligned(loaded.weights + loaded.biases)
