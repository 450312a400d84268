"""The whole lifecycle as a user runs it (`tollgate demo`), against real servers in the session's temp state
folder; asserts on the summary object `tollgate demo --json` prints, the registry and the ledger, not on prose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from mlflow import MlflowClient

from tests.e2e.sklearn_path import TASK_PLOTS, plot_names
from tests.helpers import ROOT
from tollgate import ledger
from tollgate.app.commands.history import consistency
from tollgate.context import make_context
from tollgate.registry import Registry, disagreements
from tollgate.signals import alert_failures


def test_demo_lifecycle(live_stack: dict[str, str]) -> None:
    """The demo `make demo` runs, asserted as `tollgate demo --json` reports it. Slow (~100 s): it is the whole
    lifecycle (three trainings, two rollouts with live traffic, drift, backfill, an automatic rollback), and
    what it checks is that all of it runs together."""
    from tollgate.app.demo import PERIOD_ROWS, run_demo

    ctx = make_context(ROOT / "configs" / "pipeline.yaml", "dev")
    model = ctx.config.project.registered_model
    said: list[str] = []
    summary = run_demo(ctx, say=said.append)
    report = json.loads(json.dumps(summary.to_dict()))  # exactly what `tollgate demo --json` prints
    names = {v["demo_name"]: v["version"] for v in report["versions"] if v["demo_name"]}
    v1, v2, v3 = names["v1"], names["v2"], names["v3"]
    stages = {v["version"]: v["stage"] for v in report["versions"]}
    assert (stages[v1], stages[v2], stages[v3]) == ("Archived", "Production", "Archived")

    steps = {s["step"]: s for s in report["steps"]}
    assert steps["train v1"]["gate"]["passed"] and steps["train v1"]["holdout_auc"] > 0.7
    assert steps["deploy v1"]["approved_by"].startswith("auto-approved")
    normal, covariate = steps["drift: normal period"], steps["drift: covariate period"]
    assert not normal["detected"] and normal["rows"] == PERIOD_ROWS
    assert covariate["detected"] and covariate["alerted"] and covariate["drifted"]
    assert Path(covariate["report"]).exists()
    concept = steps["backfill: concept period"]
    assert concept["status"] == "degraded" and concept["live_auc"] < concept["holdout_auc"]
    # issue 36: the live AUC estimated from the log alone, before labels; then checked when the labels came
    calm, moved = steps["estimate: normal period"], steps["estimate: covariate period"]
    assert calm["version"] == moved["version"] == v1 and calm["low"] <= calm["value"] <= calm["high"]
    assert moved["value"] < calm["value"], (calm, moved)  # the covariate period's estimate falls, no label yet
    reconciled = steps["reconcile: concept period"]
    assert reconciled["concept_shift"]["version"] == v1, reconciled
    assert reconciled["realized"] < reconciled["estimated"]["low"]  # the labels fell below what the scores promised
    retrained = steps["retrain v2"]
    assert retrained["status"] == "deployed" and retrained["version"] == v2
    assert retrained["gate"]["passed"] and retrained["gate"]["failures"] == []
    assert retrained["rollout"]["replaced"] == v1 and retrained["rollout"]["approved_by"].startswith("auto-approved")
    bad = steps["bad release v3"]
    assert (bad["version"], bad["status"], bad["action"]) == (v3, "severe", "rolled_back")
    assert bad["rollback"]["from"] == v3 and bad["rollback"]["to"] == v2 and bad["rollback"]["at"]
    assert 0 < bad["rollback"]["seconds"] == bad["backfill_and_rollback_s"]
    assert report["ledger_entries"] == len(ledger.read(ctx.paths.ledger, model))
    assert report["failed_alert_deliveries"] == len(alert_failures(ctx.paths, model))

    reg = Registry(live_stack["mlflow"], model, ctx.paths.ledger)
    assert reg.one("Production").version == v2  # type: ignore[union-attr]
    assert reg.get(v3).stage == "Archived" and reg.get(v1).stage == "Archived"
    moves = [(e.version, e.from_stage, e.to_stage) for e in ledger.read(ctx.paths.ledger, model)]
    for move in [
        (v1, "Staging", "Production"),
        (v1, "Production", "Archived"),
        (v2, "Staging", "Production"),
        (v2, "Production", "Archived"),
        (v3, "Production", "Archived"),
        (v2, "Archived", "Production"),
    ]:
        assert move in moves, move
    rollback = [e for e in ledger.read(ctx.paths.ledger) if e.version == v2 and e.to_stage == "Production"][-1]
    assert rollback.reason.startswith("rollback: automatic: severe degradation")
    assert httpx.get(f"{ctx.config.servers.gateway_url}/health").json()["champion"] == v2
    assert any(line.strip().startswith("finished in") for line in said)  # the printed summary came out

    # After the automatic rollback MLflow 3 clients see the same truth: @champion is v2, nothing is @challenger.
    client = MlflowClient(live_stack["mlflow"])
    assert client.get_model_version_by_alias(model, "champion").version == v2
    assert "challenger" not in reg.aliases() and disagreements(reg) == []
    assert "Gate verdict" in (client.get_model_version(model, v2).description or "")
    # every version of the demo has its pictures on its run (the bundled binary model: curves, and the gate's
    # forest plot against the version it was gated on)
    for v in (v1, v2, v3):
        names = plot_names(client, client.get_model_version(model, v).run_id)
        assert TASK_PLOTS["binary"] <= names and (v == v1 or "gate_forest" in names), (v, names)
    assert consistency(ctx) == []
    _tamper_and_verify(ctx.paths.ledger, v3)


def _tamper_and_verify(path: Path, version: str) -> None:
    """Editing one ledger line (here: the reason v3 was archived) makes `tollgate history --verify` exit 1 naming it."""
    tollgate = [str(Path(sys.executable).parent / "tollgate"), "history", "--verify"]
    assert subprocess.run(tollgate, cwd=ROOT, env=os.environ, capture_output=True, text=True).returncode == 0
    lines = path.read_text().splitlines(keepends=True)
    at = next(
        i for i, line in enumerate(lines) if f'"version": "{version}"' in line and '"to_stage": "Archived"' in line
    )
    original = path.read_text()
    lines[at] = lines[at].replace('"reason": "', '"reason": "edited: ', 1)
    try:
        path.write_text("".join(lines))
        ran = subprocess.run(tollgate, cwd=ROOT, env=os.environ, capture_output=True, text=True)
        assert ran.returncode == 1, ran.stdout + ran.stderr
        assert f"entry {at + 1}" in ran.stdout and "edited" in ran.stdout, ran.stdout
    finally:
        path.write_text(original)
