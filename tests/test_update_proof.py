"""The engine's finite-update proof (src/cpp/update_bound.*): a step of plain SGD proven,
before its first update, to leave every parameter finite writes no backup of the weights
(StepsResult.unsaved_steps counts such steps). The proof changes no arithmetic: the same bits
as the engine without it, the same numbers as the step-by-step path; and a step that would
overflow is still refused with every parameter as before it."""

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing, _training
from fastmlp import MLP, SGD, Adam

from test_trainer import data, step_by_step


def engine_epoch(model, optimizer, X, y, batch_size, alpha=0.0):
    """One epoch in row order through the raw engine: its StepsResult."""
    trainer = _training.new_trainer(model, optimizer, batch_size, alpha)
    trainer.begin_epoch(len(y), False, 0)
    return trainer.run(X, y, None, batch_size, 2**30)


def parameters(model):
    return [np.array(p) for p in model.weights + model.biases]


def proven_and_backed_up(make_model, make_optimizer, X, y, batch_size, alpha):
    """(parameters, (steps, unsaved_steps)) of one epoch with the proof, then without it."""
    out = []
    for proof in (True, False):
        model = make_model()
        with _testing.layout("rows"), _testing.split_every_product():
            if proof:
                result = engine_epoch(model, make_optimizer(), X, y, batch_size, alpha)
            else:
                with _testing.without_update_proof():
                    result = engine_epoch(model, make_optimizer(), X, y, batch_size, alpha)
        out.append((parameters(model), (result.steps, result.unsaved_steps)))
    return out


@pytest.mark.parametrize("precision, dtype", [("float32", np.float32), ("bfloat16", np.float32),
                                              ("float32", np.float64)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_proven_steps_give_the_bits_of_backed_up_steps(precision, dtype, activation, n_threads,
                                                       weight_decay):
    """Every step of SGD (with and without weight decay, L2 penalty) is proven on a net of
    ordinary scale, and the weights are bitwise those of the engine that backs every step up
    (the ISA's row kernel with and without its backup; test_optim.py checks that kernel
    against the rule's portable loop)."""
    X, y = data(300, 37, 4, dtype=dtype)
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(n_threads)
    try:
        (proven, proven_counts), (backed_up, backed_up_counts) = proven_and_backed_up(
            lambda: MLP([37, 64, 48, 4], activation=activation, precision=precision,
                        dtype=np.dtype(dtype).name, seed=2),
            lambda: SGD(lr=0.1, weight_decay=weight_decay), X, y, 64, 0.3)
    finally:
        fastmlp.set_num_threads(previous)
    assert (proven_counts, backed_up_counts) == ((5, 5), (5, 0))
    for a, b in zip(proven, backed_up):
        np.testing.assert_array_equal(a, b)


def test_every_isa_proves_and_keeps_the_bits(isa):
    """The proof's maxima and the proven update through each ISA's kernels (forced): the same
    bits as that ISA's backed-up steps."""
    X, y = data(200, 33, 3, dtype=np.float32)
    (proven, proven_counts), (backed_up, backed_up_counts) = proven_and_backed_up(
        lambda: MLP([33, 50, 3], precision="bfloat16", seed=3),
        lambda: SGD(lr=0.2, weight_decay=1e-2), X, y, 40, 0.0)
    assert (proven_counts, backed_up_counts) == ((5, 5), (5, 0))
    for a, b in zip(proven, backed_up):
        np.testing.assert_array_equal(a, b)


def test_proven_steps_equal_the_step_by_step_path():
    """float64 through the GEMM path, every step proven: the weights of loss_and_grad +
    SGD.step on the same batches."""
    X, y = data(250, 9, 3)
    fused, reference = MLP([9, 40, 30, 3], dtype="float64", seed=4), MLP(
        [9, 40, 30, 3], dtype="float64", seed=4)
    with _testing.layout("rows"):
        result = engine_epoch(fused, SGD(lr=0.05, weight_decay=1e-2), X, y, 50, alpha=0.2)
    step_by_step(reference, X, y, 1, 50, SGD(lr=0.05, weight_decay=1e-2), False, 0, alpha=0.2)
    assert (result.steps, result.unsaved_steps) == (5, 5)
    for got, want in zip(parameters(fused), parameters(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("optimizer", [lambda: SGD(lr=0.05, momentum=0.9),
                                       lambda: Adam(lr=1e-3)], ids=["momentum", "adam"])
def test_rules_with_state_are_not_proven(optimizer):
    """A rule whose state could hold anything gives no bound: every step backs up."""
    X, y = data(128, 8, 3, dtype=np.float32)
    with _testing.layout("rows"):
        result = engine_epoch(MLP([8, 16, 3], seed=0), optimizer(), X, y, 32)
    assert (result.steps, result.unsaved_steps) == (4, 0)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("scale", [1e30, 1e34, 1e36, 3e37, 1e38])
@pytest.mark.parametrize("lr", [1.0, 1e3])
def test_near_overflow_a_step_is_proven_only_if_it_stays_finite(precision, scale, lr):
    """Weights scaled towards float32's largest value: wherever a step is proven, its weights
    are finite; wherever one overflows, it is refused (never proven: a wrong proof would raise
    RuntimeError) and the parameters are as before it."""
    X, y = data(64, 6, 3, dtype=np.float32)
    model = MLP([6, 8, 3], activation="identity", precision=precision, seed=1)
    model.weights[1] = (model.weights[1] * scale).astype(np.float32)
    before = parameters(model)
    with _testing.layout("rows"):
        result = engine_epoch(model, SGD(lr=lr, weight_decay=1.0), X, y, 64)
    after = parameters(model)
    if result.nonfinite:
        assert result.unsaved_steps == 0
        for got, want in zip(after, before):
            np.testing.assert_array_equal(got, want)
    else:
        assert all(np.isfinite(p).all() for p in after)
    # The proof is conservative by a margin of 4 below the largest float: far from it, every
    # step is proven.
    if scale * (1 + lr) < 1e36:
        assert result.unsaved_steps == result.steps == 1


def test_weights_changed_between_calls_are_measured_again():
    """A proven epoch, then a weight set near float32's largest value in place (a callback
    could): the next call measures the weights again, proves nothing, and the overflowing
    step is refused with the parameters as before it."""
    X, y = data(64, 6, 3, dtype=np.float32)
    X[:, 0] = 0.0  # the huge weight's input: the forward pass stays finite
    model = MLP([6, 8, 3], seed=0)
    optimizer = SGD(lr=3.0, weight_decay=1.0)
    with _testing.layout("rows"):
        trainer = _training.new_trainer(model, optimizer, 64, 0.0)
        trainer.begin_epoch(64, False, 0)
        first = trainer.run(X, y, None, 64, 10)
        model._weights.arrays()[0][7, 0] = 3e38  # p - 3·p overflows there
        before = parameters(model)
        trainer.begin_epoch(64, False, 0)
        second = trainer.run(X, y, None, 64, 10)
    assert (first.steps, first.unsaved_steps) == (1, 1)
    assert second.nonfinite and second.unsaved_steps == 0
    for got, want in zip(parameters(model), before):
        np.testing.assert_array_equal(got, want)


def test_a_non_finite_input_is_never_proven():
    """An infinite value in the batch: no proof (the measured maxima are not finite), and the
    engine reports the non-finite loss with the parameters untouched."""
    X, y = data(32, 5, 2, dtype=np.float32)
    X[3, 2] = np.inf
    model = MLP([5, 7, 2], seed=0)
    before = parameters(model)
    with _testing.layout("rows"):
        result = engine_epoch(model, SGD(lr=0.1), X, y, 32)
    assert result.nonfinite and result.unsaved_steps == 0
    for got, want in zip(parameters(model), before):
        np.testing.assert_array_equal(got, want)
