"""Alerts: a monitoring signal or automatic action becomes a Prefect event (visible in the UI, and what
deployment triggers listen to) and, after the action is done, a Slack-compatible webhook post.

Act first, notify after: delivery runs once the action has happened, with a timeout and retries, and a
delivery that still fails is recorded (a `tollgate.alert.failed` event, the failure count in the signals file,
a line in the flow's summary), never raised.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tasks.common import run_logger, tollgate_task
from tollgate.config import AlertsConfig
from tollgate.context import Context
from tollgate.paths import StatePaths
from tollgate.signals import record_alert_failure

ALERT_FAILED = "tollgate.alert.failed"


@dataclass(frozen=True)
class Alert:
    """One signal or action about a registered model: its Prefect event name, a line for people, details."""

    event: str
    model: str
    text: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try one webhook post."""

    timeout_s: float
    attempts: int
    retry_delay_s: float


def delivery_policy(alerts: AlertsConfig) -> DeliveryPolicy:
    """The webhook delivery policy from `alerts.timeout_s`, `alerts.retries` and `alerts.retry_delay_s`."""
    return DeliveryPolicy(alerts.timeout_s, 1 + alerts.retries, alerts.retry_delay_s)


def emit(alert: Alert) -> str | None:
    """Emit the alert's Prefect event for resource tollgate.model.<model>; the reason when it cannot."""
    from prefect.events import emit_event

    if not os.environ.get("PREFECT_API_URL"):
        return "PREFECT_API_URL is not set: the event would go nowhere"
    try:
        emit_event(
            event=alert.event,
            resource={"prefect.resource.id": f"tollgate.model.{alert.model}", "prefect.resource.name": alert.model},
            payload=alert.payload,
        )
    except Exception as exc:  # the events client is fire-and-forget; anything it raises is a failed emit
        return f"emit_event failed: {exc!r}"
    return None


def webhook_body(alert: Alert) -> dict[str, Any]:
    """Slack's incoming-webhook shape, with the structured fields under "tollgate"."""
    fields = {"event": alert.event, "model": alert.model, **alert.payload}
    return {
        "text": alert.text,
        "attachments": [{"fields": [{"title": k, "value": str(v), "short": True} for k, v in fields.items()]}],
        "tollgate": fields,
    }


def post_webhook(url: str, alert: Alert, policy: DeliveryPolicy) -> str | None:
    """POST the alert, retrying on errors, 5xx and timeouts; None when delivered, else the last error."""
    body = json.dumps(webhook_body(alert), default=str)
    error = "not attempted"
    for attempt in range(1, policy.attempts + 1):
        try:
            resp = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=policy.timeout_s)
            if resp.status_code < 300:
                return None
            error = f"webhook answered {resp.status_code}"
            if resp.status_code < 500 and resp.status_code != 429:
                break  # a refusal, not a hiccup: asking again gets the same answer
        except Exception as exc:  # any failure of the channel (network, timeout, a malformed URL) is a failed try
            error = f"{type(exc).__name__}: {exc}"
        if attempt < policy.attempts:
            time.sleep(policy.retry_delay_s)
    return f"{error} (after {attempt} attempt(s))"


def record_failure(paths: StatePaths, alert: Alert, channel: str, error: str) -> dict[str, str]:
    """Count a failed delivery (signals file) and emit tollgate.alert.failed; returns the summary line."""
    record_alert_failure(paths, alert.model, alert.event, f"{channel}: {error}")
    run_logger().warning("alert %s for %s not delivered by %s: %s", alert.event, alert.model, channel, error)
    payload = {"alert": alert.event, "channel": channel, "error": error}
    emit(Alert(ALERT_FAILED, alert.model, f"{alert.event} not delivered by {channel}", payload))
    return {"event": alert.event, "channel": channel, "error": error}


def emit_all(paths: StatePaths, alerts: list[Alert]) -> list[dict[str, str]]:
    """Emit every alert's Prefect event now (part of acting: triggers listen to them); failures recorded."""
    failed = []
    for alert in alerts:
        run_logger().warning("%s: %s", alert.event, alert.text)
        error = emit(alert)
        if error:
            failed.append(record_failure(paths, alert, "prefect-event", error))
    return failed


def deliver(
    paths: StatePaths, alerts: list[Alert], url: str | None, policy: DeliveryPolicy, failed: list[dict[str, str]]
) -> dict[str, Any]:
    """Post each alert to the webhook (when one is configured); {"delivered": n, "failed": [...]} including
    the earlier `failed` (events that could not be emitted). Never raises."""
    delivered, failures = 0, list(failed)
    if not url:
        return {"delivered": 0, "failed": failures, "webhook": False}
    for alert in alerts:
        error = post_webhook(url, alert, policy)
        if error is None:
            delivered += 1
        else:
            failures.append(record_failure(paths, alert, "webhook", error))
    return {"delivered": delivered, "failed": failures, "webhook": True}


@tollgate_task
def deliver_alerts(ctx: Context, alerts: list[Alert], failed: list[dict[str, str]]) -> dict[str, Any]:
    """Notify after acting: webhook delivery with timeout and retries; failures are recorded, not raised."""
    cfg = ctx.config.alerts
    return deliver(ctx.paths, alerts, cfg.webhook_url, delivery_policy(cfg), failed)
