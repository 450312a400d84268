"""Shared pieces for tests against live servers: a real gateway process, background traffic, training."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from flows.training import training_pipeline
from tests.helpers import ROOT, bundled_config
from tollgate.registry import Registry

CONFIG = str(ROOT / "configs" / "pipeline.yaml")
FEATURES = bundled_config().features.all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def records(n: int, offset: int = 0, source: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Request records (id + features, nulls as None) from rows of the snapshot or of `source`."""
    table = pd.read_parquet(ROOT / "data" / "snapshot.parquet") if source is None else source
    frame = table.iloc[offset : offset + n]
    out = []
    for row in frame.to_dict("records"):
        rec = {f: (None if isinstance(row[f], float) and pd.isna(row[f]) else row[f]) for f in FEATURES}
        rec = {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
        out.append({"customer_id": row["customer_id"], **rec})
    return out


@contextmanager
def running_gateway(live_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[dict[str, Any]]:
    """A real gateway process serving the registered model `name` on a free port; the environment the test's
    flows read (model name, gateway port, admin token, small rollout sizes) is set through `monkeypatch`."""
    port = free_port()
    env = {
        "TOLLGATE__PROJECT__REGISTERED_MODEL": name,
        "TOLLGATE__SERVERS__GATEWAY_PORT": str(port),
        "TOLLGATE_ADMIN_TOKEN": "test-token",
        "TOLLGATE__ROLLOUT__SHADOW_REQUESTS": "60",
        "TOLLGATE__ROLLOUT__CANARY_REQUESTS": "30",
        "TOLLGATE__ROLLOUT__MIN_AGREEMENT": "0.5",
        "TOLLGATE__ROLLOUT__MAX_SCORE_PSI": "100",
        "TOLLGATE__SERVING__ROLLOUT_MAX_WAIT_S": "120",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollgate.app.cli", "serve"],
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise AssertionError(f"gateway did not start: {proc.stderr.read() if proc.stderr else ''}")
    yield {
        "url": url,
        "proc": proc,
        "name": name,
        "registry": Registry(live_stack["mlflow"], name, Path(live_stack["home"]) / "ledger.jsonl"),
    }
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


class Traffic:
    """Background load: batches of real records until stopped; remembers every answer and every failure."""

    def __init__(self, url: str, batch: int = 10, pause: float = 0.05):
        self.url, self.batch, self.pause = url, batch, pause
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        offset = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                batch = records(self.batch, offset % 11000)
                offset += self.batch
                try:
                    resp = client.post(f"{self.url}/predict", json={"records": batch})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if resp.status_code == 200:
                    self.answers += resp.json()["predictions"]
                else:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                time.sleep(self.pause)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def train(monkeypatch: pytest.MonkeyPatch, **env: str):  # type: ignore[no-untyped-def]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = training_pipeline(config=CONFIG, env="dev", allow_dirty=True)
    for key in env:
        monkeypatch.delenv(key)
    return result
