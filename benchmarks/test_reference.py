"""The peers do the same work as fastmlp, so the benchmarks compare like with like: from the
same initial weights, the NumPy reference gives fastmlp's loss and gradients on a batch, and
after a few SGD steps of an epoch every trainer has fastmlp's loss and weights."""

import numpy as np
import pytest

import common
import fastmlp
from reference_mlp import ReferenceMLP

NETS = [common.NET_BY_NAME["tiny"], common.NET_BY_NAME["digits"]]
STEPS = 5  # batches per checked epoch; the last one is shorter, as in fit


def _steps_samples(net: common.Net) -> int:
    return (STEPS - 1) * net.batch_size + net.batch_size // 2


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("net", NETS, ids=lambda net: net.name)
def test_loss_and_grad_match_fastmlp(net, dtype):
    X, y = common.synthetic_data(net, dtype)
    X, y = X[:net.batch_size], y[:net.batch_size]
    model = fastmlp.MLP(net.layer_sizes, dtype=dtype, seed=common.INIT_SEED)
    loss, grad_weights, grad_biases = model.loss_and_grad(X, y)
    reference = ReferenceMLP.from_fastmlp(model)
    ref_loss, ref_grad_weights, ref_grad_biases = reference.loss_and_grad(X, y)
    tolerance = common.TOLERANCE[dtype]
    assert ref_loss == pytest.approx(loss, rel=tolerance["rtol"])
    for got, want in zip(ref_grad_weights + ref_grad_biases, grad_weights + grad_biases):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, **tolerance)


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("net", NETS, ids=lambda net: net.name)
def test_epoch_matches_fastmlp(net, dtype, impl):
    n = _steps_samples(net)
    fast = common.make_trainer("fastmlp", net, dtype, n_samples=n)
    peer = common.make_trainer(impl, net, dtype, n_samples=n)
    before = [p.copy() for p in peer.parameters()]
    tolerance = common.TOLERANCE[dtype]
    assert peer.epoch() == pytest.approx(fast.epoch(), rel=tolerance["rtol"])
    for got, want in zip(peer.parameters(), fast.parameters()):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, **tolerance)
    assert any(not np.array_equal(p, q) for p, q in zip(peer.parameters(), before)), "no update"
