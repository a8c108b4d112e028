"""Data files for the command line: CSV / ``.npz`` tables, class-label encoding, feature
standardisation, and the metadata sidecar ``<model>.meta.json`` written beside a model.

Legend: N rows, F feature columns, K classes.

A CSV file has a header row; the target column is named with ``--target``, every other column
is a feature and must be numeric. A ``.npz`` holds ``X`` (N, F) and, for training and
evaluation, ``y`` (N,) (another array name can be given as the target). Labels may be any
strings or numbers; they are mapped to class indices 0..K-1 in sorted order (numerically
when every label is a number; numbers compare exactly, so integers beyond 2**53 stay distinct)
and the original labels are kept in the sidecar.

The task: a classifier of those labels, or a regression of a numeric target. ``infer_task``
picks regression when every target is a number and either some target is not an integer
(scikit-learn's ``type_of_target`` "continuous") or the integers take more than 20 distinct
values, more than 5 % of the rows (a count, a price in cents, a year: not class labels);
``--task`` overrides it. A regression model learns the standardised target,
t' = (t - target_mean) / target_std (training rows' mean and std), and its predictions are
mapped back.

A CSV written by pandas ``df.to_csv(path)`` starts with the frame's index: a column of empty
name (or ``Unnamed: 0``, as pandas reads it back) holding 0, 1, ..., N-1 in order. It is not a
feature: ``read_table`` drops it and says so in ``Table.notes``.

The sidecar (JSON, UTF-8) keeps what ``MLP.save`` does not, so the ``.npz`` stays a plain
model that ``MLP.load`` reads::

    {"format": "fastmlp.cli-metadata", "format_version": 1,
     "model_sha256": hex digest of the model file it belongs to,
     "target": target column name or null,
     "task": "classification" or "regression" (absent in older sidecars: classification),
     "classes": [original label of class 0, ..., of class K-1] (null for regression),
     "target_mean": float, "target_std": float,                # regression only
     "feature_names": [F column names] or null (positional features),
     "feature_mean": [F floats], "feature_std": [F floats],   # x' = (x - mean) / std
     "training": {settings the model was trained with, for the record}}

Files are written atomically: to a temporary file in the target directory, flushed and
fsynced, then renamed over the target. ``save_with_meta`` checks the sidecar before writing
anything and renames the model into place only after its sidecar is written, so a model file
is never left without one. The sidecar holds only finite numbers (the standardisation is
finite for any finite data).
"""

from __future__ import annotations

import csv
import decimal
import gzip
import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from fastmlp.io import npz_names, read_npz, save_model

__all__ = ["DataError", "Table", "read_table", "encode_labels", "infer_task", "numeric_targets",
           "Standardizer", "ModelMeta", "meta_path", "meta_document", "write_meta",
           "save_with_meta", "read_meta", "load_model", "atomic_write", "describe_path",
           "check_output"]

META_FORMAT = "fastmlp.cli-metadata"
META_VERSION = 1
_MAX_META_BYTES = 64 << 20
META_SUFFIX = ".meta.json"
TASKS = ("classification", "regression")
# infer_task: integer targets with more distinct values than both of these are a quantity.
MAX_CLASSES_INFERRED = 20
MAX_CLASS_FRACTION_INFERRED = 0.05
INDEX_COLUMN_NAMES = ("", "Unnamed: 0")


class DataError(Exception):
    """A problem with the user's files or data: reported as one line, exit status 1."""


def describe_path(path) -> str:
    return repr(os.fspath(path))


def check_output(path: str, option: str, inputs=()) -> None:
    """Refuse an output path that cannot be written before any work is done, or that is
    (a link to) one of the command's input files: ``inputs``, ``(path, what)`` pairs (the
    data, the model, its sidecar), which the output would overwrite."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DataError(f"{option} {path!r}: the directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise DataError(f"{option} {path!r} is a directory; expected a file name")
    for kept, what in inputs:
        if os.path.exists(path) and os.path.exists(kept) and os.path.samefile(path, kept):
            raise DataError(f"{option} {path!r} is {what}, which it would overwrite; choose "
                            "another name")


# ---- reading tables -------------------------------------------------------------------------


@dataclass
class Table:
    """Features and (optionally) raw labels read from a file.

    X: (N, F) float64, finite. labels: (N,) as read (str for CSV), or None when the file has
    no target. feature_names: the F column names, or None for a ``.npz`` without names.
    notes: warnings about the file for the user (a dropped index column).
    """

    path: str
    X: np.ndarray
    labels: np.ndarray | None
    feature_names: list[str] | None
    target: str | None
    notes: list[str] = field(default_factory=list)


def _is_npz(path: str) -> bool:
    return path.lower().endswith(".npz")


def read_table(path, target: str | None = None, feature_names: list[str] | None = None,
               need_target: bool = False, npz_fallback: bool = False) -> Table:
    """Read a CSV or ``.npz`` file.

    target: the label column (CSV) or array (``.npz``, default ``y``); None for a CSV without
    one. feature_names: select these columns, in this order (CSV; other columns are ignored);
    None takes every column but the target. need_target: a missing target is an error
    (otherwise the labels are None). npz_fallback: in a ``.npz`` without array ``target``,
    read ``y`` instead (for a target remembered from training on a CSV).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"no such file: {describe_path(path)}")
    if os.path.isdir(path):
        raise DataError(f"{describe_path(path)} is a directory, expected a .csv or .npz file")
    if _is_npz(path):
        return _read_npz(path, target, need_target, npz_fallback)
    return _read_csv(path, target, feature_names, need_target)


def _memory_bytes() -> int:
    """This machine's physical memory (64 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def _read_npz(path: str, target: str | None, need_target: bool, fallback: bool) -> Table:
    name = describe_path(path)
    tried = [target or "y"] + (["y"] if fallback and target not in (None, "y") else [])
    try:
        # The bounded reader (fastmlp/_npz.py): member headers and zip sizes are checked
        # before any data is read, and only the arrays used here are read at all; what they
        # declare must fit in half of this machine's memory.
        keys = npz_names(path)
        if "X" not in keys:
            raise DataError(f"{name} has no array 'X' (arrays: {', '.join(keys) or 'none'})")
        label_key = next((key for key in tried if key in keys), tried[0])
        arrays = read_npz(path, allowed={"X", label_key, "feature_names"},
                          max_bytes=_memory_bytes() // 2)
        X = arrays["X"]
        labels = arrays.get(label_key)
        names = arrays.get("feature_names")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{name} is not a readable .npz archive of plain arrays: {exc}") from None
    if labels is None and need_target:
        raise DataError(f"{name} has no label array {' or '.join(map(repr, tried))} "
                        f"(arrays: {', '.join(keys)})")
    if X.dtype.kind not in "fiub":
        raise DataError(f"{name}: X must hold numbers, got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{name}: X must be 2-D (n_samples, n_features) and non-empty, "
                        f"got shape {X.shape}")
    source = X
    with np.errstate(over="ignore"):  # float128 beyond the float64 range: reported below
        X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        if np.isfinite(source[row, column]):
            raise DataError(f"{name}: X holds values beyond the float64 range (first in row "
                            f"{row}, column {column})")
        raise DataError(f"{name}: X contains NaN or infinity (first in row {row})")
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
            raise DataError(f"{name}: {label_key} must be 1-D with one label per row of X "
                            f"({X.shape[0]}), got shape {labels.shape}")
        if labels.dtype.kind not in "biufUS":
            raise DataError(f"{name}: {label_key} must hold class labels (integers, strings or "
                            f"bools), got dtype {labels.dtype}")
        if labels.dtype.kind == "S":
            labels = labels.astype(str)
    feature_list = None
    if names is not None and names.ndim == 1 and names.shape[0] == X.shape[1] \
            and names.dtype.kind in "US":
        feature_list = [str(n) for n in names.astype(str)]
    return Table(path, X, labels, feature_list, label_key if labels is not None else None)


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_csv(path: str, target: str | None, feature_names: list[str] | None,
              need_target: bool) -> Table:
    name = describe_path(path)
    delimiter = "\t" if path.lower().endswith((".tsv", ".tsv.gz")) else ","
    rows: list[list[str]] = []
    lines: list[int] = []  # the file line each row starts on, for messages
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = None
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank line
                if header is None:
                    header = [cell.strip() for cell in row]
                    width = len(header)
                    continue
                if len(row) != width:
                    raise DataError(f"{name} line {reader.line_num}: {len(row)} fields, "
                                    f"expected {width} (as in the header)")
                rows.append([cell.strip() for cell in row])
                lines.append(reader.line_num)
    except DataError:
        raise
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:
        raise DataError(f"{name} is not a readable CSV file: {exc}") from None
    if header is None:
        raise DataError(f"{name} is empty; expected a header row naming the columns")
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise DataError(f"{name}: the header names column {duplicates[0]!r} more than once")
    if not rows:
        raise DataError(f"{name} has a header but no data rows")
    notes = []
    if _is_index_column(header, rows, target, feature_names):
        notes.append(f"{name}: dropped the first column {header[0]!r}, a row index 0.."
                     f"{len(rows) - 1} (as pandas' to_csv writes it), not a feature")
        header = header[1:]
        rows = [row[1:] for row in rows]

    columns = ", ".join(header)
    if target is not None and target not in header:
        if need_target:
            raise DataError(f"{name} has no target column {target!r} (columns: {columns})")
        target = None
    if target is None and need_target:
        raise DataError(f"{name}: name the target column with --target (columns: {columns})")

    if feature_names is not None:
        missing = [c for c in feature_names if c not in header]
        if missing:
            available = [c for c in header if c != target]
            counts = "" if len(available) == len(feature_names) else \
                f"has {len(available)} feature columns but the model expects " \
                f"{len(feature_names)}; it "
            raise DataError(f"{name} {counts}lacks the model's feature columns "
                            f"{', '.join(missing)} (its columns: {', '.join(header)})")
        selected = list(feature_names)
    else:
        selected = [c for c in header if c != target]
    if not selected:
        raise DataError(f"{name} has no feature columns besides the target {target!r}")

    cells = np.array(rows, dtype=str)  # (N, columns)
    X = np.empty((len(rows), len(selected)), dtype=np.float64)
    for j, column in enumerate(selected):
        X[:, j] = _numeric_column(cells[:, header.index(column)], column, lines, name)
    labels = None
    if target is not None:
        labels = cells[:, header.index(target)]
        empty = np.flatnonzero(labels == "")
        if empty.size:
            raise DataError(f"{name} line {lines[empty[0]]}: the target column {target!r} "
                            "is empty")
    return Table(path, X, labels, selected, target, notes)


def _is_index_column(header: list[str], rows: list[list[str]], target: str | None,
                     feature_names: list[str] | None) -> bool:
    """Whether the first column is a row index: unnamed (pandas' to_csv, or "Unnamed: 0") and
    holding 0, 1, ..., N-1 in order, and neither the target nor a feature the caller asked
    for by name."""
    first = header[0]
    if first not in INDEX_COLUMN_NAMES or first == target or len(header) < 2:
        return False
    if feature_names is not None and first in feature_names:
        return False
    return all(row[0] == str(i) for i, row in enumerate(rows))


def _numeric_column(text: np.ndarray, column: str, lines: list[int], name: str) -> np.ndarray:
    try:
        values = text.astype(np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    for i, cell in enumerate(text):  # find the first bad cell, for the message
        try:
            value = float(cell)
        except ValueError:
            value = None
        if cell == "":
            raise DataError(f"{name} line {lines[i]}: column {column!r} has an empty cell; "
                            "features must be numbers (fill or drop missing values)")
        if value is None:
            raise DataError(f"{name} line {lines[i]}: column {column!r} is not numeric "
                            f"({str(cell)!r}); features must be numbers (encode categories as "
                            "numbers, or drop the column)")
        if not math.isfinite(value):
            raise DataError(f"{name} line {lines[i]}: column {column!r} has {str(cell)!r}; "
                            "features must be finite numbers")
    raise AssertionError("unreachable: a column failed to convert but every cell converts")


# ---- labels ---------------------------------------------------------------------------------


def _label_key(value):
    """What makes two labels equal: numbers by exact value ("1", "1.0" and 1 are one class;
    9007199254740993 and 9007199254740992 are two: no float round trip), everything else by
    its text. Numeric keys are int, float or Decimal, which compare and hash exactly across
    types."""
    if isinstance(value, (bool, np.bool_)):
        return ("s", str(bool(value)))
    if isinstance(value, (int, np.integer)):
        return ("n", int(value))
    if isinstance(value, (float, np.floating)):
        return ("n", float(value))
    text = str(value).strip()
    try:
        number = decimal.Decimal(text)
    except (decimal.InvalidOperation, ValueError):
        return ("s", text)
    return ("n", number) if number.is_finite() else ("s", text)


def _is_integral(number) -> bool:
    if isinstance(number, int):
        return True
    if isinstance(number, float):
        return number.is_integer()
    return number == number.to_integral_value()


def _json_label(value):
    """A label as a JSON value: Python str, int, float or bool."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value) if abs(value) < 2**53 else value
    return value


def encode_labels(labels: np.ndarray, source: str) -> tuple[list, np.ndarray]:
    """Class list and class indices (N,) int64 for raw labels: classes sorted numerically if
    every label is a number, else as text. Refuses fewer than 2 classes and continuous
    (non-integer numeric) targets."""
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise DataError(f"{source}: the labels contain NaN or infinity")
    first: dict = {}
    keys = []
    for value in labels.tolist():
        key = _label_key(value)
        keys.append(key)
        first.setdefault(key, value)
    if len(first) < 2:
        only = next(iter(first.values())) if first else None
        raise DataError(f"{source}: the labels hold a single class ({only!r}); "
                        "a classifier needs at least 2")
    numeric = all(kind == "n" for kind, _ in first)
    if numeric:
        fractional = [v for kind, v in first if not _is_integral(v)]
        if fractional:
            raise DataError(f"{source}: the labels hold non-integer numbers (e.g. "
                            f"{fractional[0]:g}); a classifier needs class labels (train "
                            "with --task regression for a continuous quantity)")
    ordered = sorted(first, key=lambda key: key[1]) if numeric else \
        sorted(first, key=lambda key: str(key[1]))
    index = {key: i for i, key in enumerate(ordered)}
    y = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
    return [_json_label(first[key]) for key in ordered], y


def infer_task(labels: np.ndarray) -> tuple[str, str]:
    """("classification" or "regression", why) for raw targets (N,), by the rule of this
    module's documentation."""
    if labels.dtype.kind == "b":
        return "classification", "boolean labels"
    keys = {_label_key(value) for value in labels.tolist()}
    if any(kind != "n" for kind, _ in keys):
        return "classification", "text labels"
    n, distinct = len(labels), len(keys)
    if not all(_is_integral(value) for _, value in keys):
        return "regression", f"non-integer numbers, {distinct} distinct values in {n} rows"
    if distinct > MAX_CLASSES_INFERRED and distinct > MAX_CLASS_FRACTION_INFERRED * n:
        return "regression", f"integers of {distinct} distinct values in {n} rows"
    return "classification", f"integers of {distinct} distinct values in {n} rows"


def numeric_targets(labels: np.ndarray, source: str) -> np.ndarray:
    """The targets (N,) float64 of a regression: numbers, finite."""
    if labels.dtype.kind not in "iufUS":
        raise DataError(f"{source}: a regression model needs numeric targets, got dtype "
                        f"{labels.dtype}")
    try:
        values = labels.astype(np.float64)
    except ValueError:
        raise DataError(f"{source}: a regression model needs numeric targets (the target "
                        "column holds text)") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise DataError(f"{source}: target {labels[bad[0]]!r} (row {bad[0] + 1}) is not a "
                        "finite number")
    return values


def labels_to_indices(labels: np.ndarray, classes: list, source: str) -> np.ndarray:
    """Class indices (N,) of raw labels against a trained model's class list."""
    index = {_label_key(c): i for i, c in enumerate(classes)}
    y = np.empty(labels.shape[0], dtype=np.int64)
    for i, value in enumerate(labels.tolist()):
        position = index.get(_label_key(value))
        if position is None:
            shown = ", ".join(str(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise DataError(f"{source}: label {value!r} (row {i}) is not one of the classes "
                            f"the model was trained on ({shown})")
        y[i] = position
    return y


# ---- standardisation ------------------------------------------------------------------------


@dataclass
class Standardizer:
    """x' = (x - mean) / std per feature; mean, std (F,) float64 (std 1 for constant
    columns)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardizer":
        """The columns' mean and std, finite for any finite X: each column is scaled by a
        power of two near its largest magnitude first (exact, so the moments are the plain
        ones wherever those are finite; Σx² of a column of 1e200 would overflow)."""
        peak = np.abs(X).max(axis=0)
        _, exponent = np.frexp(peak)  # peak = f · 2**exponent, f in [0.5, 1); 0 for 0
        shift = exponent - 1
        scaled = np.ldexp(X, -shift)  # |scaled| < 2
        largest = np.finfo(np.float64).max
        mean = np.ldexp(scaled.mean(axis=0), shift)
        std = np.minimum(np.ldexp(scaled.std(axis=0), shift), largest)  # std <= peak
        return cls(mean, np.where(std > 0, std, 1.0))

    @classmethod
    def identity(cls, n_features: int) -> "Standardizer":
        return cls(np.zeros(n_features), np.ones(n_features))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(X - mean) / std, computed from halves so that X - mean cannot overflow (exact:
        the same values as the plain formula wherever it is finite). A value too far from the
        training data can still be beyond the float64 range: inf, refused by the caller."""
        with np.errstate(over="ignore"):
            return (X * 0.5 - self.mean * 0.5) / self.std * 2.0


# ---- the metadata sidecar -------------------------------------------------------------------


@dataclass
class ModelMeta:
    """What the sidecar holds. classes: the K original labels (None for regression);
    target_scaler: the regression target's standardisation, mean and std of shape (1,)."""

    classes: list | None
    feature_names: list[str] | None
    target: str | None
    scaler: Standardizer
    training: dict = field(default_factory=dict)
    task: str = "classification"
    target_scaler: Standardizer | None = None


def meta_path(model_path) -> str:
    return os.fspath(model_path) + META_SUFFIX


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file renamed over it."""
    from fastmlp.io import write_atomically
    write_atomically(path, lambda f: f.write(data))


def meta_document(meta: ModelMeta, model_sha256: str) -> bytes:
    """The sidecar's bytes; DataError if anything in it is not plain JSON (a label of another
    type, a non-finite number: JSON has no NaN or Infinity, and ``read_meta`` refuses them)."""
    document = {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "model_sha256": model_sha256,
        "target": meta.target,
        "task": meta.task,
        "classes": meta.classes,
        "feature_names": meta.feature_names,
        "feature_mean": [float(v) for v in meta.scaler.mean],
        "feature_std": [float(v) for v in meta.scaler.std],
        "training": meta.training,
    }
    if meta.target_scaler is not None:
        document["target_mean"] = float(meta.target_scaler.mean[0])
        document["target_std"] = float(meta.target_scaler.std[0])
    try:
        text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"the model's metadata cannot be written as JSON: {exc}") from None
    return (text + "\n").encode()


def write_meta(meta: ModelMeta, model_path) -> str:
    """Write the sidecar of the model file at ``model_path`` (which must exist); returns
    its path."""
    data = meta_document(meta, _sha256(os.fspath(model_path)))
    path = meta_path(model_path)
    atomic_write(path, data)
    return path


def save_with_meta(model, meta: ModelMeta, model_path) -> str:
    """Save ``model`` to ``model_path`` and its sidecar beside it, in an order that never
    leaves the model file without its sidecar: the sidecar is checked before anything is
    written; the model goes to a temporary file beside the target (fastmlp.io's, with its
    mode, symlink and stale-temporary handling); the sidecar, with that file's checksum, is
    written in place; and only then is the model renamed over the target. An error or a crash
    before that rename leaves no new model file (at worst a new sidecar beside an old model,
    which ``read_meta`` refuses by its checksum). Returns the sidecar's path."""
    model_path = os.fspath(model_path)
    meta_document(meta, "0" * 64)  # refuses what cannot be written, before any file is
    path = meta_path(model_path)

    def write_sidecar(staged: str) -> None:
        atomic_write(path, meta_document(meta, _sha256(staged)))

    save_model(model._snapshot(), model_path, before_replace=write_sidecar)
    return path


def read_meta(model_path, model) -> ModelMeta | None:
    """The sidecar of ``model_path`` checked against ``model``, or None when there is none."""
    path = meta_path(model_path)
    if not os.path.exists(path):
        return None
    name = describe_path(path)
    try:
        if os.path.getsize(path) > _MAX_META_BYTES:  # a sidecar is a few KB: never read GBs
            raise DataError(f"{name} is not a readable metadata file: larger than "
                            f"{_MAX_META_BYTES >> 20} MiB")
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{name} is not a readable metadata file: {exc}") from None
    except RecursionError:  # deeply nested arrays or objects
        raise DataError(f"{name} is not a readable metadata file: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DataError(f"{name} is not a readable metadata file: {exc}") from None
    try:
        if not isinstance(document, dict) or document.get("format") != META_FORMAT:
            raise ValueError(f"format is not {META_FORMAT!r}")
        if document.get("format_version") != META_VERSION:
            raise ValueError(f"format_version {document.get('format_version')!r} is not "
                             f"supported (this fastmlp reads {META_VERSION})")
        classes = document["classes"]
        names = document["feature_names"]
        mean = np.array(document["feature_mean"], dtype=np.float64)
        std = np.array(document["feature_std"], dtype=np.float64)
        target = document["target"]
        task = document.get("task", "classification")
        n = model.n_features
        target_scaler = None
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if (task == "classification") != model.is_classifier:
            raise ValueError(f"it describes a {task} model but the model's output is "
                             f"{model.output!r}")
        if task == "regression":
            if classes is not None:
                raise ValueError("classes must be null for a regression model")
            target_scaler = Standardizer(
                np.array([document["target_mean"]], dtype=np.float64),
                np.array([document["target_std"]], dtype=np.float64))
            if not (np.isfinite(target_scaler.mean).all() and np.isfinite(target_scaler.std)
                    .all() and (target_scaler.std > 0).all()):
                raise ValueError("target_mean / target_std must be finite numbers (std > 0)")
        elif not isinstance(classes, list):
            raise ValueError("classes must be a list")
        elif len(classes) != model.n_classes:
            raise ValueError(f"it lists {len(classes)} classes but the model has "
                             f"{model.n_classes}")
        for label in classes or []:
            if not isinstance(label, (str, int, float, bool)) or \
                    (isinstance(label, float) and not math.isfinite(label)):
                raise ValueError(f"class labels must be strings, numbers or booleans, "
                                 f"got {type(label).__name__}")
        if classes and len({_label_key(c) for c in classes}) != len(classes):
            raise ValueError("classes lists one label more than once")
        if names is not None and (not isinstance(names, list) or len(names) != n
                                  or not all(isinstance(c, str) for c in names)):
            raise ValueError(f"feature_names must be null or {n} strings")
        if mean.shape != (n,) or std.shape != (n,) or not np.isfinite(mean).all() \
                or not (np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"feature_mean / feature_std must be {n} finite numbers "
                             "(std > 0)")
        if target is not None and not isinstance(target, str):
            raise ValueError("target must be null or a string")
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise DataError(f"{name} is not valid fastmlp metadata: {exc}") from None
    if document.get("model_sha256") != _sha256(os.fspath(model_path)):
        raise DataError(f"{name} belongs to another version of {describe_path(model_path)} "
                        "(checksum mismatch): retrain, or delete the sidecar to use the model "
                        "without its labels and scaling")
    return ModelMeta(classes, names, target, Standardizer(mean, std),
                     document.get("training") or {}, task, target_scaler)


def load_model(model_path):
    """(the MLP saved at ``model_path``, its sidecar's ModelMeta or None); DataError for a
    missing or malformed model or sidecar."""
    from fastmlp.model import MLP

    if not os.path.exists(model_path):
        raise DataError(f"no such model file: {describe_path(model_path)}")
    try:
        model = MLP.load(model_path)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return model, read_meta(model_path, model)
