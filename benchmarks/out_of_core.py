"""A shuffled epoch from a memory-mapped .npy larger than the memory the process may use,
against the same epoch from the data in memory (issue 16's target: ≥ 0.5× the in-memory
speed, extra anonymous memory ≤ ¼ of the file).

    python benchmarks/out_of_core.py [--size-mb 800] [--epochs 3] [--limit-ratio 3]
                                     [--repeats 2] [--full-shuffle-seconds 60] [--quick]

What runs, each in its own process, one engine thread each (the reader thread of a mapped
file gets the machine's other core):
- memory: X loaded into memory (np.load), fit(shuffle=True): the engine's full permutation.
- mapped: np.load(mmap_mode="r") in a memory cgroup (v1 or v2) limited to file / limit-ratio
  bytes (anonymous memory and page cache together), the file evicted from the page cache
  before every epoch (posix_fadvise DONTNEED); fit(shuffle=True): block-wise (_shuffle.py).
- full (with --full-shuffle-seconds > 0): the mapped run with shuffle="full" (what fit did
  for a memory-mapped X before), stopped after that many seconds if its first epoch has not
  finished.
The fair comparison: the same rows, network, batch size and thread count; memory's data is
in RAM (it cannot run under the limit), mapped's is on disk for every epoch. Speeds are
History.samples_per_second (training only: the validation pass over the file at the start of
fit is not in an epoch) and the ratio is of medians over the epochs of --repeats runs of
each kind, alternated, in one invocation. Extra
anonymous memory: the peak of RssAnon (/proc/self/status, sampled every 5 ms) during fit
minus RssAnon just before it.
CPU seconds per epoch, of the engine's thread and of the whole process, tell a machine busy
with other work (wall time up, CPU time not) from work added by the reader.
Without a memory cgroup (not root, or none mounted) the mapped run is unlimited and only the
per-epoch eviction remains: the report says so. --quick: a 4 MB file, one epoch, no cgroup
(the smoke run of bench_out_of_core.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

FEATURES, HIDDEN, CLASSES, BATCH = 784, 128, 10, 128


def rss_anon() -> int:
    """This process's anonymous resident memory, bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """Peak RssAnon while the block runs, sampled every 5 ms on a thread."""

    def __enter__(self):
        self.peak, self.stop = rss_anon(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss_anon())


def evict(path) -> None:
    """Drops the file's pages from the page cache (clean pages: nothing is lost)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_data(directory, size_mb: float):
    """X (rows, 784) float32 of about size_mb written in chunks (never whole in memory), and
    labels of a random linear teacher; returns (X path, y path)."""
    rows = max(BATCH, int(size_mb * 2**20) // (FEATURES * 4))
    x_path, y_path = os.path.join(directory, "X.npy"), os.path.join(directory, "y.npy")
    X = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    y = np.empty(rows, dtype=np.int64)
    chunk = 8192
    for first in range(0, rows, chunk):
        block = rng.standard_normal((min(chunk, rows - first), FEATURES), dtype=np.float32)
        X[first:first + len(block)] = block
        y[first:first + len(block)] = np.argmax(block @ teacher, axis=1)
    X.flush()
    del X
    np.save(y_path, y)
    return x_path, y_path


def child(kind: str, x_path: str, y_path: str, epochs: int, budget_s: float) -> dict:
    """One measured fit (runs in its own process); returns what it measured."""
    import fastmlp
    fastmlp.set_num_threads(1)
    y = np.load(y_path)
    X = np.load(x_path) if kind == "memory" else np.load(x_path, mmap_mode="r")
    model = fastmlp.MLP([FEATURES, HIDDEN, CLASSES], seed=0)
    shuffle = "full" if kind == "full" else True
    if kind != "memory":
        evict(x_path)
    if kind == "full":  # its first epoch may never end: report how far it got
        watchdog = threading.Timer(budget_s, lambda: os._exit(3))
        watchdog.daemon = True
        watchdog.start()
    # CPU seconds per epoch: of the training thread (the engine) and of the whole process
    # (the engine and the reader thread), load-independent where wall time is not.
    cpu = {"engine": [], "process": []}
    clocks = [time.thread_time(), time.process_time()]

    def after_epoch(m, h):
        now = [time.thread_time(), time.process_time()]
        cpu["engine"].append(now[0] - clocks[0])
        cpu["process"].append(now[1] - clocks[1])
        if kind != "memory":
            evict(x_path)
        clocks[:] = [time.thread_time(), time.process_time()]

    before = rss_anon()
    started = time.perf_counter()
    with PeakAnon() as peak:
        clocks[:] = [time.thread_time(), time.process_time()]
        history = model.fit(X, y, epochs=epochs, batch_size=BATCH, shuffle=shuffle, seed=1,
                            optimizer=fastmlp.SGD(lr=0.01), callbacks=[after_epoch])
    return {"samples_per_second": history.samples_per_second, "loss": history.loss,
            "fit_seconds": time.perf_counter() - started, "extra_anon": peak.peak - before,
            "rows": int(len(y)), "engine_cpu": cpu["engine"], "process_cpu": cpu["process"]}


def memory_cgroup(limit_bytes: int):
    """A new memory cgroup (below this process's own) limited to limit_bytes, as the path of
    its procs file, or None (with the reason printed) where none can be made."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.strip().split(":", 2) for line in f]
    except OSError:
        lines = []
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):  # v1
            base = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            limit_file, procs = "memory.limit_in_bytes", "cgroup.procs"
            break
    else:
        v2 = [p for h, c, p in lines if h == "0" and c == ""]
        base = os.path.join("/sys/fs/cgroup", v2[0].lstrip("/")) if v2 else "/sys/fs/cgroup"
        limit_file, procs = "memory.max", "cgroup.procs"
    group = os.path.join(base, f"fastmlp-bench-{os.getpid()}")
    try:
        os.mkdir(group)
        with open(os.path.join(group, limit_file), "w") as f:
            f.write(str(limit_bytes))
    except OSError as exc:
        print(f"no memory cgroup ({exc}): the mapped run is not memory-limited")
        try:
            os.rmdir(group)
        except OSError:
            pass
        return None
    return os.path.join(group, procs)


def run_child(kind, x_path, y_path, epochs, procs=None, budget_s=0.0):
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, x_path, y_path,
               str(epochs), str(budget_s)]
    # The child joins the cgroup before it imports anything or maps the file.
    preexec = None
    if procs is not None:
        def preexec():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=preexec)
    if done.returncode == 3:
        return {"unfinished_after": time.perf_counter() - started}
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(size_mb: float, epochs: int, limit_ratio: float, full_seconds: float,
        use_cgroup: bool = True, directory=None, repeats: int = 1) -> dict:
    """Writes the data, runs the children, deletes everything; returns the results."""
    directory = tempfile.mkdtemp(prefix="fastmlp-ooc-", dir=directory)
    procs = None
    try:
        x_path, y_path = write_data(directory, size_mb)
        file_bytes = os.path.getsize(x_path)
        limit = int(file_bytes / limit_ratio)
        results = {"file_bytes": file_bytes, "limit_bytes": None}
        if use_cgroup:
            procs = memory_cgroup(limit)
            results["limit_bytes"] = limit if procs else None
        # Alternated, so that a change in the machine's load falls on both.
        runs = {"memory": [], "mapped": []}
        for _ in range(repeats):
            runs["memory"].append(run_child("memory", x_path, y_path, epochs))
            runs["mapped"].append(run_child("mapped", x_path, y_path, epochs, procs))
        for kind, measured in runs.items():
            results[kind] = {key: [v for r in measured for v in r[key]] for key in
                             ("samples_per_second", "engine_cpu", "process_cpu")}
            results[kind].update(extra_anon=max(r["extra_anon"] for r in measured),
                                 rows=measured[0]["rows"])
        if full_seconds > 0:
            results["full"] = run_child("full", x_path, y_path, 1, procs, full_seconds)
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if procs is not None:
            try:
                os.rmdir(os.path.dirname(procs))
            except OSError:
                pass


def report(results: dict) -> str:
    mb = results["file_bytes"] / 2**20
    memory = float(np.median(results["memory"]["samples_per_second"]))
    mapped = float(np.median(results["mapped"]["samples_per_second"]))
    limit = results["limit_bytes"]
    lines = [f"file {mb:.0f} MiB ({results['mapped']['rows']} rows × {FEATURES} float32), "
             f"net {FEATURES}-{HIDDEN}-{CLASSES}, batch {BATCH}, 1 engine thread",
             "memory limit: " + (f"{limit / 2**20:.0f} MiB (file / {mb * 2**20 / limit:.1f})"
                                 if limit else "none (no cgroup): per-epoch eviction only"),
             f"in memory, full shuffle:     {memory:12,.0f} samples/s (median of "
             f"{len(results['memory']['samples_per_second'])} epochs)",
             f"memory-mapped, block shuffle: {mapped:11,.0f} samples/s  "
             f"ratio {mapped / memory:.2f}",
             f"extra anonymous memory (mapped): {results['mapped']['extra_anon'] / 2**20:.1f} MiB "
             f"= {results['mapped']['extra_anon'] / results['file_bytes']:.3f} of the file"]
    for label, key in (("engine thread", "engine_cpu"), ("whole process", "process_cpu")):
        ours, theirs = (float(np.median(results[k][key])) for k in ("mapped", "memory"))
        lines.append(f"CPU s per epoch, {label}: memory {theirs:.2f}, mapped {ours:.2f}")
    if "full" in results:
        full = results["full"]
        if "unfinished_after" in full:
            lines.append(f"memory-mapped, full shuffle: first epoch unfinished after "
                         f"{full['unfinished_after']:.0f} s")
        else:
            sps = full["samples_per_second"][0]
            lines.append(f"memory-mapped, full shuffle: {sps:11,.0f} samples/s  ratio "
                         f"{sps / memory:.2f}")
    return "\n".join(lines)


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, x_path, y_path, epochs, budget = sys.argv[2:7]
        print(json.dumps(child(kind, x_path, y_path, int(epochs), float(budget))))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=800.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-ratio", type=float, default=3.0,
                        help="the memory limit is the file's size divided by this")
    parser.add_argument("--full-shuffle-seconds", type=float, default=0.0,
                        help="also time shuffle='full' from the mapped file, up to this long")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each kind, alternated (their epochs pooled)")
    parser.add_argument("--dir", default=None, help="where the data file goes (deleted after)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 4 MB, one epoch")
    args = parser.parse_args(argv)
    if args.quick:
        results = run(4, 1, args.limit_ratio, 0.0, use_cgroup=False, directory=args.dir)
    else:
        results = run(args.size_mb, args.epochs, args.limit_ratio, args.full_shuffle_seconds,
                      directory=args.dir, repeats=args.repeats)
    print(report(results))
    return results


if __name__ == "__main__":
    main()
