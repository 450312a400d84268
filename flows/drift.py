"""drift_check: the prediction-log window vs the Production release's reference profile; alert when it drifts."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from tasks.monitoring import alert_on_drift, compute_drift, evidently_report, load_production_release, record_drift
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="drift_check")
def drift_check(
    window_hours: float | None = None,
    since: float | None = None,
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
) -> dict[str, Any]:
    """Input drift per feature (overall and per segment), prediction drift and data quality for the window: the
    last `window_hours` (default: the release's monitoring.drift_window_hours), or from `since` (epoch s)."""
    ctx = as_context(config, env)
    release = load_production_release(ctx.config, str(ctx.paths.ledger))
    hours = window_hours or release.config.monitoring.drift_window_hours
    html = str(ctx.paths.reports / f"drift-v{release.version}-{time.strftime('%Y%m%dT%H%M%S')}.html")
    # measure
    start = since if since is not None else time.time() - hours * 3600
    overall, segments, sample = compute_drift(
        str(ctx.paths.model_log(ctx.config.project.registered_model)), release, start
    )
    evidently = evidently_report(release, sample, html)
    # record + alert
    run_id = record_drift(release, overall, segments, evidently, html, hours)
    alerted = alert_on_drift(release, overall, segments, run_id)
    return {
        "version": release.version,
        "rows": overall.rows,
        "detected": overall.detected,
        "drifted": overall.drifted,
        "drift_share": overall.drift_share,
        "segments": [k for k, v in segments.items() if v.detected],
        "alerted": alerted,
        "report": html,
        "monitoring_run_id": run_id,
        "evidently": evidently,
    }
