"""fastmlp's scikit-learn estimators on a Dask cluster (the ``dask`` extra): train with
dask-ml's ``Incremental`` (``partial_fit`` on each block of a Dask array in turn, the model
passed from worker to worker) and predict with ``ParallelPostFit`` (``predict_proba`` of every
block on the workers, in parallel). A local cluster of two worker processes stands in for a
real one: pass ``--scheduler ADDRESS`` to use yours.

    python examples/dask_digits.py [--scheduler tcp://host:8786] [--passes 15]
"""

import argparse

import numpy as np

from fastmlp.datasets import load_digits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler", default=None, help="a running scheduler's address")
    parser.add_argument("--passes", type=int, default=15, help="passes over the training data")
    args = parser.parse_args()
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
        from dask_ml.wrappers import Incremental, ParallelPostFit
    except ImportError:
        print("this example needs dask, distributed and dask-ml: pip install 'fastmlp[dask]'")
        return
    from fastmlp import MLPClassifier

    X, y = load_digits()
    X = (X / 16.0).astype(np.float32)  # pixel counts 0..16 -> [0, 1]
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    # Blocks of 200 rows: each partial_fit call is one epoch over one block.
    X_train, y_train = da.from_array(X[train], chunks=200), da.from_array(y[train], chunks=200)
    X_test = da.from_array(X[test], chunks=200)

    cluster = None if args.scheduler else LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with Client(args.scheduler or cluster) as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers")
        model = Incremental(MLPClassifier(hidden_layer_sizes=(64,), learning_rate_init=3e-3,
                                          random_state=0), random_state=0)
        for _ in range(args.passes):
            model.partial_fit(X_train, y_train, classes=np.arange(10))
        predictor = ParallelPostFit(model.estimator_)
        probabilities = predictor.predict_proba(X_test).compute()
        accuracy = np.mean(model.estimator_.classes_[probabilities.argmax(axis=1)] == y[test])
        print(f"{args.passes} passes of partial_fit over {len(train)} images in blocks of 200; "
              f"held-out accuracy {accuracy:.4f} on {len(test)} images (predicted on the "
              "workers)")
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
