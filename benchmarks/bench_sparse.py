"""Bag-of-words input (sparse_vs_peers.py has the workload): one epoch of
fastmlp.MLPClassifier on a CSR matrix, with scikit-learn's MLPClassifier on the same matrix
in ``extra_info`` (samples/s of both and the ratio, one run each). Smaller than the comparison
script's 8,192 rows so that the smoke run stays short; the predictions must be those of the
same estimator on the densified rows."""

import numpy as np
import pytest

from common import single_threaded
from sparse_vs_peers import fit_fastmlp, fit_sklearn, synthetic_bag_of_words

ROWS, HIDDEN = 1024, 64


@pytest.mark.benchmark(group="sparse: bag-of-words epoch")
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def bench_bag_of_words_vs_sklearn(benchmark, solver):
    pytest.importorskip("scipy")
    pytest.importorskip("sklearn")
    X, y = synthetic_bag_of_words(ROWS)
    with single_threaded():
        ours = benchmark(fit_fastmlp, X, y, solver, HIDDEN)
        dense = fit_fastmlp(X[:256].toarray(), y[:256], solver, HIDDEN)
        sparse = fit_fastmlp(X[:256], y[:256], solver, HIDDEN)
        if benchmark.stats is not None:
            import time
            started = time.perf_counter()
            fit_sklearn(X, y, solver, HIDDEN)
            sklearn_s = time.perf_counter() - started
            fastmlp_s = benchmark.stats.stats.median
            benchmark.extra_info.update(fastmlp_samples_per_s=ROWS / fastmlp_s,
                                        sklearn_samples_per_s=ROWS / sklearn_s,
                                        speedup_vs_sklearn=sklearn_s / fastmlp_s)
    np.testing.assert_array_equal(sparse.predict(X[:256]), dense.predict(X[:256].toarray()))
    assert ours.n_iter_ == 1
