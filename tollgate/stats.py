"""Pure statistics shared by training (reference profiles), monitoring (drift) and rollouts (score shift):
binning, PSI, binned Kolmogorov-Smirnov and Jensen-Shannon.

One binning helper: interior quantile edges of a reference sample, and counts of values per bin, where bin i
is [edges[i-1], edges[i]) (np.searchsorted side='right': a value on an edge counts in the bin above it).
"""

from __future__ import annotations

import numpy as np

PSI_FLOOR = 1e-4  # empty bins are floored so that PSI stays finite


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior edges of `bins` equal-frequency bins of `values` (duplicates merged)."""
    return np.unique(np.quantile(np.asarray(values, dtype="float64"), np.linspace(0, 1, bins + 1)[1:-1]))


COMPARE_MAX_EDGES = 64  # up to this many edges, counting by comparisons beats a binary search per value


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each of the len(edges)+1 bins the interior `edges` make (NaN counts in the last
    bin, as np.searchsorted sorts it). A value's bin is the number of edges at or below it, so the count of bins
    >= k is the count of values >= edges[k-1]: one vectorised comparison per edge (~9x faster than a binary
    search per value at 19 edges, measured on 250k values)."""
    x = np.asarray(values, dtype="float64")
    if len(edges) > COMPARE_MAX_EDGES:
        return np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
    nan = np.count_nonzero(np.isnan(x))
    at_or_above = [np.count_nonzero(x >= edge) + nan for edge in np.asarray(edges, dtype="float64")]
    return -np.diff(np.array([len(x), *at_or_above, 0], dtype=np.int64))


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


def proportions(counts: np.ndarray) -> np.ndarray:
    """Counts as shares of their total (all zeros when the total is zero)."""
    c = np.asarray(counts, dtype="float64")
    total = c.sum()
    return c / total if total else np.zeros_like(c)


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """Binned two-sample Kolmogorov-Smirnov D: the largest gap between the two cumulative bin distributions
    (equal to the exact statistic when every value sits on a bin edge, e.g. discrete data)."""
    e, a = np.asarray(expected, dtype="float64"), np.asarray(actual, dtype="float64")
    return float(np.max(np.abs(np.cumsum(e) - np.cumsum(a)))) if len(e) else 0.0


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic `d` on samples of sizes n and m."""
    from scipy.special import kolmogorov

    n, m = max(int(n), 1), max(int(m), 1)
    return float(kolmogorov(d * np.sqrt(n * m / (n + m))))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log; the square root of the divergence) of two distributions, each
    normalised to sum to one; 0 when either is empty."""
    p, q = np.asarray(p, dtype="float64"), np.asarray(q, dtype="float64")
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0  # 0 * log 0 = 0; m > 0 wherever x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))
