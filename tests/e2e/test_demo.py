"""The whole lifecycle as a user runs it (`tollgate demo`), against real servers in the session's temp state
folder; asserts on the demo's summary, the registry and the ledger, not on log text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT
from tollgate import ledger
from tollgate.context import make_context
from tollgate.registry import Registry


def test_demo_lifecycle(live_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.app.demo import run_demo

    monkeypatch.setenv("TOLLGATE__ROLLOUT__AUTO_APPROVE", "true")  # restored after the test
    for key in ("TOLLGATE__MONITORING__MIN_LIVE_AUC", "TOLLGATE__MONITORING__SEVERE_LIVE_AUC"):
        monkeypatch.delenv(key, raising=False)
    rt = make_context(ROOT / "configs" / "pipeline.yaml", "dev")
    said: list[str] = []
    summary = run_demo(rt, say=said.append)
    steps = {s["step"]: s for s in summary.steps}
    assert steps["deploy v1"]["outcome"].startswith("Production (approved by auto-approved")
    assert steps["drift: normal period"]["outcome"] == "no drift"
    assert steps["drift: covariate period"]["outcome"].startswith("ALERT")
    assert Path(steps["drift: covariate period"]["report"]).exists()
    assert ": degraded" in steps["backfill: concept period"]["outcome"]
    assert "-> Production" in steps["retrain v2"]["outcome"]
    assert steps["bad release v3"]["outcome"].endswith("severe -> rolled_back")
    v1, v2, v3 = summary.versions["v1"], summary.versions["v2"], summary.versions["v3"]
    reg = Registry(live_stack["mlflow"], rt.config.project.registered_model, rt.paths.ledger)
    assert reg.one("Production").version == v2  # type: ignore[union-attr]
    assert reg.get(v3).stage == "Archived" and reg.get(v1).stage == "Archived"
    moves = [
        (e.version, e.from_stage, e.to_stage) for e in ledger.read(rt.paths.ledger, rt.config.project.registered_model)
    ]
    for move in [
        (v1, "Staging", "Production"),
        (v1, "Production", "Archived"),
        (v2, "Staging", "Production"),
        (v2, "Production", "Archived"),
        (v3, "Production", "Archived"),
        (v2, "Archived", "Production"),
    ]:
        assert move in moves, move
    rollback = [e for e in ledger.read(rt.paths.ledger) if e.version == v2 and e.to_stage == "Production"][-1]
    assert rollback.reason.startswith("rollback: automatic: severe degradation")
    assert httpx.get(f"{rt.config.servers.gateway_url}/health").json()["champion"] == v2
    assert any(line.strip().startswith("finished in") for line in said)
