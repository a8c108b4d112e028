"""Where a data-parallel step's time goes: ``mpiexec -n 2`` (1 thread per rank) with the
ranks' gradients summed over the node's shared memory (the default on one node) and with MPI
allreduce (the path across nodes, ``FASTMLP_MPI_NODE_EXCHANGE=0``), against fastmlp's fused
step in one process on one thread. Per step, medians over the timed epochs of each rank:
wall time and the thread's CPU time of

    gradient      Trainer.gradient_step (forward, loss, backward into the flat buffer)
    exchange      the rest of the step: the sum over the ranks (barriers, or the allreduce),
                  the update (apply_gradient_sum / apply_gradients) and the waits
    update        the update's engine call alone

On a busy machine the wall times swing with the other work; the CPU times much less, so
"2 × fused CPU / 2-rank step CPU" estimates what 2 ranks would reach on an idle machine
(two independent 1-thread processes ran at 0.97 of one alone here, not counted).

    python benchmarks/distributed_phases.py [--net wide|mnist] [--optimizer sgd|momentum]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

NETS = {"mnist": ([784, 256, 256, 10], 128, 40), "wide": ([1024, 1024, 1024, 10], 256, 8)}


def _timed(times, name, function):
    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = function(*args, **kwargs)
        times.setdefault(name, []).append((time.perf_counter() - wall,
                                           time.thread_time() - cpu))
        return result
    return timed


def worker(net, optimizer_name, epochs, distributed):
    import fastmlp
    from fastmlp import _distributed, _exchange
    sizes, batch, steps = NETS[net]
    comm, rank = None, 0
    if distributed:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()
    fastmlp.set_num_threads(1)
    rng = np.random.default_rng(rank)
    X = rng.standard_normal((batch * steps, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch * steps)
    optimizer = fastmlp.SGD(lr=0.01, momentum=0.9 if optimizer_name == "momentum" else 0.0)
    model = fastmlp.MLP(sizes, seed=0)
    fit = dict(batch_size=batch, shuffle=False, optimizer=optimizer, comm=comm)
    times: dict[str, list] = {}
    if distributed:
        class Timed:  # the engine, its two calls timed
            def __init__(self, trainer):
                self.trainer = trainer

            def __getattr__(self, name):
                value = getattr(self.trainer, name)
                label = {"gradient_step": "gradient", "apply_gradients": "update",
                         "apply_gradient_sum": "update"}.get(name)
                return _timed(times, label, value) if label else value
        make = _distributed.new_trainer
        _distributed.new_trainer = lambda *a, **k: Timed(make(*a, **k))
        for method in ("_node_update", "_allreduce_update"):
            setattr(_exchange.Exchange, method,
                    _timed(times, "exchange", getattr(_exchange.Exchange, method)))
    model.fit(X, y, epochs=1, **fit)  # warm-up
    times.clear()
    wall, cpu = time.perf_counter(), time.thread_time()
    model.fit(X, y, epochs=epochs, **fit)
    per_step = ((time.perf_counter() - wall) / (epochs * steps),
                (time.thread_time() - cpu) / (epochs * steps))
    phases = {name: [statistics.median(t[k] for t in values) for k in (0, 1)]
              for name, values in times.items()}
    result = {"step": per_step, **phases}
    results = comm.gather(result) if comm else [result]
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)


def launch(net, optimizer, epochs, ranks, exchange="1"):
    env = dict(os.environ, FASTMLP_NUM_THREADS="1", OMP_NUM_THREADS="1",
               HYDRA_LAUNCHER="fork", FASTMLP_MPI_NODE_EXCHANGE=exchange)
    command = [sys.executable, __file__, "--worker", net, optimizer, str(epochs), str(ranks)]
    if ranks > 1:
        beside = pathlib.Path(sys.executable).with_name("mpiexec")
        command = [str(beside) if beside.exists() else "mpiexec", "-n", str(ranks)] + command
    job = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if job.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{job.stdout}{job.stderr}")
    line = [line for line in job.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="wide", choices=sorted(NETS))
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "momentum"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        net, optimizer, epochs, ranks = args.worker
        return worker(net, optimizer, int(epochs), int(ranks) > 1)
    runs = {"fused": [], "shared memory": [], "allreduce": []}
    for _ in range(args.repeats):  # alternating, medians
        runs["fused"] += launch(args.net, args.optimizer, args.epochs, 1)
        runs["shared memory"] += launch(args.net, args.optimizer, args.epochs, 2, "1")
        runs["allreduce"] += launch(args.net, args.optimizer, args.epochs, 2, "0")
    sizes, batch, _ = NETS[args.net]
    print(f"{args.net} {'-'.join(map(str, sizes))}, B {batch} per rank, {args.optimizer}, "
          f"1 thread per rank; ms per step, median over ranks and {args.repeats} runs "
          f"(load average at the end {os.getloadavg()[0]:.1f})")
    print(f"  {'':14s} {'step wall':>10s} {'step CPU':>9s} {'gradient':>9s} "
          f"{'exchange':>9s} {'update':>9s}   (phases: CPU)")
    median = {}
    for label, results in runs.items():
        row = {name: [statistics.median(r[name][k] for r in results if name in r)
                      for k in (0, 1)]
               for name in ("step", "gradient", "exchange", "update") if name in results[0]}
        median[label] = row
        cells = [f"{1e3 * row[name][1]:9.2f}" if name in row else f"{'':9s}"
                 for name in ("gradient", "exchange", "update")]
        print(f"  {label:14s} {1e3 * row['step'][0]:10.2f} {1e3 * row['step'][1]:9.2f} "
              + " ".join(cells))
    for label in ("shared memory", "allreduce"):
        wall = 2 * median["fused"]["step"][0] / median[label]["step"][0]
        cpu = 2 * median["fused"]["step"][1] / median[label]["step"][1]
        print(f"  2 ranks ({label}) / 1 process: {wall:.2f}x measured, {cpu:.2f}x from the "
              "CPU times (the idle machine's estimate)")


if __name__ == "__main__":
    main()
