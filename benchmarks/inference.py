"""Inference speed: fastmlp float32 (weights packed once vs packed per call) and int8 (dynamic
and static activation scales) against onnxruntime float32 and int8 (quantize_dynamic), one
thread each, predict_proba with the Python call included.

    python benchmarks/inference.py [--rounds 30] [--nets mnist,wide] [--batches 1,32,256]

Every implementation's calls are interleaved round by round (a noisy, shared machine slows
them alike); each figure is the median per call, and the ratios are taken within one run.
GFLOP/s counts 2·Σ n_{l-1}·n_l per sample (GOP/s for int8: the same operations).
The single-sample latency is set beside the time to stream the weights from where they live:
a copy (one read and one write of each byte) of a buffer of the weights' size, repeated so
that it stays in the cache it fits in (L2 for the mnist-shaped net's 0.27 MB of int8 weights).

onnxruntime is optional (pip install onnx onnxruntime); the net is exported here with
onnx.helper as MatMul + Add (+ Relu) nodes and a Softmax, the layout its dynamic quantizer
turns into DynamicQuantizeMatMul / MatMulInteger.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import fastmlp
from fastmlp import _core

NETS = {"mnist": (784, 256, 256, 10), "wide": (1024, 1024, 1024, 10)}


def onnx_sessions(model, directory: str) -> dict:
    """{"ort fp32": session, "ort int8": session} of model, or {} without onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}
    nodes, inits, current = [], [], "X"
    for l, (W, b) in enumerate(zip(model.weights, model.biases)):
        inits += [numpy_helper.from_array(np.ascontiguousarray(np.asarray(W).T), f"W{l}"),
                  numpy_helper.from_array(np.asarray(b), f"b{l}")]
        nodes += [helper.make_node("MatMul", [current, f"W{l}"], [f"m{l}"]),
                  helper.make_node("Add", [f"m{l}", f"b{l}"], [f"a{l}"])]
        current = f"a{l}"
        if l < len(model.weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"h{l}"]))
            current = f"h{l}"
    nodes.append(helper.make_node("Softmax", [current], ["P"], axis=1))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, model.n_features])],
        [helper.make_tensor_value_info("P", TensorProto.FLOAT, [None, model.layer_sizes[-1]])],
        inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp32_path, int8_path = os.path.join(directory, "fp32.onnx"), os.path.join(directory, "int8.onnx")
    onnx.save(proto, fp32_path)
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            for name, path in (("ort fp32", fp32_path), ("ort int8", int8_path))}


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


def runners(model, X: np.ndarray, sessions: dict, calibration: np.ndarray) -> dict:
    dynamic = model.quantize()
    static = model.quantize(calibration=calibration)
    unpacked = dict(weights=model._weights, biases=model._biases, activation=model.activation)
    out = {
        "fastmlp fp32": lambda: model.predict_proba(X),
        # the float32 path as before packing (Wᵀ packed on every call), validation included
        "fastmlp fp32 unpacked": lambda: _core.softmax(_core.mlp_forward(model._features(X),
                                                                         **unpacked)),
        "fastmlp int8 dynamic": lambda: dynamic.predict_proba(X),
        "fastmlp int8 static": lambda: static.predict_proba(X),
    }
    for name, session in sessions.items():
        out[name] = lambda s=session: s.run(None, {"X": X})[0]
    return out


def measure(calls: dict, rounds: int, batch: int) -> dict:
    """Median seconds per call of each runner, calls interleaved round by round."""
    reps = max(1, 2000 // batch)
    times = {name: [] for name in calls}
    for name, call in calls.items():  # warm-up: packs, buffers, sessions
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
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--nets", default="mnist,wide")
    parser.add_argument("--batches", default="1,32,256")
    args = parser.parse_args(argv)
    fastmlp.set_num_threads(1)
    print(f"fastmlp {fastmlp.__version__}: isa {fastmlp.ops.isa()}, int8 path "
          f"{fastmlp.ops.int8_path()}, 1 thread")
    rng = np.random.default_rng(0)
    for net in args.nets.split(","):
        sizes = NETS[net]
        model = fastmlp.MLP(sizes, seed=0)
        model.biases = [rng.normal(scale=0.05, size=b.shape) for b in model.biases]
        flops = 2 * sum(a * b for a, b in zip(sizes, sizes[1:]))
        calibration = rng.random((256, sizes[0]), dtype=np.float32)
        with tempfile.TemporaryDirectory() as directory:
            sessions = onnx_sessions(model, directory)
            if not sessions:
                print("(onnxruntime not installed: fastmlp only)")
            for batch in (int(b) for b in args.batches.split(",")):
                X = rng.random((batch, sizes[0]), dtype=np.float32)
                calls = runners(model, X, sessions, calibration)
                seconds = measure(calls, args.rounds, batch)
                print(f"\n{net} {list(sizes)}, batch {batch}:")
                for name, s in seconds.items():
                    print(f"  {name:24s} {s * 1e6:9.1f} µs  {flops * batch / s / 1e9:7.1f} G(FL)OP/s")
                ratio = lambda a, b: seconds[b] / seconds[a]  # >1: a is faster
                print(f"  packed vs unpacked fp32: {ratio('fastmlp fp32', 'fastmlp fp32 unpacked'):.2f}x")
                if sessions:
                    print(f"  fastmlp fp32 vs ort fp32: {ratio('fastmlp fp32', 'ort fp32'):.2f}x; "
                          f"int8 dynamic vs ort int8: {ratio('fastmlp int8 dynamic', 'ort int8'):.2f}x; "
                          f"int8 static vs ort int8: {ratio('fastmlp int8 static', 'ort int8'):.2f}x")
                if batch == 1:
                    int8_bytes = sum(w.size for w in model.weights[:-1])
                    fp32_bytes = sum(w.nbytes for w in model.weights)
                    for label, nbytes, key in (("int8", int8_bytes, "fastmlp int8 static"),
                                               ("fp32", fp32_bytes, "fastmlp fp32")):
                        copy = copy_seconds(nbytes)
                        print(f"  {label} batch-1 latency {seconds[key] * 1e6:.1f} µs; copying its "
                              f"{nbytes / 1e6:.2f} MB of weights {copy * 1e6:.1f} µs "
                              f"(latency / copy {seconds[key] / copy:.2f})")


if __name__ == "__main__":
    main()
