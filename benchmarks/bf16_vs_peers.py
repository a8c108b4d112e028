"""The bfloat16 GEMM: fastmlp.ops.matmul(precision="bfloat16") against fastmlp's float32 GEMM
and PyTorch, in GFLOP/s (2·M·N·K per product), one thread, on the 1024³/2048³ squares and the
three products of each benchmark net's largest layer (common.GEMM_CASES), optionally the
MLP-shape sweep (common.SWEEP_CASES, --sweep).

Columns:
- f32:           fastmlp.ops.matmul, float32.
- bf16:          fastmlp.ops.matmul(precision="bfloat16") on its automatic path (bf16_path()).
- bf16 portable: the same, forced onto the portable path (the float32 kernel on rounded
                 operands).
- torch f32:     torch.mm on float32 tensors.
- torch autocast: torch.mm under torch.autocast("cpu", dtype=torch.bfloat16): float32 inputs
                 converted to bfloat16 by separate passes, a bfloat16 result (fastmlp's is
                 float32; it rounds while packing).
Operands are float32, C-contiguous as stored (transposes are views). The implementations of
a case run in turn, --repeats rounds; each cell is the median, and the spread line gives the
widest (max − min) / median of the case.

    python benchmarks/bf16_vs_peers.py [--repeats 15] [--sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

import fastmlp
from fastmlp import _testing, ops
from common import GEMM_CASES, SWEEP_CASES, environment_report, optional_torch, single_threaded


def runners(gemm) -> dict:
    a, b = gemm.operands("float32")
    ta, tb = gemm.trans_a, gemm.trans_b
    out = {
        "f32": lambda: ops.matmul(a, b, ta, tb),
        "bf16": lambda: ops.matmul(a, b, ta, tb, precision="bfloat16"),
    }

    def portable():
        with _testing.bf16_path("portable"):
            return ops.matmul(a, b, ta, tb, precision="bfloat16")
    out["bf16 portable"] = portable
    torch = optional_torch()
    if torch is not None:
        A, B = torch.from_numpy(a), torch.from_numpy(b)
        A, B = (A.T if ta else A), (B.T if tb else B)
        out["torch f32"] = lambda: torch.mm(A, B)

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return torch.mm(A, B)
        out["torch autocast"] = autocast
    return out


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sweep", action="store_true", help="also the MLP-shape sweep")
    args = parser.parse_args()
    print("\n".join(environment_report()))
    print(f"bf16 path: {ops.bf16_path()} (ISA {ops.isa()}); 1 thread; medians of "
          f"{args.repeats}")
    cases = GEMM_CASES + (SWEEP_CASES if args.sweep else ())
    names = None
    widest = (0.0, "")
    with single_threaded():
        for gemm in cases:
            impls = runners(gemm)
            if names is None:
                names = list(impls)
                print(f"{'gemm':<14} {'op':<6} {'MxNxK':<15}" +
                      "".join(f"{n:>15}" for n in names) + f"{'bf16/f32':>10}")
            # The bf16 results against the float32 one: bfloat16's 8 bits, not a bug.
            ref = impls["f32"]()
            for name in ("bf16", "bf16 portable"):
                err = np.abs(impls[name]() - ref).max() / max(np.abs(ref).max(), 1e-30)
                assert err < 0.05, (gemm.id, name, err)
            for run in impls.values():
                run()  # warm-up: packing buffers, torch's first call
            times = {name: [] for name in impls}
            rounds = max(3, args.repeats if gemm.flops < 4e9 else args.repeats // 2)
            for _ in range(rounds):
                for name, run in impls.items():
                    times[name].append(seconds(run))
            medians = {name: statistics.median(t) for name, t in times.items()}
            for name, t in times.items():
                spread = (max(t) - min(t)) / medians[name]
                if spread > widest[0]:
                    widest = (spread, f"{gemm.id} {name}")
            gflops = {name: gemm.flops / medians[name] / 1e9 for name in impls}
            print(f"{gemm.label:<14} {gemm.op:<6} {gemm.shape:<15}" +
                  "".join(f"{gflops[n]:>15.1f}" for n in names) +
                  f"{gflops['bf16'] / gflops['f32']:>9.2f}×", flush=True)
    print(f"widest spread (max − min) / median: {widest[0]:.0%} ({widest[1]})")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
