"""Optimizers: hand-computed steps of each rule, argument checks, and (when PyTorch is
installed) agreement with torch.optim over many steps."""

import math

import numpy as np
import pytest

from fastmlp import SGD, Adam, AdamW
from fastmlp.optim import Optimizer


def run(optimizer, p0, grads, dtype=np.float64):
    p = np.array(p0, dtype=dtype)
    for g in grads:
        optimizer.step([p], [np.array(g, dtype=dtype)])
    return p


def test_sgd_plain_step():
    # p = 1 - 0.1 * 2 = 0.8, then 0.8 - 0.1 * (-1) = 0.9
    np.testing.assert_allclose(run(SGD(lr=0.1), [1.0], [[2.0], [-1.0]]), [0.9])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_gives_the_same_bits_on_every_isa(dtype, weight_decay):
    """Plain SGD runs a row kernel of the active ISA where it has one (AVX-512: 16 floats at
    a time, built without FMA contraction) and the rule's portable loop elsewhere: the same
    two roundings per element, so the same bits, at lengths around the vector widths."""
    from fastmlp import ops
    rng = np.random.default_rng(7)
    shapes = [(1,), (15,), (17,), (3, 33), (67,)]
    start = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads = [(rng.normal(size=s) * 10 ** rng.uniform(-3, 3, size=s)).astype(dtype)
             for s in shapes]
    results = {}
    previous = ops.isa()
    try:
        for isa in ops.supported_isas():
            ops.set_isa(isa)
            params = [p.copy() for p in start]
            opt = SGD(lr=0.37, weight_decay=weight_decay)
            for _ in range(3):
                opt.step(params, grads)
            results[isa] = params
    finally:
        ops.set_isa(previous)
    for isa, params in results.items():
        for got, want in zip(params, results["generic"]):
            np.testing.assert_array_equal(got, want, err_msg=isa)


def test_sgd_momentum_buffer_starts_from_first_gradient():
    # buf1 = g1 = 1 -> p = 1 - 0.5 = 0.5; buf2 = 0.9*1 + 2 = 2.9 -> p = 0.5 - 1.45 = -0.95
    np.testing.assert_allclose(run(SGD(lr=0.5, momentum=0.9), [1.0], [[1.0], [2.0]]), [-0.95])


def test_sgd_nesterov():
    # step 1: buf = 1, g = 1 + 0.9*1 = 1.9 -> p = 1 - 0.19 = 0.81
    # step 2: buf = 0.9 + 2 = 2.9, g = 2 + 0.9*2.9 = 4.61 -> p = 0.81 - 0.461 = 0.349
    p = run(SGD(lr=0.1, momentum=0.9, nesterov=True), [1.0], [[1.0], [2.0]])
    np.testing.assert_allclose(p, [0.349], rtol=1e-12)


def test_sgd_weight_decay_is_added_to_the_gradient():
    # g = 1 + 0.1 * 2 = 1.2 -> p = 2 - 0.5 * 1.2 = 1.4
    np.testing.assert_allclose(run(SGD(lr=0.5, weight_decay=0.1), [2.0], [[1.0]]), [1.4])


def test_adam_two_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate([0.5, -2.0], start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr / (1 - b1 ** t) * m / (math.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    got = run(Adam(lr=lr, betas=(b1, b2), eps=eps), [1.0], [[0.5], [-2.0]])
    np.testing.assert_allclose(got, [p], rtol=1e-12)
    # The first Adam step moves every coordinate by about lr, whatever the gradient's scale.
    first = run(Adam(lr=0.01), [0.0, 0.0], [[1e-3, -50.0]])
    np.testing.assert_allclose(first, [-0.01, 0.01], rtol=1e-4)


def test_adam_weight_decay():
    # g = 0 + 0.5 * 2 = 1 -> first step moves p by lr
    np.testing.assert_allclose(run(Adam(lr=0.1, weight_decay=0.5), [2.0], [[0.0]]), [1.9], rtol=1e-6)


def test_state_is_per_parameter_and_noncontiguous_params_update_in_place():
    a = np.ones((4, 6), dtype=np.float32)
    view = a[:, ::2]  # non-contiguous: updated through a copy, written back
    b = np.ones(3, dtype=np.float32)
    opt = SGD(lr=0.1, momentum=0.5)
    for _ in range(2):
        opt.step([view, b], [np.ones((4, 3), np.float32), np.full(3, 2, np.float32)])
    np.testing.assert_allclose(view, 1 - 0.1 * (1 + 1.5))
    np.testing.assert_allclose(a[:, 1::2], 1.0)
    np.testing.assert_allclose(b, 1 - 0.1 * (2 + 3))


@pytest.mark.parametrize("make, error, match", [
    (lambda: SGD(lr=0), ValueError, "lr"),
    (lambda: SGD(lr=-1), ValueError, "lr"),
    (lambda: SGD(lr=float("nan")), ValueError, "lr"),
    (lambda: SGD(lr="1"), TypeError, "lr"),
    (lambda: SGD(momentum=-0.1), ValueError, "momentum"),
    (lambda: SGD(nesterov=True), ValueError, "nesterov"),
    (lambda: Adam(betas=(1.0, 0.9)), ValueError, "beta1"),
    (lambda: Adam(betas=0.9), TypeError, "betas"),
    (lambda: Adam(eps=-1), ValueError, "eps"),
])
def test_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_step_arguments():
    opt = SGD()
    p = np.zeros(3)
    with pytest.raises(ValueError, match="1 parameters but 2 gradients"):
        opt.step([p], [p, p])
    with pytest.raises(TypeError, match="dtype float32 but its parameter has float64"):
        opt.step([p], [np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="shape"):
        opt.step([p], [np.zeros(4)])
    with pytest.raises(TypeError, match="NumPy array"):
        opt.step([[0.0, 0.0]], [np.zeros(2)])
    frozen = np.zeros(3)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        opt.step([frozen], [np.zeros(3)])
    opt.step([p], [np.ones(3)])
    with pytest.raises(ValueError, match="state was made for"):
        opt.step([np.zeros(5)], [np.ones(5)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, ours, theirs", [
    ("sgd", dict(lr=0.05), dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
     dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True), dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("adam", dict(lr=1e-2), dict(lr=1e-2)),
    ("adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
])
def test_matches_torch(name, ours, theirs, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 7)).astype(dtype)
    grads = [rng.normal(size=(5, 7)).astype(dtype) for _ in range(20)]
    mine = p0.copy()
    opt = (SGD if name == "sgd" else Adam)(**ours)
    ref = torch.tensor(p0.copy(), requires_grad=True)
    ref_opt = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)([ref], **theirs)
    for g in grads:
        opt.step([mine], [g])
        ref.grad = torch.tensor(g)
        ref_opt.step()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mine, ref.detach().numpy(), rtol=tol, atol=tol)


def test_adamw_decays_the_weights_before_the_adam_step():
    # p = 2 · (1 - 0.1 · 0.5) = 1.9, then a zero gradient: m = v = 0, so the Adam step is 0.
    np.testing.assert_allclose(run(AdamW(lr=0.1, weight_decay=0.5), [2.0], [[0.0]]), [1.9],
                               rtol=1e-12)
    # Unlike Adam's coupled decay, the decay does not enter the moments: with a gradient the
    # step is the plain Adam step (≈ lr on the first) after the decay.
    got = run(AdamW(lr=0.1, weight_decay=0.5), [2.0], [[3.0]])
    np.testing.assert_allclose(got, [1.9 - 0.1], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(4, 6)).astype(dtype)
    mine = p0.copy()
    opt = AdamW(lr=3e-3, betas=(0.85, 0.99), eps=1e-6, weight_decay=0.2)
    ref = torch.tensor(p0.copy(), requires_grad=True)
    ref_opt = torch.optim.AdamW([ref], lr=3e-3, betas=(0.85, 0.99), eps=1e-6, weight_decay=0.2)
    for _ in range(25):
        g = rng.normal(size=(4, 6)).astype(dtype)
        opt.step([mine], [g])
        ref.grad = torch.tensor(g)
        ref_opt.step()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mine, ref.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("make", [lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
                                  lambda: Adam(lr=0.01, betas=(0.8, 0.9)),
                                  lambda: AdamW(lr=0.01)], ids=["sgd", "adam", "adamw"])
def test_state_dict_round_trip_continues_exactly(make):
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=(3, 2)), rng.normal(size=2)] for _ in range(6)]
    p_once = [np.ones((3, 2)), np.zeros(2)]
    once = make()
    for g in grads:
        once.step(p_once, g)
    p_split = [np.ones((3, 2)), np.zeros(2)]
    first = make()
    for g in grads[:3]:
        first.step(p_split, g)
    state = first.state_dict()
    assert state["steps"] == 3 and state["started"] == [True, True]
    assert set(state["state"][0]) == set(first.state_names)
    second = Optimizer.from_state_dict(state)
    assert repr(second) == repr(first) and second.steps == 3
    for g in grads[3:]:
        second.step(p_split, g)
    for a, b in zip(p_once, p_split):
        np.testing.assert_array_equal(a, b)
    # The state is a copy: changing it changes nothing in the optimizer.
    state["state"][0][first.state_names[0]][...] = 99.0
    assert not (first.state_dict()["state"][0][first.state_names[0]] == 99.0).any()
    # Pickling goes through the same state.
    import pickle
    clone = pickle.loads(pickle.dumps(second))
    assert clone.state_dict()["steps"] == second.steps


def test_load_state_dict_rejects_malformed_state():
    opt = Adam()
    opt.step([np.ones(3)], [np.ones(3)])
    good = opt.state_dict()
    with pytest.raises(ValueError, match="not Adam"):
        Adam().load_state_dict(SGD().state_dict())
    with pytest.raises(ValueError, match="unknown optimizer"):
        Optimizer.from_state_dict(dict(good, optimizer="Lion"))
    with pytest.raises(ValueError, match="must hold"):
        Adam().load_state_dict(dict(good, state=[{"exp_avg": np.zeros(3)}]))
    with pytest.raises(ValueError, match="not finite"):
        Adam().load_state_dict(dict(good, state=[{"exp_avg": np.zeros(3),
                                                  "exp_avg_sq": np.full(3, np.nan)}]))
    with pytest.raises(ValueError, match="steps"):
        Adam().load_state_dict(dict(good, steps=-1))
    with pytest.raises(ValueError, match="hyper-parameters"):
        Optimizer.from_state_dict(dict(good, hyperparameters={"lr": 0.1}))


def test_hyperparameters_are_validated_when_set_too():
    opt = SGD(lr=0.1, momentum=0.9)
    opt.lr = 0.5
    assert opt.lr == 0.5
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="momentum"):
        opt.momentum = float("nan")
    adam = Adam()
    adam.betas = (0.5, 0.6)
    assert adam.betas == (0.5, 0.6)
    with pytest.raises(ValueError, match="beta2"):
        adam.betas = (0.5, 1.0)


@pytest.mark.parametrize("make, attribute, value, error, match", [
    (lambda: SGD(lr=0.1), "lr", -5, ValueError, "lr"),
    (lambda: SGD(lr=0.1), "lr", "abc", TypeError, "lr"),
    (lambda: SGD(lr=0.1), "lr", float("inf"), ValueError, "lr"),
    (lambda: SGD(lr=0.1), "lr", 10**400, ValueError, "lr"),
    (lambda: Adam(), "eps", -10**400, ValueError, "eps"),
    (lambda: SGD(momentum=0.9), "momentum", "x", TypeError, "momentum"),
    (lambda: SGD(momentum=0.9), "momentum", -1, ValueError, "momentum"),
    (lambda: SGD(momentum=0.9), "weight_decay", None, TypeError, "weight_decay"),
    (lambda: SGD(), "nesterov", True, ValueError, "nesterov=True requires momentum > 0"),
    (lambda: SGD(momentum=0.9, nesterov=True), "momentum", 0.0, ValueError,
     "nesterov=True requires momentum > 0"),
    (lambda: Adam(), "betas", (0.9, float("nan")), ValueError, "beta2"),
    (lambda: Adam(), "betas", "ab", ValueError, "beta1"),
    (lambda: Adam(), "betas", (0.9,), TypeError, "betas"),
    (lambda: Adam(), "eps", float("nan"), ValueError, "eps"),
    (lambda: AdamW(), "weight_decay", "0.1", TypeError, "weight_decay"),
    (lambda: Adam(), "steps", 2**63, ValueError, "steps"),
    (lambda: Adam(), "steps", 2**62, ValueError, "steps"),
    (lambda: Adam(), "steps", -1, ValueError, "steps"),
    (lambda: Adam(), "steps", 3.0, TypeError, "steps"),
    (lambda: SGD(), "steps", True, TypeError, "steps"),
    (lambda: Adam(), "momentum", 0.9, AttributeError, "hyper-parameters are lr, betas"),
])
def test_every_assignment_is_validated_like_the_constructor(make, attribute, value, error, match):
    opt = make()
    before = opt.state_dict()
    with pytest.raises(error, match=match):
        setattr(opt, attribute, value)
    assert opt.state_dict()["hyperparameters"] == before["hyperparameters"]
    assert opt.steps == before["steps"]


def test_steps_can_be_restored():
    opt = Adam(lr=0.1)
    opt.step([np.ones(3)], [np.ones(3)])
    opt.steps = 41
    assert opt.steps == 41 and opt.state_dict()["steps"] == 41
    opt.steps = np.int64(2**62 - 1)
    assert opt.steps == 2**62 - 1
    p = np.ones(3)
    opt.step([p], [np.ones(3)])  # bias corrections of a huge t are 1: a finite step
    assert np.isfinite(p).all()
    with pytest.raises(ValueError, match="steps"):
        Adam().load_state_dict(dict(opt.state_dict(), steps=2**63))
