"""The GEMM (src/cpp/gemm/) through ops.matmul, against a float64 NumPy product.

Legend: M, N rows and columns of a product, K its reduction length; eps is the dtype's machine
epsilon. The first part writes shapes (M, K, N), the engine part (M, N, K).

First part, every test on every SIMD flavour and thread count (tests/conftest.py): float32
and float64 on awkward shapes (1, primes, one off the MR/NR/MC/KC/NC blocks of every flavour,
K = 0, N > NC) and on every input layout (transposed, strided, negative strides, Fortran,
read-only, unaligned); each flavour forced with FASTMLP_ISA in a fresh process. The engine
part: each flavour × the packed and the in-place (small) path × 1 and 2 threads (every product
split) at the edges of every blocking size; the tile consumer of the trainer's fused update;
every path the override forces; bias and ReLU in the write-back; bitwise identity across
thread counts.
The large grids' remainders are marked `slow` (`python -m pytest -m slow`): more shapes, more
layout pairs, the flavours other than this process's own on two threads, the forced sweep.
"""

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing, ops
from _helpers import (DTYPES, F64, LAYOUTS, ON_EVERY_ISA_AND_THREAD_COUNT, TRANS, TRANS_IDS,
                      assert_fresh, assert_unchanged, freeze, gemm_atol, laid_out, layout_pairs,
                      normal, ref_matmul, rng_for, run_python, slow_except)


# ---- each flavour forced with FASTMLP_ISA ----------------------------------------------------

_FORCED_ISA_SCRIPT = r"""
import os, sys
import numpy as np
from fastmlp import _testing, ops
assert ops.isa() == os.environ["FASTMLP_ISA"], (ops.isa(), os.environ["FASTMLP_ISA"])
rng = np.random.default_rng(0)
shapes = [(1, 1, 1), (1, 255, 257), (1, 513, 17), (7, 13, 31), (17, 257, 9), (130, 300, 67),
          (481, 257, 9), (129, 128, 129), (5, 9, 2053), (2, 260, 4099), (61, 1601, 45),
          (3, 0, 5)]
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


# One fresh process per flavour running the whole sweep (0.4 s each): `slow`. The default run
# forces each flavour in a fresh process in test_cpu.py::test_fastmlp_isa_forces_a_flavour and
# runs each flavour's kernels in-process (every other test of this file). Its `isa` is a
# parameter, which takes the place of the engine part's fixture of that name.
@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.slow
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_forced_isa_kernels_match_reference(isa):
    """Each ISA this CPU runs (forced with FASTMLP_ISA in a fresh process) gives correct GEMMs."""
    if isa not in ops.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    proc = run_python(_FORCED_ISA_SCRIPT, {"FASTMLP_ISA": isa})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


# ---- cache blocks derived from overridden cache sizes (FASTMLP_CACHE_SIZES) ------------------

# Tiny caches force many blocks in every dimension (e.g. avx512 float32 MC 48, KC 64, NC 192);
# the others are the blocking of the machines the project is measured on, simulated here.
CACHE_OVERRIDES = {
    "tiny": "l1d=4K,l1d_ways=8,l2=16K,l2_ways=8,l3=64K,l3_sharing=1",
    "zen4": "l1d=32K,l1d_ways=8,l2=1M,l2_ways=8,l3=32M,l3_ways=16,l3_sharing=8",
    "sapphire_rapids": "l1d=48K,l1d_ways=12,l2=2M,l2_ways=16,l3=105M,l3_ways=15,l3_sharing=56",
}


# The forced-flavour sweep under each cache override: this process's flavour in the default
# run (three fresh processes, ~1 s), the others `slow`.
@pytest.mark.parametrize("isa", [
    pytest.param(name, marks=() if name == ops.isa() else pytest.mark.slow)
    for name in ("generic", "avx2", "avx512")])
@pytest.mark.parametrize("caches", list(CACHE_OVERRIDES))
def test_kernels_match_reference_under_overridden_caches(caches, isa):
    if isa not in ops.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    proc = run_python(_FORCED_ISA_SCRIPT,
                      {"FASTMLP_ISA": isa, "FASTMLP_CACHE_SIZES": CACHE_OVERRIDES[caches]})
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

# The default run: 1, primes, non-multiples of every NR, the GEMV, K around and over KC, M over
# the SIMD MCs, several blocks in M, K and N, N over every NC, K = 0, an empty result.
MATMUL_DEFAULT_SHAPES = [
    (1, 1, 1), (7, 13, 31), (17, 15, 31), (1, 255, 257), (5, 257, 3), (97, 256, 95),
    (131, 513, 9), (481, 257, 9), (300, 257, 513), (9, 31, 2053), (2, 260, 4099), (3, 0, 5),
    (0, 3, 4),
]


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("m, k, n", slow_except(MATMUL_SHAPES, MATMUL_DEFAULT_SHAPES,
                                              unpack=True), ids=lambda s: str(s))
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


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_k0_is_zeros(dtype):
    got = ops.matmul(np.ones((3, 0), dtype), np.ones((0, 5), dtype))
    assert_fresh(got, dtype, (3, 5))
    np.testing.assert_array_equal(got, np.zeros((3, 5)))


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("layout_a, layout_b", layout_pairs())
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


@ON_EVERY_ISA_AND_THREAD_COUNT
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


@ON_EVERY_ISA_AND_THREAD_COUNT
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


@ON_EVERY_ISA_AND_THREAD_COUNT
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


def kernel_edge_shapes(c):
    """(M, K, N) one off the active kernel's MR, NR, row_NR, MC, KC and NC."""
    mr, nr, mc, kc, nc, row = (c[key] for key in ("MR", "NR", "MC", "KC", "NC", "row_NR"))
    return [(max(mr - 1, 1), kc + 1, nr + 1), (mr + 1, kc - 1, max(nr - 1, 1)),
            (mc + 1, 17, 2 * nr + 1), (mc - 1, kc + 1, nr), (3, 33, nc + 1),
            (1, kc, row + 1), (1, kc + 1, max(row - 1, 1)), (2 * mr + 1, 2 * kc + 1, 3)]


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("path", ["packed", "small"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_block_edges_of_active_kernel(dtype, path):
    """Shapes aimed at the active ISA's blocks (ops.gemm_config), through the packed path and
    through the in-place small path (fastmlp._testing.force_gemm_path)."""
    shapes = kernel_edge_shapes(ops.gemm_config(np.dtype(dtype).name))
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


@ON_EVERY_ISA_AND_THREAD_COUNT
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_is_deterministic(dtype):
    """The same product twice (threaded above 4e6 FLOPs) gives bitwise the same result."""
    rng = rng_for("matmul-repeat", dtype)
    a, b = normal(rng, (150, 270), dtype), normal(rng, (270, 130), dtype)
    np.testing.assert_array_equal(ops.matmul(a, b), ops.matmul(a, b))


@ON_EVERY_ISA_AND_THREAD_COUNT
def test_matmul_accepts_nested_lists_as_float64():
    got = ops.matmul([[1.0, 2.0]], [[3.0], [4.0]])
    assert_fresh(got, F64, (1, 1))
    assert got[0, 0] == 11.0


# ---- the engine: flavour × path × threads at the blocking edges; consumers; thread counts ----

# (M, N, K) from here on; the order of TRANSPOSES is the order of the seeded draws.
FLOAT_TYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.fixture(params=["in-place", "packed"])
def path(request):
    """Every product through the in-place or the packed path, whatever its size."""
    with _testing.gemm_path(request.param):
        yield request.param


@pytest.fixture(params=[1, 2])
def threads(request):
    """1 or 2 threads, every product split over them (the cost model would keep most of
    these test shapes on one thread)."""
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(request.param)
    with _testing.split_every_product():
        yield request.param
    fastmlp.set_num_threads(previous)


def operands(rng, m, n, k, dtype, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def tolerance(k, dtype):
    # |error| of a length-k dot product of N(0,1) values grows like sqrt(k)·eps·(typical
    # partial sum); k·eps·(a bound on |a||b|) is a safe, still tight bound.
    return 8 * max(k, 1) * np.finfo(dtype).eps * 4.0 ** 2


def blocking_edge_shapes(dtype):
    """(M, N, K): 1, primes, and one below / at / above every tile and block size."""
    cfg = ops.gemm_config(dtype)
    shapes = {(1, 1, 1), (1, 7, 1), (7, 13, 31), (1, 67, 131), (3, 1, 5), (13, 17, 0)}
    # MR + 3, + 4, + 7, + 8: last row blocks that the 4- and 8-row tiles take (where an ISA has them)
    for d in (cfg["MR"] - 1, cfg["MR"], cfg["MR"] + 1, 2 * cfg["MR"] + 1, cfg["MR"] + 3,
              cfg["MR"] + 4, cfg["MR"] + 7, cfg["MR"] + 8, 4, 8):
        shapes.add((d, 11, 9))
    half = cfg["NR"] // 2  # a last panel this narrow takes the half-width kernel
    for d in (half, half + 1, cfg["NR"] - 1, cfg["NR"], cfg["NR"] + 1, cfg["NR"] + half,
              cfg["row_NR"] + 1):
        shapes.add((5, d, 9))
        shapes.add((1, d, 9))
    for d in (cfg["KC"] - 1, cfg["KC"], cfg["KC"] + 1, 2 * cfg["KC"] + 3):
        shapes.add((13, 17, d))
    for d in (cfg["MC"] - 1, cfg["MC"] + 1):
        shapes.add((d, 7, 5))
    for d in (cfg["NC"] - 1, cfg["NC"] + 1):
        shapes.add((5, d, 3))
    return sorted(shapes)


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
def test_matmul_at_blocking_edges(isa, path, threads, dtype):
    rng = np.random.default_rng(0)
    for m, n, k in blocking_edge_shapes(dtype):
        for trans_a, trans_b in TRANSPOSES:
            a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
            got = ops.matmul(a, b, trans_a, trans_b)
            assert got.shape == (m, n) and got.dtype == dtype
            np.testing.assert_allclose(got, ref_matmul(a, b, trans_a, trans_b), rtol=0,
                                       atol=tolerance(k, dtype),
                                       err_msg=f"{isa} {path} {m}x{n}x{k} t{trans_a:d}{trans_b:d}")


def check_consumed(m, n, k, dtype, trans_a, trans_b, rng, label):
    """The product through a tile consumer (the engine's fused optimizer update uses one):
    every element handed over exactly once, with the value the stored product has."""
    a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
    got, counts = _testing.matmul_via_consumer(a, b, trans_a, trans_b)
    np.testing.assert_array_equal(counts, 1, err_msg=label)
    np.testing.assert_array_equal(got, ops.matmul(a, b, trans_a, trans_b), err_msg=label)


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
def test_a_tile_consumer_sees_every_element_once(isa, path, threads, dtype):
    rng = np.random.default_rng(4)
    for m, n, k in blocking_edge_shapes(dtype) + [(130, 70, 900), (300, 200, 64)]:
        for trans_a, trans_b in TRANSPOSES:
            check_consumed(m, n, k, dtype, trans_a, trans_b, rng,
                           f"{isa} {path} {threads}t {m}x{n}x{k} t{trans_a:d}{trans_b:d}")


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("m, n, k", [(3, 2, 32), (1, 300, 50), (1, 5, 1), (40, 40, 40),
                                     (256, 300, 800), (200, 20, 800), (3, 200, 800)])
def test_a_tile_consumer_on_the_default_paths(threads, dtype, m, n, k):
    """Tiny products (handed over whole), a row (GEMV), in-place and packed products, and a
    K beyond one packed block (computed whole, then handed over)."""
    rng = np.random.default_rng(5)
    for trans_a, trans_b in TRANSPOSES:
        check_consumed(m, n, k, dtype, trans_a, trans_b, rng, f"{m}x{n}x{k} t{trans_a:d}{trans_b:d}")


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("forced", ["reference", "in-place", "packed", "automatic"])
def test_every_path_the_override_forces(forced, dtype):
    """Each path of the GEMM's dispatch, forced for every shape (the reference loop too, which
    the automatic choice keeps for tiny products), into C and through a tile consumer."""
    rng = np.random.default_rng(6)
    with _testing.gemm_path(forced):
        for m, n, k in [(3, 2, 32), (1, 300, 50), (1, 5, 0), (40, 40, 40), (13, 70, 900)]:
            for trans_a, trans_b in TRANSPOSES:
                a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
                np.testing.assert_allclose(ops.matmul(a, b, trans_a, trans_b),
                                           ref_matmul(a, b, trans_a, trans_b), rtol=0,
                                           atol=tolerance(k, dtype))
                check_consumed(m, n, k, dtype, trans_a, trans_b, rng,
                               f"{forced} {m}x{n}x{k} t{trans_a:d}{trans_b:d}")
    assert _testing.force_gemm_path("automatic") == "automatic"
    with pytest.raises(ValueError, match="GEMM path"):
        _testing.force_gemm_path("blocked")


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
def test_strided_and_negative_stride_operands(isa, path, dtype):
    rng = np.random.default_rng(1)
    big_a = rng.standard_normal((70, 90)).astype(dtype)
    big_b = rng.standard_normal((90, 80)).astype(dtype)
    for a, b in [(big_a[::2, ::3], big_b[::3, ::2]), (big_a[::-1, 5:], big_b[5:, ::-1]),
                 (np.asfortranarray(big_a), big_b), (big_a[:, :1], big_b[:1, :])]:
        np.testing.assert_allclose(ops.matmul(a, b), ref_matmul(a, b, False, False), rtol=0,
                                   atol=tolerance(a.shape[1], dtype))


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
def test_fused_bias_relu_epilogue(isa, path, threads, dtype):
    """Bias and ReLU are applied once, in the last K block's write-back, not per block."""
    rng = np.random.default_rng(2)
    kc = ops.gemm_config(dtype)["KC"]
    for batch, n_in, n_out in [(1, 5, 3), (13, kc + 1, 37), (40, 2 * kc + 5, 70), (5, 7, 1)]:
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        W = rng.standard_normal((n_out, n_in)).astype(dtype)
        b = rng.standard_normal(n_out).astype(dtype) * 3
        expected = x.astype(np.float64) @ W.T.astype(np.float64) + b
        atol = tolerance(n_in, dtype)
        np.testing.assert_allclose(ops.dense_forward(x, W, b, "identity"), expected, atol=atol, rtol=0)
        np.testing.assert_allclose(ops.dense_forward(x, W, b, "relu"), np.maximum(expected, 0),
                                   atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", FLOAT_TYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("use_path", ["in-place", "packed"])
# (13|7|5, 600, 300): one row more than the register tile of avx512 (12), avx2 (6) and generic
# (4): no part of a split may be a lone row, which the in-place path computes differently.
@pytest.mark.parametrize("shape", [(300, 257, 513), (64, 1000, 300), (1, 3000, 700), (513, 40, 300),
                                   (13, 600, 300), (7, 600, 300), (5, 600, 300)])
def test_results_are_bitwise_identical_for_any_thread_count(shape, use_path, dtype):
    m, n, k = shape
    rng = np.random.default_rng(3)
    previous = fastmlp.get_num_threads()
    previous_path = _testing.force_gemm_path(use_path)
    try:
        results = {}
        for trans_a, trans_b in TRANSPOSES:
            a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
            for n_threads in (1, 2, 3):
                fastmlp.set_num_threads(n_threads)
                with _testing.split_every_product():
                    results[n_threads] = ops.matmul(a, b, trans_a, trans_b)
            np.testing.assert_array_equal(results[1], results[2])
            np.testing.assert_array_equal(results[1], results[3])
    finally:
        fastmlp.set_num_threads(previous)
        _testing.force_gemm_path(previous_path)
