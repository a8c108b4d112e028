"""The peers fastmlp is timed against: a plain-NumPy MLP with fastmlp's exact math, and a
PyTorch twin built from the same weights. Both train on the batches ``fastmlp.MLP.fit`` visits.

Legend: N batch rows, I in-features, O out-features, K classes (n_L). Layer l holds
W_l (O, I) and b_l (O,) (the ``torch.nn.Linear`` layout, as fastmlp); h_0 = X (N, I).

Math (``fastmlp.MLP(activation="relu", output="softmax")`` with ``SGD(lr)``):
  forward    a_l = h_{l-1} W_lᵀ + b_l (N, O);  h_l = max(a_l, 0) for hidden layers; z = a_L
  loss       mean_r( log Σ_j exp(z_rj - max_j z_rj) - (z_ry - max_j z_rj) )
  dlogits    (softmax(z) - onehot(y)) / N, fused with the loss
  backward   grad_W_l = grad_aᵀ h_{l-1} (O, I);  grad_b_l = Σ_r grad_a (O,);
             grad_h_{l-1} = grad_a W_l (N, I), times [h_{l-1} > 0]; not computed for l = 1
  update     p -= lr · grad_p
  epoch      consecutive row ranges of batch_size (the last may be shorter), in row order, as
             ``MLP.fit(shuffle=False)``: the batches do not depend on anyone's shuffling RNG
"""

from __future__ import annotations

import numpy as np

__all__ = ["ReferenceMLP", "softmax_nll", "torch_mlp_from", "torch_parameters",
           "torch_train_epoch"]


def softmax_nll(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of softmax(logits) at labels y, and dlogits = (softmax - onehot) / N.

    logits (N, K); y (N,) int. Same order of operations as fastmlp's fused kernel:
    e = exp(z - max), loss_r = log Σ e - (z_ry - max), dlogits = e · (1/N) / Σ e, minus 1/N at y.
    """
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, K), ≤ 0
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)  # (N, 1), ≥ 1
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, y], dtype=np.float64))
    inv_n = logits.dtype.type(1.0 / n)
    dlogits = e
    dlogits *= inv_n / total
    dlogits[rows, y] -= inv_n
    return loss, dlogits


class ReferenceMLP:
    """ReLU hidden layers, softmax output, SGD: the NumPy baseline for ``fastmlp.MLP``.

    weights: list of W_l (O, I); biases: list of b_l (O,); both copied, dtype kept.
    """

    def __init__(self, weights, biases) -> None:
        self.weights = [np.array(w, order="C", copy=True) for w in weights]
        self.biases = [np.array(b, order="C", copy=True) for b in biases]

    @classmethod
    def from_fastmlp(cls, model) -> "ReferenceMLP":
        """A reference starting from ``model``'s current parameters (relu/softmax models only)."""
        if model.activation != "relu" or model.output != "softmax":
            raise ValueError(f"the reference implements relu/softmax MLPs, got {model!r}")
        return cls(model.weights, model.biases)

    def forward(self, X: np.ndarray) -> list[np.ndarray]:
        """[X, h_1, ..., h_{L-1}, logits]; X (N, n_0), logits (N, K)."""
        outputs = [X]
        last = len(self.weights) - 1
        for layer, (W, b) in enumerate(zip(self.weights, self.biases)):
            a = outputs[-1] @ W.T  # (N, O); BLAS reads Wᵀ in place
            a += b
            if layer < last:
                np.maximum(a, 0, out=a)
            outputs.append(a)
        return outputs

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray):
        """``(loss, grad_weights, grad_biases)`` for one batch, as ``MLP.loss_and_grad``."""
        outputs = self.forward(X)
        loss, grad = softmax_nll(outputs[-1], y)  # grad = dL/da_L (N, K)
        n_layers = len(self.weights)
        grad_weights: list = [None] * n_layers
        grad_biases: list = [None] * n_layers
        for layer in range(n_layers - 1, -1, -1):
            h_in = outputs[layer]  # (N, I)
            grad_weights[layer] = grad.T @ h_in  # (O, I)
            grad_biases[layer] = grad.sum(axis=0)  # (O,)
            if layer > 0:
                grad = grad @ self.weights[layer]  # dL/dh_in (N, I)
                grad *= h_in > 0  # ReLU': h_in > 0 exactly where its input was > 0
        return loss, grad_weights, grad_biases

    def sgd_step(self, grad_weights, grad_biases, lr: float) -> None:
        """p -= lr · grad for every weight and bias, in place."""
        for p, g in zip(self.weights + self.biases, grad_weights + grad_biases):
            p -= lr * g

    def train_epoch(self, X: np.ndarray, y: np.ndarray, batch_size: int, lr: float) -> float:
        """One epoch of SGD over X (n, n_0), y (n,) in row order; returns the mean loss
        (batch losses weighted by batch size)."""
        n = X.shape[0]
        total = 0.0
        for start in range(0, n, batch_size):
            X_batch, y_batch = X[start:start + batch_size], y[start:start + batch_size]
            loss, grad_weights, grad_biases = self.loss_and_grad(X_batch, y_batch)
            self.sgd_step(grad_weights, grad_biases, lr)
            total += loss * X_batch.shape[0]
        return total / n


# ---- PyTorch twin (imported lazily: torch is optional) -------------------------------------


def torch_mlp_from(model):
    """``nn.Sequential(Linear, ReLU, ..., Linear)`` holding copies of ``model``'s parameters,
    in its dtype (``nn.Linear`` uses fastmlp's W (O, I) layout, so no transpose)."""
    import torch
    from torch import nn

    dtype = getattr(torch, model.dtype.name)
    last = len(model.weights) - 1
    layers = []
    for layer, (W, b) in enumerate(zip(model.weights, model.biases)):
        linear = nn.Linear(W.shape[1], W.shape[0], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(W)))  # (W: a read-only view)
            linear.bias.copy_(torch.from_numpy(np.array(b)))
        layers.append(linear)
        if layer < last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_parameters(net) -> list[np.ndarray]:
    """[W_1, ..., W_L, b_1, ..., b_L] of a ``torch_mlp_from`` net, as NumPy views."""
    from torch import nn

    linears = [m for m in net if isinstance(m, nn.Linear)]
    return ([m.weight.detach().numpy() for m in linears]
            + [m.bias.detach().numpy() for m in linears])


def torch_train_epoch(net, X, y, batch_size: int, optimizer) -> float:
    """One epoch in row order, as ``ReferenceMLP.train_epoch``: X (n, n_0) and y (n,) int64
    are tensors, optimizer is ``torch.optim.SGD(net.parameters(), lr)``; returns the mean
    loss. ``cross_entropy`` is log-softmax + mean NLL; X needs no grad, so layer 1 computes
    no grad_h_0, as in fastmlp."""
    import torch.nn.functional as F

    n = X.shape[0]
    total = 0.0
    for start in range(0, n, batch_size):
        X_batch, y_batch = X[start:start + batch_size], y[start:start + batch_size]
        loss = F.cross_entropy(net(X_batch), y_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * X_batch.shape[0]
    return total / n
