"""Property-based tests (hypothesis) over the ops and the model API: for any shape, dtype,
layout and values (NaN, ±Inf, extremes included) each call either matches the NumPy
reference or raises ValueError / TypeError. Layouts that could crash a native extension
run in a subprocess, so a segmentation fault fails the test instead of killing the run."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastmlp import MLP, ops

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOATS = st.sampled_from([np.float32, np.float64])
BAD_DTYPES = st.sampled_from([np.int32, np.int64, np.bool_, np.float16, np.complex64, object])
SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e3, 1e3])


@st.composite
def arrays(draw, dtype, shape):
    """Values in ±1e3 (sums of products cannot overflow float32) with NaN/±Inf sprinkled in,
    in a random layout: C, Fortran, transposed view, strided or reversed view."""
    base = draw(hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=32)))
    if base.size and draw(st.booleans()):
        flat = base.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, base.size - 1))] = draw(SPECIALS)
    layout = draw(st.sampled_from(["C", "F", "T", "strided", "reversed"]))
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "T" and base.ndim == 2:
        return np.ascontiguousarray(base.T).T
    if layout == "strided":
        big = np.zeros(tuple(2 * s for s in base.shape), dtype)
        big[tuple(slice(None, None, 2) for _ in base.shape)] = base
        return big[tuple(slice(None, None, 2) for _ in base.shape)]
    if layout == "reversed":
        return np.ascontiguousarray(base[tuple(slice(None, None, -1) for _ in base.shape)])[
            tuple(slice(None, None, -1) for _ in base.shape)]
    return base


def assert_matches(got, want, dtype, k=1):
    want = np.asarray(want)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 64 * max(k, 1) * float(np.finfo(dtype).eps) * 1e6  # values ≤ 1e3: products ≤ 1e6
    np.testing.assert_allclose(got, want.astype(dtype), rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=tol, equal_nan=True)


@SETTINGS
@given(data=st.data(), dtype=FLOATS, m=st.integers(0, 24), n=st.integers(0, 24),
       k=st.integers(0, 24), trans_a=st.booleans(), trans_b=st.booleans())
def test_matmul_matches_numpy_or_raises(data, dtype, m, n, k, trans_a, trans_b):
    a = data.draw(arrays(dtype, (k, m) if trans_a else (m, k)))
    b = data.draw(arrays(dtype, (n, k) if trans_b else (k, n)))
    with np.errstate(all="ignore"):
        want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    assert_matches(ops.matmul(a, b, trans_a, trans_b), want, dtype, k)


@SETTINGS
@given(data=st.data(), dtype=FLOATS, b=st.integers(0, 12), i=st.integers(0, 12),
       o=st.integers(1, 12), activation=st.sampled_from(["relu", "tanh", "logistic", "identity"]))
def test_dense_layers_match_numpy(data, dtype, b, i, o, activation):
    x = data.draw(arrays(dtype, (b, i)))
    W = data.draw(arrays(dtype, (o, i)))
    bias = data.draw(hnp.arrays(dtype, o, elements=st.floats(-1e3, 1e3, width=32)))
    with np.errstate(all="ignore"):
        a = x.astype(np.float64) @ W.T.astype(np.float64) + bias
        want = {"relu": lambda v: np.where(np.isnan(v), v, np.maximum(v, 0)), "tanh": np.tanh,
                "logistic": lambda v: 1 / (1 + np.exp(-v)), "identity": lambda v: v}[activation](a)
    out = ops.dense_forward(x, W, bias, activation)
    assert_matches(out, want, dtype, i)
    grad_out = data.draw(hnp.arrays(dtype, (b, o), elements=st.floats(-10, 10, width=32)))
    grad_x, grad_W, grad_b = ops.dense_backward(x, W, out, grad_out, activation)
    assert grad_x.shape == (b, i) and grad_W.shape == (o, i) and grad_b.shape == (o,)
    if np.isfinite(x).all() and np.isfinite(W).all() and np.isfinite(out).all():
        out64 = out.astype(np.float64)
        slope = {"relu": (out64 > 0).astype(float), "tanh": 1 - out64 ** 2,
                 "logistic": out64 * (1 - out64), "identity": np.ones_like(out64)}[activation]
        grad_a = grad_out * slope
        assert_matches(grad_b, grad_a.sum(0), dtype, b)
        assert_matches(grad_W, grad_a.T @ x.astype(np.float64), dtype, b)


@SETTINGS
@given(data=st.data(), dtype=FLOATS, n=st.integers(1, 9), k=st.integers(1, 4))
def test_squared_error_matches_numpy(data, dtype, n, k):
    pred = data.draw(hnp.arrays(dtype, (n, k), elements=st.floats(-1e3, 1e3, width=32)))
    target = data.draw(hnp.arrays(dtype, (n, k), elements=st.floats(-1e3, 1e3, width=32)))
    loss, grad = ops.squared_error(pred, target)
    diff = pred.astype(np.float64) - target
    assert loss == pytest.approx(0.5 * (diff ** 2).sum(1).mean(), rel=1e-5, abs=1e-6)
    assert_matches(grad, diff / n, dtype)


@SETTINGS
@given(data=st.data(), dtype=FLOATS, bad=BAD_DTYPES, m=st.integers(1, 5), k=st.integers(1, 5))
def test_matmul_rejects_other_dtypes_and_shapes(data, dtype, bad, m, k):
    good = np.ones((m, k), dtype)
    with pytest.raises(TypeError):
        ops.matmul(good, np.ones((k, 3), bad))
    with pytest.raises(TypeError):
        ops.matmul(good, np.ones((k, 3), np.float64 if dtype == np.float32 else np.float32))
    with pytest.raises(ValueError):
        ops.matmul(good, np.ones((k + 1, 3), dtype))
    with pytest.raises(ValueError):
        ops.matmul(good, np.ones(k, dtype))


@SETTINGS
@given(data=st.data(), dtype=FLOATS, rows=st.integers(1, 9), cols=st.integers(1, 9),
       scale=st.sampled_from([1.0, 1e2, 1e4]))
def test_softmax_and_losses_are_finite_and_exact_for_finite_logits(data, dtype, rows, cols, scale):
    z = data.draw(hnp.arrays(dtype, (rows, cols), elements=st.floats(-1, 1, width=32))) * scale
    z = z.astype(dtype)
    labels = data.draw(hnp.arrays(np.int64, rows, elements=st.integers(0, cols - 1)))
    p = ops.softmax(z)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-5)
    loss, dz = ops.softmax_nll(z, labels)
    z64 = z.astype(np.float64)
    m = z64.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z64 - m).sum(1))
    assert np.isfinite(loss) and loss == pytest.approx(np.mean(lse - z64[np.arange(rows), labels]),
                                                       rel=1e-4, abs=1e-4 * scale)
    assert np.isfinite(dz).all() and np.allclose(dz.sum(1), 0, atol=1e-5)
    bce, dbce = ops.sigmoid_bce(z[:, 0], labels % 2)
    assert np.isfinite(bce) and np.isfinite(dbce).all()


@SETTINGS
@given(data=st.data(), dtype=FLOATS, shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))
def test_elementwise_ops_match_numpy(data, dtype, shape):
    x = data.draw(hnp.arrays(dtype, shape, elements=st.one_of(
        st.floats(-1e4, 1e4, width=32), SPECIALS)))
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x, 0))
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(ops.sigmoid(x), want.astype(dtype), rtol=1e-6, atol=1e-30,
                               equal_nan=True)


@SETTINGS
@given(data=st.data(), dtype=FLOATS, n=st.integers(0, 7), d=st.integers(0, 5))
def test_model_api_matches_or_raises(data, dtype, n, d):
    model = MLP([4, 5, 3], dtype=dtype, seed=0)
    x_dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.float16,
                                         np.complex64, object]))
    X = np.zeros((n, d), dtype=x_dtype)
    if n and d and x_dtype in (np.float32, np.float64) and data.draw(st.booleans()):
        X[data.draw(st.integers(0, n - 1)), 0] = data.draw(st.sampled_from([np.nan, np.inf]))
    try:
        proba = model.predict_proba(X)
    except (ValueError, TypeError):
        bad = (n == 0 or d != 4 or x_dtype in (np.complex64, object)
               or (np.issubdtype(x_dtype, np.floating) and not np.isfinite(X.astype(float)).all()))
        assert bad
        return
    assert proba.shape == (n, 3) and proba.dtype == dtype
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)


CRASH_PRONE = textwrap.dedent("""
    import numpy as np
    from numpy import broadcast_to
    from numpy.lib.stride_tricks import as_strided
    from fastmlp import MLP, ops
    a = np.arange(12.0).reshape(3, 4)
    cases = [
        lambda: ops.matmul(broadcast_to(np.ones(4), (5, 4)), a.T),            # zero stride
        lambda: ops.matmul(as_strided(a, (3, 3), (8, 8)), a[:, :3]),           # overlapping rows
        lambda: ops.matmul(np.ones((0, 4)), a.T),                              # empty
        lambda: ops.matmul(a[:, ::-1], a.T[::-1]),                             # reversed
        lambda: ops.dense_forward(broadcast_to(np.ones(4), (6, 4)), a, None, "relu"),
        lambda: ops.softmax(np.full((2, 3), np.nan)),
        lambda: ops.softmax_nll(np.ones((2, 3)), np.array([0, 2**40])),
        lambda: ops.sigmoid_bce(np.ones(3), np.array([0, 1, 7], np.uint8)),
        lambda: MLP([4, 3]).fit(np.ones((5, 4)), np.array([0, 1, 2, 0, 9])),
        lambda: MLP([4, 3]).fit(broadcast_to(np.ones(4), (5, 4)), np.zeros(5, int), epochs=1),
        lambda: MLP([4, 3]).predict(as_strided(a, (2, 4), (0, 8))),
        lambda: MLP([4, 3]).fit(np.ones((5, 4)), np.zeros(5, int), batch_size=10**12),
    ]
    for case in cases:
        try:
            case()
        except (ValueError, TypeError):
            pass
    print("survived")
""")


def test_crash_prone_layouts_in_a_subprocess():
    result = subprocess.run([sys.executable, "-c", CRASH_PRONE], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "survived" in result.stdout, (result.returncode,
                                                                    result.stderr[-2000:])
