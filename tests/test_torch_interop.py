"""MLP <-> torch.nn.Sequential: same logits both ways, dtypes kept, unsupported modules
refused with a clear error. Skipped when PyTorch is not installed."""

import sys

import numpy as np
import pytest

from fastmlp import MLP
from fastmlp.torch_interop import mlp_to_torch

mlp_from_torch = MLP.from_torch

TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def nn(torch):
    return torch.nn


def inputs(n_features, dtype, n=17, seed=0):
    return np.random.default_rng(seed).normal(size=(n, n_features)).astype(dtype)


def torch_logits(torch, module, X):
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes, activation, output", [
    ([5, 16, 8, 3], "relu", "softmax"),
    ([4, 7, 2], "identity", "softmax"),
    ([6, 9, 1], "relu", "sigmoid"),
    ([3, 4], "relu", "softmax"),
])
def test_to_torch_and_back_give_the_same_logits(torch, nn, dtype, sizes, activation, output):
    model = MLP(sizes, activation=activation, output=output, dtype=dtype, seed=1)
    for b in range(len(model.biases)):
        model.biases[b] = np.linspace(-1, 1, sizes[b + 1])
    module = mlp_to_torch(model)
    assert isinstance(module, nn.Sequential)
    assert all(p.dtype == getattr(torch, dtype) for p in module.parameters())
    X = inputs(sizes[0], dtype)
    expected = model.forward(X)
    np.testing.assert_allclose(torch_logits(torch, module, X), expected, **TOLERANCE[dtype])

    back = mlp_from_torch(module)
    assert (back.layer_sizes, back.activation, back.output, back.dtype) == \
        (model.layer_sizes, activation, output, model.dtype)
    for a, b in zip(back.weights + back.biases, model.weights + model.biases):
        np.testing.assert_array_equal(a, b)  # copied exactly, no transposition


def test_from_torch_matches_a_torch_network(torch, nn):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(inplace=True),
                           nn.Linear(16, 4))
    model = MLP.from_torch(module)
    assert model.layer_sizes == (10, 32, 16, 4) and model.dtype == np.float32
    X = inputs(10, "float32")
    np.testing.assert_allclose(model.forward(X), torch_logits(torch, module, X),
                               **TOLERANCE["float32"])
    # the parameters were copied: changing the module leaves the model alone
    with torch.no_grad():
        module[0].weight.zero_()
    assert np.abs(model.weights[0]).sum() > 0


def test_to_torch_method_and_shared_nothing(torch):
    model = MLP([3, 5, 2], seed=0)
    module = model.to_torch()
    with torch.no_grad():
        module[0].weight.zero_()
    assert np.abs(model.weights[0]).sum() > 0


def test_dtype_follows_the_module_unless_given(torch, nn):
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    assert mlp_from_torch(module).dtype == np.float64
    model = mlp_from_torch(module, dtype="float32")
    assert model.dtype == np.float32
    X = inputs(3, "float64")
    np.testing.assert_allclose(model.forward(X), torch_logits(torch, module, X), rtol=1e-5,
                               atol=1e-5)
    half = nn.Sequential(nn.Linear(3, 2)).half()
    with pytest.raises(ValueError, match="pass dtype="):
        mlp_from_torch(half)
    assert mlp_from_torch(half, dtype="float32").dtype == np.float32


def test_identity_and_no_activation_mean_identity(torch, nn):
    for module in (nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Linear(4, 2)),
                   nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))):
        model = mlp_from_torch(module)
        assert model.activation == "identity"
        X = inputs(3, "float32")
        np.testing.assert_allclose(model.forward(X), torch_logits(torch, module, X),
                                   **TOLERANCE["float32"])


def test_a_linear_without_bias_gets_zeros(torch, nn):
    module = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    model = mlp_from_torch(module)
    np.testing.assert_array_equal(model.biases[0], np.zeros(4, dtype=np.float32))
    X = inputs(3, "float32")
    np.testing.assert_allclose(model.forward(X), torch_logits(torch, module, X),
                               **TOLERANCE["float32"])


def test_a_bare_linear_layer_is_accepted(torch, nn):
    assert mlp_from_torch(nn.Linear(3, 5)).layer_sizes == (3, 5)


@pytest.mark.parametrize("final", ["Softmax", "LogSoftmax"])
def test_a_final_softmax_is_ignored(torch, nn, final):
    module = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4), getattr(nn, final)(dim=1))
    model = mlp_from_torch(module)
    X = inputs(3, "float32")
    probabilities = torch_logits(torch, module, X)
    if final == "LogSoftmax":
        probabilities = np.exp(probabilities)
    np.testing.assert_allclose(model.predict_proba(X), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.forward(X), torch_logits(torch, module[:-1], X),
                               **TOLERANCE["float32"])


def test_a_final_sigmoid_after_one_output_means_sigmoid_output(torch, nn):
    module = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    model = mlp_from_torch(module)
    assert model.output == "sigmoid"
    X = inputs(3, "float32")
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], torch_logits(torch, module, X)[:, 0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers, error, match", [
    (lambda nn: [nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)], ValueError, "Dropout"),
    (lambda nn: [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)], ValueError, "Tanh"),
    (lambda nn: [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 2)],
     ValueError, "mixed activations"),
    (lambda nn: [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)],
     ValueError, "mixed activations"),
    (lambda nn: [nn.Linear(3, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)], ValueError,
     "two activations"),
    (lambda nn: [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()], ValueError,
     "ends in ReLU"),
    (lambda nn: [nn.ReLU(), nn.Linear(3, 2)], ValueError, "starts with an activation"),
    (lambda nn: [nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)], ValueError, "takes 5 inputs"),
    (lambda nn: [nn.Linear(3, 4), nn.Softmax(dim=0)], ValueError, "class dimension"),
    (lambda nn: [nn.Linear(3, 4), nn.Sigmoid()], ValueError, "Sigmoid after 4 outputs"),
    (lambda nn: [nn.Linear(3, 1), nn.Softmax(dim=1)], ValueError, "one output is constant"),
    (lambda nn: [], ValueError, "no Linear layer"),
    (lambda nn: [nn.Flatten(), nn.Linear(3, 2)], ValueError, "Flatten"),
])
def test_unsupported_modules_are_refused(torch, nn, layers, error, match):
    with pytest.raises(error, match=match):
        mlp_from_torch(nn.Sequential(*layers(nn)))


def test_something_else_is_a_type_error(torch, nn):
    with pytest.raises(TypeError, match="Sequential"):
        mlp_from_torch(nn.Conv1d(3, 4, 1))
    with pytest.raises(TypeError, match="Sequential"):
        mlp_from_torch([nn.Linear(3, 2)])


def test_a_clear_import_error_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install torch"):
        mlp_to_torch(MLP([2, 2]))
