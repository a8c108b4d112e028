"""fastmlp.MLPClassifier.fit on scikit-learn's digits with scikit-learn's default
hyper-parameters, against sklearn.neural_network.MLPClassifier (estimators_vs_sklearn.py has
the workload). ``extra_info`` records both fit times, the speed ratio and both test
accuracies; the fit must match scikit-learn's accuracy within 1.5 points."""

import pytest

from estimators_vs_sklearn import digits_split, fit_fastmlp, fit_sklearn, time_fit


@pytest.mark.benchmark(group="estimators: digits fit")
def bench_digits_vs_sklearn(benchmark):
    pytest.importorskip("sklearn")
    X_train, X_test, y_train, y_test = digits_split()
    ours = benchmark(fit_fastmlp, X_train, y_train)
    if benchmark.stats is not None:  # timed run: pytest-benchmark's median
        fastmlp_s = benchmark.stats.stats.median
    else:  # smoke run (--benchmark-disable): one timed fit
        fastmlp_s, _ = time_fit(fit_fastmlp, X_train, y_train, runs=1)
    sklearn_s, theirs = time_fit(fit_sklearn, X_train, y_train, runs=1)
    accuracy, reference = ours.score(X_test, y_test), theirs.score(X_test, y_test)
    benchmark.extra_info.update(fastmlp_s=fastmlp_s, sklearn_s=sklearn_s,
                                speedup_vs_sklearn=sklearn_s / fastmlp_s,
                                fastmlp_accuracy=accuracy, sklearn_accuracy=reference)
    assert abs(accuracy - reference) <= 0.015
