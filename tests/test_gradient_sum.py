"""The engine's update from a sum of gradients (Trainer.apply_gradient_sum and friends: the
shared-memory exchange of ranks on one node, fastmlp/_node_exchange.py), in one process,
against apply_gradients on the sum computed by NumPy."""

import numpy as np
import pytest

import fastmlp
from fastmlp._training import new_trainer

SIZES = [7, 6, 5, 3]


def flat_layout(model):
    """(array, flat start) of every parameter array in the engine's gradient layout: per
    layer from the last to the first, W_l then b_l."""
    pieces, start = [], 0
    for W, b in reversed(list(zip(model.weights, model.biases))):
        pieces += [(W, start), (b, start + W.size)]
        start += W.size + b.size
    return pieces


def flat_parameters(model):
    return np.concatenate([a.ravel() for a, _ in flat_layout(model)])


def engines(dtype, make_optimizer, alpha=0.0):
    models = [fastmlp.MLP(SIZES, seed=3, dtype=dtype) for _ in range(2)]
    return models, [new_trainer(m, make_optimizer(), 4, alpha) for m in models]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make_optimizer", [lambda: fastmlp.SGD(lr=0.1, momentum=0.9),
                                            lambda: fastmlp.Adam(lr=0.01)])
def test_sum_of_sources_updates_like_apply_gradients_on_numpys_sum(dtype, make_optimizer):
    (reference, model), (plain, summed) = engines(dtype, make_optimizer, alpha=0.01)
    n = summed.gradient_elements()
    rng = np.random.default_rng(0)
    for _ in range(3):  # (Adam's and momentum's state carries over)
        grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
        coefficients = [0.5, 1.0, 0.25]
        expected = coefficients[0] * grads[0]
        for c, g in zip(coefficients[1:], grads[1:]):
            expected += c * g
        assert plain.apply_gradients(expected, 10)
        kept = [g.copy() for g in grads]
        assert summed.apply_gradient_sum(grads, coefficients, 10, 0, n)
        summed.finish_gradient_sum(True, 0, n)
        assert all(np.array_equal(a, b) for a, b in zip(grads, kept))  # sources only read
        tolerance = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(flat_parameters(model), flat_parameters(reference),
                                   rtol=tolerance, atol=tolerance)


def test_a_range_updates_only_its_parameters():
    # Plain SGD: the update of [begin, end) then of the rest equals one whole update.
    (whole, split), (one, two) = engines(np.float32, lambda: fastmlp.SGD(lr=0.1))
    n = two.gradient_elements()
    grads = [np.random.default_rng(s).standard_normal(n).astype(np.float32) for s in (1, 2)]
    before = flat_parameters(split)
    begin, end = 13, n - 20  # cuts through arrays
    assert two.apply_gradient_sum(grads, [1.0, 1.0], 4, begin, end)
    two.finish_gradient_sum(True, begin, end)
    after = flat_parameters(split)
    assert np.array_equal(after[:begin], before[:begin])
    assert np.array_equal(after[end:], before[end:])
    assert not np.array_equal(after[begin:end], before[begin:end])
    flat = np.full(n, -7.0, dtype=np.float32)
    two.get_flat_parameters(flat, begin, end)
    assert np.array_equal(flat[begin:end], after[begin:end])
    assert np.all(flat[:begin] == -7.0) and np.all(flat[end:] == -7.0)
    for first, last in ((0, begin), (end, n)):
        assert two.apply_gradient_sum(grads, [1.0, 1.0], 4, first, last)
        two.finish_gradient_sum(True, first, last)
    assert one.apply_gradient_sum(grads, [1.0, 1.0], 4, 0, n)
    one.finish_gradient_sum(True, 0, n)
    assert np.array_equal(flat_parameters(split), flat_parameters(whole))


def test_a_non_finite_update_is_undone_in_its_range_and_flat_parameters_load():
    (model, _), (engine, _) = engines(np.float64, lambda: fastmlp.SGD(lr=0.1))
    n = engine.gradient_elements()
    before = flat_parameters(model)
    bad = np.ones(n)
    bad[n - 1] = np.inf
    assert not engine.apply_gradient_sum([bad], [1.0], 4, 5, n)
    engine.finish_gradient_sum(False, 5, n)
    assert np.array_equal(flat_parameters(model), before)
    values = np.arange(n, dtype=np.float64)
    engine.set_flat_parameters(values, 3, n - 2)
    after = flat_parameters(model)
    assert np.array_equal(after[3:n - 2], values[3:n - 2])
    assert np.array_equal(after[:3], before[:3]) and np.array_equal(after[n - 2:], before[n - 2:])


def test_reads_state_follows_the_rule():
    # (plain SGD's update may be sharded over the ranks of a node: _exchange.py)
    for optimizer, reads in ((fastmlp.SGD(lr=0.1), False), (fastmlp.SGD(lr=0.1, momentum=0.5),
                                                             True), (fastmlp.Adam(), True)):
        assert optimizer._rule.reads_state is reads


def test_state_is_zero_until_a_rule_with_state_steps():
    # (fit(comm=...) broadcasts rank 0's optimizer state only when it is not all zeros)
    X, y = np.random.default_rng(0).standard_normal((8, 7)), np.arange(8) % 3
    for optimizer, after in ((fastmlp.SGD(lr=0.1), True),
                             (fastmlp.SGD(lr=0.1, momentum=0.5), False),
                             (fastmlp.Adam(), False)):
        assert optimizer._rule.state_is_zero  # unbound
        fastmlp.MLP(SIZES, seed=0, dtype=np.float64).fit(X, y, epochs=1, batch_size=4,
                                                        optimizer=optimizer)
        assert optimizer._rule.state_is_zero is after
        assert all(not np.any(a) for entry in optimizer.state_dict()["state"]
                   for a in entry.values()) is after


def test_bad_sources_and_ranges_are_value_errors():
    (_, _), (engine, _) = engines(np.float32, lambda: fastmlp.SGD(lr=0.1))
    n = engine.gradient_elements()
    g = np.zeros(n, dtype=np.float32)
    for args, message in (
            (([g], [1.0, 1.0], 4, 0, n), "one coefficient per gradient"),
            (([], [], 4, 0, n), "one coefficient per gradient"),
            (([g[:-1]], [1.0], 4, 0, n), r"grads\[0\] must have shape"),
            (([g], [1.0], 4, 5, 4), "need 0 <= begin <= end"),
            (([g], [1.0], 4, 0, n + 1), "need 0 <= begin <= end"),
            (([g], [np.nan], 4, 0, n), "coefficients must be finite"),
            (([g], [1.0], 0, 0, n), "penalty_rows")):
        with pytest.raises(ValueError, match=message):
            engine.apply_gradient_sum(*args)
    read_only = np.zeros(n, np.float32)
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        engine.get_flat_parameters(read_only, 0, n)
    for call in (lambda: engine.finish_gradient_sum(False, 0, n + 1),
                 lambda: engine.set_flat_parameters(g, -1, n)):
        with pytest.raises(ValueError, match="need 0 <= begin <= end"):
            call()
    with pytest.raises(ValueError, match="flat must have shape"):
        engine.set_flat_parameters(g[:-1], 0, 2)
