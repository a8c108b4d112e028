"""The training engine's products in bfloat16: gemm<float> under PrecisionScope(bfloat16)
(src/cpp/gemm/gemm.h), reached from Python through fastmlp._testing.gemm_precision.

Every float32 product of the scope's thread runs gemm_bf16 with the same TileSink semantics as
float32: the epilogue (beta, bias, ReLU, ReLU mask) on the float32 tile after its last K block,
or finished tiles handed to a consumer. The oracle rounds the operands to bfloat16 in NumPy
(test_bf16.bf16_round) and multiplies them in float64; a path differs from it by its float32
additions only: at most about (K + 3)·u·(Σ_p |a_ip||b_pj| + |c| + |bias|), u = 2⁻²⁴.

Shapes are written (M, K, N): M rows of the product, K its reduction length. They include 1,
primes, sizes off the 12×32 tile and products past each cache block of the path (MC, KC, NC
from ops.gemm_config("bfloat16")), so that the epilogue meets edge tiles and several K blocks
and the consumer meets the whole-product hand-over.
"""

import threading

import numpy as np
import pytest

import fastmlp
from fastmlp import _core, _testing, ops
from test_bf16 import bf16_round

BF16_PATHS = ops.supported_bf16_paths()
U = 2.0**-24

SMALL_SHAPES = [(1, 1, 1), (1, 37, 29), (5, 1, 7), (13, 31, 33), (12, 32, 32), (29, 67, 97),
                (97, 301, 65)]


@pytest.fixture(params=BF16_PATHS)
def bf16_path(request):
    """Every bfloat16 product through this path."""
    with _testing.bf16_path(request.param):
        yield request.param


def block_shapes():
    """Shapes one past the active path's blocks: K over KC with M over MC; N over NC."""
    cfg = ops.gemm_config("bfloat16")
    return [(cfg["MC"] + 5, cfg["KC"] + 3, 2 * cfg["NR"] + 7), (13, 37, cfg["NC"] + 3)]


def operand(rng, rows, cols, trans):
    """A (rows, cols) operand, stored transposed when `trans` (the engine's Wᵀ and Gᵀ)."""
    return rng.standard_normal((cols, rows) if trans else (rows, cols)).astype(np.float32)


def rounded(x, trans=False):
    x64 = bf16_round(x).astype(np.float64)
    return x64.T if trans else x64


def reference(a, b, trans_a, trans_b, c=None, bias=None, relu=False, mask=None):
    """(epilogue of the rounded operands' product in float64, its error scale)."""
    product = rounded(a, trans_a) @ rounded(b, trans_b)
    scale = np.abs(rounded(a, trans_a)) @ np.abs(rounded(b, trans_b))
    value = product.copy()
    if c is not None:
        value += c
        scale += np.abs(c)
    if bias is not None:
        value += bias
        scale += np.abs(bias)
    if relu:
        value = np.maximum(value, 0)
    if mask is not None:
        value = np.where(mask > 0, value, 0)
    return value, scale


def assert_close(got, expected, scale, k):
    """Within the float32 additions' error of the bf16 oracle, and rounding seen (where the
    float32 operands would give another result, the check tells them apart)."""
    assert got.dtype == np.float32 and got.shape == expected.shape
    tol = (k + 3) * U * scale + 1e-36
    err = np.abs(got.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else 0
    assert np.all(err <= tol), f"error {err[worst]:.3g} > tolerance {tol[worst]:.3g} (K={k})"


def assert_bits_equal(x, y):
    np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))


# ---- each epilogue of the fused write-back -------------------------------------------------

EPILOGUES = ["none", "accumulate", "bias", "relu", "bias_relu", "mask", "all"]


def epilogue_args(name, rng, m, n):
    c = rng.standard_normal((m, n)).astype(np.float32) if name in ("accumulate", "all") else None
    bias = rng.standard_normal(n).astype(np.float32) if "bias" in name or name == "all" else None
    relu = "relu" in name or name == "all"
    mask = None
    if name in ("mask", "all"):
        # A ReLU's output: zeros where it was off, and positive values elsewhere.
        mask = np.maximum(rng.standard_normal((m, n)), 0).astype(np.float32)
    return dict(c=c, bias=bias, relu=relu, mask=mask)


def check_epilogue(name, m, k, n, trans_a, trans_b, seed=0):
    rng = np.random.default_rng([m, k, n, trans_a, trans_b, seed])
    a = operand(rng, m, k, trans_a)
    b = operand(rng, k, n, trans_b)
    args = epilogue_args(name, rng, m, n)
    with _testing.gemm_precision("bfloat16"):
        got = _testing.matmul_with_epilogue(a, b, trans_a, trans_b, **args)
    expected, scale = reference(a, b, trans_a, trans_b, **args)
    assert_close(got, expected, scale, k)
    return a, b, args, got


@pytest.mark.parametrize("name", EPILOGUES)
@pytest.mark.parametrize("m, k, n", SMALL_SHAPES)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False)])
def test_epilogue_matches_reference(bf16_path, name, m, k, n, trans_a, trans_b):
    check_epilogue(name, m, k, n, trans_a, trans_b)


@pytest.mark.parametrize("name", ["accumulate", "all"])
def test_epilogue_across_the_cache_blocks(bf16_path, name):
    """Beta on the first K block only, bias, ReLU and mask after the last one."""
    for m, k, n in block_shapes():
        check_epilogue(name, m, k, n, False, True)


def test_relu_lets_nan_through_and_mask_zeroes_it(bf16_path):
    """As float32's epilogue: ReLU keeps NaN (np.maximum does), the mask zeroes it."""
    a = np.array([[np.nan, 1.0], [1.0, 1.0]], dtype=np.float32)
    b = np.ones((2, 2), dtype=np.float32)
    mask = np.array([[0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    with _testing.gemm_precision("bfloat16"):
        relu = _testing.matmul_with_epilogue(a, b, relu=True)
        masked = _testing.matmul_with_epilogue(a, b, relu=True, mask=mask)
    assert np.isnan(relu[0]).all() and (relu[1] == 2).all()
    assert masked[0, 0] == 0 and np.isnan(masked[0, 1]) and (masked[1] == 2).all()


def test_empty_reduction_is_the_epilogue_alone(bf16_path):
    rng = np.random.default_rng(3)
    a = np.zeros((5, 0), dtype=np.float32)
    b = np.zeros((0, 7), dtype=np.float32)
    args = epilogue_args("all", rng, 5, 7)
    with _testing.gemm_precision("bfloat16"):
        got = _testing.matmul_with_epilogue(a, b, **args)
    expected, _ = reference(a, b, False, False, **args)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("isa", ops.supported_isas())
def test_portable_path_on_every_flavour(isa):
    """The portable path runs the active flavour's float32 kernel: beta through its epilogue
    argument, the rest after the last K block, and the consumer's scratch tile."""
    previous = ops.isa()
    try:
        ops.set_isa(isa)
        with _testing.bf16_path("portable"):
            for m, k, n in [(1, 37, 29), (29, 67, 97)] + block_shapes()[:1]:
                check_epilogue("all", m, k, n, False, True)
                rng = np.random.default_rng([m, k, n])
                a, b = operand(rng, m, k, True), operand(rng, k, n, False)
                with _testing.gemm_precision("bfloat16"):
                    got, counts = _testing.matmul_via_consumer(a, b, True, False)
                assert (counts == 1).all()
                assert_close(got, *reference(a, b, True, False), k)
    finally:
        ops.set_isa(previous)


# ---- the dense layers: X·Wᵀ (bias, ReLU), Gᵀ·X and G·W ---------------------------------------

@pytest.mark.parametrize("batch, n_in, n_out", [(1, 1, 1), (1, 53, 29), (7, 13, 3),
                                                (37, 53, 29), (131, 97, 67)])
@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_dense_layer_products(bf16_path, batch, n_in, n_out, activation):
    rng = np.random.default_rng([batch, n_in, n_out])
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    grad_out = rng.standard_normal((batch, n_out)).astype(np.float32)
    with _testing.gemm_precision("bfloat16"):
        out = ops.dense_forward(x, W, b, activation)
        grad_x, grad_W, grad_b = ops.dense_backward(x, W, out, grad_out, activation)
    expected, scale = reference(x, W, False, True, bias=b, relu=activation == "relu")
    assert_close(out, expected, scale, n_in)
    # The ReLU's backward pass is exact in float32: grad_out where the output was positive.
    grad_a = grad_out * (out > 0) if activation == "relu" else grad_out
    expected, scale = reference(grad_a, x, True, False)  # Gᵀ·X
    assert_close(grad_W, expected, scale, batch)
    expected, scale = reference(grad_a, W, False, False)  # G·W
    assert_close(grad_x, expected, scale, n_out)
    np.testing.assert_allclose(grad_b, grad_a.sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gemm_path", ["automatic", "reference", "in-place", "packed"])
def test_a_batch_of_one_is_rounded_too(bf16_path, gemm_path):
    """Products too small for packing in float32 (the GEMV, the reference loop), and any forced
    float32 path, still multiply bf16 operands: the bf16 result is within the oracle's
    tolerance, the float32 one is not."""
    rng = np.random.default_rng(5)
    for k, n in [(2, 3), (301, 29)]:
        x = (1 + rng.random((1, k)) / 64).astype(np.float32)  # bf16 rounds every one of them
        W = (1 + rng.random((n, k)) / 64).astype(np.float32)
        b = np.zeros(n, dtype=np.float32)
        with _testing.gemm_precision("bfloat16"), _testing.gemm_path(gemm_path):
            got = ops.dense_forward(x, W, b, "relu")
        expected, scale = reference(x, W, False, True, bias=b, relu=True)
        assert_close(got, expected, scale, k)
        float32 = ops.dense_forward(x, W, b, "relu")
        assert np.any(np.abs(float32 - expected) > (k + 3) * U * scale)


# ---- the consumer (the fused optimizer update of a weight gradient) -------------------------

@pytest.mark.parametrize("m, k, n", SMALL_SHAPES)
@pytest.mark.parametrize("trans_a, trans_b", [(True, False), (False, True)])
def test_consumer_gets_every_tile_once(bf16_path, m, k, n, trans_a, trans_b):
    rng = np.random.default_rng([m, k, n])
    a = operand(rng, m, k, trans_a)
    b = operand(rng, k, n, trans_b)
    with _testing.gemm_precision("bfloat16"):
        got, counts = _testing.matmul_via_consumer(a, b, trans_a, trans_b)
    assert (counts == 1).all()
    expected, scale = reference(a, b, trans_a, trans_b)
    assert_close(got, expected, scale, k)


def test_consumer_across_the_cache_blocks(bf16_path):
    """K over one block: the product is handed over whole; M and N over theirs: tile by tile."""
    rng = np.random.default_rng(7)
    for m, k, n in block_shapes():
        a = operand(rng, m, k, True)
        b = operand(rng, k, n, False)
        with _testing.gemm_precision("bfloat16"):
            got, counts = _testing.matmul_via_consumer(a, b, True, False)
        assert (counts == 1).all()
        expected, scale = reference(a, b, True, False)
        assert_close(got, expected, scale, k)


def test_consumer_agrees_with_the_stored_product(bf16_path):
    """Tiles handed over hold the very bits the product stores into C."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal((97, 43)).astype(np.float32)
    b = rng.standard_normal((97, 71)).astype(np.float32)
    with _testing.gemm_precision("bfloat16"):
        consumed, _ = _testing.matmul_via_consumer(a, b, True, False)
        stored = _testing.matmul_with_epilogue(a, b, True, False)
    assert_bits_equal(consumed, stored)


# ---- threads, float64, the scope -------------------------------------------------------------

@pytest.mark.parametrize("m, k, n", [(97, 301, 65), (25, 3, 200), (300, 257, 513)])
def test_bitwise_identical_for_any_thread_count(bf16_path, m, k, n):
    rng = np.random.default_rng([m, k, n])
    a = rng.standard_normal((k, m)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    args = epilogue_args("all", rng, m, n)

    def run():
        with _testing.gemm_precision("bfloat16"):
            return (_testing.matmul_with_epilogue(a, b, True, False, **args),
                    _testing.matmul_via_consumer(a, b, True, False)[0],
                    ops.dense_forward(a.T, b.T, args["bias"], "relu"))

    previous = fastmlp.get_num_threads()
    try:
        fastmlp.set_num_threads(1)
        one = run()
        fastmlp.set_num_threads(2)
        with _testing.split_every_product():
            two = run()
    finally:
        fastmlp.set_num_threads(previous)
    for x, y in zip(one, two):
        assert_bits_equal(x, y)


def test_float64_ignores_the_scope():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((37, 53))
    W = rng.standard_normal((29, 53))
    b = rng.standard_normal(29)
    mask = np.maximum(rng.standard_normal((37, 29)), 0)
    plain = ops.dense_forward(x, W, b, "relu"), _testing.matmul_with_epilogue(x, W.T, mask=mask)
    with _testing.gemm_precision("bfloat16"):
        scoped = (ops.dense_forward(x, W, b, "relu"),
                  _testing.matmul_with_epilogue(x, W.T, mask=mask))
    for p, s in zip(plain, scoped):
        assert p.dtype == np.float64
        np.testing.assert_array_equal(p.view(np.uint64), s.view(np.uint64))


def test_scope_nests_and_restores():
    rng = np.random.default_rng(17)
    a = (1 + rng.random((8, 40)) / 64).astype(np.float32)
    b = (1 + rng.random((40, 9)) / 64).astype(np.float32)
    float32 = ops.matmul(a, b)
    bf16 = ops.matmul(a, b, precision="bfloat16")
    assert not np.array_equal(float32, bf16)
    with _testing.gemm_precision("bfloat16"):
        assert_bits_equal(ops.matmul(a, b), bf16)
        with _testing.gemm_precision("float32"):
            assert_bits_equal(ops.matmul(a, b), float32)
        assert_bits_equal(ops.matmul(a, b), bf16)
    assert_bits_equal(ops.matmul(a, b), float32)
    with pytest.raises(RuntimeError):
        with _testing.gemm_precision("bfloat16"):
            raise RuntimeError
    assert_bits_equal(ops.matmul(a, b), float32)
    with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
        _core._testing.set_gemm_precision("float16")


def test_scope_is_per_thread():
    """Another thread's products keep float32 while this one's scope is open."""
    rng = np.random.default_rng(19)
    a = (1 + rng.random((8, 40)) / 64).astype(np.float32)
    b = (1 + rng.random((40, 9)) / 64).astype(np.float32)
    float32 = ops.matmul(a, b)
    seen = []
    with _testing.gemm_precision("bfloat16"):
        worker = threading.Thread(target=lambda: seen.append(ops.matmul(a, b)))
        worker.start()
        worker.join()
    assert_bits_equal(seen[0], float32)


def test_network_gradients_run_in_bfloat16():
    """The rows layout's forward and backward (bias + ReLU, the ReLU mask, Gᵀ·X) under the scope:
    close to float32's gradients, not equal to them, and the same bits on 1 and 2 threads."""
    rng = np.random.default_rng(23)
    sizes = [53, 64, 37, 5]
    X = rng.standard_normal((97, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 97)
    weights = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
               for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [(rng.standard_normal(o) / 10).astype(np.float32) for o in sizes[1:]]

    def gradients():
        with _testing.layout("rows"):
            return _core.network_gradients(X, y, None, weights, biases, "relu", "softmax")

    def flat(result):
        return np.concatenate([np.ravel(v) for v in _arrays(result)])

    float32 = flat(gradients())
    previous = fastmlp.get_num_threads()
    try:
        fastmlp.set_num_threads(1)
        with _testing.gemm_precision("bfloat16"):
            one = flat(gradients())
        fastmlp.set_num_threads(2)
        with _testing.split_every_product(), _testing.gemm_precision("bfloat16"):
            two = flat(gradients())
    finally:
        fastmlp.set_num_threads(previous)
    assert_bits_equal(one, two)
    assert not np.array_equal(one, float32)
    np.testing.assert_allclose(one, float32, rtol=0, atol=0.05 * np.abs(float32).max())


def _arrays(result):
    """Every array in network_gradients' result, in order, whatever its nesting."""
    if isinstance(result, np.ndarray):
        yield result
    elif isinstance(result, (list, tuple)):
        for item in result:
            yield from _arrays(item)
    elif isinstance(result, (float, np.floating)):
        yield np.array([result])


def test_training_runs_in_bfloat16():
    """MLP.fit inside the scope (what precision="bfloat16" will do): the trainer's products,
    its fused weight update through the consumer included, run in bf16: the weights differ
    from float32's, by little, and are the same bits on 1 and 2 threads."""
    rng = np.random.default_rng(29)
    X = rng.standard_normal((300, 40)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(int) + (X[:, 3] > 0)

    def fit(precision, threads, split=False):
        fastmlp.set_num_threads(threads)
        model = fastmlp.MLP([40, 64, 64, 3], seed=0)
        with _testing.layout("rows"), _testing.gemm_precision(precision):
            if split:
                with _testing.split_every_product():
                    model.fit(X, y, epochs=3, batch_size=64, seed=1)
            else:
                model.fit(X, y, epochs=3, batch_size=64, seed=1)
        return [np.array(w) for w in model.weights]

    previous = fastmlp.get_num_threads()
    try:
        float32 = fit("float32", 1)
        one = fit("bfloat16", 1)
        two = fit("bfloat16", 2, split=True)
    finally:
        fastmlp.set_num_threads(previous)
    for w32, w1, w2 in zip(float32, one, two):
        assert_bits_equal(w1, w2)
        assert not np.array_equal(w1, w32)
        np.testing.assert_allclose(w1, w32, rtol=0, atol=0.02 * np.abs(w32).max())


def test_training_steps_allocate_nothing_after_the_first_epoch():
    """The bf16 driver's packing, tile and whole-product buffers grow once, as float32's do."""
    rng = np.random.default_rng(31)
    X = rng.standard_normal((1000, 30)).astype(np.float32)
    y = rng.integers(0, 5, 1000)
    counts = []
    model = fastmlp.MLP([30, 64, 32, 5], seed=0)
    with _testing.layout("rows"), _testing.gemm_precision("bfloat16"):
        model.fit(X, y, epochs=4, batch_size=64, seed=0,
                  callbacks=[lambda m, h: counts.append(_testing.workspace_allocations())])
    assert counts[1:] == [counts[0]] * 3, counts
