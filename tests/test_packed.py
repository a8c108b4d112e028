"""Pre-packed inference: a model packs its weights for the GEMM kernels once (MLP.packed_nbytes)
and every prediction of more than one row reads the pack. The pack must never be stale: every
way of changing a weight drops it, and in-place writes into the weight views raise."""

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, SGD, _core

from _helpers import ON_EVERY_ISA_AND_THREAD_COUNT, run_python


def reference_logits(model, X, activation="relu"):
    act = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh, "identity": lambda a: a,
           "logistic": lambda a: 1 / (1 + np.exp(-a))}[activation]
    h = np.asarray(X, np.float64)
    for l, (W, b) in enumerate(zip(model.weights, model.biases)):
        h = h @ np.asarray(W, np.float64).T + b
        if l < len(model.weights) - 1:
            h = act(h)
    return h


def data(rows, features, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [[784, 256, 256, 10], [7, 33, 5], [300, 97, 1]])
@pytest.mark.parametrize("rows", [2, 13, 129, 300])
def test_packed_forward_is_bitwise_the_unpacked_one(sizes, rows, dtype):
    """Same panels, same kernels, same order of additions: identical logits at every batch."""
    output = "sigmoid" if sizes[-1] == 1 else "softmax"
    model = MLP(sizes, output=output, seed=1, dtype=dtype)
    X = data(rows, sizes[0]).astype(dtype)
    packed_type = _core.PackedWeightsFloat32 if dtype == "float32" else _core.PackedWeightsFloat64
    packed = packed_type(model._weights, model._biases, "relu")
    unpacked = _core.mlp_forward(X, model._weights, model._biases, "relu")
    np.testing.assert_array_equal(
        _core.mlp_forward(X, model._weights, model._biases, "relu", packed=packed), unpacked)
    np.testing.assert_array_equal(model.forward(X), unpacked)
    assert model.packed_nbytes >= sum(w.nbytes for w in model.weights)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(unpacked, reference_logits(model, X), rtol=tol, atol=tol)


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("sizes", [[784, 256, 256, 10], [7, 33, 5], [301, 97, 65, 1],
                                   [1, 16, 48, 17]])
def test_a_batch_of_one_on_the_pack_matches_the_in_place_gemv(sizes, activation):
    """float32, one row: on AVX-512 a GEMV over the panels (the GEMM micro-kernel's operations),
    else W in place; either way the reference logits. On AVX-512 the mnist-shaped net's rows
    are bitwise those of a batch (scikit-learn's check_methods_subset_invariance allows ~1 ulp)."""
    output = "sigmoid" if sizes[-1] == 1 else "softmax"
    model = MLP(sizes, activation=activation, output=output, seed=3)
    model.biases = [np.random.default_rng(1).normal(size=b.shape) for b in model.biases]
    packed = _core.PackedWeightsFloat32(model._weights, model._biases, activation)
    for seed in range(3):
        x = data(1, sizes[0], seed)
        in_place = _core.mlp_forward(x, model._weights, model._biases, activation)
        on_pack = _core.mlp_forward(x, model._weights, model._biases, activation, packed=packed)
        scale = np.abs(in_place).max() + 1
        np.testing.assert_allclose(on_pack, in_place, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(on_pack, reference_logits(model, x, activation), rtol=0,
                                   atol=1e-4 * scale)
        np.testing.assert_array_equal(model.forward(x), on_pack)
        strided = np.repeat(x, 2, axis=1)[:, ::2]  # not contiguous: the general path
        np.testing.assert_allclose(model.forward(strided), on_pack, rtol=0, atol=1e-5 * scale)
    if fastmlp.ops.isa() == "avx512" and sizes[0] == 784:
        X = data(7, sizes[0])
        batch = _core.mlp_forward(X, model._weights, model._biases, activation, packed=packed)
        for i in range(7):
            np.testing.assert_array_equal(
                _core.mlp_forward(X[i:i + 1], model._weights, model._biases, activation,
                                  packed=packed), batch[i:i + 1])


def test_pack_is_built_on_first_batch_prediction_and_its_size_reported():
    model = MLP([784, 256, 256, 10], seed=0)
    assert model.packed_nbytes == 0
    model.predict(data(1, 784))
    # A float32 batch of one reads the pack on AVX-512 (a GEMV over the panels), elsewhere W
    # in place: no pack.
    assert (model.packed_nbytes > 0) == (fastmlp.ops.isa() == "avx512")
    model.predict(data(5, 784))
    # NR = 32 floats on AVX-512 and AVX2's 16? Each layer's outputs round up to the panel width.
    weights_bytes = sum(w.nbytes for w in model.weights)
    assert weights_bytes <= model.packed_nbytes <= weights_bytes + 4 * 64 * (784 + 256 + 256)


def test_a_never_fitted_model_predicts():
    model = MLP([20, 8, 3], seed=0)
    X = data(17, 20)
    np.testing.assert_array_equal(model.predict(X), reference_logits(model, X).argmax(axis=1))


def changes():
    """Every way a weight or bias can change, each returning the model changed."""
    X, y = data(40, 12, seed=3), np.arange(40) % 3

    def assign_item(m):
        m.weights[0] = m.weights[0] * 0.5

    def assign_list(m):
        m.weights = [w[::-1].copy() for w in m.weights]

    def assign_bias(m):
        m.biases[1] = np.array([5.0, -5.0, 0.0])

    def fit(m):
        m.fit(X, y, epochs=2, batch_size=8, optimizer=SGD(lr=0.5))

    def optimizer_step(m):
        _, gw, gb = m.loss_and_grad(X, y)
        SGD(lr=5.0).step(m.weights + m.biases, gw + gb)

    def load(m, tmp_path):
        other = MLP([12, 9, 3], seed=99)
        other.save(tmp_path / "m.npz")
        return MLP.load(tmp_path / "m.npz")

    return [assign_item, assign_list, assign_bias, fit, optimizer_step, load]


@pytest.mark.parametrize("change", changes(), ids=lambda f: f.__name__)
def test_every_change_of_the_weights_is_seen_by_the_next_prediction(change, tmp_path):
    model = MLP([12, 9, 3], seed=0)
    X = data(25, 12, seed=4)
    before = model.forward(X)  # builds the pack
    assert model.packed_nbytes > 0
    changed = (change(model, tmp_path) if change.__name__ == "load" else change(model)) or model
    after = changed.forward(X)
    assert not np.array_equal(after, before)
    np.testing.assert_allclose(after, reference_logits(changed, X), rtol=1e-4, atol=1e-5)


def test_in_place_writes_into_the_weights_raise_instead_of_going_stale():
    model = MLP([12, 9, 3], seed=0)
    model.forward(data(4, 12))
    with pytest.raises(ValueError, match="read-only"):
        model.weights[0][0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        for b in model.biases:
            b += 1.0
    with pytest.raises(ValueError, match="read-only"):
        (model.weights + model.biases)[0][...] = 0.0
    # The views share the model's memory (no copy); an assignment puts a new array in.
    assert np.shares_memory(model.weights[0], model._weights.arrays()[0])
    model.weights[0] = np.zeros((9, 12))
    assert np.all(model.weights[0] == 0)


def test_the_pack_follows_the_active_isa():
    model = MLP([40, 30, 3], seed=0)
    X = data(9, 40)
    expected = {}
    for isa in fastmlp.ops.supported_isas():
        fastmlp.ops.set_isa(isa)
        expected[isa] = _core.mlp_forward(X, model._weights, model._biases, "relu")
    try:
        for isa in fastmlp.ops.supported_isas():
            fastmlp.ops.set_isa(isa)
            np.testing.assert_array_equal(model.forward(X), expected[isa])
    finally:
        fastmlp.ops.set_isa(fastmlp.ops.supported_isas()[-1])


def test_bfloat16_models_use_the_unpacked_bf16_path():
    model = MLP([64, 48, 4], seed=0, precision="bfloat16")
    X = data(20, 64)
    np.testing.assert_array_equal(
        model.forward(X), _core.mlp_forward(X, model._weights, model._biases, "relu", "bfloat16"))
    assert model.packed_nbytes == 0


def test_pickled_and_copied_models_drop_the_pack():
    import copy
    import pickle
    model = MLP([12, 9, 3], seed=0)
    X = data(6, 12)
    expected = model.forward(X)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert clone.packed_nbytes == 0
        np.testing.assert_array_equal(clone.forward(X), expected)
        clone.weights[0] = clone.weights[0] * 2  # the original's pack is untouched
    np.testing.assert_array_equal(model.forward(X), expected)


def test_weight_views_cannot_be_flagged_writeable_again():
    """NumPy lets a read-only view of a writeable array be flagged writeable again; a write
    through it would then bypass the pack (batch predictions silently kept the old weights)."""
    model = MLP([12, 9, 3], seed=0)
    X = data(25, 12, seed=4)
    model.forward(X)  # builds the pack
    for views in (model.weights, model.biases, model.weights + model.biases,
                  [model.weights[-1]], model.weights[0:1]):
        for view in views:
            with pytest.raises(ValueError, match="WRITEABLE"):
                view.flags.writeable = True
            with pytest.raises(ValueError):
                view.setflags(write=True)
            with pytest.raises(ValueError):
                view.T.flags.writeable = True
    assert np.shares_memory(model.weights[0], model._weights.arrays()[0])
    np.testing.assert_allclose(model.forward(X), reference_logits(model, X), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("assign", ["item", "list"])
def test_a_prediction_between_the_check_and_the_store_of_an_assignment_is_not_packed_stale(
        assign, monkeypatch):
    """An assignment validates the new array (dropping the pack) before storing it; another
    thread's prediction in between packed the old weights and the pack outlived the store."""
    model = MLP([12, 9, 3], seed=0)
    X = data(25, 12, seed=4)
    model.forward(X)
    drop = model._drop_pack

    def drop_then_predict():  # what a predicting thread can do right after the drop
        drop()
        model.forward(X)

    monkeypatch.setattr(model, "_drop_pack", drop_then_predict)
    if assign == "item":
        model.weights[0] = model.weights[0] * 0.5
    else:
        model.weights = [w * 0.5 for w in model.weights]
    monkeypatch.undo()
    np.testing.assert_allclose(model.forward(X), reference_logits(model, X), rtol=1e-4, atol=1e-5)


def test_an_optimizer_step_on_views_of_replaced_arrays_raises_instead_of_being_lost():
    """Views taken before an assignment map to the arrays the model dropped: the step went into
    them and the model never changed."""
    model = MLP([12, 9, 3], seed=0)
    X, y = data(20, 12, seed=5), np.arange(20) % 3
    params = model.weights + model.biases
    model.weights[0] = model.weights[0] * 0.5
    _, gw, gb = model.loss_and_grad(X, y)
    with pytest.raises(ValueError, match="no longer holds"):
        SGD(lr=1.0).step(params, gw + gb)
    before = [w.copy() for w in model.weights]
    SGD(lr=1.0).step(model.weights + model.biases, gw + gb)  # fresh views: the model changes
    assert not np.array_equal(model.weights[0], before[0])
    np.testing.assert_allclose(model.forward(X), reference_logits(model, X), rtol=1e-4, atol=1e-5)


def test_estimator_coefs_cannot_be_flagged_writeable_again():
    """coefs_ / intercepts_ view the model's weights: flagged writeable again, a write into
    them bypassed the model's pack as one into MLP.weights did."""
    pytest.importorskip("sklearn")
    from fastmlp.estimators import MLPClassifier
    X, y = data(30, 4, seed=6), np.arange(30) % 3
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=2, random_state=0)
    with pytest.warns(Warning):  # (max_iter=2 does not converge)
        clf.fit(X, y)
    for view in (*clf.coefs_, *clf.intercepts_):
        with pytest.raises(ValueError, match="WRITEABLE"):
            view.flags.writeable = True


# ---- one float32 row from the pack alone (PackedWeightsFloat32.forward_row)

def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
@pytest.mark.parametrize("sizes", [[784, 256, 256, 10], [7, 33, 5], [1, 16, 48, 17]])
def test_one_row_from_the_pack_alone_is_bitwise_the_general_path(sizes, activation):
    model = MLP(sizes, activation=activation, seed=3)
    model.biases = [np.random.default_rng(1).normal(size=b.shape) for b in model.biases]
    packed = _core.PackedWeightsFloat32(model._weights, model._biases, activation)
    for seed in range(3):
        x = data(1, sizes[0], seed)
        general = _core.mlp_predict_proba(x, model._weights, model._biases, activation,
                                          "float32", packed)
        row = packed.forward_row(x, softmax=True)
        logits = packed.forward_row(x, softmax=False)
        if fastmlp.ops.isa() != "avx512":  # the panels of other ISAs: the general path
            assert row is None and logits is None
            continue
        np.testing.assert_array_equal(row, general)
        np.testing.assert_array_equal(
            logits, _core.mlp_forward(x, model._weights, model._biases, activation,
                                      packed=packed))
        np.testing.assert_allclose(row, softmax(reference_logits(model, x, activation)),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(model.predict_proba(x), row)
        np.testing.assert_array_equal(model.forward(x), logits)  # (the model's own pack now)
        assert model.predict(x)[0] == np.argmax(logits)


def test_one_row_of_a_regression_model_from_the_pack():
    model = MLP([9, 20, 3], output="identity", seed=0)
    X = data(4, 9)
    expected = reference_logits(model, X)
    model.forward(X)  # packs
    for i in range(4):
        np.testing.assert_allclose(model.predict(X[i:i + 1]), expected[i:i + 1], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(model.forward(X[i:i + 1]), model.predict(X[i:i + 1]))


def test_the_one_row_path_declines_what_it_cannot_take_as_is():
    model = MLP([13, 8, 3], seed=0)
    packed = _core.PackedWeightsFloat32(model._weights, model._biases, "relu")
    x = data(2, 13)
    misaligned = np.frombuffer(np.zeros(14 * 4 + 1, np.uint8)[1:], np.float32)[:13].reshape(1, 13)
    misaligned[...] = x[:1]
    declined = [x,                                  # two rows
                x[:1].astype(np.float64),           # another dtype
                x[:1].astype(">f4"),                # another byte order
                data(1, 26)[:, ::2],                # not contiguous
                misaligned,
                data(1, 12),                        # another width
                x[0],                               # one dimension
                np.full((1, 13), np.nan, np.float32)]
    for X in declined:
        assert packed.forward_row(X, softmax=True) is None
        assert packed.forward_row(X, softmax=False) is None
    # ... and predict_proba then answers as for any input: the probabilities, or its error.
    for X in declined[:5]:
        np.testing.assert_allclose(model.predict_proba(X),
                                   softmax(reference_logits(model, np.asarray(X, np.float64))),
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="features"):
        model.predict_proba(declined[5])
    with pytest.raises(ValueError, match="NaN|finite"):
        model.predict_proba(declined[-1])


@pytest.mark.parametrize("change", changes(), ids=lambda f: f.__name__)
def test_every_change_of_the_weights_is_seen_by_the_next_one_row_prediction(change, tmp_path):
    model = MLP([12, 9, 3], seed=0)
    x = data(1, 12, seed=4)
    model.predict_proba(data(5, 12))  # builds the pack
    before = model.predict_proba(x)
    changed = (change(model, tmp_path) if change.__name__ == "load" else change(model)) or model
    after = changed.predict_proba(x)
    assert not np.array_equal(after, before)
    np.testing.assert_allclose(after, softmax(reference_logits(changed, x)), rtol=1e-4,
                               atol=1e-6)


def test_one_row_follows_the_active_isa_and_the_precision():
    import copy

    model = MLP([40, 30, 3], seed=0)
    x = data(1, 40)
    model.predict_proba(data(5, 40))  # packed for the active ISA
    try:
        for isa in fastmlp.ops.supported_isas():
            fastmlp.ops.set_isa(isa)
            fresh = copy.deepcopy(model)  # (a copy drops the pack: what this ISA computes)
            assert fresh.packed_nbytes == 0
            np.testing.assert_array_equal(model.predict_proba(x), fresh.predict_proba(x))
    finally:
        fastmlp.ops.set_isa(fastmlp.ops.supported_isas()[-1])
    model.predict_proba(data(5, 40))
    model.precision = "bfloat16"  # the pack stays, but is float32's
    np.testing.assert_array_equal(
        model.predict_proba(x),
        _core.mlp_predict_proba(x, model._weights, model._biases, "relu", "bfloat16"))


@pytest.mark.skipif(len(fastmlp.ops.supported_isas()) < 2, reason="one ISA: nothing to switch")
def test_switching_the_isa_while_other_threads_predict_neither_crashes_nor_corrupts():
    """A pack's panels are NR wide for the ISA active when it was built; set_isa from another
    thread may switch the kernels between a prediction's check of the pack and its GEMMs (or
    during the pack's construction). Every part of a call must use the pack's own NR: the
    32-wide AVX-512 panels read by 16-wide kernels corrupted the heap (glibc abort). Run in a
    child process so that a crash fails this test only."""
    result = run_python("""
        import threading
        import numpy as np
        from fastmlp import MLP, ops

        rng = np.random.default_rng(0)
        isas = ops.supported_isas()
        cases = []
        for dtype, rows in [("float32", 1), ("float32", 7), ("float64", 1), ("float64", 5)]:
            model = MLP([64, 96, 10], seed=0, dtype=dtype)
            X = rng.standard_normal((rows, 64)).astype(dtype)
            h = np.maximum(X.astype(np.float64) @ np.asarray(model.weights[0], np.float64).T
                           + model.biases[0], 0)
            cases.append((model, X, h @ np.asarray(model.weights[1], np.float64).T))
        stop, failures = threading.Event(), []

        def switch():
            i = 0
            while not stop.is_set():
                ops.set_isa(isas[i % len(isas)])
                i += 1

        def predict(model, X, expected):
            for i in range(3000):
                if i % 50 == 0:
                    model.weights[0] = model.weights[0]  # drops the pack: built again
                logits = model.forward(X)
                if not np.allclose(logits, expected, rtol=1e-4, atol=1e-4):
                    failures.append(np.abs(logits - expected).max())

        switcher = threading.Thread(target=switch)
        switcher.start()
        threads = [threading.Thread(target=predict, args=case) for case in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        switcher.join()
        print("failures", len(failures), failures[:3])
    """, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "failures 0 " in result.stdout, result.stdout
