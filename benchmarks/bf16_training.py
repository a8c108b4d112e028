"""bfloat16 training against float32 and PyTorch autocast: issue 14's training targets in one
command. One epoch of SGD (lr 0.01, row order), one thread, samples/s, on the mnist-shaped
and the wide net (common.NETS), four implementations:

- fastmlp fp32:   MLP(precision="float32").fit(epochs=1)
- fastmlp bf16:   MLP(precision="bfloat16").fit(epochs=1)
- torch fp32:     PyTorch's loop of common.py (nn.Sequential, torch.optim.SGD)
- torch autocast: the same loop with the forward and loss under
                  torch.autocast("cpu", dtype=torch.bfloat16)

Every implementation keeps one model for the whole run (as compare.py does: the weights move
on from epoch to epoch, the buffers stay warm); after a warm-up epoch each, the rounds run the
four in turn, --rounds times, and each cell is the median epoch. The ratios are the two the
issue sets targets for: bf16 ÷ fastmlp fp32 and bf16 ÷ torch autocast (wide ≥ 1.8× and
≥ 1.25×, mnist-shaped ≥ 1.5× and ≥ 1.3×), from the medians of the same run.

    python benchmarks/bf16_training.py [--rounds 9] [--samples 4096] [--nets mnist,wide]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import fastmlp
from common import LR, NET_BY_NAME, environment_report, optional_torch, single_threaded
from reference_mlp import torch_mlp_from, torch_train_epoch

TARGETS = {"mnist": (1.5, 1.3), "wide": (1.8, 1.25)}  # (÷ fp32, ÷ torch autocast)


def epoch_runners(net, n_samples: int) -> dict:
    """name → zero-argument function training one epoch."""
    rng = np.random.default_rng(1234)
    X = rng.standard_normal((n_samples, net.layer_sizes[0])).astype(np.float32)
    y = rng.integers(0, net.layer_sizes[-1], n_samples)
    out = {}
    for precision, name in (("float32", "fastmlp fp32"), ("bfloat16", "fastmlp bf16")):
        model = fastmlp.MLP(list(net.layer_sizes), seed=0, precision=precision)
        optimizer = fastmlp.SGD(lr=LR)
        out[name] = lambda model=model, optimizer=optimizer: model.fit(
            X, y, epochs=1, batch_size=net.batch_size, optimizer=optimizer, shuffle=False)
    torch = optional_torch()
    if torch is None:
        return out
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    init = fastmlp.MLP(list(net.layer_sizes), seed=0)
    for autocast, name in ((False, "torch fp32"), (True, "torch autocast")):
        model = torch_mlp_from(init)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)

        def epoch(model=model, optimizer=optimizer, autocast=autocast):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                torch_train_epoch(model, X_t, y_t, net.batch_size, optimizer)
        out[name] = epoch
    return out


def measure(net, n_samples: int, rounds: int) -> dict:
    runners = epoch_runners(net, n_samples)
    for run in runners.values():  # warm-up: first-use costs (buffers, cost model, oneDNN)
        run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: n_samples / statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--samples", type=int, default=4096,
                        help="samples per epoch (default 4096: 16 batches of the wide net)")
    parser.add_argument("--nets", default="mnist,wide")
    args = parser.parse_args()
    for line in environment_report():
        print(line)
    print(f"load average: {os.getloadavg()[0]:.2f}; bf16 path: {fastmlp.ops.bf16_path()}")
    with single_threaded():
        for net_name in args.nets.split(","):
            net = NET_BY_NAME[net_name]
            rates = measure(net, args.samples, args.rounds)
            print(f"\n{net.name} {list(net.layer_sizes)} B{net.batch_size}, {args.samples} "
                  f"samples, median of {args.rounds} rounds (samples/s):")
            for name, rate in rates.items():
                print(f"  {name:15} {rate:10,.0f}")
            bf16 = rates["fastmlp bf16"]
            vs_fp32, vs_torch = TARGETS[net.name]
            print(f"  bf16 / fastmlp fp32:   {bf16 / rates['fastmlp fp32']:.2f}x "
                  f"(target >= {vs_fp32}x)")
            if "torch autocast" in rates:
                print(f"  bf16 / torch autocast: {bf16 / rates['torch autocast']:.2f}x "
                      f"(target >= {vs_torch}x)")


if __name__ == "__main__":
    main()
