"""Run by tests/test_distributed.py under ``mpiexec -n 2`` (shared_parameters also -n 3):
data-parallel fit against one process on the same global batches, and the ways a job must
end. Usage: MODE [DIR]."""

import sys

import numpy as np
from mpi4py import MPI

import fastmlp
from fastmlp import MLP, _distributed, _exchange, _node_exchange
from fastmlp.optim import SGD, Adam

comm = MPI.COMM_WORLD
rank, ranks = comm.Get_rank(), comm.Get_size()
SIZES = [12, 16, 8, 3]
BATCH = 8  # per rank


def shard(n_rows, seed, dtype):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, SIZES[0])).astype(dtype)
    y = rng.integers(0, SIZES[-1], n_rows)
    w = rng.uniform(0.5, 2.0, n_rows).astype(dtype)
    return X, y, w


def global_batches(shards, epochs, seed, shuffle, rank_order=None):
    """The rows one process must see, in its batches of ranks × BATCH rows, to take the
    same steps as the ranks: step s of the global run is rank 0's batch s, then rank 1's.
    rank_order(n_rows, epoch_length, epoch_seed, rank): a rank's epoch (default: in memory)."""
    epoch_length = max(len(X) for X, _, _ in shards)
    rank_order = rank_order or (lambda n, length, epoch_seed, r: _distributed.rank_epoch_order(
        n, length, epoch_seed, r, shuffle))
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(epochs):
        epoch_seed = int(rng.integers(0, 2**63))
        orders = [rank_order(len(X), epoch_length, epoch_seed, r)
                  for r, (X, _, _) in enumerate(shards)]
        for start in range(0, epoch_length, BATCH):
            for r, order in enumerate(orders):
                parts.append((r, order[start:start + BATCH]))
    return [np.concatenate([shards[r][k][rows] for r, rows in parts]) for k in range(3)]


def equivalence(exchange):
    failures = []
    _exchange.NODE_EXCHANGE = exchange == "shared_memory"
    used = []  # whether each fit exchanged over shared memory
    create = _exchange.Exchange.create

    def recording(*args):
        exchange = create(*args)
        used.append(exchange.node is not None)
        return exchange
    _exchange.Exchange.create = recording
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        # (Plain SGD's update is sharded over the ranks of a node: _node_exchange.py.)
        for name, make in (("sgd", lambda: SGD(lr=0.05, momentum=0.9)),
                           ("plain sgd", lambda: SGD(lr=0.05)),
                           ("adam", lambda: Adam(lr=1e-3))):
            for unequal, weighted, alpha in ((False, False, 0.0), (True, True, 1e-3)):
                n_rows = 80 if rank == 0 or not unequal else 53  # 10 steps/epoch × 2 epochs
                X, y, w = shard(n_rows, 100 + rank, dtype)
                X_val, y_val, _ = shard(17 + 5 * rank, 200 + rank, dtype)
                # Unequal shards also take the allreduce in 256-byte buckets (many per step).
                _exchange.BUCKET_BYTES = 256 if unequal else 25 * 2**20
                model = MLP(SIZES, seed=rank, dtype=dtype)  # rank 0's weights must win
                initial = comm.bcast([a.copy() for a in model.weights + model.biases])
                history = model.fit(X, y, epochs=2, batch_size=BATCH, optimizer=make(),
                                    seed=7, sample_weight=w if weighted else None,
                                    alpha=alpha, validation_data=(X_val, y_val), comm=comm)
                params = [a for a in model.weights + model.biases]
                everyone = comm.gather((params, (X, y, w), (X_val, y_val)))
                if rank != 0:
                    continue
                for other, _, _ in everyone[1:]:  # the replicas are bitwise identical
                    if not all(np.array_equal(a, b) for a, b in zip(params, other)):
                        failures.append(f"{name} {dtype.__name__}: replicas differ")
                gX, gy, gw = global_batches([s for _, s, _ in everyone], 2, 7, True)
                reference = MLP(SIZES, seed=0, dtype=dtype)
                reference.weights = [a.copy() for a in initial[:len(SIZES) - 1]]
                reference.biases = [a.copy() for a in initial[len(SIZES) - 1:]]
                val = [np.concatenate(parts) for parts in zip(*[v for _, _, v in everyone])]
                ref_history = reference.fit(gX, gy, epochs=1, batch_size=ranks * BATCH,
                                            shuffle=False, optimizer=make(),
                                            sample_weight=gw if weighted else None,
                                            alpha=alpha)
                label = f"{name} {dtype.__name__} unequal={unequal} weighted={weighted}"
                for a, b in zip(params, reference.weights + reference.biases):
                    error = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))
                    if not error <= rtol:
                        failures.append(f"{label}: weights differ by {error:.3g} (rel)")
                # Two epochs here are one in the reference: compare the mean loss over both.
                mean_loss = np.mean(history.loss)
                if not np.isclose(mean_loss, ref_history.loss[0], rtol=1e-4):
                    failures.append(f"{label}: loss {mean_loss} vs {ref_history.loss[0]}")
                val_loss = reference.loss(*val)
                if not np.isclose(history.val_loss[-1], val_loss, rtol=1e-4):
                    failures.append(f"{label}: val_loss {history.val_loss[-1]} vs {val_loss}")
                if used[-1] != _exchange.NODE_EXCHANGE:
                    failures.append(f"{label}: the exchange was not {exchange}")
                print(f"checked {label}", flush=True)
    if rank == 0:
        print(f"exchange: {'shared memory' if _exchange.NODE_EXCHANGE else 'allreduce'}")
        print("\n".join(failures) or "EQUIVALENT", flush=True)
        sys.exit(1 if failures else 0)


def estimators():
    """MLPClassifier / MLPRegressor fit(comm=...) against one process on the interleaved
    batches (shuffle=False: rank r's batch s is its rows s·B … s·B + B − 1)."""
    import warnings
    from fastmlp import MLPClassifier, MLPRegressor
    X, y, _ = shard(64, 300 + rank, np.float32)
    y = y.astype(str)
    if rank == 1:
        y[5] = "rare"  # a class only rank 1 has: classes_ is the union
    targets = X[:, :2] @ np.array([[1.0, -2.0], [0.5, 1.0]], dtype=np.float32)
    common = dict(hidden_layer_sizes=(16,), max_iter=3, batch_size=BATCH, shuffle=False,
                  solver="adam", learning_rate_init=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after max_iter epochs
        fitted = [MLPClassifier(random_state=rank, **common).fit(X, y, comm=comm),
                  MLPRegressor(random_state=rank, **common).fit(X, targets, comm=comm)]
        everyone = comm.gather((X, y, targets, [f.coefs_ + f.intercepts_ for f in fitted]))
        if rank != 0:
            return
        order = [(r, np.arange(s, s + BATCH)) for s in range(0, 64, BATCH) for r in range(ranks)]
        gX, gy, gt = (np.concatenate([everyone[r][k][rows] for r, rows in order])
                      for k in range(3))
        single = dict(common, batch_size=ranks * BATCH, random_state=0)
        references = [MLPClassifier(**single).fit(gX, gy), MLPRegressor(**single).fit(gX, gt)]
    failures = []
    for i, (mine, reference) in enumerate(zip(fitted, references)):
        for other in everyone[1:]:
            if not all(np.array_equal(a, b) for a, b in zip(other[3][i], everyone[0][3][i])):
                failures.append(f"estimator {i}: replicas differ")
        for a, b in zip(mine.coefs_ + mine.intercepts_,
                        reference.coefs_ + reference.intercepts_):
            if not np.allclose(a, b, rtol=1e-5, atol=1e-6):
                failures.append(f"estimator {i}: weights differ by {np.max(np.abs(a - b))}")
        if not np.allclose(mine.loss_curve_, reference.loss_curve_, rtol=1e-5):
            failures.append(f"estimator {i}: {mine.loss_curve_} vs {reference.loss_curve_}")
    if list(fitted[0].classes_) != sorted(set(gy)):
        failures.append(f"classes {fitted[0].classes_}")
    print("\n".join(failures) or "ESTIMATORS OK", flush=True)
    sys.exit(1 if failures else 0)


def streamed(directory):
    """fit(comm=...) on a memory-mapped .npy (each rank its X[shard_rows(...)]) and on a
    ParquetSource(comm=comm) (row groups rank, rank + ranks, ...), shards of unequal length,
    block-shuffled: each rank reads only its byte range / row groups (recorded), the
    replicas are bitwise equal and match one process on the same global batches."""
    import os
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fastmlp import _data_sources

    n_rows, group_rows = 159, [16, 15, 16, 15, 16, 15, 16, 14, 16]
    rng = np.random.default_rng(5)
    X_all = rng.standard_normal((n_rows, SIZES[0])).astype(np.float32)
    y_all = rng.integers(0, SIZES[-1], n_rows)
    npy, parquet = f"{directory}/X.npy", f"{directory}/data.parquet"
    if rank == 0:
        np.save(npy, X_all)
        table = pa.table({**{f"f{j}": X_all[:sum(group_rows), j] for j in range(SIZES[0])},
                          "y": y_all[:sum(group_rows)]})
        with pq.ParquetWriter(parquet, table.schema) as writer:
            start = 0
            for rows in group_rows:
                writer.write_table(table.slice(start, rows))
                start += rows
    comm.Barrier()

    # What each rank reads: byte ranges of X.npy (pread) and row groups of the Parquet file.
    reads, groups = [], []
    preadv = os.preadv

    def recording_preadv(fd, buffers, offset):
        n = preadv(fd, buffers, offset)
        if os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) == os.path.realpath(npy):
            reads.append((offset, offset + n))
        return n
    os.preadv = recording_preadv
    read_row_group = pq.ParquetFile.read_row_group

    def recording_read_row_group(self, i, *args, **kwargs):
        groups.append(i)
        return read_row_group(self, i, *args, **kwargs)
    pq.ParquetFile.read_row_group = recording_read_row_group
    _data_sources.BLOCK_BYTES = 5 * SIZES[0] * 4  # blocks of 5 rows, 3 per window
    _data_sources.WINDOW_BLOCKS = 3

    failures = []
    rows = fastmlp.shard_rows(n_rows, comm)
    mapped = np.load(npy, mmap_mode="r")
    source = fastmlp.ParquetSource(parquet, target="y", window_row_groups=2, comm=comm)
    for kind in ("memmap", "parquet"):
        model = MLP(SIZES, seed=rank)
        initial = comm.bcast([a.copy() for a in model.weights + model.biases])
        X, y = (mapped[rows], y_all[rows]) if kind == "memmap" else (source, None)
        history = model.fit(X, y, epochs=2, batch_size=BATCH, optimizer=Adam(lr=1e-2), seed=7,
                            shuffle=True, comm=comm)
        if kind == "memmap":  # this rank's rows, in memory for the reference
            shard = (X_all[rows], y_all[rows], np.ones(rows.stop - rows.start))
            lengths, window = _data_sources.fixed_blocks(rows.stop - rows.start, 5), 3
            header = mapped.offset
            allowed = (header + rows.start * SIZES[0] * 4, header + rows.stop * SIZES[0] * 4)
            outside = [r for r in reads if r[0] < allowed[0] or r[1] > allowed[1]]
            if outside or not reads:
                failures.append(f"rank {rank} read {outside[:3]} outside {allowed}")
        else:
            starts = np.cumsum([0] + group_rows)
            mine = list(range(rank, len(group_rows), ranks))
            picked = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in mine])
            shard = (X_all[picked], y_all[picked], np.ones(len(picked)))
            lengths, window = source.block_lengths, 2
            if set(groups) != set(mine):
                failures.append(f"rank {rank} read row groups {sorted(set(groups))}, not {mine}")
        params = [a for a in model.weights + model.biases]
        everyone = comm.gather((params, shard, lengths, window, failures))
        if rank != 0:
            continue
        failures = [f for _, _, _, _, fs in everyone for f in fs]
        for other in everyone[1:]:
            if not all(np.array_equal(a, b) for a, b in zip(params, other[0])):
                failures.append(f"{kind}: replicas differ")

        def rank_order(n, length, epoch_seed, r):
            return _distributed.rank_block_epoch_order(everyone[r][2], everyone[r][3], length,
                                                       epoch_seed, r)
        gX, gy, _ = global_batches([e[1] for e in everyone], 2, 7, True, rank_order)
        reference = MLP(SIZES, seed=0)
        reference.weights = [a.copy() for a in initial[:len(SIZES) - 1]]
        reference.biases = [a.copy() for a in initial[len(SIZES) - 1:]]
        # One fit per epoch (an epoch's last global batch may be short: a fit over both
        # would cut its batches across the epochs), Adam's state carried over.
        epoch_rows = ranks * max(len(e[1][0]) for e in everyone)
        reference_optimizer, ref_history = Adam(lr=1e-2), fastmlp.History()
        for start in range(0, len(gX), epoch_rows):
            epoch = reference.fit(gX[start:start + epoch_rows], gy[start:start + epoch_rows],
                                  epochs=1, batch_size=ranks * BATCH, shuffle=False,
                                  optimizer=reference_optimizer)
            ref_history.loss += epoch.loss
        for a, b in zip(params, reference.weights + reference.biases):
            error = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))
            if not error <= 1e-5:
                failures.append(f"{kind}: weights differ by {error:.3g} (rel)")
        if not np.allclose(history.loss, ref_history.loss, rtol=1e-4):
            failures.append(f"{kind}: loss {history.loss} vs {ref_history.loss}")
        print(f"checked {kind} {len(gX)} rows", flush=True)
    if rank == 0:
        print("\n".join(failures) or "STREAMED OK", flush=True)
        sys.exit(1 if failures else 0)


def estimators_more():
    """fit(comm=...) of the estimators with class_weight="balanced", X_val + early stopping
    (classifier and regressor: the reduced scores decide the same epochs as one process on
    the union), early stopping's own split of each shard, and solver="lbfgs" (classifier and
    weighted regressor): against one process on the concatenated data, replicas bitwise."""
    import warnings
    from fastmlp import MLPClassifier, MLPRegressor
    X, y, w = shard(64, 400 + rank, np.float64)
    X_val, y_val, _ = shard(20 + 6 * rank, 500 + rank, np.float64)
    y[: 20 + 10 * rank] = 0  # unbalanced classes, differently on each rank
    targets = X[:, :2] @ np.array([[1.0, -2.0], [0.5, 1.0]]) + 0.1 * X[:, 2:4]
    val_targets = X_val[:, :2] @ np.array([[1.0, -2.0], [0.5, 1.0]]) + 0.1 * X_val[:, 2:4]
    sgd = dict(hidden_layer_sizes=(16,), batch_size=BATCH, shuffle=False, solver="adam",
               learning_rate_init=1e-2, dtype="float64")
    stopping = dict(sgd, early_stopping=True, n_iter_no_change=2, tol=1e-3, max_iter=40)
    lbfgs = dict(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=40, alpha=1e-3,
                 dtype="float64")
    runs = {  # name: (estimator parameters, which data, fit keywords for this rank)
        "balanced": (MLPClassifier, dict(sgd, class_weight="balanced", max_iter=3), "y", {}),
        "classifier X_val": (MLPClassifier, stopping, "y", dict(X_val=X_val, y_val=y_val)),
        "regressor X_val": (MLPRegressor, stopping, "t",
                            dict(X_val=X_val, y_val=val_targets)),
        "lbfgs classifier": (MLPClassifier, dict(lbfgs, class_weight="balanced"), "y", {}),
        "lbfgs regressor": (MLPRegressor, lbfgs, "t", dict(sample_weight=w)),
    }
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after max_iter
        split = MLPClassifier(**dict(stopping, validation_fraction=0.25),
                              random_state=rank).fit(X, y, comm=comm)
        fitted = {name: kind(random_state=rank, **params).fit(
            X, y if which == "y" else targets, comm=comm, **kw)
            for name, (kind, params, which, kw) in runs.items()}
    mine = {name: f.coefs_ + f.intercepts_ for name, f in fitted.items()}
    mine["split"] = split.coefs_ + split.intercepts_
    record = {name: (getattr(f, "n_iter_", None), getattr(f, "validation_scores_", None))
              for name, f in [*fitted.items(), ("split", split)]}
    everyone = comm.gather((X, y, targets, w, X_val, y_val, val_targets, mine, record))
    if rank != 0:
        return
    for other in everyone[1:]:
        for name in mine:
            if not all(np.array_equal(a, b) for a, b in zip(other[7][name], mine[name])):
                failures.append(f"{name}: replicas differ")
            if other[8][name] != record[name]:
                failures.append(f"{name}: n_iter_/scores differ {other[8][name]} {record[name]}")
    if not split.n_iter_ < 40 or len(split.validation_scores_) != split.n_iter_:
        failures.append(f"split: did not stop early ({split.n_iter_})")
    order = [(r, np.arange(s, s + BATCH)) for s in range(0, 64, BATCH) for r in range(ranks)]
    g = [np.concatenate([everyone[r][k][rows] for r, rows in order]) for k in range(4)]
    gX, gy, gt, gw = g
    gX_val, gy_val, gt_val = (np.concatenate([e[k] for e in everyone]) for k in (4, 5, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (kind, params, which, kw) in runs.items():
            single = dict(params, batch_size=ranks * BATCH) if "batch_size" in params else params
            kw = {"X_val": gX_val, "y_val": gy_val if which == "y" else gt_val} if (
                "X_val" in kw) else ({"sample_weight": gw} if "sample_weight" in kw else {})
            reference = kind(random_state=0, **single).fit(gX, gy if which == "y" else gt, **kw)
            ref = reference.coefs_ + reference.intercepts_
            rtol = 1e-6 if "lbfgs" in name else 1e-9
            for a, b in zip(mine[name], ref):
                if not np.allclose(a, b, rtol=rtol, atol=rtol):
                    failures.append(f"{name}: weights differ by {np.max(np.abs(a - b)):.3g}")
            if reference.n_iter_ != fitted[name].n_iter_:
                failures.append(f"{name}: n_iter_ {fitted[name].n_iter_} vs {reference.n_iter_}")
            if "X_val" in kw and not np.allclose(fitted[name].validation_scores_,
                                                 reference.validation_scores_, rtol=1e-9):
                failures.append(f"{name}: {fitted[name].validation_scores_} vs "
                                f"{reference.validation_scores_}")
            print(f"checked {name} n_iter_={reference.n_iter_}", flush=True)
    print("\n".join(failures) or "ESTIMATORS MORE OK", flush=True)
    sys.exit(1 if failures else 0)


class FailingTrainer:
    """The engine of one rank, failing at its `at`-th gradient step with `error`."""

    def __init__(self, trainer, at, error):
        self.trainer, self.at, self.error, self.calls = trainer, at, error, 0

    def __getattr__(self, name):
        return getattr(self.trainer, name)

    def gradient_step(self, *args):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.trainer.gradient_step(*args)


def failing(error):
    if rank == 1:
        make = _distributed.new_trainer
        _distributed.new_trainer = lambda *a, **k: FailingTrainer(make(*a, **k), 5, error)
    X, y, _ = shard(80, rank, np.float32)
    MLP(SIZES, seed=0).fit(X, y, epochs=2, batch_size=BATCH, comm=comm)


def shared_parameters():
    """Plain SGD on the ranks of one node trains one shared copy of the parameters, each rank
    updating its slice; callbacks see and change the model between epochs (here: the
    weights halved on every rank, then momentum switched on, after which each rank trains
    its own model again). For 2 ranks the sum a + b is the same in any order, so the run
    must equal the allreduce path's bitwise (unweighted: with sample weights the paths
    scale in another order), and the model must hold the final weights; with more ranks
    MPI's allreduce may add in another order than rank order: equal to rounding."""
    X, y, _ = shard(64 + 8 * rank, 300 + rank, np.float32)  # (unweighted: see above)
    X_val, y_val, _ = shard(20, 400 + rank, np.float32)
    steps_per_epoch = -(-(64 + 8 * (ranks - 1)) // BATCH)  # the largest shard's

    def same(a, b):
        return np.array_equal(a, b) if ranks == 2 else np.allclose(a, b, rtol=1e-5, atol=1e-7)

    def callback(model, history):
        if history.epochs == 1:
            model.weights = [W * 0.5 for W in model.weights]
        if history.epochs == 2:
            optimizer.momentum = 0.9
    results = {}
    for exchange in (True, False):
        _exchange.NODE_EXCHANGE = exchange
        optimizer = SGD(lr=0.05)
        model = MLP(SIZES, seed=1)
        history = model.fit(X, y, epochs=4, batch_size=BATCH, optimizer=optimizer, seed=5,
                            alpha=1e-3, validation_data=(X_val, y_val),
                            callbacks=[callback], comm=comm)
        results[exchange] = (model.weights + model.biases, history, optimizer.state_dict())
    (mine, history, state), (theirs, reference, reference_state) = results[True], results[False]
    assert all(same(a, b) for a, b in zip(mine, theirs)), "weights differ"
    assert same(history.val_loss, reference.val_loss)
    # (the allreduce sums the losses in the parameters' dtype, shared memory in float64)
    np.testing.assert_allclose(history.loss, reference.loss, rtol=1e-6)
    assert all(same(a["momentum_buffer"], b["momentum_buffer"])
               for a, b in zip(state["state"], reference_state["state"]))
    assert state["steps"] == reference_state["steps"] == 4 * steps_per_epoch
    # Without validation, checkpoints or callbacks the model's arrays get the shared copy
    # only at the end (and the replicas' check has nothing to compare): the same weights.
    plain = {}
    for exchange in (True, False):
        _exchange.NODE_EXCHANGE = exchange
        model = MLP(SIZES, seed=4)
        model.fit(X, y, epochs=3, batch_size=BATCH, optimizer=SGD(lr=0.1), seed=2, comm=comm)
        plain[exchange] = model.weights + model.biases
    assert all(same(a, b) for a, b in zip(plain[True], plain[False]))
    _exchange.NODE_EXCHANGE = True
    # An optimizer used before continues as rank 0's (its momentum buffers broadcast): the
    # ranks' states differ before (each used it on its own rows), equal after.
    optimizer = SGD(lr=0.05, momentum=0.9)
    model = MLP(SIZES, seed=1)
    model.fit(X, y, epochs=1, batch_size=BATCH, optimizer=optimizer)  # alone, its own rows
    before = comm.allgather(optimizer.state_dict())
    model.fit(X, y, epochs=1, batch_size=BATCH, optimizer=optimizer, comm=comm)
    after = comm.allgather(optimizer.state_dict())
    for r in range(1, ranks):
        assert not np.array_equal(before[0]["state"][0]["momentum_buffer"],
                                  before[r]["state"][0]["momentum_buffer"])
        for a, b in zip(after[0]["state"], after[r]["state"]):
            assert np.array_equal(a["momentum_buffer"], b["momentum_buffer"])
        assert after[r]["steps"] == after[0]["steps"] == before[0]["steps"] + steps_per_epoch
    # The windows outlive a fit: kept for the next one of the same sizes, replaced (freed)
    # when the sizes change.
    _exchange.NODE_EXCHANGE = True
    kept = _node_exchange._KEPT
    MLP(SIZES, seed=1).fit(X, y, epochs=1, batch_size=BATCH, comm=comm)
    first = kept[-1]
    MLP(SIZES, seed=2).fit(X, y, epochs=1, batch_size=BATCH, comm=comm)
    assert len(kept) == 1 and kept[0] is first and not first.in_use
    MLP([12, 5, 3], seed=1).fit(X, y, epochs=1, batch_size=BATCH, comm=comm)
    assert len(kept) == 1 and kept[0] is not first
    print(f"rank {rank} shared parameters ok", flush=True)


def engine_layout(model):
    """The model's parameters flat in the engine's layout: per layer from the last, W_l, b_l."""
    return np.concatenate([a.ravel() for W, b in zip(model.weights[::-1], model.biases[::-1])
                           for a in (W, b)])


class FailingUpdate:
    """The engine whose update at its `at`-th step is not finite: rank 1's slice of a sharded
    update (an infinite gradient there), every rank's when each updates everything;
    snapshot: (begin, end, the parameters of [begin, end) before that step, flat)."""

    def __init__(self, trainer, at):
        self.trainer, self.at, self.calls, self.snapshot = trainer, at, 0, None

    def __getattr__(self, name):
        return getattr(self.trainer, name)

    def apply_gradient_sum(self, grads, coefficients, rows, begin, end):
        self.calls += 1
        if self.calls == self.at:
            # Only this rank's range: another rank may be updating its own range of a shared
            # copy already.
            flat = np.empty(self.trainer.gradient_elements(), dtype=grads[0].dtype)
            self.trainer.get_flat_parameters(flat, begin, end)
            self.snapshot = (begin, end, flat)
            # (A rank that updates everything sums what every rank sums: inject on all.)
            if rank == 1 or (begin, end) == (0, grads[0].size):
                grads = [g.copy() for g in grads]
                grads[0][end - 1] = np.inf
        return self.trainer.apply_gradient_sum(grads, coefficients, rows, begin, end)


def update_fails_on_one_rank(optimizer):
    """Rank 1's update of step 3 is not finite: every rank raises FloatingPointError with the
    parameters of before that step (each rank checks the range it updated), the replicas
    equal."""
    X, y, _ = shard(80, rank, np.float32)
    model = MLP(SIZES, seed=0)
    make, engines = _distributed.new_trainer, []
    _distributed.new_trainer = lambda *a, **k: engines.append(
        FailingUpdate(make(*a, **k), 3)) or engines[-1]
    try:
        model.fit(X, y, epochs=1, batch_size=BATCH, optimizer=optimizer, comm=comm)
    except FloatingPointError:
        begin, end, before = engines[-1].snapshot
        kept = np.array_equal(engine_layout(model)[begin:end], before[begin:end])
        everyone = comm.allgather(model.weights + model.biases)
        same = all(np.array_equal(a, b) for other in everyone[1:]
                   for a, b in zip(everyone[0], other))
        print(f"rank {rank} update failed: kept the weights {kept}, replicas equal {same}",
              flush=True)
        raise


def checkpoint_and_callbacks(directory):
    """4 epochs in one go == 2 epochs checkpointed (by rank 0) + resumed to 4 (Adam, and
    plain SGD: the ranks train one shared copy of the parameters); a callback that asks to
    stop on one rank stops every rank."""
    path = f"{directory}/checkpoint.npz"
    X, y, _ = shard(40 + 7 * rank, rank, np.float64)
    fit = dict(batch_size=BATCH, seed=3, comm=comm)
    for make in (lambda: Adam(lr=1e-2), lambda: SGD(lr=0.1)):
        straight = MLP(SIZES, seed=0, dtype=np.float64)
        expected = straight.fit(X, y, epochs=4, optimizer=make(), **fit)
        MLP(SIZES, seed=0, dtype=np.float64).fit(X, y, epochs=2, optimizer=make(),
                                                 checkpoint=path, **fit)
        resumed = MLP(SIZES, seed=9, dtype=np.float64)  # its own weights are replaced
        history = resumed.fit(X, y, epochs=4, optimizer=make(), checkpoint=path,
                              resume=True, **fit)
        assert history.loss == expected.loss, (history.loss, expected.loss)
        for a, b in zip(straight.weights + straight.biases, resumed.weights + resumed.biases):
            assert np.array_equal(a, b)
    stopped = MLP(SIZES, seed=0).fit(
        X, y, epochs=5, callbacks=[lambda model, h: rank == 1 and h.epochs == 2], **fit)
    assert stopped.epochs == 2, stopped.epochs
    print(f"rank {rank} checkpoint ok", flush=True)


def main():
    mode = sys.argv[1]
    if mode == "equivalence":
        return equivalence(sys.argv[2])
    if mode == "estimators":
        return estimators()
    if mode == "threads":  # run without FASTMLP_NUM_THREADS / OMP_NUM_THREADS
        from fastmlp._threads import available_cpus
        before = fastmlp.get_num_threads()
        seen = []
        X, y, _ = shard(40, rank, np.float32)
        MLP(SIZES, seed=0).fit(X, y, epochs=1, batch_size=BATCH, comm=comm,
                               callbacks=[lambda m, h: seen.append(fastmlp.get_num_threads())])
        expected = min(before, max(1, available_cpus() // ranks))  # 2 ranks on one node
        assert seen == [expected] and fastmlp.get_num_threads() == before, (seen, before)
        print(f"rank {rank} threads ok", flush=True)
        return
    if mode == "estimators_more":
        return estimators_more()
    if mode == "streamed":
        return streamed(sys.argv[2])
    if mode == "shared_parameters":
        return shared_parameters()
    if mode == "checkpoint":
        return checkpoint_and_callbacks(sys.argv[2])
    try:
        if mode == "raises":
            failing(ValueError("injected failure"))
        elif mode == "interrupt":  # one rank alone: no agreement possible, the job aborts
            failing(KeyboardInterrupt())
        elif mode == "update_fails_sharded":
            update_fails_on_one_rank(SGD(lr=0.1))
        elif mode == "update_fails_everywhere":  # momentum: every rank updates everything
            update_fails_on_one_rank(SGD(lr=0.1, momentum=0.9))
        elif mode == "bad_labels":
            X, y, _ = shard(40, rank, np.float32)
            if rank == 1:
                y[17] = 9  # 3 classes
            MLP(SIZES, seed=0).fit(X, y, epochs=1, batch_size=BATCH, comm=comm)
        elif mode == "diverges":
            X, y, _ = shard(40, rank, np.float64)
            MLP(SIZES, seed=0, dtype=np.float64).fit(
                X * 1e150, y, epochs=1, batch_size=BATCH, optimizer=SGD(lr=1e100), comm=comm)
        elif mode == "callback_changes_one_rank":
            X, y, _ = shard(40, rank, np.float32)

            def nudge(model, history):
                if rank == 1:
                    nudged = model.weights[0].copy()
                    nudged[0, 0] += 1.0
                    model.weights[0] = nudged
            MLP(SIZES, seed=0).fit(X, y, epochs=2, batch_size=BATCH, callbacks=[nudge],
                                   comm=comm)
        elif mode == "estimator_small_split":  # early stopping's split of a 3-row shard
            from fastmlp import MLPRegressor
            X, y, _ = shard(40 if rank == 0 else 3, rank, np.float32)
            MLPRegressor(early_stopping=True).fit(X, y.astype(np.float32), comm=comm)
        elif mode == "estimator_bad_shard":
            from fastmlp import MLPRegressor
            X, y, _ = shard(40, rank, np.float32)
            if rank == 0:
                X[3, 2] = np.nan
            MLPRegressor(max_iter=2).fit(X, y.astype(np.float32), comm=comm)
        elif mode == "same_file":  # every rank passes the whole memory-mapped file
            import tempfile
            path = comm.bcast(tempfile.mkdtemp() if rank == 0 else None) + "/X.npy"
            if rank == 0:
                np.save(path, shard(40, 0, np.float32)[0])
            comm.Barrier()
            X = np.load(path, mmap_mode="r")
            MLP(SIZES, seed=0).fit(X, shard(40, 0, np.float32)[1], epochs=1, batch_size=BATCH,
                                   comm=comm)
        elif mode == "parquet_nan":  # a NaN in rank 1's second row group, read mid-epoch
            import tempfile
            import pyarrow as pa
            import pyarrow.parquet as pq
            path = comm.bcast(tempfile.mkdtemp() if rank == 0 else None) + "/d.parquet"
            if rank == 0:
                X, y, _ = shard(60, 0, np.float32)
                X[45, 3] = np.nan  # row group 3 (rows 45-59): rank 1's second
                table = pa.table({**{f"f{j}": X[:, j] for j in range(SIZES[0])}, "y": y})
                pq.write_table(table, path, row_group_size=15)
            comm.Barrier()
            source = fastmlp.ParquetSource(path, comm=comm)
            MLP(SIZES, seed=0).fit(source, None, epochs=1, batch_size=BATCH, shuffle=False,
                                   comm=comm)
        elif mode == "mismatch":
            X, y, _ = shard(40, rank, np.float32)
            MLP(SIZES, seed=0).fit(X, y, epochs=1, batch_size=BATCH + rank, comm=comm)
        else:
            raise SystemExit(f"unknown mode {mode}")
    except Exception as exc:  # every rank must get here, with the error
        print(f"rank {rank} raised {type(exc).__name__}: {exc}", flush=True)
        sys.exit(3)
    print(f"rank {rank} finished", flush=True)


main()
