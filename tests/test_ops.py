"""fastmlp.ops, kernel by kernel, against plain NumPy references computed in float64.

Legend: M, N rows and columns of a product, K its reduction length; B batch, I in-features,
O out-features; N samples and K classes for the losses. eps is the dtype's machine epsilon.

Every kernel is checked in float32 and float64 on awkward shapes (1x1, primes, one off the
GEMM's MR/NR/MC/KC/NC blocks, K = 0, N > NC), on every input layout (transposed, strided,
negative strides, Fortran, read-only, unaligned), for stability at extreme logits, for its
error messages, and (gradients) against central finite differences.
"""

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing, ops

F32, F64 = np.float32, np.float64
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["NN", "TN", "NT", "TT"]
ACTIVATIONS = ["relu", "tanh", "logistic", "identity"]
LAYOUTS = ["C", "F", "T", "strided", "neg", "neg_strided", "readonly", "unaligned"]


# The whole module runs once per SIMD flavour this CPU supports and per thread count (1, 2):
# each run forces the flavour and the pool size for every kernel call in it.
@pytest.fixture(autouse=True, scope="module",
                params=[(isa, threads) for isa in ops.supported_isas() for threads in (1, 2)],
                ids=lambda p: f"{p[0]}-{p[1]}t")
def every_isa_and_thread_count(request):
    isa, threads = request.param
    previous = ops.isa(), fastmlp.get_num_threads()
    ops.set_isa(isa)
    fastmlp.set_num_threads(threads)
    yield
    ops.set_isa(previous[0])
    fastmlp.set_num_threads(previous[1])


# ---- helpers --------------------------------------------------------------------------------

def rng_for(*key):
    """A generator seeded from the test's parameters: fixed, and different per case."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def eps(dtype):
    return float(np.finfo(dtype).eps)


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


def normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ---- NumPy references (float64, stable: no warning is raised for any finite input) ----------

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


def central_differences(f, param, h):
    """d f() / d param by central differences, perturbing `param` in place (restored after)."""
    grad = np.zeros(param.shape)
    for idx in np.ndindex(param.shape):
        old = param[idx]
        param[idx] = old + h
        up = f()
        param[idx] = old - h
        down = f()
        param[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad


# ---- ISA -------------------------------------------------------------------------------------

def test_isa_is_known_and_supported():
    supported = ops.supported_isas()
    assert isinstance(supported, list)
    assert "generic" in supported
    assert set(supported) <= {"generic", "avx2", "avx512"}
    assert ops.isa() in ("generic", "avx2", "avx512")
    assert ops.isa() in supported


_FORCED_ISA_SCRIPT = r"""
import os, sys
import numpy as np
from fastmlp import _testing, ops
assert ops.isa() == os.environ["FASTMLP_ISA"], (ops.isa(), os.environ["FASTMLP_ISA"])
rng = np.random.default_rng(0)
shapes = [(1, 1, 1), (1, 255, 257), (1, 513, 17), (7, 13, 31), (17, 257, 9), (130, 300, 67),
          (481, 257, 9), (129, 128, 129), (5, 9, 2053), (2, 260, 4099), (3, 0, 5)]
for dt in (np.float32, np.float64):
    eps = np.finfo(dt).eps
    for m, k, n in shapes:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
                a64, b64 = a.astype(np.float64), b.astype(np.float64)
                ref = (a64.T if ta else a64) @ (b64.T if tb else b64)
                got = ops.matmul(a[::-1] if not ta else a, b, trans_a=ta, trans_b=tb)
                if not ta:
                    ref = ref[::-1]
                tol = k * eps * (np.abs(a).max(initial=0) * np.abs(b).max(initial=0))
                err = np.abs(got - ref).max(initial=0)
                if got.dtype != dt or got.shape != (m, n) or not err <= tol:
                    sys.exit(f"matmul {dt.__name__} {(m, k, n)} ta={ta} tb={tb}: err {err} > {tol}")
        x = rng.standard_normal((m, k)).astype(dt)
        W = rng.standard_normal((n, k)).astype(dt)
        bias = rng.standard_normal(n).astype(dt)
        ref = np.maximum(x.astype(np.float64) @ W.astype(np.float64).T + bias, 0)
        got = ops.dense_forward(x, W, bias, "relu")
        tol = (k + 1) * eps * (np.abs(x).max(initial=0) * np.abs(W).max(initial=0)
                               + np.abs(bias).max())
        err = np.abs(got - ref).max(initial=0)
        if not err <= tol:
            sys.exit(f"dense_forward {dt.__name__} {(m, k, n)}: err {err} > {tol}")
print("ok")
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_forced_isa_kernels_match_reference(isa):
    """Each ISA this CPU runs (forced with FASTMLP_ISA in a fresh process) gives correct GEMMs."""
    if isa not in ops.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    env = {**os.environ, "FASTMLP_ISA": isa}
    proc = subprocess.run([sys.executable, "-c", _FORCED_ISA_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


# ---- matmul ----------------------------------------------------------------------------------

# (M, K, N). Blocks (f32 / f64): generic MR=4, NR=8/4, MC=128/96, NC=2048/1024; avx2 MR=6,
# NR=16/8, MC=144/72, NC=4080/2040; avx512 MR=12, NR=32/16, MC=480/240, NC=4096/2048; KC=256
# everywhere. Products of at most 1e6 FLOPs with K <= KC take an unpacked small path (M = 1
# with op(b) = W.T: a GEMV); larger ones are packed, and split over threads from 4e6 FLOPs.
MATMUL_SHAPES = [
    (1, 1, 1), (1, 1, 7), (7, 1, 1), (1, 13, 1), (2, 3, 5), (3, 5, 7), (4, 4, 4), (5, 3, 9),
    (7, 13, 31), (8, 8, 8), (9, 7, 8), (15, 17, 16), (16, 16, 16), (17, 15, 31), (31, 67, 13),
    (13, 131, 67), (67, 7, 131), (127, 129, 127), (129, 128, 129),
    (1, 255, 257), (257, 3, 1), (3, 256, 5), (5, 257, 3),       # wide, tall, K around KC
    (95, 255, 97), (97, 256, 95), (96, 17, 9), (128, 17, 129),  # M around MC (96 / 128)
    (131, 513, 9), (1, 513, 17),                               # K over two KC blocks
    (481, 257, 9), (241, 257, 17), (145, 257, 9),              # M over the SIMD MCs
    (300, 257, 513),                                           # several blocks in M, K, N
    (9, 31, 2053), (3, 257, 2049), (2, 5, 1025),               # N over NC (2048 / 1024)
    (2, 260, 4099),                                            # N over NC (4080 / 4096)
    (3, 0, 5), (1, 0, 1), (17, 0, 2049),                       # K = 0: zeros
    (0, 3, 4), (4, 3, 0), (0, 0, 0),                           # empty results
]


@pytest.mark.parametrize("m, k, n", MATMUL_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("trans_a, trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_matches_reference(dtype, trans_a, trans_b, m, k, n):
    rng = rng_for("matmul", dtype, trans_a, trans_b, m, k, n)
    a = normal(rng, (k, m) if trans_a else (m, k), dtype)
    b = normal(rng, (n, k) if trans_b else (k, n), dtype)
    frozen = freeze(a, b)
    got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert_fresh(got, dtype, (m, n), (a, b))
    ref = ref_matmul(a, b, trans_a, trans_b)
    np.testing.assert_allclose(got, ref, rtol=0, atol=gemm_atol(k, dtype, a, b))
    assert_unchanged(frozen)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_k0_is_zeros(dtype):
    got = ops.matmul(np.ones((3, 0), dtype), np.ones((0, 5), dtype))
    assert_fresh(got, dtype, (3, 5))
    np.testing.assert_array_equal(got, np.zeros((3, 5)))


@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("trans_a, trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_any_layout(dtype, trans_a, trans_b, layout_a, layout_b):
    m, k, n = 13, 9, 11
    rng = rng_for("matmul-layout", dtype, trans_a, trans_b, layout_a, layout_b)
    a = laid_out(normal(rng, (k, m) if trans_a else (m, k), dtype), layout_a)
    b = laid_out(normal(rng, (n, k) if trans_b else (k, n), dtype), layout_b)
    frozen = freeze(a, b)
    got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert_fresh(got, dtype, (m, n), (a, b))
    np.testing.assert_allclose(got, ref_matmul(a, b, trans_a, trans_b), rtol=0,
                               atol=gemm_atol(k, dtype, a, b))
    assert_unchanged(frozen)


@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("trans_a, trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_row_vector_any_layout(dtype, trans_a, trans_b, layout_a):
    """M = 1 (a batch of one; with trans_b on a C array, the GEMV path) from any layout of a."""
    k, n = 37, 11
    rng = rng_for("matmul-row", dtype, trans_a, trans_b, layout_a)
    a = laid_out(normal(rng, (k, 1) if trans_a else (1, k), dtype), layout_a)
    b = normal(rng, (n, k) if trans_b else (k, n), dtype)
    frozen = freeze(a, b)
    got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert_fresh(got, dtype, (1, n), (a, b))
    np.testing.assert_allclose(got, ref_matmul(a, b, trans_a, trans_b), rtol=0,
                               atol=gemm_atol(k, dtype, a, b))
    assert_unchanged(frozen)


@pytest.mark.parametrize("layout", ["T", "strided", "neg", "neg_strided", "unaligned"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_views_across_cache_blocks(dtype, layout):
    """Strided packing over several MC, KC and NR blocks (M=131, K=260, N=67)."""
    m, k, n = 131, 260, 67
    rng = rng_for("matmul-blocks", dtype, layout)
    a = laid_out(normal(rng, (m, k), dtype), layout)
    b = laid_out(normal(rng, (k, n), dtype), layout)
    frozen = freeze(a, b)
    got = ops.matmul(a, b)
    assert_fresh(got, dtype, (m, n), (a, b))
    np.testing.assert_allclose(got, ref_matmul(a, b, False, False), rtol=0,
                               atol=gemm_atol(k, dtype, a, b))
    assert_unchanged(frozen)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_transposed_views_and_aliasing(dtype):
    """a.T of a C array with trans flags, and the same array as both operands (a @ a.T)."""
    rng = rng_for("matmul-alias", dtype)
    a = normal(rng, (37, 19), dtype)
    frozen = freeze(a)
    gram = ops.matmul(a, a, trans_b=True)
    np.testing.assert_allclose(gram, ref_matmul(a, a, False, True), rtol=0,
                               atol=gemm_atol(19, dtype, a, a))
    np.testing.assert_allclose(gram, gram.T, rtol=0, atol=2 * gemm_atol(19, dtype, a, a))
    got = ops.matmul(a.T, a.T, trans_a=True)  # op(a.T) = a (37,19) @ a.T (19,37)
    np.testing.assert_allclose(got, ref_matmul(a, a, False, True), rtol=0,
                               atol=gemm_atol(19, dtype, a, a))
    assert_unchanged(frozen)


def edge_shapes(c):
    """(M, K, N) one off the active kernel's MR, NR, row_NR, MC, KC and NC."""
    mr, nr, mc, kc, nc, row = (c[key] for key in ("MR", "NR", "MC", "KC", "NC", "row_NR"))
    return [(max(mr - 1, 1), kc + 1, nr + 1), (mr + 1, kc - 1, max(nr - 1, 1)),
            (mc + 1, 17, 2 * nr + 1), (mc - 1, kc + 1, nr), (3, 33, nc + 1),
            (1, kc, row + 1), (1, kc + 1, max(row - 1, 1)), (2 * mr + 1, 2 * kc + 1, 3)]


@pytest.mark.parametrize("path", ["packed", "small"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_block_edges_of_active_kernel(dtype, path):
    """Shapes aimed at the active ISA's blocks (ops.gemm_config), through the packed path and
    through the in-place small path (fastmlp._testing.force_gemm_path)."""
    shapes = edge_shapes(ops.gemm_config(np.dtype(dtype).name))
    previous = _testing.force_gemm_path("packed" if path == "packed" else "in-place")
    try:
        for m, k, n in shapes:
            for trans_a, trans_b in TRANS:
                rng = rng_for("matmul-edges", dtype, path, m, k, n, trans_a, trans_b)
                a = normal(rng, (k, m) if trans_a else (m, k), dtype)
                b = normal(rng, (n, k) if trans_b else (k, n), dtype)
                got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
                assert_fresh(got, dtype, (m, n), (a, b))
                np.testing.assert_allclose(got, ref_matmul(a, b, trans_a, trans_b), rtol=0,
                                           atol=gemm_atol(k, dtype, a, b),
                                           err_msg=f"{(m, k, n)} trans={trans_a, trans_b}")
    finally:
        _testing.force_gemm_path(previous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_is_deterministic(dtype):
    """The same product twice (threaded above 4e6 FLOPs) gives bitwise the same result."""
    rng = rng_for("matmul-repeat", dtype)
    a, b = normal(rng, (150, 270), dtype), normal(rng, (270, 130), dtype)
    np.testing.assert_array_equal(ops.matmul(a, b), ops.matmul(a, b))


def test_matmul_accepts_nested_lists_as_float64():
    got = ops.matmul([[1.0, 2.0]], [[3.0], [4.0]])
    assert_fresh(got, F64, (1, 1))
    assert got[0, 0] == 11.0


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
def test_softmax_matches_reference(dtype, shape):
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
def test_softmax_extreme_logits_are_exact(dtype):
    x = np.array([[1e4, 0], [0, 1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4]], dtype)
    got = ops.softmax(x)
    expected = np.array([[1, 0], [0, 1], [0, 1], [0.5, 0.5], [0.5, 0.5]], dtype)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_is_shift_invariant_at_large_logits(dtype):
    rng = rng_for("softmax-shift", dtype)
    x = normal(rng, (6, 11), dtype, scale=2.0)
    for shift in (1e4, -1e4):
        shifted = (x.astype(F64) + shift).astype(dtype)  # what the kernel actually sees
        got = ops.softmax(shifted)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref_softmax(shifted), rtol=0, atol=softmax_atol(dtype, 11))


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


# ---- dense_forward / dense_backward ----------------------------------------------------------

# (B, I, O): GEMM M=B, K=I, N=O (forward); K=B (grad_W) and K=O (grad_x) backward.
DENSE_SHAPES = [
    (1, 1, 1), (5, 7, 3), (1, 13, 67), (67, 13, 1), (3, 4, 5), (9, 8, 7), (17, 16, 15),
    (31, 129, 127), (97, 257, 33), (130, 255, 97), (257, 31, 9), (4, 513, 9), (3, 5, 2053),
    (6, 0, 5), (0, 4, 3), (2, 3, 0),
]


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


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: str(s))
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


@pytest.mark.parametrize("layout_w", LAYOUTS)
@pytest.mark.parametrize("layout_x", LAYOUTS)
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


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_matches_reference(dtype, activation, shape):
    B, I, O = shape
    rng = rng_for("dense-bwd", dtype, activation, shape)
    x, W, _ = dense_inputs(rng, dtype, shape)
    out = np.maximum(normal(rng, (B, O), dtype), 0)  # a ReLU output: about half zeros
    grad_out = normal(rng, (B, O), dtype)
    check_dense_backward(dtype, x, W, out, grad_out, activation)


@pytest.mark.parametrize("layout_w", LAYOUTS)
@pytest.mark.parametrize("layout_x", LAYOUTS)
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


@pytest.mark.parametrize("bad", BAD_DTYPES)
@pytest.mark.parametrize("site", BAD_OPERAND_CALLS)
def test_non_float_dtypes_raise_type_error(site, bad):
    name, call = BAD_OPERAND_CALLS[site]
    with pytest.raises(TypeError, match=rf"^{name} must have dtype float32 or float64, got"):
        call(BAD_DTYPES[bad])


def test_package_exposes_ops():
    assert fastmlp.ops is ops
    for name in ops.__all__:
        assert callable(getattr(ops, name))
