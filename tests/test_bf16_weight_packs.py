"""bfloat16 training keeps every W rounded and packed between steps (src/cpp/trainer.h's packs,
written by the fused update): it must train bitwise as packing W in every product does, follow
every change of the weights made outside the engine's steps, and agree with the NumPy
reference that rounds the same operands, on every ISA. Oracles: the same training with the
packs switched off (_testing.bf16_weight_packs), test_precision's rounded reference."""

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing, ops
from _helpers import run_python
from test_precision import data, two_layer_reference

# Where the products can read packs (the avx512bf16 path); elsewhere the engine must never
# build one, and training is the same either way.
PACKS_RUN = "avx512bf16" in ops.supported_bf16_paths()


def fit_pair(make_model, fit, packs_disabled_too=True):
    """(model trained with the packs, model trained without), each made by make_model() and
    trained by fit(model) on the GEMM layout."""
    models = []
    for packs in (True, False) if packs_disabled_too else (True,):
        model = make_model()
        with _testing.layout("rows"), _testing.bf16_weight_packs(packs):
            fit(model)
        models.append(model)
    return models


def assert_same_parameters(a, b):
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x, y)


# Odd widths (a pair of k half padding), widths past and short of the 32-column panels and
# the 12-row tiles, three layers, a last batch shorter than the rest.
NETS = [([70, 37, 5], 32, 150), ([33, 65, 31, 3], 17, 120), ([64, 96, 10], 64, 256)]
OPTIMIZERS = {"sgd": lambda: fastmlp.SGD(lr=0.05),
              "momentum": lambda: fastmlp.SGD(lr=0.05, momentum=0.9, nesterov=True),
              "adam": lambda: fastmlp.Adam(lr=1e-3)}


@pytest.mark.parametrize("sizes,batch,n", NETS)
@pytest.mark.parametrize("rule", sorted(OPTIMIZERS))
def test_packs_train_bitwise_like_packing_every_product(sizes, batch, n, rule):
    X, y = data(n=n, n_in=sizes[0], k=sizes[-1], seed=4)
    builds, steps = _testing.bf16_weight_pack_counts()
    with_packs, without = fit_pair(
        lambda: fastmlp.MLP(sizes, seed=0, precision="bfloat16"),
        lambda m: m.fit(X, y, epochs=3, batch_size=batch, optimizer=OPTIMIZERS[rule](), seed=1,
                        alpha=1e-3 if rule == "momentum" else 0.0))
    assert_same_parameters(with_packs, without)
    # the packs were really read: built once per epoch, then kept by the fused update
    new_builds, new_steps = _testing.bf16_weight_pack_counts()
    per_epoch = -(-n // batch)
    expected = (3, 3 * per_epoch) if PACKS_RUN else (0, 0)
    assert (new_builds - builds, new_steps - steps) == expected


def test_threads_and_split_products_read_the_packs_alike():
    """Products split over two threads read their columns of the packs (split.h's offsets)."""
    X, y = data(n=128, n_in=300, k=7, seed=5)
    previous = fastmlp.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            fastmlp.set_num_threads(threads)
            with _testing.split_every_product():
                results += fit_pair(
                    lambda: fastmlp.MLP([300, 70, 7], seed=0, precision="bfloat16"),
                    lambda m: m.fit(X, y, epochs=2, batch_size=64,
                                    optimizer=fastmlp.SGD(lr=0.05), seed=0))
    finally:
        fastmlp.set_num_threads(previous)
    for other in results[1:]:
        assert_same_parameters(results[0], other)


def test_packs_follow_the_weights_changed_between_epochs():
    """A callback runs between two epochs of the same engine: weights moved in place by
    Optimizer.step, and the ISA switched away from the packs' path and back, must be seen by
    the next epoch's products (the packs are rebuilt), exactly as without packs."""
    X, y = data(n=96, n_in=70, seed=6)
    isas = ops.supported_isas()

    def callback(model, history):
        epoch = len(history.loss)
        if epoch == 1:  # a step of another optimizer on the model's own arrays, in place
            loss, grad_W, grad_b = model.loss_and_grad(X[:10], y[:10])
            fastmlp.SGD(lr=0.5).step(model.weights + model.biases, grad_W + grad_b)
        elif epoch == 2:
            ops.set_isa(isas[0])  # generic: the portable path, no packs
        elif epoch == 3:
            ops.set_isa(isas[-1])

    previous = ops.isa()
    try:
        with_packs, without = fit_pair(
            lambda: fastmlp.MLP([70, 37, 5], seed=0, precision="bfloat16"),
            lambda m: m.fit(X, y, epochs=5, batch_size=32, optimizer=fastmlp.SGD(lr=0.05),
                            seed=2, callbacks=[callback]))
    finally:
        ops.set_isa(previous)
    assert_same_parameters(with_packs, without)


def test_packs_follow_assignment_load_and_partial_fit(tmp_path):
    X, y = data(n=96, n_in=70, seed=7)
    W0 = np.random.default_rng(8).normal(scale=0.1, size=(37, 70)).astype(np.float32)

    def fit(model):
        model.fit(X, y, epochs=1, batch_size=32, optimizer=fastmlp.SGD(lr=0.05), seed=0)
        model.weights[0] = W0  # assignment between two fits
        model.fit(X, y, epochs=1, batch_size=32, optimizer=fastmlp.SGD(lr=0.05), seed=1)
        path = tmp_path / "model.npz"
        model.save(path)
        loaded = fastmlp.MLP.load(path)
        loaded.fit(X, y, epochs=1, batch_size=32, optimizer=fastmlp.SGD(lr=0.05), seed=2)
        model.weights, model.biases = loaded.weights, loaded.biases

    assert_same_parameters(*fit_pair(
        lambda: fastmlp.MLP([70, 37, 5], seed=0, precision="bfloat16"), fit))

    def estimator():
        return fastmlp.MLPClassifier(hidden_layer_sizes=(37,), precision="bfloat16",
                                     solver="sgd", batch_size=32, random_state=0)
    fitted = []
    for packs in (True, False):
        with _testing.layout("rows"), _testing.bf16_weight_packs(packs):
            est = estimator()
            for part in range(3):
                est.partial_fit(X[part::3], y[part::3], classes=np.arange(5))
        fitted.append(est)
    for a, b in zip(fitted[0].coefs_ + fitted[0].intercepts_,
                    fitted[1].coefs_ + fitted[1].intercepts_):
        np.testing.assert_array_equal(a, b)


def test_a_rejected_step_leaves_the_weights_and_the_packs_behind():
    """A step whose update overflows (finite loss and gradients, lr · gradient past float32's
    range in some tiles) is undone, including whatever the fused update had already written
    into the packs: the weights are as before it, and training on from them is the same with
    and without packs."""
    X, y = data(n=64, n_in=70, seed=9)
    X_huge = X[:32] * np.float32(1e18)

    def fit(model):
        before = [w.copy() for w in model.weights]
        with pytest.raises(FloatingPointError):
            model.fit(X_huge, y[:32], epochs=1, batch_size=32,
                      optimizer=fastmlp.SGD(lr=1e23), shuffle=False)
        for w, old in zip(model.weights, before):
            np.testing.assert_array_equal(w, old)
        model.fit(X, y, epochs=2, batch_size=16, optimizer=fastmlp.SGD(lr=0.05), shuffle=False)

    assert_same_parameters(*fit_pair(
        lambda: fastmlp.MLP([70, 37, 5], seed=0, precision="bfloat16"), fit))


@pytest.mark.usefixtures("isa")
def test_steps_on_the_packs_match_the_rounded_reference():
    """Three SGD steps in one epoch (steps 2 and 3 read the packs the fused update wrote)
    against the NumPy reference applied step after step, on every ISA (conftest's `isa`)."""
    X, y = data(n=192, n_in=70, seed=10)
    model = fastmlp.MLP([70, 37, 5], seed=3, precision="bfloat16")
    reference = fastmlp.MLP([70, 37, 5], seed=3)
    for first in range(0, 192, 64):
        _, _, grad_W, grad_b = two_layer_reference(reference, X[first:first + 64],
                                                   y[first:first + 64])
        params = reference.weights + reference.biases
        reference.weights, reference.biases = (
            [p - np.float32(0.1) * g for p, g in zip(params[:2], grad_W)],
            [p - np.float32(0.1) * g for p, g in zip(params[2:], grad_b)])
    with _testing.layout("rows"):
        model.fit(X, y, epochs=1, batch_size=64, optimizer=fastmlp.SGD(lr=0.1), shuffle=False)
    for got, ref in zip(model.weights + model.biases, reference.weights + reference.biases):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa_name", ["generic", "avx2", "avx512"])
def test_fastmlp_isa_forced_trains_alike_with_and_without_packs(isa_name):
    """FASTMLP_ISA in a fresh process: packs only on the avx512bf16 path, the same weights
    either way."""
    if isa_name not in ops.supported_isas():
        pytest.skip(f"this CPU does not run {isa_name}")
    proc = run_python("""
        import numpy as np, fastmlp
        from fastmlp import _testing, ops
        rng = np.random.default_rng(0)
        X = rng.normal(size=(100, 45)).astype(np.float32); y = rng.integers(0, 3, 100)
        out = []
        for packs in (True, False):
            m = fastmlp.MLP([45, 33, 3], seed=0, precision="bfloat16")
            with _testing.layout("rows"), _testing.bf16_weight_packs(packs):
                m.fit(X, y, epochs=2, batch_size=20, optimizer=fastmlp.SGD(lr=0.1), seed=0)
            out.append(m.weights + m.biases)
        assert all(np.array_equal(a, b) for a, b in zip(*out))
        print(ops.bf16_path(), _testing.bf16_weight_pack_counts())
        """, {"FASTMLP_ISA": isa_name})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path, counts = proc.stdout.split(maxsplit=1)
    assert counts.strip() == ("(2, 10)" if path == "avx512bf16" else "(0, 0)")
