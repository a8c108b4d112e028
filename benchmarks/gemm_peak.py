"""float32 GEMM against the core's measured FMA peak and against NumPy's BLAS (issue 14's
float32 targets: ≥ 92 % of peak at 1024³, ≥ 1.1× OpenBLAS at the MLP shapes), 1 thread.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_peak.py [--rounds 15]

The peak is fastmlp's register-only FMA probe (``_core.measure_float32_peak``: independent FMA
chains, the fastest of ~3 ms chunks), measured before and after the products; a product's
"% peak" divides its median GFLOP/s by the median of those peaks, "best" its fastest round's
(what an idle core gives when other processes share the machine). Each round times every
implementation once per case, alternating (a batch of calls of ≥ --batch-seconds each), so a
busy spell of the machine hits both; the table prints medians over the rounds. Cases: 1024³
and 2048³, the layer products of compare.py's gemm section and its MLP-shape sweep
(benchmarks/common.py).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import common
import fastmlp
from fastmlp import _core

IMPLS = ("fastmlp", "numpy")


def measure_peaks(count: int, seconds: float) -> list[float]:
    """`count` measurements of the float32 FMA peak, GFLOP/s."""
    return [_core.measure_float32_peak(seconds) / 1e9 for _ in range(count)]


def batch_runner(run, batch_seconds: float, clock):
    """A function calling `run` enough times to last about batch_seconds; returns the seconds
    per call by `clock`."""
    start = clock()
    run()
    calls = max(1, int(batch_seconds / max(clock() - start, 1e-7)))

    def timed():
        start = clock()
        for _ in range(calls):
            run()
        return (clock() - start) / calls
    return timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-seconds", type=float, default=0.02)
    parser.add_argument("--cases", choices=("square", "mlp", "all"), default="all",
                        help="square: 1024³ and 2048³ only; mlp: the layer products only")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: this thread's CPU time, which leaves out the time slices "
                             "other processes take on a busy machine (both implementations "
                             "run on the calling thread); their cache pollution remains")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    if _core.measure_float32_peak(0.01) is None:
        sys.exit("the portable build has no FMA peak probe (FASTMLP_ISA=generic?)")
    cases = [g for g in common.GEMM_CASES if g.label == "square" or args.cases != "square"]
    cases += [g for g in common.SWEEP_CASES if args.cases == "all"]
    if args.cases == "mlp":
        cases = [g for g in cases if g.label != "square"]
    with common.single_threaded():
        for line in common.environment_report():
            print(line)
        load_before = os.getloadavg()[0]
        peaks = measure_peaks(5, 0.3)
        runners, checks = {}, {}
        for g in cases:
            calls = {impl: common.gemm_runner(impl, g, "float32") for impl in IMPLS}
            checks[g.id] = common.max_relative_error(calls["fastmlp"](), calls["numpy"]())
            runners[g.id] = {impl: batch_runner(run, args.batch_seconds, clock)
                             for impl, run in calls.items()}
        seconds = {g.id: {impl: [] for impl in IMPLS} for g in cases}
        for _ in range(args.rounds):
            for g in cases:
                for impl in IMPLS:
                    seconds[g.id][impl].append(runners[g.id][impl]())
        peaks += measure_peaks(5, 0.3)
        load_after = os.getloadavg()[0]

    peak = statistics.median(peaks)
    print(f"peak      float32 FMA probe: median {peak:.1f} GFLOP/s, range {min(peaks):.1f}–"
          f"{max(peaks):.1f} (10 runs of 0.3 s, before and after)")
    print(f"load      1-minute load average {load_before:.2f} before, {load_after:.2f} after "
          f"({os.cpu_count()} CPUs); {args.rounds} interleaved rounds, medians, {args.clock} "
          f"clock")
    print()
    header = (f"{'gemm':<14} {'op':<5} {'MxNxK':<15} {'fastmlp':>8} {'% peak':>7} {'best':>6} "
              f"{'numpy':>8} {'% peak':>7} {'best':>6} {'fastmlp/numpy':>14} {'check':>6}")
    print(header)
    print("-" * len(header))
    ratios = []
    for g in cases:
        rate = {impl: g.flops / statistics.median(seconds[g.id][impl]) / 1e9 for impl in IMPLS}
        best = {impl: g.flops / min(seconds[g.id][impl]) / 1e9 for impl in IMPLS}
        ratio = statistics.median(n / f for f, n in zip(seconds[g.id]["fastmlp"],
                                                        seconds[g.id]["numpy"]))
        if g.label != "square":
            ratios.append(ratio)
        ok = "ok" if checks[g.id] < 1e-4 else f"{checks[g.id]:.1e}"
        print(f"{g.label:<14} {g.op:<5} {g.shape:<15} {rate['fastmlp']:8.1f} "
              f"{100 * rate['fastmlp'] / peak:6.1f}% {100 * best['fastmlp'] / peak:5.1f}% "
              f"{rate['numpy']:8.1f} {100 * rate['numpy'] / peak:6.1f}% "
              f"{100 * best['numpy'] / peak:5.1f}% {ratio:13.2f}x {ok:>6}")
    if ratios:
        print(f"\nMLP shapes: fastmlp/numpy min {min(ratios):.2f}x, median "
              f"{statistics.median(ratios):.2f}x, max {max(ratios):.2f}x over {len(ratios)} "
              f"products (ratio = median over rounds of the per-round ratio)")


if __name__ == "__main__":
    np.random.seed(0)
    main()
