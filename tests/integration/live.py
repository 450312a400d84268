"""Shared pieces for tests against live servers: a real gateway process, background traffic, training."""

from __future__ import annotations

import functools
import json
import os
import signal
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

from flows.training import training_pipeline
from tests.helpers import ROOT, bundled_config
from tollgate.context import Context, make_context
from tollgate.procs import free_port

CONFIG = str(ROOT / "configs" / "pipeline.yaml")
FEATURES = bundled_config().features.all


# Small rollouts and lenient shadow checks: the tests exercise the mechanics, not the bundled policy.
TEST_ROLLOUT = {"shadow_requests": 60, "canary_requests": 30, "min_agreement": 0.5, "max_score_psi": 100.0}


def rollout_env(rollout: dict[str, Any]) -> dict[str, str]:
    """`rollout` settings as TOLLGATE__ROLLOUT__* variables: the deploying environment's policy for a `tollgate
    deploy` process (a rollout follows the environment that deploys, never the release)."""
    return {f"TOLLGATE__ROLLOUT__{key.upper()}": json.dumps(value) for key, value in rollout.items()}


def base_context() -> Context:
    """The bundled config on the session's state folder and servers (tests/conftest.py set both)."""
    return make_context(CONFIG, "dev")


def model_context(name: str, **update: Any) -> Context:
    """A Context variant for a registered model of the test's own (plus any other config sections)."""
    return base_context().with_config(project={"registered_model": name}, **update)


@functools.cache
def _snapshot() -> pd.DataFrame:
    """The bundled snapshot, read once per process (Traffic asks for a batch every few ms)."""
    return pd.read_parquet(ROOT / "data" / "snapshot.parquet")


def records(n: int, offset: int = 0, source: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Request records (id + features, nulls as None) from rows of the snapshot or of `source`."""
    table = _snapshot() if source is None else source
    frame = table.iloc[offset : offset + n]
    out = []
    for row in frame.to_dict("records"):
        rec = {f: (None if isinstance(row[f], float) and pd.isna(row[f]) else row[f]) for f in FEATURES}
        rec = {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
        out.append({"customer_id": row["customer_id"], **rec})
    return out


@contextmanager
def running_gateway(
    live_stack: dict[str, str],
    name: str,
    supervise: bool = False,
    log_rotate_rows: int | None = None,
    replicas: int = 1,
) -> Iterator[dict[str, Any]]:
    """A real gateway process serving the registered model `name` on a free port. Yields its url, process,
    registry and `ctx`: the Context variant the test's flows run with (this model, this gateway, small rollouts).
    The gateway process gets the same settings through its environment (it is a child process);
    `log_rotate_rows` seals its prediction log into a Parquet part every that many rows; `replicas` > 1 runs that
    many serving processes under the supervisor."""
    port = free_port()
    serving: dict[str, Any] = {"rollout_max_wait_s": 120.0}
    env = {
        **os.environ,
        "TOLLGATE__PROJECT__REGISTERED_MODEL": name,
        "TOLLGATE__SERVERS__GATEWAY_PORT": str(port),
    }
    if log_rotate_rows is not None:
        serving["log_rotate_rows"] = log_rotate_rows
        env["TOLLGATE__SERVING__LOG_ROTATE_ROWS"] = str(log_rotate_rows)
    if replicas > 1:
        serving["replicas"] = replicas
        env["TOLLGATE__SERVING__REPLICAS"] = str(replicas)
    ctx = model_context(name, servers={"gateway_port": port}, rollout=TEST_ROLLOUT, serving=serving)
    ctx.paths.logs.mkdir(parents=True, exist_ok=True)
    stderr = (ctx.paths.logs / f"gateway-{name}.log").open("ab")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollgate.app.cli", "serve", *(["--supervise"] if supervise else [])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
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
        raise AssertionError(f"gateway did not start: {Path(stderr.name).read_text()[-4000:]}")
    try:
        yield {"url": url, "proc": proc, "name": name, "registry": ctx.registry, "ctx": ctx, "log": Path(stderr.name)}
    finally:  # also when the test failed: a failing test must not leave its gateway running
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stderr.close()


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


def train(ctx: Context, **update: Any):  # type: ignore[no-untyped-def]
    """training_pipeline on the bundled snapshot with a variant of `ctx` (e.g. model={"hyperparameters": ...})."""
    return training_pipeline(config=ctx.with_config(**update) if update else ctx, allow_dirty=True)


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Poll `check()` every 0.2 s until truthy; returns the monotonic time it became so, else fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f} s")
