"""Bag-of-words input: one epoch of an MLP on sparse word counts, fastmlp against scikit-learn's
MLPClassifier, PyTorch with nn.EmbeddingBag and fastmlp on the same data made dense.

The data (synthetic_bag_of_words): a vocabulary of 2¹⁶ words, 100 non-zeros a row (counts 1-3,
columns uniform), labels from a random linear rule on the counts; a CSR matrix. The net
[65536, 256, 2] (ReLU, softmax), batch 64, shuffled, one epoch, learning rate 0.01 (SGD) or
0.001 (Adam), no L2 penalty, no momentum:
- fastmlp:  fastmlp.MLPClassifier(hidden_layer_sizes=(256,), solver=..., alpha=0,
            batch_size=64, max_iter=1, ...).fit(X_csr, y): the engine's sparse first layer.
- sklearn:  sklearn.neural_network.MLPClassifier with the same parameters, on the same CSR.
- torch:    nn.EmbeddingBag(65536, 256, mode="sum") with per_sample_weights=counts (the CSR
            rows as bags), + bias, ReLU, nn.Linear(256, 2), cross-entropy; torch.optim.SGD on
            sparse gradients (sparse=True); torch.optim.Adam, which takes no sparse gradient,
            on dense ones (what its users run). The bags of each batch are cut from the
            shuffled CSR inside the timed loop (the other two shuffle inside fit too).
- fastmlp lazy (Adam only): the estimator with sparse_updates="lazy" (torch.optim.SparseAdam's
            rule: only the touched rows and their moments change).
- fastmlp dense: the same estimator on X.toarray() (2 GiB for 8,192 rows: fewer rows).
Everything on one thread (single_threaded: threadpoolctl, torch, fastmlp); fastmlp's default
thread count is reported too. Medians of --repeats runs, ratios from the same process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/sparse_vs_peers.py \\
        [--samples 8192] [--repeats 3] [--quick]

bench_sparse.py runs a small version of it under pytest-benchmark (smoke in CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

import fastmlp
from common import environment_report, optional_torch, single_threaded

VOCABULARY, NON_ZEROS, HIDDEN, BATCH = 2**16, 100, 256, 64
LEARNING_RATES = {"sgd": 0.01, "adam": 0.001}


def synthetic_bag_of_words(n_rows: int, vocabulary: int = VOCABULARY,
                           non_zeros: int = NON_ZEROS, seed: int = 0):
    """(X, y): X a CSR float32 (n_rows, vocabulary) of counts 1-3, non_zeros a row (columns
    drawn independently: a repeated word adds up), y in {0, 1} from a random linear rule."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    columns = rng.integers(0, vocabulary, n_rows * non_zeros).astype(np.int32)
    counts = rng.integers(1, 4, n_rows * non_zeros).astype(np.float32)
    X = sp.csr_matrix((counts, columns, np.arange(0, n_rows * non_zeros + 1, non_zeros)),
                      shape=(n_rows, vocabulary))
    scores = X @ rng.normal(size=vocabulary).astype(np.float32)
    return X, (scores > np.median(scores)).astype(np.int64)


def estimator_params(solver: str, hidden: int) -> dict:
    return dict(hidden_layer_sizes=(hidden,), solver=solver, alpha=0.0, batch_size=BATCH,
                learning_rate_init=LEARNING_RATES[solver], max_iter=1, shuffle=True,
                momentum=0.0, nesterovs_momentum=False, random_state=0)


def _fit_quietly(estimator, X, y):
    with warnings.catch_warnings():  # one epoch of max_iter=1: a ConvergenceWarning, expected
        warnings.simplefilter("ignore")
        return estimator.fit(X, y)


def fit_fastmlp(X, y, solver: str, hidden: int = HIDDEN, **extra):
    return _fit_quietly(fastmlp.MLPClassifier(**estimator_params(solver, hidden), **extra), X, y)


def fit_sklearn(X, y, solver: str, hidden: int = HIDDEN):
    from sklearn.neural_network import MLPClassifier
    return _fit_quietly(MLPClassifier(**estimator_params(solver, hidden)), X, y)


def fit_torch(X, y, solver: str, hidden: int = HIDDEN, seed: int = 0):
    """One epoch of the EmbeddingBag net; returns the last batch's loss (the script prints it
    beside the estimators' loss_, so that a diverging peer would show)."""
    torch = optional_torch()
    nn = torch.nn
    torch.manual_seed(seed)
    sparse = solver == "sgd"  # torch.optim.Adam refuses sparse gradients

    class BagOfWords(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.EmbeddingBag(X.shape[1], hidden, mode="sum", sparse=sparse)
            self.bias = nn.Parameter(torch.zeros(hidden))
            self.out = nn.Linear(hidden, 2)

        def forward(self, words, offsets, counts):
            bags = self.embedding(words, offsets, per_sample_weights=counts)
            return self.out(torch.relu(bags + self.bias))

    model = BagOfWords()
    # scikit-learn's (and fastmlp's estimators') Glorot-uniform initialisation, so that all
    # three train the same kind of net: EmbeddingBag's default N(0, 1) gives each hidden unit
    # of a 100-word bag a pre-activation of ~20, and the loss starts (and stays) far off.
    with torch.no_grad():
        for layer, (fan_in, fan_out) in ((model.embedding, (X.shape[1], hidden)),
                                         (model.out, (hidden, 2))):
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            layer.weight.uniform_(-bound, bound)
        model.bias.uniform_(-(6.0 / (X.shape[1] + hidden)) ** 0.5,
                            (6.0 / (X.shape[1] + hidden)) ** 0.5)
        model.out.bias.uniform_(-(6.0 / (hidden + 2)) ** 0.5, (6.0 / (hidden + 2)) ** 0.5)
    lr = LEARNING_RATES[solver]
    optimizer = (torch.optim.SGD(model.parameters(), lr=lr) if solver == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=lr))
    order = np.random.default_rng(seed).permutation(X.shape[0])
    shuffled, labels = X[order], torch.from_numpy(y[order])
    indptr = shuffled.indptr.astype(np.int64)
    words = torch.from_numpy(shuffled.indices.astype(np.int64))
    counts = torch.from_numpy(shuffled.data)
    loss = None
    for first in range(0, X.shape[0], BATCH):
        last = min(first + BATCH, X.shape[0])
        a, b = int(indptr[first]), int(indptr[last])
        offsets = torch.from_numpy(indptr[first:last] - a)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(words[a:b], offsets, counts[a:b]),
                                           labels[first:last])
        loss.backward()
        optimizer.step()
    return float(loss.detach())  # the last batch's loss


def median_seconds(run, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8192, help="rows (one epoch)")
    parser.add_argument("--dense-samples", type=int, default=1024,
                        help="rows for fastmlp on the densified matrix (4 bytes × 65,536 each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: few rows, one repeat, a small hidden layer")
    args = parser.parse_args(argv)
    samples, dense_samples, repeats, hidden = args.samples, args.dense_samples, args.repeats, HIDDEN
    if args.quick:
        samples, dense_samples, repeats, hidden = 512, 128, 1, 32
    X, y = synthetic_bag_of_words(samples)
    print("\n".join(environment_report()))
    print(f"data      {samples} × {VOCABULARY} CSR, {NON_ZEROS} non-zeros a row, counts 1-3; "
          f"net [{VOCABULARY}, {hidden}, 2], batch {BATCH}, one epoch, medians of {repeats}")
    torch = optional_torch()
    try:
        import sklearn  # noqa: F401
        have_sklearn = True
    except ImportError:
        have_sklearn = False
    rows = []
    for solver in ("sgd", "adam"):
        rate = {}
        with single_threaded():
            rate["fastmlp"] = samples / median_seconds(
                lambda: fit_fastmlp(X, y, solver, hidden), repeats)
            if solver == "adam":
                rate["fastmlp lazy"] = samples / median_seconds(
                    lambda: fit_fastmlp(X, y, solver, hidden, sparse_updates="lazy"), repeats)
            dense = X[:dense_samples].toarray()
            rate["fastmlp dense"] = dense_samples / median_seconds(
                lambda: fit_fastmlp(dense, y[:dense_samples], solver, hidden), repeats)
            del dense
            if have_sklearn:
                rate["sklearn"] = samples / median_seconds(
                    lambda: fit_sklearn(X, y, solver, hidden), 1)
            if torch:
                rate["torch"] = samples / median_seconds(
                    lambda: fit_torch(X, y, solver, hidden), repeats)
        rate["fastmlp, default threads"] = samples / median_seconds(
            lambda: fit_fastmlp(X, y, solver, hidden), repeats)
        rows.append((solver, rate))
    print(f"\n{'solver':<6} {'implementation':<26} {'samples/s':>11} {'vs sklearn':>11} "
          f"{'vs torch':>9}")
    for solver, rate in rows:
        for name, value in rate.items():
            vs_sklearn = f"{value / rate['sklearn']:.1f}x" if "sklearn" in rate else "-"
            vs_torch = f"{value / rate['torch']:.2f}x" if "torch" in rate else "-"
            print(f"{solver:<6} {name:<26} {value:>11,.0f} {vs_sklearn:>11} {vs_torch:>9}")
    print(f"(fastmlp, default threads: {fastmlp.get_num_threads()} threads; every other row "
          "one thread; sklearn timed once: one epoch takes it seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
