"""Profiling stage: the drift reference profile of a release, computed at training time from the training rows
and the holdout scores, stored with the release and read by every later drift check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import FeaturesConfig
from tollgate.context import Context
from tollgate.stats import bin_counts, proportions, quantile_edges

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def numeric_profile(values: pd.Series, bins: int) -> dict[str, Any]:
    """Quantile-bin edges and shares (tollgate.stats binning), quantiles, mean and null share of a column."""
    x = pd.to_numeric(values, errors="coerce").astype("float64")
    present = x.dropna().to_numpy()
    if len(present) == 0:
        return {"kind": "numeric", "null_fraction": 1.0, "edges": [], "proportions": [], "quantiles": {}}
    edges = quantile_edges(present, bins)
    return {
        "kind": "numeric",
        "null_fraction": float(x.isna().mean()),
        "edges": [float(e) for e in edges],  # interior edges, binned as tollgate.stats.bin_counts does
        "proportions": [float(p) for p in proportions(bin_counts(edges, present))],
        "quantiles": {str(q): float(np.quantile(present, q)) for q in QUANTILES},
        "mean": float(present.mean()),
        "std": float(present.std()),
        "n": len(x),
    }


def categorical_profile(values: pd.Series) -> dict[str, Any]:
    """Category shares (nulls apart) and null share of a column."""
    shares = values.astype("string").value_counts(normalize=True, dropna=True)
    return {
        "kind": "categorical",
        "null_fraction": float(values.isna().mean()),
        "proportions": {str(k): float(v) for k, v in sorted(shares.items())},
        "n": len(values),
    }


def features_profile(frame: pd.DataFrame, features: FeaturesConfig, bins: int) -> dict[str, Any]:
    """The profile of every model input (booleans profiled as categories)."""
    out = {col: numeric_profile(frame[col], bins) for col in features.numeric}
    out.update({col: categorical_profile(frame[col]) for col in [*features.categorical, *features.boolean]})
    return out


def reference_profile(
    frame: pd.DataFrame,
    features: FeaturesConfig,
    scores: np.ndarray,
    bins: int,
    holdout: pd.DataFrame | None = None,
    segments: list[str] | None = None,
    min_rows: int = 1,
) -> dict[str, Any]:
    """Per-feature binned distributions and quantiles and the prediction-score distribution (scores of the
    holdout rows), overall and for every segment value with at least `min_rows` rows."""
    profile: dict[str, Any] = {
        "rows": len(frame),
        "features": features_profile(frame, features, bins),
        "prediction": numeric_profile(pd.Series(scores), bins),
        "segments": {},
    }
    for col in segments or []:
        for value, part in frame.groupby(col, observed=True):
            if len(part) < min_rows:
                continue
            seg: dict[str, Any] = {"rows": len(part), "features": features_profile(part, features, bins)}
            if holdout is not None:
                mask = (holdout[col] == value).to_numpy()
                seg["prediction"] = numeric_profile(pd.Series(scores[mask]), bins)
            profile["segments"].setdefault(col, {})[str(value)] = seg
    return profile


@tollgate_task
def profile_reference(frame: pd.DataFrame, holdout: pd.DataFrame, scores: np.ndarray, ctx: Context) -> dict[str, Any]:
    """The drift reference profile of the training data and holdout scores, overall and per segment."""
    cfg = ctx.config
    bins, segments, min_rows = cfg.monitoring.reference_bins, cfg.dataset.segments, cfg.gates.min_segment_size
    return reference_profile(frame, cfg.features, scores, bins, holdout, segments, min_rows)
