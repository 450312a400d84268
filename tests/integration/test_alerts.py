"""Act first, notify after (issue 19), against real servers and a real gateway.

With the webhook unreachable (a closed port) or slow and failing, the drift verdict and its `detected` flag are
those of a run without a webhook, the severe-degradation rollback happens (and has happened before the webhook
is first called), and every failed delivery is visible: in the flow's summary, in
tollgate.signals.alert_failures and as a `tollgate.alert.failed` event on the Prefect server.

The issue's slow webhook answers 500 after 30 s. Here the sink answers 500 after the delivery timeout plus 2 s
instead, so every attempt times out (the same outcome for the flow), and the delivery policy is a short one
(`alerts.timeout_s` 1 s, `alerts.retry_delay_s` 0.2 s, the default retries): with the defaults (5 s, 2 s) the
slow webhook alone cost ~60 s of waiting across the two tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.backfill import ground_truth_backfill
from flows.deploy import deploy_model
from flows.drift import drift_check
from tasks.actions import (
    CONCEPT_SHIFT,
    DRIFT_DETECTED,
    PERFORMANCE_DEGRADED,
    ROLLBACK_AUTOMATIC,
    ROLLBACK_FAILED,
    AutomaticActionFailed,
    confirm_action,
    performance_action,
)
from tasks.alerts import ALERT_FAILED, Alert, DeliveryPolicy, delivery_policy, post_webhook
from tasks.ground_truth import LiveVerdict, labels_from_period
from tasks.rollout import rollback_via_gateway
from tests.helpers import bundled_config
from tests.integration.live import Traffic, model_context, running_gateway, train
from tests.integration.monitoring_support import Sink, closed_port_url, period, prefect_events, replay
from tollgate.context import Context
from tollgate.procs import free_port
from tollgate.registry import ledger_entries
from tollgate.release import Release
from tollgate.signals import alert_failures, read_signals, record_signals

MODEL = "alerts-churn"
ROWS = 1000
VERDICT_KEYS = ("version", "rows", "detected", "overall_detected", "drifted", "prediction_drifted", "drift_share")


@pytest.fixture(scope="module")
def stage(live_stack: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A gateway serving MODEL, v1 in Production, and the context the flows run with (no webhook configured)."""
    with running_gateway(live_stack, MODEL) as gw:
        ctx = gw["ctx"].with_config(rollout={"auto_approve": True}, alerts={"timeout_s": 1.0, "retry_delay_s": 0.2})
        assert ctx.config.alerts.webhook_url is None
        v1 = train(ctx)
        deploy_model(version=v1.version, config=ctx)
        yield {"gw": gw, "ctx": ctx, "v1": v1.version}


def _webhook(ctx: Context, url: str | None) -> Context:
    return ctx.with_config(alerts={"webhook_url": url})


def _failed_events(events: list[dict[str, Any]], about: str) -> int:
    return sum(e["event"] == ALERT_FAILED and e["payload"].get("alert") == about for e in events)


def _slow_sink(ctx: Context, probe: Any) -> Sink:
    """A webhook that answers 500 only after the delivery timeout has passed."""
    return Sink(status=500, delay_s=delivery_policy(ctx.config.alerts).timeout_s + 2, probe=probe)


def test_delivery_retries_errors_and_timeouts_but_not_refusals() -> None:
    policy = DeliveryPolicy(timeout_s=0.5, attempts=3, retry_delay_s=0.0)
    alert = Alert("tollgate.test", MODEL, "hello", {"k": 1})
    sinks = {"ok": Sink(), "refused": Sink(status=404), "failing": Sink(status=500), "slow": Sink(delay_s=1.5)}
    try:
        errors = {name: post_webhook(sink.url, alert, policy) for name, sink in sinks.items()}
        errors["closed"] = post_webhook(closed_port_url(), alert, policy)
        errors["malformed"] = post_webhook("not a url", alert, policy)
        posts = {name: len(sink.bodies) for name, sink in sinks.items()}
    finally:
        for sink in sinks.values():
            sink.close()
    assert errors["ok"] is None and sinks["ok"].bodies[0]["tollgate"] == {
        "event": "tollgate.test",
        "model": MODEL,
        "k": 1,
    }
    assert posts == {"ok": 1, "refused": 1, "failing": 3, "slow": 3}  # a 404 is an answer; a 500 or silence is not
    assert errors["refused"] == "webhook answered 404 (after 1 attempt(s))"
    assert errors["failing"] == "webhook answered 500 (after 3 attempt(s))"
    assert "Timeout" in str(errors["slow"]) and "ConnectError" in str(errors["closed"])
    assert str(errors["malformed"]).endswith("(after 3 attempt(s))")  # a bad setting is a failed delivery too


def test_a_failed_rollback_is_told_then_raised(live_stack: dict[str, str]) -> None:
    """Nothing to roll back to (and no gateway): the degraded event still goes out, the failure becomes an
    alert to deliver, and only confirm_action (after delivery) fails the run."""
    lonely = "alerts-lonely"
    ctx = model_context(lonely, servers={"gateway_port": free_port()})
    release = Release(lonely, "1", "run", "Production", {}, ctx.config, ctx.config.servers.mlflow_url)
    verdict = LiveVerdict("1", 500, 0.5, "severe", "live AUC 0.5 < live_severe_at 0.55", metric="auc")
    acted = performance_action(ctx, release, verdict, "monitoring-run", None)
    assert acted.action == "rollback_failed" and "no earlier Production version" in str(acted.error)
    assert [a.event for a in acted.alerts] == [PERFORMANCE_DEGRADED, ROLLBACK_FAILED] and acted.failed == []
    signals = read_signals(ctx.paths, lonely)
    assert (signals["live_status"], signals["live_metric"], signals["live_value"]) == ("severe", "auc", 0.5)
    with pytest.raises(AutomaticActionFailed, match="no earlier Production version"):
        confirm_action.fn(acted)


def test_drift_verdict_and_event_do_not_depend_on_the_webhook(
    stage: dict[str, Any], live_stack: dict[str, str]
) -> None:
    """Slow (~40-70 s): three real drift checks (no webhook, a closed port, a webhook that answers late), each
    an Evidently report over a replayed period."""
    ctx = stage["ctx"]
    since = replay(stage["gw"]["url"], period("covariate_drift", ROWS))
    quiet = drift_check(since=since, config=ctx)
    assert quiet["detected"] and quiet["alerts"] == {"delivered": 0, "failed": [], "webhook": False}
    failures = len(alert_failures(ctx.paths, MODEL))

    closed = drift_check(since=since, config=_webhook(ctx, closed_port_url()))
    record_signals(ctx.paths, MODEL, drift_detected=0)  # so the probe sees the slow run's own verdict
    sink = _slow_sink(ctx, probe=lambda: read_signals(ctx.paths, MODEL).get("drift_detected"))
    try:
        slow = drift_check(since=since, config=_webhook(ctx, sink.url))
    finally:
        sink.close()

    for result in (closed, slow):
        assert {k: result[k] for k in VERDICT_KEYS} == {k: quiet[k] for k in VERDICT_KEYS}
        assert result["segments"] == quiet["segments"] and result["alerted"]
        assert result["alerts"]["delivered"] == 0 and result["alerts"]["webhook"]
        assert [(f["event"], f["channel"]) for f in result["alerts"]["failed"]] == [(DRIFT_DETECTED, "webhook")]
    assert "ConnectError" in closed["alerts"]["failed"][0]["error"]
    assert "Timeout" in slow["alerts"]["failed"][0]["error"]
    attempts = delivery_policy(ctx.config.alerts).attempts
    assert sink.probes == [1] * attempts  # retried, and the verdict was recorded before the first post
    assert len(alert_failures(ctx.paths, MODEL)) == failures + 2
    assert read_signals(ctx.paths, MODEL)["drift_detected"] == 1

    def seen(ev: list[dict[str, Any]]) -> bool:  # the signal itself every time, its failed delivery twice
        return _failed_events(ev, DRIFT_DETECTED) >= 2 and sum(e["event"] == DRIFT_DETECTED for e in ev) >= 3

    assert seen(prefect_events(live_stack["prefect"], MODEL, seen, [ALERT_FAILED, DRIFT_DETECTED]))


def test_severe_degradation_rolls_back_before_any_webhook_is_called(
    stage: dict[str, Any], live_stack: dict[str, str], tmp_path: Path
) -> None:
    """Slow (~60-90 s): a second version rolled out through shadow and canary on live traffic, a replayed
    degraded period and a backfill that rolls back; the rollback before the webhook can only be seen on that
    whole sequence."""
    ctx, gw, v1 = stage["ctx"], stage["gw"], stage["v1"]
    reg = gw["registry"]
    # v2: the same model, but its release treats a live AUC under 0.8 as severe
    v2 = train(ctx, monitoring={"live_degraded_at": 0.85, "live_severe_at": 0.8}).version
    with Traffic(gw["url"]):
        deploy_model(version=v2, config=ctx)
    frame = period("concept_drift", ROWS)
    replay(gw["url"], frame)  # answered by v2
    labels = tmp_path / "labels.csv"
    labels_from_period(frame, bundled_config()).to_csv(labels, index=False)
    failures = len(alert_failures(ctx.paths, MODEL))
    sink = _slow_sink(ctx, probe=lambda: reg.one("Production").version)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for name, url in {"none": None, "closed": closed_port_url(), "slow": sink.url}.items():
            if name != "none":  # v2 back in Production for the next run
                rollback_via_gateway(ctx, v2, f"test: v{v2} again for the {name} webhook", None)
            assert reg.one("Production").version == v2
            runs[name] = ground_truth_backfill(
                labels=str(labels) if name == "none" else None, config=_webhook(ctx, url)
            )
            assert runs[name]["action"] == "rolled_back" and reg.one("Production").version == v1
            last = [e for e in ledger_entries(reg) if e.to_stage == "Production"][-1]
            assert last.version == v1 and last.reason.startswith(f"rollback: automatic: severe degradation of v{v2}")
    finally:
        sink.close()

    assert runs["none"]["verdict"]["status"] == "severe" and runs["none"]["verdict"]["labelled"] == ROWS
    assert runs["none"]["alerts"] == {"delivered": 0, "failed": [], "webhook": False}
    # the same labels show v2's estimates wrong too (issue 36): that alert goes out last, after the rollback's
    extra = [CONCEPT_SHIFT] if runs["none"]["reconciliation"]["concept_shift"] else []
    for name in ("closed", "slow"):
        assert runs[name]["verdict"] == runs["none"]["verdict"]
        failed = runs[name]["alerts"]["failed"]
        assert [f["event"] for f in failed] == [PERFORMANCE_DEGRADED, ROLLBACK_AUTOMATIC, *extra]
        assert runs[name]["alerts"]["delivered"] == 0
    attempts = delivery_policy(ctx.config.alerts).attempts
    told = 2 + len(extra)
    assert sink.probes == [v1] * (told * attempts)  # every post came after the rollback
    assert len(alert_failures(ctx.paths, MODEL)) == failures + 2 * told
    assert read_signals(ctx.paths, MODEL)["live_status"] == "severe"

    def seen(ev: list[dict[str, Any]]) -> bool:  # the retrain trigger every time, each failed delivery twice
        failed = min(_failed_events(ev, e) for e in (PERFORMANCE_DEGRADED, ROLLBACK_AUTOMATIC))
        return failed >= 2 and sum(e["event"] == PERFORMANCE_DEGRADED for e in ev) >= 3

    assert seen(prefect_events(live_stack["prefect"], MODEL, seen, [ALERT_FAILED, PERFORMANCE_DEGRADED]))
