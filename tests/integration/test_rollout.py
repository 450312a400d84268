"""deploy_model and rollback against the real Prefect and MLflow servers and a real gateway process."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import httpx
import pyotp
import pytest

from flows.deploy import deploy_model
from tasks.approvals import ApprovalError, _paused_runs, answer_approval, signed_answer
from tasks.deployment import RolloutFailed
from tasks.rollout import rollback_via_gateway
from tests.integration.live import Traffic, free_port, records, train
from tollgate import approvers, ledger
from tollgate.context import Context
from tollgate.predlog import read_log
from tollgate.registry import Registry, disagreements

WEAK = {"model": {"hyperparameters": {"max_iter": 10}}}  # a deliberately weak first model
AUTO = {"rollout": {"auto_approve": True}}  # approve with nobody asked (where the deploying env allows it)


def _log(gateway: dict[str, Any]) -> Any:
    ctx: Context = gateway["ctx"]
    return read_log(ctx.paths.model_log(gateway["name"]))


def _deploy_in_thread(ctx: Context, version: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = deploy_model(version=version, config=ctx)
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_paused(version: str, thread: threading.Thread, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        if asyncio.run(_paused_runs(version)):
            return
        time.sleep(1)
    raise AssertionError(f"deploy of v{version} never paused for approval")


def _secret(ctx: Context, name: str) -> str:
    """A fresh approver secret for `name` in this test's state folder."""
    if name in approvers.read(ctx.paths.approvers):
        approvers.remove(ctx.paths.approvers, name)
    return approvers.add(ctx.paths.approvers, name, ctx.config.rollout.approvers)


def _aliases(reg: Registry) -> dict[str, str]:
    """champion/challenger as an MLflow 3 client sees them (None when the alias is not set)."""
    out = {}
    for alias in ("champion", "challenger"):
        try:
            out[alias] = str(reg.client.get_model_version_by_alias(reg.model, alias).version)
        except Exception:
            out[alias] = None
    return out


def _resume_directly(version: str, answer: dict[str, Any]) -> None:
    """Answer the form through the Prefect API, as anyone with API access could (no `tollgate approve`)."""
    from prefect.flow_runs import resume_flow_run

    run = asyncio.run(_paused_runs(version))[0]
    resume_flow_run(run.id, run_input=answer)


def _wait_repaused(version: str, thread: threading.Thread, before: set[str]) -> None:
    """Wait until the run is paused again under a new pause key (the flow refused the answer)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and thread.is_alive():
        runs = asyncio.run(_paused_runs(version))
        keys = {str(r.state.state_details.pause_key) for r in runs}
        if keys and not keys & before:
            return
        time.sleep(0.5)
    raise AssertionError(f"v{version} did not pause again after a refused answer")


def test_shadow_canary_approval_production_then_rollback(gateway: dict[str, Any]) -> None:
    """Slow (~70 s): two trainings and a rollout through every phase (shadow, canary, approval) on live traffic,
    then a rollback; the phases are what is tested."""
    reg: Registry = gateway["registry"]
    ctx: Context = gateway["ctx"]
    # v1: weak, deployed where the deploying environment (dev, which rollout.auto_approve_envs lists) approves
    # automatically; no champion to shadow.
    v1 = train(ctx, **WEAK, **AUTO)
    assert deploy_model(version=v1.version, config=ctx.with_config(**AUTO))["approved_by"].startswith(
        "auto-approved in env dev"
    )
    assert reg.one("Production").version == v1.version  # type: ignore[union-attr]
    assert _aliases(reg) == {"champion": v1.version, "challenger": None}
    assert httpx.get(f"{gateway['url']}/health").json()["champion"] == v1.version
    # v2: clearly better, and its release carries auto_approve: true; the deploying environment's policy says
    # no, so a person from rollout.approvers must approve, with their secret (issue 32.1).
    v2 = train(ctx, **AUTO)
    assert v2.stage == "Staging"
    assert _aliases(reg) == {"champion": v1.version, "challenger": v2.version}
    description = reg.client.get_model_version(reg.model, v2.version).description
    assert "**Owner:**" in description and "**Gate verdict:** gate PASSED" in description
    secret = _secret(ctx, "alice")
    with Traffic(gateway["url"]) as traffic:
        thread, out = _deploy_in_thread(ctx, v2.version)
        _wait_paused(v2.version, thread)
        # the approver's pictures are there before the decision: the report the form links to, the phases' plots
        run_id = reg.get(v2.version).run_id
        assert [a.path for a in reg.client.list_artifacts(run_id, "report")] == ["report/release_report.html"]
        assert {a.path for a in reg.client.list_artifacts(run_id, "plots/canary")} >= {"plots/canary/canary_checks.png"}
        with pytest.raises(ApprovalError, match=r"not on rollout\.approvers"):
            answer_approval(ctx, v2.version, "mallory", "x", True, "not on the list")
        with pytest.raises(ApprovalError, match="wrong secret for 'alice'"):
            answer_approval(ctx, v2.version, "alice", "guessed", True, "a wrong secret, through the CLI path")
        paused = {str(r.state.state_details.pause_key) for r in asyncio.run(_paused_runs(v2.version))}
        assert paused, "a refused CLI answer must leave the run paused"
        # the same wrong secret straight through the Prefect API: the flow refuses it and pauses again
        _resume_directly(v2.version, {"approve": True, "approver": "alice", "proof": "123456", "comment": "api"})
        _wait_repaused(v2.version, thread, paused)
        assert reg.one("Production").version == v1.version  # type: ignore[union-attr]
        # the approval as the Prefect UI sends it (issue 34 (e)): the form with a code from alice's authenticator
        form = {"approve": True, "approver": "alice", "proof": pyotp.TOTP(secret).now(), "comment": "looks fine"}
        _resume_directly(v2.version, form)
        thread.join(240)
        assert "error" not in out, out.get("error")
        roles = {(a["model_version"], a["role"]) for a in traffic.answers}
        assert (v2.version, "canary") in roles and (v1.version, "champion") in roles
        assert (v2.version, "champion") in {(a["model_version"], a["role"]) for a in traffic.answers[-5:]}
        # rollback while traffic flows: nothing dropped, the old release answers as soon as the call returns
        done = rollback_via_gateway(ctx, None, "test: restore v1", None)
        assert (done["from"], done["to"], done["served"]) == (v2.version, v1.version, True)
        first = httpx.post(f"{gateway['url']}/predict", json=records(1)[0]).json()
        assert first["model_version"] == v1.version
        time.sleep(0.5)
    assert traffic.failures == []
    assert reg.one("Production").version == v1.version and reg.get(v2.version).stage == "Archived"  # type: ignore[union-attr]
    assert _aliases(reg) == {"champion": v1.version, "challenger": None}
    assert disagreements(reg) == []
    tags = reg.get(v2.version).tags
    assert (
        tags["tollgate.approval.by"].startswith("alice at ")
        and "promoted to Production" in tags["tollgate.rollout.outcome"]
    )
    records_ = [a for a in reg.client.list_artifacts(v2.run_id, "approvals")]
    assert len(records_) == 1  # the approval record with the evidence it saw
    refusals = [e for e in ledger.read(reg.ledger_path, gateway["name"]) if e.reason.startswith("approval refused")]
    assert [e.who for e in refusals] == ["alice (unproven)", "alice (unproven)"]  # CLI path, then Prefect API
    assert ledger.verify(reg.ledger_path) == []
    log = _log(gateway)
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
    unreachable = ctx.with_config(servers={"gateway_port": free_port()})
    done = rollback_via_gateway(unreachable, v2.version, "test: gateway down", None)
    assert done == {"from": v1.version, "to": v2.version, "served": False}
    assert reg.one("Production").version == v2.version  # type: ignore[union-attr]
    assert _aliases(reg) == {"champion": v2.version, "challenger": None}


def test_a_captured_approval_cannot_be_replayed(gateway: dict[str, Any]) -> None:
    """Issue 32.4 (c): whoever holds the Prefect login sees the answer `tollgate approve` sends; replayed on a later
    rollout it is refused (its proof is bound to the run, the pause and the decision), a one-time code from the
    authenticator counts once, and the approver's key is nowhere in Prefect's database files. Slow (~90 s): three
    trainings and two rollouts on live traffic; a replay needs a later rollout to be replayed into."""
    from prefect.flow_runs import resume_flow_run

    reg: Registry = gateway["registry"]
    ctx: Context = gateway["ctx"]
    v1 = train(ctx, **WEAK)
    deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
    key = _secret(ctx, "alice")
    v2 = train(ctx)
    with Traffic(gateway["url"]):
        thread, out = _deploy_in_thread(ctx, v2.version)
        _wait_paused(v2.version, thread)
        run = asyncio.run(_paused_runs(v2.version))[0]
        captured = signed_answer(run, v2.version, "alice", key, True, "shadow and canary look fine")
        assert key not in str(captured)
        resume_flow_run(run.id, run_input=captured)  # exactly what `tollgate approve` sends
        thread.join(240)
    assert "error" not in out, out.get("error")
    assert reg.one("Production").version == v2.version  # type: ignore[union-attr]

    v3 = train(ctx)
    with Traffic(gateway["url"]):
        thread, out = _deploy_in_thread(ctx, v3.version)
        _wait_paused(v3.version, thread)
        paused = {str(r.state.state_details.pause_key) for r in asyncio.run(_paused_runs(v3.version))}
        _resume_directly(v3.version, captured)  # the replay
        _wait_repaused(v3.version, thread, paused)
        assert reg.one("Production").version == v2.version  # type: ignore[union-attr]
        # the Prefect UI path: a code from alice's authenticator answers once (here: a rejection)
        code = pyotp.TOTP(key).now()
        _resume_directly(v3.version, {"approve": False, "approver": "alice", "proof": code, "comment": "from the UI"})
        thread.join(120)
    assert isinstance(out.get("error"), RolloutFailed) and "not approved by alice" in str(out["error"])
    assert reg.one("Production").version == v2.version  # type: ignore[union-attr]
    refused = [e for e in ledger.read(reg.ledger_path, gateway["name"]) if e.reason.startswith("approval refused")]
    assert [(e.version, e.who) for e in refused] == [(v3.version, "alice (unproven)")]
    assert "wrong proof for 'alice'" in refused[0].reason
    assert (
        approvers.check_proof(ctx.paths.approvers, "alice", code, approvers.Question("any", "any", v3.version, False))
        == "one-time code for 'alice' was already used"
    )
    files = [f for f in ctx.paths.prefect_home.rglob("*") if f.is_file()]
    assert any(f.name.startswith("prefect.db") for f in files)
    assert [f for f in files if key.encode() in f.read_bytes()] == []


def test_rejected_approval_leaves_production_as_it_was(gateway: dict[str, Any]) -> None:
    reg: Registry = gateway["registry"]
    ctx: Context = gateway["ctx"]
    v1 = train(ctx, **WEAK, **AUTO)
    deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
    v2 = train(ctx)
    with Traffic(gateway["url"]):
        thread, out = _deploy_in_thread(ctx, v2.version)
        _wait_paused(v2.version, thread)
        answer_approval(ctx, v2.version, "bob", _secret(ctx, "bob"), False, "canary is too small to judge")
        thread.join(120)
    assert isinstance(out.get("error"), RolloutFailed) and "not approved by bob" in str(out["error"])
    assert reg.one("Production").version == v1.version and reg.get(v2.version).stage == "Archived"  # type: ignore[union-attr]
    assert reg.one("Staging") is None
    assert _aliases(reg) == {"champion": v1.version, "challenger": None}
    assert httpx.get(f"{gateway['url']}/health").json() == {
        "status": "ok",
        "champion": v1.version,
        "challenger": None,
        "mode": "off",
        "share": 0.0,
        "champion_scoring": "onnx",
        "challenger_scoring": None,
    }


def test_every_acknowledged_prediction_survives_sigkill(gateway: dict[str, Any]) -> None:
    v1 = train(gateway["ctx"], **AUTO)
    deploy_model(version=v1.version, config=gateway["ctx"].with_config(**AUTO))
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
    logged = set(_log(gateway)["prediction_id"])
    missing = [p for p in acked if p not in logged]
    assert missing == [], f"{len(missing)} acknowledged predictions are not in the log"


@pytest.mark.smoke
def test_bad_requests_get_422_naming_each_field(gateway: dict[str, Any]) -> None:
    """Also the smoke path of `make test-fast`: train -> deploy -> predict on the bundled data."""
    v1 = train(gateway["ctx"], **AUTO)
    deploy_model(version=v1.version, config=gateway["ctx"].with_config(**AUTO))
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
    assert (
        'tollgate_errors_total{kind="validation"}' in metrics and "tollgate_request_latency_seconds_bucket" in metrics
    )
