"""Monitoring stage: the drift reference profile of a release (computed at training time, read at check time)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tollgate.config import FeaturesConfig

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _numeric_profile(values: pd.Series, bins: int) -> dict[str, Any]:
    x = pd.to_numeric(values, errors="coerce").astype("float64")
    present = x.dropna().to_numpy()
    if len(present) == 0:
        return {"kind": "numeric", "null_fraction": 1.0, "edges": [], "proportions": [], "quantiles": {}}
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {
        "kind": "numeric",
        "null_fraction": float(x.isna().mean()),
        "edges": [float(e) for e in edges],  # interior edges; bin i is (edges[i-1], edges[i]]
        "proportions": [float(c) for c in counts / counts.sum()],
        "quantiles": {str(q): float(np.quantile(present, q)) for q in QUANTILES},
        "mean": float(present.mean()),
        "std": float(present.std()),
        "n": len(x),
    }


def _categorical_profile(values: pd.Series) -> dict[str, Any]:
    shares = values.astype("string").value_counts(normalize=True, dropna=True)
    return {
        "kind": "categorical",
        "null_fraction": float(values.isna().mean()),
        "proportions": {str(k): float(v) for k, v in sorted(shares.items())},
        "n": len(values),
    }


def reference_profile(frame: pd.DataFrame, features: FeaturesConfig, scores: np.ndarray, bins: int) -> dict[str, Any]:
    """Per-feature binned distributions and quantiles, and the prediction-score distribution."""
    profile: dict[str, Any] = {"rows": len(frame), "features": {}}
    for col in features.numeric:
        profile["features"][col] = _numeric_profile(frame[col], bins)
    for col in [*features.categorical, *features.boolean]:
        profile["features"][col] = _categorical_profile(frame[col])
    profile["prediction"] = _numeric_profile(pd.Series(scores), bins)
    return profile


@task(name="profile_reference", cache_policy=NO_CACHE)
def profile_reference(frame: pd.DataFrame, features: FeaturesConfig, scores: np.ndarray, bins: int) -> dict[str, Any]:
    """The drift reference profile of the training data and holdout scores."""
    return reference_profile(frame, features, scores, bins)
