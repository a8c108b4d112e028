"""Training from disk: the block-shuffled order (its shape, its seed), fit on a memory-mapped
X against the same rows in memory in that order, the reader thread's lifetime, and Parquet
streaming (pyarrow, optional)."""

import hashlib
import threading

import numpy as np
import pytest

import fastmlp
from fastmlp import MLP, Adam
from fastmlp import _data_sources
from fastmlp._shuffle import block_shuffle_plan, block_shuffled_order, fixed_blocks
from fastmlp._training import epoch_order, epoch_seeds

N, F = 1000, 12


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 40 rows of F float32 (1,920 bytes), windows of 3: many windows, none a
    multiple of the batch sizes used here, so parts carry rows across windows."""
    monkeypatch.setattr(_data_sources, "BLOCK_BYTES", 40 * F * 4)
    monkeypatch.setattr(_data_sources, "WINDOW_BLOCKS", 3)
    return 40, 3


def data(seed=0, n=N, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, F)).astype(dtype)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    return X, y


def mapped(tmp_path, X, name="X.npy"):
    path = tmp_path / name
    np.save(path, X)
    return np.load(path, mmap_mode="r"), path


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))


# ---- the order ------------------------------------------------------------------------------

@pytest.mark.parametrize("n, block_rows, window", [(1000, 40, 3), (997, 64, 4), (50, 7, 1),
                                                   (30, 40, 3)])
def test_block_shuffled_order_is_a_permutation_of_contiguous_blocks_within_windows(
        n, block_rows, window):
    lengths = fixed_blocks(n, block_rows)
    order = block_shuffled_order(lengths, window, seed=5)
    assert np.array_equal(np.sort(order), np.arange(n))
    window_rows = block_rows * window
    # Cut the order at the plan's window sizes (the one short block may be in any window).
    sizes = [int(lengths[w.blocks].sum()) for w in block_shuffle_plan(lengths, window, 5)]
    assert all(size <= window_rows for size in sizes)
    spans = np.split(order, np.cumsum(sizes)[:-1])
    for span in spans:
        # A window is whole blocks: each block's rows all land in it, nowhere else.
        blocks = np.unique(span // block_rows)
        assert len(blocks) <= window
        assert sorted(span) == sorted(np.concatenate(
            [np.arange(b * block_rows, min((b + 1) * block_rows, n)) for b in blocks]))
    # Every row sits within one window of positions of the other rows of its block.
    block_of = order // block_rows
    for b in range(len(lengths)):
        positions = np.flatnonzero(block_of == b)
        assert positions.max() - positions.min() < window_rows


def test_block_shuffled_order_is_reproducible_from_the_seed_and_shuffles():
    lengths = fixed_blocks(5000, 50)
    first = block_shuffled_order(lengths, 4, seed=11)
    assert np.array_equal(first, block_shuffled_order(lengths, 4, seed=11))
    assert not np.array_equal(first, block_shuffled_order(lengths, 4, seed=12))
    assert not np.array_equal(first, np.arange(5000))
    # Blocks move: the first window is not the start of the file (1 in 25 by chance).
    assert set(first[:200] // 50) != {0, 1, 2, 3} or set(
        block_shuffled_order(lengths, 4, seed=13)[:200] // 50) != {0, 1, 2, 3}
    assert np.array_equal(block_shuffled_order(lengths, 4, seed=11, shuffle=False),
                          np.arange(5000))


def test_window_larger_than_the_data_mixes_all_rows():
    order = block_shuffled_order(fixed_blocks(400, 10), 100, seed=1)
    # Neighbours in the order come from different blocks most of the time (1 in 40 by chance).
    assert np.mean(order[1:] // 10 == order[:-1] // 10) < 0.2


# ---- fit on a memory-mapped X -----------------------------------------------------------------

def fit_in_memory_in_block_order(X, y, block_rows, window, seed, epochs, weights=None,
                                 **model_args):
    """The reference: the same rows in memory, each epoch in the block-shuffled order fit
    draws from `seed`, trained in row order."""
    model = MLP([F, 16, 3], seed=2, **model_args)
    optimizer = Adam(lr=1e-2)
    seeds = epoch_seeds(seed)
    for _ in range(epochs):
        order = block_shuffled_order(fixed_blocks(len(X), block_rows), window, next(seeds))
        model.fit(X[order], y[order], epochs=1, batch_size=32, shuffle=False,
                  optimizer=optimizer,
                  sample_weight=None if weights is None else weights[order])
    return model


def test_memory_mapped_fit_trains_in_the_block_shuffled_order(tmp_path, small_blocks):
    X, y = data()
    Xm, _ = mapped(tmp_path, X)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, N)
    model = MLP([F, 16, 3], seed=2)
    history = model.fit(Xm, y, epochs=3, batch_size=32, optimizer=Adam(lr=1e-2), seed=7,
                        sample_weight=weights)
    reference = fit_in_memory_in_block_order(X, y, *small_blocks, seed=7, epochs=3,
                                             weights=weights)
    assert same_weights(model, reference)
    assert history.epochs == 3 and history.loss[-1] < history.loss[0]


def test_memory_mapped_regression_and_shuffle_block_on_an_in_memory_array(tmp_path,
                                                                          small_blocks):
    X, _ = data()
    targets = np.stack([X[:, 0] - X[:, 3], X[:, 1] * 0.5, X[:, 2]], axis=1)
    model = MLP([F, 16, 3], seed=2, output="identity")
    model.fit(X, targets, epochs=2, batch_size=32, optimizer=Adam(lr=1e-2), seed=3,
              shuffle="block")
    reference = fit_in_memory_in_block_order(X, targets, *small_blocks, seed=3, epochs=2,
                                             output="identity")
    assert same_weights(model, reference)


def test_memory_mapped_fit_without_shuffle_or_with_full_shuffle_is_the_in_memory_fit(
        tmp_path, small_blocks):
    X, y = data(dtype=np.float64)  # a float64 file for a float32 model: converted per window
    Xm, _ = mapped(tmp_path, X)
    for shuffle in (False, "full"):
        ours, theirs = MLP([F, 16, 3], seed=2), MLP([F, 16, 3], seed=2)
        ours.fit(Xm, y, epochs=2, batch_size=48, shuffle=shuffle, seed=4)
        theirs.fit(X, y, epochs=2, batch_size=48, shuffle=bool(shuffle), seed=4)
        assert same_weights(ours, theirs), shuffle


def test_in_memory_default_is_still_the_engines_full_permutation():
    X, y = data()
    model, reference = MLP([F, 16, 3], seed=2), MLP([F, 16, 3], seed=2)
    model.fit(X, y, epochs=1, batch_size=N, seed=9)
    order = epoch_order(N, next(epoch_seeds(9)))
    reference.fit(X[order], y[order], epochs=1, batch_size=N, shuffle=False)
    # One batch of all rows: the order changes only the summation order, so compare closely.
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model2 = MLP([F, 16, 3], seed=2)
    model2.fit(X, y, epochs=2, batch_size=32, seed=9, shuffle="full")
    model3 = MLP([F, 16, 3], seed=2)
    model3.fit(X, y, epochs=2, batch_size=32, seed=9)
    assert same_weights(model2, model3)


def test_the_file_is_read_only_and_unchanged(tmp_path, small_blocks):
    X, y = data()
    Xm, path = mapped(tmp_path, X)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    MLP([F, 16, 3], seed=2).fit(Xm, y, epochs=2, batch_size=32, seed=1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not Xm.flags.writeable


@pytest.mark.parametrize("view", ["slice", "copy-on-write", "raw mmap", "memmap offset"])
def test_every_kind_of_mapping_trains_on_the_rows_it_shows(tmp_path, small_blocks, view):
    """The file is read with pread at the view's own offset, or through the mapping where
    the file does not hold what the array shows (copy-on-write) or is unknown (mmap.mmap)."""
    import mmap
    X, y = data()
    Xm, path = mapped(tmp_path, X)
    if view == "slice":
        shown, labels = Xm[137:], y[137:]
    elif view == "copy-on-write":
        shown = np.load(path, mmap_mode="c")
        shown[5:300] *= 2  # in this process's pages only, not in the file
        labels = y
    elif view == "raw mmap":
        with open(path, "rb") as f:
            raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        shown, labels = np.frombuffer(raw, dtype=np.float32, offset=128).reshape(N, F), y
    else:
        raw_path = tmp_path / "raw.bin"
        raw_path.write_bytes(b"\0" * 1000 + X.tobytes())
        shown, labels = np.memmap(raw_path, dtype=np.float32, mode="r", offset=1000,
                                  shape=(N, F))[10:], y[10:]
    expected = np.array(shown)
    assert np.array_equal(expected[:len(X) - 137], X[137:]) or view != "slice"
    model = MLP([F, 16, 3], seed=2)
    model.fit(shown, labels, epochs=2, batch_size=32, seed=6, optimizer=Adam(lr=1e-2))
    reference = fit_in_memory_in_block_order(expected, labels, *small_blocks, seed=6, epochs=2)
    assert same_weights(model, reference)


def test_non_finite_rows_of_a_mapped_file_are_named_before_training(tmp_path, small_blocks):
    X, y = data()
    X[777, 3] = np.nan
    Xm, _ = mapped(tmp_path, X)
    model = MLP([F, 16, 3], seed=2)
    before = [w.copy() for w in model.weights]
    with pytest.raises(ValueError, match="row 777"):
        model.fit(Xm, y, epochs=1, batch_size=32)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.weights))
    big = data(dtype=np.float64)[0]
    big[555, 0] = 1e300  # finite in float64, beyond float32
    with pytest.raises(ValueError, match="float32 range.*row 555"):
        model.fit(mapped(tmp_path, big, "big.npy")[0], y, epochs=1)


@pytest.mark.parametrize("value, error", [("blocks", ValueError), ("FULL", ValueError),
                                          (1, TypeError), (None, TypeError)])
def test_bad_shuffle_values_are_refused(value, error):
    X, y = data(n=50)
    with pytest.raises(error, match="shuffle must be True, False, 'block' or 'full'"):
        MLP([F, 4, 3]).fit(X, y, shuffle=value)


def test_block_shuffle_of_sparse_input_is_refused_and_y_is_required():
    sparse = pytest.importorskip("scipy.sparse")
    X, y = data(n=50)
    with pytest.raises(ValueError, match="needs dense X"):
        MLP([F, 4, 3]).fit(sparse.csr_matrix(X), y, shuffle="block")
    with pytest.raises(TypeError, match="fit needs y"):
        MLP([F, 4, 3]).fit(X, None)


def reader_threads():
    return [t for t in threading.enumerate() if t.name == "fastmlp-reader"]


def test_the_reader_thread_stops_when_fit_stops_early(tmp_path, small_blocks):
    X, y = data()
    Xm, _ = mapped(tmp_path, X)

    def fail(model, history):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        MLP([F, 16, 3]).fit(Xm, y, epochs=3, batch_size=32, callbacks=[fail])
    history = MLP([F, 16, 3]).fit(Xm, y, epochs=5, batch_size=32,
                                  callbacks=[lambda model, history: True])
    assert history.epochs == 1
    with pytest.raises(FloatingPointError):  # diverges within the first window
        MLP([F, 16, 3], seed=0).fit(Xm * np.float32(1e18), y, epochs=1, batch_size=32,
                                    shuffle="block")
    assert reader_threads() == []


def test_checkpoint_resume_with_block_shuffle_equals_an_uninterrupted_run(tmp_path,
                                                                          small_blocks):
    X, y = data()
    Xm, _ = mapped(tmp_path, X)
    full = MLP([F, 16, 3], seed=2)
    full.fit(Xm, y, epochs=4, batch_size=32, seed=5, optimizer=Adam(lr=1e-2))
    checkpoint = tmp_path / "run.ckpt"
    part = MLP([F, 16, 3], seed=2)
    part.fit(Xm, y, epochs=2, batch_size=32, seed=5, optimizer=Adam(lr=1e-2),
             checkpoint=checkpoint)
    resumed = MLP([F, 16, 3], seed=2)
    resumed.fit(Xm, y, epochs=4, batch_size=32, seed=5, checkpoint=checkpoint, resume=True)
    assert same_weights(resumed, full)
    with pytest.raises(ValueError, match="shuffle="):
        MLP([F, 16, 3], seed=2).fit(Xm, y, epochs=4, batch_size=32, seed=5,
                                    shuffle="full", checkpoint=checkpoint, resume=True)


# ---- Parquet ----------------------------------------------------------------------------------

def write_parquet(path, X, y, row_group_size):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({**{f"f{j}": X[:, j] for j in range(X.shape[1])}, "label": y})
    pq.write_table(table, path, row_group_size=row_group_size)
    return [f"f{j}" for j in range(X.shape[1])]


def test_parquet_source_streams_row_groups_in_the_block_shuffled_order(tmp_path):
    X, y = data(dtype=np.float64)
    path = tmp_path / "train.parquet"
    features = write_parquet(path, X, y, row_group_size=70)
    source = fastmlp.ParquetSource(path, features=features, target="label",
                                   window_row_groups=3)
    assert source.shape == (N, F)
    model = MLP([F, 16, 3], seed=2)
    model.fit(source, None, epochs=3, batch_size=32, optimizer=Adam(lr=1e-2), seed=8)
    reference = fit_in_memory_in_block_order(X, y, 70, 3, seed=8, epochs=3)
    assert same_weights(model, reference)
    # Columns in another order than the file's are read in the order given.
    swapped = fastmlp.ParquetSource(path, features=features[::-1], target="label")
    assert swapped.features == features[::-1]


def test_parquet_shards_split_the_row_groups_between_ranks(tmp_path):
    X, y = data()
    path = tmp_path / "train.parquet"
    write_parquet(path, X, y, row_group_size=100)
    shards = [fastmlp.ParquetSource(path, target="label", rank=r, size=3) for r in range(3)]
    assert [s.n_rows for s in shards] == [400, 300, 300]
    assert [list(s.row_groups) for s in shards] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]

    class Comm:  # what ParquetSource reads of an mpi4py communicator
        def Get_rank(self):
            return 1

        def Get_size(self):
            return 3

    assert list(fastmlp.ParquetSource(path, target="label", comm=Comm()).row_groups) == [1, 4, 7]
    # One rank trains on its shard only: the same as its rows in memory, in file order.
    model, reference = MLP([F, 8, 3], seed=1), MLP([F, 8, 3], seed=1)
    model.fit(shards[1], None, epochs=1, batch_size=25, shuffle=False)
    rows = np.concatenate([np.arange(g * 100, g * 100 + 100) for g in (1, 4, 7)])
    reference.fit(X[rows], y[rows], epochs=1, batch_size=25, shuffle=False)
    assert same_weights(model, reference)


def test_parquet_source_errors(tmp_path):
    X, y = data(n=100)
    path = tmp_path / "train.parquet"
    features = write_parquet(path, X, y, row_group_size=30)
    with pytest.raises(ValueError, match="no column 'y'"):
        fastmlp.ParquetSource(path)
    with pytest.raises(ValueError, match="features must be columns"):
        fastmlp.ParquetSource(path, features=["f0", "nope"], target="label")
    with pytest.raises(ValueError, match="rank must be in"):
        fastmlp.ParquetSource(path, target="label", rank=3, size=3)
    with pytest.raises(ValueError, match="no rows for rank 4"):
        fastmlp.ParquetSource(path, target="label", rank=4, size=5)
    source = fastmlp.ParquetSource(path, target="label")
    with pytest.raises(ValueError, match="pass y=None"):
        MLP([F, 4, 3]).fit(source, y)
    with pytest.raises(ValueError, match="shuffle='full' is not possible"):
        MLP([F, 4, 3]).fit(source, None, shuffle="full")
    with pytest.raises(ValueError, match="13 feature columns but the model expects 12"):
        MLP([F, 4, 3]).fit(fastmlp.ParquetSource(path, features=features + ["f0"],
                                                 target="label"), None)
    with pytest.raises(ValueError, match="labels|class"):
        MLP([F, 4, 2]).fit(source, None)  # label 2 is not a class of a 2-class model
    holes = tmp_path / "holes.parquet"
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    column = pa.array([1.0, None, 3.0])
    pq.write_table(pa.table({"a": column, "y": pa.array([0, 1, 0])}), holes)
    with pytest.raises(ValueError, match="column 'a' has missing values"):
        MLP([1, 2, 2]).fit(fastmlp.ParquetSource(holes), None)
    assert reader_threads() == []


@pytest.mark.parametrize("column", ["strings", "numeric strings", "timestamps", "decimals",
                                    "dictionary", "lists"])
def test_parquet_source_refuses_non_numeric_columns_when_built(tmp_path, column):
    """Numeric strings, timestamps and decimals were cast silently (timestamps to nanoseconds:
    the model trained on 1.6e18s), other strings and lists failed in NumPy mid-epoch."""
    import datetime
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    n = 6
    values = {"strings": pa.array([f"x{i}" for i in range(n)]),
              "numeric strings": pa.array([f"{i}.5" for i in range(n)]),
              "timestamps": pa.array([datetime.datetime(2020, 1, 1 + i) for i in range(n)]),
              "decimals": pa.array([i for i in range(n)], pa.decimal128(5, 2)),
              "dictionary": pa.array(["u", "v"] * (n // 2)).dictionary_encode(),
              "lists": pa.array([[1.0, 2.0]] * n)}[column]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(n, dtype=float), "b": values,
                             "y": np.arange(n) % 2}), path)
    with pytest.raises(TypeError, match="column 'b' holds .*must be numeric columns"):
        fastmlp.ParquetSource(path)
    pq.write_table(pa.table({"a": np.arange(n, dtype=float), "y": values}), path)
    with pytest.raises(TypeError, match="column 'y' holds .*must be numeric columns"):
        fastmlp.ParquetSource(path)


def test_parquet_source_refuses_a_string_as_the_feature_list(tmp_path):
    """features="ab" was taken as the columns "a" and "b"."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0], "ab": [5.0, 6.0], "y": [0, 1]}),
                   path)
    with pytest.raises(TypeError, match="features must be a list of column names"):
        fastmlp.ParquetSource(path, features="ab")
    assert fastmlp.ParquetSource(path, features=["ab"]).features == ["ab"]


def test_the_engine_refuses_an_order_outside_the_data():
    """The private engine call the reader uses checks every row id before it trains."""
    from fastmlp._training import new_trainer
    X, y = data(n=20)
    model = MLP([F, 4, 3], seed=0)
    trainer = new_trainer(model, fastmlp.SGD(), 8, 0.0)
    for order, match in (([0, 20], r"order\[1\] = 20 is not a row of the 20 rows"),
                         ([-1], r"order\[0\] = -1"), ([], "at least one row"),
                         ([[1, 2]], "1-D")):
        with pytest.raises(ValueError, match=match):
            trainer.begin_epoch_with_order(np.array(order, dtype=np.int64), 20)
    trainer.begin_epoch_with_order(np.array([3, 3, 19], dtype=np.int64), 20)
    with pytest.raises(ValueError, match="X must be"):
        trainer.run(X[:19], y[:19], None, 8, 10)
    result = trainer.run(X, y, None, 8, 10)
    assert (result.samples, result.epoch_done) == (3, True)


@pytest.mark.parametrize("epoch_length, batch", [(1000, 32), (1437, 32), (2500, 64), (1001, 7)])
def test_a_short_shard_streams_its_order_repeated_up_to_the_epoch_length(
        tmp_path, small_blocks, epoch_length, batch):
    # fit(comm=...) with shards of unequal length: a memory-mapped shard shorter than the
    # largest reads its block-shuffled order again from the start, and the parts cut it
    # every `batch` rows as np.resize(order, epoch_length) (what the ranks' steps need).
    X, y = data()
    Xm, _ = mapped(tmp_path, X)
    source = _data_sources.ArrayBlocks(Xm, "X", np.float32, F).labelled(y, None)
    expected = np.resize(block_shuffled_order(source.block_lengths, 3, 11), epoch_length)
    seen, cuts = [], []
    with _data_sources.epoch_parts(source, None, None, "block", 11, batch,
                                   epoch_length) as parts:
        for part in parts:
            rows = part.X[part.order] if part.order is not None else part.X
            seen.append(np.asarray(rows))
            cuts.append(len(rows))
    np.testing.assert_array_equal(np.concatenate(seen), X[expected])
    assert all(c % batch == 0 for c in cuts[:-1]) and sum(cuts) == epoch_length


def test_shard_rows_splits_contiguously_and_evenly():
    for n, size in ((10, 3), (2, 4), (0, 2), (159, 2)):
        slices = [fastmlp.shard_rows(n, rank=r, size=size) for r in range(size)]
        lengths = [s.stop - s.start for s in slices]
        assert [s.start for s in slices[1:]] == [s.stop for s in slices[:-1]]
        assert slices[0].start == 0 and slices[-1].stop == n
        assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError, match="0 <= rank < size"):
        fastmlp.shard_rows(10, rank=3, size=3)


@pytest.mark.parametrize("comm", ["world", 2, object()])
def test_shard_rows_and_parquet_source_refuse_what_is_not_a_communicator(tmp_path, comm):
    """They raised AttributeError ('str' object has no attribute 'Get_rank'), as fit(comm=...)
    does not (TypeError)."""
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fastmlp.shard_rows(10, comm)
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [0, 1]}), tmp_path / "t.parquet")
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fastmlp.ParquetSource(tmp_path / "t.parquet", comm=comm)


def test_shard_rows_and_parquet_source_refuse_comm_null(tmp_path):
    """MPI.COMM_NULL raised mpi4py's bare Exception with MPICH's error stack."""
    MPI = pytest.importorskip("mpi4py.MPI")
    with pytest.raises(ValueError, match="COMM_NULL"):
        fastmlp.shard_rows(10, MPI.COMM_NULL)
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [0, 1]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="COMM_NULL"):
        fastmlp.ParquetSource(tmp_path / "t.parquet", comm=MPI.COMM_NULL)
    assert fastmlp.shard_rows(10, MPI.COMM_SELF) == slice(0, 10)


def test_parquet_values_beyond_float32_are_reported_as_such(tmp_path):
    """A float64 column holding 1e300 was reported as 'contains NaN or infinity' (the cast to
    the float32 model overflowed before the check)."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    a = np.arange(8, dtype=float)
    for value, message in ((1e300, r"outside the float32 range \(first at row 5, column 0: "
                                   r"1e\+300"),
                           (np.nan, r"contains NaN or infinity \(first at row 5\)")):
        a[5] = value
        pq.write_table(pa.table({"a": a, "b": np.ones(8), "y": np.arange(8) % 2}), path,
                       row_group_size=4)
        with pytest.raises(ValueError, match=message):
            MLP([2, 3, 2]).fit(fastmlp.ParquetSource(path), None, epochs=1, batch_size=4)
