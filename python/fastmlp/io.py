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

import os
import tempfile
import zipfile

import numpy as np

FORMAT_NAME = "fastmlp.MLP"
FORMAT_VERSION = 1

__all__ = ["save_model", "load_model", "FORMAT_VERSION"]


def save_model(model, path) -> None:
    path = os.fspath(path)
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
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=".fastmlp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # a file object: numpy does not append ".npz" to the name
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


def load_model(path):
    from fastmlp.model import MLP

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    # The file is opened here, not by np.load, so it is closed even when np.load fails.
    with open(path, "rb") as f:
        try:
            with np.load(f, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"{path!r} is not a readable fastmlp model archive: {exc}") from None

    try:
        header = ("format", "format_version", "layer_sizes", "activation", "output", "dtype")
        missing = [key for key in header if key not in arrays]
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
        expected = set(header) | {f"W{i}" for i in range(n_layers)} | {f"b{i}" for i in range(n_layers)}
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
        dtype = _string(arrays, "dtype")
        model = MLP([int(s) for s in sizes], activation=_string(arrays, "activation"),
                    output=_string(arrays, "output"), dtype=dtype)
        for i in range(n_layers):
            for key in (f"W{i}", f"b{i}"):
                if arrays[key].dtype != model.dtype:
                    raise ValueError(f"{key} has dtype {arrays[key].dtype}, expected {model.dtype}")
        model.weights = [arrays[f"W{i}"] for i in range(n_layers)]
        model.biases = [arrays[f"b{i}"] for i in range(n_layers)]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path!r} is not a valid fastmlp model: {exc}") from None
    return model
