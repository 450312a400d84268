"""Helpers the monitoring and alert tests share: production periods replayed through a real gateway, a local
webhook receiver, and the events a Prefect server holds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pandas as pd

from tests.helpers import bundled_config, prefect_auth
from tests.integration.live import records
from tollgate.procs import free_port
from tollgate.synthetic import generate

ROWS = 2000


class Sink:
    """A local webhook receiver: keeps every JSON body posted to it and answers `status` after `delay_s`.
    `probe`, when given, runs as each post arrives (what the world looked like when the webhook was called)."""

    def __init__(self, status: int = 200, delay_s: float = 0.0, probe: Callable[[], Any] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.probes: list[Any] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if probe is not None:
                    sink.probes.append(probe())
                time.sleep(delay_s)
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:  # the client gave up waiting (its timeout is shorter than the delay)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        """The Tollgate event name of every post received, in order."""
        return [b["tollgate"]["event"] for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A webhook URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/hook"


def period(scenario: str, rows: int = ROWS) -> pd.DataFrame:
    """`rows` requests of a generated production period (none, covariate_drift, concept_drift, segment_shift)."""
    gen = bundled_config().generation
    assert gen is not None
    return generate(gen, scenario, production=True).head(rows)


def replay(url: str, frame: pd.DataFrame) -> float:
    """Send the period through the gateway in batches; returns the epoch second it started (a drift window)."""
    start = time.time()
    with httpx.Client(timeout=60) as client:
        for offset in range(0, len(frame), 250):
            resp = client.post(f"{url}/predict", json={"records": records(250, offset, frame)})
            assert resp.status_code == 200, resp.text
    time.sleep(0.3)
    return start


def prefect_events(
    prefect_url: str,
    model: str,
    until: Callable[[list[dict[str, Any]]], bool],
    names: list[str] | None = None,
    timeout_s: float = 30,
) -> list[dict[str, Any]]:
    """The latest 50 Tollgate events (or those named `names`) about `model` on the Prefect server, polled until
    `until(events)` holds or the timeout."""
    event = {"name": names} if names else {"prefix": ["tollgate."]}
    body = {"filter": {"event": event, "any_resource": {"id_prefix": [f"tollgate.model.{model}"]}}, "limit": 50}
    deadline = time.monotonic() + timeout_s
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        resp = httpx.post(f"{prefect_url}/events/filter", json=body, auth=prefect_auth())
        assert resp.status_code == 200, resp.text
        events = list(resp.json()["events"])
        if until(events):
            break
        time.sleep(1)
    return events
