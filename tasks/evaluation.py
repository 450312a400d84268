"""Evaluation stage: the task's metrics (tollgate.objective) overall and per segment (tollgate.segments)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig
from tollgate.objective import Objective, binary_metrics, calibration_error
from tollgate.segments import segment_groups

__all__ = ["Scored", "binary_metrics", "calibration_error", "evaluate_frame", "predict_scores"]


def predict_scores(model: Any, frame: pd.DataFrame, features: list[str], objective: Objective) -> np.ndarray:
    """The model's outputs for every row: binary p1 (n,), multiclass class probabilities (n, k), regression
    values (n,) (objective.outputs)."""
    return objective.outputs(model, frame[features])


def evaluate_frame(frame: pd.DataFrame, outputs: np.ndarray, ds: DatasetConfig, objective: Objective) -> dict[str, Any]:
    """{'overall': metrics, 'segments': {column: {value: metrics}}} for one scored frame; segment values as
    tollgate.segments names them (numeric columns by their bin labels), rows missing the value in none."""
    y = objective.target(frame[ds.target].to_numpy())
    report: dict[str, Any] = {"overall": objective.metrics(y, outputs), "segments": {}}
    for col, groups in segment_groups(frame, ds).items():
        report["segments"][col] = {value: objective.metrics(y[idx], outputs[idx]) for value, idx in groups.items()}
    return report


@dataclass(frozen=True)
class Scored:
    """A frame's model outputs (objective.outputs) and how long predict took."""

    outputs: np.ndarray
    predict_s: float


@tollgate_task
def score_holdout(model: Any, holdout: pd.DataFrame, features: list[str], objective: Objective) -> Scored:
    """The model's outputs for the holdout."""
    start = time.perf_counter()
    outputs = predict_scores(model, holdout, features, objective)
    return Scored(outputs, time.perf_counter() - start)


@tollgate_task
def evaluate_model(
    holdout: pd.DataFrame, outputs: np.ndarray, ds: DatasetConfig, objective: Objective
) -> dict[str, Any]:
    """Metrics overall and per segment for scored holdout rows."""
    return evaluate_frame(holdout, outputs, ds, objective)
