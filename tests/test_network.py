"""The network loop (network.h) behind loss_and_grad, fit and predict: its gradients against a
plain NumPy backpropagation at awkward shapes, layouts and dtypes, and the three callers
agreeing with each other."""

import numpy as np
import pytest

from fastmlp import MLP, SGD


def act(name, a):
    return {"relu": lambda: np.maximum(a, 0), "tanh": lambda: np.tanh(a),
            "logistic": lambda: 1 / (1 + np.exp(-a)), "identity": lambda: a}[name]()


def act_grad(name, out):
    return {"relu": lambda: (out > 0).astype(out.dtype), "tanh": lambda: 1 - out ** 2,
            "logistic": lambda: out * (1 - out), "identity": lambda: np.ones_like(out)}[name]()


def numpy_backprop(model, X, y):
    """(loss, grad_W, grad_b) by the textbook chain rule, in float64."""
    W = [w.astype(np.float64) for w in model.weights]
    b = [v.astype(np.float64) for v in model.biases]
    outs = [X.astype(np.float64)]
    for l, (w, v) in enumerate(zip(W, b)):
        a = outs[-1] @ w.T + v
        outs.append(act(model.activation, a) if l < len(W) - 1 else a)
    logits, n = outs[-1], X.shape[0]
    if model.output == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(n), y]).mean()
        g = p.copy()
        g[np.arange(n), y] -= 1
    elif model.output == "sigmoid":
        s = 1 / (1 + np.exp(-logits[:, 0]))
        loss = -(y * np.log(s) + (1 - y) * np.log(1 - s)).mean()
        g = (s - y)[:, None]
    else:
        loss = 0.5 * ((logits - y) ** 2).sum(axis=1).mean()
        g = logits - y
    g = g / n
    grad_W, grad_b = [None] * len(W), [None] * len(W)
    for l in range(len(W) - 1, -1, -1):
        grad_W[l] = g.T @ outs[l]
        grad_b[l] = g.sum(axis=0)
        if l:
            g = (g @ W[l]) * act_grad(model.activation, outs[l])
    return loss, grad_W, grad_b


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("sizes, output", [
    ([1, 1, 2], "softmax"), ([7, 13, 5], "softmax"), ([17, 31, 29, 3], "softmax"),
    ([5, 1], "sigmoid"), ([3, 11, 1], "sigmoid"), ([9, 23, 2], "identity"), ([4, 3], "identity")])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("n", [1, 37])
def test_loss_and_grad_matches_numpy_backprop(sizes, output, activation, n, layout, dtype, rtol):
    rng = np.random.default_rng(len(sizes) * 100 + n)
    model = MLP(sizes, activation=activation, output=output, dtype=dtype, seed=n)
    X = rng.standard_normal((n, sizes[0]))
    if layout == "transposed":
        X = np.asfortranarray(X)  # column-major: read through swapped strides
    elif layout == "strided":
        X = np.repeat(X, 3, axis=1)[:, ::3]  # every third column of a wider array
    X = X.astype(dtype, copy=False) if layout == "contiguous" else X.astype(dtype, order="K")
    if output == "identity":
        y = rng.standard_normal((n, sizes[-1]))
    else:
        y = rng.integers(0, 2 if output == "sigmoid" else sizes[-1], size=n)
    loss, grad_W, grad_b = model.loss_and_grad(X, y)
    want_loss, want_W, want_b = numpy_backprop(model, X, y)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    for got, want in zip(grad_W + grad_b, want_W + want_b):
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("sizes", [[3, 4, 3], [40, 64, 10]], ids=["narrow", "gemm"])
def test_one_fit_step_is_the_loss_and_grad_step(sizes):
    """fit (the trainer's loop, either layout) and loss_and_grad (the same loop, gradients
    stored) make the same step; predict's logits are the forward of both."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, sizes[0]))
    y = rng.integers(0, sizes[-1], size=16)
    fitted = MLP(sizes, dtype="float64", seed=1)
    manual = MLP(sizes, dtype="float64", seed=1)
    logits = manual.forward(X)
    fitted.fit(X, y, epochs=1, batch_size=16, optimizer=SGD(lr=0.1), shuffle=False)
    _, grad_W, grad_b = manual.loss_and_grad(X, y)
    for got, start, grad in zip(fitted.weights + fitted.biases, manual.weights + manual.biases,
                                grad_W + grad_b):
        np.testing.assert_allclose(got, start - 0.1 * grad, rtol=1e-13, atol=1e-15)
    W, b = manual.weights, manual.biases
    h = np.maximum(X @ W[0].T + b[0], 0)
    np.testing.assert_allclose(logits, h @ W[1].T + b[1], rtol=1e-12)
