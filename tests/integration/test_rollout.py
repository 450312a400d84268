"""deploy_model and rollback against the real Prefect and MLflow servers and a real gateway process."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.deploy import deploy_model
from tasks.approvals import ApprovalError, _paused_runs, answer_approval
from tasks.deployment import RolloutFailed
from tasks.rollout import rollback_via_gateway
from tests.integration.live import CONFIG, Traffic, free_port, records
from tests.integration.live import train as _train
from tollgate import ledger
from tollgate.context import make_context
from tollgate.predlog import read_log
from tollgate.registry import Registry


def _reload(gw: dict[str, Any]) -> dict[str, Any]:
    return httpx.post(f"{gw['url']}/admin/reload", headers={"Authorization": "Bearer test-token"}, timeout=60).json()


def _deploy_in_thread(version: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = deploy_model(version=version, config=CONFIG, env="dev")
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_paused(version: str, thread: threading.Thread, timeout: float = 240) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        if asyncio.run(_paused_runs(version)):
            return
        time.sleep(1)
    raise AssertionError(f"deploy of v{version} never paused for approval")


def test_shadow_canary_approval_production_then_rollback(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg: Registry = gateway["registry"]
    # v1: a deliberately weak first model, auto-approved by its own release policy (no champion to shadow).
    v1 = _train(monkeypatch, TOLLGATE__MODEL__HYPERPARAMETERS__MAX_ITER="10", TOLLGATE__ROLLOUT__AUTO_APPROVE="true")
    assert deploy_model(version=v1.version, config=CONFIG, env="dev")["approved_by"].startswith("auto-approved")
    assert reg.one("Production").version == v1.version  # type: ignore[union-attr]
    assert httpx.get(f"{gateway['url']}/health").json()["champion"] == v1.version
    # v2: clearly better; its release requires a person from rollout.approvers.
    v2 = _train(monkeypatch)
    assert v2.stage == "Staging"
    with Traffic(gateway["url"]) as traffic:
        thread, out = _deploy_in_thread(v2.version)
        _wait_paused(v2.version, thread)
        with pytest.raises(ApprovalError, match="refused"):
            answer_approval(v2.version, "mallory", True, "not on the list")
        assert "approved" in answer_approval(v2.version, "alice", True, "shadow and canary look fine")
        thread.join(240)
        assert "error" not in out, out.get("error")
        roles = {(a["model_version"], a["role"]) for a in traffic.answers}
        assert (v2.version, "canary") in roles and (v1.version, "champion") in roles
        assert (v2.version, "champion") in {(a["model_version"], a["role"]) for a in traffic.answers[-5:]}
        # rollback while traffic flows: nothing dropped, the old release answers as soon as the command returns
        from tollgate.app.cli import main

        assert main(["rollback", "--reason", "test: restore v1"]) == 0
        first = httpx.post(f"{gateway['url']}/predict", json=records(1)[0]).json()
        assert first["model_version"] == v1.version
        time.sleep(0.5)
    assert traffic.failures == []
    assert reg.one("Production").version == v1.version and reg.get(v2.version).stage == "Archived"  # type: ignore[union-attr]
    log = read_log(Path(os.environ["TOLLGATE_HOME"]) / "predictions" / gateway["name"])
    mine = log[log["model_version"].isin([v1.version, v2.version])]
    assert {"champion", "shadow", "canary"} <= set(mine["role"])
    entries = [(e.version, e.from_stage, e.to_stage, e.who) for e in ledger.read(reg.ledger_path, gateway["name"])]
    assert (v2.version, "Staging", "Production", "alice") in entries
    assert (v1.version, "Production", "Archived", "alice") in entries
    assert any(v == v1.version and f == "Archived" and t == "Production" for v, f, t, _ in entries)  # the rollback
    reasons = [e.reason for e in ledger.read(reg.ledger_path, gateway["name"])]
    assert any("rollout: shadow" in r for r in reasons) and any("rollout: canary" in r for r in reasons)
    assert any(r.startswith("rollback: test: restore v1") for r in reasons)
    # with the gateway unreachable the same rollback happens in the registry directly (served when it starts)
    unreachable = make_context(CONFIG, "dev").with_config(servers={"gateway_port": free_port()})
    done = rollback_via_gateway(unreachable, v2.version, "test: gateway down", None)
    assert done == {"from": v1.version, "to": v2.version, "served": False}
    assert reg.one("Production").version == v2.version  # type: ignore[union-attr]


def test_rejected_approval_leaves_production_as_it_was(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg: Registry = gateway["registry"]
    v1 = _train(monkeypatch, TOLLGATE__MODEL__HYPERPARAMETERS__MAX_ITER="10", TOLLGATE__ROLLOUT__AUTO_APPROVE="true")
    deploy_model(version=v1.version, config=CONFIG, env="dev")
    v2 = _train(monkeypatch)
    with Traffic(gateway["url"]):
        thread, out = _deploy_in_thread(v2.version)
        _wait_paused(v2.version, thread)
        answer_approval(v2.version, "bob", False, "canary is too small to judge")
        thread.join(120)
    assert isinstance(out.get("error"), RolloutFailed) and "not approved by bob" in str(out["error"])
    assert reg.one("Production").version == v1.version and reg.get(v2.version).stage == "Archived"  # type: ignore[union-attr]
    assert reg.one("Staging") is None
    assert httpx.get(f"{gateway['url']}/health").json() == {
        "status": "ok",
        "champion": v1.version,
        "challenger": None,
        "mode": "off",
        "share": 0.0,
    }


def test_every_acknowledged_prediction_survives_sigkill(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = _train(monkeypatch, TOLLGATE__ROLLOUT__AUTO_APPROVE="true")
    deploy_model(version=v1.version, config=CONFIG, env="dev")
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            offset = 0
            while not stop.is_set():
                try:
                    resp = client.post(f"{gateway['url']}/predict", json={"records": records(5, offset)})
                except httpx.HTTPError:
                    return
                offset += 5
                if resp.status_code == 200:
                    acked.extend(p["prediction_id"] for p in resp.json()["predictions"])

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.killpg(gateway["proc"].pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 100
    logged = set(read_log(Path(os.environ["TOLLGATE_HOME"]) / "predictions" / gateway["name"])["prediction_id"])
    missing = [p for p in acked if p not in logged]
    assert missing == [], f"{len(missing)} acknowledged predictions are not in the log"


def test_bad_requests_get_422_naming_each_field(gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = _train(monkeypatch, TOLLGATE__ROLLOUT__AUTO_APPROVE="true")
    deploy_model(version=v1.version, config=CONFIG, env="dev")
    good = records(1)[0]
    bad = {**good, "tenure_months": -1, "region": "atlantis", "autopay": "yes"}
    bad.pop("usage_gb")
    resp = httpx.post(f"{gateway['url']}/predict", json={"records": [good, bad]})
    assert resp.status_code == 422
    fields = {d["field"] for d in resp.json()["detail"]}
    assert fields == {"records[1].tenure_months", "records[1].region", "records[1].autopay", "records[1].usage_gb"}
    assert httpx.post(f"{gateway['url']}/predict", content=b"{not json").status_code == 422
    assert httpx.post(f"{gateway['url']}/predict", json=[]).status_code == 422
    assert httpx.post(f"{gateway['url']}/admin/reload").status_code == 401
    ok = httpx.post(f"{gateway['url']}/predict", json=good)
    assert ok.status_code == 200 and ok.json()["model_version"] == v1.version  # the worker survived it all
    metrics = httpx.get(f"{gateway['url']}/metrics").text
    assert 'tollgate_errors_total{kind="validation"}' in metrics and "tollgate_request_latency_ms_bucket" in metrics
