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


def class_union(comm, estimator, y):
    """The sorted union of every rank's labels for a classifier (None for a regressor)."""
    if not estimator._is_classifier:
        return None
    parts = comm.allgather(run_agreed(comm, "reading its labels",
                                      lambda: np.unique(np.asarray(y))))
    return np.unique(np.concatenate(parts))


def global_totals(comm, n: int, sw) -> tuple[int, int, float]:
    """(rows over all ranks, rows of the largest shard, total sample weight)."""
    totals = comm.allgather((n, float(n if sw is None else sw.sum())))
    return (sum(rows for rows, _ in totals), max(rows for rows, _ in totals),
            sum(weight for _, weight in totals))
