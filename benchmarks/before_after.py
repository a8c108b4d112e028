"""fastmlp against another build of itself, in one run: did a change cost speed?

    python benchmarks/before_after.py --before /path/to/old/venv/bin/python [--rounds 5]

Runs the same workloads (compare.py's rows that measure fastmlp alone: one SGD epoch of every
common.NETS net, Adam and the L2 penalty on two of them, the GEMM cases, one-sample and
256-sample predict, loss_and_grad, the digits estimator's fit) under the old interpreter and
this one, alternately (old, new, old, new, ...), each in a fresh single-threaded process. Each
process reports per workload the median of its repeats; the table gives, per workload, the
median over rounds for each build, new ÷ old throughput, and the spread of that ratio over the
rounds (max − min): a ratio within the spread of 1.0 is noise, not a change.
Only APIs both builds have are used. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Runs inside each measured process: prints {workload: seconds per call} as JSON.
WORKER = r"""
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import common
import fastmlp

fastmlp.set_num_threads(1)
results = {}

def measure(name, run, repeats=7, min_time=0.1):
    run()
    start = time.perf_counter(); run(); once = max(time.perf_counter() - start, 1e-9)
    calls = max(1, int(min_time / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        samples.append((time.perf_counter() - start) / calls)
    results[name] = statistics.median(samples)

rng = np.random.default_rng(0)
for net in common.NETS:
    X = rng.standard_normal((net.n_samples, net.layer_sizes[0])).astype(np.float32)
    y = rng.integers(0, net.layer_sizes[-1], size=net.n_samples)
    model = fastmlp.MLP(net.layer_sizes, seed=0)
    opts = {"sgd": lambda: fastmlp.SGD(lr=1e-3)}
    if net.name in ("digits", "mnist"):
        opts["adam"] = lambda: fastmlp.Adam(lr=1e-4)
        opts["sgd+alpha"] = None
    for opt_name, make in opts.items():
        opt = make() if make else fastmlp.SGD(lr=1e-3)
        alpha = 1e-4 if opt_name == "sgd+alpha" else 0.0
        measure(f"train {net.name} {opt_name}",
                lambda: model.fit(X, y, epochs=1, batch_size=net.batch_size, optimizer=opt,
                                  shuffle=False, alpha=alpha),
                repeats=5, min_time=0.05)
for case in common.GEMM_CASES:
    a, b = case.operands(np.float32)
    measure(f"gemm {case.id}", lambda: fastmlp.ops.matmul(a, b, trans_a=case.trans_a,
                                                           trans_b=case.trans_b), repeats=5)
for name, sizes in (("mnist", (784, 256, 256, 10)), ("digits", (64, 128, 10))):
    model = fastmlp.MLP(sizes, seed=0)
    for batch in (1, 256):
        X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        measure(f"predict_proba {name} B{batch}", lambda: model.predict_proba(X))
    X = rng.standard_normal((128, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=128)
    measure(f"loss_and_grad {name} B128", lambda: model.loss_and_grad(X, y))
try:
    from sklearn.datasets import load_digits
    from fastmlp.estimators import MLPClassifier
    import warnings
    Xd, yd = load_digits(return_X_y=True)
    def estimator():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MLPClassifier(max_iter=20, random_state=0).fit(Xd, yd)
    measure("MLPClassifier digits 20 epochs", estimator, repeats=5, min_time=0.2)
except ImportError:
    pass
print(json.dumps(results))
"""


def run_once(python: str) -> dict[str, float]:
    env = dict(os.environ, FASTMLP_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(key, None)
    out = subprocess.run([python, "-c", WORKER, HERE], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="python of the old build")
    parser.add_argument("--after", default=sys.executable, help="python of the new build")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    before: list[dict] = []
    after: list[dict] = []
    for r in range(args.rounds):
        before.append(run_once(args.before))
        after.append(run_once(args.after))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'workload':44} {'old s/call':>11} {'new s/call':>11} {'new/old speed':>14} "
          f"{'spread':>7}")
    worst = 1.0
    for name in after[0]:
        if name not in before[0]:
            continue
        old = statistics.median(run[name] for run in before)
        new = statistics.median(run[name] for run in after)
        ratios = [b[name] / a[name] for b, a in zip(before, after)]
        spread = max(ratios) - min(ratios)
        worst = min(worst, old / new)
        print(f"{name:44} {old:11.3e} {new:11.3e} {old / new:14.3f} {spread:7.3f}")
    print(f"slowest row: {worst:.3f}x of the old speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
