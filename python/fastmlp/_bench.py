"""``fastmlp bench``: a short built-in comparison of training throughput — fastmlp against a
plain-NumPy MLP with the same math, and PyTorch when it is installed — on synthetic data,
every implementation on one thread, all measured in this one process.

(The full comparison, with GEMM tables and more nets, is ``benchmarks/compare.py`` in the
source tree.)

Legend: N samples, B batch size, I in-features, O out-features, K classes.
Each implementation runs one epoch of plain SGD (lr 0.01) in row order, softmax + NLL loss,
ReLU hidden layers, float32, from the same initial weights. The first epoch's mean loss is
compared across implementations (the "check" column) before anything is timed; then epochs
are timed round-robin, so drift in clock speed hits all alike, and the median is reported.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["run_bench"]

LR = 0.01


@dataclass(frozen=True)
class Net:
    name: str
    layers: tuple[int, ...]
    batch_size: int
    n_samples: int


NETS = (
    Net("digits-like", (64, 128, 10), 32, 4096),
    Net("mnist-like", (784, 256, 10), 64, 2048),
    Net("deeper", (256, 256, 256, 10), 128, 4096),
)


def _data(net: Net, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((net.n_samples, net.layers[0])).astype(np.float32)
    y = rng.integers(0, net.layers[-1], net.n_samples).astype(np.int64)
    return X, y


# ---- the implementations: each is an object with epoch() -> mean loss ----------------------


class FastmlpEpoch:
    def __init__(self, model, X, y, batch_size):
        from fastmlp import SGD

        self.model, self.X, self.y, self.batch_size = model, X, y, batch_size
        self.optimizer = SGD(lr=LR)

    def epoch(self) -> float:
        history = self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch_size,
                                 optimizer=self.optimizer, shuffle=False)
        return history.loss[0]


class NumpyEpoch:
    """a_l = h_{l-1} W_lᵀ + b_l; ReLU on hidden layers; dlogits = (softmax - onehot) / B;
    grad_W = dAᵀ h_{l-1}, grad_b = Σ dA, dh_{l-1} = dA W_l · [h_{l-1} > 0]; p -= lr · grad."""

    def __init__(self, model, X, y, batch_size):
        self.weights = [np.array(w) for w in model.weights]  # (O, I)
        self.biases = [np.array(b) for b in model.biases]  # (O,)
        self.X, self.y, self.batch_size = X, y, batch_size

    def step(self, X, y) -> float:
        outputs = [X]
        last = len(self.weights) - 1
        for layer, (W, b) in enumerate(zip(self.weights, self.biases)):
            a = outputs[-1] @ W.T
            a += b
            if layer < last:
                np.maximum(a, 0, out=a)
            outputs.append(a)
        z = outputs[-1]
        rows = np.arange(z.shape[0])
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, y], dtype=np.float64))
        grad = e / total
        grad[rows, y] -= 1
        grad /= z.shape[0]
        for layer in range(last, -1, -1):
            h = outputs[layer]
            grad_W, grad_b = grad.T @ h, grad.sum(axis=0)
            if layer > 0:
                grad = grad @ self.weights[layer]
                grad *= h > 0
            self.weights[layer] -= LR * grad_W
            self.biases[layer] -= LR * grad_b
        return loss

    def epoch(self) -> float:
        n, total = self.X.shape[0], 0.0
        for start in range(0, n, self.batch_size):
            X, y = self.X[start:start + self.batch_size], self.y[start:start + self.batch_size]
            total += self.step(X, y) * X.shape[0]
        return total / n


class TorchEpoch:
    def __init__(self, model, X, y, batch_size):
        import torch

        self.torch = torch
        self.net = model.to_torch()
        self.X, self.y = torch.from_numpy(np.array(X)), torch.from_numpy(np.array(y))
        self.batch_size = batch_size
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def epoch(self) -> float:
        n, total = self.X.shape[0], 0.0
        for start in range(0, n, self.batch_size):
            X, y = self.X[start:start + self.batch_size], self.y[start:start + self.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(X), y)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * X.shape[0]
        return total / n


def _optional_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def _single_threaded(torch):
    """fastmlp, NumPy's BLAS (through threadpoolctl, when installed) and torch on one thread."""
    import fastmlp

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    fastmlp_threads = fastmlp.get_num_threads()
    torch_threads = torch.get_num_threads() if torch else None
    with threadpool_limits(limits=1) if threadpool_limits else contextlib.nullcontext():
        fastmlp.set_num_threads(1)
        if torch:
            torch.set_num_threads(1)
        try:
            yield threadpool_limits is not None
        finally:
            fastmlp.set_num_threads(fastmlp_threads)
            if torch:
                torch.set_num_threads(torch_threads)


# ---- the table ------------------------------------------------------------------------------


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _print_table(header: list[str], rows: list[list[str]], out) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    left = {0, 1}  # text columns

    def line(cells):
        return "  ".join(c.ljust(w) if i in left or i == len(cells) - 1 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for row in rows:
        print(line(row), file=out)


def run_bench(quick: bool = False, out=None) -> int:
    """Print the comparison table; returns 0, or 1 if an implementation's first-epoch loss
    disagreed with fastmlp's (they would not be computing the same thing)."""
    import fastmlp
    from fastmlp import MLP, ops

    out = out or sys.stdout
    torch = _optional_torch()
    impls = {"fastmlp": FastmlpEpoch, "numpy": NumpyEpoch}
    if torch is not None:
        impls["torch"] = TorchEpoch
    nets = NETS[:2] if quick else NETS
    budget = 0.25 if quick else 1.5  # seconds of timed epochs per implementation and net

    versions = f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else "")
    print(f"fastmlp {fastmlp.__version__} ({ops.isa()} kernels) vs {versions}", file=out)
    print(f"one epoch of SGD (lr {LR}) in row order, float32, synthetic data; samples/s, "
          "median of round-robin repeats; ratio = fastmlp ÷ peer (> 1: fastmlp is faster)",
          file=out)
    if torch is None:
        print("note: torch is not installed, so there are no torch columns", file=out)
    started = time.perf_counter()
    header = ["net", "layers", "batch"]
    for name in impls:
        header.append(f"{name} samples/s")
        if name != "fastmlp":
            header.append(f"fastmlp/{name}")
    header.append("check")
    rows, all_ok = [], True
    with _single_threaded(torch) as blas_limited:
        if not blas_limited:
            print("note: threadpoolctl is not installed, so NumPy's BLAS may use several "
                  "threads (pip install threadpoolctl)", file=out)
        for net in nets:
            X, y = _data(net)
            init = MLP(list(net.layers), seed=0)
            runners = {name: cls(init if name != "fastmlp" else _copy(init), X, y,
                                 net.batch_size) for name, cls in impls.items()}
            first_loss, first_time = {}, {}
            for name, runner in runners.items():
                t = time.perf_counter()
                first_loss[name] = runner.epoch()
                first_time[name] = time.perf_counter() - t
            bad = [name for name, loss in first_loss.items()
                   if abs(loss - first_loss["fastmlp"]) > 1e-3 * abs(first_loss["fastmlp"])]
            all_ok &= not bad
            repeats = max(3, min(15, int(budget / max(first_time.values()))))
            seconds: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(repeats):
                for name, runner in runners.items():
                    t = time.perf_counter()
                    runner.epoch()
                    seconds[name].append(time.perf_counter() - t)
            rate = {name: net.n_samples / statistics.median(s) for name, s in seconds.items()}
            row = [net.name, "-".join(map(str, net.layers)), str(net.batch_size)]
            for name in impls:
                row.append(_rate(rate[name]))
                if name != "fastmlp":
                    row.append(f"{rate['fastmlp'] / rate[name]:.2f}x")
            row.append("MISMATCH " + ", ".join(bad) if bad else "ok")
            rows.append(row)
    print(file=out)
    _print_table(header, rows, out)
    print(f"\n{time.perf_counter() - started:.1f} s"
          + ("" if all_ok else "; MISMATCH: an implementation computed another loss"), file=out)
    out.flush()
    return 0 if all_ok else 1


def _copy(model):
    from fastmlp import MLP

    twin = MLP(list(model.layer_sizes), activation=model.activation, output=model.output,
               dtype=model.dtype)
    twin.weights, twin.biases = model.weights, model.biases  # validated copies
    return twin
