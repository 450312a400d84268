"""The gateway's answers and prediction-log records per task (binary, multiclass, regression), scored by tiny
fitted sklearn models through the batcher's and the shadow scorer's own functions, without servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from serving.batcher import Job, score_batch
from serving.release import Release, Routing
from serving.shadow import score_shadow
from tasks.rollout import answer_problem
from tests.helpers import bundled_config, small_frame
from tollgate.config import TollgateConfig
from tollgate.objective import Objective
from tollgate.predlog import PredictionLog, event_seconds, read_log

NUMERIC = ["tenure_months", "monthly_charges", "support_calls_90d"]


def task_config(task: str) -> TollgateConfig:
    """The bundled config as a binary, 3-class or regression task on the same table ('churned' as the target)."""
    cfg = bundled_config()
    body = cfg.model_dump()
    if task == "multiclass":
        body["dataset"]["columns"]["churned"] = {"type": "label", "values": [0, 1, 2]}
        body["model"].update(task="multiclass", kind="logistic_regression")
        body["gates"].update(minimums={}, maximums={})
    if task == "regression":
        body["dataset"]["columns"]["churned"] = {"type": "float"}
        body["model"].update(task="regression", kind="ridge")
        body["gates"].update(minimums={}, maximums={})
        body["monitoring"].update(live_degraded_at=10.0, live_severe_at=20.0)
    return TollgateConfig.model_validate(body)


def fitted(task: str, train: pd.DataFrame) -> Pipeline:
    """A tiny pipeline on three numeric columns: LogisticRegression (2 or 3 classes) or Ridge."""
    x = train["tenure_months"].to_numpy()
    y = {
        "binary": (x > np.median(x)).astype(int),
        "multiclass": np.digitize(x, np.quantile(x, [1 / 3, 2 / 3])),
        "regression": 0.5 * x + train["support_calls_90d"].to_numpy(),
    }[task]
    estimator = Ridge() if task == "regression" else LogisticRegression(max_iter=1000)
    prep = ColumnTransformer([("num", SimpleImputer(), NUMERIC)])
    return Pipeline([("prep", prep), ("model", estimator)]).fit(train, y)


def release(task: str, version: str = "5") -> Release:
    return Release.of(version, f"run{version}", fitted(task, small_frame(60)), task_config(task))


def request_records(n: int) -> list[dict[str, Any]]:
    """Request records as clients send them: id, features, the event time as ISO text, and no target."""
    frame = small_frame(n)
    cols = [c for c in bundled_config().dataset.columns if c != "churned"]
    out = []
    for row in frame[cols].to_dict("records"):
        plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        rec: dict[str, Any] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in plain.items()}
        rec["event_time"] = pd.Timestamp(row["event_time"]).isoformat()
        out.append(rec)
    return out


def score_requests(rel: Release, recs: list[dict[str, Any]], folder: Path, shadow: Release | None = None) -> Any:
    loop = asyncio.new_event_loop()
    try:
        routing = Routing(rel, shadow, "shadow" if shadow else "off")
        plog = PredictionLog(folder, fsync=False)
        scored = score_batch([Job(recs, routing, loop.create_future(), 0.0)], plog)
        counts = score_shadow(scored.shadow, plog) if scored.shadow else None
        plog.close()
        return scored.results[0], read_log(folder), counts
    finally:
        loop.close()


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_answers_and_log_records_follow_the_task(task: str, tmp_path: Path) -> None:
    rel, recs = release(task), request_records(8)
    answers, log, _ = score_requests(rel, recs, tmp_path)
    X = pd.DataFrame(recs)
    keys = {"prediction_id", "entity_id", "score", "decision", "model_version", "role"}
    assert [a["entity_id"] for a in answers] == [r["customer_id"] for r in recs]
    if task == "binary":
        p1 = rel.model.predict_proba(X)[:, 1]
        assert all(set(a) == keys for a in answers)
        assert [a["score"] for a in answers] == pytest.approx(p1)
        assert [a["decision"] for a in answers] == [int(p >= rel.threshold) for p in p1]
        assert log["proba"].isna().all()
    if task == "multiclass":
        proba = rel.model.predict_proba(X)
        assert all(set(a) == keys | {"probabilities"} for a in answers)
        for a, row in zip(answers, proba, strict=True):
            assert list(a["probabilities"]) == ["0", "1", "2"]
            assert list(a["probabilities"].values()) == pytest.approx(row)
            assert a["decision"] == int(np.argmax(row)) and a["score"] == pytest.approx(row.max())
            assert isinstance(a["decision"], int)
        assert [list(p) for p in log["proba"]] == [pytest.approx(row) for row in proba]
    if task == "regression":
        value = rel.model.predict(X)
        assert all(set(a) == keys | {"value"} for a in answers)
        assert [a["value"] for a in answers] == pytest.approx(value)
        assert all(a["value"] == a["score"] == a["decision"] for a in answers)
        assert log["decision"].dtype == "float64" and log["proba"].isna().all()
    assert all(answer_problem(a, "5", rel.objective) is None for a in answers)
    # the log: one record per answer, the same score and decision, the event time, every schema column but id/target
    assert list(log["prediction_id"]) == [a["prediction_id"] for a in answers]
    assert list(log["score"]) == pytest.approx([a["score"] for a in answers])
    assert list(log["decision"]) == [a["decision"] for a in answers]
    assert list(log["event_ts"]) == [event_seconds(r["event_time"]) for r in recs]
    logged = {c.removeprefix("f.") for c in log.columns if c.startswith("f.")}
    assert logged == set(bundled_config().dataset.columns) - {"customer_id", "churned"}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_shadow_rows_are_logged_per_task_and_compared_with_the_champion(task: str, tmp_path: Path) -> None:
    champion, challenger = release(task, "5"), release(task, "6")  # the same fit: every pair agrees
    answers, log, counts = score_requests(champion, request_records(8), tmp_path, shadow=challenger)
    shadow = log[log["role"] == "shadow"].set_index("request_id")
    assert len(shadow) == 8 and set(shadow["model_version"]) == {"6"}
    for a in answers:
        row = shadow.loc[a["prediction_id"]]
        assert row["score"] == pytest.approx(a["score"]) and row["decision"] == pytest.approx(a["decision"])
        assert (row["proba"] is not None) is (task == "multiclass")
        assert not np.isnan(row["event_ts"])
    assert counts.compared == 8 and counts.disagreed == 0


@pytest.mark.parametrize(
    ("task", "change", "phrase"),
    [
        ("binary", {"score": 1.2}, "outside [0, 1]"),
        ("binary", {"decision": 2}, "not one of the classes"),
        ("binary", {"model_version": "4"}, "answered by v4"),
        ("binary", {"score": float("nan")}, "not a finite number"),
        ("multiclass", {"decision": 7}, "not one of the classes"),
        ("multiclass", {"probabilities": {"0": 0.5, "1": 0.4, "2": 0.4}}, "do not sum to 1"),
        ("multiclass", {"probabilities": {"0": 0.5, "1": 0.5}}, "not keyed by the classes"),
        ("regression", {"value": float("inf")}, "not a finite number"),
        ("regression", {"value": 3.0}, "equal to score and decision"),
    ],
)
def test_the_smoke_test_rejects_answers_invalid_for_the_task(task: str, change: dict[str, Any], phrase: str) -> None:
    good = {
        "binary": {"model_version": "5", "score": 0.4, "decision": 1},
        "multiclass": {
            "model_version": "5",
            "score": 0.5,
            "decision": 1,
            "probabilities": {"0": 0.2, "1": 0.5, "2": 0.3},
        },
        "regression": {"model_version": "5", "score": 2.5, "decision": 2.5, "value": 2.5},
    }[task]
    obj = Objective.from_config(task_config(task))
    assert answer_problem(good, "5", obj) is None
    problem = answer_problem({**good, **change}, "5", obj)
    assert problem is not None and phrase in problem, problem
