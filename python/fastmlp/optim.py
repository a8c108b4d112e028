"""Optimizers with the update rules documented for ``torch.optim.SGD``, ``torch.optim.Adam``
and ``torch.optim.AdamW``.

Each is a thin wrapper over its rule in the C++ core (``optim.h``), which owns the state (momentum
buffers, Adam's moments) and the step count; ``MLP.fit`` hands that same object to the training
engine, so the learning rate can change between engine calls (``optimizer.lr = ...``) and every
step shows in the optimizer.

``step(params, grads)`` updates each array of ``params`` in place from the array at the same
position of ``grads``. State is kept per position, so pass the parameters in the same order at
every step. ``state_dict()`` / ``load_state_dict()`` save and restore everything (checkpoints use
them).

Adding an optimizer: its rule in ``optim.h``, its binding line, and a subclass here naming its
hyper-parameters.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastmlp import _core
from fastmlp._parameters import writable_target
from fastmlp._validation import FLOAT_DTYPES, as_array, positive_float

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "by_name"]

_RULES: dict[str, type] = {}  # name -> wrapper class, for state_dict / checkpoints


class Optimizer:
    """Shared bookkeeping: argument checks, the core rule, its state and step counter."""

    _hyper: tuple[str, ...] = ()  # the constructor's hyper-parameters, in order

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _RULES[cls.__name__] = cls

    def __init__(self, rule) -> None:
        self._rule = rule
        # (shapes, dtype) the state is bound to, or None: a copy of the rule's, so that the
        # check of every fit and step costs a tuple comparison, not a conversion from C++.
        self._bound: tuple[tuple[tuple[int, ...], ...], np.dtype] | None = None

    # ---- hyper-parameters and counters ----------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate; may be changed at any time, also between a fit's epochs."""
        return self._rule.lr

    @lr.setter
    def lr(self, value) -> None:
        self._rule.lr = positive_float(value, "lr")

    @property
    def learning_rate(self) -> float:
        """``lr`` (read-only), by the name of scikit-learn's MLP optimizers' attribute."""
        return self._rule.lr

    @property
    def steps(self) -> int:
        """Steps taken (Adam's t); may be set (an int in [0, 2**62)), e.g. to restore it."""
        return self._rule.steps

    @steps.setter
    def steps(self, value) -> None:
        self._rule.steps = _steps(value)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self._rule.state_names)

    def __setattr__(self, name: str, value) -> None:
        # A misspelt or another rule's hyper-parameter (adam.momentum = 0.9) would otherwise
        # become a plain attribute that the rule never reads.
        if not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} to set; "
                                 f"its hyper-parameters are {', '.join(self._hyper)}")
        super().__setattr__(name, value)

    def hyperparameters(self) -> dict:
        return {name: getattr(self, name) for name in self._hyper}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def reset(self) -> None:
        """Forget all state, as if newly constructed."""
        self._rule.reset()
        self._bound = None

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue: rule, hyper-parameters, step count, and per parameter
        array whether it was updated yet and a copy of each state array."""
        rule = self._rule
        n = len(rule.shapes)
        return {
            "optimizer": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "steps": rule.steps,
            "dtype": rule.dtype,
            "started": [rule.started(i) for i in range(n)],
            "state": [{name: rule.state(i, name) for name in rule.state_names}
                      for i in range(n)],
        }

    @staticmethod
    def from_state_dict(state: dict) -> Optimizer:
        """A new optimizer of the saved rule, hyper-parameters and state."""
        try:
            cls = _RULES[state["optimizer"]]
        except KeyError:
            raise ValueError(f"unknown optimizer {state.get('optimizer')!r}; "
                             f"known: {sorted(_RULES)}") from None
        hyper = state["hyperparameters"]
        if not isinstance(hyper, dict) or set(hyper) != set(cls._hyper):
            raise ValueError(f"{cls.__name__} takes hyper-parameters {cls._hyper}, "
                             f"got {sorted(hyper) if isinstance(hyper, dict) else hyper!r}")
        optimizer = cls(**hyper)
        optimizer.load_state_dict(state)
        return optimizer

    def load_state_dict(self, state: dict) -> None:
        """Restores the step count and the state arrays saved by ``state_dict`` (of this rule)."""
        if state.get("optimizer") != type(self).__name__:
            raise ValueError(f"the state is of {state.get('optimizer')!r}, not {type(self).__name__}")
        arrays = state["state"]
        started = state["started"]
        if not isinstance(arrays, list) or not isinstance(started, list) or \
                len(arrays) != len(started):
            raise ValueError("state and started must be lists of one entry per parameter")
        try:
            steps = _steps(state["steps"])
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if not arrays:
            self.reset()
            self._rule.steps = steps
            return
        shapes = []
        for i, entry in enumerate(arrays):
            if not isinstance(entry, dict) or set(entry) != set(self.state_names):
                raise ValueError(f"state of parameter {i} must hold {self.state_names}")
            shapes.append({np.shape(a) for a in entry.values()})
            if len(shapes[-1]) != 1:
                raise ValueError(f"the state arrays of parameter {i} differ in shape")
        dtype = np.dtype(state.get("dtype") or np.asarray(next(iter(arrays[0].values()))).dtype)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"optimizer state must be float32 or float64, got {dtype}")
        shapes = tuple(tuple(next(iter(s))) for s in shapes)
        self._rule.bind(list(shapes), dtype.name)
        self._bound = (shapes, dtype)
        for i, entry in enumerate(arrays):
            for name, value in entry.items():
                value = np.ascontiguousarray(value, dtype=dtype)
                if not np.isfinite(value).all():
                    raise ValueError(f"state {name!r} of parameter {i} is not finite")
                self._rule.set_state(i, name, value)
            self._rule.set_started(i, bool(started[i]))
        self._rule.steps = steps

    # ---- stepping ---------------------------------------------------------------------------

    def step(self, params, grads) -> None:
        params = list(params)
        grads = list(grads)
        if len(params) != len(grads):
            raise ValueError(f"step got {len(params)} parameters but {len(grads)} gradients")
        # A model's parameter views (MLP.weights) are updated in their model's arrays, and the
        # model told (it drops its packed weights).
        targets = [writable_target(p) if isinstance(p, np.ndarray) else (p, None)
                   for p in params]
        params = [array for array, _ in targets]
        checked = [self._check_pair(i, p, g) for i, (p, g) in enumerate(zip(params, grads))]
        self._prepare([p for p, _ in checked])
        # The core updates contiguous memory; a non-contiguous parameter is updated in a copy
        # that is written back.
        work = [p if p.flags.c_contiguous else np.ascontiguousarray(p) for p, _ in checked]
        self._rule.step(work, [g for _, g in checked])
        for (p, _), w in zip(checked, work):
            if w is not p:
                p[...] = w
        for _, changed in targets:
            if changed is not None:
                changed()

    def _prepare(self, params: list[np.ndarray]) -> None:
        """Binds the state to these parameters on first use; checks them after."""
        if self._bound is None:
            if not params:
                raise ValueError("an optimizer needs at least one parameter")
            shapes = tuple(p.shape for p in params)
            self._rule.bind(list(shapes), params[0].dtype.name)
            self._bound = (shapes, params[0].dtype)
            return
        shapes, dtype = self._bound
        if len(shapes) != len(params):
            raise ValueError(
                f"this optimizer holds state for {len(shapes)} parameters but got "
                f"{len(params)}; use a new optimizer (or reset()) for another model")
        for i, (p, shape) in enumerate(zip(params, shapes)):
            if p.shape != shape or p.dtype != dtype:
                raise ValueError(
                    f"parameter {i} has shape {p.shape} and dtype {p.dtype} but this optimizer's "
                    f"state was made for {shape} {dtype}; use a new optimizer")

    @staticmethod
    def _check_pair(i: int, p, g) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(p, np.ndarray):
            raise TypeError(f"parameter {i} must be a NumPy array (updated in place), "
                            f"got {type(p).__name__}")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"parameter {i} must be float32 or float64, got {p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"parameter {i} is read-only; it must be updated in place")
        g = as_array(g, f"gradient {i}")
        if g.dtype != p.dtype:
            raise TypeError(f"gradient {i} has dtype {g.dtype} but its parameter has {p.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"gradient {i} has shape {g.shape} but its parameter has {p.shape}")
        return p, np.ascontiguousarray(g)

    def __getstate__(self):
        return self.state_dict()

    def __setstate__(self, state):
        self.__dict__.update(Optimizer.from_state_dict(state).__dict__)


def _hyper_property(name: str, check):
    """A hyper-parameter of the core rule; every assignment goes through check(value, name),
    as in the constructor."""
    def get(self):
        return getattr(self._rule, name)

    def set_(self, value):
        setattr(self._rule, name, check(value, name))
    return property(get, set_)


def _betas(betas) -> tuple[float, float]:
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {beta!r}")
    return float(beta1), float(beta2)


def _non_negative(value, name):
    return positive_float(value, name, allow_zero=True)


MAX_STEPS = 2**62  # far beyond any run; the core counts in int64 and computes beta**(steps+1)


def _steps(value, name: str = "steps") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < MAX_STEPS:
        raise ValueError(f"{name} must be an integer in [0, 2**62), got {value!r}")
    return int(value)


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (dampening 0).

    ``g = grad + weight_decay * p``; with momentum ``buf = g`` on the first step, then
    ``buf = momentum * buf + g``, and ``g = g + momentum * buf`` (Nesterov) or ``g = buf``;
    finally ``p -= lr * g``.
    """

    _hyper = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        momentum = _non_negative(momentum, "momentum")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0")
        super().__init__(_core.SGD(positive_float(lr, "lr"), momentum,
                                   _non_negative(weight_decay, "weight_decay"), bool(nesterov)))

    @property
    def momentum(self) -> float:
        return self._rule.momentum

    @momentum.setter
    def momentum(self, value) -> None:
        value = _non_negative(value, "momentum")
        if value == 0.0 and self._rule.nesterov:
            raise ValueError("nesterov=True requires momentum > 0 "
                             "(set nesterov = False first)")
        self._rule.momentum = value

    @property
    def nesterov(self) -> bool:
        return self._rule.nesterov

    @nesterov.setter
    def nesterov(self, value) -> None:
        if value and self._rule.momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0 (set momentum first)")
        self._rule.nesterov = bool(value)

    weight_decay = _hyper_property("weight_decay", _non_negative)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (amsgrad off; weight decay added to the gradient).

    ``g = grad + weight_decay * p``; ``m = β1 m + (1-β1) g``; ``v = β2 v + (1-β2) g²``;
    ``p -= lr / (1-β1^t) * m / (sqrt(v) / sqrt(1-β2^t) + eps)`` at step t = 1, 2, ...
    """

    _hyper = ("lr", "betas", "eps", "weight_decay")
    _core_rule = _core.Adam

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        beta1, beta2 = _betas(betas)
        super().__init__(self._core_rule(positive_float(lr, "lr"), beta1, beta2,
                                         _non_negative(eps, "eps"),
                                         _non_negative(weight_decay, "weight_decay")))

    @property
    def betas(self) -> tuple[float, float]:
        return (self._rule.beta1, self._rule.beta2)

    @betas.setter
    def betas(self, value) -> None:
        self._rule.beta1, self._rule.beta2 = _betas(value)

    eps = _hyper_property("eps", _non_negative)
    weight_decay = _hyper_property("weight_decay", _non_negative)


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay,
    ``p = p * (1 - lr * weight_decay)`` before the Adam step (whose gradient has no decay term).
    """

    _core_rule = _core.AdamW

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def by_name(name: str) -> Optimizer:
    """A new optimizer of the class named ``name`` (case-insensitive: "sgd", "adam", "adamw")
    with that class's default hyper-parameters: ``SGD(lr=0.01)`` (no momentum),
    ``Adam(lr=1e-3)``, ``AdamW(lr=1e-3, weight_decay=0.01)``. ValueError for another name."""
    classes = {cls.__name__.lower(): cls for cls in _RULES.values()}
    cls = classes.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; the names accepted are "
                         f"{', '.join(map(repr, classes))} (or pass an optimizer object)")
    return cls()
