"""Monitoring signals a scrape or `tollgate status` reads: the latest drift and live-metric verdicts of a model
and the alert deliveries that failed. Flows write them under the state folder; the gateway's /metrics and
`tollgate status` read them. Small files, written atomically (write + rename)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tollgate.paths import StatePaths


def _signals_file(paths: StatePaths, model: str) -> Path:
    return paths.home / "signals" / f"{model}.json"


def _failures_file(paths: StatePaths, model: str) -> Path:
    return paths.home / "signals" / f"{model}.alert-failures.jsonl"


def read_signals(paths: StatePaths, model: str) -> dict[str, Any]:
    """The latest signals of `model` ({} when none were recorded)."""
    f = _signals_file(paths, model)
    try:
        return dict(json.loads(f.read_text()))
    except (OSError, ValueError):
        return {}


def record_signals(paths: StatePaths, model: str, **values: float | str | None) -> None:
    """Merge `values` into the model's signals (e.g. drift_detected=1, live_status="degraded")."""
    f = _signals_file(paths, model)
    f.parent.mkdir(parents=True, exist_ok=True)
    body = {**read_signals(paths, model), **values, "updated_at": time.time()}
    tmp = f.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, sort_keys=True))
    os.replace(tmp, f)


def record_alert_failure(paths: StatePaths, model: str, event: str, error: str) -> None:
    """Append one failed alert delivery (what, when, why)."""
    f = _failures_file(paths, model)
    f.parent.mkdir(parents=True, exist_ok=True)
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"at": time.time(), "event": event, "error": error[:500]}) + "\n")


def alert_failures(paths: StatePaths, model: str) -> list[dict[str, Any]]:
    """Every failed alert delivery of `model`, oldest first."""
    f = _failures_file(paths, model)
    if not f.exists():
        return []
    out = []
    for line in f.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
