"""The scaling model of docs/distributed.md: how data-parallel fastmlp would scale to 64 nodes,
built from what this machine measures and a cost model of the network.

Measured here (one thread, float32, SGD): the time of one data-parallel step of each
benchmark net at per-rank batch sizes 16 … 4096 (``MLP.fit(comm=MPI.COMM_SELF)``: the
gradient into the flat buffer, the update from it, the Python around them: everything but
the network), and the size of its gradient buffer.

Modelled: MPICH's allreduce of S bytes over R nodes for large messages (Rabenseifner:
reduce-scatter then allgather, each log2 R rounds),

    T_allreduce(R, S) = 2·log2(R)·α + 2·(R−1)/R · S / β

with β = 90 % of the link rate and α = 25 µs per round on TCP Ethernet (10 and 25 Gb/s),
5 µs on a 100 Gb/s RDMA fabric (InfiniBand / RoCE). One rank per node, no overlap with the
backward pass (see docs/distributed.md), per-rank batch B fixed as nodes are added (weak
scaling): efficiency E = t_step(B) / (t_step(B) + T_allreduce). The smallest B with E ≥ 80 %
needs t_step(B) ≥ 4·T_allreduce. A node k times faster than this one thread (k cores)
divides t_step by about k, so it needs about k times the batch for the same efficiency.

    python benchmarks/distributed_scaling_model.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

NETS = {"digits": [64, 128, 10], "tabular": [30, 128, 128, 2],
        "mnist": [784, 256, 256, 10], "wide": [1024, 1024, 1024, 10]}
BENCH_BATCH = {"digits": 64, "tabular": 32, "mnist": 128, "wide": 256}
BATCHES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
NETWORKS = {"10 Gb/s": (10e9, 25e-6), "25 Gb/s": (25e9, 25e-6), "100 Gb/s": (100e9, 5e-6)}
NODES = (2, 4, 8, 16, 32, 64)


def step_seconds(sizes, batch, repeats) -> float:
    """Median time of one data-parallel step on one rank (no network), one thread."""
    import fastmlp
    from mpi4py import MPI
    fastmlp.set_num_threads(1)
    steps = max(2, min(50, 2**16 // batch))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * steps, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], len(X))
    model = fastmlp.MLP(sizes, seed=0)
    fit = dict(epochs=1, batch_size=batch, shuffle=False, optimizer=fastmlp.SGD(lr=0.01),
               comm=MPI.COMM_SELF)
    model.fit(X[:batch], y[:batch], **fit)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.fit(X, y, **fit)
        times.append((time.perf_counter() - started) / steps)
    return statistics.median(times)


def allreduce_seconds(nodes, size_bytes, link_bits, latency) -> float:
    bandwidth = 0.9 * link_bits / 8
    return (2 * math.log2(nodes) * latency
            + 2 * (nodes - 1) / nodes * size_bytes / bandwidth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat per batch size")
    repeats = 1 if parser.parse_args().quick else 3
    for name, sizes in NETS.items():
        n_params = sum(i * o + o for i, o in zip(sizes, sizes[1:]))
        size_bytes = 4 * (n_params + 3)
        step = {b: step_seconds(sizes, b, repeats) for b in BATCHES}
        bench = BENCH_BATCH[name]
        print(f"\n{name} {'-'.join(map(str, sizes))}: {n_params:,} parameters, "
              f"{size_bytes / 1e6:.2f} MB per allreduce; step at B {bench}: "
              f"{step[bench] * 1e3:.2f} ms ({bench / step[bench]:,.0f} samples/s, 1 thread)")
        print(f"  {'network':9s} {'nodes':>5s}  {'allreduce':>9s}  "
              f"{'E at B ' + str(bench):>10s}  {'B for E≥80%':>11s}")
        for network, (link, latency) in NETWORKS.items():
            for nodes in NODES:
                t_ar = allreduce_seconds(nodes, size_bytes, link, latency)
                efficiency = step[bench] / (step[bench] + t_ar)
                # The smallest B from which on every larger B is ≥ 80 % efficient (a noisy
                # small-batch step time does not count).
                need = f">{BATCHES[-1]}"
                for b in reversed(BATCHES):
                    if step[b] < 4 * t_ar:
                        break
                    need = str(b)
                print(f"  {network:9s} {nodes:5d}  {t_ar * 1e3:7.2f}ms  {efficiency:10.0%}  "
                      f"{need:>11s}")


if __name__ == "__main__":
    main()
