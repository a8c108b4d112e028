"""fastmlp.ops as a module: every kernel's argument errors (wrong dimensions, shapes, mixed
dtypes, labels, activation names) with their messages, the refusal of non-float dtypes, and
the package exposing it. The kernels themselves: test_gemm.py, test_dense.py,
test_activations.py, test_loss.py; the ISA API: test_cpu.py.

Every test runs on every SIMD flavour and thread count (tests/conftest.py; the flavours other
than this process's own on two threads only with `-m slow`).
"""

import numpy as np
import pytest

import fastmlp
from fastmlp import ops
from _helpers import F32, F64, slow_except

pytestmark = pytest.mark.usefixtures("every_isa_and_thread_count")


# ---- errors ----------------------------------------------------------------------------------

def ones(*shape, dtype=F64):
    return np.ones(shape, dtype)


def labels_of(*values, dtype=np.int64):
    return np.array(values, dtype)


SHARE = "all operands must share one dtype"
ERRORS = [
    # Mixed float32 / float64 operands.
    ("matmul-f32-f64", lambda: ops.matmul(ones(2, 3, dtype=F32), ones(3, 4)), TypeError, SHARE),
    ("matmul-f64-f32", lambda: ops.matmul(ones(2, 3), ones(3, 4, dtype=F32)), TypeError, SHARE),
    ("relu_grad-mixed", lambda: ops.relu_grad(ones(3, dtype=F32), ones(3)), TypeError, SHARE),
    ("dense_forward-W", lambda: ops.dense_forward(ones(2, 3, dtype=F32), ones(4, 3)),
     TypeError, SHARE),
    ("dense_forward-b", lambda: ops.dense_forward(ones(2, 3, dtype=F32), ones(4, 3, dtype=F32),
                                                  ones(4)), TypeError, SHARE),
    ("dense_backward-W", lambda: ops.dense_backward(ones(2, 3), ones(4, 3, dtype=F32),
                                                    ones(2, 4), ones(2, 4)), TypeError, SHARE),
    ("dense_backward-out", lambda: ops.dense_backward(ones(2, 3), ones(4, 3),
                                                      ones(2, 4, dtype=F32), ones(2, 4)),
     TypeError, SHARE),
    ("dense_backward-grad_out", lambda: ops.dense_backward(ones(2, 3), ones(4, 3), ones(2, 4),
                                                           ones(2, 4, dtype=F32)),
     TypeError, SHARE),
    # Wrong number of dimensions.
    ("matmul-a-1d", lambda: ops.matmul(ones(3), ones(3, 4)), ValueError, r"a must be 2-D"),
    ("matmul-b-3d", lambda: ops.matmul(ones(2, 3), ones(3, 4, 1)), ValueError,
     r"b must be 2-D"),
    ("dense_forward-x-1d", lambda: ops.dense_forward(ones(3), ones(4, 3)), ValueError,
     r"x must be 2-D"),
    ("dense_forward-W-3d", lambda: ops.dense_forward(ones(2, 3), ones(4, 3, 1)), ValueError,
     r"W must be 2-D"),
    ("dense_forward-b-2d", lambda: ops.dense_forward(ones(2, 3), ones(4, 3), ones(4, 1)),
     ValueError, r"b must be 1-D"),
    ("dense_backward-out-1d", lambda: ops.dense_backward(ones(2, 3), ones(4, 3), ones(8),
                                                         ones(2, 4)), ValueError,
     r"out must be 2-D"),
    ("dense_backward-grad_out-3d", lambda: ops.dense_backward(ones(2, 3), ones(4, 3),
                                                              ones(2, 4), ones(2, 4, 1)),
     ValueError, r"grad_out must be 2-D"),
    ("softmax-0d", lambda: ops.softmax(np.array(1.0)), ValueError, "at least 1 dimension"),
    ("softmax_nll-logits-1d", lambda: ops.softmax_nll(ones(3), labels_of(0, 1, 2)), ValueError,
     r"logits must be 2-D"),
    ("softmax_nll-labels-2d", lambda: ops.softmax_nll(ones(2, 3), np.zeros((2, 2), np.int64)),
     ValueError, r"labels must be 1-D"),
    ("sigmoid_bce-logits-Nx2", lambda: ops.sigmoid_bce(ones(3, 2), labels_of(0, 1, 0)),
     ValueError, r"must have shape \(N,\) or \(N, 1\)"),
    ("sigmoid_bce-logits-3d", lambda: ops.sigmoid_bce(ones(3, 1, 1), labels_of(0, 1, 0)),
     ValueError, r"must have shape \(N,\) or \(N, 1\)"),
    ("sigmoid_bce-logits-0d", lambda: ops.sigmoid_bce(np.array(1.0), labels_of(0)),
     ValueError, r"must have shape \(N,\) or \(N, 1\)"),
    # Empty where a value is needed.
    ("softmax-empty-axis", lambda: ops.softmax(ones(3, 0)), ValueError, "empty last axis"),
    ("softmax_nll-0-rows", lambda: ops.softmax_nll(ones(0, 3), labels_of()), ValueError,
     "at least one row"),
    ("softmax_nll-0-classes", lambda: ops.softmax_nll(ones(2, 0), labels_of(0, 0)), ValueError,
     "at least one row and one class"),
    ("sigmoid_bce-0-rows", lambda: ops.sigmoid_bce(ones(0), labels_of()), ValueError,
     "at least one row"),
    # Inner / feature dimension mismatch.
    ("matmul-NN", lambda: ops.matmul(ones(2, 3), ones(4, 5)), ValueError,
     r"op\(a\) has 3 columns but op\(b\) has 4 rows"),
    ("matmul-TN", lambda: ops.matmul(ones(3, 2), ones(4, 5), trans_a=True), ValueError,
     r"op\(a\) has 3 columns but op\(b\) has 4 rows"),
    ("matmul-NT", lambda: ops.matmul(ones(2, 3), ones(5, 4), trans_b=True), ValueError,
     r"op\(a\) has 3 columns but op\(b\) has 4 rows"),
    ("matmul-TT", lambda: ops.matmul(ones(3, 2), ones(5, 4), trans_a=True, trans_b=True),
     ValueError, r"op\(a\) has 3 columns but op\(b\) has 4 rows"),
    ("matmul-T-of-fitting", lambda: ops.matmul(ones(2, 3), ones(3, 4), trans_a=True),
     ValueError, r"op\(a\) has 2 columns but op\(b\) has 3 rows"),
    ("dense_forward-features", lambda: ops.dense_forward(ones(2, 3), ones(4, 5)), ValueError,
     "in_features must match"),
    ("dense_forward-bias-length", lambda: ops.dense_forward(ones(2, 3), ones(4, 3), ones(5)),
     ValueError, r"b has shape \(5,\), expected \(4,\)"),
    ("dense_backward-features", lambda: ops.dense_backward(ones(2, 3), ones(4, 5), ones(2, 4),
                                                           ones(2, 4)), ValueError,
     "in_features must match"),
    ("dense_backward-out-shape", lambda: ops.dense_backward(ones(2, 3), ones(4, 3), ones(2, 5),
                                                            ones(2, 4)), ValueError,
     r"out has shape \(2, 5\), expected \(2, 4\)"),
    ("dense_backward-grad_out-shape", lambda: ops.dense_backward(ones(2, 3), ones(4, 3),
                                                                 ones(2, 4), ones(3, 4)),
     ValueError, r"grad_out has shape \(3, 4\), expected \(2, 4\)"),
    # relu_grad shapes.
    ("relu_grad-transposed", lambda: ops.relu_grad(ones(3, 4), ones(4, 3)), ValueError,
     r"relu_grad: grad_out has shape \(3, 4\) but out has shape \(4, 3\)"),
    ("relu_grad-same-size", lambda: ops.relu_grad(ones(3, 4), ones(12)), ValueError,
     r"relu_grad: grad_out has shape"),
    # Labels: range, dtype, length.
    ("nll-label-K", lambda: ops.softmax_nll(ones(3, 4), labels_of(0, 4, 1)), ValueError,
     r"labels\[1\] = .*4.* is out of range"),
    ("nll-label-negative", lambda: ops.softmax_nll(ones(3, 4), labels_of(0, 1, -1)),
     ValueError, r"labels\[2\] = .*-1.* is out of range"),
    ("nll-label-uint8-255", lambda: ops.softmax_nll(ones(2, 4), labels_of(255, 0,
                                                                          dtype=np.uint8)),
     ValueError, "out of range"),
    ("bce-label-2", lambda: ops.sigmoid_bce(ones(3), labels_of(0, 2, 1)), ValueError,
     r"labels\[1\] = .*2.* is out of range"),
    ("bce-label-negative", lambda: ops.sigmoid_bce(ones(3, 1), labels_of(-1, 0, 1)),
     ValueError, "out of range"),
    ("nll-float-labels", lambda: ops.softmax_nll(ones(2, 3), np.array([0.0, 1.0])), TypeError,
     "labels must have an integer dtype"),
    ("nll-bool-labels", lambda: ops.softmax_nll(ones(2, 3), np.array([True, False])),
     TypeError, "labels must have an integer dtype"),
    ("bce-float-labels", lambda: ops.sigmoid_bce(ones(2), np.array([0.0, 1.0])), TypeError,
     r"labels must have an integer dtype \(or bool\)"),
    ("nll-labels-short", lambda: ops.softmax_nll(ones(4, 3), labels_of(0, 1, 2)), ValueError,
     "labels has 3 labels but there are 4 samples"),
    ("nll-labels-long", lambda: ops.softmax_nll(ones(2, 3), labels_of(0, 1, 2)), ValueError,
     "labels has 3 labels but there are 2 samples"),
    ("bce-labels-short", lambda: ops.sigmoid_bce(ones(4, 1), labels_of(0, 1, 1)), ValueError,
     "labels has 3 labels but there are 4 samples"),
    # Activation names.
    ("dense_forward-softplus", lambda: ops.dense_forward(ones(2, 3), ones(4, 3), None,
                                                         "softplus"),
     ValueError, "activation must be one of"),
    ("dense_forward-ReLU", lambda: ops.dense_forward(ones(2, 3), ones(4, 3), None, "ReLU"),
     ValueError, "activation must be one of .*got 'ReLU'"),
    ("dense_backward-sigmoid", lambda: ops.dense_backward(ones(2, 3), ones(4, 3), ones(2, 4),
                                                          ones(2, 4), "sigmoid"),
     ValueError, "activation must be one of"),
    ("dense_backward-empty", lambda: ops.dense_backward(ones(2, 3), ones(4, 3), ones(2, 4),
                                                        ones(2, 4), ""),
     ValueError, "activation must be one of"),
]


@pytest.mark.parametrize("call, exc, match", [pytest.param(c, e, m, id=i)
                                              for i, c, e, m in ERRORS])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


BAD_DTYPES = {
    "int32": lambda shape: np.ones(shape, np.int32),
    "int64": lambda shape: np.ones(shape, np.int64),
    "uint8": lambda shape: np.ones(shape, np.uint8),
    "bool": lambda shape: np.ones(shape, np.bool_),
    "float16": lambda shape: np.ones(shape, np.float16),
    "complex128": lambda shape: np.ones(shape, np.complex128),
    "complex64": lambda shape: np.ones(shape, np.complex64),
    "object": lambda shape: np.ones(shape, object),
    "str": lambda shape: np.full(shape, "1.0"),
    "int-list": lambda shape: np.ones(shape, np.int64).tolist(),
}

# Each kernel with one operand replaced by a bad one: (name of the operand, call).
BAD_OPERAND_CALLS = {
    "matmul-a": ("a", lambda bad: ops.matmul(bad((3, 3)), ones(3, 3))),
    "matmul-b": ("b", lambda bad: ops.matmul(ones(3, 3), bad((3, 3)))),
    "relu": ("x", lambda bad: ops.relu(bad((3, 3)))),
    "sigmoid": ("x", lambda bad: ops.sigmoid(bad((3, 3)))),
    "relu_grad-grad_out": ("grad_out", lambda bad: ops.relu_grad(bad((3, 3)), ones(3, 3))),
    "relu_grad-out": ("out", lambda bad: ops.relu_grad(ones(3, 3), bad((3, 3)))),
    "softmax": ("x", lambda bad: ops.softmax(bad((3, 3)))),
    "softmax_nll": ("logits", lambda bad: ops.softmax_nll(bad((3, 3)), labels_of(0, 1, 2))),
    "sigmoid_bce": ("logits", lambda bad: ops.sigmoid_bce(bad((3,)), labels_of(0, 1, 0))),
    "dense_forward-x": ("x", lambda bad: ops.dense_forward(bad((2, 3)), ones(4, 3))),
    "dense_forward-W": ("W", lambda bad: ops.dense_forward(ones(2, 3), bad((4, 3)))),
    "dense_forward-b": ("b", lambda bad: ops.dense_forward(ones(2, 3), ones(4, 3), bad((4,)))),
    "dense_backward-x": ("x", lambda bad: ops.dense_backward(bad((2, 3)), ones(4, 3),
                                                             ones(2, 4), ones(2, 4))),
    "dense_backward-W": ("W", lambda bad: ops.dense_backward(ones(2, 3), bad((4, 3)),
                                                             ones(2, 4), ones(2, 4))),
    "dense_backward-out": ("out", lambda bad: ops.dense_backward(ones(2, 3), ones(4, 3),
                                                                 bad((2, 4)), ones(2, 4))),
    "dense_backward-grad_out": ("grad_out", lambda bad: ops.dense_backward(
        ones(2, 3), ones(4, 3), ones(2, 4), bad((2, 4)))),
}


# The default run: each site with two bad dtypes, each bad dtype at three or four sites.
BAD_SITE_DTYPES = [(site, bad) for site in BAD_OPERAND_CALLS for bad in BAD_DTYPES]
BAD_SITE_DTYPES_DEFAULT = [
    (site, list(BAD_DTYPES)[(i + shift) % len(BAD_DTYPES)])
    for i, site in enumerate(BAD_OPERAND_CALLS) for shift in (0, len(BAD_DTYPES) // 2)]


@pytest.mark.parametrize("site, bad", slow_except(BAD_SITE_DTYPES, BAD_SITE_DTYPES_DEFAULT,
                                                 unpack=True))
def test_non_float_dtypes_raise_type_error(site, bad):
    name, call = BAD_OPERAND_CALLS[site]
    with pytest.raises(TypeError, match=rf"^{name} must have dtype float32 or float64, got"):
        call(BAD_DTYPES[bad])


def test_package_exposes_ops():
    assert fastmlp.ops is ops
    for name in ops.__all__:
        assert callable(getattr(ops, name))
