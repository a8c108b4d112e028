"""Sparse input (scipy.sparse): the CSR first layer against the dense one as reference, at
awkward shapes, in float32 and float64; its gradient against central finite differences;
exact and lazy updates; bad input."""

import contextlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmlp
from fastmlp import _core, _testing
from fastmlp._sparse import SparseInput, sparse_features

from _helpers import set_entry

sp = pytest.importorskip("scipy.sparse")

DTYPES = ["float32", "float64"]


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)


def random_csr(n_rows, n_cols, density, seed):
    """A CSR matrix of counts 1-3 as scipy allows it without canonicalising: columns drawn
    with replacement (duplicates in a row add up, in scipy and in the engine), unsorted, and
    an empty row."""
    rng = np.random.default_rng(seed)
    counts = rng.binomial(n_cols, density, n_rows)
    if n_rows > 2:
        counts[1] = 0
    counts[0] = max(counts[0], 2)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = rng.integers(0, n_cols, indptr[-1])
    indices[1] = indices[0]  # a duplicate in row 0
    data = rng.integers(1, 4, indptr[-1]).astype(float)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_features,hidden,n_rows", [(1, [1], 1), (7, [3], 5), (65, [17], 13),
                                                        (131, [33, 5], 31), (300, [], 8)])
def test_forward_matches_dense(dtype, n_features, hidden, n_rows):
    X = random_csr(n_rows, n_features, 0.2, seed=n_features)
    model = fastmlp.MLP([n_features, *hidden, 3], seed=1, dtype=dtype)
    np.testing.assert_allclose(model.forward(X), model.forward(X.toarray()), **tolerance(dtype))
    for fmt in ("csc", "coo"):  # other formats are converted to CSR
        np.testing.assert_allclose(model.forward(X.asformat(fmt)), model.forward(X.toarray()),
                                   **tolerance(dtype))
    np.testing.assert_array_equal(model.predict(sp.csr_array(X)), model.predict(X.toarray()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity"])
def test_loss_and_grad_matches_dense(dtype, output):
    X = random_csr(23, 41, 0.15, seed=3)
    n_out = 1 if output == "sigmoid" else 4
    model = fastmlp.MLP([41, 9, n_out], output=output, seed=2, dtype=dtype)
    rng = np.random.default_rng(0)
    y = (rng.normal(size=(23, n_out)) if output == "identity"
         else rng.integers(0, 2 if output == "sigmoid" else n_out, 23))
    w = rng.uniform(0.5, 2.0, 23)
    sparse = model.loss_and_grad(X, y, sample_weight=w, alpha=0.1)
    dense = model.loss_and_grad(X.toarray(), y, sample_weight=w, alpha=0.1)
    np.testing.assert_allclose(sparse[0], dense[0], **tolerance(dtype))
    for a, b in zip(sparse[1] + sparse[2], dense[1] + dense[2]):
        np.testing.assert_allclose(a, b, **tolerance(dtype))


def test_first_layer_gradient_finite_differences():
    X = random_csr(6, 11, 0.3, seed=5)
    y = np.array([0, 1, 2, 1, 0, 2])
    model = fastmlp.MLP([11, 4, 3], activation="tanh", seed=4, dtype="float64")
    _, grad_W, grad_b = model.loss_and_grad(X, y)
    W = model.weights[0]
    h = 1e-6
    for (i, j) in [(0, 0), (3, 10), (2, 5), (1, 7)]:
        saved = W[i, j]
        set_entry(W, (i, j), saved + h)
        up = model.loss(X, y)
        set_entry(W, (i, j), saved - h)
        down = model.loss(X, y)
        set_entry(W, (i, j), saved)
        np.testing.assert_allclose(grad_W[0][i, j], (up - down) / (2 * h), rtol=1e-6, atol=1e-9)
    # A column no row of X touches has a zero gradient.
    untouched = np.flatnonzero(np.asarray(abs(X).sum(axis=0)).ravel() == 0)
    assert np.all(grad_W[0][:, untouched] == 0)


def optimizers():
    return {
        "sgd": lambda: fastmlp.SGD(lr=0.05),
        "momentum": lambda: fastmlp.SGD(lr=0.05, momentum=0.9, nesterov=True),
        "decay": lambda: fastmlp.SGD(lr=0.05, weight_decay=0.01),
        "adam": lambda: fastmlp.Adam(lr=0.01),
        "adamw": lambda: fastmlp.AdamW(lr=0.01, weight_decay=0.1),
    }


@pytest.mark.usefixtures("every_isa_and_thread_count")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_every_isa_trains_as_dense(dtype, name):
    """The sparse rows run on each SIMD flavour's axpy (gemm/axpy.h): on every flavour the
    forward and a short training agree with the dense engine on the same flavour."""
    X = random_csr(70, 45, 0.1, seed=12)
    y = np.random.default_rng(3).integers(0, 3, 70)
    model = fastmlp.MLP([45, 19, 3], seed=3, dtype=dtype)
    np.testing.assert_allclose(model.forward(X), model.forward(X.toarray()), **tolerance(dtype))
    fitted = []
    for data in (X, X.toarray()):
        twin = fastmlp.MLP([45, 19, 3], seed=3, dtype=dtype)
        twin.fit(data, y, epochs=2, batch_size=16, optimizer=optimizers()[name](), seed=1)
        fitted.append(twin.weights + twin.biases)
    for a, b in zip(*fitted):
        np.testing.assert_allclose(a, b, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(optimizers()))
@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_training_matches_dense(dtype, name, alpha):
    """Exact updates: the same training as on the dense matrix, step for step (to rounding)."""
    X = random_csr(90, 37, 0.1, seed=7)
    y = np.random.default_rng(1).integers(0, 3, 90)
    w = np.random.default_rng(2).uniform(0.5, 1.5, 90)
    runs = []
    for data in (X, X.toarray()):
        model = fastmlp.MLP([37, 13, 3], seed=3, dtype=dtype)
        history = model.fit(data, y, epochs=3, batch_size=16, optimizer=optimizers()[name](),
                            seed=5, alpha=alpha, sample_weight=w)
        runs.append((model, history))
    (sparse, hs), (dense, hd) = runs
    np.testing.assert_allclose(hs.loss, hd.loss, **tolerance(dtype))
    for a, b in zip(sparse.weights + sparse.biases, dense.weights + dense.biases):
        np.testing.assert_allclose(a, b, **tolerance(dtype))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_threads_give_the_same_result(name):
    """Every sparse kernel split over the pool (forced) gives the bits of one thread."""
    X = random_csr(200, 300, 0.05, seed=9)
    y = np.random.default_rng(0).integers(0, 2, 200)
    results = []
    previous = fastmlp.get_num_threads()
    try:
        for threads, split in ((1, False), (2, True), (3, True)):
            fastmlp.set_num_threads(threads)
            with _testing.split_every_product() if split else contextlib.nullcontext():
                model = fastmlp.MLP([300, 40, 2], seed=0)
                model.fit(X, y, epochs=2, batch_size=32, optimizer=optimizers()[name](), seed=1)
                results.append([a.copy() for a in model.weights + model.biases]
                               + [model.forward(X)])
    finally:
        fastmlp.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_lazy_updates_leave_untouched_weights_alone():
    """Column 7 appears in the first batch only. Lazy Adam updates it at that step and then
    leaves it and its moments alone; exact Adam keeps moving it as its moments decay."""
    X = random_csr(48, 50, 0.1, seed=11).tolil()
    X[:, 7] = 0
    X[0, 7] = 2.0
    X = X.tocsr()
    y = np.random.default_rng(0).integers(0, 2, 48)
    runs = {}
    for mode, rows in (("lazy", 48), ("exact", 48), ("first batch", 8)):
        model = fastmlp.MLP([50, 8, 2], activation="tanh", seed=0)
        optimizer = fastmlp.Adam(lr=0.01)
        model.fit(X[:rows], y[:rows], epochs=1, batch_size=8, optimizer=optimizer,
                  shuffle=False, sparse_updates="exact" if mode == "exact" else "lazy")
        runs[mode] = (model.weights[0][:, 7].copy(),
                      optimizer.state_dict()["state"][0]["exp_avg"][:, 7].copy())
    np.testing.assert_array_equal(runs["lazy"][0], runs["first batch"][0])
    np.testing.assert_array_equal(runs["lazy"][1], runs["first batch"][1])
    assert np.all(runs["first batch"][1] != 0)
    exact_moment = runs["exact"][1]
    assert np.all(np.abs(exact_moment) < np.abs(runs["lazy"][1]))  # decayed: β1⁵ of it
    np.testing.assert_allclose(exact_moment, 0.9**5 * runs["lazy"][1], rtol=1e-5)
    assert np.all(runs["exact"][0] != runs["lazy"][0])

def test_lazy_is_exact_for_plain_sgd():
    X = random_csr(60, 50, 0.1, seed=11)
    y = np.random.default_rng(0).integers(0, 2, 60)
    a, b = fastmlp.MLP([50, 8, 2], seed=0), fastmlp.MLP([50, 8, 2], seed=0)
    a.fit(X, y, epochs=2, batch_size=8, optimizer=fastmlp.SGD(lr=0.1), seed=0,
          sparse_updates="lazy")
    b.fit(X, y, epochs=2, batch_size=8, optimizer=fastmlp.SGD(lr=0.1), seed=0)
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(p, q)


def test_callbacks_between_epochs_are_seen():
    """The engine's working copy of W_0 is taken again at every epoch: a callback's change
    to W_0 takes effect as with dense input."""
    X = random_csr(40, 30, 0.2, seed=2)
    y = np.random.default_rng(0).integers(0, 2, 40)

    def halve(model, history):
        model.weights[0] = model.weights[0] * 0.5

    runs = []
    for data in (X, X.toarray()):
        model = fastmlp.MLP([30, 6, 2], seed=0, dtype="float64")
        model.fit(data, y, epochs=3, batch_size=8, optimizer=fastmlp.SGD(lr=0.1), seed=0,
                  callbacks=[halve])
        runs.append(model.weights[0])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-12)


def test_divergence_keeps_last_finite_weights():
    X = random_csr(64, 20, 0.3, seed=4) * 1e30
    y = np.random.default_rng(0).integers(0, 2, 64)
    for updates in ("exact", "lazy"):
        model = fastmlp.MLP([20, 5, 2], seed=0)
        with pytest.raises(FloatingPointError):
            model.fit(X, y, epochs=2, batch_size=16, optimizer=fastmlp.SGD(lr=1e10), seed=0,
                      sparse_updates=updates)
        assert all(np.isfinite(a).all() for a in model.weights + model.biases)


def test_validation_data_and_checkpoint_resume(tmp_path):
    X = random_csr(50, 25, 0.2, seed=6)
    y = np.random.default_rng(0).integers(0, 3, 50)
    full = fastmlp.MLP([25, 7, 3], seed=0)
    full.fit(X, y, epochs=4, batch_size=8, optimizer=fastmlp.Adam(lr=0.01), seed=2,
             validation_data=(X[:10], y[:10]))
    path = tmp_path / "run.npz"
    part = fastmlp.MLP([25, 7, 3], seed=0)
    part.fit(X, y, epochs=2, batch_size=8, optimizer=fastmlp.Adam(lr=0.01), seed=2,
             checkpoint=path)
    resumed = fastmlp.MLP([25, 7, 3], seed=0)
    resumed.fit(X, y, epochs=4, batch_size=8, optimizer=fastmlp.Adam(lr=0.01), seed=2,
                checkpoint=path, resume=True)
    for a, b in zip(full.weights + full.biases, resumed.weights + resumed.biases):
        np.testing.assert_array_equal(a, b)


def test_bad_sparse_input_is_a_clear_error():
    model = fastmlp.MLP([10, 4, 2], seed=0)
    X = random_csr(5, 10, 0.3, seed=1)
    with pytest.raises(ValueError, match="features"):
        model.forward(random_csr(5, 11, 0.3, seed=1))
    bad = X.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN|finite"):
        model.forward(bad)
    with pytest.raises(ValueError, match="0 samples"):
        model.forward(sp.csr_matrix((0, 10)))
    with pytest.raises(TypeError, match="real numbers"):
        model.forward(sp.csr_matrix(np.ones((2, 10), dtype=complex)))
    with pytest.raises(ValueError, match="sparse_updates"):
        model.fit(X, [0, 1, 0, 1, 0], sparse_updates="sometimes")
    # Malformed CSR arrays reach the core only through SparseInput; it checks them in full.
    good = sparse_features(X, "X", np.float32, 10)
    cases = {
        "out of range": good._replace(indices=np.where(good.indices == good.indices[0], 10,
                                                       good.indices).astype(np.int32)),
        "non-decreasing": good._replace(indptr=np.concatenate([[0, good.indptr[-1]],
                                                               good.indptr[2:]])),
        "start at 0": good._replace(indptr=good.indptr + 1),
    }
    for message, broken in cases.items():
        with pytest.raises(ValueError, match=message):
            _core.mlp_forward_sparse(broken.indptr, broken.indices, broken.values, 10,
                                     model.weights, model.biases, "relu")
    with pytest.raises(TypeError, match="int64"):
        _core.mlp_forward_sparse(good.indptr.astype(np.int32), good.indices, good.values, 10,
                                 model.weights, model.biases, "relu")


def test_rows_of_sparse_input():
    X = random_csr(12, 9, 0.3, seed=8)
    S = sparse_features(X, "X", np.float64, 9)
    index = np.array([3, 0, 11, 3])
    part = S.rows(index)
    dense = sp.csr_matrix((part.values, part.indices, part.indptr), shape=part.shape).toarray()
    np.testing.assert_array_equal(dense, X.toarray()[index])
    assert isinstance(part, SparseInput)


@pytest.mark.slow
def test_large_vocabulary_trains_without_densifying():
    """A 65,536 × 65,536 CSR matrix (100 non-zeros a row; dense it would be 16 GiB) trains
    the [65536, 256, 2] net for one epoch in well under 1.5 GB (peak resident memory of a
    fresh process)."""
    script = textwrap.dedent("""
        import resource, numpy as np, scipy.sparse as sp, fastmlp
        n = vocab = 65536
        rng = np.random.default_rng(0)
        cols = rng.integers(0, vocab, (n, 100)).astype(np.int32).ravel()
        X = sp.csr_matrix((rng.integers(1, 4, n * 100).astype(np.float32), cols,
                           np.arange(0, n * 100 + 1, 100)), shape=(n, vocab))
        y = rng.integers(0, 2, n)
        model = fastmlp.MLP([vocab, 256, 2], seed=0)
        model.fit(X, y, epochs=1, batch_size=64, optimizer=fastmlp.SGD(lr=0.01), seed=0)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    peak = int(out.stdout.split()[-1])
    assert peak < 1.0e9, f"peak resident memory {peak / 1e9:.2f} GB"


def test_sentiment_example_sparse_equals_dense(capsys):
    """examples/sentiment_bag_of_words.py, small: the sparse and dense models agree."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "examples" / "sentiment_bag_of_words.py"
    spec = importlib.util.spec_from_file_location("sentiment_bag_of_words", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--reviews", "400"])
    out = capsys.readouterr().out
    assert "agree on 100.0 % of the test reviews" in out
    accuracies = [float(line.split("test accuracy ")[1].split(",")[0])
                  for line in out.splitlines() if "test accuracy" in line]
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1]
