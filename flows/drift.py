"""drift_check: the prediction-log window vs the Production release's reference profile; act, then alert."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.fan_out import over_parts
from tasks.actions import act_on_drift, act_on_estimate
from tasks.alerts import deliver_alerts
from tasks.drift import drift_of_parts, load_production_release, merge_drift, plan_drift
from tasks.estimation import estimate_drift_window
from tasks.reporting import evidently_report, record_drift
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="drift_check")
def drift_check(
    window_hours: float | None = None,
    since: float | str | None = None,
    until: float | str | None = None,
    by: str = "prediction-time",
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
) -> dict[str, Any]:
    """Input drift per feature (overall and per segment), prediction drift and data quality for the window
    [since, until) (epoch s or ISO 8601; until defaults to now, since to `window_hours` before it, default the
    release's monitoring.drift_window_hours) on prediction time or, with by="event-time", on the records' own
    event time. `detected` (drift overall or in any segment) is what the headline, the event, the signal and
    --fail-on-drift use. The Production champion's primary metric is estimated over the window too (from the
    log alone, `estimate`): worse than monitoring.live_degraded_at for monitoring.estimated_drop_windows windows in
    a row raises tollgate.performance.degraded marked estimated."""
    ctx = as_context(config, env)
    release = load_production_release(ctx)
    # measure: one partial per log part (here, or on Dask workers: compute.dask_address), merged exactly
    plan = plan_drift(ctx, release, window_hours, since, until, by)
    compute = ctx.config.compute
    partials = over_parts(compute.dask_address, drift_of_parts, len(plan.parts), compute.parts_per_task, plan=plan)
    check, sample = merge_drift(plan, partials)
    evidently = evidently_report(ctx, release, sample)
    window = plan.scope.window  # the live metric estimated over the same window, before labels (issue 36)
    estimated = estimate_drift_window(ctx, release, window.start, window.end, window.by)
    # record
    run_id = record_drift(release, check, evidently, estimated)
    # act (signals file, tollgate.drift.detected; the estimated drop), then notify
    acted = act_on_drift(ctx, release, check, run_id)
    dropped = act_on_estimate(ctx, release, estimated, run_id)  # an alert and the retrain trigger, never a rollback
    alerts = deliver_alerts(ctx, acted.alerts + dropped.alerts, acted.failed + dropped.failed)
    return {
        **check.summary(),
        "estimate": estimated["verdict"],
        "alerted": bool(acted.alerts or dropped.alerts),
        "alerts": alerts,
        "report": evidently.html,
        "monitoring_run_id": run_id,
        "evidently": evidently.statistics,
    }
