"""int8 inference's dynamic activation scales, one per row (sample): the quantization of each
row against NumPy on every int8 path, and a row's prediction the same bits alone as inside any
batch (scikit-learn's check_methods_subset_invariance, exactly)."""

import numpy as np
import pytest

from fastmlp import MLP, _testing, ops
from test_quantized import reference_forward, reference_quantize, reference_row_params

F32 = np.float32


@pytest.fixture(params=ops.supported_int8_paths())
def int8_path(request):
    with _testing.int8_path(request.param):
        yield request.param


def awkward_rows(M, K, seed):
    """Rows of very different ranges: all positive, all negative, all zero, tiny, huge, mixed."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, K)).astype(F32)
    kinds = [lambda r: r, lambda r: np.abs(r) + 1, lambda r: -np.abs(r) * 7, lambda r: r * 0,
             lambda r: r * F32(1e-30), lambda r: r * F32(1e30), lambda r: r * 300 + 20]
    for i in range(M):
        X[i] = kinds[i % len(kinds)](X[i])
    return X


@pytest.mark.parametrize("M", [1, 2, 7, 13, 16, 37])  # (16 rows a step on AVX512-VNNI)
@pytest.mark.parametrize("K", [1, 3, 15, 16, 17, 63, 64, 65, 130, 784])
def test_each_row_is_quantized_with_its_own_range(int8_path, M, K):
    X = awkward_rows(M, K, seed=M * 1000 + K)
    scale, zero = reference_row_params(X)
    expected = reference_quantize(X, scale, zero)
    for view in (X, X[:, ::1].copy(order="F")):
        Xq, got_scale, got_zero, nonfinite = _testing.quantize_rows_dynamic(view)
        np.testing.assert_array_equal(got_scale, scale)
        np.testing.assert_array_equal(got_zero, zero)
        np.testing.assert_array_equal(Xq, expected)
        assert not nonfinite.any()
    # Given ranges (the epilogue's, for a hidden layer): the same rows, X not looked at for them.
    ranges = np.stack([np.minimum(X.min(axis=1), 0), np.maximum(X.max(axis=1), 0)], axis=1)
    Xq, got_scale, got_zero, nonfinite = _testing.quantize_rows_dynamic(X, ranges)
    np.testing.assert_array_equal(Xq, expected)
    np.testing.assert_array_equal(got_scale, scale)
    wide = ranges * 2
    Xq, got_scale, got_zero, _ = _testing.quantize_rows_dynamic(X, wide)
    wide_scale, wide_zero = reference_row_params(np.concatenate([wide, X], axis=1))
    np.testing.assert_array_equal(got_scale, wide_scale)
    np.testing.assert_array_equal(Xq, reference_quantize(X, wide_scale, wide_zero))


@pytest.mark.parametrize("K", [1, 16, 17, 64, 65, 130])
def test_non_finite_rows_are_reported_one_by_one(int8_path, K):
    X = awkward_rows(9, K, seed=K)
    expected = reference_quantize(X, *reference_row_params(X))
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[2, 0], Y[5, K - 1], Y[7, K // 2] = bad, bad, bad
        Xq, _, _, nonfinite = _testing.quantize_rows_dynamic(Y)
        assert list(np.flatnonzero(nonfinite)) == [2, 5, 7], bad
        good = [0, 1, 3, 4, 6, 8]
        np.testing.assert_array_equal(Xq[good], expected[good])
    Y = np.vstack([X] * 3)  # 27 rows: a step of 16 and a tail
    for row in (1, 20):
        for column, bad in ((0, -np.inf), (1, np.inf)):
            ranges = np.zeros((27, 2), F32)
            ranges[row, column] = bad
            assert list(np.flatnonzero(_testing.quantize_rows_dynamic(Y, ranges)[3])) == [row]


# Nets with last layers of ≤ 16, ≤ 32 and more outputs (one 16- or 32-wide block of its
# kernels, or several), activations whose range comes from the epilogue (relu, identity) or
# from a pass (tanh), awkward widths.
@pytest.mark.parametrize("sizes, activation", [([784, 256, 256, 10], "relu"),
                                               ([30, 17, 5], "identity"),
                                               ([11, 64, 3, 7, 2], "tanh"),
                                               ([19, 70, 130, 23], "relu"),
                                               ([13, 40, 81], "relu"),
                                               ([9, 33, 50, 64], "identity")])
def test_a_rows_prediction_is_the_same_alone_and_in_any_batch(int8_path, sizes, activation):
    rng = np.random.default_rng(len(sizes))
    model = MLP(sizes, activation=activation, seed=3)
    X = awkward_rows(37, sizes[0], seed=5)[rng.permutation(37)]
    X[:, : sizes[0] // 2] *= 3  # (not only the row kinds: columns of different spreads)
    quantized = model.quantize()
    whole = quantized.forward(X)
    np.testing.assert_allclose(whole, reference_forward(model, [None] * (len(sizes) - 2), X,
                                                        activation),
                               rtol=0, atol=(2e-5 if activation != "tanh" else 2e-2)
                               * np.abs(whole).max())
    for i in range(len(X)):
        np.testing.assert_array_equal(quantized.forward(X[i:i + 1]), whole[i:i + 1])
    for start, stop in [(0, 3), (4, 9), (2, 13), (5, 17), (0, 16), (20, 37), (1, 36)]:
        np.testing.assert_array_equal(quantized.forward(X[start:stop]), whole[start:stop])
    if model.is_classifier:
        proba = quantized.predict_proba(X)
        for i in (0, 11, 36):
            np.testing.assert_array_equal(quantized.predict_proba(X[i:i + 1]), proba[i:i + 1])


def test_an_outlier_row_changes_nothing_of_its_batch_mates(int8_path):
    """Per-tensor scales let one large row coarsen every other row's quantization."""
    model = MLP([20, 16, 3], seed=0)
    X = np.random.default_rng(0).normal(size=(6, 20)).astype(F32)
    outlier = X.copy()
    outlier[3] *= 1000
    quantized = model.quantize()
    keep = [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(quantized.forward(outlier)[keep], quantized.forward(X)[keep])


def test_an_overflowing_row_gives_nan_only_for_itself(int8_path):
    model = MLP([4, 8, 8, 3], seed=0)
    model.weights[0] = model.weights[0] * 1e30
    X = np.random.default_rng(1).normal(size=(5, 4)).astype(F32)
    X[2] = 1e10  # the first hidden layer's outputs overflow float32 for this row only
    quantized = model.quantize()
    logits = quantized.forward(X)
    assert np.isnan(logits[2]).all()
    assert np.isfinite(logits[[0, 1, 3, 4]]).all()
    np.testing.assert_array_equal(logits[[0, 1, 3, 4]], quantized.forward(X[[0, 1, 3, 4]]))
