"""Profiling stage: the drift reference profile of a release, computed at training time from the training rows
and the holdout's predictions (tollgate.objective: the score, or the predicted class for multiclass), stored
with the release and read by every later drift check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig, FeaturesConfig
from tollgate.context import Context
from tollgate.objective import Objective
from tollgate.segments import segment_groups
from tollgate.stats import bin_counts, proportions, quantile_edges

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def numeric_profile(values: pd.Series, bins: int) -> dict[str, Any]:
    """Quantile-bin edges and shares (tollgate.stats binning), quantiles, mean and null share of a column."""
    x = pd.to_numeric(values, errors="coerce").astype("float64")
    present = x.dropna().to_numpy()
    if len(present) == 0:
        return {"kind": "numeric", "null_fraction": 1.0, "edges": [], "proportions": [], "quantiles": {}}
    edges = quantile_edges(present, bins)
    quantiles = np.quantile(present, QUANTILES)  # one partition for all of them
    return {
        "kind": "numeric",
        "null_fraction": float(x.isna().mean()),
        "edges": [float(e) for e in edges],  # interior edges, binned as tollgate.stats.bin_counts does
        "proportions": [float(p) for p in proportions(bin_counts(edges, present))],
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
        "mean": float(present.mean()),
        "std": float(present.std()),
        "n": len(x),
    }


def categorical_profile(values: pd.Series) -> dict[str, Any]:
    """Category shares (nulls apart) and null share of a column."""
    counts: dict[str, int] = {}
    for value, count in values.value_counts(dropna=True).items():  # counted as they are, named as text
        counts[str(value)] = counts.get(str(value), 0) + int(count)
    total = sum(counts.values())
    return {
        "kind": "categorical",
        "null_fraction": float(values.isna().mean()),
        "proportions": {k: c / total for k, c in sorted(counts.items())},
        "n": len(values),
    }


def features_profile(frame: pd.DataFrame, features: FeaturesConfig, bins: int) -> dict[str, Any]:
    """The profile of every model input (booleans profiled as categories)."""
    out = {col: numeric_profile(frame[col], bins) for col in features.numeric}
    out.update({col: categorical_profile(frame[col]) for col in [*features.categorical, *features.boolean]})
    return out


def prediction_profile(outputs: np.ndarray, bins: int, objective: Objective | None = None) -> dict[str, Any]:
    """The profile of a model's predictions: the numeric profile of the score (binary, regression; `outputs`
    taken as scores when no objective is given), the categorical profile of the predicted class (multiclass)."""
    if objective is None:
        return numeric_profile(pd.Series(np.asarray(outputs, dtype="float64")), bins)
    if objective.task == "multiclass":
        decided = objective.decision(np.asarray(outputs, dtype="float64").reshape(-1, len(objective.classes)))
        return categorical_profile(pd.Series(decided.astype(str), dtype=object))
    return numeric_profile(pd.Series(objective.score(outputs)), bins)


def reference_profile(
    frame: pd.DataFrame,
    features: FeaturesConfig,
    outputs: np.ndarray,
    bins: int,
    holdout: pd.DataFrame | None = None,
    ds: DatasetConfig | None = None,
    min_rows: int = 1,
    objective: Objective | None = None,
) -> dict[str, Any]:
    """Per-feature binned distributions and quantiles and the prediction profile (`outputs`: the model's
    outputs on the holdout rows), overall and for every segment value of `ds` (tollgate.segments, on the
    training frame and the holdout) with at least `min_rows` training rows."""
    profile: dict[str, Any] = {
        "rows": len(frame),
        "features": features_profile(frame, features, bins),
        "prediction": prediction_profile(outputs, bins, objective),
        "segments": {},
    }
    if ds is None:
        return profile
    held = segment_groups(holdout, ds) if holdout is not None else {}
    inputs = frame[features.all]  # each segment copies only the model inputs it profiles
    for col, groups in segment_groups(frame, ds).items():
        for value, rows in groups.items():
            if len(rows) < min_rows:
                continue
            part = inputs.iloc[rows]
            seg: dict[str, Any] = {"rows": len(part), "features": features_profile(part, features, bins)}
            if holdout is not None:
                idx = held.get(col, {}).get(value, np.empty(0, dtype="int64"))
                seg["prediction"] = prediction_profile(outputs[idx], bins, objective)
            profile["segments"].setdefault(col, {})[value] = seg
    return profile


@tollgate_task
def profile_reference(frame: pd.DataFrame, holdout: pd.DataFrame, outputs: np.ndarray, ctx: Context) -> dict[str, Any]:
    """The drift reference profile of the training data and the holdout's predictions, overall and per segment."""
    cfg = ctx.config
    bins, min_rows = cfg.monitoring.reference_bins, cfg.gates.min_segment_size
    return reference_profile(
        frame, cfg.features, outputs, bins, holdout, cfg.dataset, min_rows, Objective.from_config(cfg)
    )
