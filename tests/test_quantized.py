"""int8 inference (MLP.quantize, fastmlp.quantized): the integer products exact against NumPy
on every int8 path, the quantization steps and the whole forward against a NumPy model of
the same arithmetic, accuracy against float32, and QuantizedMLP's API."""

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, QuantizedMLP, _core, _testing, ops
from fastmlp.datasets import load_digits
from fastmlp.quantized import quantize_weights

from _helpers import misaligned

F32 = np.float32

# Shapes (M, K, N): one row, primes, K not a multiple of 4, N not a multiple of 16 or 64,
# M not a multiple of any kernel's row tile (3, 4, 6).
SHAPES = [(1, 1, 1), (1, 784, 256), (2, 3, 5), (7, 13, 17), (13, 67, 129), (29, 256, 64),
          (64, 4, 65), (100, 301, 10), (5, 1031, 3)]


@pytest.fixture(params=ops.supported_int8_paths())
def int8_path(request):
    with _testing.int8_path(request.param):
        yield request.param


def test_paths_are_reported_and_follow_the_isa():
    assert ops.int8_path() in ops.supported_int8_paths()
    assert "portable" in ops.supported_int8_paths()
    previous = ops.isa()
    try:
        ops.set_isa("generic")
        assert ops.int8_path() == "portable"
    finally:
        ops.set_isa(previous)
    with pytest.raises(ValueError, match="unknown int8 path"):
        _testing.force_int8_path("amx")


@pytest.mark.parametrize("M, K, N", SHAPES)
def test_int8_products_are_exact(int8_path, M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    Xq = rng.integers(0, 256, (M, K), dtype=np.uint8)
    Wq = rng.integers(-127, 128, (N, K), dtype=np.int8)
    expected = Xq.astype(np.int32) @ Wq.astype(np.int32).T
    np.testing.assert_array_equal(_testing.int8_matmul(Xq, Wq), expected)


def test_int8_products_at_the_extremes_do_not_overflow(int8_path):
    K = 4099  # 255 · 127 · 4099 ≈ 1.3e8, far inside int32; every lane's pair sum at its limits
    Xq = np.full((3, K), 255, np.uint8)
    Wq = np.stack([np.full(K, 127), np.full(K, -127), np.resize([127, -127], K)]).astype(np.int8)
    expected = Xq.astype(np.int64) @ Wq.astype(np.int64).T
    np.testing.assert_array_equal(_testing.int8_matmul(Xq, Wq), expected)


# ---- the NumPy model of the arithmetic --------------------------------------------------------

def reference_params(lo, hi):
    """quant_params in float32, as the C++ does."""
    lo, hi = F32(min(lo, 0.0)), F32(max(hi, 0.0))
    with np.errstate(over="ignore"):
        scale = F32(hi - lo) / F32(255)
    if np.isinf(scale):  # a span beyond float32: divided first
        scale = hi / F32(255) - lo / F32(255)
    if not scale > 0:
        scale = F32(1)
    zero = int(np.clip(np.rint(F32(-lo) / scale), 0, 255))
    return scale, zero


def reference_quantize(x, scale, zero):
    """x (M,K) quantized with one (scale, zero), or with per-row arrays of them (M,)."""
    scale, zero = np.asarray(scale, F32), np.asarray(zero, np.int32)
    if scale.ndim:
        scale, zero = scale[:, None], zero[:, None]
    inverse = F32(1) / scale
    v = np.clip(np.asarray(x, F32) * inverse, (-zero).astype(F32), (255 - zero).astype(F32))
    return (np.rint(v).astype(np.int32) + zero).astype(np.uint8)


def reference_row_params(h):
    """Each row's (scale, zero point) from its own min and max (NaN skipped): arrays (M,)."""
    with np.errstate(invalid="ignore"):
        params = [reference_params(float(np.nanmin(row, initial=0)), float(np.nanmax(row, initial=0)))
                  for row in np.asarray(h, F32)]
    return (np.array([s for s, _ in params], F32), np.array([z for _, z in params], np.int32))


def reference_forward(model, qmodel_inputs, X, activation):
    """The logits the quantized model computes, in NumPy: the same float32 operations for the
    hidden layers (exact), the last layer in float64. Dynamic: each row's own scale."""
    h = np.asarray(X, F32)
    weights = [np.asarray(w, F32) for w in model.weights]
    biases = [np.asarray(b, F32) for b in model.biases]
    for l, (W, b) in enumerate(zip(weights[:-1], biases[:-1])):
        Wq, sw = quantize_weights(W)
        if qmodel_inputs[l] is None:
            scale, zero = reference_row_params(h)
        else:
            scale = np.full(len(h), qmodel_inputs[l][0], F32)
            zero = np.full(len(h), qmodel_inputs[l][1], np.int32)
        xq = reference_quantize(h, scale, zero)
        acc = xq.astype(np.int32) @ Wq.astype(np.int32).T
        corrected = acc - zero[:, None] * Wq.astype(np.int32).sum(axis=1)
        h = corrected.astype(F32) * (scale[:, None] * sw) + b
        h = {"relu": lambda a: np.maximum(a, F32(0)), "identity": lambda a: a,
             "tanh": np.tanh, "logistic": lambda a: F32(1) / (F32(1) + np.exp(-a))}[activation](h)
    return h.astype(np.float64) @ weights[-1].T.astype(np.float64) + biases[-1]


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (-3.0, 5.0), (-2.0, -1.0), (0.0, 0.0),
                                    (1e-30, 2e-30), (-1e30, 1e30), (-0.1, 700.0)])
def test_quant_params(lo, hi):
    assert _core.int8_quant_params(lo, hi) == pytest.approx(reference_params(lo, hi), rel=0)


def test_a_range_wider_than_float32_keeps_its_scale():
    """hi - lo overflowed to inf for lo, hi near ±3.4e38 and the scale fell back to 1, which
    clamped every input to 0 or 255: logits off by ~40 orders of magnitude, all finite."""
    big = float(np.finfo(F32).max) * 0.9
    scale, zero = _core.int8_quant_params(-big, big)
    assert scale == pytest.approx(2 * big / 255, rel=1e-6) and zero in (127, 128)
    model = MLP([4, 16, 3], seed=0)
    model.weights[0] = model.weights[0] * 1e-30  # the first layer's outputs stay ~1e8
    X = np.random.default_rng(0).uniform(-1, 1, size=(9, 4)).astype(F32) * F32(big)
    X[0, 0], X[1, 0] = big, -big
    expected = model.forward(X)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(model.quantize().forward(X), expected,
                               atol=0.05 * np.abs(expected).max())


def test_an_overflowing_hidden_activation_gives_nan_not_clamped_values():
    """A hidden layer whose float32 outputs overflow to inf: no int8 scale spans them (it fell
    back to 1 and clamped: finite garbage). The float32 model's logits are not finite there."""
    model = MLP([4, 8, 8, 3], seed=0)
    model.weights[0] = model.weights[0] * 1e30
    X = np.full((3, 4), 1e10, F32)
    assert not np.isfinite(model.forward(X)).all()
    assert np.isnan(model.quantize().forward(X)).all()
    with pytest.raises(ValueError, match="calibration's float32 activations at the input of "
                                         "layer 1 overflow"):
        model.quantize(calibration=X)


def test_quantize_rows_rounds_ties_to_even_and_clamps(int8_path):
    scale, zero = 0.5, 10
    # x / s = -5.5 … 250: ties at every .5 (exact in float32), below -z and above 255 - z
    x = np.array([[-6.0, -5.25, -2.75, -0.25, 0.25, 0.75, 1.25, 100.0, 122.25, 122.75, 125.0]],
                 F32)
    expected = reference_quantize(x, scale, zero)
    np.testing.assert_array_equal(_testing.quantize_rows(x, scale, zero), expected)
    assert expected[0, 0] == 0 and expected[0, -1] == 255  # clamped
    assert list(expected[0, 3:7]) == [10, 10, 12, 12]  # -0.5, 0.5, 1.5, 2.5 -> -0, 0, 2, 2
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(37, 101)).astype(F32) * 4
    for s, z in [(0.03, 128), (0.1, 0), (0.007, 255)]:
        np.testing.assert_array_equal(_testing.quantize_rows(wide, s, z),
                                      reference_quantize(wide, s, z))
        np.testing.assert_array_equal(_testing.quantize_rows(wide[:, ::3], s, z),
                                      reference_quantize(wide[:, ::3], s, z))


# Widths around the AVX-512 loops' steps (16 floats, 64 for the range), and strided columns.
@pytest.mark.parametrize("K", [1, 15, 16, 17, 63, 64, 65, 130])
def test_quantize_rows_reports_non_finite_inputs(int8_path, K):
    rng = np.random.default_rng(K)
    x = rng.normal(size=(5, K)).astype(F32)
    out, finite = _testing.quantize_rows_checked(x, 0.02, 100)
    assert finite
    np.testing.assert_array_equal(out, reference_quantize(x, 0.02, 100))
    for bad in (np.nan, np.inf, -np.inf):
        for i, p in [(0, 0), (4, K - 1), (2, K // 2)]:
            y = x.copy()
            y[i, p] = bad
            out, finite = _testing.quantize_rows_checked(y, 0.02, 100)
            assert not finite, (bad, i, p)
            # NaN quantizes to z - z = 0; ±inf to the bounds; the rest as before
            assert out[i, p] == {True: 0, False: 255 if bad > 0 else 0}[bool(np.isnan(bad))]
            keep = np.ones(y.shape, bool)
            keep[i, p] = False
            np.testing.assert_array_equal(out[keep], reference_quantize(x, 0.02, 100)[keep])
        strided = y[:, ::2]  # the portable loop over strided columns
        assert _testing.quantize_rows_checked(strided, 0.02, 100)[1] == np.isfinite(strided).all()


@pytest.mark.parametrize("K", [1, 15, 16, 17, 63, 64, 65, 130])
def test_tensor_range_skips_and_reports_nan(int8_path, K):
    rng = np.random.default_rng(K)
    x = rng.normal(size=(6, K)).astype(F32) + F32(3)  # all > 0 for most K: 0 still in range
    lo, hi, has_nan = _testing.tensor_range(x)
    assert (lo, hi, has_nan) == (min(F32(0), x.min()), max(F32(0), x.max()), False)
    x[5, K - 1] = -7.5
    x[0, 0] = 9.25
    assert _testing.tensor_range(x) == (-7.5, max(9.25, x.max()), False)
    x[3, K // 2] = np.nan
    lo, hi, has_nan = _testing.tensor_range(x)
    assert has_nan and lo == np.nanmin(x) and hi == np.nanmax(x)
    assert _testing.tensor_range(x[:, ::2])[2] == bool(np.isnan(x[:, ::2]).any())
    x[3, K // 2] = -np.inf
    assert _testing.tensor_range(x) == (-np.inf, max(9.25, x.max()), False)


@pytest.mark.parametrize("activation", ["relu", "identity", "tanh", "logistic"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("sizes", [[30, 17, 5], [784, 256, 256, 10], [11, 64, 3, 7, 2]])
def test_forward_matches_the_numpy_model(int8_path, sizes, activation, static):
    rng = np.random.default_rng(len(sizes))
    model = MLP(sizes, activation=activation, seed=2)
    model.biases = [rng.normal(scale=0.1, size=b.shape) for b in model.biases]
    X = rng.normal(size=(23, sizes[0])).astype(F32)
    quantized = model.quantize(calibration=X[:9] if static else None)
    inputs = [q for *_, q in quantized._hidden]
    assert all((q is not None) == static for q in inputs)
    expected = reference_forward(model, inputs, X, activation)
    # relu and identity: the hidden layers are the same float32 operations, exact; tanh and
    # logistic: the core's own functions differ from NumPy's by an ulp, which can move a
    # requantized value by one step.
    tolerance = 2e-5 if activation in ("relu", "identity") else 2e-2
    scale = np.abs(expected).max()
    np.testing.assert_allclose(quantized.forward(X), expected, rtol=0, atol=tolerance * scale)


# The last layer runs in blocks of 32 outputs (the last one 16 wide where ≤ 16 are left), with
# kernels of its own on AVX512-VNNI (a 16-wide block: 16 rows a block, transposed 8 inputs at
# a time, or 12, 4 or 1 rows a tile below 16 rows; a 32-wide one: 12, 6 or 1 rows a tile; the
# last block of rows overlapping the one before): batches around the row blocks, outputs
# around the column blocks, inputs (43) not a multiple of 8.
@pytest.mark.parametrize("n_out", [1, 2, 7, 10, 15, 16, 17, 32, 33, 48, 49, 64, 100])
def test_last_layer_matches_the_numpy_model_at_every_batch(int8_path, n_out):
    rng = np.random.default_rng(n_out)
    model = MLP([19, 43, n_out], output="identity", seed=1)
    model.biases = [rng.normal(scale=0.1, size=b.shape) for b in model.biases]
    X = rng.normal(size=(37, 19)).astype(F32)
    quantized = model.quantize(calibration=X)
    inputs = [q for *_, q in quantized._hidden]
    for batch in (1, 5, 6, 7, 11, 12, 13, 15, 16, 17, 24, 31, 32, 37):
        expected = reference_forward(model, inputs, X[:batch], "relu")
        np.testing.assert_allclose(quantized.forward(X[:batch]), expected, rtol=0,
                                   atol=2e-5 * np.abs(expected).max())


def test_static_calibration_clamps_and_ignores_the_batch():
    rng = np.random.default_rng(0)
    model = MLP([20, 16, 3], seed=0)
    X = rng.normal(size=(50, 20)).astype(F32)
    static = model.quantize(calibration=X)
    # Static: one scale for every row, clamped to the calibration's range: an outlier beside
    # a row changes nothing of it (as for dynamic scales, now per row: test_quantized_rows.py).
    np.testing.assert_array_equal(static.forward(X[:1]), static.forward(X)[:1])
    outlier = np.vstack([X[:1], 100 * X[1:2]])
    np.testing.assert_array_equal(static.forward(outlier)[:1], static.forward(X[:2])[:1])
    assert np.abs(static.forward(outlier)[1] - model.forward(outlier)[1]).max() > 1  # clamped


# ---- accuracy ---------------------------------------------------------------------------------

def digits_split(scale):
    X, y = load_digits()
    order = np.random.default_rng(0).permutation(len(y))
    X, y = (X[order] * scale).astype(F32), y[order]
    return X[:1400], y[:1400], X[1400:], y[1400:]


@pytest.mark.parametrize("name, sizes, scale", [("digits", [64, 256, 256, 10], 1.0),
                                                 ("demo", [64, 128, 10], 1 / 16)])
def test_accuracy_within_half_a_point_of_float32(name, sizes, scale):
    """digits: raw pixel counts 0..16 through two hidden layers; demo: `fastmlp demo`'s net
    and scaling. The largest probability difference is printed for the record."""
    Xtr, ytr, Xte, yte = digits_split(scale)
    model = MLP(sizes, seed=0)
    model.fit(Xtr, ytr, epochs=20, batch_size=32, optimizer=fastmlp.Adam(lr=3e-3), seed=0)
    reference = model.score(Xte, yte)
    probabilities = model.predict_proba(Xte)
    for quantized in (model.quantize(), model.quantize(calibration=Xtr[:200])):
        accuracy = quantized.score(Xte, yte)
        difference = np.abs(quantized.predict_proba(Xte) - probabilities).max()
        print(f"{name} {quantized.calibration}: float32 {reference:.4f} int8 {accuracy:.4f} "
              f"max |Δp| {difference:.4f}")
        assert abs(accuracy - reference) <= 0.005
        assert difference < 0.5


# ---- the QuantizedMLP API -----------------------------------------------------------------------

@pytest.mark.parametrize("output, n_out", [("softmax", 3), ("sigmoid", 1), ("identity", 2),
                                           ("multilabel", 4), ("poisson", 2)])
def test_every_output_kind_predicts_like_mlp_on_its_logits(output, n_out):
    model = MLP([6, 8, n_out], output=output, seed=0)
    X = np.random.default_rng(1).normal(size=(15, 6))
    quantized = model.quantize()
    logits = quantized.forward(X)
    np.testing.assert_array_equal(quantized.predict(X), model._predict_logits(logits))
    if model.is_classifier:
        assert quantized.predict_proba(X).shape == model.predict_proba(X).shape
    else:
        with pytest.raises(TypeError, match="predict_proba needs a classifier"):
            quantized.predict_proba(X)
    np.testing.assert_allclose(logits, model.forward(X), atol=0.1 * np.abs(logits).max())


def test_a_net_without_hidden_layers_is_float32():
    model = MLP([5, 3], seed=0)
    X = np.random.default_rng(0).normal(size=(4, 5))
    np.testing.assert_allclose(model.quantize().forward(X), model.forward(X), rtol=1e-6)


def test_validation_is_mlp_s():
    model = MLP([4, 6, 3], seed=0)
    quantized = model.quantize()
    for bad, error in [(np.zeros((2, 5)), ValueError), (np.zeros(4), ValueError),
                       (np.array([[1, 2, np.nan, 4]]), ValueError),
                       (np.array([["a", "b", "c", "d"]]), TypeError), (np.zeros((0, 4)), ValueError)]:
        with pytest.raises(error) as from_mlp:
            model.predict(bad)
        with pytest.raises(error, match=str(from_mlp.value).split("(")[0][:30]):
            quantized.predict(bad)
    with pytest.raises(ValueError, match=r"y\[1\] = 7 is out of range"):
        quantized.score(np.zeros((2, 4)), [0, 7])
    with pytest.raises(ValueError, match="dtype must be 'int8'"):
        model.quantize("int4")
    with pytest.raises(ValueError, match="calibration has 5 features"):
        model.quantize(calibration=np.zeros((3, 5)))
    assert repr(quantized) == ("QuantizedMLP([4, 6, 3], activation='relu', output='softmax', "
                               "int8 hidden layers, dynamic)")


@pytest.mark.parametrize("static", [False, True])
def test_predict_proba_in_one_call_is_the_general_path(int8_path, static):
    """A C-contiguous float32 X goes through the core in one call (finite check, forward,
    softmax): the very bits of softmax(forward(X)); other layouts and dtypes take the general
    path, with the same probabilities; a non-finite X gets predict's error."""
    rng = np.random.default_rng(0)
    model = MLP([37, 29, 11, 5], seed=0)
    quantized = model.quantize(calibration=rng.normal(size=(50, 37)) if static else None)
    for batch in (1, 2, 7, 300):
        X = rng.normal(size=(batch, 37)).astype(np.float32)
        expected = _core.softmax(quantized.forward(X))
        assert quantized._probabilities_in_one_call(X) is not None
        np.testing.assert_array_equal(quantized.predict_proba(X), expected)
        for other in (X.astype(np.float64), np.repeat(X, 2, axis=1)[:, ::2], X.tolist(),
                      misaligned(X)):
            assert quantized._probabilities_in_one_call(other) is None
            np.testing.assert_array_equal(quantized.predict_proba(other), expected)
    # (The first layer's range pass (dynamic) or quantization (static) finds them, SIMD body
    # and tail.)
    for bad in (np.nan, np.inf, -np.inf):
        for column in (3, 30, 35):
            X = rng.normal(size=(4, 37)).astype(np.float32)
            X[2, column] = bad
            assert quantized._network.predict_proba(X) is None
            with pytest.raises(ValueError,
                               match=r"X contains NaN or infinity \(first at row 2\)"):
                quantized.predict_proba(X)


def test_sparse_input_is_accepted():
    sp = pytest.importorskip("scipy.sparse")
    model = MLP([10, 6, 3], seed=0)
    X = sp.random(8, 10, density=0.3, random_state=0, format="csr", dtype=np.float64)
    quantized = model.quantize()
    np.testing.assert_array_equal(quantized.predict(X), quantized.predict(X.toarray()))


def test_quantized_model_is_a_snapshot():
    model = MLP([8, 6, 3], seed=0)
    X = np.random.default_rng(0).normal(size=(5, 8))
    quantized = model.quantize()
    before = quantized.forward(X)
    model.weights[0] = model.weights[0] * 3
    np.testing.assert_array_equal(quantized.forward(X), before)


@pytest.mark.parametrize("static", [False, True])
def test_save_and_load_round_trip(tmp_path, static):
    model = MLP([12, 9, 7, 3], activation="tanh", seed=0)
    X = np.random.default_rng(0).normal(size=(20, 12))
    quantized = model.quantize(calibration=X if static else None)
    path = tmp_path / "q.npz"
    quantized.save(path)
    loaded = QuantizedMLP.load(path)
    assert repr(loaded) == repr(quantized)
    np.testing.assert_array_equal(loaded.predict_proba(X), quantized.predict_proba(X))
    with np.load(path, allow_pickle=False) as archive:  # no pickled objects
        assert archive["Wq0"].dtype == np.int8


def test_load_refuses_what_is_not_a_quantized_model(tmp_path):
    model = MLP([4, 6, 3], seed=0)
    model.save(tmp_path / "float.npz")
    with pytest.raises(ValueError, match="not a valid fastmlp QuantizedMLP: format is"):
        QuantizedMLP.load(tmp_path / "float.npz")
    model.quantize().save(tmp_path / "q.npz")
    with np.load(tmp_path / "q.npz") as archive:
        arrays = dict(archive)
    arrays["Wq0"] = arrays["Wq0"].astype(np.int16)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="entry 'Wq0' is a int16 array"):
        QuantizedMLP.load(tmp_path / "bad.npz")
    arrays["Wq0"] = arrays["Wq0"].astype(np.int8)
    del arrays["last_W"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ValueError, match="missing entry 'last_W'"):
        QuantizedMLP.load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError):
        QuantizedMLP.load(tmp_path / "text.npz")


def _edited_archive(tmp_path, **entries):
    MLP([4, 6, 3], seed=0).quantize(calibration=np.eye(4)).save(tmp_path / "q.npz")
    with np.load(tmp_path / "q.npz") as archive:
        arrays = dict(archive)
    arrays.update(entries)
    np.savez(tmp_path / "edited.npz", **arrays)
    return tmp_path / "edited.npz"


@pytest.mark.parametrize("entry, value, message", [
    ("scale0", -np.ones(6, F32), "weight scales must be > 0"),
    ("scale0", np.zeros(6, F32), "weight scales must be > 0"),
    ("scale0", np.full(6, np.nan, F32), "weight scales contains NaN"),
    ("scale0", np.full(6, np.inf, F32), "weight scales contains NaN"),
    ("b0", np.full(6, np.nan, F32), "biases contains NaN"),
    ("last_W", np.full((3, 6), np.inf, F32), "last layer's weights contains NaN"),
    ("last_b", np.full(3, np.nan, F32), "last layer's biases contains NaN"),
    ("Wq0", np.full((6, 4), -128, np.int8), "hold -128"),
    ("input0", np.array([0.01, 2.7]), "zero point must be an integer in"),
    ("input0", np.array([0.01, 1e30]), "zero point must be an integer in"),
    ("input0", np.array([0.01, np.nan]), "zero point must be an integer in"),
    ("layer_sizes", np.array([4.5, 6, 3]), "expected 1-D integers"),
    # (int() of these is 1: a newer 1.5 or a string loaded as version 1)
    ("format_version", np.array(1.5), "format_version must be an integer scalar"),
    ("format_version", np.array("1"), "format_version must be an integer scalar"),
    ("format_version", np.array([1]), "format_version must be an integer scalar"),
])
def test_load_refuses_hand_edited_values_that_would_compute_garbage(tmp_path, entry, value,
                                                                    message):
    """Each of these loaded and predicted finite garbage (NaN scales and biases turned to 0 by
    the ReLU epilogue), or raised a RuntimeError (a zero point beyond int)."""
    with pytest.raises(ValueError, match="not a valid fastmlp QuantizedMLP: .*" + message):
        QuantizedMLP.load(_edited_archive(tmp_path, **{entry: value}))


# ---- the estimators' quantize -------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter capped
def test_estimators_quantize_keeps_the_sklearn_api():
    pytest.importorskip("sklearn")
    import pickle
    from fastmlp.estimators import MLPClassifier, MLPRegressor
    X, y = load_digits()
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                       "nine"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=30, random_state=0).fit(X[:1200],
                                                                                   labels[:1200])
    for quantized in (clf.quantize(), clf.quantize(calibration=X[:100])):
        predicted = quantized.predict(X[1200:])
        assert predicted.dtype == clf.classes_.dtype and set(predicted) <= set(clf.classes_)
        assert abs(quantized.score(X[1200:], labels[1200:]) - clf.score(X[1200:], labels[1200:])) \
            <= 0.005
        proba = quantized.predict_proba(X[1200:])
        assert proba.shape == (len(X) - 1200, 10)
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
        assert np.abs(proba - clf.predict_proba(X[1200:])).max() < 0.5
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(quantized)).predict(X[1200:]),
                                      predicted)
        with pytest.raises(TypeError, match="quantized for inference"):
            quantized.fit(X, labels)
        with pytest.raises(TypeError, match="quantized for inference"):
            quantized.partial_fit(X, labels)
        with pytest.raises(TypeError, match="quantized for inference"):
            quantized.coefs_
        # (also an AttributeError: hasattr and getattr with a default must not raise)
        assert not hasattr(quantized, "coefs_") and getattr(quantized, "intercepts_", 7) == 7
        with pytest.raises(TypeError, match="quantized for inference.*no quantize"):
            quantized.quantize()  # (was AttributeError: 'QuantizedMLP' has no 'quantize')
    assert clf.predict(X[:5]).shape == (5,)  # the original is untouched and still fits
    clf.partial_fit(X[:50], labels[:50])
    reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=50, random_state=0).fit(X, y * 1.0)
    quantized = reg.quantize()
    assert quantized.predict(X).shape == (len(X),)
    assert quantized.score(X, y * 1.0) > reg.score(X, y * 1.0) - 0.02
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        MLPClassifier().quantize()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter capped
def test_the_original_training_on_does_not_change_the_quantized_copy():
    """The copy shared the original's lists: a warm-started fit (or a partial_fit) of the
    original appended to the quantized copy's loss_curve_ and validation curves."""
    pytest.importorskip("sklearn")
    from fastmlp.estimators import MLPClassifier
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(F32)
    y = (X[:, 0] > 0).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, warm_start=True,
                        early_stopping=True).fit(X, y)
    quantized = clf.quantize()
    curves = {name: list(getattr(quantized, name))
              for name in ("loss_curve_", "validation_scores_", "validation_loss_curve_")}
    proba = quantized.predict_proba(X)
    clf.fit(X, y)
    assert len(clf.loss_curve_) > len(curves["loss_curve_"])
    for name, curve in curves.items():
        assert getattr(quantized, name) == curve, name
    np.testing.assert_array_equal(quantized.predict_proba(X), proba)


def test_static_calibration_of_a_saturated_logistic_net_warns_nothing():
    """e^-a overflows (float32: a < -88): the logistic is 0 there, no NumPy warning (the
    calibration applies it to the first layer's outputs, the second layer's inputs)."""
    import warnings
    model = MLP([4, 8, 8, 3], activation="logistic", seed=0)
    model.weights = [w * 100 for w in model.weights]
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(F32) * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantized = model.quantize(calibration=X)
    assert np.isfinite(quantized.predict_proba(X)).all()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter capped
def test_an_estimators_bad_calibration_sample_is_named_as_such():
    pytest.importorskip("sklearn")
    from fastmlp.estimators import MLPClassifier
    X = np.random.default_rng(0).normal(size=(40, 5)).astype(F32)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, X[:, 0] > 0)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="^calibration: .*NaN"):
        clf.quantize(calibration=bad)
    with pytest.raises(ValueError, match="^calibration: .*5 features"):
        clf.quantize(calibration=X[:, :4])


@pytest.mark.parametrize("rows", [1, 5, 64, 300])
def test_split_over_threads_gives_the_same_result(int8_path, rows):
    model = MLP([70, 200, 130, 3], seed=0)
    X = np.random.default_rng(rows).normal(size=(rows, 70)).astype(F32)
    quantized = model.quantize()
    previous = fastmlp.get_num_threads()
    try:
        fastmlp.set_num_threads(1)
        one = quantized.forward(X)
        fastmlp.set_num_threads(2)
        with _testing.split_every_product():
            np.testing.assert_array_equal(quantized.forward(X), one)
    finally:
        fastmlp.set_num_threads(previous)
