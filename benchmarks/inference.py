"""Inference (``predict_proba``) runners for compare.py's "inference" section and
bench_inference.py: fastmlp (float32, bfloat16 products, int8 when ``MLP.quantize`` exists)
against onnxruntime (float32, and its ``quantize_dynamic`` int8 of the same graph) and
PyTorch eager, each optional peer left out when it is not installed.

Legend: B batch, layer_sizes [n_0, ..., n_L]; a call computes the class probabilities
(B, n_L) of X (B, n_0), 2·Σ n_{l-1}·n_l·B FLOPs. Every runner is a zero-argument function
that includes its Python call (the probabilities come back as a NumPy array), on one thread:
onnxruntime with ``intra_op_num_threads = inter_op_num_threads = 1`` and sequential
execution, torch under ``torch.set_num_threads(1)`` (common.single_threaded), fastmlp under
``fastmlp.set_num_threads(1)``.

onnxruntime int8: ``quantize_dynamic(weight_type=QuantType.QInt8, per_channel=False)``
(onnxruntime's default weight type): weights int8 per tensor, activations quantized to uint8
per call (DynamicQuantizeLinear → MatMulInteger). On this repository's benchmark machine (AMD
EPYC, AVX-512 VNNI, one thread) QInt8 weights beat QUInt8: mnist-shaped net batch 256
465 µs vs 817 µs, wide net 2.4 ms vs 4.7 ms (medians of 5, 2026-11-29).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import tempfile

import numpy as np

import common
import fastmlp

NETS = ("mnist", "wide")  # common.NET_BY_NAME: [784, 256, 256, 10] and [1024, 1024, 1024, 10]
BATCHES = (1, 32, 256)
ORT_INT8_WEIGHT_TYPE = "QInt8"
# Agreement with fastmlp's float32 probabilities: the float32 peers do the same arithmetic in
# another order; bfloat16 / int8 round the operands, so they are only checked to be close.
FP32_ATOL = 1e-5
REDUCED_ATOL = 0.05


def optional_ort():
    """The onnxruntime module, or None when it (or onnx, for the export) is not installed."""
    try:
        import onnx  # noqa: F401  (MLP.to_onnx needs it)
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def available_peers() -> list[str]:
    """The peers ``runners`` includes on this machine, in table order."""
    return ((["ort fp32", "ort int8"] if optional_ort() is not None else [])
            + (["torch"] if common.optional_torch() is not None else []))


def describe_peers() -> str:
    """One line: the peers' versions and how onnxruntime's int8 graph was made."""
    ort, torch = optional_ort(), common.optional_torch()
    parts = [f"onnxruntime {ort.__version__} (int8: quantize_dynamic, {ORT_INT8_WEIGHT_TYPE} "
             "weights per tensor, uint8 activations per call)" if ort else "no onnxruntime",
             f"torch {torch.__version__} eager, inference_mode" if torch else "no torch"]
    return "; ".join(parts)


def flops(net: common.Net, batch: int) -> int:
    return 2 * batch * sum(i * o for i, o in zip(net.layer_sizes[:-1], net.layer_sizes[1:]))


@functools.lru_cache(maxsize=None)
def model(net_name: str) -> fastmlp.MLP:
    """The net's float32 classifier (He-initialised from common.INIT_SEED, small non-zero
    biases so that a dropped bias shows in the checks)."""
    net = common.NET_BY_NAME[net_name]
    mlp = fastmlp.MLP(net.layer_sizes, activation="relu", output="softmax", dtype="float32",
                      seed=common.INIT_SEED)
    rng = np.random.default_rng(common.DATA_SEED)
    mlp.biases = [0.1 * rng.standard_normal(b.shape) for b in mlp.biases]
    return mlp


@functools.lru_cache(maxsize=None)
def inputs(net_name: str, batch: int) -> np.ndarray:
    net = common.NET_BY_NAME[net_name]
    X = common.synthetic_data(net, "float32")[0]
    return np.ascontiguousarray(np.resize(X, (batch, X.shape[1])))


@functools.lru_cache(maxsize=None)
def _onnx_files(net_name: str) -> tuple[str, str]:
    """(float32 graph, its dynamic int8 quantization): files in a temporary directory that
    lives as long as the process (the cache keeps the object)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = tempfile.TemporaryDirectory(prefix="fastmlp-bench-")
    _onnx_files.directories.append(directory)
    fp32 = os.path.join(directory.name, f"{net_name}.onnx")
    int8 = os.path.join(directory.name, f"{net_name}.int8.onnx")
    model(net_name).to_onnx(fp32)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice about pre-processing
    try:
        quantize_dynamic(fp32, int8, weight_type=getattr(QuantType, ORT_INT8_WEIGHT_TYPE),
                         per_channel=False)
    finally:
        root.setLevel(level)
    return fp32, int8


_onnx_files.directories = []


def _ort_runner(ort, path: str, X: np.ndarray):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(["probabilities"], {"X": X})[0]


def _torch_runner(torch, mlp: fastmlp.MLP, X: np.ndarray):
    from reference_mlp import torch_mlp_from

    module = torch_mlp_from(mlp).eval()

    def run():
        with torch.inference_mode():
            return torch.softmax(module(torch.from_numpy(X)), dim=1).numpy()
    return run


IMPLEMENTATIONS = ("fastmlp", "fastmlp bf16", "fastmlp int8", "ort fp32", "ort int8", "torch")


@functools.lru_cache(maxsize=None)
def runners(net_name: str, batch: int) -> dict[str, tuple]:
    """name -> (zero-argument runner, reduced precision?) for every implementation of
    IMPLEMENTATIONS available ("fastmlp int8" when MLP.quantize exists, the peers when they
    are installed). Cached: the sessions and modules are built once per net and batch."""
    mlp, X = model(net_name), inputs(net_name, batch)
    found = {"fastmlp": (functools.partial(mlp.predict_proba, X), False)}
    bf16 = copy.deepcopy(mlp)
    bf16.precision = "bfloat16"
    found["fastmlp bf16"] = (functools.partial(bf16.predict_proba, X), True)
    if hasattr(mlp, "quantize"):
        found["fastmlp int8"] = (functools.partial(mlp.quantize("int8").predict_proba, X), True)
    ort = optional_ort()
    if ort is not None:
        fp32, int8 = _onnx_files(net_name)
        found["ort fp32"] = (_ort_runner(ort, fp32, X), False)
        found["ort int8"] = (_ort_runner(ort, int8, X), True)
    torch = common.optional_torch()
    if torch is not None:
        found["torch"] = (_torch_runner(torch, mlp, X), False)
    return found


def check(name: str, reduced: bool, result, reference: np.ndarray) -> str | None:
    """None if ``result`` agrees with fastmlp's float32 probabilities, else what is wrong."""
    result = np.asarray(result)
    if result.shape != reference.shape:
        return f"{name} shape {result.shape}"
    error = float(np.max(np.abs(result.astype(np.float64) - reference)))
    return None if error <= (REDUCED_ATOL if reduced else FP32_ATOL) else f"{name} err {error:.1e}"
