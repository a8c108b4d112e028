"""fastmlp's estimators under dask-ml on a two-process distributed.LocalCluster (the ``dask``
extra; skipped without it): Incremental's streaming partial_fit trains as the same
partial_fit calls made locally, ParallelPostFit predicts on the workers what the model
predicts locally."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
wrappers = pytest.importorskip("dask_ml.wrappers")
pytest.importorskip("sklearn")

from fastmlp import MLPClassifier  # noqa: E402
from fastmlp.datasets import load_digits  # noqa: E402

BLOCK, PASSES = 200, 15
CLASSES = np.arange(10)


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each (started once: ~10 s)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:len(y) // 5], order[len(y) // 5:]
    return X[train], y[train], X[test], y[test]


def estimator():
    return MLPClassifier(hidden_layer_sizes=(64,), learning_rate_init=3e-3, random_state=0)


def test_incremental_partial_fit_over_a_dask_array_is_local_partial_fit(client, digits):
    X, y, X_test, y_test = digits
    model = wrappers.Incremental(estimator(), shuffle_blocks=False, scoring="accuracy")
    X_blocks, y_blocks = da.from_array(X, chunks=BLOCK), da.from_array(y, chunks=BLOCK)
    for _ in range(PASSES):
        model.partial_fit(X_blocks, y_blocks, classes=CLASSES)
    local = estimator()
    for _ in range(PASSES):
        for first in range(0, len(y), BLOCK):
            local.partial_fit(X[first:first + BLOCK], y[first:first + BLOCK], classes=CLASSES)
    for ours, theirs in zip(model.estimator_.coefs_ + model.estimator_.intercepts_,
                            local.coefs_ + local.intercepts_):
        np.testing.assert_array_equal(ours, theirs)
    # It learned: far above the 10 % of chance on held-out digits (0.89 measured).
    held_out = da.from_array(X_test, chunks=BLOCK), da.from_array(y_test, chunks=BLOCK)
    assert model.score(*held_out) > 0.8


def test_incremental_with_shuffled_blocks_learns(client, digits):
    X, y, X_test, y_test = digits
    model = wrappers.Incremental(estimator(), random_state=0)
    for _ in range(PASSES):
        model.partial_fit(da.from_array(X, chunks=BLOCK), da.from_array(y, chunks=BLOCK),
                          classes=CLASSES)
    assert model.estimator_.t_ == PASSES * len(y)  # every sample seen once per pass
    assert model.estimator_.score(X_test, y_test) > 0.8  # 0.97 measured


def test_parallel_post_fit_predicts_on_the_workers_as_locally(client, digits):
    X, y, X_test, _ = digits
    fitted = estimator()
    for _ in range(5):
        fitted.partial_fit(X, y, classes=CLASSES)
    model = wrappers.ParallelPostFit(fitted)
    blocks = da.from_array(X_test, chunks=100)
    probabilities = model.predict_proba(blocks)
    assert isinstance(probabilities, da.Array)
    np.testing.assert_array_equal(probabilities.compute(), fitted.predict_proba(X_test))
    np.testing.assert_array_equal(model.predict(blocks).compute(), fitted.predict(X_test))
