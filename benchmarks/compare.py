"""fastmlp against its peers (NumPy, PyTorch when installed): one process, single-threaded,
medians; prints the machine and one table per section.

    python benchmarks/compare.py [--quick] [--only SECTION] [--dtype float32|float64]

Sections: "gemm" (GFLOP/s of common.GEMM_CASES), "sweep" (MLP-shaped products), "train"
(samples/s and GFLOP/s of one SGD epoch of each common.NETS net), "threads" (two threads on an
idle machine), "contention" (default threads while another process holds a core),
"latency" (one-sample predict) and "inference" (predict_proba at batch 1, 32, 256 against
onnxruntime float32 / int8 and PyTorch, see inference.py). Each peer gets a ratio column fastmlp ÷ peer (throughput; > 1
means fastmlp is faster). Before timing, each implementation's first result is checked
against NumPy's on the same inputs (product, or epoch loss from the same initial weights);
a mismatch is flagged in the table and makes the exit status 1.

Timing: after that first call (the warm-up, which also sizes a repeat to at least min_time),
the implementations are timed round-robin, ``repeats`` times each, so slow drift in clock
speed hits all of them alike; the median repeat is reported. Run it on an idle machine,
without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE set (they change NumPy's kernel).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import common
import fastmlp
import fastmlp._threads
import numpy as np


@dataclass(frozen=True)
class Budget:
    repeats: int  # timed repeats per implementation; the median is reported
    min_time: float  # seconds: a repeat calls the function enough times to last this long


FULL = Budget(repeats=7, min_time=0.2)
QUICK = Budget(repeats=5, min_time=0.05)


# ---- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    seconds: float  # per call, median over the repeats
    spread: float  # (slowest - fastest repeat) / median: how noisy the measurement was


# Seconds to wait before timing an implementation when several threads are in play. After a
# call, OpenBLAS's idle workers keep spinning on their cores for ~0.1 s (blas_thread_server
# in perf), and whoever runs next on two threads loses the second core to them: measured,
# fastmlp's 2-thread 1024³ product right after NumPy's gave 122–139 GFLOP/s, after a 0.3 s
# pause 187–269. The pause lets every implementation start on a quiet machine.
SETTLE_SECONDS = 0.3


def timed(runners: dict[str, Callable[[], object]], budget: Budget,
          first_seconds: dict[str, float], settle: float = 0.0,
          setup: dict[str, Callable[[], object]] | None = None) -> dict[str, Timing]:
    """Seconds per call of each runner. first_seconds: each one's warm-up call time, which
    sets how many calls a repeat makes; settle: seconds of sleep before each timed repeat
    (SETTLE_SECONDS for multi-threaded runs); setup: per runner, called (untimed) before each
    of its repeats."""
    calls = {name: max(1, math.ceil(budget.min_time / max(first_seconds[name], 1e-9)))
             for name in runners}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(budget.repeats):
        for name, run in runners.items():
            if setup and name in setup:
                setup[name]()
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            for _ in range(calls[name]):
                run()
            samples[name].append((time.perf_counter() - start) / calls[name])
    timings = {}
    for name, s in samples.items():
        median = statistics.median(s)
        timings[name] = Timing(median, (max(s) - min(s)) / median)
    return timings


def first_calls(runners: dict[str, Callable[[], object]]) -> tuple[dict, dict]:
    """Each runner called once (the warm-up): (results, seconds)."""
    results, seconds = {}, {}
    for name, run in runners.items():
        start = time.perf_counter()
        results[name] = run()
        seconds[name] = time.perf_counter() - start
    return results, seconds


# ---- tables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    group: str  # upper header line, shared by neighbouring columns ("" for none)
    label: str  # lower header line
    left: bool = False  # text columns are left-aligned, numbers right-aligned


def _group_spans(columns: list[Column]) -> list[tuple[int, int]]:
    """(first, last) column index of each run of neighbouring columns sharing a group."""
    spans, first = [], 0
    for i in range(1, len(columns) + 1):
        if i == len(columns) or columns[i].group != columns[first].group:
            spans.append((first, i - 1))
            first = i
    return spans


def print_table(title: str, columns: list[Column], rows: list[list[str]]) -> None:
    widths = [max(len(c.label), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    spans = _group_spans(columns)

    def span_width(first, last):
        return sum(widths[first:last + 1]) + 2 * (last - first)

    for first, last in spans:  # widen a span's last column if its group name is longer
        widths[last] += max(0, len(columns[first].group) - span_width(first, last))

    def line(cells, left):
        return "  ".join(c.ljust(w) if l else c.rjust(w)
                         for c, w, l in zip(cells, widths, left)).rstrip()

    print(f"\n{title}")
    print("  ".join(columns[f].group.center(span_width(f, l)) for f, l in spans).rstrip())
    print(line([c.label for c in columns], [True] * len(columns)))
    print(line(["-" * w for w in widths], [True] * len(columns)))
    for row in rows:
        print(line(row, [c.left for c in columns]))
    sys.stdout.flush()


def print_spread(spreads: list[tuple[float, str]]) -> None:
    """One line on the noise: the typical and the worst (slowest - fastest) / median."""
    typical = statistics.median(s for s, _ in spreads)
    worst, where = max(spreads)
    print(f"noise, (slowest - fastest repeat) / median: typical {typical:.0%}, "
          f"worst {worst:.0%} ({where})")


def rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def ratio(fast: float, peer: float) -> str:
    return f"{fast / peer:.2f}x"


# ---- sections ------------------------------------------------------------------------------


def gemm_section(impls: list[str], dtype: str, budget: Budget,
                 cases=common.GEMM_CASES, title: str = "GEMM") -> bool:
    """GFLOP/s of every GEMM case; returns True if every implementation matched NumPy."""
    columns = [Column("", "gemm", left=True), Column("", "op", left=True),
               Column("", "MxNxK", left=True)]
    for impl in impls:
        columns.append(Column(impl, "GFLOP/s"))
        if impl != "fastmlp":
            columns.append(Column(impl, "fastmlp/" + impl))
    columns.append(Column("", "check", left=True))
    tolerance = 10 * common.TOLERANCE[dtype]["rtol"]  # norm-wise, for sums over K terms
    rows, spreads, all_ok = [], [], True
    for gemm in cases:
        runners = {impl: common.gemm_runner(impl, gemm, dtype) for impl in impls}
        results, first = first_calls(runners)
        errors = {impl: common.max_relative_error(results[impl], results["numpy"])
                  for impl in impls}
        bad = [f"{impl} err {err:.1e}" for impl, err in errors.items() if err > tolerance]
        all_ok &= not bad
        timings = timed(runners, budget, first)
        spreads += [(t.spread, f"{gemm.label} {impl}") for impl, t in timings.items()]
        gflops = {impl: gemm.flops / t.seconds / 1e9 for impl, t in timings.items()}
        row = [gemm.label, gemm.op, gemm.shape]
        for impl in impls:
            row.append(rate(gflops[impl]))
            if impl != "fastmlp":
                row.append(ratio(gflops["fastmlp"], gflops[impl]))
        rows.append(row + ["MISMATCH " + ", ".join(bad) if bad else "ok"])
    print_table(f"{title}, {dtype}: GFLOP/s (2·M·N·K per product; A.Bt = op(A)·op(B)ᵀ without "
                "copies); fastmlp/peer = throughput ratio", columns, rows)
    print_spread(spreads)
    return all_ok


def training_section(impls: list[str], dtype: str, budget: Budget) -> bool:
    """samples/s and GFLOP/s of one epoch per net; returns True if every epoch loss matched."""
    columns = [Column("", "net", left=True), Column("", "layers", left=True),
               Column("", "batch"), Column("", "samples")]
    for impl in impls:
        columns += [Column(impl, "samples/s"), Column(impl, "GFLOP/s")]
        if impl != "fastmlp":
            columns.append(Column(impl, "fastmlp/" + impl))
    columns.append(Column("", "check", left=True))
    rtol = common.TOLERANCE[dtype]["rtol"]
    rows, spreads, all_ok = [], [], True
    for net in common.NETS:
        trainers = {impl: common.make_trainer(impl, net, dtype) for impl in impls}
        runners = {impl: trainer.epoch for impl, trainer in trainers.items()}
        losses, first = first_calls(runners)  # the first epochs start from the same weights
        bad = [f"{impl} loss {loss:.6g} vs {losses['numpy']:.6g}" for impl, loss in losses.items()
               if not math.isclose(loss, losses["numpy"], rel_tol=rtol)]
        all_ok &= not bad
        timings = timed(runners, budget, first)
        spreads += [(t.spread, f"{net.name} {impl}") for impl, t in timings.items()]
        per_second = {impl: net.n_samples / t.seconds for impl, t in timings.items()}
        row = [net.name, net.layers, str(net.batch_size), str(net.n_samples)]
        for impl in impls:
            row += [rate(per_second[impl]), rate(per_second[impl] * net.flops_per_sample / 1e9)]
            if impl != "fastmlp":
                row.append(ratio(per_second["fastmlp"], per_second[impl]))
        rows.append(row + ["MISMATCH " + ", ".join(bad) if bad else "ok"])
    print_table(f"Training, {dtype}: one epoch of SGD (lr {common.LR}, row order), softmax + NLL, "
                "ReLU; GFLOP/s at 6·Σ in·out per sample; fastmlp/peer = throughput ratio",
                columns, rows)
    print_spread(spreads)
    return all_ok


def sweep_section(impls: list[str], dtype: str, budget: Budget) -> bool:
    """The MLP-shape GEMM sweep (batch 32…256 × width 64…1024)."""
    return gemm_section(impls, dtype, budget, common.SWEEP_CASES, "MLP-shape GEMM sweep")


def threads_section(impls: list[str], dtype: str, budget: Budget) -> bool:
    """Two threads on an idle machine: fastmlp against its own one-thread figure and against
    PyTorch (and NumPy's OpenBLAS) on two threads, for the 1024³ product and every net."""
    works = [(f"gemm {common.GEMM_CASES[0].shape} GFLOP/s", common.GEMM_CASES[0].flops / 1e9,
              {impl: common.gemm_runner(impl, common.GEMM_CASES[0], dtype) for impl in impls})]
    works += net_works(impls, dtype)
    rows = two_thread_rows(impls, works, budget, n_threads=2)
    print_table(f"Two threads, {dtype}, idle machine: fastmlp 2t/1t = its own speed-up; "
                "fastmlp/peer with both on two threads",
                two_thread_columns(impls, "2 threads", "2t/1t"), rows)
    return True


def contention_section(impls: list[str], dtype: str, budget: Budget) -> bool:
    """A busy machine: another process (a busy loop, `python -c 'while True: pass'`) holds one
    core while every implementation runs at its default thread count (one per CPU this
    process may use), and fastmlp also on one thread, every net. fastmlp default/1t is what a
    user loses or gains by leaving the threads alone (target ≥ 0.9)."""
    default = fastmlp._threads.available_cpus()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the busy loop is running and the scheduler has placed it
        rows = two_thread_rows(impls, net_works(impls, dtype), budget, n_threads=default)
    finally:
        hog.kill()
        hog.wait()
    print_table(f"Busy machine, {dtype}: one core held by another process; every "
                f"implementation on its default {default} threads; fastmlp also on one thread",
                two_thread_columns(impls, f"{default} threads", f"{default}t/1t"), rows)
    return True


def net_works(impls: list[str], dtype: str) -> list[tuple[str, float, dict]]:
    """(label, samples per call, runners): one training epoch of every net, per implementation."""
    works = []
    for net in common.NETS:
        trainers = {impl: common.make_trainer(impl, net, dtype) for impl in impls}
        works.append((f"train {net.name} samples/s", net.n_samples,
                      {impl: t.epoch for impl, t in trainers.items()}))
    return works


def two_thread_columns(impls: list[str], many: str, speedup: str) -> list[Column]:
    columns = [Column("", "work", left=True), Column("fastmlp", "1 thread"),
               Column("fastmlp", many), Column("fastmlp", speedup)]
    for impl in impls:
        if impl != "fastmlp":
            columns += [Column(impl, many), Column(impl, "fastmlp/" + impl)]
    return columns


def two_thread_rows(impls: list[str], works, budget: Budget, n_threads: int) -> list[list[str]]:
    """Each work timed on n_threads for every implementation, and for fastmlp on one thread
    too, round-robin (so its speed-up compares runs taken side by side: this VM drifts by
    ±30 %); a row per work: rates, fastmlp's n_threads/1 ratio, fastmlp/peer ratios."""
    torch = common.optional_torch()
    rows = []
    for label, amount, runners in works:
        with threads(n_threads, torch):
            both = {"fastmlp 1 thread": runners["fastmlp"], **runners}
            setup = {"fastmlp 1 thread": lambda: fastmlp.set_num_threads(1),
                     "fastmlp": lambda: fastmlp.set_num_threads(n_threads)}
            setup["fastmlp 1 thread"]()
            first = first_calls({"fastmlp 1 thread": runners["fastmlp"]})[1]
            setup["fastmlp"]()
            first.update(first_calls(runners)[1])
            many = {impl: t.seconds for impl, t in
                    timed(both, budget, first, settle=SETTLE_SECONDS, setup=setup).items()}
        one = many.pop("fastmlp 1 thread")
        row = [label, rate(amount / one), rate(amount / many["fastmlp"]),
               ratio(one, many["fastmlp"])]
        for impl in impls:
            if impl != "fastmlp":
                row += [rate(amount / many[impl]), ratio(many[impl], many["fastmlp"])]
        rows.append(row)
    return rows


class threads:
    """Every implementation on n threads inside the block (fastmlp, torch, OpenBLAS)."""

    def __init__(self, n: int, torch) -> None:
        self.n, self.torch = n, torch

    def __enter__(self):
        import threadpoolctl
        self.limits = threadpoolctl.threadpool_limits(self.n)
        self.saved = (fastmlp.get_num_threads(), self.torch.get_num_threads() if self.torch else 0)
        fastmlp.set_num_threads(self.n)
        if self.torch:
            self.torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        fastmlp.set_num_threads(self.saved[0])
        if self.torch:
            self.torch.set_num_threads(self.saved[1])
        self.limits.restore_original_limits()


def latency_section(impls: list[str], dtype: str, budget: Budget) -> bool:
    """Single-sample predict on the mnist-shaped net: fastmlp's MLP.predict (all layers in one
    C++ call) against PyTorch eager (no_grad, argmax) and the NumPy reference's forward."""
    net = common.NET_BY_NAME["mnist"]
    X, _ = common.synthetic_data(net, dtype)
    x = np.ascontiguousarray(X[:1])
    trainers = {impl: common.make_trainer(impl, net, dtype) for impl in impls}
    runners = {impl: trainers[impl].predict_one(x) for impl in impls}
    predictions, first = first_calls(runners)
    ok = len({int(np.asarray(p).ravel()[0]) for p in predictions.values()}) == 1
    timings = timed(runners, budget, first)
    columns = [Column("", "net", left=True)]
    for impl in impls:
        columns.append(Column(impl, "µs"))
        if impl != "fastmlp":
            columns.append(Column(impl, "fastmlp/" + impl))
    columns.append(Column("", "check", left=True))
    row = [f"{net.name} {net.layers}, 1 sample"]
    for impl in impls:
        row.append(f"{timings[impl].seconds * 1e6:.1f}")
        if impl != "fastmlp":
            row.append(ratio(timings[impl].seconds, timings["fastmlp"].seconds))
    print_table(f"Single-sample predict latency, {dtype}, one thread (median µs per call; "
                "fastmlp/peer = speed ratio)", columns, [row + ["ok" if ok else "MISMATCH"]])
    return ok


def inference_section(impls: list[str], dtype: str, budget: Budget) -> bool:
    """predict_proba of the mnist-shaped and wide nets at batch 1, 32 and 256 (Python call
    included): fastmlp float32, bfloat16 products and int8 (when ``MLP.quantize`` exists)
    against onnxruntime float32 / dynamic int8 and PyTorch eager (inference_mode), those
    left out when not installed (see inference.py). A row per implementation; each ratio
    column is the speed ratio row ÷ peer (> 1: the row is faster). Float32 only; three times
    the repeats of the other sections (at half their length): these calls take µs."""
    import inference

    if dtype != "float32":
        print(f"\nInference: float32 only (onnxruntime int8 and bfloat16 quantize float32); "
              f"skipped for --dtype {dtype}")
        return True
    budget = Budget(repeats=3 * budget.repeats, min_time=budget.min_time / 2)
    peers = inference.available_peers()
    columns = [Column("", "net", left=True), Column("", "batch"), Column("", "impl", left=True),
               Column("", "µs/call"), Column("", "GFLOP/s"), Column("", "spread")]
    rows, spreads, all_ok, seen = [], [], True, set()
    for net_name in inference.NETS:
        net = common.NET_BY_NAME[net_name]
        for batch in inference.BATCHES:
            found = inference.runners(net_name, batch)
            runners = {name: run for name, (run, _) in found.items()}
            results, first = first_calls(runners)
            bad = [problem for name, (_, reduced) in found.items()
                   if (problem := inference.check(name, reduced, results[name],
                                                  results["fastmlp"])) is not None]
            all_ok &= not bad
            timings = timed(runners, budget, first)
            seen |= set(found)
            spreads += [(t.spread, f"{net_name} b{batch} {n}") for n, t in timings.items()]
            for name, t in timings.items():
                row = [net_name, str(batch), name, f"{t.seconds * 1e6:,.1f}",
                       rate(inference.flops(net, batch) / t.seconds / 1e9), f"{t.spread:.0%}"]
                row += [ratio(timings[p].seconds, t.seconds) if p in timings else "-"
                        for p in peers]
                rows.append(row + ["MISMATCH " + ", ".join(bad) if bad else "ok"])
    columns += [Column("row ÷ peer", p) for p in peers] + [Column("", "check", left=True)]
    print_table("Inference, float32 weights: predict_proba, one thread, Python call included "
                "(median µs per call; 2·Σ in·out·batch FLOPs); row ÷ peer = speed ratio",
                columns, rows)
    print(f"peers: {inference.describe_peers()}")
    missing = [p for p in ("ort fp32", "ort int8", "torch", "fastmlp int8") if p not in seen]
    if missing:
        print(f"not measured (not installed / not in this fastmlp): {', '.join(missing)}")
    print_spread(spreads)
    return all_ok


SECTIONS = {"gemm": gemm_section, "sweep": sweep_section, "train": training_section,
            "threads": threads_section, "contention": contention_section,
            "latency": latency_section, "inference": inference_section}


class OtherLoad:
    """CPU time other processes take while we run (Linux /proc/stat), this process and the
    children it waited for excepted: on a small machine, a busy neighbour slows every
    implementation and shows up as noise in the ratios."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        busy = sum(int(x) for i, x in enumerate(fields) if i not in (3, 4)) / os.sysconf(
            "SC_CLK_TCK")  # all but idle and iowait, in CPU-seconds
        own = os.times()  # with finished children: the contention section's busy loop
        return (busy, own.user + own.system + own.children_user + own.children_system,
                time.perf_counter())

    def cpus(self) -> float | None:
        """Average number of CPUs kept busy by others since construction."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        (busy0, own0, t0), (busy1, own1, t1) = self._start, end
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


# ---- main ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.repeats} repeats of ≥ {QUICK.min_time} s (about 20 s) "
                             f"instead of {FULL.repeats} of ≥ {FULL.min_time} s")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    parser.add_argument("--dtype", choices=common.DTYPES, default="float32")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    impls = [impl for impl in common.IMPLEMENTATIONS
             if impl != "torch" or common.optional_torch() is not None]

    started = time.perf_counter()
    load = OtherLoad()
    with common.single_threaded():
        print(f"fastmlp comparison, {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
        for line in common.environment_report():
            print(line)
        print(f"run       {'quick' if args.quick else 'full'}: medians of {budget.repeats} "
              f"repeats of ≥ {budget.min_time} s, every implementation on one thread")
        if "torch" not in impls:
            print("note      torch is not installed: no torch columns")
        overrides = common.openblas_overrides()
        if overrides:
            print(f"WARNING   {', '.join(f'{k}={v}' for k, v in overrides.items())} set: NumPy "
                  "may not run OpenBLAS's own choice of kernel; unset them for comparable "
                  "numbers", file=sys.stderr)
        ok = True
        for name, section in SECTIONS.items():
            if args.only in (None, name):
                ok &= section(impls, args.dtype, budget)
    others = load.cpus()
    print(f"\n{time.perf_counter() - started:.0f} s"
          + ("" if others is None else f"; other processes kept {others:.2f} CPUs busy meanwhile")
          + ("" if ok else "; MISMATCH: an implementation computed something else (check column)"))
    if others is not None and others > 0.1:
        print("WARNING   the machine was not idle: rerun for clean numbers", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
