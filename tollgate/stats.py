"""Pure statistics shared by training (reference profiles), monitoring (drift) and rollouts (score shift).

One binning helper: interior quantile edges of a reference sample, and counts of values per bin, where bin i
is (edges[i-1], edges[i]] (np.searchsorted side='right').
"""

from __future__ import annotations

import numpy as np

PSI_FLOOR = 1e-4  # empty bins are floored so that PSI stays finite


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior edges of `bins` equal-frequency bins of `values` (duplicates merged)."""
    return np.unique(np.quantile(np.asarray(values, dtype="float64"), np.linspace(0, 1, bins + 1)[1:-1]))


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each of the len(edges)+1 bins the interior `edges` make."""
    return np.bincount(
        np.searchsorted(edges, np.asarray(values, dtype="float64"), side="right"), minlength=len(edges) + 1
    )


def psi_from_proportions(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two binned distributions (empty bins floored at PSI_FLOOR)."""
    e = np.clip(np.asarray(expected, dtype="float64"), PSI_FLOOR, None)
    a = np.clip(np.asarray(actual, dtype="float64"), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int) -> float:
    """PSI of `actual` against `expected`, on `bins` quantile bins of `expected`; nan when either is empty."""
    expected, actual = np.asarray(expected, dtype="float64"), np.asarray(actual, dtype="float64")
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    edges = quantile_edges(expected, bins)
    return psi_from_proportions(bin_counts(edges, expected) / len(expected), bin_counts(edges, actual) / len(actual))
