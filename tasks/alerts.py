"""Alerts: every monitoring event and automatic action becomes a Prefect event (visible in the UI, and what
deployment triggers listen to) and a Slack-compatible webhook post."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE


class AlertError(Exception):
    """The webhook refused the alert or could not be reached."""


def post_webhook(url: str, text: str, fields: dict[str, Any], timeout: float = 10.0) -> None:
    """POST {"text": ..., "attachments": [...]} (Slack's incoming-webhook shape); raise AlertError on failure."""
    body = {
        "text": text,
        "attachments": [{"fields": [{"title": k, "value": str(v), "short": True} for k, v in fields.items()]}],
        "tollgate": fields,
    }
    request = urllib.request.Request(
        url, data=json.dumps(body, default=str).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status >= 300:
                raise AlertError(f"webhook {url} answered {resp.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise AlertError(f"webhook {url} failed: {exc}") from exc


@task(name="raise_alert", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def raise_alert(event: str, model: str, text: str, payload: dict[str, Any], webhook_url: str | None) -> None:
    """Emit the Prefect event `event` for tollgate.model.<model> and post the webhook (if configured)."""
    from prefect.events import emit_event

    if not os.environ.get("PREFECT_API_URL"):
        raise AlertError("PREFECT_API_URL is not set: the event would go nowhere")
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"tollgate.model.{model}", "prefect.resource.name": model},
        payload=payload,
    )
    get_run_logger().warning("%s: %s", event, text)
    if webhook_url:
        post_webhook(webhook_url, text, {"event": event, "model": model, **payload})
