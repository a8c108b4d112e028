"""Optimizers with the update rules documented for ``torch.optim.SGD`` and ``torch.optim.Adam``.

``step(params, grads)`` updates each array of ``params`` in place from the array at the same
position of ``grads``. State (momentum buffers, Adam's moments) is kept per position, so pass
the parameters in the same order at every step; the arithmetic runs in the C++ core.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastmlp import _core
from fastmlp._validation import FLOAT_DTYPES, as_array, cache_aligned, positive_float

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    """Shared bookkeeping: argument checks, per-parameter state, the step counter."""

    def __init__(self) -> None:
        self._state: list[dict[str, np.ndarray]] = []
        self.steps = 0

    def reset(self) -> None:
        """Forget all state, as if newly constructed."""
        self._state = []
        self.steps = 0

    def step(self, params, grads) -> None:
        params = list(params)
        grads = list(grads)
        if len(params) != len(grads):
            raise ValueError(f"step got {len(params)} parameters but {len(grads)} gradients")
        checked = [self._check_pair(i, p, g) for i, (p, g) in enumerate(zip(params, grads))]
        self._prepare([p for p, _ in checked])
        self.steps += 1
        for i, (p, g) in enumerate(checked):
            if p.flags.c_contiguous:
                self._update(p, g, self._state[i])
            else:
                # The core updates contiguous memory; update a copy and write it back.
                work = np.ascontiguousarray(p)
                self._update(work, g, self._state[i])
                p[...] = work

    def _prepare(self, params: list[np.ndarray]) -> list[dict]:
        """The per-parameter state, created on first use and checked against params after."""
        if self._state and len(self._state) != len(params):
            raise ValueError(
                f"this optimizer holds state for {len(self._state)} parameters but got "
                f"{len(params)}; use a new optimizer (or reset()) for another model"
            )
        if not self._state:
            self._state = [self._new_state(p) for p in params]
        for i, (p, state) in enumerate(zip(params, self._state)):
            if state["shape"] != p.shape or state["dtype"] != p.dtype:
                raise ValueError(
                    f"parameter {i} has shape {p.shape} and dtype {p.dtype} but this optimizer's "
                    f"state was made for {state['shape']} {state['dtype']}; use a new optimizer"
                )
        return self._state

    def _engine_spec(self, params: list[np.ndarray]) -> dict:
        """What the C++ training engine needs: the rule, its hyper-parameters and the state
        arrays (updated in place by the engine, so this optimizer stays current)."""
        raise NotImplementedError

    def _engine_sync(self, trainer, steps_before: int) -> None:
        """Takes back the scalar state the engine advanced (step counts, first-step flags);
        steps_before: this optimizer's step count when the engine was made."""
        raise NotImplementedError

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

    def _new_state(self, p: np.ndarray) -> dict:
        return {"shape": p.shape, "dtype": p.dtype}

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (dampening 0).

    ``g = grad + weight_decay * p``; with momentum ``buf = g`` on the first step, then
    ``buf = momentum * buf + g``, and ``g = g + momentum * buf`` (Nesterov) or ``g = buf``;
    finally ``p -= lr * g``.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__()
        self.lr = positive_float(lr, "lr")
        self.momentum = positive_float(momentum, "momentum", allow_zero=True)
        self.weight_decay = positive_float(weight_decay, "weight_decay", allow_zero=True)
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0")
        self.nesterov = bool(nesterov)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov})")

    def _new_state(self, p: np.ndarray) -> dict:
        state = super()._new_state(p)
        state["momentum_buffer"] = cache_aligned(np.zeros_like(p))
        state["first_step"] = True
        return state

    def _engine_spec(self, params):
        state = self._prepare(params)
        return {"kind": "sgd", "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov,
                "state_a": [s["momentum_buffer"] for s in state], "state_b": [],
                "first_step": [s["first_step"] for s in state]}

    def _engine_sync(self, trainer, steps_before):
        self.steps = steps_before + trainer.total_steps
        for state, first in zip(self._state, trainer.sgd_first_step):
            state["first_step"] = first

    def _update(self, p, g, state) -> None:
        _core.sgd_update(p, g, state["momentum_buffer"], self.lr, self.momentum,
                         self.weight_decay, self.nesterov, state["first_step"])
        state["first_step"] = False


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (amsgrad off; weight decay added to the gradient).

    ``g = grad + weight_decay * p``; ``m = β1 m + (1-β1) g``; ``v = β2 v + (1-β2) g²``;
    ``p -= lr / (1-β1^t) * m / (sqrt(v) / sqrt(1-β2^t) + eps)`` at step t = 1, 2, ...
    """

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.lr = positive_float(lr, "lr")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta!r}")
        self.betas = (float(beta1), float(beta2))
        self.eps = positive_float(eps, "eps", allow_zero=True)
        self.weight_decay = positive_float(weight_decay, "weight_decay", allow_zero=True)

    def __repr__(self) -> str:
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")

    def _new_state(self, p: np.ndarray) -> dict:
        state = super()._new_state(p)
        state["exp_avg"] = cache_aligned(np.zeros_like(p))
        state["exp_avg_sq"] = cache_aligned(np.zeros_like(p))
        return state

    def _engine_spec(self, params):
        state = self._prepare(params)
        return {"kind": "adam", "lr": self.lr, "beta1": self.betas[0], "beta2": self.betas[1],
                "eps": self.eps, "weight_decay": self.weight_decay, "steps": self.steps,
                "state_a": [s["exp_avg"] for s in state],
                "state_b": [s["exp_avg_sq"] for s in state], "first_step": []}

    def _engine_sync(self, trainer, steps_before):
        self.steps = trainer.optimizer_steps

    def _update(self, p, g, state) -> None:
        _core.adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], self.lr, self.betas[0],
                          self.betas[1], self.eps, self.weight_decay, self.steps)
