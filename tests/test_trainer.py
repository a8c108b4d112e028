"""The fused training engine behind MLP.fit (src/cpp/trainer.*): same results as the
step-by-step Python path, no allocation per step, optimizer state carried across calls, Ctrl-C
at a step boundary, bitwise reproducibility across thread counts."""

import signal
import threading

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing
from fastmlp import MLP, SGD, Adam, AdamW
from fastmlp._training import epoch_order as _epoch_order, epoch_seeds as _epoch_seeds

from _helpers import set_entry


def data(n, n_features, n_classes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_features)).astype(dtype)
    y = rng.integers(0, n_classes, size=n)
    return X, y


def step_by_step(model, X, y, epochs, batch_size, optimizer, shuffle, seed, weights=None,
                 alpha=0.0):
    """The reference: loss_and_grad + optimizer.step on the batches fit draws."""
    seeds = _epoch_seeds(seed)
    losses = []
    for _ in range(epochs):
        epoch_seed = next(seeds)
        order = _epoch_order(len(y), epoch_seed) if shuffle else np.arange(len(y))
        total = 0.0
        for start in range(0, len(y), batch_size):
            rows = order[start:start + batch_size]
            batch_weights = None if weights is None else weights[rows]
            loss, gw, gb = model.loss_and_grad(X[rows], y[rows], sample_weight=batch_weights,
                                               alpha=alpha)
            optimizer.step(model.weights + model.biases, gw + gb)
            total += loss * len(rows)
        losses.append(total / len(y))
    return losses


@pytest.fixture(params=["narrow", "gemm"])
def engine_path(request):
    """Both ways the engine can run a step: feature-major for narrow nets, or the row-major
    GEMM path (every net of these tests is narrow enough for the first by default)."""
    with _testing.layout("features" if request.param == "narrow" else "rows"):
        yield request.param


OPTIMIZERS = {
    "sgd": lambda: SGD(lr=0.05),
    "sgd-momentum-wd": lambda: SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda: SGD(lr=0.05, momentum=0.8, nesterov=True),
    "adam": lambda: Adam(lr=1e-2),
    "adam-wd": lambda: Adam(lr=3e-3, betas=(0.8, 0.99), weight_decay=1e-2),
    "adamw": lambda: AdamW(lr=3e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("sizes, output, activation", [
    ([5, 16, 4], "softmax", "relu"), ([5, 12, 9, 7, 3], "softmax", "relu"),
    ([5, 8, 1], "sigmoid", "relu"), ([5, 10, 6, 3], "softmax", "tanh"),
    ([5, 10, 2], "identity", "logistic"), ([5, 7, 1], "identity", "identity")])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_fit_equals_step_by_step_path(optimizer, sizes, output, activation, dtype, weighted,
                                      engine_path):
    n_labels = 2 if output == "sigmoid" else sizes[-1]
    X, y = data(103, sizes[0], n_labels)  # 103 = 3·32 + 7
    if output == "identity":
        y = np.random.default_rng(1).normal(size=(103, sizes[-1]))
    weights = np.random.default_rng(2).uniform(0, 2, size=103) if weighted else None
    fused = MLP(sizes, activation=activation, output=output, dtype=dtype, seed=1)
    reference = MLP(sizes, activation=activation, output=output, dtype=dtype, seed=1)
    history = fused.fit(X, y, epochs=3, batch_size=32, optimizer=OPTIMIZERS[optimizer](),
                        shuffle=True, seed=7, sample_weight=weights)
    losses = step_by_step(reference, X, y, 3, 32, OPTIMIZERS[optimizer](), True, 7, weights)
    rtol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(history.loss, losses, rtol=rtol)
    for got, want in zip(fused.weights + fused.biases, reference.weights + reference.biases):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adam"])
def test_fit_with_l2_penalty_equals_step_by_step_path(optimizer, engine_path):
    X, y = data(90, 6, 3)
    fused, reference = MLP([6, 11, 3], dtype="float64", seed=2), MLP([6, 11, 3], dtype="float64", seed=2)
    history = fused.fit(X, y, epochs=2, batch_size=20, optimizer=OPTIMIZERS[optimizer](), seed=3,
                        alpha=0.5)
    losses = step_by_step(reference, X, y, 2, 20, OPTIMIZERS[optimizer](), True, 3, alpha=0.5)
    np.testing.assert_allclose(history.loss, losses, rtol=1e-12)
    for got, want in zip(fused.weights + fused.biases, reference.weights + reference.biases):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_l2_penalty_gradient_matches_finite_differences():
    X, y = data(7, 3, 2)
    model = MLP([3, 4, 2], dtype="float64", seed=0)
    _, grad_w, grad_b = model.loss_and_grad(X, y, alpha=2.0)
    _, plain_w, plain_b = model.loss_and_grad(X, y)
    for g, p, w in zip(grad_w, plain_w, model.weights):
        np.testing.assert_allclose(g - p, 2.0 * w / 7, rtol=1e-12)
    for g, p in zip(grad_b, plain_b):
        np.testing.assert_array_equal(g, p)  # biases are not penalised
    w = model.weights[0]
    eps = 1e-6
    saved = w[1, 2]
    set_entry(w, (1, 2), saved + eps)
    up = model.loss(X, y, alpha=2.0)
    set_entry(w, (1, 2), saved - eps)
    down = model.loss(X, y, alpha=2.0)
    set_entry(w, (1, 2), saved)
    assert grad_w[0][1, 2] == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_a_callback_returning_true_stops_training():
    X, y = data(40, 3, 2)
    history = MLP([3, 4, 2], seed=0).fit(X, y, epochs=50, callbacks=[lambda m, h: h.epochs >= 4])
    assert history.epochs == 4


def test_optimizer_state_carries_across_fit_calls():
    X, y = data(70, 4, 3)
    once, twice = MLP([4, 10, 3], seed=0), MLP([4, 10, 3], seed=0)
    opt_once, opt_twice = Adam(lr=1e-2), Adam(lr=1e-2)
    once.fit(X, y, epochs=2, batch_size=16, optimizer=opt_once, shuffle=False)
    twice.fit(X, y, epochs=1, batch_size=16, optimizer=opt_twice, shuffle=False)
    twice.fit(X, y, epochs=1, batch_size=16, optimizer=opt_twice, shuffle=False)
    assert opt_once.steps == opt_twice.steps == 10
    for a, b in zip(once.weights + once.biases, twice.weights + twice.biases):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sizes", [[30, 64, 32, 5], [3, 8, 8, 4]], ids=["gemm", "narrow"])
def test_training_steps_allocate_nothing_after_the_first_epoch(sizes):
    X, y = data(1000, sizes[0], sizes[-1], dtype=np.float32)
    counts = []
    model = MLP(sizes, seed=0)
    model.fit(X, y, epochs=4, batch_size=64, optimizer=Adam(), seed=0,
              callbacks=[lambda m, h: counts.append(_testing.workspace_allocations())])
    assert counts[1:] == [counts[0]] * 3, counts


def test_callbacks_run_after_every_epoch():
    X, y = data(50, 3, 2)
    seen = []
    MLP([3, 4, 2], seed=0).fit(X, y, epochs=3, callbacks=[lambda m, h: seen.append(h.epochs)])
    assert seen == [1, 2, 3]
    with pytest.raises(TypeError, match="callbacks"):
        MLP([3, 4, 2], seed=0).fit(X, y, callbacks=[1])


# [300, 256, 100, 10]: the weight tiles are updated on both threads as the GEMM finishes them.
# alpha > 0: the L2 penalty's running sum of squares is added from tiles finished on any
# thread, in any order; the reported loss must not depend on it either.
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("sizes", [[20, 64, 3], [300, 256, 100, 10], [4, 9, 3]])
def test_training_is_bitwise_identical_for_any_thread_count(sizes, alpha):
    X, y = data(600, sizes[0], sizes[-1], dtype=np.float32)
    previous = fastmlp.get_num_threads()
    weights, losses = {}, {}
    try:
        # Every product split (the cost model would keep these small ones on one thread).
        with _testing.split_every_product():
            for n_threads in (1, 2, 3):
                fastmlp.set_num_threads(n_threads)
                model = MLP(sizes, seed=3)
                history = model.fit(X, y, epochs=2, batch_size=100, alpha=alpha,
                                    optimizer=SGD(lr=0.01, momentum=0.9), seed=4)
                weights[n_threads] = model.weights + model.biases
                losses[n_threads] = history.loss
    finally:
        fastmlp.set_num_threads(previous)
    for n_threads in (2, 3):
        assert losses[n_threads] == losses[1]
        for a, b in zip(weights[1], weights[n_threads]):
            np.testing.assert_array_equal(a, b)


def test_ctrl_c_stops_at_a_step_boundary_with_consistent_weights():
    """SIGINT mid-fit: KeyboardInterrupt, and the model equals exactly `optimizer.steps`
    steps of the step-by-step path (nothing half-applied, optimizer in sync)."""
    X, y = data(256, 50, 4, dtype=np.float64)
    model = MLP([50, 256, 256, 4], dtype="float64", seed=0)
    optimizer = SGD(lr=0.001, momentum=0.9)
    timer = threading.Timer(0.3, signal.raise_signal, args=(signal.SIGINT,))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(X, y, epochs=100_000, batch_size=32, optimizer=optimizer, shuffle=False)
    finally:
        timer.cancel()
    steps = optimizer.steps
    assert 0 < steps < 100_000 * 8
    replay = MLP([50, 256, 256, 4], dtype="float64", seed=0)
    replay_optimizer = SGD(lr=0.001, momentum=0.9)
    for step in range(steps):
        start = (step % 8) * 32
        loss, gw, gb = replay.loss_and_grad(X[start:start + 32], y[start:start + 32])
        replay_optimizer.step(replay.weights + replay.biases, gw + gb)
    for a, b in zip(model.weights + model.biases, replay.weights + replay.biases):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert np.isfinite(model.predict_proba(X[:3])).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_narrow_path_equals_gemm_path_at_awkward_batches(dtype):
    """Batches of 1, 17 (a prime, not a multiple of any SIMD width) and 64 + a last batch of
    5, with shuffling: both step implementations agree to rounding."""
    X, y = data(69, 7, 5, dtype=dtype)
    results = {}
    for layout in ("features", "rows"):
        with _testing.layout(layout):
            for batch_size in (1, 17, 64):
                model = MLP([7, 13, 11, 5], dtype=dtype, seed=5)
                history = model.fit(X, y, epochs=2, batch_size=batch_size,
                                    optimizer=Adam(lr=1e-2), seed=1)
                results[layout, batch_size] = (history.loss, model.weights + model.biases)
    rtol = 1e-11 if dtype == "float64" else 1e-4
    for batch_size in (1, 17, 64):
        narrow, gemm = results["features", batch_size], results["rows", batch_size]
        np.testing.assert_allclose(narrow[0], gemm[0], rtol=rtol)
        for a, b in zip(narrow[1], gemm[1]):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_a_refused_two_thread_update_restores_every_parameter():
    """A step whose update overflows in one tile of a weight matrix whose tiles two threads
    update: FloatingPointError, and every parameter as before that step. Feature 0 is
    always 0 and the last unit's weight on it is 3e38: the forward pass stays finite, but
    SGD(lr=3, weight_decay=1) computes p - 3·p, which overflows there and nowhere else."""
    X, y = data(64, 300, 3, dtype=np.float32)
    X[:, 0] = 0.0
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(2)
    try:
        model = MLP([300, 256, 3], seed=0)
        huge = model.weights[0].copy()
        huge[255, 0] = 3e38
        model.weights[0] = huge
        before = [p.copy() for p in model.weights + model.biases]
        with pytest.raises(FloatingPointError, match="diverged"), _testing.split_every_product():
            model.fit(X, y, epochs=1, batch_size=64, optimizer=SGD(lr=3.0, weight_decay=1.0),
                      shuffle=False)
    finally:
        fastmlp.set_num_threads(previous)
    for got, want in zip(model.weights + model.biases, before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "sgd-nesterov", "adam-wd"])
@pytest.mark.parametrize("sizes, batch_size", [
    ([40, 300, 200, 5], 150),  # weight tiles handed to the optimizer by the packed GEMM
    ([20, 200, 3], 800),       # a batch deeper than one packed K block: gradient whole
    ([30, 100, 1], 64),        # one output: a row
], ids=["packed", "deep-batch", "one-output"])
def test_fused_weight_update_equals_step_by_step_path(sizes, batch_size, optimizer, n_threads):
    """The GEMM path updates each weight tile as the weight-gradient product finishes it:
    same weights as computing the whole gradient and then stepping, with an L2 penalty."""
    output = "sigmoid" if sizes[-1] == 1 else "softmax"
    X, y = data(2 * batch_size + 7, sizes[0], 2 if output == "sigmoid" else sizes[-1])
    fused = MLP(sizes, output=output, dtype="float64", seed=3)
    reference = MLP(sizes, output=output, dtype="float64", seed=3)
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(n_threads)
    try:
        with _testing.split_every_product():
            history = fused.fit(X, y, epochs=2, batch_size=batch_size,
                                optimizer=OPTIMIZERS[optimizer](), seed=4, alpha=0.3)
    finally:
        fastmlp.set_num_threads(previous)
    losses = step_by_step(reference, X, y, 2, batch_size, OPTIMIZERS[optimizer](), True, 4,
                          alpha=0.3)
    np.testing.assert_allclose(history.loss, losses, rtol=1e-12)
    for got, want in zip(fused.weights + fused.biases, reference.weights + reference.biases):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adam", "adamw"])
def test_learning_rate_changed_between_epochs_takes_effect_without_a_new_engine(optimizer,
                                                                               engine_path):
    """The engine reads the optimizer's lr at every step: a callback that lowers it after
    each epoch (scikit-learn's invscaling) trains exactly like the step-by-step path."""
    X, y = data(90, 6, 3)
    fused, reference = MLP([6, 11, 3], dtype="float64", seed=2), MLP([6, 11, 3], dtype="float64",
                                                                      seed=2)
    opt = OPTIMIZERS[optimizer]()

    def decay(model, history):
        opt.lr = opt.lr / 2

    history = fused.fit(X, y, epochs=3, batch_size=20, optimizer=opt, seed=3, callbacks=[decay])
    ref_opt = OPTIMIZERS[optimizer]()
    seeds = _epoch_seeds(3)
    losses = []
    for _ in range(3):
        order = _epoch_order(len(y), next(seeds))
        total = 0.0
        for start in range(0, len(y), 20):
            rows = order[start:start + 20]
            loss, gw, gb = reference.loss_and_grad(X[rows], y[rows])
            ref_opt.step(reference.weights + reference.biases, gw + gb)
            total += loss * len(rows)
        losses.append(total / len(y))
        ref_opt.lr = ref_opt.lr / 2
    np.testing.assert_allclose(history.loss, losses, rtol=1e-12)
    for got, want in zip(fused.weights + fused.biases, reference.weights + reference.biases):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert opt.steps == ref_opt.steps == 15


def test_an_optimizer_in_use_by_a_fit_refuses_to_step_or_rebind():
    X, y = data(40, 4, 2)
    model = MLP([4, 5, 2], seed=0)
    opt = SGD(lr=0.1, momentum=0.5)
    errors = []

    def meddle(m, history):
        for action in (lambda: opt.step(m.weights + m.biases, [np.zeros_like(a) for a in
                                                                m.weights + m.biases]),
                       opt.reset, lambda: opt.load_state_dict(opt.state_dict())):
            with pytest.raises(RuntimeError, match="in use by a running fit"):
                action()
            errors.append(action)

    model.fit(X, y, epochs=1, optimizer=opt, callbacks=[meddle])
    assert len(errors) == 3
    opt.reset()  # free again once fit returned


def test_an_optimizer_in_use_refuses_a_new_step_count():
    """The engine advances the step count while it runs: setting it meanwhile is refused."""
    X, y = data(40, 4, 2)
    opt = Adam()
    seen = []

    def meddle(model, history):
        with pytest.raises(RuntimeError, match="in use by a running fit"):
            opt.steps = 0
        seen.append(opt.steps)

    MLP([4, 5, 2], seed=0).fit(X, y, epochs=1, batch_size=8, optimizer=opt, callbacks=[meddle])
    assert seen == [5]
    opt.steps = 0  # free again once fit returned
    assert opt.steps == 0
