"""``MLPClassifier.fit`` / ``MLPRegressor.fit`` with ``comm=`` (docs/distributed.md): what the
ranks agree on around ``MLP.fit(comm=...)``. Every check is agreed, so a bad shard raises on
every rank instead of leaving the others waiting.

- classes: the union of the ranks' labels; class_weight="balanced": from the class counts
  summed over the ranks (the same weights on every rank);
- the batch size ("auto": min(200, rows)) from the largest shard, the L2 penalty's scale
  (alpha relative to the total sample weight) and ``t_`` from the totals over the ranks;
- validation (``X_val`` per rank, or early stopping's split of each rank's shard): the
  scores of the union of the ranks' validation rows (accuracy and losses as weighted means,
  R² from summed squares), so every rank takes the same early-stopping decision;
- solver="lbfgs": _estimator_lbfgs.py (the objective averaged over the ranks).
"""

from __future__ import annotations

import contextlib

import numpy as np

from fastmlp import _estimator_data as data
from fastmlp._distributed import broadcast_parameters, run_agreed

__all__ = ["agreed_classes", "global_class_weight", "global_settings", "run_agreed",
           "validation_metrics"]


def agreed_classes(comm, estimator, y, X_val):
    """Collective: the sorted union of every rank's labels for a classifier (None for a
    regressor)."""
    if not estimator._is_classifier:
        return None
    parts = comm.allgather(run_agreed(comm, "reading its labels",
                                      lambda: np.unique(np.asarray(y))))
    return np.unique(np.concatenate(parts))


@contextlib.contextmanager
def global_class_weight(comm, estimator, y, sample_weight, classes):
    """Collective with comm and class_weight="balanced" (else nothing): for the block, the
    estimator's class_weight is the dict of the balanced weights of every rank's class counts
    (weighted by sample_weight), which _prepare applies to this rank's samples."""
    if comm is None or getattr(estimator, "class_weight", None) != "balanced":
        yield
        return

    def counts():
        labels = np.asarray(y)
        if labels.ndim == 2 and labels.shape[1] != 1:
            return None  # multilabel: _prepare refuses class_weight itself
        labels = labels.reshape(-1)
        weights = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        return data.class_counts(np.searchsorted(classes, labels), weights, len(classes))
    local = run_agreed(comm, "counting its classes", counts)
    if local is None:
        yield
        return
    per_class = data.balanced_class_weights(comm.allreduce(local))
    estimator.class_weight = {(c.item() if hasattr(c, "item") else c): float(w)
                              for c, w in zip(classes, per_class)}
    try:
        yield
    finally:
        estimator.class_weight = "balanced"


def global_settings(comm, estimator, n: int, sw) -> tuple[int, int, int, float]:
    """Collective: (rows over all ranks, rows of the largest shard, batch size, alpha): the
    batch from the largest shard, alpha relative to the total sample weight (as in
    _prepare). Sets rank 0's initial parameters on every rank (early stopping may return
    to them)."""
    totals = comm.allgather((n, float(n if sw is None else sw.sum())))
    n_total, n_largest = sum(r for r, _ in totals), max(r for r, _ in totals)
    weight_total = sum(w for _, w in totals)
    batch = estimator.batch_size
    batch_size = min(200 if batch == "auto" else int(batch), n_largest)
    alpha = float(estimator.alpha) * (1.0 if sw is None else n_total / weight_total)
    broadcast_parameters(comm, estimator._model)
    return n_total, n_largest, batch_size, alpha


def validation_metrics(comm, estimator, X_val, targets, weights) -> tuple[float, float]:
    """(score, loss) of the model on the validation rows: this process's, or with comm, of
    the union of every rank's (the same numbers on every rank). Accuracy and the losses are
    means weighted by the rows (or sample weights), so the ranks' means combine exactly; R²
    is 1 - Σ squared errors / Σ squared deviations from the union's mean, each summed over
    the ranks."""
    logits = estimator._model.forward(X_val)
    score, loss = estimator._validation_metrics(logits, targets, weights)
    if comm is None:
        return score, loss
    w = np.ones(len(targets)) if weights is None else np.asarray(weights, np.float64)
    total = w.sum()
    if estimator._is_classifier:
        sums = comm.allreduce(np.array([score * total, loss * total, total]))
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])
    y = np.asarray(targets, np.float64).reshape(len(targets), -1)
    raw = logits.astype(np.float64).reshape(len(targets), -1)
    with np.errstate(over="ignore"):
        pred = np.exp(raw) if getattr(estimator, "loss", None) == "poisson" else raw
    w = w[:, None]
    sums = comm.allreduce(np.concatenate([[total, loss * total], (w * y).sum(axis=0)]))
    mean = sums[2:] / sums[0]
    squares = comm.allreduce(np.concatenate([(w * (y - pred) ** 2).sum(axis=0),
                                             (w * (y - mean) ** 2).sum(axis=0)]))
    k = y.shape[1]
    return data.r2_of_sums(squares[:k], squares[k:]), float(sums[1] / sums[0])
