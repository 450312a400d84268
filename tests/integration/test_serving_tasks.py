"""A multiclass and a regression release, trained by the real training flow, deployed and served by a real
gateway process: answers carry the task's fields and the prediction log its proba / event_ts columns."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from flows.deploy import deploy_model
from tests.helpers import ROOT
from tests.integration.live import records, running_gateway, train
from tollgate.config import TollgateConfig
from tollgate.context import Context
from tollgate.predlog import read_log

# The bundled table with a target of another task derived from it (the test checks serving, not model quality).
TASK_UPDATES: dict[str, dict[str, Any]] = {
    "multiclass": {
        "dataset": {"columns": {"churned": {"type": "label", "values": [0, 1, 2]}}},
        "model": {"task": "multiclass", "kind": "logistic_regression", "hyperparameters": {}},
        "gates": {"minimums": {}, "maximums": {}},
    },
    "regression": {
        "dataset": {"columns": {"churned": {"type": "float"}}},
        "model": {"task": "regression", "kind": "ridge", "hyperparameters": {}},
        "gates": {"minimums": {}, "maximums": {}},
        "monitoring": {"live_degraded_at": 1e6, "live_severe_at": 2e6},
    },
}


def task_context(ctx: Context, task: str, path: str) -> Context:
    """`ctx` with the task's config. Context.with_config merges nested dicts, so it cannot drop the binary gate
    limits (minimums {auc: ...}); the sections are replaced here instead."""
    body = ctx.config.model_dump()
    for section, values in TASK_UPDATES[task].items():
        for key, value in values.items():
            if key == "columns":
                body[section]["columns"] = {**body[section]["columns"], **value}
            else:
                body[section][key] = value
    body["dataset"]["path"] = path
    body["rollout"]["auto_approve"] = True
    cfg = TollgateConfig.model_validate(body)
    return dataclasses.replace(ctx, loaded=dataclasses.replace(ctx.loaded, config=cfg), _clients={})


def task_table(task: str, folder: Path) -> str:
    table = pd.read_parquet(ROOT / "data" / "snapshot.parquet")
    calls = table["support_calls_90d"].to_numpy()
    if task == "multiclass":
        table["churned"] = np.digitize(calls, [1.5, 3.5]).astype("int64")
    else:
        table["churned"] = (2.0 * calls + 0.1 * table["tenure_months"].to_numpy()).astype("float64")
    path = folder / f"{task}.parquet"
    table.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_a_release_of_each_task_is_served_with_its_answer_fields(
    live_stack: dict[str, str], task: str, tmp_path: Path
) -> None:
    with running_gateway(live_stack, f"serving-{task}") as gw:
        ctx = task_context(gw["ctx"], task, task_table(task, tmp_path))
        result = train(ctx)
        assert result.stage == "Staging", result.verdict
        deploy_model(version=result.version, config=ctx)  # first release: approval, Production, smoke test
        sent = records(12, offset=100)
        for rec in sent:
            rec["event_time"] = "2024-05-01T12:00:00Z"
        resp = httpx.post(f"{gw['url']}/predict", json={"records": sent}, timeout=30)
        assert resp.status_code == 200, resp.text
        answers = resp.json()["predictions"]
        assert {a["model_version"] for a in answers} == {result.version}
        if task == "multiclass":
            for a in answers:
                probs = a["probabilities"]
                assert sorted(probs) == ["0", "1", "2"] and math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
                assert a["decision"] == int(max(probs, key=probs.__getitem__)) and a["score"] == max(probs.values())
        else:
            assert all(math.isfinite(a["value"]) and a["value"] == a["score"] == a["decision"] for a in answers)
        bad = httpx.post(f"{gw['url']}/predict", json={**sent[0], "event_time": "not a time"}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "event_time"

        log = read_log(ctx.paths.model_log(gw["name"]))
        mine = log[log["prediction_id"].isin([a["prediction_id"] for a in answers])]
        assert len(mine) == len(answers)
        assert set(mine["event_ts"]) == {pd.Timestamp("2024-05-01T12:00:00Z").timestamp()}
        if task == "multiclass":
            assert all(len(p) == 3 for p in mine["proba"])
        else:
            assert mine["proba"].isna().all() and mine["decision"].dtype == "float64"
