"""save/load: bit-exact round trips, atomic writes, and refusal of anything malformed."""

import os
import zipfile

import numpy as np
import pytest

from fastmlp import MLP
from fastmlp.io import FORMAT_VERSION


@pytest.fixture
def model():
    m = MLP([5, 7, 3], dtype="float32", seed=0)
    m.biases[0][...] = np.arange(7) / 10
    return m


def archive_entries(model):
    """The entries save() writes, for building hand-edited files."""
    entries = {
        "format": np.array("fastmlp.MLP"), "format_version": np.array(FORMAT_VERSION),
        "layer_sizes": np.array(model.layer_sizes), "activation": np.array(model.activation),
        "output": np.array(model.output), "dtype": np.array(model.dtype.name),
    }
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        entries[f"W{i}"], entries[f"b{i}"] = w, b
    return entries


@pytest.mark.parametrize("dtype, output, sizes", [("float32", "softmax", [5, 7, 3]),
                                                  ("float64", "sigmoid", [5, 4, 6, 1])])
def test_round_trip_is_bit_exact(tmp_path, dtype, output, sizes):
    m = MLP(sizes, dtype=dtype, output=output, seed=1)
    X = np.random.default_rng(0).normal(size=(20, 5))
    path = tmp_path / "model.bin"  # any name: no ".npz" is appended
    m.save(path)
    assert os.listdir(tmp_path) == ["model.bin"]  # no temporary file left behind
    loaded = MLP.load(path)
    assert (loaded.layer_sizes, loaded.output, loaded.dtype) == (m.layer_sizes, output, np.dtype(dtype))
    np.testing.assert_array_equal(loaded.predict_proba(X), m.predict_proba(X))
    for a, b in zip(loaded.weights + loaded.biases, m.weights + m.biases):
        np.testing.assert_array_equal(a, b)


def test_save_replaces_an_existing_file_and_keeps_it_on_failure(tmp_path, model, monkeypatch):
    path = tmp_path / "m.npz"
    MLP([5, 2], seed=3).save(path)
    model.save(path)
    assert MLP.load(path).layer_sizes == (5, 7, 3)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        MLP([5, 2], seed=3).save(path)
    assert MLP.load(path).layer_sizes == (5, 7, 3)  # the good file is intact
    assert os.listdir(tmp_path) == ["m.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        MLP.load(tmp_path / "nope.npz")


def corrupt(entries):
    return entries


@pytest.mark.parametrize("edit, match", [
    (lambda e: e.pop("W1"), "missing"),
    (lambda e: e.update(extra=np.zeros(2)), "unexpected"),
    (lambda e: e.update(format_version=np.array(99)), "format_version 99"),
    (lambda e: e.update(format=np.array("something else")), "format"),
    (lambda e: e.update(W0=np.zeros((7, 4), np.float32)), r"W0 has shape \(7, 4\)"),
    (lambda e: e.update(b1=np.zeros(3, np.float64)), "b1 has dtype float64"),
    (lambda e: e.update(b0=np.full(7, np.nan, np.float32)), "NaN"),
    (lambda e: e.update(layer_sizes=np.array([5, 7, 3, 2])), "missing"),
    (lambda e: e.update(layer_sizes=np.array([5, 10**12, 3])), "shape"),
    (lambda e: e.update(activation=np.array("sin")), "activation"),
    (lambda e: e.update(dtype=np.array(3)), "string"),
])
def test_hand_edited_files_are_rejected(tmp_path, model, edit, match):
    entries = archive_entries(model)
    edit(entries)
    path = tmp_path / "edited.npz"
    np.savez(path, **entries)
    with pytest.raises(ValueError, match=match):
        MLP.load(path)


def test_pickled_objects_are_never_loaded(tmp_path, model):
    entries = archive_entries(model)
    entries["W0"] = np.array([object()] * 35, dtype=object).reshape(7, 5)
    path = tmp_path / "pickled.npz"
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="W0. holds pickled Python objects"):
        MLP.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_damaged_files_are_rejected(tmp_path, model, damage):
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"this is not a zip file" * 10
    elif damage == "empty":
        data = b""
    else:  # flip bytes inside the stored arrays: the zip CRC check must catch it
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]
    path.write_bytes(data)
    with pytest.raises(ValueError):
        MLP.load(path)


def test_archive_is_a_plain_npz(tmp_path, model):
    path = tmp_path / "m.npz"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(f"{k}.npy" for k in archive_entries(model))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_checkpoints_of_fastmlp_0_1_still_resume(tmp_path, kind):
    """0.1 wrote the optimizer as {"kind": ..., hyper-parameters} and arrays opt_a{i}/opt_b{i};
    such a checkpoint resumes to the same weights as one written today."""
    import json

    from fastmlp import SGD, Adam
    from fastmlp.io import read_checkpoint

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, size=60)
    make = (lambda: SGD(lr=0.05, momentum=0.9)) if kind == "sgd" else (lambda: Adam(lr=1e-2))
    new = tmp_path / "new.npz"
    MLP([4, 6, 3], seed=0, dtype="float64").fit(X, y, epochs=2, optimizer=make(), seed=1,
                                                checkpoint=new)
    with np.load(new) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays.pop("checkpoint")))
    state = meta.pop("optimizer")
    hyper = state["hyperparameters"]
    if kind == "sgd":
        old = {"kind": "sgd", "lr": hyper["lr"], "momentum": hyper["momentum"],
               "weight_decay": hyper["weight_decay"], "nesterov": hyper["nesterov"],
               "first_step": [not s for s in state["started"]]}
        names = ["momentum_buffer"]
    else:
        old = {"kind": "adam", "lr": hyper["lr"], "beta1": hyper["betas"][0],
               "beta2": hyper["betas"][1], "eps": hyper["eps"],
               "weight_decay": hyper["weight_decay"], "steps": state["steps"], "first_step": []}
        names = ["exp_avg", "exp_avg_sq"]
    for i in range(4):
        for ab, name in zip("ab", names):
            arrays[f"opt_{ab}{i}"] = arrays.pop(f"optim.{i}.{name}")
    arrays["checkpoint"] = np.array(json.dumps(dict(meta, optimizer=old)))
    legacy = tmp_path / "legacy.npz"
    np.savez(legacy, **arrays)
    _, optimizer, _ = read_checkpoint(legacy)
    _, current, _ = read_checkpoint(new)
    assert repr(optimizer) == repr(current) and optimizer.steps == current.steps
    for a, b in zip(optimizer.state_dict()["state"], current.state_dict()["state"]):
        for name in names:
            np.testing.assert_array_equal(a[name], b[name])
    resumed = [MLP([4, 6, 3], seed=0, dtype="float64") for _ in range(2)]
    for model, path in zip(resumed, (legacy, new)):
        model.fit(X, y, epochs=4, optimizer=make(), seed=1, checkpoint=path, resume=True)
    for a, b in zip(resumed[0].weights, resumed[1].weights):
        np.testing.assert_array_equal(a, b)
