"""The GEMM engine: every ISA flavour the CPU has, both the packed and the in-place (small)
path, 1 and 2 threads, at the edges of every blocking size; bitwise identity across thread
counts; the thread pool (fork safety, GIL release, defaults); FASTMLP_ISA."""

import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing, ops

DTYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.fixture(params=ops.supported_isas())
def isa(request):
    previous = ops.isa()
    ops.set_isa(request.param)
    yield request.param
    ops.set_isa(previous)


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


def reference(a, b, trans_a, trans_b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)


def tolerance(k, dtype):
    # |error| of a length-k dot product of N(0,1) values grows like sqrt(k)·eps·(typical
    # partial sum); k·eps·(a bound on |a||b|) is a safe, still tight bound.
    return 8 * max(k, 1) * np.finfo(dtype).eps * 4.0 ** 2


def edge_shapes(dtype):
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


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_matmul_at_blocking_edges(isa, path, threads, dtype):
    rng = np.random.default_rng(0)
    for m, n, k in edge_shapes(dtype):
        for trans_a, trans_b in TRANSPOSES:
            a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
            got = ops.matmul(a, b, trans_a, trans_b)
            assert got.shape == (m, n) and got.dtype == dtype
            np.testing.assert_allclose(got, reference(a, b, trans_a, trans_b), rtol=0,
                                       atol=tolerance(k, dtype),
                                       err_msg=f"{isa} {path} {m}x{n}x{k} t{trans_a:d}{trans_b:d}")


def check_consumed(m, n, k, dtype, trans_a, trans_b, rng, label):
    """The product through a tile consumer (the engine's fused optimizer update uses one):
    every element handed over exactly once, with the value the stored product has."""
    a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
    got, counts = _testing.matmul_via_consumer(a, b, trans_a, trans_b)
    np.testing.assert_array_equal(counts, 1, err_msg=label)
    np.testing.assert_array_equal(got, ops.matmul(a, b, trans_a, trans_b), err_msg=label)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_a_tile_consumer_sees_every_element_once(isa, path, threads, dtype):
    rng = np.random.default_rng(4)
    for m, n, k in edge_shapes(dtype) + [(130, 70, 900), (300, 200, 64)]:
        for trans_a, trans_b in TRANSPOSES:
            check_consumed(m, n, k, dtype, trans_a, trans_b, rng,
                           f"{isa} {path} {threads}t {m}x{n}x{k} t{trans_a:d}{trans_b:d}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("m, n, k", [(3, 2, 32), (1, 300, 50), (1, 5, 1), (40, 40, 40),
                                     (256, 300, 800), (200, 20, 800), (3, 200, 800)])
def test_a_tile_consumer_on_the_default_paths(threads, dtype, m, n, k):
    """Tiny products (handed over whole), a row (GEMV), in-place and packed products, and a
    K beyond one packed block (computed whole, then handed over)."""
    rng = np.random.default_rng(5)
    for trans_a, trans_b in TRANSPOSES:
        check_consumed(m, n, k, dtype, trans_a, trans_b, rng, f"{m}x{n}x{k} t{trans_a:d}{trans_b:d}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
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
                                           reference(a, b, trans_a, trans_b), rtol=0,
                                           atol=tolerance(k, dtype))
                check_consumed(m, n, k, dtype, trans_a, trans_b, rng,
                               f"{forced} {m}x{n}x{k} t{trans_a:d}{trans_b:d}")
    assert _testing.force_gemm_path("automatic") == "automatic"
    with pytest.raises(ValueError, match="GEMM path"):
        _testing.force_gemm_path("blocked")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_strided_and_negative_stride_operands(isa, path, dtype):
    rng = np.random.default_rng(1)
    big_a = rng.standard_normal((70, 90)).astype(dtype)
    big_b = rng.standard_normal((90, 80)).astype(dtype)
    for a, b in [(big_a[::2, ::3], big_b[::3, ::2]), (big_a[::-1, 5:], big_b[5:, ::-1]),
                 (np.asfortranarray(big_a), big_b), (big_a[:, :1], big_b[:1, :])]:
        np.testing.assert_allclose(ops.matmul(a, b), reference(a, b, False, False), rtol=0,
                                   atol=tolerance(a.shape[1], dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
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


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
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


def test_num_threads_api():
    previous = fastmlp.get_num_threads()
    try:
        fastmlp.set_num_threads(3)
        assert fastmlp.get_num_threads() == 3
    finally:
        fastmlp.set_num_threads(previous)
    with pytest.raises(ValueError, match="positive"):
        fastmlp.set_num_threads(0)
    with pytest.raises(TypeError, match="integer"):
        fastmlp.set_num_threads("2")


def run_python(code, env_updates=None, **kwargs):
    env = dict(os.environ)
    env.pop("FASTMLP_ISA", None)
    env.pop("FASTMLP_NUM_THREADS", None)
    env.update(env_updates or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_thread_count_follows_cpu_affinity_and_env():
    code = "import fastmlp; print(fastmlp.get_num_threads())"
    one_cpu = sorted(os.sched_getaffinity(0))[0]
    pinned = run_python(code, preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))
    assert pinned.stdout.strip() == "1", pinned.stderr
    forced = run_python(code, {"FASTMLP_NUM_THREADS": "3"})
    assert forced.stdout.strip() == "3", forced.stderr


@pytest.mark.parametrize("isa_name", ["generic", "avx2", "avx512"])
def test_fastmlp_isa_forces_a_flavour(isa_name):
    code = "import fastmlp, numpy as np; print(fastmlp.ops.isa()); " \
           "a = np.arange(12.0).reshape(3, 4); print(float(fastmlp.ops.matmul(a, a.T).sum()))"
    result = run_python(code, {"FASTMLP_ISA": isa_name})
    if isa_name in ops.supported_isas():
        assert result.returncode == 0, result.stderr
        name, total = result.stdout.split()
        a = np.arange(12.0).reshape(3, 4)
        assert name == isa_name and float(total) == (a @ a.T).sum()
    else:
        assert result.returncode != 0 and "does not support" in result.stderr


def test_unknown_fastmlp_isa_is_an_import_error():
    result = run_python("import fastmlp", {"FASTMLP_ISA": "sse9"})
    assert result.returncode != 0
    assert "FASTMLP_ISA" in result.stderr and "expected one of generic, avx2, avx512" in result.stderr


def test_set_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown ISA"):
        ops.set_isa("neon9")


def test_forked_child_recreates_the_pool():
    """A process whose pool threads ran can fork; the child computes, trains and predicts with
    a fresh pool (multiprocessing's default start method on Linux)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork()")
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(2)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((400, 300)).astype(np.float32)
    b = rng.standard_normal((300, 500)).astype(np.float32)
    expected = ops.matmul(a, b)  # the parent's pool has run
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded fork" (3.12+)
        pid = os.fork()
    if pid == 0:  # child: compute with 2 threads, report, exit without running pytest's atexit
        try:
            os.close(read_end)
            ok = np.array_equal(ops.matmul(a, b), expected)
            # ... and train and predict (the engine's products are split over the pool too)
            X = np.random.default_rng(5).standard_normal((512, 300)).astype(np.float32)
            y = (X[:, 0] > 0).astype(int)
            model = fastmlp.MLP([300, 256, 2], seed=0)
            model.fit(X, y, epochs=10, batch_size=128, optimizer=fastmlp.Adam(lr=1e-3), seed=0)
            ok = ok and model.score(X, y) > 0.9 and model.predict(X[:7]).shape == (7,)
            os.write(write_end, b"ok" if ok else b"mismatch")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        assert os.read(read_end, 16) == b"ok"
    finally:
        os.close(read_end)
        fastmlp.set_num_threads(previous)


def test_kernels_release_the_gil():
    """While one Python thread runs a long product, another keeps running Python code."""
    a = np.random.default_rng(5).standard_normal((1500, 1500)).astype(np.float32)
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(1)
    started, finished = threading.Event(), threading.Event()
    results = []

    def work():
        started.set()
        for _ in range(3):
            results.append(ops.matmul(a, a))
        finished.set()

    try:
        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        ticks = 0
        while not finished.is_set():
            ticks += 1
            time.sleep(0.001)
        worker.join()
    finally:
        fastmlp.set_num_threads(previous)
    # Holding the GIL, the products (~0.1 s each) would leave this loop a few ticks at most.
    assert ticks >= 20
    np.testing.assert_array_equal(results[0], results[2])


def test_concurrent_calls_from_python_threads_agree():
    rng = np.random.default_rng(6)
    pairs = [(rng.standard_normal((200, 150)), rng.standard_normal((150, 180))) for _ in range(4)]
    expected = [ops.matmul(a, b) for a, b in pairs]
    outputs = [None] * 16

    def work(i):
        a, b = pairs[i % 4]
        outputs[i] = ops.matmul(a, b)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out, expected[i % 4])
