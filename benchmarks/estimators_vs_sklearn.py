"""fastmlp.MLPClassifier vs sklearn.neural_network.MLPClassifier: the same hyper-parameters
(scikit-learn's defaults, hidden_layer_sizes=(100,), random_state=0) on scikit-learn's bundled
digits (pixels / 16, a stratified 75/25 split), both single-threaded in one process
(threadpoolctl for scikit-learn's BLAS, fastmlp.set_num_threads(1)). Prints the median fit
time of each over a few runs, the speed ratio and both test accuracies.

    python benchmarks/estimators_vs_sklearn.py [--runs 5]

bench_estimators.py times the same fastmlp fit with pytest-benchmark and records the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import fastmlp

PARAMS = dict(hidden_layer_sizes=(100,), random_state=0)  # otherwise scikit-learn's defaults


def digits_split():
    """(X_train, X_test, y_train, y_test): digits pixels / 16, 25% held out, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, stratify=y, random_state=0)


def _quietly(fit):
    # With the defaults both stop at max_iter=200 on digits and warn; that is expected here.
    from fastmlp.estimators import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit()


def fit_fastmlp(X, y):
    """fastmlp.MLPClassifier(**PARAMS) fitted on one thread."""
    previous = fastmlp.get_num_threads()
    fastmlp.set_num_threads(1)
    try:
        return _quietly(lambda: fastmlp.MLPClassifier(**PARAMS).fit(X, y))
    finally:
        fastmlp.set_num_threads(previous)


def fit_sklearn(X, y):
    """sklearn.neural_network.MLPClassifier(**PARAMS) fitted with BLAS on one thread."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        return _quietly(lambda: MLPClassifier(**PARAMS).fit(X, y))


def time_fit(fit, X, y, runs: int):
    """(median seconds over runs, the last fitted model)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        model = fit(X, y)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), model


def compare(runs: int = 5) -> dict:
    X_train, X_test, y_train, y_test = digits_split()
    fit_fastmlp(X_train[:50], y_train[:50])  # warm-up: first-call setup out of the timing
    fastmlp_s, ours = time_fit(fit_fastmlp, X_train, y_train, runs)
    sklearn_s, theirs = time_fit(fit_sklearn, X_train, y_train, runs)
    return {"fastmlp_s": fastmlp_s, "sklearn_s": sklearn_s, "speedup": sklearn_s / fastmlp_s,
            "fastmlp_accuracy": ours.score(X_test, y_test),
            "sklearn_accuracy": theirs.score(X_test, y_test),
            "fastmlp_epochs": ours.n_iter_, "sklearn_epochs": theirs.n_iter_}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fits per implementation (median)")
    r = compare(parser.parse_args(argv).runs)
    print(f"digits, MLPClassifier{PARAMS}, single-threaded, median of fit times")
    print(f"  scikit-learn {r['sklearn_s'] * 1e3:8.1f} ms  {r['sklearn_epochs']:>3} epochs  "
          f"test accuracy {r['sklearn_accuracy']:.4f}")
    print(f"  fastmlp      {r['fastmlp_s'] * 1e3:8.1f} ms  {r['fastmlp_epochs']:>3} epochs  "
          f"test accuracy {r['fastmlp_accuracy']:.4f}")
    print(f"  speed ratio (scikit-learn / fastmlp): {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()
