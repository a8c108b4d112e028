"""Input validation shared by every public entry point: one place, clear messages.

Each helper takes what a user passed and returns an array the C++ core can use directly,
or raises ``TypeError`` (wrong kind of data) / ``ValueError`` (wrong shape or values) saying
what was wrong and what was expected. Arrays are copied only when the core cannot read them
as they are (another dtype, an unaligned buffer, or, for element-wise kernels, a
non-contiguous layout).
"""

from __future__ import annotations

import numbers

import numpy as np

from fastmlp import _core

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Hidden-layer activations: the core's one list (common.h), in its order.
ACTIVATIONS: tuple[str, ...] = tuple(_core.ACTIVATIONS)


def check_activation(value, name: str = "activation") -> str:
    """``value`` if it names an activation the core implements, else ``ValueError``."""
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {value!r}")
    return value


PRECISIONS = ("float32", "bfloat16")


def check_precision(value, dtype) -> str:
    """``value`` if it names a GEMM precision that a model of ``dtype`` can use, else
    ``ValueError`` (bfloat16 rounds float32 operands: float64 models refuse it)."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
    if value == "bfloat16" and np.dtype(dtype) != np.float32:
        raise ValueError("precision='bfloat16' rounds float32 operands: a float64 model "
                         "refuses it (use dtype='float32')")
    return value


def describe_dtype(a: np.ndarray) -> str:
    return str(a.dtype) if a.dtype.kind != "O" else "object"


def as_array(value, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}: {exc}") from None


def float_array(value, name: str, ndim: int | None = None) -> np.ndarray:
    """An ndarray of dtype float32 or float64, as given (no conversion)."""
    a = as_array(value, name)
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {describe_dtype(a)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def same_dtype(*named: tuple[str, np.ndarray]) -> np.dtype:
    first_name, first = named[0]
    for name, a in named[1:]:
        if a.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {a.dtype} but {first_name} has dtype {first.dtype}; "
                "all operands must share one dtype (convert one with .astype())"
            )
    return first.dtype


def strided_ok(a: np.ndarray) -> np.ndarray:
    """a, or an aligned C-contiguous copy if its strides are not whole elements or it is
    unaligned (the kernels read strided views in place, but element by element)."""
    item = a.itemsize
    if a.flags.aligned and all(s % item == 0 for s in a.strides):
        return a
    return np.array(a, order="C", copy=True)


def cache_aligned(a, dtype=None) -> np.ndarray:
    """A C-contiguous copy of ``a`` (as ``dtype``) whose data starts on a 64-byte boundary.

    For the model's parameters and optimizer state: NumPy aligns to 16 bytes, and with rows
    of 784 floats every 64-byte AVX-512 load of such a weight matrix straddles two cache
    lines. Measured on the mnist net (784-256-256-10, float32, one thread, alternating in one
    process), the C++ part of a one-sample prediction, a GEMV streaming all the weights:
    18.2–18.6 µs from 16-byte-aligned weights, 12.1–12.3 µs from 64-byte-aligned ones."""
    a = np.asarray(a, dtype=dtype)
    raw = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def contiguous(a: np.ndarray) -> np.ndarray:
    """a as an aligned C-contiguous array, copied only if it is not one already."""
    return np.require(a, requirements=["C", "A"])


def check_finite(a: np.ndarray, name: str, source: np.ndarray | None = None,
                 first_row: int = 0) -> None:
    """ValueError naming the first row (of a 2-D array) holding NaN or Inf; ``a`` may be rows
    of a larger array that start at row ``first_row`` (the message counts from there).

    ``source``: the array ``a`` was converted from (same shape). Where it held a finite value
    that the conversion overflowed (a float64 1e39 as float32), the message says the value
    exceeds the range of ``a``'s dtype instead of calling it NaN or infinity."""
    if a.size == 0:
        return
    if a.dtype in FLOAT_DTYPES and a.flags.c_contiguous and a.flags.aligned:
        # One pass in the core, no boolean temporary: on an mnist-sized X (4096 × 784) this
        # check was 3 % of a training epoch.
        if _core.first_nonfinite(a) < 0:
            return
    elif np.isfinite(a).all():
        return
    flat = np.flatnonzero(~np.isfinite(a).ravel())[0]
    position = np.unravel_index(flat, a.shape)
    if a.ndim >= 2:
        where = f"row {int(position[0]) + first_row}"
    else:
        where = f"index {int(position[0]) + first_row}"
    if source is not None:
        original = source[position]
        if np.isfinite(original):
            if a.ndim == 2:
                where += f", column {int(position[1])}"
            elif a.ndim > 2:
                where = f"index {tuple(int(i) for i in position)}"
            limit = np.finfo(a.dtype).max
            raise ValueError(f"{name} holds values outside the {a.dtype} range (first at {where}: "
                             f"{original.item()!r}; {a.dtype} holds magnitudes up to "
                             f"{float(limit):.4g}); rescale the data or use dtype='float64'")
    raise ValueError(f"{name} contains NaN or infinity (first at {where}); "
                     "all values must be finite")


def to_dtype(a: np.ndarray, dtype: np.dtype, name: str, requirements=None,
             first_row: int = 0) -> np.ndarray:
    """``a`` as ``dtype`` (copied only if needed), checked finite; a value the conversion
    overflows (float64 beyond the float32 range) is reported as such, not as infinity.
    first_row: see check_finite."""
    converted = a if a.dtype == dtype else None
    if converted is None:
        with np.errstate(over="ignore"):  # reported below, by position
            converted = a.astype(dtype)
    if requirements:
        converted = np.require(converted, requirements=requirements)
    check_finite(converted, name, source=None if converted is a else a, first_row=first_row)
    return converted


def feature_matrix(value, name: str, dtype: np.dtype, n_features: int | None = None) -> np.ndarray:
    """A finite 2-D array of `dtype` with at least one row (converted from ints, bools and
    other float widths; strings, objects and complex numbers are refused)."""
    return strided_ok(to_dtype(feature_layout(value, name, n_features), dtype, name))


def feature_layout(value, name: str, n_features: int | None = None) -> np.ndarray:
    """``value`` as an array of real numbers (any width), 2-D with at least one row and
    n_features columns; neither converted nor checked finite (feature_matrix does both)."""
    a = as_array(value, name)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers (float, int or bool), "
                        f"got dtype {describe_dtype(a)}")
    if a.ndim != 2:
        hint = " (use X.reshape(1, -1) for a single sample)" if a.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {a.shape}{hint}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has 0 samples; at least 1 is required")
    if n_features is not None and a.shape[1] != n_features:
        raise ValueError(f"{name} has {a.shape[1]} features but the model expects {n_features}")
    return a


def integer_labels(value, name: str, n_classes: int, n_samples: int | None = None,
                   allow_bool: bool = False, allow_integral_float: bool = False) -> np.ndarray:
    """A contiguous int64 array of class indices in [0, n_classes)."""
    y = as_array(value, name)
    kinds = "iu" + ("b" if allow_bool else "") + ("f" if allow_integral_float else "")
    if y.dtype.kind not in kinds:
        expected = "an integer dtype" + (" (or bool)" if allow_bool else "")
        raise TypeError(f"{name} must have {expected}, got {describe_dtype(y)}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,), got shape {y.shape}")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} labels but there are {n_samples} samples")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}[{index}] = {y[index].item()!r} is not an integer class label")
    if y.size and (y.min() < 0 or y.max() >= n_classes):  # two reductions, no temporaries
        bad = (y < 0) | (y >= n_classes)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}[{index}] = {y[index].item()!r} is out of range: "
                             f"expected a class label in [0, {n_classes})")
    return np.require(y, dtype=np.int64, requirements=["C", "A"])


def sample_weights(value, n_samples: int, dtype: np.dtype, name: str = "sample_weight"):
    """None, or a C-contiguous (n_samples,) array of `dtype`: finite, >= 0, not all zero."""
    if value is None:
        return None
    w = as_array(value, name)
    if w.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {describe_dtype(w)}")
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"{name} must have shape ({n_samples},), got {w.shape}")
    w = to_dtype(w, dtype, name, requirements=["C", "A"])
    if (w < 0).any():
        index = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"{name}[{index}] = {w[index].item()!r} is negative; weights must be >= 0")
    if not w.any():
        raise ValueError(f"{name} is all zeros; at least one sample must have a positive weight")
    with np.errstate(over="ignore"):
        total = w.sum(dtype=np.float64)  # as the loss kernels sum them
    if not np.isfinite(total):
        raise ValueError(f"the sum of {name} overflows ({total}); the loss is a weighted mean, "
                         "so scale the weights down (only their ratios matter)")
    return w


def regression_targets(value, name: str, n_samples: int, n_outputs: int, dtype: np.dtype):
    """A finite C-contiguous (n_samples, n_outputs) array of `dtype`; (n,) is taken as one
    output."""
    t = as_array(value, name)
    if t.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {describe_dtype(t)}")
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    if t.ndim != 2 or t.shape != (n_samples, n_outputs):
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}) (or ({n_samples},) "
                         f"for one output), got {np.shape(value)}")
    return to_dtype(t, dtype, name, requirements=["C", "A"])


def indicator_targets(value, name: str, n_samples: int, n_outputs: int, dtype: np.dtype):
    """Multilabel targets: a C-contiguous (n_samples, n_outputs) indicator matrix of 0 and 1
    (bool or numbers) in `dtype`."""
    t = regression_targets(value, name, n_samples, n_outputs, dtype)
    if not np.all((t == 0) | (t == 1)):
        raise ValueError(f"{name} must be an indicator matrix of 0 and 1 (multilabel targets)")
    return t


def poisson_targets(value, name: str, n_samples: int, n_outputs: int, dtype: np.dtype):
    """Targets of a Poisson regression: as regression_targets, and every value >= 0."""
    t = regression_targets(value, name, n_samples, n_outputs, dtype)
    if np.any(t < 0):
        raise ValueError(f"Some value(s) of {name} are negative which is not allowed for "
                         "Poisson regression.")
    return t


def positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} must be a finite number, got an integer of "
                         f"{int(value).bit_length()} bits") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {expected}, got {value}")
    return value


def rank_and_size(comm, rank, size) -> tuple:
    """``(rank, size)``: comm's (an mpi4py communicator, or anything with ``Get_rank`` and
    ``Get_size``), or the given ones (None, None without comm); ``TypeError`` for a comm that
    is none (a path or a number passed by mistake), ``ValueError`` for MPI.COMM_NULL and for
    comm together with rank/size. The values themselves are the caller's to check."""
    if comm is None:
        return rank, size
    if rank is not None or size is not None:
        raise ValueError("pass either comm or rank/size, not both")
    if not (callable(getattr(comm, "Get_rank", None)) and callable(getattr(comm, "Get_size", None))):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {comm!r}")
    try:
        from mpi4py import MPI
    except ImportError:
        MPI = None
    if MPI is not None and isinstance(comm, MPI.Comm) and comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL, which has no ranks; pass a communicator such "
                         "as MPI.COMM_WORLD")
    return comm.Get_rank(), comm.Get_size()


def model_dtype(value) -> np.dtype:
    """np.dtype float32 or float64 from a name ("float32", "f8"), a NumPy type or a dtype;
    ``ValueError`` for anything else (None included: no silent default)."""
    expected = "dtype must be 'float32' or 'float64' (a name, a NumPy type or a np.dtype)"
    if value is None or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{expected}, got {value!r}")
    try:
        dt = np.dtype(value)
    except Exception:  # NumPy raises TypeError, ValueError, ... for what it cannot parse
        raise ValueError(f"{expected}, got {value!r}") from None
    if dt not in FLOAT_DTYPES:  # (never test None with `in`: np.dtype("f8") == None is True)
        raise ValueError(f"{expected}, got {value!r}")
    return dt
