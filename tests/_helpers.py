"""What the kernel tests share: operands stored in every layout, checks that a result is fresh
and an input untouched, error bounds, the float64 NumPy references the kernels are compared
with, central differences, the `slow` split of a grid, and a fresh Python for subprocess tests.

Legend: M, N rows and columns of a product, K its reduction length; B batch, I in-features,
O out-features; N samples and K classes for the losses. eps is the dtype's machine epsilon.
"""

import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from fastmlp._parameters import writable_target

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["NN", "TN", "NT", "TT"]
ACTIVATIONS = ["relu", "tanh", "logistic", "identity"]
LAYOUTS = ["C", "F", "T", "strided", "neg", "neg_strided", "readonly", "unaligned"]

# A test using it runs once per SIMD flavour this CPU supports and per thread count (1, 2)
# (the fixture `every_isa_and_thread_count`, tests/conftest.py).
ON_EVERY_ISA_AND_THREAD_COUNT = pytest.mark.usefixtures("every_isa_and_thread_count")


# ---- the slow remainder of a grid ------------------------------------------------------------

def slow_except(values, default, *, unpack=False):
    """`values` as parametrize arguments, those not in `default` marked `slow` (the default run
    takes `default`; `pytest -m slow` the rest). IDs are those of the bare values. `unpack`:
    each value is a tuple spread over several argument names ("m, k, n")."""
    missing = [v for v in default if v not in values]
    assert not missing, f"default values not in the grid: {missing}"
    return [v if v in default else
            pytest.param(*(v if unpack else (v,)), marks=pytest.mark.slow) for v in values]


def layout_pairs():
    """Every (layout_a, layout_b) pair; the default run takes each layout with itself and with
    the next one in LAYOUTS (every layout on each side, alone and beside another kind)."""
    default = [(a, a) for a in LAYOUTS] + [(a, LAYOUTS[(i + 1) % len(LAYOUTS)])
                                           for i, a in enumerate(LAYOUTS)]
    return slow_except([(a, b) for a in LAYOUTS for b in LAYOUTS], default, unpack=True)


# ---- operands --------------------------------------------------------------------------------

def rng_for(*key):
    """A generator seeded from the test's parameters: fixed, and different per case."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def eps(dtype):
    return float(np.finfo(dtype).eps)


def normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def laid_out(values, layout):
    """The same values as `values`, stored in `layout`:
    C, F (Fortran), T (the .T of a C array), strided (steps 2, 3, ...), neg (every axis
    reversed), neg_strided (steps -2, 3, ...), readonly, unaligned (data at an odd address).
    Strided layouts leave NaN (integers: -1 or the maximum) in the skipped elements, so a
    kernel that reads them shows it."""
    v = np.ascontiguousarray(values)
    if layout == "C":
        return v.copy()
    if layout == "F":
        return np.asfortranarray(v)
    if layout == "T":
        return np.ascontiguousarray(v.T).T
    if layout == "readonly":
        r = v.copy()
        r.setflags(write=False)
        return r
    if layout == "unaligned":
        buf = np.zeros(v.nbytes + v.itemsize, np.uint8)
        r = buf[1:1 + v.nbytes].view(v.dtype).reshape(v.shape)
        r[...] = v
        assert r.size == 0 or not r.flags.aligned
        return r
    pattern = {"strided": (2, 3), "neg": (-1, -1), "neg_strided": (-2, 3)}[layout]
    steps = [pattern[i % 2] for i in range(v.ndim)]
    fill = np.nan if v.dtype.kind == "f" else (np.iinfo(v.dtype).max if v.dtype.kind == "u" else -1)
    base = np.full([abs(s) * n for s, n in zip(steps, v.shape)], fill, v.dtype)
    r = base[tuple(slice(None, None, s) for s in steps)]
    r[...] = v
    return r


# ---- checks ----------------------------------------------------------------------------------

def freeze(*arrays):
    """Copies of the arrays (and of the buffers they view) to check later that a call left
    them untouched."""
    return [(a, a.copy(), a.base.copy() if isinstance(a.base, np.ndarray) else None)
            for a in arrays]


def assert_unchanged(frozen):
    for a, copy, base_copy in frozen:
        np.testing.assert_array_equal(a, copy)
        if base_copy is not None:
            np.testing.assert_array_equal(a.base, base_copy)


def assert_fresh(result, dtype, shape, inputs=()):
    """A new, writeable, C-contiguous array of the input dtype and the expected shape."""
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.dtype(dtype)
    assert result.shape == tuple(shape)
    assert result.flags.c_contiguous
    assert result.flags.writeable
    for x in inputs:
        if isinstance(x, np.ndarray):
            assert not np.may_share_memory(result, x)


def amax(a):
    return float(np.abs(a).max()) if a.size else 0.0


def gemm_atol(k, dtype, a, b, c_max=0.0):
    """Error bound of a K-term dot product in `dtype`: K * eps * max|a| * max|b| (+ a bias)."""
    return (k + (1 if c_max else 0)) * eps(dtype) * (amax(a) * amax(b) + c_max)


# ---- NumPy references (float64, stable: no warning is raised for any finite input) -----------

def ref_matmul(a, b, trans_a, trans_b):
    a = np.asarray(a, F64)
    b = np.asarray(b, F64)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def ref_relu(x):
    return np.maximum(np.asarray(x, F64), 0.0)


def ref_relu_grad(grad_out, out):
    return np.where(np.asarray(out) > 0, np.asarray(grad_out, F64), 0.0)


def ref_sigmoid(x):
    x = np.asarray(x, F64)
    e = np.exp(-np.abs(x))  # ≤ 1: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def ref_softmax(x):
    x = np.asarray(x, F64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_softmax_nll(logits, labels):
    z = np.asarray(logits, F64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    n, k = z.shape
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    loss = float(np.mean(lse - z[np.arange(n), y]))
    dlogits = (ref_softmax(z) - np.eye(k)[y]) / n
    return loss, dlogits


def ref_sigmoid_bce(logits, labels):
    z = np.asarray(logits, F64)
    y = np.asarray(labels).astype(F64).reshape(z.shape)
    loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
    return loss, (ref_sigmoid(z) - y) / z.shape[0]


def ref_dense_forward(x, W, b, activation):
    a = np.asarray(x, F64) @ np.asarray(W, F64).T
    if b is not None:
        a = a + np.asarray(b, F64)
    if activation == "relu":
        return np.maximum(a, 0.0)
    if activation == "tanh":
        return np.tanh(a)
    if activation == "logistic":
        return ref_sigmoid(a)
    return a


def ref_dense_backward(x, W, out, grad_out, activation):
    grad_a = np.asarray(grad_out, F64)
    out64 = np.asarray(out, F64)
    if activation == "relu":
        grad_a = np.where(out64 > 0, grad_a, 0.0)
    elif activation == "tanh":  # derivatives written with the output: tanh' = 1 - out²
        grad_a = grad_a * (1.0 - out64 * out64)
    elif activation == "logistic":  # σ' = out (1 - out)
        grad_a = grad_a * out64 * (1.0 - out64)
    x = np.asarray(x, F64)
    W = np.asarray(W, F64)
    return grad_a @ W, grad_a.T @ x, grad_a.sum(axis=0)


def set_entry(param, idx, value):
    """param[idx] = value, also for a model's read-only parameter view (MLP.weights[l]): the
    write goes into the model's array and the model is told (as Optimizer.step does), so
    that it drops its packed weights."""
    target, changed = writable_target(param)
    target[idx] = value
    if changed is not None:
        changed()


def central_differences(f, param, h):
    """d f() / d param by central differences, perturbing `param` in place (restored after);
    param may be a model's read-only parameter view (set_entry)."""
    grad = np.zeros(param.shape)
    for idx in np.ndindex(param.shape):
        old = param[idx]
        set_entry(param, idx, old + h)
        up = f()
        set_entry(param, idx, old - h)
        down = f()
        set_entry(param, idx, old)
        grad[idx] = (up - down) / (2 * h)
    return grad


# ---- a fresh Python --------------------------------------------------------------------------

def run_python(code, env_updates=None, timeout=120, **kwargs):
    """`python -c code` (dedented) in a fresh process, without the ISA, cache and thread-count
    variables of this one (FASTMLP_ISA, FASTMLP_CACHE_SIZES, FASTMLP_NUM_THREADS,
    OMP_NUM_THREADS) unless `env_updates` sets them."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTMLP_ISA", "FASTMLP_CACHE_SIZES", "FASTMLP_NUM_THREADS",
                        "OMP_NUM_THREADS")}
    env.update(env_updates or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout, **kwargs)


def misaligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` whose data starts one byte past an aligned address (NumPy's
    flags.aligned is False): what the one-call prediction paths must decline."""
    buffer = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buffer[1:].data, a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out
