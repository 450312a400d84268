"""Scoring records with a release and the prediction-log record of each answer, shared by the batcher and
the shadow scorer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from serving.release import Release


def _single_thread_blas() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def scoring_thread(name: str) -> ThreadPoolExecutor:
    """One scoring thread with one OpenMP thread: per-tree parallelism only adds dispatch cost at these batch
    sizes and competes with the event loop for the cores."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_single_thread_blas)


def frame(release: Release, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Column lists -> DataFrame: ~15x cheaper than DataFrame.from_records at batch sizes of a few dozen."""
    features = release.config.features
    columns: dict[str, Any] = {c: [r.get(c) for r in records] for c in features.all}
    for c in features.numeric:
        columns[c] = np.array([np.nan if v is None else v for v in columns[c]], dtype="float64")
    return pd.DataFrame(columns, copy=False)


def score(release: Release, records: list[dict[str, Any]]) -> np.ndarray:
    """The positive-class probability of each record."""
    return np.asarray(release.model.predict_proba(frame(release, records))[:, 1], dtype="float64")


def log_record(
    *,
    prediction_id: str,
    request_id: str,
    ts: float,
    entity_id: str,
    release: Release,
    role: str,
    score: float,
    decision: int | float,
    latency_ms: float,
    features: dict[str, Any],
    proba: list[float] | None = None,
    event_ts: float | None = None,
) -> dict[str, Any]:
    """One prediction-log record (the format tollgate.predlog documents and reads)."""
    return {
        "prediction_id": prediction_id,
        "request_id": request_id,
        "ts": ts,
        "entity_id": entity_id,
        "model_version": release.version,
        "role": role,
        "score": score,
        "decision": decision,
        "latency_ms": latency_ms,
        "proba": proba,
        "event_ts": event_ts,
        "features": features,
    }
