"""`tollgate demo`: the whole lifecycle on the bundled dataset, in a fresh state folder, with progress and a
summary. Every step runs the real flows against the real servers and gateway."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollgate.context import Context

PERIOD_ROWS = 1500
BAD_RELEASE_SLO = {"TOLLGATE__MONITORING__MIN_LIVE_AUC": "0.75", "TOLLGATE__MONITORING__SEVERE_LIVE_AUC": "0.70"}


@dataclass
class DemoSummary:
    """What the demo did, for the closing table and for tests."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, step: str, outcome: str, **facts: Any) -> None:
        self.steps.append({"step": step, "outcome": outcome, **facts})


def _records(frame: Any, features: list[str], id_field: str) -> list[dict[str, Any]]:

    rows = frame[[id_field, *features]].astype(object).where(frame[[id_field, *features]].notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]


def _replay(url: str, records: list[dict[str, Any]]) -> float:
    """Send records through the gateway in batches; returns when the replay started (epoch s)."""
    import httpx

    start = time.time()
    with httpx.Client(timeout=60) as client:
        for i in range(0, len(records), 250):
            resp = client.post(f"{url}/predict", json={"records": records[i : i + 250]})
            resp.raise_for_status()
    return start


class _Background:
    """Live traffic while a rollout needs shadow and canary requests."""

    def __init__(self, url: str, records: list[dict[str, Any]]):
        self.url, self.records, self.stop = url, records, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                client.post(f"{self.url}/predict", json={"records": self.records[i : i + 20]})
                i = (i + 20) % max(len(self.records) - 20, 1)
                time.sleep(0.02)

    def __enter__(self) -> _Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def run_demo(
    rt: Context, interactive: bool = False, say: Callable[[str], None] = print, deployments: bool = True
) -> DemoSummary:
    """The lifecycle, step by step; returns the summary it prints. `rt` must point at a fresh state folder."""
    from tollgate.app.stack import Stack

    cfg = rt.config
    if cfg.generation is None:
        raise ValueError("the demo needs the bundled dataset: this config has no 'generation' section")
    summary = DemoSummary(
        links={
            "Prefect UI": cfg.servers.prefect_ui_url,
            "MLflow UI": cfg.servers.mlflow_url,
            "gateway": cfg.servers.gateway_url,
            "state folder": str(rt.paths.home),
        }
    )
    started = time.perf_counter()
    if not interactive:
        os.environ["TOLLGATE__ROLLOUT__AUTO_APPROVE"] = "true"  # demo mode: approvals are automatic and recorded
    say(f"[1/8] starting the stack in {rt.paths.home} ...")
    # The demo drives each flow itself, so it does not apply the schedules and event triggers (`tollgate up`
    # does): a triggered retrain would race the demo's own.
    Stack(cfg.servers, rt.paths, say=lambda m: say("      " + m), config_path=rt.loaded.path, env=rt.loaded.env).up()

    from flows.backfill import ground_truth_backfill
    from flows.deploy import deploy_model
    from flows.drift import drift_check
    from flows.retrain import retrain
    from flows.training import training_pipeline
    from tasks.gates import GateRejected
    from tasks.ground_truth import labels_from_period
    from tollgate.synthetic import generate

    config, env, url = str(rt.loaded.path.resolve()), rt.loaded.env, cfg.servers.gateway_url
    period = {
        s: generate(cfg.generation, s, production=True).head(PERIOD_ROWS)
        for s in ("none", "covariate_drift", "concept_drift")
    }
    requests = {s: _records(f, cfg.features.all, cfg.dataset.id) for s, f in period.items()}

    say("[2/8] training v1 on the DVC snapshot and deploying it (first release: no champion to shadow) ...")
    v1 = training_pipeline(config=config, env=env, allow_dirty=True)
    summary.add("train v1", f"{v1.stage}; holdout AUC {v1.overall['auc']:.3f}", gate=v1.verdict.baseline)
    deployed = deploy_model(version=v1.version, config=config, env=env)
    summary.versions["v1"] = v1.version
    summary.add("deploy v1", f"Production (approved by {deployed['approved_by']})")

    say(f"[3/8] replaying a normal production period ({PERIOD_ROWS} requests) and checking drift ...")
    calm = drift_check(since=_replay(url, requests["none"]), config=config, env=env)
    summary.add("drift: normal period", "drift detected" if calm["detected"] else "no drift", rows=calm["rows"])

    say("[4/8] a drifted period arrives (prices up, engagement down) ...")
    drifted = drift_check(since=_replay(url, requests["covariate_drift"]), config=config, env=env)
    summary.add(
        "drift: covariate period",
        f"{'ALERT' if drifted['alerted'] else 'no alert'}: {', '.join(drifted['drifted'])}",
        report=drifted["report"],
    )

    say("[5/8] a concept-drift period arrives; 30 days later its labels come in ...")
    _replay(url, requests["concept_drift"])
    labels = rt.paths.work / "concept_labels.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels_from_period(period["concept_drift"], cfg).to_csv(labels, index=False)
    live = ground_truth_backfill(labels=str(labels), config=config, env=env)
    v = live["verdict"]
    summary.add(
        "backfill: concept period",
        f"live AUC {v['auc']:.3f} on {v['labelled']} labels: {v['status']} (holdout was {v1.overall['auc']:.3f})",
        action=live["action"],
    )

    say(
        "[6/8] retraining (guarded) on the snapshot + labelled production rows: gate -> shadow -> canary -> approval ..."
    )
    snapshot = None
    with _Background(url, requests["none"]):
        try:
            re = retrain(reason="tollgate.performance.degraded", config=config, env=env)
            outcome = (
                f"v{re['version']} -> Production (approved by {re['approved_by']})"
                if re["status"] == "deployed"
                else f"skipped: {re['why']}"
            )
            summary.versions["v2"] = re.get("version", "")
            snapshot = re.get("snapshot")
        except GateRejected as exc:
            outcome = f"v{exc.version} rejected by the gate: {[c.scope for c in exc.verdict.failures]}"
    summary.add("retrain v2", outcome)

    say(
        "[7/8] a bad release: v3, trained on the same data, ships with a strict live SLO (severe below AUC 0.70) "
        "and meets concept-drift traffic ..."
    )
    for key, value in BAD_RELEASE_SLO.items():
        os.environ[key] = value
    try:
        v3 = training_pipeline(config=config, env=env, data=snapshot, allow_dirty=True)
        with _Background(url, requests["none"]):
            deploy_model(version=v3.version, config=config, env=env)
    finally:
        for key in BAD_RELEASE_SLO:
            os.environ.pop(key, None)
    summary.versions["v3"] = v3.version
    _replay(url, requests["concept_drift"])
    t0 = time.perf_counter()
    bad = ground_truth_backfill(labels=None, config=config, env=env)
    rollback_s = time.perf_counter() - t0
    b = bad["verdict"]
    summary.add(
        "bad release v3",
        f"live AUC {b['auc']:.3f}: {b['status']} -> {bad['action']}",
        backfill_and_rollback_s=round(rollback_s, 2),
    )

    say("[8/8] the promotion ledger and the summary")
    summary.seconds = round(time.perf_counter() - started, 1)
    _print(summary, rt, say)
    return summary


def _print(summary: DemoSummary, rt: Context, say: Callable[[str], None]) -> None:
    from tollgate import ledger
    from tollgate.registry import Registry

    cfg = rt.config
    reg = Registry(cfg.servers.mlflow_url, cfg.project.registered_model, rt.paths.ledger)
    say("\nversions")
    for info in reg.all_versions():
        gate = info.tags.get("tollgate.gate.passed", "?")
        say(
            f"  v{info.version:<3} {info.stage:<10} gate passed: {gate:<5} {info.tags.get('tollgate.gate.failures', '')}"
        )
    say("\nsteps")
    for step in summary.steps:
        extra = "; ".join(f"{k}={v}" for k, v in step.items() if k not in ("step", "outcome"))
        say(f"  {step['step']:<26} {step['outcome']}" + (f"  [{extra}]" if extra else ""))
    say("\nledger (last 8)")
    for e in ledger.read(rt.paths.ledger, cfg.project.registered_model)[-8:]:
        say(f"  {e.at}  v{e.version:<3} {e.from_stage:>8} -> {e.to_stage:<10} {e.who[:24]:<24} {e.reason[:70]}")
    say(f"\nfinished in {summary.seconds} s")
    for name, link in summary.links.items():
        say(f"  {name:<13} {link}")
    say(
        f"The stack keeps running so you can look around. Stop it with: TOLLGATE_HOME={rt.paths.home} "
        ".venv/bin/tollgate down"
    )


def fresh_home(base: Path) -> Path:
    """A new state folder for one demo run."""
    home = base / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    home.mkdir(parents=True, exist_ok=False)
    return home
