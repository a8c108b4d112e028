"""Small data sets shipped inside the package (no network needed)."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

__all__ = ["load_digits"]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8×8 handwritten digits: X (1797, 64) float64 pixel counts in 0..16, y (1797,) int64.

    The test part of the UCI "Optical Recognition of Handwritten Digits" data set (Alpaydin &
    Kaynak, 1998; CC BY 4.0), in the CSV layout scikit-learn ships (64 pixels, then the label).
    """
    with resources.files("fastmlp").joinpath("data/digits.csv.gz").open("rb") as raw:
        with gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)
