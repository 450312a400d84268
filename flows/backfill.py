"""ground_truth_backfill: ingest delayed labels, join them to logged predictions, live metrics; act, then alert."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.fan_out import over_parts
from tasks.actions import act_on_concept_shift, act_on_performance, confirm_action
from tasks.alerts import deliver_alerts
from tasks.drift import load_production_release
from tasks.estimation import reconcile_estimates
from tasks.ground_truth import ingest_labels, join_parts, judge_live_performance, merge_live_metrics, plan_live_metrics
from tasks.reporting import record_live_metrics
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="ground_truth_backfill")
def ground_truth_backfill(
    labels: str | None = None,
    as_of: float | None = None,
    by: str = "prediction-time",
    every: str | None = None,
    chunks: int | None = None,
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
) -> dict[str, Any]:
    """Live metrics of the release's task per model version, role, segment and window over matured labels (one
    window over everything, plus fixed windows `every` ("1h", "1d", "7d") or `chunks` equal-count chunks, on
    prediction time or event time); alert, or roll back a severe degradation at once and tell people after."""
    ctx = as_context(config, env)
    release = load_production_release(ctx)
    # ingest (a scheduled run without a file only recomputes)
    ingested = ingest_labels(ctx, release, labels) if labels else {"changed": 0, "total": 0}
    # measure: the labelled rows of each log part (here, or on Dask workers: compute.dask_address), merged in order
    plan = plan_live_metrics(ctx, as_of, by, every, chunks)
    compute = ctx.config.compute
    joined = over_parts(compute.dask_address, join_parts, len(plan.parts), compute.parts_per_task, plan=plan)
    live = merge_live_metrics(plan, release, joined)
    verdict = judge_live_performance(live.rows, release)
    reconciled = reconcile_estimates(ctx, release, live.rows, by, joined)  # estimated vs realized: concept shift?
    # record
    run_id = record_live_metrics(release, live, verdict)
    # act (signals file, tollgate.performance.degraded, rollback when severe), then notify
    acted = act_on_performance(ctx, release, verdict, run_id, str(flow_run.id))
    shifted = act_on_concept_shift(ctx, release, reconciled, run_id)  # its own alert; triggers nothing
    alerts = deliver_alerts(ctx, acted.alerts + shifted.alerts, acted.failed + shifted.failed)
    action = confirm_action(acted)  # a failed rollback fails the run, after people were told
    return {
        "ingested": ingested,
        "verdict": verdict.to_dict(),
        "action": action,
        "alerts": alerts,
        "monitoring_run_id": run_id,
        "reconciliation": reconciled,
        **live.to_dict(),
    }
