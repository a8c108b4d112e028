"""GFLOP/s of one square float32 product, fastmlp.ops.matmul (or NumPy's), on one thread:
what the cache blocks derived from the caches (FASTMLP_CACHE_SIZES to simulate another CPU's)
give. Prints one line: the label, the median and the spread over the repeats, the blocks.

    python benchmarks/blocking.py --n 1024 --repeats 31 [--numpy] [--import-from DIR]

--import-from DIR imports fastmlp from DIR instead of the installed one: a copy of another
build (python/fastmlp plus its _core*.so), e.g. main's, whose blocks were constants.
Alternate the runs of the settings compared (benchmarks/README.md, "Cache blocks").
"""

import argparse
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--numpy", action="store_true", help="time numpy.matmul instead")
    parser.add_argument("--import-from", help="a directory holding another build's fastmlp")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if args.import_from:
        # The editable install's finder would win over sys.path: drop it.
        sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
        sys.path.insert(0, args.import_from)
    import numpy as np
    import fastmlp
    from fastmlp import ops

    fastmlp.set_num_threads(1)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.n, args.n), dtype=np.float32)
    b = rng.standard_normal((args.n, args.n), dtype=np.float32)
    run = (lambda: a @ b) if args.numpy else (lambda: ops.matmul(a, b))
    run(), run()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    rates = sorted(2 * args.n ** 3 / s / 1e9 for s in seconds)
    g = ops.gemm_config("float32")
    blocks = "numpy" if args.numpy else f"MC {g['MC']} KC {g['KC']} NC {g['NC']}"
    print(f"{args.label or blocks:24} n={args.n}  median {rates[len(rates) // 2]:6.1f} GFLOP/s "
          f"(min {rates[0]:.1f}, max {rates[-1]:.1f})  [{blocks}; "
          f"FASTMLP_CACHE_SIZES={os.environ.get('FASTMLP_CACHE_SIZES', 'unset')}]")


if __name__ == "__main__":
    main()
