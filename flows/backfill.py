"""ground_truth_backfill: ingest delayed labels, join them to logged predictions, live metrics, act on them."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.ground_truth import act_on_performance, compute_live_metrics, ingest_labels, judge, record_live_metrics
from tasks.monitoring import load_production_release
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="ground_truth_backfill")
def ground_truth_backfill(
    labels: str | None = None,
    as_of: float | None = None,
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
) -> dict[str, Any]:
    """Live accuracy per model version, role, segment and day over matured labels; alert or roll back."""
    ctx = as_context(config, env)
    release = load_production_release(ctx.config, str(ctx.paths.ledger))
    # ingest (a scheduled run without a file only recomputes)
    model = ctx.config.project.registered_model
    store = str(ctx.paths.model_labels(model))
    ingested = ingest_labels(labels, store, ctx.config) if labels else {"changed": 0, "total": 0}
    # measure
    rows = compute_live_metrics(str(ctx.paths.model_log(model)), store, release, as_of)
    verdict = judge(rows, release)
    # record + act
    run_id = record_live_metrics(release, rows, verdict)
    action = act_on_performance(release, verdict, run_id, ctx.config, str(ctx.paths.home), str(flow_run.id))
    return {
        "ingested": ingested,
        "verdict": verdict.to_dict(),
        "action": action,
        "monitoring_run_id": run_id,
        "rows": rows,
    }
