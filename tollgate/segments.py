"""Segment values of a frame: category/string/bool columns by their value as text, numeric columns through the
configured bins (dataset.segment_bins). Training metrics, the gate, reference profiles, drift and live metrics
all group rows with these functions, so a segment is named the same everywhere. Rows with a missing value
belong to no segment."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd

from tollgate.config import DatasetConfig


def _edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def bin_labels(edges: list[float]) -> list[str]:
    """The segment names of the bins that interior `edges` make: "< a", "[a, b)", ..., ">= z"."""
    labels = [f"< {_edge(edges[0])}"]
    labels += [f"[{_edge(lo)}, {_edge(hi)})" for lo, hi in pairwise(edges)]
    return [*labels, f">= {_edge(edges[-1])}"]


def segment_series(frame: pd.DataFrame, ds: DatasetConfig, column: str, prefix: str = "") -> pd.Series:
    """Each row's segment value of `column` as text (None where missing); `prefix` names the frame's column
    (e.g. "f." for the prediction log)."""
    values = frame[f"{prefix}{column}"]
    if column in ds.segment_bins:
        edges = ds.segment_bins[column]
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        idx = np.searchsorted(np.asarray(edges, dtype="float64"), x, side="right")
        names = np.asarray(bin_labels(edges), dtype=object)[np.clip(idx, 0, len(edges))]
        return pd.Series(np.where(np.isnan(x), None, names), index=frame.index, dtype=object)
    # str() of each distinct value, not of each row (pd.factorize: missing values get code -1, the None here)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    names = np.asarray([*(str(u) for u in uniques), None], dtype=object)
    return pd.Series(names[codes], index=frame.index, dtype=object)


def segment_groups(frame: pd.DataFrame, ds: DatasetConfig, prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
    """{column: {value: row positions}} for every configured segment column present in the frame, values sorted."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for col in ds.segments:
        if f"{prefix}{col}" not in frame.columns:
            continue
        values = segment_series(frame, ds, col, prefix).reset_index(drop=True)
        groups = values.groupby(values, dropna=True, sort=False).indices
        out[col] = {str(v): np.asarray(groups[v], dtype="int64") for v in sorted(groups, key=str)}
    return out
