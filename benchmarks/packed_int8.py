"""Pre-packed float32 weights and int8 inference in detail (compare.py's "inference" section,
from inference.py, has the peers' table): fastmlp float32 with the weights packed once vs
packed on every call, int8 with dynamic vs static activation scales, against onnxruntime
float32 and int8 (inference.py's graphs: ``MLP.to_onnx`` and ``quantize_dynamic``), one
thread, ``predict_proba`` with the Python call included.

    python benchmarks/packed_int8.py [--rounds 20] [--nets mnist,wide] [--batches 1,32,256]

The issue's targets (issue 15, mnist-shaped net; ratios > 1: fastmlp faster), printed last
when the mnist net is run at batches 1 and 256 with onnxruntime installed:

    python benchmarks/packed_int8.py --nets mnist --batches 1,256 --rounds 30

Every runner's calls are interleaved round by round (a noisy, shared machine slows them
alike); each figure is the median per call, and the ratios are taken within one run.
G(FL)OP/s counts 2·Σ n_{l-1}·n_l per sample (int8: the same operations). At batch 1 the
latency is set beside the time to stream the weights from where they live: a copy (one read
and one write of each byte) of a buffer of the weights' size, repeated so that it stays in
the cache it fits in (L2 for the mnist-shaped net's 0.27 MB of int8 weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import common
import fastmlp
import inference
from fastmlp import _core


def copy_seconds(nbytes: int, repeats: int = 2000) -> float:
    """Median time of one copy of an nbytes buffer into another, both kept warm in cache."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    for _ in range(50):
        np.copyto(dst, src)
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        for _ in range(repeats // 20):
            np.copyto(dst, src)
        samples.append((time.perf_counter() - started) / (repeats // 20))
    return statistics.median(samples)


def runners(net_name: str, batch: int) -> dict:
    model, X = inference.model(net_name), inference.inputs(net_name, batch)
    calibration = inference.inputs(net_name, 256)
    dynamic, static = model.quantize(), model.quantize(calibration=calibration)
    unpacked = dict(weights=model._weights, biases=model._biases, activation=model.activation)
    out = {
        "fastmlp fp32": lambda: model.predict_proba(X),
        # the float32 path as before packing (Wᵀ packed on every call), validation included
        "fastmlp fp32 unpacked": lambda: _core.softmax(_core.mlp_forward(model._features(X),
                                                                         **unpacked)),
        "fastmlp int8 dynamic": lambda: dynamic.predict_proba(X),
        "fastmlp int8 static": lambda: static.predict_proba(X),
    }
    peers = inference.runners(net_name, batch)
    for name in ("ort fp32", "ort int8"):
        if name in peers:
            out[name] = peers[name][0]
    return out


def measure(calls: dict, rounds: int, batch: int) -> dict:
    """Median seconds per call of each runner, calls interleaved round by round."""
    reps = max(1, 2000 // batch)
    times = {name: [] for name in calls}
    for call in calls.values():  # warm-up: packs, buffers, sessions
        for _ in range(3):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(reps):
                call()
            times[name].append((time.perf_counter() - started) / reps)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--nets", default="mnist,wide")
    parser.add_argument("--batches", default="1,32,256")
    args = parser.parse_args(argv)
    ratios = {}  # (net, batch) -> {name: seconds}
    with common.single_threaded():
        print(f"fastmlp {fastmlp.__version__}: isa {fastmlp.ops.isa()}, int8 path "
              f"{fastmlp.ops.int8_path()}, 1 thread; {inference.describe_peers()}")
        for net in args.nets.split(","):
            sizes = common.NET_BY_NAME[net].layer_sizes
            for batch in (int(b) for b in args.batches.split(",")):
                seconds = ratios[net, batch] = measure(runners(net, batch), args.rounds, batch)
                flops = inference.flops(common.NET_BY_NAME[net], batch)
                print(f"\n{net} {list(sizes)}, batch {batch}:")
                for name, s in seconds.items():
                    print(f"  {name:24s} {s * 1e6:9.1f} µs  {flops / s / 1e9:7.1f} G(FL)OP/s")

                def faster(a, b):  # > 1: a is faster than b
                    return seconds[b] / seconds[a]
                print(f"  packed vs unpacked fp32: "
                      f"{faster('fastmlp fp32', 'fastmlp fp32 unpacked'):.2f}x")
                if "ort int8" in seconds:
                    print(f"  fastmlp fp32 vs ort fp32: {faster('fastmlp fp32', 'ort fp32'):.2f}x; "
                          f"int8 dynamic vs ort int8: "
                          f"{faster('fastmlp int8 dynamic', 'ort int8'):.2f}x; int8 static vs "
                          f"ort int8: {faster('fastmlp int8 static', 'ort int8'):.2f}x")
                if batch == 1:
                    model = inference.model(net)
                    int8_bytes = sum(w.size for w in model.weights[:-1])
                    fp32_bytes = sum(w.nbytes for w in model.weights)
                    for label, nbytes, key in (("int8", int8_bytes, "fastmlp int8 static"),
                                               ("fp32", fp32_bytes, "fastmlp fp32")):
                        copy = copy_seconds(nbytes)
                        print(f"  {label} batch-1 latency {seconds[key] * 1e6:.1f} µs; copying "
                              f"its {nbytes / 1e6:.2f} MB of weights {copy * 1e6:.1f} µs "
                              f"(latency / copy {seconds[key] / copy:.2f})")

    print_targets(ratios)


# Issue 15's targets: (batch, fastmlp runner, peer, at least this ratio peer / fastmlp).
TARGETS = [(256, "fastmlp int8 dynamic", "ort int8", 1.2),
           (256, "fastmlp int8 static", "ort int8", 1.2),
           (1, "fastmlp fp32", "ort fp32", 1.5),
           (1, "fastmlp int8 dynamic", "ort int8", 1.0),
           (1, "fastmlp int8 static", "ort int8", 1.0),
           (256, "fastmlp fp32", "ort fp32", 1.0)]


def print_targets(seconds: dict) -> None:
    """One line per target of issue 15 that this run measured (mnist net, onnxruntime)."""
    lines = []
    for batch, ours, peer, goal in TARGETS:
        measured = seconds.get(("mnist", batch), {})
        if ours in measured and peer in measured:
            ratio = measured[peer] / measured[ours]
            lines.append(f"  batch {batch:3d}: {ours} vs {peer}: {ratio:.2f}x (target >= {goal}: "
                         f"{'met' if ratio >= goal else 'NOT met'})")
    if lines:
        print("\nissue 15 targets, mnist net, this run (medians, interleaved):")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
