"""Run by tests/test_distributed.py under ``mpiexec -n 2``: data-parallel fit against one
process on the same global batches, and the ways a job must end. Usage: MODE [DIR]."""

import sys

import numpy as np
from mpi4py import MPI

import fastmlp
from fastmlp import MLP, _distributed
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


def global_batches(shards, epochs, seed, shuffle):
    """The rows one process must see, in its batches of ranks × BATCH rows, to take the
    same steps as the ranks: step s of the global run is rank 0's batch s, then rank 1's."""
    epoch_length = max(len(X) for X, _, _ in shards)
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(epochs):
        epoch_seed = int(rng.integers(0, 2**63))
        orders = [_distributed.rank_epoch_order(len(X), epoch_length, epoch_seed, r, shuffle)
                  for r, (X, _, _) in enumerate(shards)]
        for start in range(0, epoch_length, BATCH):
            for r, order in enumerate(orders):
                parts.append((r, order[start:start + BATCH]))
    return [np.concatenate([shards[r][k][rows] for r, rows in parts]) for k in range(3)]


def equivalence():
    failures = []
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        for name, make in (("sgd", lambda: SGD(lr=0.05, momentum=0.9)),
                           ("adam", lambda: Adam(lr=1e-3))):
            for unequal, weighted, alpha in ((False, False, 0.0), (True, True, 1e-3)):
                n_rows = 80 if rank == 0 or not unequal else 53  # 10 steps/epoch × 2 epochs
                X, y, w = shard(n_rows, 100 + rank, dtype)
                X_val, y_val, _ = shard(17 + 5 * rank, 200 + rank, dtype)
                # Unequal shards also take the allreduce in 256-byte buckets (many per step).
                _distributed.BUCKET_BYTES = 256 if unequal else 25 * 2**20
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
                print(f"checked {label}", flush=True)
    if rank == 0:
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
        _distributed.new_trainer = lambda *a: FailingTrainer(make(*a), 5, error)
    X, y, _ = shard(80, rank, np.float32)
    MLP(SIZES, seed=0).fit(X, y, epochs=2, batch_size=BATCH, comm=comm)


def checkpoint_and_callbacks(directory):
    """4 epochs in one go == 2 epochs checkpointed (by rank 0) + resumed to 4; a callback
    that asks to stop on one rank stops every rank."""
    path = f"{directory}/checkpoint.npz"
    X, y, _ = shard(40 + 7 * rank, rank, np.float64)
    fit = dict(batch_size=BATCH, seed=3, comm=comm)
    straight = MLP(SIZES, seed=0, dtype=np.float64)
    expected = straight.fit(X, y, epochs=4, optimizer=Adam(lr=1e-2), **fit)
    MLP(SIZES, seed=0, dtype=np.float64).fit(X, y, epochs=2, optimizer=Adam(lr=1e-2),
                                             checkpoint=path, **fit)
    resumed = MLP(SIZES, seed=9, dtype=np.float64)  # its own weights are replaced
    history = resumed.fit(X, y, epochs=4, optimizer=Adam(lr=1e-2), checkpoint=path,
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
        return equivalence()
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
    if mode == "checkpoint":
        return checkpoint_and_callbacks(sys.argv[2])
    try:
        if mode == "raises":
            failing(ValueError("injected failure"))
        elif mode == "interrupt":  # one rank alone: no agreement possible, the job aborts
            failing(KeyboardInterrupt())
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
        elif mode == "estimator_unsupported":
            from fastmlp import MLPClassifier
            X, y, _ = shard(40, rank, np.float32)
            MLPClassifier(early_stopping=True).fit(X, y, comm=comm)
        elif mode == "estimator_bad_shard":
            from fastmlp import MLPRegressor
            X, y, _ = shard(40, rank, np.float32)
            if rank == 0:
                X[3, 2] = np.nan
            MLPRegressor(max_iter=2).fit(X, y.astype(np.float32), comm=comm)
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
