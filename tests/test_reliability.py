"""Durable state and concurrency: checkpoints that resume to the same weights, predictions
from many threads, fit racing fit, pickling, reproducibility, absurd sizes."""

import os
import pickle
import threading

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, SGD, Adam
from _helpers import misaligned


def data(n=240, n_features=6, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_features)), rng.integers(0, n_classes, n)


@pytest.mark.parametrize("make_optimizer", [lambda: Adam(lr=1e-2),
                                            lambda: SGD(lr=0.05, momentum=0.9, nesterov=True)],
                         ids=["adam", "sgd-nesterov"])
def test_resuming_from_a_checkpoint_gives_the_uninterrupted_weights(tmp_path, make_optimizer):
    X, y = data()
    straight = MLP([6, 16, 3], seed=0)
    full_history = straight.fit(X, y, epochs=6, batch_size=32, optimizer=make_optimizer(), seed=5)

    path = tmp_path / "run.ckpt"
    interrupted = MLP([6, 16, 3], seed=0)

    def crash_after_epoch_3(model, history):
        if history.epochs == 3:
            raise KeyboardInterrupt  # as if the process died after the epoch-3 checkpoint

    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(X, y, epochs=6, batch_size=32, optimizer=make_optimizer(), seed=5,
                        checkpoint=path, checkpoint_every=1, callbacks=[crash_after_epoch_3])
    resumed = MLP([6, 16, 3], seed=123)  # a fresh process: other initial weights
    history = resumed.fit(X, y, epochs=6, batch_size=32, optimizer=make_optimizer(), seed=5,
                          checkpoint=path, resume=True)
    assert history.loss == full_history.loss  # the restored epochs and the new ones
    for a, b in zip(resumed.weights + resumed.biases, straight.weights + straight.biases):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["run.ckpt"]


def test_resume_without_a_checkpoint_starts_fresh_and_mismatches_are_refused(tmp_path):
    X, y = data()
    path = tmp_path / "none-yet.ckpt"
    model = MLP([6, 8, 3], seed=0)
    assert model.fit(X, y, epochs=2, checkpoint=path, resume=True, seed=1).epochs == 2
    assert path.exists()
    with pytest.raises(ValueError, match="not this"):
        MLP([6, 9, 3], seed=0).fit(X, y, epochs=3, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="batch_size"):
        MLP([6, 8, 3], seed=0).fit(X, y, epochs=3, batch_size=7, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="not a valid fastmlp checkpoint"):
        model.save(tmp_path / "plain.npz")
        MLP.load(tmp_path / "plain.npz").fit(X, y, checkpoint=tmp_path / "plain.npz",
                                             resume=True)


def test_a_checkpoint_is_a_loadable_model_archive_only_through_read_checkpoint(tmp_path):
    from fastmlp.io import read_checkpoint
    X, y = data()
    path = tmp_path / "c.npz"
    MLP([6, 8, 3], seed=0).fit(X, y, epochs=2, checkpoint=path, optimizer=Adam())
    model, optimizer, meta = read_checkpoint(path)
    assert meta["epochs_done"] == 2 and isinstance(optimizer, Adam) and optimizer.steps == 16
    with pytest.raises(ValueError, match="unexpected entries"):
        MLP.load(path)  # a model file has no optimizer state: refused, not half-read


def test_predict_from_many_threads_matches_serial():
    X, _ = data(n=500, n_features=40)
    model = MLP([40, 128, 64, 3], seed=0)
    expected = model.predict_proba(X)
    results = [None] * 12

    def work(i):
        for _ in range(20):
            results[i] = model.predict_proba(X)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_fit_while_another_thread_fits_raises_and_predictions_see_whole_steps():
    X, y = data(n=2000, n_features=50)
    model = MLP([50, 256, 3], seed=0)
    errors, snapshots = [], []
    started = threading.Event()

    stop = threading.Event()

    def after_epoch(model, history):
        started.set()  # the fit in this thread is surely running now
        return stop.is_set()

    def train():
        model.fit(X, y, epochs=10_000, batch_size=16, optimizer=SGD(lr=0.01),
                  callbacks=[after_epoch])

    trainer = threading.Thread(target=train)
    trainer.start()
    started.wait()
    try:
        for _ in range(20):
            try:
                model.fit(X[:10], y[:10], epochs=1)
            except RuntimeError as exc:
                errors.append(str(exc))
            snapshots.append(model.predict_proba(X[:4]))
            with pytest.raises(RuntimeError, match="another thread"):
                # the same arrays (no copy: reading them while the other fit writes them
                # would be a torn read, which ThreadSanitizer rightly reports)
                model.weights = list(model.weights)
    finally:
        stop.set()
        trainer.join()
    assert errors and "already being trained" in errors[0]
    assert all(np.isfinite(s).all() and np.allclose(s.sum(1), 1) for s in snapshots)


def test_lbfgs_writes_each_trial_point_under_the_models_lock():
    """L-BFGS writes its trial points into the model in place: under the lock a prediction
    takes, so that another thread never sees half of one point and half of the next. (Each
    write ends by dropping the packed weights: the lock must be held then.)"""
    from fastmlp.estimators import MLPClassifier
    X, y = data(n=200, n_features=8)
    estimator = MLPClassifier((16,), solver="lbfgs", max_iter=5, warm_start=True,
                              random_state=0)
    with pytest.warns(Warning):  # 5 iterations: not converged
        estimator.fit(X, y)
    model = estimator._model
    held = []
    drop = model._drop_pack

    def recording_drop():
        held.append(model._lock._is_owned())
        drop()

    model._drop_pack = recording_drop
    with pytest.warns(Warning):
        estimator.fit(X, y)
    assert held and all(held)


def test_pickle_round_trip():
    X, y = data()
    model = MLP([6, 8, 3], dtype="float64", seed=0)
    model.fit(X, y, epochs=1)
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict_proba(X), model.predict_proba(X))
    clone.fit(X, y, epochs=1)  # the copy trains on its own lock and arrays
    assert not np.array_equal(clone.weights[0], model.weights[0])
    with pytest.raises(ValueError):
        clone.weights[0] = np.zeros((3, 3))  # validation survives pickling


def test_same_seed_same_data_same_threads_is_bitwise_identical():
    X, y = data()
    runs = []
    for _ in range(2):
        model = MLP([6, 32, 3], seed=11)
        model.fit(X, y, epochs=3, batch_size=20, optimizer=Adam(), seed=12)
        runs.append(model.weights + model.biases)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sizes", [[2**40, 2**40, 3], [3, 2**62, 2]])
def test_absurd_layer_sizes_are_refused_before_allocating(sizes):
    with pytest.raises(ValueError, match="more than any memory"):
        MLP(sizes)


@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine holds freed memory: RSS grows by design")
def test_the_rss_stays_flat_over_many_steps_and_predictions():
    resource = pytest.importorskip("resource")
    X, y = data(n=320, n_features=8)
    model = MLP([8, 16, 3], seed=0)
    x1 = X[:1]

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc")
    del resource
    model.fit(X, y, epochs=10, batch_size=32)  # warm up: 100 steps
    for _ in range(1000):
        model.predict(x1)
    before = rss_kib()
    model.fit(X, y, epochs=1000, batch_size=32)  # 10,000 steps
    for _ in range(10_000):
        model.predict(x1)
    grown = rss_kib() - before
    assert grown < 2048, f"RSS grew by {grown} KiB over 10,000 steps and 10,000 predictions"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [0, 4095, 4096, 4097, 3 * 4096 + 17, -1])
def test_a_non_finite_feature_is_found_anywhere(dtype, bad, position):
    """The one-pass finiteness check (blocks of 4096 values) finds a single NaN/inf at block
    edges, first and last, and names its row; the same array in Fortran order or starting
    one byte off its element alignment (both checked by NumPy instead: the core reads only
    aligned floats, and refuses the rest) gives the same message, for the model and the
    estimator."""
    from fastmlp import _core
    from fastmlp.estimators import MLPClassifier
    X = np.random.default_rng(0).standard_normal((97, 131)).astype(dtype)
    flat = X.reshape(-1)
    index = position % flat.size
    flat[index] = bad
    assert _core.first_nonfinite(X) == index
    with pytest.raises(ValueError, match="aligned C-contiguous"):
        _core.first_nonfinite(misaligned(X))
    model = MLP([131, 4, 2], dtype=dtype, seed=0)
    estimator = MLPClassifier((4,), max_iter=1, dtype=dtype, random_state=0)
    with pytest.warns(Warning):  # one epoch: not converged
        estimator.fit(np.zeros((4, 131), dtype), [0, 1, 0, 1])
    for layout in (X, np.asfortranarray(X), misaligned(X)):
        with pytest.raises(ValueError, match=f"first at row {index // 131}\\)"):
            model.predict(layout)
        with pytest.raises(ValueError, match="NaN|infinity"):
            estimator.predict(layout)
    flat[index] = 0.0
    assert _core.first_nonfinite(X) == -1
    np.testing.assert_array_equal(estimator.predict(misaligned(X)), estimator.predict(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [1, 7, 8, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 9000])
def test_the_finiteness_check_finds_the_first_bad_value_on_every_isa(isa, dtype, size):
    """Each ISA's first_nonfinite (AVX-512: an FMA per vector, the tail by a masked load)
    against NumPy, the bad value at every kind of place: first, last, a vector's or a block's
    edge, the masked tail; the first of two; subnormals, ±max and -0 are finite."""
    from fastmlp import _core
    info = np.finfo(dtype)
    X = np.random.default_rng(size).standard_normal(size).astype(dtype)
    special = np.array([info.max, -info.max, info.tiny / 4, -0.0, 1e-30], dtype)
    places = np.unique(np.linspace(0, size - 1, len(special)).astype(int))
    X[places] = special[: len(places)]
    assert _core.first_nonfinite(X) == -1
    for position in sorted({0, size - 1, size // 2, min(size - 1, 15), min(size - 1, 4096)}):
        for bad in (np.nan, np.inf, -np.inf):
            Y = X.copy()
            Y[position] = bad
            if position + 3 < size:
                Y[position + 3] = np.nan  # a later one does not hide the first
            assert _core.first_nonfinite(Y) == position == np.flatnonzero(~np.isfinite(Y))[0]


def test_the_private_module_refuses_sizes_no_memory_holds():
    """No call from Python crashes the process, fastmlp._core included: sizes computed from
    the caller's numbers are checked before anything is allocated."""
    from fastmlp import _core
    weights, biases = [np.zeros((3, 2), np.float32)], [np.zeros(3, np.float32)]
    optimizer = SGD()
    optimizer._prepare(weights + biases)
    for max_batch in (2**61, 2**62, 2**63 - 1):
        with pytest.raises(ValueError, match="larger than any memory"):
            _core.TrainerFloat32(weights, biases, "relu", "softmax", optimizer._rule, 0.0,
                                 max_batch)
    trainer = _core.TrainerFloat32(weights, biases, "relu", "softmax", optimizer._rule, 0.0, 4)
    for n in (2**62, 2**63 - 1):
        with pytest.raises(ValueError, match="larger than any memory"):
            trainer.begin_epoch(n, True, 0)
    with pytest.raises(ValueError, match="larger than any memory"):
        _core.SGD(0.1, 0.0, 0.0, False).bind([[2**40, 2**40]], "float64")


def test_fork_while_another_thread_trains_gives_a_child_that_works():
    """os.fork() while a fit runs in another thread copies the model's lock held: the child
    resets it (os.register_at_fork), so it can predict and train instead of hanging."""
    from _helpers import run_python
    code = """
        import os, threading, time
        import numpy as np
        import fastmlp
        X = np.random.default_rng(0).standard_normal((2048, 64)).astype(np.float32)
        y = (X[:, 0] > 0).astype(int)
        model = fastmlp.MLP([64, 128, 2], seed=0)
        started = threading.Event()
        def train():
            model.fit(X, y, epochs=200, batch_size=32, callbacks=[lambda m, h: started.set()])
        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        started.wait()
        time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            model.predict(X[:5])
            model.fit(X[:64], y[:64], epochs=1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        os._exit(0)
    """
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_snapshots_from_another_thread_during_fit_match_a_step(tmp_path):
    """save and pickle from another thread while fit updates the weights tile by tile: every
    snapshot equals the weights after some whole step (as replayed step by step), never half
    of one."""
    from fastmlp._training import epoch_order, epoch_seeds
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 64))
    y = rng.integers(0, 10, 256)
    sizes, epochs, batch = [64, 256, 10], 20, 32
    reference, optimizer = MLP(sizes, dtype="float64", seed=1), SGD(lr=0.1)
    states = [np.concatenate([a.ravel() for a in reference.weights + reference.biases])]
    seeds = epoch_seeds(2)
    for _ in range(epochs):
        order = epoch_order(256, next(seeds))
        for start in range(0, 256, batch):
            rows = order[start:start + batch]
            _, gw, gb = reference.loss_and_grad(X[rows], y[rows])
            optimizer.step(reference.weights + reference.biases, gw + gb)
            states.append(np.concatenate([a.ravel() for a in reference.weights
                                          + reference.biases]))
    states = np.array(states)

    model = MLP(sizes, dtype="float64", seed=1)
    snapshots, done = [], threading.Event()

    def snapshot():
        while not done.is_set():
            if len(snapshots) % 2:
                model.save(tmp_path / "m.npz")
                copy = MLP.load(tmp_path / "m.npz")
            else:
                copy = pickle.loads(pickle.dumps(model))
            snapshots.append(np.concatenate([a.ravel() for a in copy.weights + copy.biases]))

    thread = threading.Thread(target=snapshot)
    thread.start()
    try:
        model.fit(X, y, epochs=epochs, batch_size=batch, optimizer=SGD(lr=0.1), seed=2)
    finally:
        done.set()
        thread.join()
    assert snapshots
    for taken in snapshots:
        assert np.abs(states - taken).max(axis=1).min() < 1e-9


def test_a_callback_that_assigns_new_arrays_trains_them():
    """A callback may replace the parameter arrays (from the training thread): the engine
    follows them, as if fit had been called again on the new weights."""
    X, y = data()
    model = MLP([6, 16, 3], dtype="float64", seed=0)

    def shrink(m, history):
        if history.epochs == 1:
            m.weights = [w * 0.5 for w in m.weights]
            m.biases[0] = m.biases[0] + 1.0

    history = model.fit(X, y, epochs=3, batch_size=32, optimizer=SGD(lr=0.05), shuffle=False,
                        callbacks=[shrink])
    reference, optimizer = MLP([6, 16, 3], dtype="float64", seed=0), SGD(lr=0.05)
    first = reference.fit(X, y, epochs=1, batch_size=32, optimizer=optimizer, shuffle=False)
    reference.weights = [w * 0.5 for w in reference.weights]
    reference.biases[0] = reference.biases[0] + 1.0
    rest = reference.fit(X, y, epochs=2, batch_size=32, optimizer=optimizer, shuffle=False)
    assert history.loss == first.loss + rest.loss
    for a, b in zip(model.weights + model.biases, reference.weights + reference.biases):
        np.testing.assert_array_equal(a, b)
