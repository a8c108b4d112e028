"""GridSearchCV(MLPClassifier, n_jobs=2, cv=3) on scikit-learn's digits: fastmlp's estimator
against scikit-learn's, each at its default thread settings — what a user gets who leaves
them alone. Two joblib worker processes share the machine's cores; joblib tells each to use
cores / n_jobs threads (OMP_NUM_THREADS), which fastmlp honours like OpenBLAS does.

    python benchmarks/gridsearch_vs_sklearn.py [--runs 3] [--max-iter 200]

Both searches run once untimed first (joblib's worker processes start and import scikit-learn
and fastmlp: about a second, the same for both), then `runs` times each, alternating, each
after a 0.3 s pause (compare.SETTLE_SECONDS: spinning OpenBLAS threads left by the previous
search); the medians and their ratio are printed, with both searches' best parameters and
scores.
bench_gridsearch.py runs the same searches under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

from estimators_vs_sklearn import digits_split

from compare import SETTLE_SECONDS

# Four candidates × three folds = 12 fits per search, plus the refit of the best one.
PARAM_GRID = {"alpha": [1e-4, 1e-2], "hidden_layer_sizes": [(64,), (128,)]}


def search(implementation: str, X, y, max_iter: int = 200):
    """A fitted GridSearchCV(MLPClassifier(max_iter, random_state=0), PARAM_GRID, n_jobs=2,
    cv=3) of scikit-learn's or fastmlp's estimator."""
    from sklearn.model_selection import GridSearchCV
    if implementation == "fastmlp":
        from fastmlp import MLPClassifier
    else:
        from sklearn.neural_network import MLPClassifier
    estimator = MLPClassifier(max_iter=max_iter, random_state=0)
    with warnings.catch_warnings():
        # Neither converges within a small max_iter on every candidate; expected here.
        warnings.simplefilter("ignore", UserWarning)
        return GridSearchCV(estimator, PARAM_GRID, n_jobs=2, cv=3).fit(X, y)


def compare(runs: int = 3, max_iter: int = 200) -> dict:
    # The workers inherit the environment when joblib starts them: their convergence
    # warnings (one per unconverged fit) would flood stderr.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    X_train, X_test, y_train, y_test = digits_split()
    seconds = {"fastmlp": [], "sklearn": []}
    searches = {}
    for implementation in seconds:  # warm-up: the worker processes start here
        search(implementation, X_train[:300], y_train[:300], max_iter=5)
    for _ in range(runs):
        for implementation in seconds:
            # After a call, OpenBLAS's idle threads in this process (scikit-learn's refit ran
            # here) spin for ~0.1 s and would take a core from the next search's workers.
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            searches[implementation] = search(implementation, X_train, y_train, max_iter)
            seconds[implementation].append(time.perf_counter() - started)
    result = {f"{impl}_s": statistics.median(s) for impl, s in seconds.items()}
    result["speedup"] = result["sklearn_s"] / result["fastmlp_s"]
    for impl, fitted in searches.items():
        result[f"{impl}_best"] = fitted.best_params_
        result[f"{impl}_cv_score"] = fitted.best_score_
        result[f"{impl}_test_score"] = fitted.score(X_test, y_test)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="searches per implementation")
    parser.add_argument("--max-iter", type=int, default=200, help="MLPClassifier max_iter")
    args = parser.parse_args(argv)
    r = compare(args.runs, args.max_iter)
    print(f"GridSearchCV(MLPClassifier(max_iter={args.max_iter}), {PARAM_GRID}, n_jobs=2, "
          f"cv=3) on digits; median of {args.runs} searches, default threads")
    for impl in ("sklearn", "fastmlp"):
        print(f"  {impl:8s} {r[impl + '_s']:7.2f} s  best {r[impl + '_best']}  cv "
              f"{r[impl + '_cv_score']:.4f}  test {r[impl + '_test_score']:.4f}")
    print(f"  speed ratio (scikit-learn / fastmlp): {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()
