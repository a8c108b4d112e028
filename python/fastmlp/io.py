"""Saving and loading models as ``.npz`` archives, without pickle.

An archive holds exactly these entries (all plain NumPy arrays, loaded with
``allow_pickle=False``, so nothing in a file is ever executed):

=================  ===========================================================
``format``         the string ``"fastmlp.MLP"``
``format_version`` int64, currently 1
``layer_sizes``    int64 (L + 1,)
``activation``     string, ``output`` string, ``dtype`` string
``W0`` … ``W{L-1}`` weights, shape (n_l, n_{l-1}), dtype as recorded
``b0`` … ``b{L-1}`` biases, shape (n_l,)
=================  ===========================================================

``save`` writes to a temporary file in the target directory, flushes and fsyncs it, then
renames it over the target: a crash mid-write leaves the old file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

from dataclasses import dataclass

import numpy as np

from fastmlp._validation import check_activation, model_dtype
from fastmlp.optim import Optimizer

FORMAT_NAME = "fastmlp.MLP"
FORMAT_VERSION = 1

__all__ = ["ModelRecord", "save_model", "read_model", "save_checkpoint", "read_checkpoint",
           "write_atomically", "FORMAT_VERSION"]


def _model_arrays(model) -> dict[str, np.ndarray]:
    arrays = {
        "format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "layer_sizes": np.array(model.layer_sizes, dtype=np.int64),
        "activation": np.array(model.activation),
        "output": np.array(model.output),
        "dtype": np.array(model.dtype.name),
    }
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        arrays[f"W{i}"] = w
        arrays[f"b{i}"] = b
    return arrays


def save_model(model, path) -> None:
    write_npz_atomically(path, _model_arrays(model))


def write_npz_atomically(path, arrays: dict[str, np.ndarray]) -> None:
    # a file object: numpy does not append ".npz" to the name
    write_atomically(path, lambda f: np.savez(f, **arrays))


def write_atomically(path, write) -> None:
    """Calls write(f) on a temporary file beside `path`, fsyncs it, renames it over `path`
    and fsyncs the directory: readers see the old file or the new one, never a part, and a
    crash mid-write leaves the old file intact."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=".fastmlp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _string(arrays, key: str) -> str:
    value = arrays[key]
    if value.dtype.kind != "U" or value.shape != ():
        raise ValueError(f"entry {key!r} must be a string, got {value.dtype} {value.shape}")
    return str(value)


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read without pickle; ValueError for anything unreadable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    # The file is opened here, not by np.load, so it is closed even when np.load fails.
    with open(path, "rb") as f:
        try:
            with np.load(f, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            # (Not numpy's own text: it suggests loading the file unsafely.)
            reason = ("it holds pickled objects, which are never loaded"
                      if "allow_pickle" in str(exc) else f"not an .npz archive ({exc})")
            raise ValueError(f"{path!r} is not a readable fastmlp archive: {reason}") from None


_HEADER = ("format", "format_version", "layer_sizes", "activation", "output", "dtype")


@dataclass
class ModelRecord:
    """What a model archive holds, validated: enough to build the MLP (``MLP.from_record``)."""

    layer_sizes: list[int]
    activation: str
    output: str
    dtype: np.dtype
    weights: list[np.ndarray]  # W_l (n_{l+1}, n_l)
    biases: list[np.ndarray]   # b_l (n_{l+1},)

    def describe(self) -> str:
        return (f"MLP({self.layer_sizes}, activation={self.activation!r}, "
                f"output={self.output!r}, dtype={self.dtype.name!r})")


def _record_from_arrays(arrays: dict[str, np.ndarray],
                        extra_keys: set[str] = frozenset()) -> ModelRecord:
    """The model the arrays describe; ValueError for any inconsistency. `extra_keys`: other
    entries the caller expects (a checkpoint's), which must all be present."""
    missing = [key for key in _HEADER if key not in arrays]
    if missing:
        raise ValueError(f"missing entries {missing}")
    if _string(arrays, "format") != FORMAT_NAME:
        raise ValueError(f"format is {_string(arrays, 'format')!r}, expected {FORMAT_NAME!r}")
    version = arrays["format_version"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError("format_version must be an integer scalar")
    if int(version) != FORMAT_VERSION:
        raise ValueError(f"format_version {int(version)} is not supported "
                         f"(this fastmlp reads version {FORMAT_VERSION})")
    sizes = arrays["layer_sizes"]
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or sizes.shape[0] < 2:
        raise ValueError("layer_sizes must be a 1-D integer array of at least 2 entries")
    n_layers = sizes.shape[0] - 1
    expected = (set(_HEADER) | {f"W{i}" for i in range(n_layers)}
                | {f"b{i}" for i in range(n_layers)} | set(extra_keys))
    if set(arrays) != expected:
        extra = sorted(set(arrays) - expected)
        missing = sorted(expected - set(arrays))
        raise ValueError(f"unexpected entries {extra}, missing entries {missing}")
    for i in range(n_layers):
        # Shapes are checked against layer_sizes before a model is built, so a hand-edited
        # layer_sizes cannot make MLP() allocate more than the file itself holds.
        shapes = {f"W{i}": (int(sizes[i + 1]), int(sizes[i])), f"b{i}": (int(sizes[i + 1]),)}
        for key, shape in shapes.items():
            if arrays[key].shape != shape:
                raise ValueError(f"{key} has shape {arrays[key].shape}, expected {shape}")
    dtype = model_dtype(_string(arrays, "dtype"))
    for i in range(n_layers):
        for key in (f"W{i}", f"b{i}"):
            if arrays[key].dtype != dtype:
                raise ValueError(f"{key} has dtype {arrays[key].dtype}, expected {dtype}")
    return ModelRecord([int(s) for s in sizes], check_activation(_string(arrays, "activation")),
                       _string(arrays, "output"), dtype,
                       [arrays[f"W{i}"] for i in range(n_layers)],
                       [arrays[f"b{i}"] for i in range(n_layers)])


def read_model(path) -> ModelRecord:
    """The validated contents of a model archive written by ``save_model``; ValueError for
    anything malformed (``MLP.load`` builds the model from it)."""
    arrays = read_npz(path)
    try:
        return _record_from_arrays(arrays)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a valid fastmlp model: {exc}") from None


# ---- training checkpoints ----------------------------------------------------------------
#
# A checkpoint is a model archive plus: "checkpoint" (a JSON string: epochs done, the epoch
# seed generator's state, the history so far, batch size, shuffle, and the optimizer's
# state_dict without its arrays) and the optimizer's state arrays "optim.{i}.{name}" (e.g.
# "optim.0.exp_avg"), one set per parameter array (weights, then biases).
# Checkpoints of fastmlp 0.1 (optimizer "kind" sgd/adam, arrays "opt_a{i}"/"opt_b{i}") load too.


def save_checkpoint(path, model, optimizer, progress: dict) -> None:
    arrays = _model_arrays(model)
    state = optimizer.state_dict()
    per_parameter = state.pop("state")
    arrays["checkpoint"] = np.array(json.dumps(dict(progress, optimizer=state)))
    for i, entry in enumerate(per_parameter):
        for name, value in entry.items():
            arrays[f"optim.{i}.{name}"] = value
    write_npz_atomically(path, arrays)


def _optimizer_state_v1(opt: dict, arrays, n_params: int, meta: dict) -> tuple[dict, list[str]]:
    """A fastmlp 0.1 checkpoint's optimizer entry as a state_dict, and its array names."""
    kind = opt.get("kind")
    if kind == "sgd":
        names = ["momentum_buffer"]
        state = {"optimizer": "SGD", "steps": int(meta["steps"]),
                 "hyperparameters": {"lr": opt["lr"], "momentum": opt["momentum"],
                                     "weight_decay": opt["weight_decay"],
                                     "nesterov": opt["nesterov"]},
                 "started": [not first for first in opt["first_step"]]}
    elif kind == "adam":
        names = ["exp_avg", "exp_avg_sq"]
        state = {"optimizer": "Adam", "steps": int(opt["steps"]),
                 "hyperparameters": {"lr": opt["lr"], "betas": [opt["beta1"], opt["beta2"]],
                                     "eps": opt["eps"], "weight_decay": opt["weight_decay"]},
                 "started": [True] * n_params}
    else:
        raise ValueError(f"unknown optimizer kind {kind!r}")
    keys = [[f"opt_{ab}{i}" for ab in "ab"[:len(names)]] for i in range(n_params)]
    state["state"] = [{name: arrays[key] for name, key in zip(names, keys[i]) if key in arrays}
                      for i in range(n_params)]
    return state, [key for row in keys for key in row]


def read_checkpoint(path) -> tuple[ModelRecord, Optimizer, dict]:
    """(model record, optimizer, progress) from a checkpoint written by
    ``fit(checkpoint=...)``."""
    arrays = read_npz(path)
    try:
        if "checkpoint" not in arrays:
            raise ValueError("no 'checkpoint' entry: this is not a training checkpoint")
        meta = json.loads(_string(arrays, "checkpoint"))
        if not isinstance(meta, dict) or not isinstance(meta.get("optimizer"), dict):
            raise ValueError("malformed checkpoint metadata")
        opt = meta["optimizer"]
        n_params = 2 * (len(arrays["layer_sizes"]) - 1)
        if "kind" in opt:
            state, state_keys = _optimizer_state_v1(opt, arrays, n_params, meta)
        else:
            state = dict(opt)
            state_keys = [key for key in arrays if key.startswith("optim.")]
            state["state"] = [{} for _ in range(n_params)]
            for key in state_keys:
                _, index, name = key.split(".", 2)
                if not index.isdigit() or int(index) >= n_params:
                    raise ValueError(f"optimizer state {key!r} names no parameter")
                state["state"][int(index)][name] = arrays[key]
        model = _record_from_arrays(arrays, extra_keys={"checkpoint", *state_keys})
        params = model.weights + model.biases
        for i, (p, entry) in enumerate(zip(params, state["state"])):
            for name, value in entry.items():
                if value.shape != p.shape or value.dtype != p.dtype:
                    raise ValueError(f"optimizer state {name!r} of parameter {i} does not "
                                     "match the parameter")
        optimizer = Optimizer.from_state_dict(state)
        for key in ("epochs_done", "rng_state", "history", "batch_size", "shuffle"):
            if key not in meta:
                raise ValueError(f"checkpoint metadata lacks {key!r}")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            json.JSONDecodeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a valid fastmlp checkpoint: {exc}") from None
    return model, optimizer, meta
