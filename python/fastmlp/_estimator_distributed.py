"""``MLPClassifier.fit`` / ``MLPRegressor.fit`` with ``comm=`` (docs/distributed.md): what the
ranks agree on before ``MLP.fit(comm=...)`` trains. The classes are the union of the ranks'
labels; the batch size ("auto": min(200, rows)) comes from the largest shard and the L2
penalty's scale (alpha relative to the total sample weight) from the totals over the ranks,
so every rank passes the same arguments; every check is agreed, so a bad shard raises on every
rank instead of leaving the others waiting. Not supported yet, refused on every rank:
solver="lbfgs", early_stopping, X_val (their per-epoch scores would need reducing too) and
class_weight="balanced" (global class counts)."""

from __future__ import annotations

import numpy as np

from fastmlp._distributed import run_agreed


def check_supported(estimator, X_val) -> None:
    """ValueError for what ``fit(comm=...)`` does not support (the same on every rank: the
    estimator's parameters must be)."""
    unsupported = [what for what, present in (
        ("solver='lbfgs'", estimator.solver == "lbfgs"),
        ("early_stopping=True", bool(estimator.early_stopping)),
        ("X_val/y_val", X_val is not None),
        ("class_weight='balanced'", getattr(estimator, "class_weight", None) == "balanced"),
    ) if present]
    if unsupported:
        raise ValueError(f"fit(comm=...) does not support {', '.join(unsupported)} yet; "
                         "train with MLP.fit(comm=...) and validation_data for validation "
                         "scores reduced over the ranks")


def agreed_classes(comm, estimator, y, X_val):
    """Collective: checks what fit(comm=...) supports (check_supported, on every rank); the
    sorted union of every rank's labels for a classifier (None for a regressor)."""
    run_agreed(comm, "checking its arguments", lambda: check_supported(estimator, X_val))
    if not estimator._is_classifier:
        return None
    parts = comm.allgather(run_agreed(comm, "reading its labels",
                                      lambda: np.unique(np.asarray(y))))
    return np.unique(np.concatenate(parts))


def global_settings(comm, estimator, n: int, sw) -> tuple[int, int, int, float]:
    """(rows over all ranks, rows of the largest shard, batch size, alpha): the batch from
    the largest shard, alpha relative to the total sample weight (as in _prepare)."""
    totals = comm.allgather((n, float(n if sw is None else sw.sum())))
    n_total, n_largest = sum(r for r, _ in totals), max(r for r, _ in totals)
    weight_total = sum(w for _, w in totals)
    batch = estimator.batch_size
    batch_size = min(200 if batch == "auto" else int(batch), n_largest)
    alpha = float(estimator.alpha) * (1.0 if sw is None else n_total / weight_total)
    return n_total, n_largest, batch_size, alpha
