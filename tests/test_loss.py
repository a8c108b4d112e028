"""softmax_nll, sigmoid_bce (src/cpp/loss.*): each loss fused with its gradient, against
float64 NumPy references: awkward shapes, every layout of logits and labels, every integer
label dtype, exact limits at logits of ±1e4, and gradients against central differences.

Legend: N samples, K classes; logits (N, K) for softmax_nll, (N,) or (N, 1) for sigmoid_bce;
labels (N,). eps is the dtype's machine epsilon. Every test runs in float32 and float64, on
every SIMD flavour and thread count (tests/conftest.py; the flavours other than this process's
own on two threads only with `-m slow`).
"""

import numpy as np
import pytest

from fastmlp import ops
from _helpers import (DTYPES, F32, F64, LAYOUTS, amax, assert_fresh, assert_unchanged,
                      central_differences, eps, freeze, laid_out, normal, ref_softmax_nll,
                      ref_sigmoid_bce, rng_for)

pytestmark = pytest.mark.usefixtures("every_isa_and_thread_count")


# ---- softmax_nll -----------------------------------------------------------------------------

NLL_SHAPES = [(1, 1), (1, 2), (7, 3), (13, 31), (5, 131), (67, 7), (256, 10), (3, 257)]


def nll_tolerances(dtype, logits):
    """(loss atol, dlogits atol): p = softmax carries ~(2K + c) eps absolute error; the loss
    also carries the rounding of z[y] - max, proportional to the row's spread."""
    n, k = logits.shape
    z = logits.astype(F64)
    spread = float((z.max(axis=1) - z.min(axis=1)).max())
    return (2 * k + 32) * eps(dtype) * (1 + spread), (2 * k + 32) * eps(dtype) / n


def check_nll(dtype, logits, labels):
    frozen = freeze(logits, labels)
    loss, dlogits = ops.softmax_nll(logits, labels)
    assert isinstance(loss, float)
    assert_fresh(dlogits, dtype, logits.shape, (logits, labels))
    ref_loss, ref_d = ref_softmax_nll(logits, labels)
    tol_loss, tol_d = nll_tolerances(dtype, logits)
    assert abs(loss - ref_loss) <= tol_loss, (loss, ref_loss, tol_loss)
    np.testing.assert_allclose(dlogits, ref_d, rtol=0, atol=tol_d)
    assert_unchanged(frozen)
    return loss, dlogits


@pytest.mark.parametrize("n, k", NLL_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nll_matches_reference(dtype, n, k):
    rng = rng_for("nll", dtype, n, k)
    logits = normal(rng, (n, k), dtype, scale=3.0)
    labels = rng.integers(0, k, n)
    _, dlogits = check_nll(dtype, logits, labels)
    # Each row of softmax - onehot sums to 0.
    np.testing.assert_allclose(dlogits.astype(F64).sum(axis=1), 0.0, rtol=0,
                               atol=(2 * k + 32) * eps(dtype) / n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nll_dlogits_is_softmax_minus_onehot_over_n(dtype):
    n, k = 4, 5
    rng = rng_for("nll-explicit", dtype)
    logits = normal(rng, (n, k), dtype)
    labels = np.array([0, 4, 2, 4])
    _, dlogits = ops.softmax_nll(logits, labels)
    z = logits.astype(F64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0
    np.testing.assert_allclose(dlogits, (p - onehot) / n, rtol=0, atol=64 * eps(dtype))
    # The same through the library's own softmax.
    np.testing.assert_allclose(dlogits, (ops.softmax(logits) - onehot) / n, rtol=0,
                               atol=64 * eps(dtype))
    np.testing.assert_array_equal(dlogits[np.arange(n), labels] < 0, True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nll_any_layout(dtype, layout):
    rng = rng_for("nll-layout", dtype, layout)
    logits = laid_out(normal(rng, (13, 9), dtype, scale=3.0), layout)
    labels = laid_out(rng.integers(0, 9, 13), layout)
    check_nll(dtype, logits, labels)


@pytest.mark.parametrize("label_dtype", [np.int8, np.int32, np.uint8, np.int64, np.int16,
                                         np.uint64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nll_label_dtypes(dtype, label_dtype):
    rng = rng_for("nll-labels", dtype, np.dtype(label_dtype).name)
    logits = normal(rng, (11, 6), dtype)
    labels = rng.integers(0, 6, 11).astype(label_dtype)
    check_nll(dtype, logits, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nll_label_shapes_and_lists(dtype):
    rng = rng_for("nll-label-shapes", dtype)
    logits = normal(rng, (5, 4), dtype)
    labels = rng.integers(0, 4, 5)
    check_nll(dtype, logits, labels.reshape(5, 1))  # (N, 1) column accepted
    loss, dlogits = ops.softmax_nll(logits, labels.tolist())  # a list of ints
    ref_loss, ref_d = ref_softmax_nll(logits, labels)
    tol_loss, tol_d = nll_tolerances(dtype, logits)
    assert abs(loss - ref_loss) <= tol_loss
    np.testing.assert_allclose(dlogits, ref_d, rtol=0, atol=tol_d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits, labels, loss, dlogits", [
    ([[1e4, 0]], [1], 1e4, [[1, -1]]),
    ([[1e4, 0]], [0], 0.0, [[0, 0]]),
    ([[-1e4, 1e4]], [0], 2e4, [[-1, 1]]),
    ([[0, 1e4, -1e4]], [2], 2e4, [[0, 1, -1]]),
    ([[1e4, 0], [0, 1e4]], [1, 1], 5e3, [[0.5, -0.5], [0, 0]]),
], ids=["1e4-wrong", "1e4-right", "2e4-wrong", "3-classes", "2-rows"])
def test_softmax_nll_extreme_logits_are_exact(dtype, logits, labels, loss, dlogits):
    got_loss, got_d = ops.softmax_nll(np.array(logits, dtype), np.array(labels))
    assert got_loss == loss
    np.testing.assert_array_equal(got_d, np.array(dlogits, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nll_finite_at_huge_spread(dtype):
    rng = rng_for("nll-huge", dtype)
    logits = normal(rng, (9, 7), dtype, scale=1e3)
    labels = rng.integers(0, 7, 9)
    loss, dlogits = check_nll(dtype, logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    tie = ops.softmax_nll(np.array([[1e4, 1e4]], dtype), np.array([0]))
    assert abs(tie[0] - np.log(2.0)) <= 4 * eps(dtype)
    np.testing.assert_allclose(tie[1], [[-0.5, 0.5]], rtol=0, atol=4 * eps(dtype))


def test_softmax_nll_gradient_matches_finite_differences():
    rng = rng_for("nll-fd")
    logits = rng.standard_normal((5, 7)) * 2
    labels = rng.integers(0, 7, 5)
    _, dlogits = ops.softmax_nll(logits, labels)
    fd = central_differences(lambda: ops.softmax_nll(logits, labels)[0], logits, h=1e-5)
    np.testing.assert_allclose(dlogits, fd, rtol=1e-6, atol=1e-9)


# ---- sigmoid_bce -----------------------------------------------------------------------------

def bce_tolerances(dtype, logits):
    """(loss atol, dlogits atol): the loss adds log1p(exp(-|z|)) to max(z,0) - z y in dtype."""
    n = logits.shape[0]
    return 8 * eps(dtype) * (1 + amax(logits)), 8 * eps(dtype) / n


def check_bce(dtype, logits, labels):
    frozen = freeze(logits, labels)
    loss, dlogits = ops.sigmoid_bce(logits, labels)
    assert isinstance(loss, float)
    assert_fresh(dlogits, dtype, logits.shape, (logits, labels))
    ref_loss, ref_d = ref_sigmoid_bce(logits, labels)
    tol_loss, tol_d = bce_tolerances(dtype, logits)
    assert abs(loss - ref_loss) <= tol_loss, (loss, ref_loss, tol_loss)
    np.testing.assert_allclose(dlogits, ref_d, rtol=0, atol=tol_d)
    assert_unchanged(frozen)
    return loss, dlogits


@pytest.mark.parametrize("column", [False, True], ids=["(N,)", "(N,1)"])
@pytest.mark.parametrize("n", [1, 2, 7, 13, 67, 131, 257])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_matches_reference(dtype, n, column):
    rng = rng_for("bce", dtype, n, column)
    logits = normal(rng, (n, 1) if column else (n,), dtype, scale=5.0)
    labels = rng.integers(0, 2, n)
    check_bce(dtype, logits, labels)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("column", [False, True], ids=["(N,)", "(N,1)"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_any_layout(dtype, column, layout):
    rng = rng_for("bce-layout", dtype, column, layout)
    logits = laid_out(normal(rng, (17, 1) if column else (17,), dtype, scale=5.0), layout)
    labels = laid_out(rng.integers(0, 2, 17), layout)
    check_bce(dtype, logits, labels)


@pytest.mark.parametrize("label_dtype", [np.int8, np.int32, np.uint8, np.int64, np.bool_])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_label_dtypes(dtype, label_dtype):
    rng = rng_for("bce-labels", dtype, np.dtype(label_dtype).name)
    logits = normal(rng, (11,), dtype, scale=4.0)
    labels = rng.integers(0, 2, 11).astype(label_dtype)
    check_bce(dtype, logits, labels)
    check_bce(dtype, logits.reshape(11, 1), labels.reshape(11, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits, labels, loss, dlogits", [
    ([1e4], [0], 1e4, [1]),
    ([1e4], [1], 0.0, [0]),
    ([-1e4], [1], 1e4, [-1]),
    ([-1e4], [0], 0.0, [0]),
    ([1e4, -1e4, 1e4, -1e4], [0, 1, 1, 0], 5e3, [0.25, -0.25, 0, 0]),
], ids=["+1e4-wrong", "+1e4-right", "-1e4-wrong", "-1e4-right", "4-rows"])
def test_sigmoid_bce_extreme_logits_are_exact(dtype, logits, labels, loss, dlogits):
    for shape in [(len(logits),), (len(logits), 1)]:
        got_loss, got_d = ops.sigmoid_bce(np.array(logits, dtype).reshape(shape),
                                          np.array(labels))
        assert got_loss == loss
        assert got_d.shape == shape
        np.testing.assert_array_equal(got_d, np.array(dlogits, dtype).reshape(shape))


@pytest.mark.parametrize("dtype, limit", [(F32, 120.0), (F64, 800.0)], ids=["f32", "f64"])
def test_sigmoid_bce_whole_range(dtype, limit):
    x = np.linspace(-limit, limit, 1001).astype(dtype)
    for y in (np.zeros(1001, np.int64), np.ones(1001, np.int64)):
        loss, dlogits = check_bce(dtype, x, y)
        assert np.isfinite(loss) and np.all(np.isfinite(dlogits))


@pytest.mark.parametrize("column", [False, True], ids=["(N,)", "(N,1)"])
def test_sigmoid_bce_gradient_matches_finite_differences(column):
    rng = rng_for("bce-fd", column)
    logits = rng.standard_normal((6, 1) if column else (6,)) * 3
    labels = rng.integers(0, 2, 6)
    _, dlogits = ops.sigmoid_bce(logits, labels)
    fd = central_differences(lambda: ops.sigmoid_bce(logits, labels)[0], logits, h=1e-5)
    np.testing.assert_allclose(dlogits, fd, rtol=1e-6, atol=1e-9)
