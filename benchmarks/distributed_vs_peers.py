"""Data-parallel training: fastmlp under ``mpiexec -n 2`` (``MLP.fit(comm=...)``, 1 thread per
rank) against fastmlp in one process on one thread, and against PyTorch DDP (gloo backend,
2 ranks × 1 thread; PyTorch in one process for context). Global samples/s (all ranks'
samples over the wall time of the timed epochs), float32, SGD(lr=0.01), no shuffling, the
batch size per rank as in issue 16:

    mnist-shaped  784-256-256-10      B 128 per rank
    wide          1024-1024-1024-10   B 256 per rank

"fastmlp 1 process × 2 threads" is the other way to use both cores (the same global samples
per step as one process, so a different comparison: docs/distributed.md, ranks or threads).
"fastmlp 2 ranks, MPI allreduce" runs the ranks with FASTMLP_MPI_NODE_EXCHANGE=0: the path of
ranks on different nodes (allreduce), measured on this one; the plain "2 ranks" line is the
default on one node (shared memory: docs/distributed.md, "Design").
Every rank trains on its own rows (the same number as the single process), so a 2-rank run
does twice the samples of a 1-process run in each timed epoch. Each configuration runs in
its own processes (mpiexec, or one python), one warm-up epoch then --epochs timed; the
configurations alternate for --repeats rounds and each cell is the median, so the ratios
come from one run on the same (shared, noisy) machine. A fastmlp 2-rank run also reports the
time one allreduce of its gradient takes as a share of its step (what the allreduce path
pays; docs/distributed.md: why it is not overlapped with the backward pass).

    python benchmarks/distributed_vs_peers.py [--repeats 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

NETS = {"mnist": ([784, 256, 256, 10], 128, 40), "wide": ([1024, 1024, 1024, 10], 256, 8)}
# (layer sizes, batch per rank, steps per epoch)


def data(sizes, batch, steps, rank):
    rng = np.random.default_rng(1000 + rank)
    n = batch * steps
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    teacher = np.random.default_rng(0).standard_normal((sizes[0], sizes[-1]))
    return X, np.argmax(X @ teacher, axis=1).astype(np.int64)


# ---- workers: one configuration in this process (a rank under mpiexec, or alone) ----------


def run_fastmlp(net, epochs, distributed, threads=1):
    import fastmlp
    from fastmlp import _exchange
    sizes, batch, steps = NETS[net]
    comm, rank, ranks = None, 0, 1
    if distributed:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank, ranks = comm.Get_rank(), comm.Get_size()
    fastmlp.set_num_threads(threads)
    X, y = data(sizes, batch, steps, rank)
    model = fastmlp.MLP(sizes, seed=0)
    optimizer = fastmlp.SGD(lr=0.01)
    fit = dict(epochs=1, batch_size=batch, shuffle=False, optimizer=optimizer, comm=comm)
    model.fit(X, y, **fit)  # warm-up
    allreduce = _time_allreduce(comm) if distributed else None
    if comm:
        comm.Barrier()
    started = time.perf_counter()
    model.fit(X, y, **dict(fit, epochs=epochs))
    if comm:
        comm.Barrier()
    elapsed = time.perf_counter() - started
    result = {"samples_per_second": ranks * len(X) * epochs / elapsed}
    if allreduce is not None:
        seconds = allreduce(model, _exchange)
        result["allreduce_share"] = seconds / (elapsed / (epochs * steps))
    return result if rank == 0 else None


def _time_allreduce(comm):
    """The median time of one step's allreduce (the gradient buffer and its tail)."""
    from mpi4py import MPI

    def measure(model, _exchange):
        n = sum(w.size + b.size for w, b in zip(model.weights, model.biases)) + 3
        buffer = np.zeros(n, dtype=model.dtype)
        times = []
        for _ in range(30):
            comm.Barrier()
            started = time.perf_counter()
            for bucket in _exchange._buckets(n, buffer.itemsize):
                comm.Allreduce(MPI.IN_PLACE, buffer[bucket], op=MPI.SUM)
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    return measure


def run_torch(net, epochs, distributed):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    sizes, batch, steps = NETS[net]
    rank = int(os.environ.get("PMI_RANK", "0")) if distributed else 0
    ranks = int(os.environ.get("PMI_SIZE", "1")) if distributed else 1
    torch.manual_seed(0)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    if distributed:
        dist.init_process_group("gloo", init_method=f"file://{os.environ['STORE']}",
                                rank=rank, world_size=ranks)
        model = torch.nn.parallel.DistributedDataParallel(model)
    X, y = data(sizes, batch, steps, rank)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        for start in range(0, len(X), batch):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[start:start + batch]), y[start:start + batch]).backward()
            optimizer.step()
    epoch()  # warm-up
    if distributed:
        dist.barrier()
    started = time.perf_counter()
    for _ in range(epochs):
        epoch()
    if distributed:
        dist.barrier()
    elapsed = time.perf_counter() - started
    if distributed:
        dist.destroy_process_group()
    return {"samples_per_second": ranks * len(X) * epochs / elapsed} if rank == 0 else None


# ---- the driver -------------------------------------------------------------------------


def mpiexec() -> str | None:
    beside = pathlib.Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def launch(impl, net, epochs, ranks) -> dict | None:
    env = dict(os.environ, FASTMLP_NUM_THREADS="1", OMP_NUM_THREADS="1",
               HYDRA_LAUNCHER="fork")
    if impl == "fastmlp-allreduce":  # the path of ranks on different nodes, on this one
        env["FASTMLP_MPI_NODE_EXCHANGE"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        env["STORE"] = os.path.join(tmp, "store")
        command = [sys.executable, __file__, "--worker", impl, net, str(epochs), str(ranks)]
        if ranks > 1:
            command = [mpiexec(), "-n", str(ranks)] + command
        job = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if job.returncode != 0:
        print(f"  {impl} {net} × {ranks} failed:\n{job.stdout}{job.stderr}", file=sys.stderr)
        return None
    lines = [line for line in job.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--nets", default="mnist,wide")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch's runs")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, net, epochs, ranks = args.worker
        if impl == "fastmlp-2-threads":  # one process, 2 threads: the ranks-or-threads choice
            result = run_fastmlp(net, int(epochs), False, threads=2)
        else:
            run = run_fastmlp if impl.startswith("fastmlp") else run_torch
            result = run(net, int(epochs), int(ranks) > 1)
        if result is not None:
            print("RESULT " + json.dumps(result), flush=True)
        return
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from common import environment_report, optional_torch
    print("\n".join(environment_report()))
    print(f"mpiexec   {mpiexec()}; {os.cpu_count()} CPUs shared with other work (noisy)")
    configs = [("fastmlp", 1), ("fastmlp", 2), ("fastmlp-allreduce", 2),
               ("fastmlp-2-threads", 1)]
    if optional_torch() is not None and not args.no_torch:
        configs += [("torch", 1), ("torch", 2)]
    for net in args.nets.split(","):
        results = {config: [] for config in configs}
        shares = []
        for _ in range(args.repeats):
            for impl, ranks in configs:
                result = launch(impl, net, args.epochs, ranks)
                if result:
                    results[(impl, ranks)].append(result["samples_per_second"])
                    if "allreduce_share" in result:
                        shares.append(result["allreduce_share"])
        median = {config: statistics.median(v) if v else float("nan")
                  for config, v in results.items()}
        sizes, batch, _ = NETS[net]
        print(f"\n{net} {'-'.join(map(str, sizes))}, B {batch} per rank, "
              f"median of {args.repeats}, global samples/s")
        for (impl, ranks), value in median.items():
            label = {"fastmlp-2-threads": "fastmlp  1 process × 2 threads",
                     "fastmlp-allreduce": "fastmlp  2 ranks, MPI allreduce"}.get(
                         impl, f"{impl:8s} {ranks} rank(s) × 1 thread")
            print(f"  {label:31s} {value:10,.0f}")
        fast2 = median[("fastmlp", 2)]
        print(f"  fastmlp 2 ranks / fastmlp 1 process  {fast2 / median[('fastmlp', 1)]:.2f}x")
        print(f"  fastmlp 2 ranks, MPI allreduce / fastmlp 1 process  "
              f"{median[('fastmlp-allreduce', 2)] / median[('fastmlp', 1)]:.2f}x")
        print(f"  fastmlp 2 ranks / fastmlp 1 process × 2 threads  "
              f"{fast2 / median[('fastmlp-2-threads', 1)]:.2f}x")
        if ("torch", 2) in median:
            print(f"  fastmlp 2 ranks / torch DDP 2 ranks  {fast2 / median[('torch', 2)]:.2f}x")
            print(f"  torch DDP 2 ranks / torch 1 process  "
                  f"{median[('torch', 2)] / median[('torch', 1)]:.2f}x")
        if shares:
            print(f"  one allreduce of the gradient / a 2-rank step: "
                  f"{statistics.median(shares):.1%}")


if __name__ == "__main__":
    main()
