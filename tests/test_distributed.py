"""Data-parallel fit over MPI (fastmlp._distributed), under a real ``mpiexec -n 2``:
tests/distributed_worker.py runs on each rank; a job that hangs fails here at its timeout.
Skips without mpi4py or an ``mpiexec`` (``pip install "fastmlp[mpi]"`` brings both)."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp import _exchange

MPI = pytest.importorskip("mpi4py.MPI")
WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")


def _mpiexec() -> str:
    # The mpich wheel installs mpiexec next to this interpreter.
    beside = pathlib.Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


def run_job(mode: str, timeout: float = 240.0, *extra: str, threads: str | None = "1",
            ranks: int = 2) -> subprocess.CompletedProcess:
    """``mpiexec -n RANKS python distributed_worker.py MODE``, 1 thread per rank (2 cores;
    threads=None: no thread variable set). HYDRA_LAUNCHER=fork: Hydra starts the ranks as
    local processes (no ssh), as root too."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("FASTMLP_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(HYDRA_LAUNCHER="fork", **({"FASTMLP_NUM_THREADS": threads} if threads else {}))
    try:
        return subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, str(WORKER), mode,
                               *extra],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=WORKER.parent)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the MPI job {mode!r} hung (no end within {timeout} s): {exc.output}")


@pytest.mark.parametrize("exchange", ["shared_memory", "allreduce"])
def test_two_ranks_match_one_process_on_the_same_global_batches(exchange):
    # SGD (momentum), plain SGD (the update sharded over the ranks on shared memory) and
    # Adam, float32 and float64, 20 steps; equal shards, and unequal shards (the short one
    # wraps) with sample weights, an L2 penalty and (allreduce) many buckets. Weights within
    # 1e-5 (float32) / 1e-12 (float64) relative of one process on the concatenated
    # batches, the replicas bitwise equal, the losses and the reduced val_loss equal; the
    # ranks of this node exchange over shared memory unless told not to (the path across
    # nodes).
    job = run_job("equivalence", 240, exchange)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "EQUIVALENT" in job.stdout
    assert job.stdout.count("checked ") == 12


def test_estimators_fit_with_comm_match_one_process():
    # MLPClassifier (string labels, one class on rank 1 only: classes_ is the union) and
    # MLPRegressor, 3 epochs of Adam: within 1e-5 of one process on the interleaved
    # batches, loss_curve_ too, the replicas bitwise equal, rank 0's initial weights.
    pytest.importorskip("sklearn")
    job = run_job("estimators")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "ESTIMATORS OK" in job.stdout


@pytest.mark.parametrize("ranks", [2, 3])
def test_memory_mapped_and_parquet_shards_stream_each_ranks_rows_only(tmp_path, ranks):
    # A memory-mapped .npy (each rank X[shard_rows(...)]) and a ParquetSource(comm=comm),
    # unequal shards (the short one wraps), block-shuffled over 2 epochs: each rank reads
    # only its byte range / its row groups (recorded in the worker), the replicas are
    # bitwise equal, the weights within 1e-5 of one process on the same global batches.
    pytest.importorskip("pyarrow")
    job = run_job("streamed", 240, str(tmp_path), ranks=ranks)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "STREAMED OK" in job.stdout
    assert job.stdout.count("checked ") == 2


def test_estimators_validate_stop_weigh_classes_and_run_lbfgs_over_all_ranks():
    # class_weight="balanced" from the summed class counts; X_val per rank with early
    # stopping (classifier: accuracy, regressor: R² of the union) takes the epochs one
    # process takes on the union (n_iter_, validation_scores_, weights within 1e-9 in
    # float64); early stopping's split of each shard stops on every rank together;
    # solver="lbfgs" (balanced classifier, weighted regressor with alpha, 40 iterations)
    # within 1e-6 of one process on the concatenated data. Replicas bitwise equal.
    pytest.importorskip("sklearn")
    job = run_job("estimators_more", 300)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "ESTIMATORS MORE OK" in job.stdout
    assert job.stdout.count("checked ") == 5


def test_each_rank_defaults_to_its_share_of_the_cpus_during_fit():
    job = run_job("threads", 120, threads=None)
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("threads ok") == 2


@pytest.mark.parametrize("ranks", [2, 3])
def test_plain_sgd_trains_one_shared_copy_equal_to_the_allreduce_path(ranks):
    # (3 ranks: slices of the shared copy that are not halves, and an odd rank count)
    job = run_job("shared_parameters", ranks=ranks)
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("shared parameters ok") == ranks


def test_checkpoint_by_rank_0_resumes_and_a_stop_on_one_rank_stops_all(tmp_path):
    job = run_job("checkpoint", 240, str(tmp_path))
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("checkpoint ok") == 2


@pytest.mark.parametrize("mode, errors", [
    ("raises", ["rank 1 raised ValueError: injected failure",
                "rank 0 raised RuntimeError: rank 1 of 2 failed while computing a step"]),
    ("bad_labels", ["rank 1 raised ValueError: y[17] = 9 is out of range",
                    "rank 0 raised RuntimeError: rank 1 of 2 failed while validating"]),
    ("diverges", ["rank 0 raised FloatingPointError: training diverged at epoch 1",
                  "rank 1 raised FloatingPointError: training diverged at epoch 1"]),
    ("update_fails_sharded", [
        "rank 0 raised FloatingPointError: training diverged at epoch 1",
        "rank 1 raised FloatingPointError: training diverged at epoch 1",
        "rank 0 update failed: kept the weights True, replicas equal True",
        "rank 1 update failed: kept the weights True, replicas equal True"]),
    ("update_fails_everywhere", [
        "rank 0 raised FloatingPointError", "rank 1 raised FloatingPointError",
        "rank 0 update failed: kept the weights True, replicas equal True"]),
    ("callback_changes_one_rank", ["rank 0 raised RuntimeError: after epoch 1 the parameters "
                                   "of rank(s) [1] differ from rank 0's",
                                   "rank 1 raised RuntimeError: after epoch 1"]),
    ("estimator_small_split", [
        "rank 1 raised ValueError: The validation set is too small",
        "rank 0 raised RuntimeError: rank 1 of 2 failed while validating its data"]),
    ("estimator_bad_shard", ["rank 0 raised ValueError: Input X contains NaN",
                             "rank 1 raised RuntimeError: rank 0 of 2 failed while validating "
                             "its data: ValueError: Input X contains NaN"]),
    pytest.param("parquet_nan", [
        "rank 1 raised ValueError: ", "features contains NaN or infinity",
        "rank 0 raised RuntimeError: rank 1 of 2 failed while computing a step of epoch 1"],
        marks=pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                 reason="needs pyarrow")),
    ("same_file", ["rank 0 raised ValueError: ranks 0 and 1 read the same rows of",
                   "rank 1 raised ValueError: ranks 0 and 1 read the same rows of"]),
    ("mismatch", ["rank 0 raised ValueError: fit(comm=...) needs the same arguments on every "
                  "rank: rank 1 differs from rank 0 in batch_size=9 vs 8",
                  "rank 1 raised ValueError: fit(comm=...) needs the same arguments"]),
])
def test_an_error_on_one_rank_raises_on_every_rank(mode, errors):
    job = run_job(mode, timeout=120)
    assert job.returncode != 0
    for error in errors:
        assert error in job.stdout, job.stdout + job.stderr
    assert "finished" not in job.stdout


def test_an_error_the_ranks_cannot_agree_on_aborts_the_job():
    # KeyboardInterrupt mid-epoch on rank 1 only: rank 0 waits in the allreduce; the job
    # must end (comm.Abort) with the traceback printed, not hang.
    job = run_job("interrupt", timeout=120)
    assert job.returncode != 0
    assert "rank 1 of 2 failed where the other ranks cannot follow" in job.stderr
    assert "KeyboardInterrupt" in job.stderr
    assert "finished" not in job.stdout


@pytest.mark.parametrize("node_exchange", [True, False])
def test_one_rank_communicator_trains_like_fit_without_comm(node_exchange, monkeypatch):
    # COMM_SELF: the distributed step (gradient buffer, shared memory or allreduce, separate
    # update) against the fused engine, bitwise, in this process.
    monkeypatch.setattr(_exchange, "NODE_EXCHANGE", node_exchange)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((90, 12)), rng.integers(0, 3, 90)
    for dtype in (np.float32, np.float64):
        fused = fastmlp.MLP([12, 16, 3], seed=1, dtype=dtype)
        split = fastmlp.MLP([12, 16, 3], seed=1, dtype=dtype)
        kwargs = dict(epochs=3, batch_size=16, shuffle=False, alpha=0.01)
        fused.fit(X, y, optimizer=fastmlp.optim.Adam(lr=0.01), **kwargs)
        history = split.fit(X, y, optimizer=fastmlp.optim.Adam(lr=0.01), comm=MPI.COMM_SELF,
                            **kwargs)
        for a, b in zip(fused.weights + fused.biases, split.weights + split.biases):
            np.testing.assert_array_equal(a, b)
        assert history.epochs == 3


def test_bad_comm_is_a_type_error():
    X, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(TypeError, match="mpi4py communicator"):
        fastmlp.MLP([3, 2]).fit(X, y, comm="world")


def test_cli_train_under_mpiexec_shares_the_rows(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    y = (X[:, 0] - X[:, 2] > 0).astype(np.int64)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    env = dict(os.environ, FASTMLP_NUM_THREADS="1", HYDRA_LAUNCHER="fork")
    job = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "fastmlp", "train",
                          "data.npz", "--epochs", "20", "--out", "model.npz"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("saved model.npz") == 1  # rank 0 alone writes and prints
    assert job.stdout.count("training on ") == 1
    assert "per rank, on 2 MPI ranks" in job.stdout
    evaluation = subprocess.run([sys.executable, "-m", "fastmlp", "evaluate", "model.npz",
                                 "data.npz"], capture_output=True, text=True, timeout=120,
                                cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert float(evaluation.stdout.split()[1]) > 0.9  # "accuracy 0.97  loss ..."
