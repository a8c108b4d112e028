"""The thread pool (src/cpp/threads.*) under adversity: a worker that never runs, tasks that
throw, threads the OS refuses, a busy machine (the engine's contention guard), a fork after
the pool ran, kernels called from several Python threads (the GIL released); and how the
thread count is governed (the API, CPU affinity, FASTMLP_NUM_THREADS, OMP_NUM_THREADS, the
cap, threadpoolctl, joblib)."""

import io
import os
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, SGD, Adam, _testing, ops
from fastmlp._threads import available_cpus
from _helpers import run_python


@pytest.fixture
def threads():
    """Sets the thread count for a test and restores it after."""
    previous = fastmlp.get_num_threads()
    yield fastmlp.set_num_threads
    fastmlp.set_num_threads(previous)


def finishes(function, seconds=60):
    """function() run on a Python thread: its result, or a test failure if it hangs."""
    result = []
    worker = threading.Thread(target=lambda: result.append(function()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{function} did not return within {seconds} s: the pool hangs")
    return result[0]


# ---- regions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_threads", [2, 3, 4])
def test_every_task_runs_once_in_its_own_region(threads, n_threads):
    threads(n_threads)
    assert _testing.check_regions(300, 7)
    assert _testing.check_regions(300, 1)
    assert _testing.check_regions(50, 64)


@pytest.mark.parametrize("n_threads, stalled", [(2, 1), (3, 1), (4, 3)])
def test_a_region_ends_when_its_work_is_done_though_workers_never_wake(threads, n_threads,
                                                                       stalled):
    """Workers the OS has not scheduled take nothing and hold no one up: the caller runs the
    tasks they did not claim. When they do run, they find no stale task to take."""
    threads(n_threads)
    with _testing.stalled_workers(stalled):
        assert finishes(lambda: _testing.check_regions(200, 5))
    with _testing.stalled_workers(n_threads - 1):  # every worker stalled
        rng = np.random.default_rng(0)
        a = rng.standard_normal((300, 200)).astype(np.float32)
        b = rng.standard_normal((200, 400)).astype(np.float32)
        with _testing.split_every_product():
            product = finishes(lambda: ops.matmul(a, b))
    np.testing.assert_allclose(product, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


def test_training_finishes_with_a_stalled_worker_and_the_same_weights(threads):
    X = np.random.default_rng(1).standard_normal((300, 40)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    trained = {}
    for stalled in (0, 1):
        threads(2)
        model = MLP([40, 64, 2], seed=0)
        with _testing.stalled_workers(stalled), _testing.split_every_product():
            finishes(lambda: model.fit(X, y, epochs=2, batch_size=50, optimizer=SGD(lr=0.1),
                                       seed=0))
        trained[stalled] = model.weights + model.biases
    for a, b in zip(trained[0], trained[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("failing", [0, 5, 7])
def test_an_exception_in_a_task_reaches_the_caller_after_the_other_tasks(threads, n_threads,
                                                                         failing):
    threads(n_threads)
    message, ran = _testing.failing_region(8, failing)
    assert message == f"task {failing} failed"
    assert ran == 7
    assert _testing.check_regions(20, 4)  # the pool goes on working


# ---- the cost model and the contention guard ------------------------------------------------


def test_the_cost_model_is_measured(threads):
    threads(2)
    model = ops.cost_model("float32")
    assert model["threads"] == 2
    assert model["flops_per_second"] > 1e8  # no CPU this runs on is slower
    assert 0 < model["region_seconds"] < 0.01
    threads(1)
    assert ops.cost_model("float64")["region_seconds"] == 0.0


@pytest.mark.parametrize("sizes, batch_size, parallel", [
    ([30, 128, 128, 2], 32, None),    # 1-MFLOP products: a few microseconds each
    ([64, 128, 10], 64, None),        # the digits net
    ([1024, 1024, 10], 256, True),    # 537-MFLOP products
])
def test_nets_use_the_pool_as_the_cost_model_says(threads, sizes, batch_size, parallel):
    """Which nets use the pool, seen through the contention guard: with every parallel
    region made to look slow, a net whose steps use the pool reports a fallback, one whose
    steps run on one thread cannot. The engine asks the cost model per layer (a product of
    F FLOPs is split when F / speed · (1 - 1/threads) ≥ risk · region cost); the model is
    measured on this machine, so whether the 1-MFLOP layers split depends on it (on an idle
    2-vCPU Zen 5 they do not: benchmarks/README.md), while 537-MFLOP products split on any."""
    X = np.random.default_rng(4).standard_normal((2 * batch_size, sizes[0])).astype(np.float32)
    y = np.arange(2 * batch_size) % sizes[-1]
    threads(2)
    model = ops.cost_model("float32")  # measured now, for two threads; fit uses the same
    splits = [2.0 * batch_size * n_in * n_out / model["flops_per_second"]
              * (1 - 1 / model["threads"]) >= model["risk_factor"] * model["region_seconds"]
              for n_in, n_out in zip(sizes, sizes[1:])]
    if parallel is not None:
        assert any(splits) == parallel
    with _testing.slow_regions():
        history = MLP(sizes, seed=0).fit(X, y, epochs=1, batch_size=batch_size, seed=0)
    assert history.one_thread_fallback == [any(splits)]


@pytest.mark.parametrize("optimizer", [lambda: SGD(lr=0.05, momentum=0.9), lambda: Adam(lr=1e-3)])
def test_parallel_steps_that_lose_fall_back_to_one_thread_with_the_same_results(threads,
                                                                                optimizer):
    """With every parallel region made to look three times slower, the guard measures the first
    parallel step as a loss, runs the rest of the epoch on one thread, says so at verbose,
    and the weights are those of a one-thread run."""
    X = np.random.default_rng(2).standard_normal((700, 50)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    threads(1)
    alone = MLP([50, 96, 64, 2], seed=0)
    plain = alone.fit(X, y, epochs=3, batch_size=64, optimizer=optimizer(), seed=0)
    assert plain.one_thread_fallback == [False] * 3

    threads(2)
    model = MLP([50, 96, 64, 2], seed=0)
    printed = io.StringIO()
    with _testing.split_every_product(), _testing.slow_regions():
        history = model.fit(X, y, epochs=3, batch_size=64, optimizer=optimizer(), seed=0,
                            verbose=printed)
    assert history.one_thread_fallback[0]
    assert "the rest of this epoch runs on one thread" in printed.getvalue()
    assert history.loss == plain.loss
    for a, b in zip(model.weights + model.biases, alone.weights + alone.biases):
        np.testing.assert_array_equal(a, b)


def test_fallback_history_survives_a_checkpoint(tmp_path, threads):
    X = np.random.default_rng(3).standard_normal((200, 30)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    threads(2)
    path = tmp_path / "run.ckpt"
    model = MLP([30, 32, 2], seed=0)
    with _testing.split_every_product(), _testing.slow_regions():
        model.fit(X, y, epochs=1, batch_size=50, checkpoint=path, seed=0)
    resumed = MLP([30, 32, 2], seed=0).fit(X, y, epochs=2, batch_size=50, checkpoint=path,
                                          resume=True, seed=0)
    assert resumed.one_thread_fallback[0] is True
    assert len(resumed.one_thread_fallback) == 2


# ---- how many threads ------------------------------------------------------------------------


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


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_thread_count_follows_cpu_affinity_and_env():
    code = "import fastmlp; print(fastmlp.get_num_threads())"
    one_cpu = sorted(os.sched_getaffinity(0))[0]
    pinned = run_python(code, preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))
    assert pinned.stdout.strip() == "1", pinned.stderr
    forced = run_python(code, {"FASTMLP_NUM_THREADS": "3"})
    assert forced.stdout.strip() == "3", forced.stderr


def test_set_num_threads_refuses_absurd_values():
    cap = 4 * available_cpus()
    with pytest.raises(ValueError, match=f"at most {cap}"):
        fastmlp.set_num_threads(cap + 1)
    with pytest.raises(ValueError, match="positive"):
        fastmlp.set_num_threads(-3)
    with pytest.raises(TypeError, match="integer"):
        fastmlp.set_num_threads(True)
    with pytest.raises(TypeError, match="integer"):
        fastmlp.set_num_threads(2.0)


@pytest.mark.parametrize("env, expected", [
    ({"OMP_NUM_THREADS": "1"}, "1"),
    ({"OMP_NUM_THREADS": "3,2"}, "3"),               # a nested list: the outer level
    ({"OMP_NUM_THREADS": "1", "FASTMLP_NUM_THREADS": "3"}, "3"),  # fastmlp's own wins
    ({"OMP_NUM_THREADS": "zero"}, "cpus"),            # not a count: ignored
    ({"FASTMLP_NUM_THREADS": "0", "OMP_NUM_THREADS": "2"}, "2"),
])
def test_default_thread_count_from_the_environment(env, expected):
    result = run_python("import fastmlp; print(fastmlp.get_num_threads())", env)
    assert result.returncode == 0, result.stderr
    cpus = str(available_cpus())
    assert result.stdout.strip() == (cpus if expected == "cpus" else expected)


def test_an_environment_value_above_the_cap_is_capped_with_a_warning():
    code = """
        import warnings
        warnings.simplefilter("error")
        import fastmlp
        try:
            fastmlp.get_num_threads()
        except RuntimeWarning as w:
            print("warned:", w)
        print(fastmlp.get_num_threads())
    """
    result = run_python(code, {"FASTMLP_NUM_THREADS": "1024"})
    assert result.returncode == 0, result.stderr
    warned, count = result.stdout.strip().splitlines()
    cap = 4 * available_cpus()
    assert "FASTMLP_NUM_THREADS=1024" in warned and f"cap of {cap}" in warned
    assert count == str(cap)


# Thread creation fails: the pool runs with the threads it got, warns, and never hangs. Three
# ways a machine refuses threads: RLIMIT_NPROC (not applied to root), RLIMIT_AS (room for less
# than one thread stack), a pids cgroup (needs a writable cgroup hierarchy: root, here).
THREADS_REFUSED = """
    import os, resource, warnings
    import numpy as np
    import fastmlp
    fastmlp.set_num_threads(1)
{limit}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastmlp.set_num_threads(4)
    restore()  # room again for the product's buffers
    print(fastmlp.get_num_threads())
    print([str(w.message) for w in caught if w.category is RuntimeWarning])
    a = np.arange(300 * 200, dtype=np.float32).reshape(300, 200) / 1e4
    print(bool(np.allclose(fastmlp.ops.matmul(a, a.T), a.astype(np.float64) @ a.T, rtol=1e-4)))
"""
LIMITS = {
    "RLIMIT_NPROC": """
    before = resource.getrlimit(resource.RLIMIT_NPROC)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, before[1]))
    restore = lambda: resource.setrlimit(resource.RLIMIT_NPROC, before)""",
    "RLIMIT_AS": """
    before = resource.getrlimit(resource.RLIMIT_AS)
    size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 20), before[1]))
    restore = lambda: resource.setrlimit(resource.RLIMIT_AS, before)""",
    "pids cgroup": """
    group = os.environ["FASTMLP_TEST_CGROUP"]
    with open(os.path.join(group, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    def set_max(value):
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write(value)
    set_max(str(len(os.listdir("/proc/self/task"))))  # no room for one more thread
    restore = lambda: set_max("max")""",
}
PIDS_CGROUP_ROOT = "/sys/fs/cgroup/pids"  # cgroup v1's pids hierarchy, where mounted
# AddressSanitizer (CI's sanitizer stage preloads it) reserves terabytes of address space for
# its shadow memory, so no address-space limit leaves it room to start.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux resource limits")
@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_threads_the_os_refuses_leave_a_smaller_pool_and_a_warning(limit, tmp_path):
    env = {"OPENBLAS_NUM_THREADS": "1"}  # NumPy's own threads would be refused too
    group = None
    if limit == "RLIMIT_NPROC" and os.geteuid() == 0:
        pytest.skip("root is exempt from RLIMIT_NPROC (the other limits cover the same path)")
    if limit == "RLIMIT_AS" and UNDER_ASAN:
        pytest.skip("AddressSanitizer needs more address space than any limit leaves")
    if limit == "pids cgroup":
        if not os.access(PIDS_CGROUP_ROOT, os.W_OK):
            pytest.skip(f"no writable pids cgroup hierarchy at {PIDS_CGROUP_ROOT}")
        group = os.path.join(PIDS_CGROUP_ROOT, f"fastmlp-test-{os.getpid()}-{tmp_path.name}")
        os.mkdir(group)
        env["FASTMLP_TEST_CGROUP"] = group
    try:
        code = THREADS_REFUSED.format(limit=textwrap.indent(textwrap.dedent(LIMITS[limit]),
                                                            "    "))
        result = run_python(code, env, timeout=60)
    finally:
        if group:
            os.rmdir(group)
    assert result.returncode == 0, result.stderr
    count, warnings_, correct = result.stdout.strip().splitlines()
    assert int(count) < 4
    assert "could start only" in warnings_ and "of the 4 threads" in warnings_
    assert correct == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux resource limits")
@pytest.mark.skipif(UNDER_ASAN, reason="AddressSanitizer needs more than 4 GB of address space")
def test_the_reported_hang_is_gone():
    """FASTMLP_NUM_THREADS=1024 under a 4 GB address-space limit hung in the pool's
    constructor: now the count is capped (with a warning) and training finishes."""
    import resource
    code = """
        import warnings
        import numpy as np
        import fastmlp
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            X = np.random.default_rng(0).standard_normal((512, 300)).astype(np.float32)
            model = fastmlp.MLP([300, 256, 2], seed=0)
            model.fit(X, (X[:, 0] > 0).astype(int), epochs=2, batch_size=128, seed=0)
        print(fastmlp.get_num_threads(), len(caught))
    """
    result = run_python(code, {"FASTMLP_NUM_THREADS": "1024"}, timeout=60,
                        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS,
                                                              (4_000_000_000, 4_000_000_000)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(4 * available_cpus()), "1"]


# ---- a fork; calls from several Python threads -----------------------------------------------


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


# ---- governed like the other pools -----------------------------------------------------------


def test_threadpoolctl_lists_and_limits_the_pool(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not hasattr(threadpoolctl, "register"):
        pytest.skip("threadpoolctl < 3.5 has no register()")
    threads(2)
    ours = [info for info in threadpoolctl.threadpool_info() if info["internal_api"] == "fastmlp"]
    assert len(ours) == 1
    assert ours[0]["num_threads"] == 2 and ours[0]["version"] == fastmlp.__version__
    with threadpoolctl.threadpool_limits(1):
        assert fastmlp.get_num_threads() == 1
    assert fastmlp.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(limits=1, user_api="fastmlp"):
        assert fastmlp.get_num_threads() == 1
    assert fastmlp.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(10_000):  # above the cap: no tighter than the cap
        assert fastmlp.get_num_threads() == 4 * available_cpus()
    assert fastmlp.get_num_threads() == 2


def test_joblib_workers_get_their_share_of_the_cores():
    """joblib sets OMP_NUM_THREADS in its worker processes to cpus // n_jobs; fastmlp honours
    it, so GridSearchCV(n_jobs=2) on two cores runs one fastmlp thread per worker."""
    joblib = pytest.importorskip("joblib")
    cpus = available_cpus()
    counts = joblib.Parallel(n_jobs=2)(joblib.delayed(fastmlp.get_num_threads)() for _ in range(2))
    assert counts == [max(cpus // 2, 1)] * 2


def test_estimators_say_so_at_verbose(threads, capsys):
    from fastmlp import MLPClassifier
    from fastmlp.estimators import ConvergenceWarning
    X = np.random.default_rng(5).standard_normal((200, 20)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    threads(2)
    with _testing.split_every_product(), _testing.slow_regions(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=2 does not converge
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=2, verbose=True, random_state=0,
                      n_iter_no_change=100).fit(X, y)
    assert "the rest of this epoch runs on one thread" in capsys.readouterr().out
