"""`tollgate demo`: the whole lifecycle on the bundled dataset, in a fresh state folder, with progress and a
summary. Every step runs the real flows against the real servers and gateway; settings the demo changes (automatic
approval, a bad release's strict SLO) are config variants of its Context, passed to the flows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tollgate.app.demo_report import DemoSummary, drift_facts, gate_facts, last_rollback
from tollgate.context import Context
from tollgate.gateway_client import GatewayClient, GatewayError

PERIOD_ROWS = 1500
BATCH = 250
BAD_RELEASE_SLO = {"live_degraded_at": 0.75, "live_severe_at": 0.70}


class DemoError(Exception):
    """The demo cannot run with this config."""


def _records(frame: Any, features: list[str], id_field: str) -> list[dict[str, Any]]:
    rows = frame[[id_field, *features]].astype(object).where(frame[[id_field, *features]].notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]


def _replay(ctx: Context, records: list[dict[str, Any]]) -> float:
    """Send records through the gateway in batches; returns when the replay started (epoch s)."""
    start = time.time()
    gateway = ctx.gateway()
    try:
        for i in range(0, len(records), BATCH):
            gateway.predict(records[i : i + BATCH])
    finally:
        gateway.close()
    return start


class _Background:
    """Live traffic while a rollout needs shadow and canary requests."""

    def __init__(self, gateway: GatewayClient, records: list[dict[str, Any]]):
        self.gateway, self.records, self.stop, self.failures = gateway, records, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.gateway.predict(self.records[i : i + 20])
            except GatewayError:
                self.failures += 1  # a refused batch is the rollout's evidence, not the demo's failure
            i = (i + 20) % max(len(self.records) - 20, 1)
            time.sleep(0.02)

    def __enter__(self) -> _Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.gateway.close()


def run_demo(ctx: Context, interactive: bool = False, say: Callable[[str], None] = print) -> DemoSummary:
    """The lifecycle, step by step; returns the summary it prints. `ctx` must point at a fresh state folder."""
    from tollgate.app.stack import Stack

    cfg = ctx.config
    if cfg.generation is None:
        raise DemoError("the demo needs the bundled dataset: this config has no 'generation' section")
    if not interactive:  # demo mode: approvals are automatic and recorded as such
        ctx = ctx.with_config(rollout={"auto_approve": True})
    summary = DemoSummary(
        model=cfg.project.registered_model,
        links={
            "Prefect UI": cfg.servers.prefect_ui_url,
            "MLflow UI": cfg.servers.mlflow_url,
            "gateway": cfg.servers.gateway_url,
            "state folder": str(ctx.paths.home),
        },
    )
    started = time.perf_counter()
    say(f"[1/8] starting the stack in {ctx.paths.home} ...")
    # The demo drives each flow itself, so it does not apply the schedules and event triggers (`tollgate up`
    # does): a triggered retrain would race the demo's own.
    Stack(cfg.servers, ctx.paths, say=lambda m: say("      " + m), config_path=ctx.loaded.path, env=ctx.env).up()

    from flows.backfill import ground_truth_backfill
    from flows.deploy import deploy_model
    from flows.drift import drift_check
    from flows.retrain import retrain
    from flows.training import training_pipeline
    from tasks.gates import GateRejected
    from tasks.ground_truth import labels_from_period
    from tollgate.registry import ledger_entries
    from tollgate.release import load_release
    from tollgate.synthetic import generate

    period = {
        s: generate(cfg.generation, s, production=True).head(PERIOD_ROWS)
        for s in ("none", "covariate_drift", "concept_drift")
    }
    requests = {s: _records(f, cfg.features.all, cfg.dataset.id) for s, f in period.items()}

    say("[2/8] training v1 on the DVC snapshot and deploying it (first release: no champion to shadow) ...")
    v1 = training_pipeline(config=ctx, allow_dirty=True)
    holdout_auc = v1.overall["auc"]
    summary.versions["v1"] = v1.version
    summary.add(
        "train v1",
        f"{v1.stage}; holdout AUC {holdout_auc:.3f}",
        {"gate": v1.verdict.baseline},
        version=v1.version,
        stage=v1.stage,
        holdout_auc=holdout_auc,
        gate=gate_facts(v1.verdict.to_dict()),
    )
    deployed = deploy_model(version=v1.version, config=ctx)
    summary.add("deploy v1", f"Production (approved by {deployed['approved_by']})", **deployed)

    say(f"[3/8] replaying a normal production period ({PERIOD_ROWS} requests) and checking drift ...")
    calm = drift_check(since=_replay(ctx, requests["none"]), config=ctx)
    outcome = "drift detected" if calm["detected"] else "no drift"
    summary.add("drift: normal period", outcome, {"rows": calm["rows"]}, **drift_facts(calm))
    outcome, estimated = _estimate_line(calm["estimate"], None)
    summary.add("estimate: normal period", outcome, None, **estimated)

    say("[4/8] a drifted period arrives (prices up, engagement down) ...")
    drifted = drift_check(since=_replay(ctx, requests["covariate_drift"]), config=ctx)
    outcome = f"{'ALERT' if drifted['alerted'] else 'no alert'}: {', '.join(drifted['drifted'])}"
    summary.add("drift: covariate period", outcome, {"report": drifted["report"]}, **drift_facts(drifted))
    outcome, estimated = _estimate_line(drifted["estimate"], calm["estimate"])
    summary.add("estimate: covariate period", outcome, None, **estimated)

    say("[5/8] a concept-drift period arrives; 30 days later its labels come in ...")
    _replay(ctx, requests["concept_drift"])
    labels = ctx.paths.work / "concept_labels.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels_from_period(period["concept_drift"], cfg).to_csv(labels, index=False)
    live = ground_truth_backfill(labels=str(labels), config=ctx)
    v = live["verdict"]
    summary.add(
        "backfill: concept period",
        f"live AUC {v['auc']:.3f} on {v['labelled']} labels: {v['status']} (holdout was {holdout_auc:.3f})",
        {"action": live["action"]},
        version=v["version"],
        live_auc=v["auc"],
        holdout_auc=holdout_auc,
        labelled=v["labelled"],
        status=v["status"],
    )
    outcome, estimated = _reconcile_line(live["reconciliation"])
    summary.add("reconcile: concept period", outcome, None, **estimated)

    say(
        "[6/8] retraining (guarded) on the snapshot + labelled production rows: gate -> shadow -> canary -> approval ..."
    )
    snapshot: str | None = None
    facts: dict[str, Any] = {}
    with _Background(ctx.gateway(), requests["none"]):
        try:
            re = retrain(reason="tollgate.performance.degraded", config=ctx)
        except GateRejected as exc:
            outcome = f"v{exc.version} rejected by the gate: {[c.scope for c in exc.verdict.failures]}"
            facts = {"status": "rejected", "version": exc.version, "gate": gate_facts(exc.verdict.to_dict())}
        else:
            if re["status"] == "deployed":
                outcome = f"v{re['version']} -> Production (approved by {re['approved_by']})"
                verdict = load_release(ctx.config, ctx.registry, version=re["version"]).file("gate_verdict.json")
                rollout = {k: re[k] for k in ("approved_by", "replaced") if k in re}
                facts = {**re, "gate": gate_facts(verdict), "rollout": rollout}
            else:
                outcome, facts = f"skipped: {re['why']}", dict(re)
            summary.versions["v2"] = re.get("version", "")
            snapshot = re.get("snapshot")
    summary.add("retrain v2", outcome, **facts)

    say(
        "[7/8] a bad release: v3, trained on the same data, ships with a strict live SLO (severe below AUC 0.70) "
        "and meets concept-drift traffic ..."
    )
    strict = ctx.with_config(monitoring=BAD_RELEASE_SLO)  # recorded in v3's release context
    v3 = training_pipeline(config=strict, data=snapshot, allow_dirty=True)
    with _Background(ctx.gateway(), requests["none"]):
        deploy_model(version=v3.version, config=strict)
    summary.versions["v3"] = v3.version
    _replay(ctx, requests["concept_drift"])
    t0 = time.perf_counter()
    bad = ground_truth_backfill(labels=None, config=ctx)
    rollback_s = round(time.perf_counter() - t0, 2)
    b = bad["verdict"]
    rolled = last_rollback(ledger_entries(ctx.registry)) if bad["action"] == "rolled_back" else None
    summary.add(
        "bad release v3",
        f"live AUC {b['auc']:.3f}: {b['status']} -> {bad['action']}",
        {"backfill_and_rollback_s": rollback_s},
        version=v3.version,
        live_auc=b["auc"],
        status=b["status"],
        action=bad["action"],
        rollback=rolled and {**rolled, "seconds": rollback_s},
    )

    say("[8/8] the promotion ledger and the summary")
    summary.close(ctx, round(time.perf_counter() - started, 1))
    for line in summary.lines(str(ctx.paths.home)):
        say(line)
    return summary


def fresh_home(base: Path) -> Path:
    """A new state folder for one demo run."""
    home = base / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    home.mkdir(parents=True, exist_ok=False)
    return home


def _estimate_line(verdict: dict[str, Any], before: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """A drift window's estimated live metric (before any label), and how it moved from the window `before`."""
    if verdict.get("status") in (None, "none"):
        return f"no estimate: {verdict.get('why', '')}", {"status": "none", "value": None}
    value, metric = verdict["value"], verdict["metric"]
    outcome = f"estimated live {metric} {value:.3f} [{verdict['low']:.3f}, {verdict['high']:.3f}] before any label"
    if before and before.get("status") not in (None, "none"):
        outcome += f" ({value - before['value']:+.3f} on the normal period)"
    return outcome, {k: verdict.get(k) for k in ("version", "metric", "value", "low", "high", "status", "consecutive")}


def _reconcile_line(reconciled: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What the concept period's labels said of the estimate made before them."""
    shift = reconciled.get("concept_shift")
    checked = next((c for c in reconciled.get("checked", []) if c["window"] == "all"), None)
    if checked is None:
        return f"not reconciled: {reconciled.get('why') or 'no labelled window'}", {"concept_shift": None}
    est, realized = checked["estimated"], checked["realized"]
    outcome = f"estimated {est['value']:.3f} [{est['low']:.3f}, {est['high']:.3f}], realized {realized:.3f}: "
    outcome += f"CONCEPT SHIFT since {shift['since']}, later estimates flagged unreliable" if shift else "consistent"
    return outcome, {"concept_shift": shift, "realized": realized, "estimated": est}
