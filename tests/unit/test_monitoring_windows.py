"""Monitoring per task type and per window, on synthetic prediction logs (tollgate.predlog records, written and
read back as Parquet): drift windows on prediction time and event time, live-metric windows (--every, --chunks),
live metrics equal to sklearn's on the same rows, labels checked per task, the live verdict on the primary metric,
multiclass prediction drift on the predicted class, and one drift headline that agrees with `detected`."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_squared_error, roc_auc_score

from tasks.actions import drift_alerts
from tasks.drift import DriftCheck, DriftReport, LogWindow, WindowError, drift_of_log, drift_window, to_epoch
from tasks.ground_truth import (
    LabelsError,
    Windowing,
    join_log_frames,
    judge,
    live_metrics,
    parse_every,
    read_labels,
)
from tasks.profiling import categorical_profile, reference_profile
from tests.helpers import bundled_config
from tollgate.config import TollgateConfig
from tollgate.objective import Objective
from tollgate.predlog import PredictionLog, iter_log_frames, records_to_frame
from tollgate.release import Release

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0
CLASSES = (0, 1, 2)


def _records(
    n: int, task: str = "binary", seed: int = 0, start: float = T0, step: float = 60.0
) -> list[dict[str, Any]]:
    """`n` champion answers of version 1, one every `step` seconds from `start`; event time one hour earlier."""
    rng = np.random.default_rng(seed)
    cfg = bundled_config()
    out = []
    for i in range(n):
        decision: float | int
        proba: list[float] | None
        if task == "multiclass":
            p = rng.dirichlet([1.0, 1.0, 1.0])
            score, decision, proba = float(p.max()), int(np.argmax(p)), [float(x) for x in p]
        elif task == "regression":
            score = float(rng.normal(50, 10))
            decision, proba = score, None
        else:
            score = float(rng.random())
            decision, proba = int(score >= 0.5), None
        ts = start + i * step
        out.append(
            {
                "prediction_id": f"p{seed}-{i}",
                "request_id": f"p{seed}-{i}",
                "ts": ts,
                "entity_id": f"E{seed}-{i}",
                "model_version": "1",
                "role": "champion",
                "score": score,
                "decision": decision,
                "latency_ms": 1.0,
                "proba": proba,
                "event_ts": ts - HOUR,
                "features": {
                    "tier": ["gold", "silver", "bronze"][i % 3],
                    "region": ["north", "south"][i % 2],
                    **{c: float(rng.normal(10, 2)) for c in cfg.features.numeric},
                },
            }
        )
    return out


def _logged(tmp_path: Path, records: list[dict[str, Any]], rotate_rows: int = 50) -> list[pd.DataFrame]:
    """The records written through the gateway's log writer (several Parquet parts) and streamed back."""
    log = PredictionLog(tmp_path / "log", fsync=False, rotate_rows=rotate_rows)
    for offset in range(0, len(records), 25):
        log.write(records[offset : offset + 25])
    log.close()
    from tollgate.predlog import compact

    compact(tmp_path / "log")
    return list(iter_log_frames(tmp_path / "log"))


def _release(cfg: TollgateConfig, profile: dict[str, Any] | None = None) -> Release:
    files = {"reference_profile.json": profile} if profile is not None else {}
    return Release(cfg.project.registered_model, "1", "run", "Production", {}, cfg, "http://unused", _files=files)


def _task_config(task: str, **monitoring: float) -> TollgateConfig:
    cfg = bundled_config()
    ds = cfg.dataset
    if task == "multiclass":
        target = ds.columns[ds.target].model_copy(update={"values": list(CLASSES)})
        ds = ds.model_copy(update={"columns": {**ds.columns, ds.target: target}})
    update: dict[str, Any] = {"model": cfg.model.model_copy(update={"task": task}), "dataset": ds}
    if monitoring:
        update["monitoring"] = cfg.monitoring.model_copy(update=monitoring)
    return cfg.model_copy(update=update)


# -- window bounds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T01:00:00+01:00", T0),
        ("2026-01-01", T0),  # naive means UTC
        (str(T0), T0),
        (T0, T0),
        (datetime(2026, 1, 1, tzinfo=UTC), T0),
        (None, None),
    ],
)
def test_window_bounds_read_iso_or_epoch(value: Any, expected: float | None) -> None:
    assert to_epoch(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", float("nan"), True])
def test_a_bad_window_bound_is_refused(value: Any) -> None:
    with pytest.raises(WindowError):
        to_epoch(value)


def test_a_window_must_end_after_it_starts_and_name_its_clock() -> None:
    with pytest.raises(WindowError, match="ends"):
        LogWindow(T0, T0 - 1)
    with pytest.raises(WindowError, match="unknown clock"):
        LogWindow(T0, None, "wall-time")
    assert LogWindow(T0, T0 + HOUR, "event").by == "event-time"
    assert LogWindow(T0, T0 + HOUR).label == "2026-01-01T00:00:00Z..2026-01-01T01:00:00Z"


def test_default_drift_window_is_the_release_hours_before_until() -> None:
    release = _release(bundled_config())
    hours = release.config.monitoring.drift_window_hours
    w = drift_window(release, None, None, "2026-01-02T00:00:00Z", "event-time", now=0.0)
    assert (w.start, w.end, w.by) == (T0 + 24 * HOUR - hours * HOUR, T0 + 24 * HOUR, "event-time")
    w = drift_window(release, 2.0, T0, None, "prediction-time", now=T0 + 10 * HOUR)
    assert (w.start, w.end) == (T0, T0 + 10 * HOUR)  # since wins over hours; until defaults to now


# -- drift over a window of the log -------------------------------------------------------------------------
def _drift_profile(cfg: TollgateConfig, records: list[dict[str, Any]], task: str = "binary") -> dict[str, Any]:
    frame = records_to_frame(records)
    ref = frame[[f"f.{c}" for c in cfg.features.numeric]].set_axis(cfg.features.numeric, axis=1)
    features = cfg.features.model_copy(update={"categorical": [], "boolean": []})
    profile = reference_profile(ref, features, frame["score"].to_numpy(), 10)
    if task == "multiclass":
        profile["prediction"] = categorical_profile(frame["decision"].astype(int))
    return profile


def test_drift_reads_only_the_window_on_prediction_time(tmp_path: Path) -> None:
    cfg = bundled_config()
    records = _records(240)  # 4 hours, one a minute
    release = _release(cfg, _drift_profile(cfg, records))
    frames = _logged(tmp_path, records)
    check, sample = drift_of_log(frames, release, LogWindow(T0 + HOUR, T0 + 2 * HOUR))
    assert check.overall.rows == 60 and check.excluded == 0 and len(sample) == 60
    assert sample["ts"].min() >= T0 + HOUR and sample["ts"].max() < T0 + 2 * HOUR
    assert check.summary()["window"] == {
        "start": T0 + HOUR,
        "end": T0 + 2 * HOUR,
        "by": "prediction-time",
        "label": "2026-01-01T01:00:00Z..2026-01-01T02:00:00Z",
        "excluded": 0,
    }


def test_drift_on_event_time_excludes_and_counts_rows_without_one(tmp_path: Path) -> None:
    cfg = bundled_config()
    records = _records(240)
    for r in records[:30]:
        r["event_ts"] = None  # requests that did not carry the timestamp column
    release = _release(cfg, _drift_profile(cfg, records))
    frames = _logged(tmp_path, records)
    # event time runs one hour behind prediction time: [T0-1h, T0) of event time is rows 0..59
    check, sample = drift_of_log(frames, release, LogWindow(T0 - HOUR, T0, "event-time"))
    assert check.overall.rows == 30 and check.excluded == 30
    assert set(sample["prediction_id"]) == {f"p0-{i}" for i in range(30, 60)}
    assert check.summary()["window"]["by"] == "event-time"


def test_multiclass_prediction_drift_is_jensen_shannon_on_the_predicted_class(tmp_path: Path) -> None:
    cfg = bundled_config()
    reference = _records(300, "multiclass", seed=1)
    release = _release(cfg, _drift_profile(cfg, reference, "multiclass"))
    same = _records(300, "multiclass", seed=2)
    shifted = _records(300, "multiclass", seed=3)
    for r in shifted:
        r["decision"] = 2  # every answer is class 2 now
    calm, _ = drift_of_log(_logged(tmp_path / "a", same), release, LogWindow(None, None))
    moved, _ = drift_of_log(_logged(tmp_path / "b", shifted), release, LogWindow(None, None))
    assert calm.overall.prediction is not None and moved.overall.prediction is not None
    assert calm.overall.prediction.method == "jensenshannon" and not calm.overall.prediction.drifted
    assert moved.overall.prediction.drifted and moved.detected
    # the class named the same way whether the log holds 2 or 2.0
    as_float = [{**r, "decision": float(r["decision"])} for r in shifted]
    floated, _ = drift_of_log([records_to_frame(as_float)], release, LogWindow(None, None))
    assert floated.overall.prediction is not None
    assert floated.overall.prediction.statistic == pytest.approx(moved.overall.prediction.statistic, abs=1e-12)


# -- the one headline ---------------------------------------------------------------------------------------
def _report(detected: bool, drifted: tuple[str, ...] = ()) -> DriftReport:
    from tasks.drift import FeatureDrift

    feats = [FeatureDrift(f, "numeric", "psi", 0.5, 0.2, True, 100, 0.0, 0.0) for f in drifted]
    return DriftReport("7", 100, feats, None, 0.5 if detected else 0.08, detected, 0.2)


@pytest.mark.parametrize(
    ("overall", "segment", "headline"),
    [
        (False, False, "no drift (overall and 1 segment(s)); above their own thresholds but under the drift share"),
        (False, True, "drift detected: segment tier=gold (support_calls_90d); overall: no"),
        (True, False, "drift detected: overall (monthly_charges)"),
        (True, True, "drift detected: overall (monthly_charges); segment tier=gold (support_calls_90d)"),
    ],
)
def test_the_headline_agrees_with_detected_the_alert_and_names_the_scope(
    overall: bool, segment: bool, headline: str
) -> None:
    """The issue's case: one feature drifted overall (share under the threshold) and a segment drifted: the check,
    the headline, the alert and the exit code all say drift, and the headline says where."""
    check = DriftCheck(
        _report(overall, ("monthly_charges",)),
        {"tier=gold": _report(segment, ("support_calls_90d",))},
        LogWindow(T0, T0 + HOUR),
    )
    summary = check.summary()
    assert summary["headline"].startswith(headline)
    assert summary["headline"].startswith("drift detected") is check.detected is summary["detected"]
    assert check.detected is (overall or segment)
    alerts = drift_alerts(_release(bundled_config()), check, "run")
    assert len(alerts) == int(check.detected)
    if alerts:
        assert check.headline in alerts[0].text and alerts[0].payload["headline"] == check.headline


# -- live-metric windows ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("1h", 3600.0), ("1d", 86400.0), ("7d", 7 * 86400.0), ("90m", 5400.0)])
def test_window_lengths(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["hourly", "0h", "-1d", "1y"])
def test_bad_window_lengths_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_every(text)


def _labelled(records: list[dict[str, Any]], labels: np.ndarray) -> pd.DataFrame:
    store = pd.DataFrame(
        {"key_kind": "prediction", "key": [r["prediction_id"] for r in records], "label": labels, "label_time": 0.0}
    )
    return join_log_frames([records_to_frame(records)], store, as_of=1.0)


def test_every_makes_fixed_windows_on_prediction_time_and_event_time() -> None:
    records = _records(180, start=T0 + 30 * 60)  # 00:30 .. 03:29, one a minute
    joined = _labelled(records, np.arange(180) % 2)
    obj, ds = Objective("binary", (0, 1)), bundled_config().dataset.model_copy(update={"segments": []})
    rows = live_metrics(joined, obj, ds, Windowing(every=HOUR)).rows
    series = [r for r in rows if r["scope"] == "overall" and r["window"] != "all"]
    assert [(r["start"], r["end"], r["n"]) for r in series] == [
        (T0, T0 + HOUR, 30),
        (T0 + HOUR, T0 + 2 * HOUR, 60),
        (T0 + 2 * HOUR, T0 + 3 * HOUR, 60),
        (T0 + 3 * HOUR, T0 + 4 * HOUR, 30),
    ]
    assert series[0]["window"] == "2026-01-01T00:00:00Z..2026-01-01T01:00:00Z"
    assert [r["n"] for r in rows if r["scope"] == "overall" and r["window"] == "all"] == [180]
    # event time is one hour earlier: the same rows fall one window earlier
    by_event = live_metrics(joined, obj, ds, Windowing("event-time", every=HOUR)).rows
    assert [r["start"] for r in by_event if r["scope"] == "overall" and r["window"] != "all"] == [
        T0 - HOUR,
        T0,
        T0 + HOUR,
        T0 + 2 * HOUR,
    ]


def test_chunks_are_equal_count_consecutive_and_event_time_excludes_rows_without_it() -> None:
    records = _records(100)
    for r in records[:10]:
        r["event_ts"] = None
    joined = _labelled(records, np.arange(100) % 2)
    obj, ds = Objective("binary", (0, 1)), bundled_config().dataset.model_copy(update={"segments": []})
    live = live_metrics(joined, obj, ds, Windowing(chunks=4))
    series = [r for r in live.rows if r["scope"] == "overall" and r["window"] != "all"]
    assert [r["n"] for r in series] == [25] * 4 and live.excluded == 0
    assert all(a["end"] < b["start"] for a, b in itertools.pairwise(series))  # consecutive in time
    by_event = live_metrics(joined, obj, ds, Windowing("event-time", chunks=3))
    assert by_event.excluded == 10
    assert [r["n"] for r in by_event.rows if r["scope"] == "overall" and r["window"] != "all"] == [30, 30, 30]
    assert live_metrics(joined, obj, ds).rows[0]["window"] == "all"  # default: one window over everything
    with pytest.raises(ValueError, match="not both"):
        Windowing(every=HOUR, chunks=2)


# -- live metrics per task, equal to sklearn's ---------------------------------------------------------------
def _sklearn(task: str, y: np.ndarray, part: pd.DataFrame) -> float:
    if task == "binary":
        return float(roc_auc_score(y, part["score"]))
    if task == "multiclass":
        proba = np.vstack(part["proba"].to_list())
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(CLASSES)))
    return math.sqrt(mean_squared_error(y, part["score"]))


@pytest.mark.parametrize(("task", "metric"), [("binary", "auc"), ("multiclass", "auc_ovr"), ("regression", "rmse")])
def test_live_metrics_per_task_equal_sklearn_on_the_same_rows(tmp_path: Path, task: str, metric: str) -> None:
    rng = np.random.default_rng(11)
    records = _records(150, task, seed=4)
    truth = {
        "binary": rng.integers(0, 2, 150),
        "multiclass": rng.integers(0, 3, 150),
        "regression": rng.normal(50, 12, 150),
    }[task]
    store = pd.DataFrame(
        {"key_kind": "entity", "key": [r["entity_id"] for r in records], "label": truth, "label_time": 0.0}
    )
    joined = join_log_frames(_logged(tmp_path, records), store, as_of=1.0)
    objective = Objective(task, CLASSES if task == "multiclass" else (0, 1) if task == "binary" else ())
    ds = bundled_config().dataset.model_copy(update={"segments": ["tier"]})
    rows = live_metrics(joined, objective, ds).rows
    by_scope = {r["scope"]: r for r in rows}
    assert set(by_scope) == {"overall", "tier=bronze", "tier=gold", "tier=silver"}
    frame = joined.set_index("prediction_id").loc[[r["prediction_id"] for r in records]]
    y = objective.target(truth)
    assert by_scope["overall"][metric] == pytest.approx(_sklearn(task, y, frame), abs=1e-9)
    gold = (frame["f.tier"] == "gold").to_numpy()
    assert by_scope["tier=gold"]["n"] == gold.sum()
    assert by_scope["tier=gold"][metric] == pytest.approx(_sklearn(task, y[gold], frame[gold]), abs=1e-9)


def test_numeric_segments_are_binned_like_everywhere_else() -> None:
    records = _records(60)
    for i, r in enumerate(records):
        r["features"]["tenure_months"] = [3, 20, 50][i % 3]
    joined = _labelled(records, np.arange(60) % 2)
    ds = bundled_config().dataset.model_copy(
        update={"segments": ["tenure_months"], "segment_bins": {"tenure_months": [12.0, 36.0]}}
    )
    rows = live_metrics(joined, Objective("binary", (0, 1)), ds).rows
    assert {r["scope"]: r["n"] for r in rows if r["scope"] != "overall"} == {
        "tenure_months=< 12": 20,
        "tenure_months=[12, 36)": 20,
        "tenure_months=>= 36": 20,
    }


# -- labels per task ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("objective", "labels", "phrase"),
    [
        (Objective("multiclass", CLASSES), [0, 2, 3], "one of the class values [0, 1, 2]; rows [2] are not (e.g. 3)"),
        (Objective("multiclass", CLASSES), [0, 1.5, 2], "rows [1] are not (e.g. 1.5)"),
        (Objective("binary", (0, 1)), ["yes", 1, 0], "rows [0] are not (e.g. 'yes')"),
        (Objective("regression"), [1.5, "abc", 3.0], "must be a finite number; rows [1] are not (e.g. 'abc')"),
        (Objective("regression"), [1.5, float("inf"), 3.0], "must be a finite number; rows [1]"),
    ],
)
def test_labels_are_checked_against_the_task(
    tmp_path: Path, objective: Objective, labels: list[Any], phrase: str
) -> None:
    path = tmp_path / "labels.csv"
    frame = pd.DataFrame({"customer_id": ["A", "B", "C"], "label": labels, "label_time": "2026-01-01"})
    frame.to_csv(path, index=False)
    with pytest.raises(LabelsError) as err:
        read_labels(path, "customer_id", objective)
    assert str(path) in str(err.value) and "column 'label'" in str(err.value) and phrase in str(err.value)


@pytest.mark.parametrize(
    ("objective", "labels", "stored"),
    [
        (Objective("multiclass", CLASSES), [0.0, 2.0, 1], [0, 2, 1]),  # whole floats are classes
        (Objective("regression"), [1.5, -3, 1e6], [1.5, -3.0, 1e6]),
    ],
)
def test_good_labels_per_task(tmp_path: Path, objective: Objective, labels: list[Any], stored: list[Any]) -> None:
    path = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["A", "B", "C"], "label": labels, "label_time": "2026-01-01"}).to_csv(
        path, index=False
    )
    out = read_labels(path, "customer_id", objective)
    assert out["label"].tolist() == stored
    assert out["label"].dtype == ("float64" if objective.task == "regression" else "int64")


# -- the live verdict on the primary metric -----------------------------------------------------------------
def _rows(metric: str, value: float, n: int = 500) -> list[dict[str, Any]]:
    return [{"model_version": "1", "role": "champion", "scope": "overall", "window": "all", "n": n, metric: value}]


@pytest.mark.parametrize(
    ("task", "value", "status", "reason"),
    [
        ("regression", 61.2, "degraded", "live RMSE 61.2 > live_degraded_at 55"),
        ("regression", 80.0, "severe", "live RMSE 80 > live_severe_at 70"),
        ("regression", 40.0, "ok", "live RMSE 40 <= live_degraded_at 55"),
        ("binary", 0.6, "degraded", "live AUC 0.6 < live_degraded_at 0.65"),
        ("binary", 0.5, "severe", "live AUC 0.5 < live_severe_at 0.55"),
        ("multiclass", 0.8, "ok", "live AUC (one-vs-rest) 0.8 >= live_degraded_at 0.65"),
    ],
)
def test_the_live_verdict_judges_the_primary_metric_in_its_direction(
    task: str, value: float, status: str, reason: str
) -> None:
    thresholds = {"live_degraded_at": 55.0, "live_severe_at": 70.0} if task == "regression" else {}
    release = _release(_task_config(task, **thresholds))
    metric = release.objective.primary
    verdict = judge(_rows(metric, value), release)
    assert (verdict.metric, verdict.value, verdict.status, verdict.reason) == (metric, value, status, reason)
    body = verdict.to_dict()
    assert body["metric"] == metric and (body.get("auc") == value) is (task == "binary")


def test_too_few_labels_or_an_undefined_metric_is_insufficient() -> None:
    release = _release(bundled_config())
    few = judge(_rows("auc", 0.9, n=3), release)
    assert few.status == "insufficient" and "fewer than monitoring.min_labelled_rows" in few.reason
    undefined = judge(_rows("auc", math.nan), release)
    assert undefined.status == "insufficient" and "undefined" in undefined.reason
