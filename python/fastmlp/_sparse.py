"""Sparse input: scipy.sparse matrices as the engine reads them (CSR, int64 row pointers,
int32 column indices, values in the model's dtype), never made dense.

scipy stays optional: this module never imports it (a scipy.sparse matrix can only come from
a program that has imported scipy, so is_sparse looks it up in sys.modules).
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from ._validation import to_dtype

SPARSE_UPDATES = ("exact", "lazy")


class SparseInput(NamedTuple):
    """A validated CSR matrix (n_rows, n_features): row i's non-zeros are
    ``values[indptr[i]:indptr[i+1]]`` at columns ``indices[indptr[i]:indptr[i+1]]``
    (duplicates add up, as in scipy)."""

    indptr: np.ndarray   # int64 (n_rows + 1,)
    indices: np.ndarray  # int32 (nnz,)
    values: np.ndarray   # the model's dtype (nnz,)
    shape: tuple[int, int]

    def rows(self, index: np.ndarray) -> "SparseInput":
        """The rows `index` (an integer array), as a new CSR matrix."""
        starts, ends = self.indptr[index], self.indptr[index + 1]
        lengths = ends - starts
        indptr = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return SparseInput(indptr, self.indices[take], self.values[take],
                           (len(index), self.shape[1]))


def is_sparse(value) -> bool:
    """Whether `value` is a scipy.sparse matrix or array (without importing scipy)."""
    if isinstance(value, SparseInput):
        return True
    scipy_sparse = sys.modules.get("scipy.sparse")
    return scipy_sparse is not None and scipy_sparse.issparse(value)


def sparse_features(value, name: str, dtype: np.dtype,
                    n_features: int | None = None) -> SparseInput:
    """A scipy.sparse matrix (any format: CSR is read in place, others are converted to CSR,
    O(nnz)) as a SparseInput of `dtype`, with finite values and at least one row."""
    if isinstance(value, SparseInput):
        X = value
    else:
        if value.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape "
                             f"{value.shape}")
        if value.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold real numbers (float, int or bool), got dtype "
                            f"{value.dtype}")
        csr = value if value.format == "csr" else value.tocsr()
        n_rows, n_cols = csr.shape
        if n_cols >= 2**31:
            raise ValueError(f"{name} has {n_cols} columns; sparse input supports fewer than "
                             "2**31 features")
        X = SparseInput(np.ascontiguousarray(csr.indptr, dtype=np.int64),
                        np.ascontiguousarray(csr.indices, dtype=np.int32),
                        np.ascontiguousarray(to_dtype(np.asarray(csr.data), dtype, name)),
                        (int(n_rows), int(n_cols)))
    if X.shape[0] == 0:
        raise ValueError(f"{name} has 0 samples; at least 1 is required")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the model expects {n_features}")
    if X.values.dtype != dtype:  # (to_dtype checks that the values are finite)
        X = X._replace(values=to_dtype(X.values, dtype, name))
    return X


def sparse_updates_mode(value) -> bool:
    """Whether `value` ("exact" or "lazy") asks for lazy updates of a sparse first layer."""
    if value not in SPARSE_UPDATES:
        raise ValueError(f"sparse_updates must be one of {SPARSE_UPDATES}, got {value!r}")
    return value == "lazy"
