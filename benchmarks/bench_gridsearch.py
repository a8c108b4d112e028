"""GridSearchCV(MLPClassifier, n_jobs=2, cv=3) on digits, fastmlp's estimator against
scikit-learn's at their default thread settings (gridsearch_vs_sklearn.py has the workload and
prints the ratio). ``extra_info`` records both search times, the ratio and both best scores;
the searches must agree on the digits to within 2 points of cross-validated accuracy."""

import pytest

from gridsearch_vs_sklearn import search
from estimators_vs_sklearn import digits_split


@pytest.mark.benchmark(group="estimators: GridSearchCV n_jobs=2")
def bench_gridsearch_vs_sklearn(benchmark):
    pytest.importorskip("sklearn")
    pytest.importorskip("joblib")
    X_train, _, y_train, _ = digits_split()
    # Smoke runs (--benchmark-disable, as in CI) keep the fits short.
    max_iter = 200 if benchmark.enabled else 20
    ours = benchmark(search, "fastmlp", X_train, y_train, max_iter)
    theirs = search("sklearn", X_train, y_train, max_iter)
    benchmark.extra_info.update(fastmlp_cv_score=ours.best_score_,
                                sklearn_cv_score=theirs.best_score_)
    assert abs(ours.best_score_ - theirs.best_score_) <= 0.02
