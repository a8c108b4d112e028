"""What the benchmarks measure, in one place for bench_*.py, test_reference.py and compare.py.

Workloads (GEMM shapes, networks), their synthetic data and FLOP counts; one runner per
implementation ("fastmlp", "numpy", "torch") so pytest-benchmark and compare.py time exactly
the same calls; single-threading for everyone; a report of the machine and of the BLAS that
NumPy runs.

Legend: GEMM C (M, N) = op(A) (M, K) · op(B) (K, N), op = transpose when the flag is set.
Networks: B batch size, layer_sizes [n_0, ..., n_L], K = n_L classes, n samples per epoch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import fastmlp
from reference_mlp import ReferenceMLP, torch_mlp_from, torch_parameters, torch_train_epoch

IMPLEMENTATIONS = ("fastmlp", "numpy", "torch")  # fastmlp first; the others are its peers
DTYPES = ("float32", "float64")
BENCH_DTYPE = "float32"  # the pytest benchmarks; compare.py --dtype picks either

LR = 0.01
DATA_SEED = 1234  # synthetic inputs, labels and GEMM operands
INIT_SEED = 0  # fastmlp.MLP(seed=...): every implementation starts from these weights

# Agreement expected between implementations doing the same float work in another order.
TOLERANCE = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}

# Environment variables that change which OpenBLAS kernel or blocking NumPy runs.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---- workloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Net:
    """A network trained for one epoch of n_samples in batches of batch_size.

    Epochs run in row order (``MLP.fit(shuffle=False)``): the synthetic rows are independent
    draws, so row order is already a random order, and every implementation visits the same
    batches without reproducing fastmlp's shuffling RNG. Shuffling is left out of the timing.
    """

    name: str
    layer_sizes: tuple[int, ...]
    batch_size: int
    n_samples: int

    @property
    def flops_per_sample(self) -> int:
        """6 · Σ_l n_{l-1} n_l: forward, weight-gradient and input-gradient GEMMs at 2·I·O each
        (the usual count; layer 1 skips its input gradient, so the work done is a bit less)."""
        return 6 * sum(i * o for i, o in zip(self.layer_sizes[:-1], self.layer_sizes[1:]))

    @property
    def flops_per_epoch(self) -> int:
        return self.flops_per_sample * self.n_samples

    @property
    def n_batches(self) -> int:
        return -(-self.n_samples // self.batch_size)

    @property
    def layers(self) -> str:
        return "-".join(map(str, self.layer_sizes))


# n_samples: wide has 8 batches (25.9 GFLOP, ~0.5 s at 50 GFLOP/s); mnist and digits about
# as many FLOPs as fit in ~0.1 s / ~10 ms at that rate; tiny does almost no arithmetic, so it
# measures per-batch overhead over 128 batches (a few ms, enough to beat timer noise).
NETS = (
    Net("tiny", (2, 3, 3), batch_size=32, n_samples=4096),
    Net("digits", (64, 128, 10), batch_size=64, n_samples=8192),
    # A tabular problem of 30 features (the busy-machine issue's example): 1-MFLOP products.
    Net("tabular", (30, 128, 128, 2), batch_size=32, n_samples=8192),
    Net("mnist", (784, 256, 256, 10), batch_size=128, n_samples=4096),
    Net("wide", (1024, 1024, 1024, 10), batch_size=256, n_samples=2048),
)
NET_BY_NAME = {net.name: net for net in NETS}


@dataclass(frozen=True)
class Gemm:
    """One product C (M, N) = op(A) · op(B); ``label`` says what it is (e.g. a layer's forward)."""

    label: str
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    @property
    def shape(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"

    @property
    def id(self) -> str:
        return f"{self.label}-{self.shape}"

    @property
    def op(self) -> str:
        return ("At" if self.trans_a else "A") + "." + ("Bt" if self.trans_b else "B")

    def operands(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """A and B as stored (C-contiguous): A (K, M) if trans_a else (M, K); B (N, K) if
        trans_b else (K, N); standard normal entries."""
        rng = np.random.default_rng(DATA_SEED)
        a = rng.standard_normal((self.k, self.m) if self.trans_a else (self.m, self.k))
        b = rng.standard_normal((self.n, self.k) if self.trans_b else (self.k, self.n))
        return a.astype(dtype), b.astype(dtype)


def layer_gemms(name: str, batch: int, n_in: int, n_out: int) -> tuple[Gemm, Gemm, Gemm]:
    """The three products of a dense layer with x (B, I), W (O, I) and grad_a G (B, O):
    forward X·Wᵀ (B, O), weight gradient Gᵀ·X (O, I), input gradient G·W (B, I)."""
    return (Gemm(f"{name}.fwd", m=batch, n=n_out, k=n_in, trans_b=True),
            Gemm(f"{name}.dW", m=n_out, n=n_in, k=batch, trans_a=True),
            Gemm(f"{name}.dX", m=batch, n=n_in, k=n_out))


def _largest_layer(net: Net) -> tuple[int, int]:
    """(n_in, n_out) of the layer with the most weights: where the epoch spends its FLOPs."""
    return max(zip(net.layer_sizes[:-1], net.layer_sizes[1:]), key=lambda io: io[0] * io[1])


# The 1024³ and 2048³ square products, then the three GEMMs of the largest layer of each net
# past tiny (digits 64→128 at B 64, mnist 784→256 at B 128, wide 1024→1024 at B 256).
GEMM_CASES = (Gemm("square", 1024, 1024, 1024), Gemm("square", 2048, 2048, 2048)) + tuple(
    gemm for net in NETS if net.name in ("digits", "mnist", "wide")
    for gemm in layer_gemms(net.name, net.batch_size, *_largest_layer(net)))

# The MLP-shape sweep of the GEMM targets: batch 32…256 × width 64…1024, a square layer
# (in = out = width), its three products.
SWEEP_CASES = tuple(gemm for batch in (32, 256) for width in (64, 256, 1024)
                    for gemm in layer_gemms(f"b{batch}w{width}", batch, width, width))


@functools.lru_cache(maxsize=None)
def synthetic_data(net: Net, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """X (n, n_0) standard normal and y (n,) int64 from a random linear teacher,
    y = argmax(X T) with T (n_0, K): learnable, so repeated epochs keep the loss finite.
    Cached, read-only: every implementation trains on the very same arrays."""
    rng = np.random.default_rng(DATA_SEED)
    X = rng.standard_normal((net.n_samples, net.layer_sizes[0]))
    teacher = rng.standard_normal((net.layer_sizes[0], net.layer_sizes[-1]))
    y = np.argmax(X @ teacher, axis=1).astype(np.int64)
    X = X.astype(dtype)
    X.flags.writeable = y.flags.writeable = False
    return X, y


# ---- runners: what each implementation executes ----------------------------------------


def optional_torch():
    """The torch module, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def gemm_runner(impl: str, gemm: Gemm, dtype: str):
    """A zero-argument function computing ``gemm`` with ``impl``; returns C (M, N).

    Transposed operands are views (never copied): fastmlp gets the trans flags, NumPy and
    torch get ``.T`` views, which their BLAS reads with the transpose flag."""
    a, b = gemm.operands(dtype)
    if impl == "fastmlp":
        return functools.partial(fastmlp.ops.matmul, a, b, gemm.trans_a, gemm.trans_b)
    op_a = a.T if gemm.trans_a else a
    op_b = b.T if gemm.trans_b else b
    if impl == "numpy":
        return functools.partial(np.matmul, op_a, op_b)
    if impl == "torch":
        torch = optional_torch()
        return functools.partial(torch.mm, torch.from_numpy(op_a), torch.from_numpy(op_b))
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")


class Trainer:
    """One implementation training ``net`` with SGD(LR) from the weights of ``init`` (a
    fastmlp.MLP seeded with INIT_SEED).

    ``epoch()`` trains one epoch in row order (the same batches for every implementation) and
    returns its mean loss; ``parameters()`` gives [W_1, ..., W_L, b_1, ..., b_L] as NumPy
    arrays.
    """

    def __init__(self, net: Net, X: np.ndarray, y: np.ndarray, init: fastmlp.MLP) -> None:
        raise NotImplementedError

    def epoch(self) -> float:
        raise NotImplementedError

    def parameters(self) -> list[np.ndarray]:
        raise NotImplementedError

    def predict_one(self, x: np.ndarray):
        """A zero-argument function predicting the class of the one sample x (1, n_0)."""
        raise NotImplementedError


class FastmlpTrainer(Trainer):
    def __init__(self, net, X, y, init):
        self.batch_size, self.X, self.y = net.batch_size, X, y
        self.model = init
        self.optimizer = fastmlp.SGD(lr=LR)

    def epoch(self):
        history = self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch_size,
                                 optimizer=self.optimizer, shuffle=False)
        return history.loss[0]

    def parameters(self):
        return [*self.model.weights, *self.model.biases]

    def predict_one(self, x):
        return functools.partial(self.model.predict, x)


class NumpyTrainer(Trainer):
    def __init__(self, net, X, y, init):
        self.batch_size, self.X, self.y = net.batch_size, X, y
        self.model = ReferenceMLP.from_fastmlp(init)

    def epoch(self):
        return self.model.train_epoch(self.X, self.y, self.batch_size, LR)

    def parameters(self):
        return [*self.model.weights, *self.model.biases]

    def predict_one(self, x):
        return lambda: np.argmax(self.model.forward(x)[-1], axis=1)


class TorchTrainer(Trainer):
    def __init__(self, net, X, y, init):
        torch = optional_torch()
        self.batch_size = net.batch_size
        # Copies: torch.from_numpy refuses the read-only cached arrays.
        self.X, self.y = torch.from_numpy(np.array(X)), torch.from_numpy(np.array(y))
        self.model = torch_mlp_from(init)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)

    def epoch(self):
        return torch_train_epoch(self.model, self.X, self.y, self.batch_size, self.optimizer)

    def parameters(self):
        return torch_parameters(self.model)

    def predict_one(self, x):
        torch = optional_torch()
        x_t = torch.from_numpy(np.array(x))
        self.model.eval()

        def predict():
            with torch.no_grad():
                return self.model(x_t).argmax(dim=1)
        return predict


_TRAINERS = {"fastmlp": FastmlpTrainer, "numpy": NumpyTrainer, "torch": TorchTrainer}


def make_trainer(impl: str, net: Net, dtype: str, n_samples: int | None = None) -> Trainer:
    """A fresh ``impl`` trainer on ``net``'s synthetic data (its first n_samples rows if given)."""
    if impl not in _TRAINERS:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")
    X, y = synthetic_data(net, dtype)
    if n_samples is not None:
        X, y = X[:n_samples], y[:n_samples]
    init = fastmlp.MLP(net.layer_sizes, activation="relu", output="softmax", dtype=dtype,
                       seed=INIT_SEED)
    return _TRAINERS[impl](net, X, y, init)


def max_relative_error(result, reference: np.ndarray) -> float:
    """max |result - reference| / max |reference|: one number for "same product" checks."""
    result = np.asarray(result)
    scale = float(np.max(np.abs(reference))) or 1.0
    return float(np.max(np.abs(result.astype(np.float64) - reference))) / scale


# ---- threads and environment -------------------------------------------------------------


@contextlib.contextmanager
def single_threaded():
    """Every implementation on one thread while inside: OpenBLAS and OpenMP pools via
    threadpoolctl, torch's intra-op pool, and fastmlp's (builds with ``set_num_threads``);
    the previous thread counts are restored on exit."""
    torch = optional_torch()  # imported first, so threadpoolctl also limits the pools it loads
    torch_threads = torch.get_num_threads() if torch else None
    fastmlp_threads = fastmlp.get_num_threads() if hasattr(fastmlp, "get_num_threads") else None
    with threadpool_limits(limits=1):
        if torch:
            torch.set_num_threads(1)
        if hasattr(fastmlp, "set_num_threads"):
            fastmlp.set_num_threads(1)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(torch_threads)
            if fastmlp_threads is not None:
                fastmlp.set_num_threads(fastmlp_threads)


def blas_report() -> list[str]:
    """One line per BLAS threadpoolctl finds in this process (NumPy's OpenBLAS): the kernel
    it runs ('architecture'), its version and threads."""
    lines = []
    for info in threadpool_info():
        if info["user_api"] != "blas":
            continue
        lines.append(f"{info['internal_api']} {info.get('version')}, kernel "
                     f"{info.get('architecture', '?')}, {info['num_threads']} thread(s) "
                     f"({os.path.basename(info['filepath'])})")
    return lines or ["no BLAS found by threadpoolctl"]


def openblas_overrides() -> dict[str, str]:
    """The OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE settings in the environment (set ones only)."""
    return {name: os.environ[name] for name in OPENBLAS_OVERRIDES if name in os.environ}


def cpu_model() -> str:
    """The CPU's model name, "(virtual machine)" added under a hypervisor (Linux /proc/cpuinfo)."""
    model, virtual = None, False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags":
                    virtual = "hypervisor" in value.split()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return model + (" (virtual machine)" if virtual else "")


def cache_report() -> str:
    """fastmlp's view of the data caches and the float32 cache blocks derived from them."""
    c = fastmlp.ops.cache_sizes()
    g = fastmlp.ops.gemm_config("float32")

    def size(n):
        return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10}K"
    l3 = f"{size(c['l3'])} shared by {c['l3_sharing']}" if c["l3"] else "none"
    return (f"L1d {size(c['l1d'])} ({c['l1d_ways']}-way), L2 {size(c['l2'])}, L3 {l3} "
            f"[{c['source']}]; float32 blocks MC {g['MC']} KC {g['KC']} NC {g['NC']} "
            f"(FASTMLP_CACHE_SIZES={os.environ.get('FASTMLP_CACHE_SIZES', 'unset')})")


def environment_report() -> list[str]:
    """Machine, versions, kernels and thread settings, one 'key  value' line each."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch = optional_torch()
    fastmlp_threads = (f"{fastmlp.get_num_threads()} thread(s)"
                       if hasattr(fastmlp, "get_num_threads")
                       else "one thread (no set_num_threads in this build)")
    overrides = openblas_overrides()
    lines = [
        f"machine   {cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), "
        f"{platform.system()} {platform.machine()}",
        f"python    {platform.python_version()}; numpy {np.__version__}; "
        + (f"torch {torch.__version__}" if torch else "torch not installed"),
        f"fastmlp   {fastmlp.__version__}, isa {fastmlp.ops.isa()} (FASTMLP_ISA="
        f"{os.environ.get('FASTMLP_ISA', 'unset')}), {fastmlp_threads}, "
        f"from {os.path.dirname(fastmlp.__file__)}",
    ]
    if hasattr(fastmlp.ops, "cache_sizes"):
        lines.append(f"caches    {cache_report()}")
    lines += [f"BLAS      {line}" for line in blas_report()]
    if torch:
        lines.append(f"torch     cpu capability {torch.backends.cpu.get_cpu_capability()}, "
                     f"{torch.get_num_threads()} thread(s)")
    lines.append("env       " + ", ".join(f"{name}={overrides.get(name, 'unset')}"
                                        for name in OPENBLAS_OVERRIDES))
    return lines
