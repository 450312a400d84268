"""Automatic actions on monitoring verdicts, done before anyone is told: the latest verdicts in the signals
file, the Prefect events that trigger retrains, and the rollback of a severely degraded release (the same
tasks.rollout.rollback_via_gateway a failed rollout uses). What to tell people comes back as alerts for
tasks.alerts to deliver afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.alerts import Alert, emit_all
from tasks.common import tollgate_task
from tasks.drift import DriftCheck
from tasks.ground_truth import LiveVerdict
from tasks.rollout import rollback_via_gateway
from tollgate.context import Context
from tollgate.release import Release
from tollgate.signals import record_signals

DRIFT_DETECTED = "tollgate.drift.detected"
PERFORMANCE_DEGRADED = "tollgate.performance.degraded"
ROLLBACK_AUTOMATIC = "tollgate.rollback.automatic"
ROLLBACK_FAILED = "tollgate.rollback.failed"
CONCEPT_SHIFT = "tollgate.estimate.concept_shift"
LIVE_STATUSES = ("ok", "degraded", "severe")  # the verdicts the signals file holds ("insufficient" keeps the last)


class AutomaticActionFailed(Exception):
    """An automatic action (the rollback) failed; raised after the alerts about it were delivered."""


@dataclass(frozen=True)
class Acted:
    """What an automatic step did, the alerts to deliver about it, and the events it could not emit."""

    action: str  # none | drift_detected | alerted | rolled_back | rollback_failed
    alerts: list[Alert] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


def drift_alerts(release: Release, check: DriftCheck, run_id: str) -> list[Alert]:
    """tollgate.drift.detected when the window or any segment drifted (the check's one `detected`)."""
    if not check.detected:
        return []
    overall, flagged, model = check.overall, check.flagged_segments, release.model_name
    text = (
        f"Drift on {model} v{release.version}: {check.headline} ({check.window.by} {check.window.label}); "
        f"features {overall.drifted or 'none'}{', prediction' if overall.prediction_drifted else ''}; "
        f"segments {list(flagged) or 'none'}"
    )
    payload = {
        "version": release.version,
        "drifted": overall.drifted,
        "drift_share": overall.drift_share,
        "segments": flagged,
        "monitoring_run_id": run_id,
        "rows": overall.rows,
        "headline": check.headline,
        "window": {**check.window.to_dict(), "excluded": check.excluded},
    }
    return [Alert(DRIFT_DETECTED, model, text, payload)]


def drift_action(ctx: Context, release: Release, check: DriftCheck, run_id: str) -> Acted:
    """Record the verdict in the signals file and emit tollgate.drift.detected when it drifted."""
    record_signals(
        ctx.paths, release.model_name, drift_detected=int(check.detected), drift_share=check.overall.drift_share
    )
    alerts = drift_alerts(release, check, run_id)
    return Acted("drift_detected" if alerts else "none", alerts, emit_all(ctx.paths, alerts))


def performance_action(
    ctx: Context, release: Release, verdict: LiveVerdict, run_id: str, flow_run_id: str | None
) -> Acted:
    """Degraded -> tollgate.performance.degraded (the retrain trigger); severe -> also roll back at once."""
    model = release.model_name
    if verdict.status in LIVE_STATUSES:
        record_signals(
            ctx.paths, model, live_status=verdict.status, live_metric=verdict.metric, live_value=verdict.value
        )
    if verdict.status not in ("degraded", "severe"):
        return Acted("none")
    payload = {**verdict.to_dict(), "monitoring_run_id": run_id}
    alerts = [Alert(PERFORMANCE_DEGRADED, model, f"{model} v{release.version}: {verdict.reason}", payload)]
    failed = emit_all(ctx.paths, alerts)  # before the rollback: a failing rollback must not hold the trigger back
    if verdict.status != "severe":
        return Acted("alerted", alerts, failed)
    try:
        why = f"automatic: severe degradation of v{release.version}: {verdict.reason}"
        done = rollback_via_gateway(ctx, None, why, flow_run_id)
    except Exception as exc:  # told to people below, then raised by confirm_action
        error = f"automatic rollback of v{release.version} failed: {exc}"
        after = Alert(ROLLBACK_FAILED, model, f"{model}: {error}", {**payload, "error": str(exc)})
        return Acted("rollback_failed", [*alerts, after], failed + emit_all(ctx.paths, [after]), error)
    text = f"{model}: rolled back v{done['from']} -> v{done['to']}"
    after = Alert(ROLLBACK_AUTOMATIC, model, text, {**payload, "from": done["from"], "to": done["to"]})
    return Acted("rolled_back", [*alerts, after], failed + emit_all(ctx.paths, [after]))


def concept_shift_action(ctx: Context, release: Release, reconciled: dict[str, Any], run_id: str) -> Acted:
    """tollgate.estimate.concept_shift when the backfill's labels showed the estimates wrong (its own alert: it
    triggers nothing; the estimates of that version are marked unreliable until another version serves)."""
    shift = reconciled.get("concept_shift")
    if not shift:
        return Acted("none")
    how = "outside the estimate's 95% interval" if shift.get("interval_missed") else "calibration map no longer holds"
    text = (
        f"{release.model_name} v{shift['version']}: concept shift since {shift['since']}: realized "
        f"{shift['metric']} {shift['realized']:.4f}, estimated {shift['estimated']:.4f} ({how}); its estimates are "
        "unreliable from now on, until a retrained version serves"
    )
    alerts = [Alert(CONCEPT_SHIFT, release.model_name, text, {**shift, "monitoring_run_id": run_id})]
    return Acted("concept_shift", alerts, emit_all(ctx.paths, alerts))


def estimated_drop_action(ctx: Context, release: Release, estimated: dict[str, Any], run_id: str) -> Acted:
    """The estimate worse than live_degraded_at for monitoring.estimated_drop_windows drift windows in a row:
    tollgate.performance.degraded marked `estimated` (the same alert and retrain trigger as a realized drop).
    Never a rollback: only realized metrics roll back."""
    verdict = estimated.get("verdict") or {}
    if verdict.get("status") != "degraded":
        return Acted("none")
    model, metric = release.model_name, verdict["metric"]
    flag = f"; {verdict['unreliable']}" if verdict.get("unreliable") else ""
    reason = (
        f"estimated live {metric} {verdict['value']:.4f} (95% [{verdict['low']:.4f}, {verdict['high']:.4f}]) worse "
        f"than {verdict['threshold']} for {verdict['consecutive']} drift windows in a row, from the prediction log "
        f"before labels arrive{flag}"
    )
    payload = {**verdict, "estimated": True, "status": "degraded", "reason": reason, "monitoring_run_id": run_id}
    alerts = [Alert(PERFORMANCE_DEGRADED, model, f"{model} v{release.version} (ESTIMATED): {reason}", payload)]
    return Acted("alerted", alerts, emit_all(ctx.paths, alerts))


@tollgate_task
def act_on_estimate(ctx: Context, release: Release, estimated: dict[str, Any], run_id: str) -> Acted:
    """The estimated-drop signal's event emitted; the alert to deliver afterwards."""
    return estimated_drop_action(ctx, release, estimated, run_id)


@tollgate_task
def act_on_concept_shift(ctx: Context, release: Release, reconciled: dict[str, Any], run_id: str) -> Acted:
    """The concept-shift alert's event emitted; the alert to deliver afterwards."""
    return concept_shift_action(ctx, release, reconciled, run_id)


@tollgate_task
def act_on_drift(ctx: Context, release: Release, check: DriftCheck, run_id: str) -> Acted:
    """The drift verdict recorded and its event emitted; the alerts to deliver afterwards."""
    return drift_action(ctx, release, check, run_id)


@tollgate_task
def act_on_performance(
    ctx: Context, release: Release, verdict: LiveVerdict, run_id: str, flow_run_id: str | None
) -> Acted:
    """The live verdict recorded, its event emitted, a severe one rolled back; the alerts to deliver after."""
    return performance_action(ctx, release, verdict, run_id, flow_run_id)


@tollgate_task
def confirm_action(acted: Acted) -> str:
    """The action's name; raises AutomaticActionFailed (after the alerts went out) when it failed."""
    if acted.error:
        raise AutomaticActionFailed(acted.error)
    return acted.action
