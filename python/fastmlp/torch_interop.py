"""Converting between ``fastmlp.MLP`` and ``torch.nn.Sequential`` (PyTorch is optional:
it is imported only when these functions are called). ``MLP.from_torch`` and ``MLP.to_torch``
call these.

Both sides store a layer as W (O, I) and b (O,) — ``torch.nn.Linear``'s layout is fastmlp's —
so parameters are copied without transposing, and both give the same logits for the same
inputs (up to float rounding of differently ordered sums).

An MLP ``[n_0, ..., n_L]`` with activation ``"relu"`` is
``Sequential(Linear(n_0, n_1), ReLU(), ..., Linear(n_{L-1}, n_L))``; with ``"identity"``
the hidden layers are joined by ``nn.Identity()`` (or by nothing at all when reading one).
The Sequential gives logits, as ``MLP.forward``: softmax / sigmoid is the loss's business.
"""

from __future__ import annotations

import numpy as np

from fastmlp.io import ModelRecord
from fastmlp._validation import model_dtype

__all__ = ["record_from_torch", "mlp_to_torch"]


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs torch, which is not installed "
                          "(pip install torch)") from None
    return torch


def _activation_kind(layer, nn) -> str | None:
    """"relu" / "identity" for a supported activation module, None for anything else."""
    if isinstance(layer, nn.ReLU):
        return "relu"
    if isinstance(layer, nn.Identity):
        return "identity"
    return None


def _trailing_output(layers: list, nn) -> tuple[list, str | None]:
    """Drops a final Softmax / LogSoftmax (over the class dimension) or, after a
    one-output Linear, a Sigmoid; returns the remaining layers and what was dropped."""
    if not layers:
        return layers, None
    last = layers[-1]
    if isinstance(last, (nn.Softmax, nn.LogSoftmax)):
        if last.dim not in (None, 1, -1):
            raise ValueError(f"a final {type(last).__name__} must be over the class dimension "
                             f"(dim=1 or -1), got dim={last.dim}")
        return layers[:-1], "softmax"
    if isinstance(last, nn.Sigmoid):
        return layers[:-1], "sigmoid"
    return layers, None


def record_from_torch(module, dtype=None) -> ModelRecord:
    """The architecture and parameters (copied) of a PyTorch MLP, as ``MLP.from_torch`` builds
    a ``fastmlp.MLP`` from them.

    ``module`` is an ``nn.Sequential`` of ``nn.Linear`` layers joined by one activation kind:
    ``nn.ReLU`` between every pair (→ ``activation="relu"``), or ``nn.Identity`` / nothing
    between every pair (→ ``"identity"``). A Linear without bias gets a zero bias.

    A final ``nn.Softmax`` / ``nn.LogSoftmax`` (over dim 1 / -1) is ignored: fastmlp models
    output logits and apply softmax in ``predict_proba`` and the loss, so ``forward`` equals
    the module's output *before* that layer. A final ``nn.Sigmoid`` is likewise ignored after
    a one-output Linear (→ ``output="sigmoid"``, binary labels). A one-output Linear always
    gives ``output="sigmoid"``; otherwise ``output="softmax"``.

    dtype: of the MLP; None takes the parameters' dtype (float32 or float64; other dtypes,
    such as float16, need an explicit dtype and are converted).

    Raises TypeError for something that is not an ``nn.Sequential`` (or ``nn.Linear``) and
    ValueError for any other layer (Dropout, BatchNorm, other activations, ...), mixed
    activation kinds, a final activation other than those above, or mismatched sizes.
    """
    torch = _torch()
    from torch import nn

    if isinstance(module, nn.Linear):
        module = nn.Sequential(module)
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"expected a torch.nn.Sequential of Linear layers, got "
                        f"{type(module).__name__}")
    layers, dropped = _trailing_output(list(module), nn)

    linears: list = []
    kinds: set[str] = set()
    pending = None  # the activation seen since the last Linear
    for position, layer in enumerate(layers):
        where = f"layer {position} ({type(layer).__name__})"
        if isinstance(layer, nn.Linear):
            if linears:
                kinds.add(pending or "identity")
            elif pending is not None:
                raise ValueError(f"{where}: the module starts with an activation; an MLP "
                                 "starts with a Linear layer")
            linears.append(layer)
            pending = None
            continue
        kind = _activation_kind(layer, nn)
        if kind is None:
            raise ValueError(
                f"{where} is not supported: fastmlp MLPs are Linear layers joined by ReLU "
                "(or Identity), optionally ending in Softmax / LogSoftmax (or Sigmoid after "
                "one output); remove it (e.g. Dropout, which does nothing at inference)")
        if pending is not None:
            raise ValueError(f"{where}: two activations in a row ({pending}, {kind})")
        pending = kind
    if not linears:
        raise ValueError("the module has no Linear layer")
    if pending == "relu":
        raise ValueError("the module ends in ReLU; an MLP's last Linear layer gives logits")
    if len(kinds) > 1:
        raise ValueError(f"mixed activations {sorted(kinds)}: fastmlp uses one activation "
                         "kind between all layers")
    activation = kinds.pop() if kinds else "relu"

    sizes = [linears[0].in_features]
    for i, linear in enumerate(linears):
        if linear.in_features != sizes[-1]:
            raise ValueError(f"Linear layer {i} takes {linear.in_features} inputs but the "
                             f"layer before gives {sizes[-1]}")
        sizes.append(linear.out_features)
    output = "sigmoid" if sizes[-1] == 1 else "softmax"
    if dropped == "sigmoid" and output != "sigmoid":
        raise ValueError(f"a final Sigmoid after {sizes[-1]} outputs is not supported: "
                         "fastmlp's sigmoid output takes one logit (use Softmax for classes)")
    if dropped == "softmax" and output == "sigmoid":
        raise ValueError("a final Softmax over one output is constant; use one output with "
                         "Sigmoid, or two with Softmax")

    params = [p for linear in linears for p in (linear.weight, linear.bias) if p is not None]
    if dtype is None:
        found = {p.dtype for p in params}
        if len(found) > 1:
            raise ValueError(f"the parameters have mixed dtypes {sorted(map(str, found))}; "
                             "pass dtype='float32' or 'float64'")
        dtype = {torch.float32: "float32", torch.float64: "float64"}.get(found.pop())
        if dtype is None:
            raise ValueError(f"parameters of dtype {params[0].dtype} are not supported by "
                             "default; pass dtype='float32' or 'float64' to convert them")

    def array(tensor) -> np.ndarray:
        if tensor.is_meta:
            raise ValueError("the module's parameters are on the meta device (no values)")
        return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()

    return ModelRecord(sizes, activation, output, model_dtype(dtype),
                       [array(linear.weight) for linear in linears],
                       [array(linear.bias) if linear.bias is not None
                        else np.zeros(linear.out_features) for linear in linears])


def mlp_to_torch(model):
    """The equivalent ``torch.nn.Sequential`` (parameters copied, same dtype): ``Linear``
    layers joined by ``nn.ReLU()`` (or ``nn.Identity()`` for ``activation="identity"``),
    giving the logits of ``model.forward``. No final Softmax / Sigmoid: pair it with
    ``nn.CrossEntropyLoss`` (softmax output) or ``nn.BCEWithLogitsLoss`` (sigmoid output)."""
    torch = _torch()
    from torch import nn

    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[model.dtype.name]
    layers: list = []
    for i, (W, b) in enumerate(zip(model.weights, model.biases)):
        if i:
            layers.append(nn.ReLU() if model.activation == "relu" else nn.Identity())
        linear = nn.Linear(W.shape[1], W.shape[0], dtype=torch_dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(W)))
            linear.bias.copy_(torch.from_numpy(np.array(b)))
        layers.append(linear)
    return nn.Sequential(*layers)
