"""``solver="lbfgs"`` of the scikit-learn estimators: SciPy's L-BFGS-B on the network's
full-batch loss and gradient (scikit-learn's ``_fit_lbfgs``), in one process or, with
``comm``, data-parallel: every evaluation's loss and gradient are the means over all ranks'
rows (each rank's mean weighted by its rows or weight total, summed in one allreduce), so
every rank hands SciPy the same numbers and runs the same, deterministic, iterations: the
replicas stay bitwise identical (checked at the end).

Legend: N samples (of this rank), P parameters, packed as scikit-learn packs them (each
``coefs_[i]`` raveled, then each ``intercepts_[i]``).
"""

from __future__ import annotations

import sys
import traceback
import warnings

import numpy as np
import scipy.optimize
from sklearn.utils.optimize import _check_optimize_result

try:
    from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
except ImportError:  # scikit-learn < 1.7 passes iprint to every SciPy
    def _get_additional_lbfgs_options_dict(key, value):
        return {key: value}

from fastmlp import _estimator_data as data

__all__ = ["train_lbfgs"]


def train_lbfgs(estimator, X, targets, sw, alpha, warn, comm=None) -> None:
    """scikit-learn's ``_fit_lbfgs``: SciPy's L-BFGS-B over every parameter, for up to
    ``max_iter`` iterations and ``max_fun`` evaluations, ``tol`` the gradient tolerance.
    Each evaluation is the network's full-batch pass (``MLP.loss_and_grad``, in the model's
    dtype), handed to SciPy in float64. As in scikit-learn: no epochs (no loss curve,
    validation or early stopping), ``n_iter_`` the iterations run. ``warn(message,
    category)`` warns at the user's line. With comm: data-parallel over the ranks' shards
    (module documentation); alpha as _prepare scales it for this rank's shard."""
    self = estimator
    model = self._model
    n = X.shape[0]
    # The objective's weight total: this rank's rows (or weights), and over all ranks.
    weight = float(n if sw is None else sw.sum())
    if comm is not None:
        from fastmlp._distributed import broadcast_parameters
        broadcast_parameters(comm, model)  # x0: rank 0's initial weights on every rank
        weight_total = comm.allreduce(weight)
    else:
        weight_total = weight
    # alpha is relative to this rank's weight total (_prepare): per parameter the penalty's
    # gradient is alpha_user / (every rank's weight total) · W.
    penalty = alpha * weight / (n * weight_total)
    # Objective f = data loss / outputs + alpha/2 · Σ‖W‖² / n, gradient that of the data
    # loss summed over outputs plus alpha · W / n: scikit-learn's pair (for several
    # regression outputs its gradient is not that of its loss; the trajectory is its).
    outputs = self.n_outputs_ if self._output_kind() == "identity" else 1
    # scikit-learn clips each sample's log-loss at -log(eps); the engine's is exact. The
    # loss is recomputed its way (one more forward pass) only when the mean is high
    # enough for a sample to exceed the cap: mean ≥ w_i · cap / Σw for that sample.
    clip_from = np.inf
    if self._is_classifier:
        cap = -np.log(np.finfo(model.dtype).eps)
        clip_from = 0.999 * cap * (1 / n if sw is None else sw[sw > 0].min() / sw.sum())
    # (in, out) views of the model's own arrays: writes go into the model (unpack drops
    # its packed weights)
    coefs = [w.T for w in model._weights.arrays()]
    sizes = [c.size for c in coefs] + [b.size for b in model.biases]
    bounds = np.cumsum([0, *sizes])
    coef_parts = [slice(a, b) for a, b in zip(bounds[:len(coefs)], bounds[1:])]
    bias_parts = [slice(a, b) for a, b in zip(bounds[len(coefs):-1], bounds[len(coefs) + 1:])]
    x0 = np.concatenate([c.ravel() for c in coefs] + list(model.biases)).astype(np.float64)
    grad = np.empty_like(x0)
    summed = np.empty(grad.size + 2)  # [weight · gradient, weight · loss, failure flag]
    best = {"loss": np.inf, "x": x0, "iterations": 0}  # for Ctrl-C

    def unpack(x):
        # Under the model's lock, as the engine's updates: a prediction from another thread
        # sees the weights of one trial point or the next, never a mix of the two.
        with model._lock, np.errstate(over="ignore"):  # float32 models: beyond range is inf
            for c, part in zip(coefs, coef_parts):
                c[...] = x[part].reshape(c.shape)
            for b, part in zip(model._biases.arrays(), bias_parts):
                b[...] = x[part]
            model._drop_pack()

    def local_loss_and_grad():
        """This rank's mean data loss; its gradient into grad."""
        loss, grad_weights, grad_biases = model.loss_and_grad(X, targets, sample_weight=sw)
        if loss >= clip_from:
            loss = data.clipped_log_loss(model.forward(X), targets, sw)
        for g, part in zip(grad_weights, coef_parts):
            grad[part] = g.T.ravel()
        for g, part in zip(grad_biases, bias_parts):
            grad[part] = g
        return float(loss)

    def data_loss_and_grad():
        """The mean data loss over every rank's rows; its gradient into grad."""
        if comm is None:
            return local_loss_and_grad()
        return _reduced(comm, local_loss_and_grad, grad, summed, weight, weight_total)

    def loss_and_grad(x):
        unpack(x)
        loss = data_loss_and_grad()
        squares = 0.0
        for part in coef_parts:
            w = x[part]
            squares += np.dot(w, w)
            grad[part] += penalty * w
        loss = float(loss) / outputs + 0.5 * penalty * squares
        if loss < best["loss"]:
            best.update(loss=loss, x=x.copy())
        return loss, grad.copy()

    def count_iteration(intermediate_result):
        best["iterations"] += 1

    iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
    self.__dict__.pop("_optimizer", None)
    try:
        result = scipy.optimize.minimize(
            loss_and_grad, x0, method="L-BFGS-B", jac=True, callback=count_iteration,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                     **_get_additional_lbfgs_options_dict("iprint", iprint)})
    except KeyboardInterrupt as exc:
        if comm is not None:  # the other ranks wait in an allreduce: end the job
            _abort(comm, exc)
        # As the stochastic solvers: a usable model (the best weights evaluated) and a
        # warning; scikit-learn's lbfgs lets the interrupt through.
        unpack(best["x"])
        self.n_iter_, self.loss_ = best["iterations"], best["loss"]
        warn("Training interrupted by user.", UserWarning)
        return
    except BaseException:
        unpack(x0)  # the initial weights, not an arbitrary trial point
        raise
    unpack(result.x)
    if not all(np.isfinite(p).all() for p in (*model.weights, *model.biases)):
        unpack(x0)
        raise ValueError("Solver produced non-finite parameter weights. The input data may "
                         "contain large values and need to be preprocessed.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
    for warning in caught:
        warn(str(warning.message), warning.category)
    self.loss_ = float(result.fun)
    if comm is not None:
        from fastmlp._distributed import check_replicas
        check_replicas(comm, model, "after L-BFGS")



def _reduced(comm, local_loss_and_grad, grad, summed, weight: float, weight_total: float):
    """Collective: the weighted mean over the ranks of local_loss_and_grad()'s loss (returned)
    and gradient (into grad), in one allreduce; an evaluation that raised on any rank raises
    on every rank (its error there, a RuntimeError elsewhere)."""
    from mpi4py import MPI
    from fastmlp._distributed import run_agreed
    error = None
    try:
        loss = local_loss_and_grad()
        summed[:-2] = grad
        summed[:-2] *= weight
        summed[-2], summed[-1] = loss * weight, 0.0
    except Exception as exc:  # noqa: BLE001 - reported to every rank through the flag
        error = exc
        summed[:] = 0.0
        summed[-1] = 1.0
    comm.Allreduce(MPI.IN_PLACE, summed, op=MPI.SUM)
    if summed[-1] != 0.0:
        def fail():
            if error is not None:
                raise error
        run_agreed(comm, "evaluating the L-BFGS objective", fail)
    np.multiply(summed[:-2], 1.0 / weight_total, out=grad)
    return float(summed[-2]) / weight_total


def _abort(comm, exc: BaseException) -> None:
    """Ends the MPI job from one rank (Ctrl-C there while the others wait)."""
    sys.stderr.write(f"fastmlp: rank {comm.Get_rank()} of {comm.Get_size()} was interrupted "
                     "in L-BFGS; aborting the MPI job\n")
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    comm.Abort(130)
