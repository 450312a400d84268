"""`tollgate demo`: the lifecycle on the bundled dataset, as far as it is built, with progress and a summary."""

from __future__ import annotations

import time
from collections.abc import Callable

from tollgate.runtime import Runtime
from tollgate.stack import Stack


def run_demo(rt: Runtime, say: Callable[[str], None] = print) -> dict[str, object]:
    """Start the stack if needed, train v1 (-> Staging), then a concept-drift challenger that the segment gate
    rejects; returns the summary it prints."""
    from flows.training import training_pipeline
    from tasks.gates import GateRejected
    from tollgate import ledger
    from tollgate.synthetic import generate, write_parquet

    cfg = rt.config
    if cfg.generation is None:
        raise ValueError("the demo needs the bundled dataset: this config has no 'generation' section")
    started = time.perf_counter()
    say("[1/4] starting the local stack (Prefect server, MLflow server, worker) if it is not running ...")
    Stack(cfg.servers, rt.paths, say=lambda m: say("      " + m)).up()
    config = str(rt.loaded.path.resolve())
    say("[2/4] training v1 on the DVC snapshot (validate -> train -> evaluate -> register -> gate) ...")
    first = training_pipeline(config=config, env=rt.loaded.env, allow_dirty=True)
    say(f"      v{first.version} -> {first.stage}; holdout AUC {first.overall['auc']:.3f}; {first.verdict.baseline}")
    say("[3/4] a concept-drift period arrives: training a challenger on it ...")
    period = rt.root / "data" / "periods" / "concept_drift.parquet"
    period.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(generate(cfg.generation, "concept_drift", production=True), str(period))
    try:
        second = training_pipeline(config=config, env=rt.loaded.env, data=str(period), allow_dirty=True)
        challenger = f"v{second.version} -> {second.stage} (gate passed)"
    except GateRejected as exc:
        challenger = f"v{exc.version} REJECTED: " + "; ".join(f"{c.scope}" for c in exc.verdict.failures)
        say("      " + exc.verdict.summary().replace("\n", "\n      "))
    say("[4/4] the promotion ledger:")
    for e in ledger.read(rt.paths.ledger, cfg.project.registered_model)[-6:]:
        say(f"      {e.at}  v{e.version}  {e.from_stage} -> {e.to_stage}  {e.reason[:80]}")
    summary: dict[str, object] = {
        "first model": f"v{first.version} -> {first.stage}",
        "concept-drift challenger": challenger,
        "seconds": round(time.perf_counter() - started, 1),
        "Prefect UI": cfg.servers.prefect_ui_url,
        "MLflow UI": cfg.servers.mlflow_url,
        "ledger": str(rt.paths.ledger),
    }
    say("\nsummary")
    for key, value in summary.items():
        say(f"  {key:<26} {value}")
    say("\nNot in the demo yet (not built): serving, shadow/canary rollout, drift, backfill, retrain, rollback.")
    say("Stop the stack with: .venv/bin/tollgate down")
    return summary
