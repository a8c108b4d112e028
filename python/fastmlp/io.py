"""Saving and loading models and checkpoints as ``.npz`` archives, without pickle, in memory
bounded by what the file justifies.

An archive holds exactly these entries (all plain NumPy arrays, never unpickled):

=================  ===========================================================
``format``         the string ``"fastmlp.MLP"``
``format_version`` int64, currently 1
``layer_sizes``    int64 (L + 1,)
``activation``     string, ``output`` string, ``dtype`` string
``W0`` … ``W{L-1}`` weights, shape (n_l, n_{l-1}), dtype as recorded
``b0`` … ``b{L-1}`` biases, shape (n_l,)
``precision``      string, only when not ``"float32"`` (``MLP.precision``); a file without
                   it is float32, so float32 models stay readable by fastmlp 0.1
=================  ===========================================================

Reading (``read_model``, ``read_checkpoint``, ``read_npz``) checks the member names, the
zip's sizes and each member's ``.npy`` header (shape, dtype) against what ``layer_sizes``
needs before any array data is read: a few-KB file cannot make the reader allocate more than
the file holds (or, for a compressed member, a bounded multiple of it).

``write_atomically`` writes to a temporary file beside the target (``.<name>.fastmlp-<host>-
<pid>-<random>.tmp``, mode as ``open`` would give a new file, or the replaced file's mode),
flushes and fsyncs it, then renames it over the target: a crash mid-write leaves the old file
intact, and the next save of that name removes temporaries whose writer has died.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import time

from dataclasses import dataclass

import numpy as np

from fastmlp._npz import (DEFAULT_MAX_RATIO, READ_ERRORS, Archive, Header, MiB, Refused,
                          npz_names, open_archive, read_npz, reason)
from fastmlp._validation import check_activation, check_precision, model_dtype
from fastmlp.optim import Optimizer

FORMAT_NAME = "fastmlp.MLP"
FORMAT_VERSION = 1

__all__ = ["ModelRecord", "save_model", "read_model", "save_checkpoint", "read_checkpoint",
           "read_npz", "npz_names", "write_atomically", "FORMAT_VERSION"]


def _model_arrays(model) -> dict[str, np.ndarray]:
    arrays = {
        "format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "layer_sizes": np.array(model.layer_sizes, dtype=np.int64),
        "activation": np.array(model.activation),
        "output": np.array(model.output),
        "dtype": np.array(model.dtype.name),
    }
    if model.precision != "float32":
        arrays["precision"] = np.array(model.precision)
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        arrays[f"W{i}"] = w
        arrays[f"b{i}"] = b
    return arrays


def save_model(model, path, before_replace=None) -> None:
    """Writes the model archive atomically (see write_atomically, and its before_replace)."""
    write_npz_atomically(path, _model_arrays(model), before_replace)


def write_npz_atomically(path, arrays: dict[str, np.ndarray], before_replace=None) -> None:
    # a file object: numpy does not append ".npz" to the name
    write_atomically(path, lambda f: np.savez(f, **arrays), before_replace)


# ---- atomic writes --------------------------------------------------------------------------
#
# Temporaries are named ".<target name>.fastmlp-<host>-<pid>-<random>.tmp" (the target name cut
# to 96 bytes). <host> is 8 hex digits of a hash of the host name, so a pid is only judged on
# the host that wrote it. A later save of the same name removes such a temporary when its
# writer is dead (same host, no process with that pid; Windows: never judged by pid) or when
# it is older than _STALE_AGE_S (no save lasts a week). Nothing else is ever removed: only
# regular files whose whole name matches that pattern for this target.

_STALE_AGE_S = 7 * 24 * 3600


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temporary_stem(name: str) -> str:
    stem = name
    while len(os.fsencode(stem)) > 96:
        stem = stem[:-1]
    return f".{stem}.fastmlp-"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    if pid == os.getpid():  # another thread of this process may be saving the same name
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or a pid we cannot judge): leave it
    return True


def remove_stale_temporaries(path) -> list[str]:
    """Removes the temporaries of earlier saves of ``path`` whose writer died (e.g. killed
    mid-save) or that are older than a week; returns the removed paths. Never touches a live
    process's temporary or any other file."""
    directory, name = os.path.split(os.path.realpath(os.fspath(path)))
    pattern = re.compile(re.escape(_temporary_stem(name))
                         + r"([0-9a-f]{8})-([0-9]{1,10})-[0-9a-f]{8}\.tmp")
    host, now, removed = _host_tag(), time.time(), []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > _STALE_AGE_S
            dead = match.group(1) == host and not _pid_alive(int(match.group(2)))
            if old or dead:
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            pass  # gone meanwhile, or not ours to remove
    return removed


def write_atomically(path, write, before_replace=None) -> None:
    """Calls write(f) on a temporary file beside `path`, fsyncs it, renames it over `path`
    and fsyncs the directory: readers see the old file or the new one, never a part, and a
    crash mid-write leaves the old file intact.

    The file gets the mode a new file opened with ``open(path, "wb")`` would get
    (``0o666 & ~umask``), or, when it replaces a file, that file's permission bits. A
    symbolic link is followed: its target is replaced and the link stays a link. Temporaries
    left by earlier saves of this name whose writer died are removed first.
    before_replace(tmp_path), if given, runs once the temporary is complete and durable, just
    before the rename (the CLI writes the model's sidecar there, so that the model never
    appears without it); if it raises, nothing is replaced."""
    given = os.fspath(path)
    if not given:  # realpath("") is the working directory
        raise ValueError("the path to write is empty; expected a file name")
    path = os.path.realpath(given)
    if os.path.isdir(path):  # refused before the write, not by the rename after it
        raise IsADirectoryError(errno.EISDIR, "is a directory; expected a file name", given)
    directory, name = os.path.split(path)
    remove_stale_temporaries(path)
    try:
        existing = os.stat(path)
        mode = stat.S_IMODE(existing.st_mode) & 0o777 if stat.S_ISREG(existing.st_mode) else None
    except OSError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp_path = os.path.join(directory, f"{_temporary_stem(name)}{_host_tag()}-"
                                           f"{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp_path, flags, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
        except OSError as exc:  # named after the path given, not the temporary
            raise type(exc)(exc.errno, exc.strerror, given) from None
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp_path)
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


_SMALL_MEMBER = 64 * 1024      # format, format_version, layer_sizes, activation, output, dtype
_MAX_JSON_MEMBER = 64 * MiB   # a checkpoint's JSON (as UTF-32: ~16 M characters)


# ---- models -----------------------------------------------------------------------------------

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
    precision: str = "float32"  # the GEMMs' (MLP.precision)

    def describe(self) -> str:
        precision = "" if self.precision == "float32" else f", precision={self.precision!r}"
        return (f"MLP({self.layer_sizes}, activation={self.activation!r}, "
                f"output={self.output!r}, dtype={self.dtype.name!r}{precision})")


def _kind_name(h: Header) -> str:
    return f"{h.dtype} array of shape {h.shape}"


def _read_small(archive: Archive, key: str, max_bytes: int = _SMALL_MEMBER):
    """(header, array) of a member that must be small (header checked first)."""
    h = archive.header(key)
    if h.nbytes > max_bytes:
        raise Refused(f"entry {key!r} is {h.nbytes} bytes, expected at most {max_bytes}")
    return h, archive.read(key, h)


def _read_string(archive: Archive, key: str, max_bytes: int = _SMALL_MEMBER) -> str:
    h = archive.header(key)
    if h.dtype.kind != "U" or h.shape != ():
        raise Refused(f"entry {key!r} must be a string, got a {_kind_name(h)}")
    return str(_read_small(archive, key, max_bytes)[1])


class _Parameters:
    """The header entries of a model archive, read and checked; the expected parameter
    members and their shapes."""

    def __init__(self, archive: Archive):
        names = archive.names
        missing = [key for key in _HEADER if key not in names]
        if "format" in missing:
            listed = ", ".join(repr(n) for n in names[:10]) or "none"
            raise Refused(f"it has no 'format' entry, so it is not a fastmlp model archive "
                          f"(arrays: {listed}{', ...' if len(names) > 10 else ''})")
        fmt = _read_string(archive, "format")  # first: another format lacks other entries
        if fmt != FORMAT_NAME:
            hint = (" (an int8 model: read it with fastmlp.QuantizedMLP.load)"
                    if fmt == "fastmlp.QuantizedMLP" else "")
            raise Refused(f"format is {fmt!r}, expected {FORMAT_NAME!r}{hint}")
        if missing:
            raise Refused(f"missing entries {missing}")
        h, version = _read_small(archive, "format_version")
        if h.shape != () or h.dtype.kind not in "iu":
            raise Refused(f"format_version must be an integer scalar, got a {_kind_name(h)}")
        if int(version) != FORMAT_VERSION:
            raise Refused(f"format_version {int(version)} is not supported "
                          f"(this fastmlp reads version {FORMAT_VERSION})")
        self.dtype = model_dtype(_read_string(archive, "dtype"))
        self.activation = check_activation(_read_string(archive, "activation"))
        self.output = _read_string(archive, "output")
        self.precision = "float32"
        if "precision" in names:
            try:
                self.precision = check_precision(_read_string(archive, "precision"),
                                                 self.dtype)
            except ValueError as exc:
                raise Refused(str(exc)) from None
        h, sizes = _read_small(archive, "layer_sizes")
        if h.dtype.kind not in "iu" or len(h.shape) != 1 or h.shape[0] < 2:
            raise Refused("layer_sizes must be a 1-D integer array of at least 2 entries, "
                          f"got a {_kind_name(h)}")
        self.layer_sizes = [int(s) for s in sizes]
        if any(s < 1 for s in self.layer_sizes):
            raise Refused(f"layer_sizes must be positive, got {self.layer_sizes}")
        self.n_layers = len(self.layer_sizes) - 1
        # W_l (n_{l+1}, n_l), b_l (n_{l+1},), in parameter order (weights, then biases)
        self.shapes = {f"W{i}": (self.layer_sizes[i + 1], self.layer_sizes[i])
                       for i in range(self.n_layers)}
        self.shapes.update({f"b{i}": (self.layer_sizes[i + 1],) for i in range(self.n_layers)})

    def check_names(self, archive: Archive, extra=()) -> None:
        expected = set(_HEADER) | set(self.shapes) | set(extra)
        if "precision" in archive.names:
            expected.add("precision")
        if set(archive.names) != expected:
            extra_names = sorted(set(archive.names) - expected)
            missing = sorted(expected - set(archive.names))
            raise Refused(f"unexpected entries {extra_names}, missing entries {missing}")

    def read(self, archive: Archive, expected: dict[str, tuple[str, tuple]]) -> dict:
        """Members ``key -> (label, shape)`` of this model's dtype; every header checked
        before any data is read."""
        headers = {}
        for key, (label, shape) in expected.items():
            h = archive.header(key)
            if h.shape != shape:
                raise Refused(f"{label} has shape {h.shape}, expected {shape}")
            if h.dtype != self.dtype:
                raise Refused(f"{label} has dtype {h.dtype}, expected {self.dtype}")
            headers[key] = h
        return {key: archive.read(key, h) for key, h in headers.items()}

    def record(self, arrays: dict) -> ModelRecord:
        return ModelRecord(list(self.layer_sizes), self.activation, self.output, self.dtype,
                           [arrays[f"W{i}"] for i in range(self.n_layers)],
                           [arrays[f"b{i}"] for i in range(self.n_layers)], self.precision)


def read_model(path) -> ModelRecord:
    """The validated contents of a model archive written by ``save_model``; ValueError for
    anything malformed (``MLP.load`` builds the model from it). Reads no array data before
    the names, sizes and headers of every member match ``layer_sizes``."""
    path, archive = open_archive(path, "a fastmlp model archive", DEFAULT_MAX_RATIO)
    with archive:
        try:
            params = _Parameters(archive)
            params.check_names(archive)
            arrays = params.read(archive, {k: (k, s) for k, s in params.shapes.items()})
        except READ_ERRORS as exc:
            raise ValueError(f"{path!r} is not a valid fastmlp model: {reason(exc)}") from None
    return params.record(arrays)


# ---- training checkpoints ----------------------------------------------------------------
#
# A checkpoint is a model archive plus: "checkpoint" (a JSON string: epochs done, the epoch
# seed generator's state, the history so far, batch size, shuffle, and the optimizer's
# state_dict without its arrays) and the optimizer's state arrays "optim.{i}.{name}" (e.g.
# "optim.0.exp_avg"), one set per parameter array (weights, then biases), each of its
# parameter's shape and dtype.
# Checkpoints of fastmlp 0.1 (optimizer "kind" sgd/adam, arrays "opt_a{i}"/"opt_b{i}") load too.

_MAX_COUNT = 2**53            # epochs, steps, batch sizes: exact in a double, absurd beyond
_MAX_STATE_NAMES = 4          # per parameter (SGD has 1, Adam and AdamW 2)
_HISTORY_NUMBERS = ("loss", "l2_penalty", "val_loss", "val_accuracy", "samples_per_second")
_HISTORY_FLAGS = ("one_thread_fallback",)


def save_checkpoint(path, model, optimizer, progress: dict) -> None:
    arrays = _model_arrays(model)
    state = optimizer.state_dict()
    per_parameter = state.pop("state")
    arrays["checkpoint"] = np.array(json.dumps(dict(progress, optimizer=state)))
    for i, entry in enumerate(per_parameter):
        for name, value in entry.items():
            arrays[f"optim.{i}.{name}"] = value
    write_npz_atomically(path, arrays)


def _count(meta: dict, key: str, low: int) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"field {key!r} must be an integer, got {value!r:.40}")
    if not low <= value <= _MAX_COUNT:
        raise Refused(f"field {key!r} must be between {low} and 2**53, got {value!r:.40}")
    return value


def _history(value, epochs_done: int) -> dict[str, list]:
    """The saved History as lists of floats / bools, checked (fields of fastmlp's History;
    loss and samples_per_second one per epoch; the others at most that many: 0.1 had no
    l2_penalty, a resumed fit may add validation scores)."""
    if not isinstance(value, dict) or "loss" not in value:
        raise Refused("field 'history' must be an object with a 'loss' list")
    unknown = sorted(set(value) - set(_HISTORY_NUMBERS) - set(_HISTORY_FLAGS))
    if unknown:
        raise Refused(f"field 'history' has unknown entries {unknown}")
    history = {}
    for key, values in value.items():
        if not isinstance(values, list):
            raise Refused(f"field 'history.{key}' must be a list, got {values!r:.40}")
        if key in _HISTORY_FLAGS:
            if not all(isinstance(v, bool) for v in values):
                raise Refused(f"field 'history.{key}' must hold true/false values")
            history[key] = list(values)
            continue
        floats = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise Refused(f"field 'history.{key}' must hold numbers, got {v!r:.40}")
            try:
                floats.append(float(v))
            except OverflowError:
                raise Refused(f"field 'history.{key}' holds a number too large for a "
                              "float") from None
        history[key] = floats
    n = len(history["loss"])
    if n > epochs_done:
        raise Refused(f"field 'history.loss' has {n} epochs, more than epochs_done "
                      f"({epochs_done})")
    for key, values in history.items():
        if len(values) > n or (key == "samples_per_second" and len(values) != n):
            raise Refused(f"field 'history.{key}' has {len(values)} entries but "
                          f"'history.loss' has {n}")
    return history


def _rng_state(value) -> dict:
    """A PCG64 state (fit's default_rng), checked by setting it on a scratch generator."""
    if not isinstance(value, dict):
        raise Refused(f"field 'rng_state' must be an object, got {value!r:.40}")
    if value.get("bit_generator") != "PCG64":
        raise Refused("field 'rng_state' must be the state of a PCG64 generator, got "
                      f"bit_generator {value.get('bit_generator')!r:.40}")
    try:
        np.random.PCG64().state = value
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError, IndexError) as exc:
        raise Refused(f"field 'rng_state' is not a valid generator state ({exc})") from None
    return value


def _progress(meta) -> dict:
    """The checkpoint's JSON metadata, every field _training._resume uses checked."""
    if not isinstance(meta, dict):
        raise Refused("the 'checkpoint' entry must be a JSON object")
    for key in ("optimizer", "epochs_done", "rng_state", "history", "batch_size", "shuffle"):
        if key not in meta:
            raise Refused(f"checkpoint metadata lacks {key!r}")
    if not isinstance(meta["optimizer"], dict):
        raise Refused("field 'optimizer' must be an object")
    checked = dict(meta)
    checked["epochs_done"] = _count(meta, "epochs_done", 0)
    checked["batch_size"] = _count(meta, "batch_size", 1)
    if "steps" in meta:
        checked["steps"] = _count(meta, "steps", 0)
    if not isinstance(meta["shuffle"], bool) and meta["shuffle"] != "block":
        raise Refused(f"field 'shuffle' must be true, false or \"block\", got "
                      f"{meta['shuffle']!r:.40}")
    checked["rng_state"] = _rng_state(meta["rng_state"])
    checked["history"] = _history(meta["history"], checked["epochs_done"])
    return checked


def _optimizer_state_v1(opt: dict, arrays, n_params: int, meta: dict) -> dict:
    """A fastmlp 0.1 checkpoint's optimizer entry as a state_dict."""
    kind = opt.get("kind")
    if kind == "sgd":
        names = ["momentum_buffer"]
        if "steps" not in meta:
            raise Refused("checkpoint metadata lacks 'steps'")
        state = {"optimizer": "SGD", "steps": meta["steps"],
                 "hyperparameters": {"lr": opt["lr"], "momentum": opt["momentum"],
                                     "weight_decay": opt["weight_decay"],
                                     "nesterov": opt["nesterov"]},
                 "started": [not first for first in opt["first_step"]]}
    else:  # "adam" (checked by _state_keys_v1)
        names = ["exp_avg", "exp_avg_sq"]
        state = {"optimizer": "Adam", "steps": opt["steps"],
                 "hyperparameters": {"lr": opt["lr"], "betas": [opt["beta1"], opt["beta2"]],
                                     "eps": opt["eps"], "weight_decay": opt["weight_decay"]},
                 "started": [True] * n_params}
    state["state"] = [{name: arrays[f"opt_{ab}{i}"] for name, ab in zip(names, "ab")
                       if f"opt_{ab}{i}" in arrays} for i in range(n_params)]
    return state


def _state_keys(opt: dict, names: list[str], n_params: int) -> dict[str, tuple[int, str]]:
    """The optimizer state members: key -> (parameter index, state name)."""
    keys = {}
    if "kind" in opt:  # fastmlp 0.1
        if opt["kind"] not in ("sgd", "adam"):
            raise Refused(f"unknown optimizer kind {opt['kind']!r:.40}")
        ab = "a" if opt["kind"] == "sgd" else "ab"
        allowed = {f"opt_{x}{i}": (i, x) for i in range(n_params) for x in ab}
        for key in names:
            if key.startswith("opt_"):
                if key not in allowed:
                    raise Refused(f"optimizer state {key!r} names no parameter")
                keys[key] = allowed[key]
        return keys
    per_parameter = [0] * n_params
    for key in names:
        if not key.startswith("optim."):
            continue
        match = re.fullmatch(r"optim\.(0|[1-9][0-9]{0,8})\.([A-Za-z_][A-Za-z0-9_]{0,63})", key)
        if match is None or int(match.group(1)) >= n_params:
            raise Refused(f"optimizer state {key!r} names no parameter")
        index = int(match.group(1))
        per_parameter[index] += 1
        if per_parameter[index] > _MAX_STATE_NAMES:
            raise Refused(f"parameter {index} has more than {_MAX_STATE_NAMES} optimizer "
                          "state arrays")
        keys[key] = (index, match.group(2))
    return keys


def read_checkpoint(path) -> tuple[ModelRecord, Optimizer, dict]:
    """(model record, optimizer, progress) from a checkpoint written by
    ``fit(checkpoint=...)``. Everything ``_training._resume`` uses is checked: epochs_done
    (int ≥ 0), batch_size (int ≥ 1), steps (int ≥ 0, if present), shuffle (bool or
    "block"), rng_state (a PCG64 state), history (lists of numbers / bools, consistent
    lengths; returned as floats / bools), the optimizer (``Optimizer.from_state_dict``).
    Memory is bounded as in ``read_model``: the JSON member to 64 MiB, each optimizer array
    to its parameter's shape, all checked before any array data is read."""
    path, archive = open_archive(path, "a fastmlp checkpoint", DEFAULT_MAX_RATIO)
    with archive:
        try:
            params = _Parameters(archive)
            if "checkpoint" not in archive.names:
                raise Refused("no 'checkpoint' entry: this is not a training checkpoint")
            try:
                meta = json.loads(_read_string(archive, "checkpoint", _MAX_JSON_MEMBER))
            except RecursionError:
                raise Refused("the 'checkpoint' JSON is nested too deeply") from None
            except json.JSONDecodeError as exc:
                raise Refused(f"the 'checkpoint' entry is not valid JSON ({exc})") from None
            meta = _progress(meta)
            opt = meta["optimizer"]
            n_params = 2 * params.n_layers
            state_keys = _state_keys(opt, archive.names, n_params)
            params.check_names(archive, {"checkpoint", *state_keys})
            order = list(params.shapes)  # W0.., b0..: the parameter order of state_dict
            expected = {k: (k, s) for k, s in params.shapes.items()}
            for key, (index, name) in state_keys.items():
                expected[key] = (f"optimizer state {name!r} of parameter {index}",
                                 params.shapes[order[index]])
            arrays = params.read(archive, expected)
        except READ_ERRORS as exc:
            raise ValueError(f"{path!r} is not a valid fastmlp checkpoint: "
                             f"{reason(exc)}") from None
    try:
        if "kind" in opt:
            state = _optimizer_state_v1(opt, arrays, n_params, meta)
        else:
            state = dict(opt)
            state["state"] = [{} for _ in range(n_params)]
            for key, (index, name) in state_keys.items():
                state["state"][index][name] = arrays[key]
        optimizer = Optimizer.from_state_dict(state)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            RecursionError) as exc:
        raise ValueError(f"{path!r} is not a valid fastmlp checkpoint: field 'optimizer': "
                         f"{exc}") from None
    return params.record(arrays), optimizer, meta
