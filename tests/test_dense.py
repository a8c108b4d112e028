"""dense_forward / dense_backward (src/cpp/dense.*): one dense layer's products on the GEMM,
with the bias and the activation (and the ReLU's derivative) in the write-back, against
float64 NumPy references; gradients against central finite differences.

Legend: B batch, I in-features, O out-features; x (B, I), W (O, I), b (O,), out and grad_out
(B, O). eps is the dtype's machine epsilon.

Every test runs on every SIMD flavour and thread count (tests/conftest.py), in float32 and
float64, on awkward shapes (1, primes, K over KC, O over NC, zero-sized) and on every input
layout. The large grids' remainders are marked `slow` (`python -m pytest -m slow`): more
shapes, more layout pairs, the flavours other than this process's own on two threads.
"""

import numpy as np
import pytest

from fastmlp import ops
from _helpers import (ACTIVATIONS, DTYPES, F64, amax, assert_fresh, assert_unchanged,
                      central_differences, eps, freeze, gemm_atol, laid_out, normal,
                      layout_pairs, ref_dense_backward, ref_dense_forward, rng_for,
                      slow_except)

pytestmark = pytest.mark.usefixtures("every_isa_and_thread_count")


# (B, I, O): GEMM M=B, K=I, N=O (forward); K=B (grad_W) and K=O (grad_x) backward.
DENSE_SHAPES = [
    (1, 1, 1), (5, 7, 3), (1, 13, 67), (67, 13, 1), (3, 4, 5), (9, 8, 7), (17, 16, 15),
    (31, 129, 127), (97, 257, 33), (130, 255, 97), (257, 31, 9), (4, 513, 9), (3, 5, 2053),
    (6, 0, 5), (0, 4, 3), (2, 3, 0),
]

# The default run: 1, primes, a batch of one (the GEMV) and an output of one, non-multiples of
# the tiles, K over KC, O over NC, each dimension 0.
DENSE_DEFAULT_SHAPES = [(1, 1, 1), (5, 7, 3), (1, 13, 67), (67, 13, 1), (17, 16, 15),
                        (97, 257, 33), (3, 5, 2053), (6, 0, 5), (0, 4, 3), (2, 3, 0)]


def dense_inputs(rng, dtype, shape):
    B, I, O = shape
    return normal(rng, (B, I), dtype), normal(rng, (O, I), dtype), normal(rng, (O,), dtype)


def check_dense_forward(dtype, x, W, b, activation):
    frozen = freeze(*[a for a in (x, W, b) if a is not None])
    got = ops.dense_forward(x, W, b, activation)
    assert_fresh(got, dtype, (x.shape[0], W.shape[0]), (x, W, b))
    bmax = amax(b) if b is not None else 0.0
    # tanh and logistic have slopes ≤ 1: the product's error passes through, plus their own
    # rounding of a value in [-1, 1].
    own_rounding = 4 * eps(dtype) if activation in ("tanh", "logistic") else 0.0
    np.testing.assert_allclose(got, ref_dense_forward(x, W, b, activation), rtol=0,
                               atol=gemm_atol(x.shape[1], dtype, x, W, bmax) + own_rounding)
    assert_unchanged(frozen)


@pytest.mark.parametrize("shape", slow_except(DENSE_SHAPES, DENSE_DEFAULT_SHAPES),
                         ids=lambda s: str(s))
@pytest.mark.parametrize("bias", [True, False], ids=["b", "b=None"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_matches_reference(dtype, activation, bias, shape):
    x, W, b = dense_inputs(rng_for("dense-fwd", dtype, activation, bias, shape), dtype, shape)
    check_dense_forward(dtype, x, W, b if bias else None, activation)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_defaults_to_identity_without_bias(dtype):
    x, W, _ = dense_inputs(rng_for("dense-default", dtype), dtype, (6, 5, 4))
    got = ops.dense_forward(x, W)
    np.testing.assert_allclose(got, ref_dense_forward(x, W, None, "identity"), rtol=0,
                               atol=gemm_atol(5, dtype, x, W))
    assert (got < 0).any()  # identity: negatives kept


@pytest.mark.parametrize("layout_x, layout_w", layout_pairs())
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_any_layout(dtype, layout_x, layout_w):
    rng = rng_for("dense-fwd-layout", dtype, layout_x, layout_w)
    for shape in [(11, 9, 7), (1, 9, 7), (11, 9, 1)]:
        x, W, b = dense_inputs(rng, dtype, shape)
        x, W, b = laid_out(x, layout_x), laid_out(W, layout_w), laid_out(b, layout_w)
        for activation in ACTIVATIONS:
            check_dense_forward(dtype, x, W, b, activation)


def check_dense_backward(dtype, x, W, out, grad_out, activation):
    frozen = freeze(x, W, out, grad_out)
    B, I = x.shape
    O = W.shape[0]
    grad_x, grad_W, grad_b = ops.dense_backward(x, W, out, grad_out, activation)
    inputs = (x, W, out, grad_out)
    assert_fresh(grad_x, dtype, (B, I), inputs)
    assert_fresh(grad_W, dtype, (O, I), inputs)
    assert_fresh(grad_b, dtype, (O,), inputs)
    ref_x, ref_W, ref_b = ref_dense_backward(x, W, out, grad_out, activation)
    # The products read grad_a = grad_out · act'(out): bound the error with its magnitude
    # (tanh' = 1 - out² exceeds 1 in size for the |out| > 1 these tests feed it).
    out64 = np.asarray(out, F64)
    slope = {"tanh": np.abs(1 - out64 * out64), "logistic": np.abs(out64 * (1 - out64))}.get(
        activation, np.ones(1))
    grad_a = np.asarray(grad_out, F64) * max(1.0, float(slope.max(initial=0.0)))
    if activation in ("tanh", "logistic"):
        grad_a = grad_a * 4  # grad_a itself took 2-3 roundings per element
    np.testing.assert_allclose(grad_x, ref_x, rtol=0, atol=gemm_atol(O, dtype, grad_a, W))
    np.testing.assert_allclose(grad_W, ref_W, rtol=0, atol=gemm_atol(B, dtype, grad_a, x))
    np.testing.assert_allclose(grad_b, ref_b, rtol=0,
                               atol=gemm_atol(B, dtype, grad_a, np.ones(1)))
    assert_unchanged(frozen)


@pytest.mark.parametrize("shape", slow_except(DENSE_SHAPES, DENSE_DEFAULT_SHAPES),
                         ids=lambda s: str(s))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_matches_reference(dtype, activation, shape):
    B, I, O = shape
    rng = rng_for("dense-bwd", dtype, activation, shape)
    x, W, _ = dense_inputs(rng, dtype, shape)
    out = np.maximum(normal(rng, (B, O), dtype), 0)  # a ReLU output: about half zeros
    grad_out = normal(rng, (B, O), dtype)
    check_dense_backward(dtype, x, W, out, grad_out, activation)


@pytest.mark.parametrize("layout_x, layout_w", layout_pairs())
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_any_layout(dtype, layout_x, layout_w):
    rng = rng_for("dense-bwd-layout", dtype, layout_x, layout_w)
    for B, I, O in [(11, 9, 7), (1, 9, 7), (11, 9, 1)]:
        x, W, _ = dense_inputs(rng, dtype, (B, I, O))
        out = np.maximum(normal(rng, (B, O), dtype), 0)
        grad_out = normal(rng, (B, O), dtype)
        x, W = laid_out(x, layout_x), laid_out(W, layout_w)
        out, grad_out = laid_out(out, layout_w), laid_out(grad_out, layout_x)
        for activation in ACTIVATIONS:
            check_dense_backward(dtype, x, W, out, grad_out, activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_backward_matches_finite_differences(activation):
    """loss = sum(dense_forward(x, W, b) * R), so grad_out = R."""
    B, I, O = 5, 7, 3
    rng = rng_for("dense-fd", activation)
    x = rng.standard_normal((B, I))
    W = rng.standard_normal((O, I))
    b = rng.standard_normal(O)
    R = rng.standard_normal((B, O))
    pre = x @ W.T + b
    # Precondition of the fixed seed: both ReLU sides occur, no kink within the step h.
    assert (pre > 0).any() and (pre < 0).any() and np.abs(pre).min() > 1e-3

    def loss():
        return float(np.sum(ops.dense_forward(x, W, b, activation) * R))

    out = ops.dense_forward(x, W, b, activation)
    grad_x, grad_W, grad_b = ops.dense_backward(x, W, out, R, activation)
    for param, grad in ((x, grad_x), (W, grad_W), (b, grad_b)):
        fd = central_differences(loss, param, h=1e-6)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
