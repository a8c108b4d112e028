"""relu, relu_grad, sigmoid and softmax (src/cpp/activations.*) against float64 NumPy
references: awkward shapes (scalars, empty arrays, 1, primes, 3-D), every input layout,
special values (NaN, ±Inf, ±0, subnormals), and the whole range past exp's overflow.

eps is the dtype's machine epsilon. Every test runs in float32 and float64, on every SIMD
flavour and thread count (tests/conftest.py; the flavours other than this process's own on two
threads only with `-m slow`): these kernels have no per-flavour code and run on the calling
thread, and the repeats check that neither setting changes them.
"""

import numpy as np
import pytest

from fastmlp import ops
from _helpers import (DTYPES, F32, F64, LAYOUTS, assert_fresh, assert_unchanged, eps, freeze,
                      laid_out, normal, ref_relu, ref_relu_grad, ref_sigmoid, ref_softmax,
                      rng_for)

pytestmark = pytest.mark.usefixtures("every_isa_and_thread_count")


# ---- element-wise: relu, relu_grad, sigmoid --------------------------------------------------

ELEMENTWISE_SHAPES = [(), (0,), (1,), (7,), (257,), (1, 1), (3, 5), (4, 4), (13, 31), (9, 129),
                      (0, 4), (2, 3, 5)]


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_reference(dtype, shape):
    x = normal(rng_for("relu", dtype, shape), shape, dtype, scale=3.0)
    x = np.asarray(x)
    frozen = freeze(x)
    got = ops.relu(x)
    assert_fresh(got, dtype, shape, (x,))
    np.testing.assert_array_equal(got, ref_relu(x))
    assert_unchanged(frozen)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_special_values(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, 1e4, -1e4], dtype)
    got = ops.relu(x)
    np.testing.assert_array_equal(got, np.maximum(x, 0))
    assert np.isnan(got[0])
    assert got[1] == np.inf and got[2] == 0 and got[5] == tiny and got[6] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_propagates_nan(dtype):
    got = ops.relu(np.array([[np.nan, -1.0], [2.0, np.nan]], dtype))
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 1])
    assert got[0, 1] == 0 and got[1, 0] == 2


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_grad_matches_reference(dtype, shape):
    rng = rng_for("relu_grad", dtype, shape)
    grad_out = np.asarray(normal(rng, shape, dtype))
    out = np.asarray(np.maximum(normal(rng, shape, dtype), 0))  # a ReLU output: half zeros
    frozen = freeze(grad_out, out)
    got = ops.relu_grad(grad_out, out)
    assert_fresh(got, dtype, shape, (grad_out, out))
    np.testing.assert_array_equal(got, ref_relu_grad(grad_out, out))
    assert_unchanged(frozen)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_grad_masks_where_out_is_not_positive(dtype):
    out = np.array([1.0, 0.0, -0.0, 2.5, np.nan, np.inf, -3.0], dtype)
    grad_out = np.array([7.0, 7.0, 7.0, -2.0, 7.0, 3.0, 7.0], dtype)
    got = ops.relu_grad(grad_out, out)
    np.testing.assert_array_equal(got, np.array([7.0, 0, 0, -2.0, 0, 3.0, 0], dtype))


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_matches_reference(dtype, shape):
    x = np.asarray(normal(rng_for("sigmoid", dtype, shape), shape, dtype, scale=5.0))
    frozen = freeze(x)
    got = ops.sigmoid(x)
    assert_fresh(got, dtype, shape, (x,))
    np.testing.assert_allclose(got, ref_sigmoid(x), rtol=4 * eps(dtype),
                               atol=np.finfo(dtype).tiny)
    assert_unchanged(frozen)


@pytest.mark.parametrize("dtype, limit", [(F32, 120.0), (F64, 800.0)], ids=["f32", "f64"])
def test_sigmoid_whole_range(dtype, limit):
    """Past exp's overflow in both directions: finite, in [0, 1], and accurate."""
    x = np.linspace(-limit, limit, 4001).astype(dtype)
    got = ops.sigmoid(x)
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, ref_sigmoid(x), rtol=4 * eps(dtype),
                               atol=np.finfo(dtype).tiny)
    assert np.all(np.diff(got) >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_extremes_are_exact(dtype):
    got = ops.sigmoid(np.array([1e4, -1e4, 0.0, np.inf, -np.inf], dtype))
    np.testing.assert_array_equal(got, np.array([1.0, 0.0, 0.5, 1.0, 0.0], dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", ["relu", "sigmoid", "relu_grad"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_any_layout(dtype, kernel, layout):
    rng = rng_for("elementwise-layout", dtype, kernel, layout)
    shape = (13, 7)
    x = laid_out(normal(rng, shape, dtype, scale=3.0), layout)
    if kernel == "relu_grad":
        out = laid_out(np.maximum(normal(rng, shape, dtype), 0), layout)
        frozen = freeze(x, out)
        got = ops.relu_grad(x, out)
        np.testing.assert_array_equal(got, ref_relu_grad(x, out))
        inputs = (x, out)
    else:
        frozen = freeze(x)
        got = getattr(ops, kernel)(x)
        if kernel == "relu":
            np.testing.assert_array_equal(got, ref_relu(x))
        else:
            np.testing.assert_allclose(got, ref_sigmoid(x), rtol=4 * eps(dtype),
                                       atol=np.finfo(dtype).tiny)
        inputs = (x,)
    assert_fresh(got, dtype, shape, inputs)
    assert_unchanged(frozen)


# ---- softmax ---------------------------------------------------------------------------------

SOFTMAX_SHAPES = [(1, 1), (1, 2), (5, 1), (7,), (1, 257), (7, 13), (3, 131), (67, 5), (16, 17),
                  (9, 256), (2, 3, 4), (0, 3)]


def softmax_atol(dtype, k):
    return (2 * k + 32) * eps(dtype)


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_reference(isa, dtype, shape):
    x = normal(rng_for("softmax", dtype, shape), shape, dtype, scale=3.0)
    frozen = freeze(x)
    got = ops.softmax(x)
    assert_fresh(got, dtype, shape, (x,))
    np.testing.assert_allclose(got, ref_softmax(x), rtol=0, atol=softmax_atol(dtype, shape[-1]))
    if x.size:
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=0,
                                   atol=softmax_atol(dtype, shape[-1]))
    assert_unchanged(frozen)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_any_layout(dtype, layout):
    rng = rng_for("softmax-layout", dtype, layout)
    for shape in [(13, 9), (3, 4, 5)]:
        x = laid_out(normal(rng, shape, dtype, scale=3.0), layout)
        frozen = freeze(x)
        got = ops.softmax(x)
        assert_fresh(got, dtype, shape, (x,))
        np.testing.assert_allclose(got, ref_softmax(x), rtol=0,
                                   atol=softmax_atol(dtype, shape[-1]))
        assert_unchanged(frozen)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_logits_are_exact(isa, dtype):
    x = np.array([[1e4, 0], [0, 1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4]], dtype)
    got = ops.softmax(x)
    expected = np.array([[1, 0], [0, 1], [0, 1], [0.5, 0.5], [0.5, 0.5]], dtype)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_is_shift_invariant_at_large_logits(isa, dtype):
    rng = rng_for("softmax-shift", dtype)
    x = normal(rng, (6, 11), dtype, scale=2.0)
    for shift in (1e4, -1e4):
        shifted = (x.astype(F64) + shift).astype(dtype)  # what the kernel actually sees
        got = ops.softmax(shifted)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref_softmax(shifted), rtol=0, atol=softmax_atol(dtype, 11))


def test_softmax_float32_is_within_a_few_ulp(isa):
    """float32 on the avx512 ISA computes e^x by a polynomial (activations.h): each probability
    within a few ulp of the float64 softmax of the float32 differences x - max (what either
    path exponentiates), down to the subnormals; -inf logits give exactly 0, NaN stays NaN."""
    rng = rng_for("softmax-ulp", F32)
    x = (rng.standard_normal((64, 10)) * 20).astype(F32)
    x[:, 0] = np.linspace(-110, 0, 64)  # e^(x - max) down to ~1e-48: subnormal probabilities
    x[:, 1] = 0
    got = ops.softmax(x)
    e = np.exp((x - x.max(axis=1, keepdims=True)).astype(F64))
    expected = e / e.sum(axis=1, keepdims=True)
    tiny = np.finfo(F32).tiny
    normal_part = expected >= tiny
    np.testing.assert_allclose(got[normal_part], expected[normal_part], rtol=10 * eps(F32), atol=0)
    np.testing.assert_allclose(got[~normal_part], expected[~normal_part], rtol=0,
                               atol=tiny * eps(F32))
    x[3, 5] = -np.inf
    x[4, :] = -np.inf
    x[4, 7] = 1.0
    x[5, 9] = np.nan
    got = ops.softmax(x)
    assert got[3, 5] == 0 and np.isclose(got[3].sum(), 1, rtol=1e-6)
    assert got[4, 7] == 1 and (np.delete(got[4], 7) == 0).all()
    assert np.isnan(got[5]).all()
