"""The C++ kernels of fastmlp, as NumPy functions.

Every function takes NumPy arrays of dtype float32 or float64 (all operands of one call
must share the dtype, else ``TypeError``) and returns arrays of that dtype. Shapes are
checked and a mismatch raises ``ValueError``. Layouts: ``matmul`` and the dense layers read
transposed, strided and negative-stride views in place; the element-wise kernels and the
losses copy a non-contiguous input to a contiguous one first.

Conventions (as ``torch.nn.Linear``): a layer's weight ``W`` has shape
``(out_features, in_features)`` and maps a batch ``x`` of shape ``(B, in_features)`` to
``x @ W.T + b`` of shape ``(B, out_features)``.
"""

from __future__ import annotations

import numpy as np

from fastmlp import _core
from fastmlp._validation import (check_activation, contiguous, float_array, integer_labels,
                                 PRECISIONS, same_dtype,
                                 sample_weights, strided_ok)

__all__ = [
    "matmul", "relu", "relu_grad", "sigmoid", "softmax", "softmax_nll", "sigmoid_bce",
    "squared_error", "dense_forward", "dense_backward", "isa", "supported_isas", "set_isa", "gemm_config",
    "cache_sizes", "cost_model", "bf16_path", "supported_bf16_paths", "int8_path",
    "supported_int8_paths",
]


def isa() -> str:
    """The SIMD flavour the kernels run: ``'generic'``, ``'avx2'`` or ``'avx512'``.

    Chosen once from the CPU, or forced with the environment variable ``FASTMLP_ISA``.
    """
    return _core.isa()


def supported_isas() -> list[str]:
    """The SIMD flavours this CPU can run."""
    return list(_core.supported_isas())


def set_isa(name: str) -> None:
    """Switch the kernels to another supported flavour for this process (for tests and
    benchmarks; ``FASTMLP_ISA`` does the same at start-up). ``ValueError`` if unsupported."""
    if name not in ("generic", "avx2", "avx512"):
        raise ValueError(f"unknown ISA {name!r}: expected 'generic', 'avx2' or 'avx512'")
    if name not in supported_isas():
        raise ValueError(f"this CPU does not support {name!r}; supported: {supported_isas()}")
    _core.set_isa(name)


def gemm_config(dtype="float32") -> dict:
    """The active GEMM's register tile (MR × NR, and row_NR for a single row) and cache blocks
    (MC, KC, NC) for ``dtype``: what the tests use to aim at the blocking edges. The blocks
    are derived from :func:`cache_sizes` when the module is imported. ``"bfloat16"``: those
    of ``matmul(..., precision="bfloat16")``'s active path (``bf16_path()``)."""
    if dtype == "bfloat16":
        return dict(_core.bf16_gemm_config())
    return dict(_core.gemm_config(np.dtype(dtype).name))


def cache_sizes() -> dict:
    """The data caches the GEMM's cache blocks are derived from: ``l1d``, ``l2`` (per core)
    and ``l3`` (whole, 0 if none) in bytes, their ways, ``l3_sharing`` (logical CPUs sharing
    the L3), ``line`` (bytes) and ``source`` (``'cpuid'``, ``'sysfs'`` or ``'default'``, with
    ``'+FASTMLP_CACHE_SIZES'`` when that environment variable overrode some of them, e.g.
    ``FASTMLP_CACHE_SIZES="l1d=32K,l2=1M,l3=32M,l3_sharing=8"`` to simulate another CPU's
    blocking; a bad value makes ``import fastmlp`` fail)."""
    return dict(_core.cache_sizes())


def cost_model(dtype="float32") -> dict:
    """What decides whether a product is split over the thread pool (docs/threads.md), as
    measured on first use for the current ISA, ``dtype`` and thread count:
    ``flops_per_second`` (one thread), ``region_seconds`` (what a split costs beyond its
    share of the work; 0 with one thread), ``threads`` and ``risk_factor``. A product of F
    FLOPs is split when F / flops_per_second · (1 − 1/threads) ≥ risk_factor ·
    region_seconds."""
    return dict(_core.cost_model(np.dtype(dtype).name))


def matmul(a, b, trans_a: bool = False, trans_b: bool = False,
           precision: str = "float32") -> np.ndarray:
    """``op(a) @ op(b)`` where ``op(m)`` is ``m.T`` if its flag is set, else ``m``.

    a, b: 2-D. Transposes are never materialised: a transposed operand is read with swapped
    strides.

    precision: ``"float32"`` (the default) multiplies the operands as they are, in their own
    dtype. ``"bfloat16"`` (float32 operands only; float64 ones raise ``TypeError``) rounds
    each operand value to bfloat16 as it is packed (round to nearest, ties to even; NaN stays
    NaN, ±inf stays ±inf; zeros and float32 subnormals become a signed zero, as the hardware
    does), multiplies and accumulates in float32 and returns float32. ``bf16_path()`` says
    which kernel runs.
    """
    if precision == "bfloat16":
        return _matmul_bf16(a, b, bool(trans_a), bool(trans_b))
    if precision != "float32":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if type(a) is np.ndarray and type(b) is np.ndarray:
        # Fast path: the core checks dtypes, shapes, strides and alignment itself, and a call
        # costs about 1 µs, which matters for an MLP's small products. On any complaint, the
        # checks below give the detailed message (or copy an odd layout).
        try:
            return _core.matmul(a, b, bool(trans_a), bool(trans_b))
        except (TypeError, ValueError):
            pass
    a, b = _matmul_operands(a, b, trans_a, trans_b)
    return _core.matmul(strided_ok(a), strided_ok(b), bool(trans_a), bool(trans_b))


def _matmul_operands(a, b, trans_a, trans_b) -> tuple[np.ndarray, np.ndarray]:
    a = float_array(a, "a", ndim=2)
    b = float_array(b, "b", ndim=2)
    same_dtype(("a", a), ("b", b))
    a_inner = a.shape[0] if trans_a else a.shape[1]
    b_inner = b.shape[1] if trans_b else b.shape[0]
    if a_inner != b_inner:
        raise ValueError(
            f"matmul: op(a) has {a_inner} columns but op(b) has {b_inner} rows "
            f"(a {a.shape}, trans_a={bool(trans_a)}; b {b.shape}, trans_b={bool(trans_b)})"
        )
    return a, b


def _matmul_bf16(a, b, trans_a: bool, trans_b: bool) -> np.ndarray:
    if type(a) is np.ndarray and type(b) is np.ndarray:
        # The core checks everything itself (as matmul's fast path); on a complaint, the
        # checks below give the detailed message.
        try:
            return _core.matmul_bf16(a, b, trans_a, trans_b)
        except (TypeError, ValueError):
            pass
    a, b = _matmul_operands(a, b, trans_a, trans_b)
    if a.dtype != np.float32:
        raise TypeError(
            f"matmul: precision='bfloat16' takes float32 operands, got {a.dtype}; float64 "
            "refuses bfloat16 rounding (it would keep 8 of 53 bits): convert with "
            ".astype(np.float32) first, or use precision='float32'"
        )
    return _core.matmul_bf16(strided_ok(a), strided_ok(b), trans_a, trans_b)


def int8_path() -> str:
    """The kernel of quantized inference's int8 products (``MLP.quantize``): ``'avx512vnni'``
    (vpdpbusd on 512-bit registers, when the active ISA is avx512 and the CPU has
    AVX512-VNNI), ``'avxvnni'`` (the VEX form on 256-bit registers: CPUs with AVX-VNNI, under
    avx2 or without AVX512-VNNI) or ``'portable'``; follows ``set_isa`` / ``FASTMLP_ISA``."""
    return _core.int8_path()


def supported_int8_paths() -> list[str]:
    """The int8 kernels this CPU can run (``_testing.int8_path`` forces one)."""
    return list(_core.supported_int8_paths())


def bf16_path() -> str:
    """The kernel of ``matmul(..., precision="bfloat16")``: ``'avx512bf16'`` (VDPBF16PS, when
    the active ISA is ``'avx512'`` and the CPU has AVX512-BF16) or ``'portable'`` (operands
    rounded to bfloat16, multiplied by the active ISA's float32 kernel). Follows
    ``set_isa`` / ``FASTMLP_ISA``."""
    return _core.bf16_path()


def supported_bf16_paths() -> list[str]:
    """The bfloat16 kernels this CPU can run."""
    return list(_core.supported_bf16_paths())


def relu(x) -> np.ndarray:
    """``max(x, 0)`` element-wise (NaN propagates, as ``np.maximum``)."""
    x = float_array(x, "x")
    return _core.relu(contiguous(x)).reshape(x.shape)


def relu_grad(grad_out, out) -> np.ndarray:
    """The gradient through a ReLU: ``grad_out`` where ``out > 0``, else 0.

    ``out`` is the ReLU's *output* (equivalently its input: both are > 0 at the same places).
    """
    grad_out = float_array(grad_out, "grad_out")
    out = float_array(out, "out")
    same_dtype(("grad_out", grad_out), ("out", out))
    if grad_out.shape != out.shape:
        raise ValueError(f"relu_grad: grad_out has shape {grad_out.shape} but out has shape "
                         f"{out.shape}; they must match")
    return _core.relu_grad(contiguous(grad_out), contiguous(out)).reshape(out.shape)


def sigmoid(x) -> np.ndarray:
    """``1 / (1 + exp(-x))`` element-wise, without overflow for any x (exact limits 0, 1)."""
    x = float_array(x, "x")
    return _core.sigmoid(contiguous(x)).reshape(x.shape)


def softmax(x) -> np.ndarray:
    """Softmax over the last axis, stable: the row maximum is subtracted before ``exp``
    (float32 on the avx512 ISA: a polynomial ``exp`` within ~2 ulp of the C library's)."""
    x = float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("softmax needs at least 1 dimension, got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"softmax over an empty last axis: shape {x.shape}")
    rows = contiguous(x).reshape(-1, x.shape[-1])
    return _core.softmax(rows).reshape(x.shape)


def softmax_nll(logits, labels, sample_weight=None) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of the correct classes, and its gradient.

    logits: (N, K); labels: (N,) of an integer dtype, values in [0, K).
    Returns ``(loss, dlogits)`` with ``loss = mean_r(logsumexp(logits[r]) - logits[r, y_r])``
    and ``dlogits = (softmax(logits) - onehot(labels)) / N``, fused in one pass per row.
    With ``sample_weight`` w (N,): the weighted mean ``Σ w_r loss_r / Σ w`` and rows of
    dlogits scaled by ``w_r / Σ w`` instead of ``1 / N``.
    """
    logits = float_array(logits, "logits", ndim=2)
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"logits must have at least one row and one class, got shape {logits.shape}")
    labels = integer_labels(labels, "labels", n_classes=k, n_samples=n)
    weights = sample_weights(sample_weight, n, logits.dtype)
    return _core.softmax_nll(contiguous(logits), labels, weights)


def sigmoid_bce(logits, labels, sample_weight=None) -> tuple[float, np.ndarray]:
    """Binary cross-entropy of one logit per sample, and its gradient.

    logits: (N,) or (N, 1); labels: (N,) of 0/1 (integer or bool dtype).
    Returns ``(loss, dlogits)`` with ``loss = mean(max(z,0) - z*y + log1p(exp(-|z|)))`` (the
    stable form of ``-y log σ(z) - (1-y) log(1-σ(z))``) and ``dlogits = (σ(z) - y) / N``,
    shaped like ``logits``. ``sample_weight``: as in ``softmax_nll``.
    """
    logits = float_array(logits, "logits")
    if logits.ndim not in (1, 2) or (logits.ndim == 2 and logits.shape[1] != 1):
        raise ValueError(f"logits must have shape (N,) or (N, 1), got {logits.shape}")
    n = logits.shape[0]
    if n == 0:
        raise ValueError("logits must have at least one row, got 0")
    labels = integer_labels(labels, "labels", n_classes=2, n_samples=n, allow_bool=True)
    weights = sample_weights(sample_weight, n, logits.dtype)
    return _core.sigmoid_bce(contiguous(logits), labels, weights)


def squared_error(pred, target, sample_weight=None) -> tuple[float, np.ndarray]:
    """Half the squared error of a regression output, and its gradient.

    pred, target: (N, K) of one dtype. Returns ``(loss, dpred)`` with
    ``loss = mean_r(½ Σ_k (pred - target)²)`` and ``dpred = (pred - target) / N``
    (weighted as in ``softmax_nll`` with ``sample_weight``).
    """
    pred = float_array(pred, "pred", ndim=2)
    target = float_array(target, "target", ndim=2)
    same_dtype(("pred", pred), ("target", target))
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape} but target has shape {target.shape}")
    if pred.shape[0] == 0:
        raise ValueError("pred must have at least one row, got 0")
    weights = sample_weights(sample_weight, pred.shape[0], pred.dtype)
    return _core.squared_error(contiguous(pred), contiguous(target), weights)


def _check_dense(x, W, name_x: str = "x") -> tuple[np.ndarray, np.ndarray]:
    x = float_array(x, name_x, ndim=2)
    W = float_array(W, "W", ndim=2)
    same_dtype((name_x, x), ("W", W))
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"{name_x} has {x.shape[1]} features but W has shape {W.shape} "
                         f"(out_features, in_features): in_features must match")
    return strided_ok(x), strided_ok(W)


def dense_forward(x, W, b=None, activation: str = "identity") -> np.ndarray:
    """``act(x @ W.T + b)``, bias and activation fused into the product's write-back.

    x: (B, I); W: (O, I); b: (O,) or None; activation: ``'relu'``, ``'tanh'``,
    ``'logistic'`` or ``'identity'``.
    """
    x, W = _check_dense(x, W)
    check_activation(activation)
    b = _bias(b, W)
    return _core.dense_forward(x, W, b, activation)


def dense_backward(x, W, out, grad_out, activation: str = "identity"):
    """Backward pass of ``out = act(x @ W.T + b)``.

    x: (B, I); W: (O, I); out, grad_out: (B, O), where ``grad_out = dL/d out``.
    Returns ``(grad_x (B, I), grad_W (O, I), grad_b (O,))``: with
    ``grad_a = grad_out * act'(a)``, ``grad_W = grad_a.T @ x``, ``grad_b = grad_a.sum(0)``,
    ``grad_x = grad_a @ W``.
    """
    x, W = _check_dense(x, W)
    check_activation(activation)
    out = float_array(out, "out", ndim=2)
    grad_out = float_array(grad_out, "grad_out", ndim=2)
    same_dtype(("x", x), ("out", out), ("grad_out", grad_out))
    expected = (x.shape[0], W.shape[0])
    for name, a in (("out", out), ("grad_out", grad_out)):
        if a.shape != expected:
            raise ValueError(f"{name} has shape {a.shape}, expected {expected} (batch, out_features)")
    return _core.dense_backward(x, W, contiguous(out), contiguous(grad_out),
                                activation, True)


def _bias(b, W: np.ndarray) -> np.ndarray:
    if b is None:
        return np.zeros(W.shape[0], dtype=W.dtype)
    b = float_array(b, "b", ndim=1)
    same_dtype(("W", W), ("b", b))
    if b.shape[0] != W.shape[0]:
        raise ValueError(f"b has shape {b.shape}, expected ({W.shape[0]},) to match W {W.shape}")
    return contiguous(b)
