"""Evaluation stage: metrics overall and per segment, from labels and scores."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig


def predict_scores(model: Any, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Positive-class probabilities for every row."""
    return np.asarray(model.predict_proba(frame[features])[:, 1], dtype="float64")


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            err += mask.mean() * abs(float(y[mask].mean()) - float(p[mask].mean()))
    return float(err)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, log loss, precision/recall at threshold, Brier score and calibration error (AUC NaN if one class)."""
    y = np.asarray(y, dtype="int64")
    p = np.clip(np.asarray(p, dtype="float64"), 1e-7, 1 - 1e-7)
    decided = (p >= threshold).astype("int64")
    both = len(np.unique(y)) == 2
    return {
        "n": float(len(y)),
        "positives": float(y.sum()),
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "precision": float(precision_score(y, decided, zero_division=0)),
        "recall": float(recall_score(y, decided, zero_division=0)),
        "brier": float(brier_score_loss(y, p)),
        "calibration_error": calibration_error(y, p),
    }


def evaluate_frame(frame: pd.DataFrame, scores: np.ndarray, ds: DatasetConfig, threshold: float) -> dict[str, Any]:
    """{'overall': metrics, 'segments': {column: {value: metrics}}} for one scored frame."""
    y = frame[ds.target].to_numpy()
    report: dict[str, Any] = {"overall": binary_metrics(y, scores, threshold), "segments": {}}
    for col in ds.segments:
        per: dict[str, dict[str, float]] = {}
        for value, idx in frame.groupby(col, observed=True).indices.items():
            per[str(value)] = binary_metrics(y[idx], scores[idx], threshold)
        report["segments"][col] = dict(sorted(per.items()))
    return report


@dataclass(frozen=True)
class Scored:
    """Scores for a frame and how long predict took."""

    scores: np.ndarray
    predict_s: float


@tollgate_task
def score_holdout(model: Any, holdout: pd.DataFrame, features: list[str]) -> Scored:
    """Positive-class scores for the holdout."""
    start = time.perf_counter()
    scores = predict_scores(model, holdout, features)
    return Scored(scores, time.perf_counter() - start)


@tollgate_task
def evaluate_model(holdout: pd.DataFrame, scores: np.ndarray, ds: DatasetConfig, threshold: float) -> dict[str, Any]:
    """Metrics overall and per segment for scored holdout rows."""
    return evaluate_frame(holdout, scores, ds, threshold)
