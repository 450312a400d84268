"""A throw-away stack for benchmarks: its own state folder and free ports, a Production model and a Staging
challenger in shadow. Nothing touches the developer's .tollgate/ or running services."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SAMPLE_FEATURES = {
    "region": "north",
    "plan": "basic",
    "tier": "gold",
    "payment_method": "card",
    "tenure_months": 12,
    "monthly_charges": 40.5,
    "total_charges": 500.0,
    "support_calls_90d": 2,
    "last_login_days": 3.2,
    "usage_gb": 10.0,
    "autopay": True,
    "has_discount": False,
}


@dataclass
class BenchStack:
    home: Path
    gateway_url: str
    mlflow_url: str
    model: str
    champion: str
    challenger: str


def _isolate() -> Path:
    """Temp state folder and free ports, set before Prefect is imported."""
    home = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    os.environ["TOLLGATE_HOME"] = str(home)
    for key in ("PREFECT_PORT", "MLFLOW_PORT", "WORKER_HEALTH_PORT", "GATEWAY_PORT"):
        os.environ[f"TOLLGATE__SERVERS__{key}"] = str(free_port())
    os.environ["TOLLGATE_ADMIN_TOKEN"] = "bench-token"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return home


@contextmanager
def bench_stack() -> Iterator[BenchStack]:
    """Start the stack, train + deploy v1 (auto-approved), put v2 in Staging with shadow on."""
    home = _isolate()
    from tollgate.app.stack import Stack
    from tollgate.context import make_context

    rt = make_context(ROOT / "configs" / "pipeline.yaml", "dev")
    rt.activate()
    stack = Stack(
        rt.config.servers, rt.paths, say=lambda m: print("  " + m, flush=True), config_path=rt.loaded.path, env="dev"
    )
    print("starting a throw-away stack ...", flush=True)
    stack.up()
    try:
        from flows.deploy import deploy_model
        from flows.training import training_pipeline
        from tasks.deployment import set_rollout
        from tollgate.registry import Registry

        cfg = rt.config
        config = str(rt.loaded.path)
        print("training and deploying v1, training v2 (shadow challenger) ...", flush=True)
        os.environ["TOLLGATE__ROLLOUT__AUTO_APPROVE"] = "true"
        v1 = training_pipeline(config=config, env="dev", allow_dirty=True)
        deploy_model(version=v1.version, config=config, env="dev")
        os.environ["TOLLGATE__MODEL__HYPERPARAMETERS__MAX_ITER"] = "160"
        v2_version = _train_challenger(training_pipeline, config)
        del os.environ["TOLLGATE__MODEL__HYPERPARAMETERS__MAX_ITER"]
        reg = Registry(cfg.servers.mlflow_url, cfg.project.registered_model, rt.paths.ledger)
        if reg.get(v2_version).stage != "Staging":
            reg.transition(v2_version, "Staging", "bench setup: shadow challenger", None)
        set_rollout.fn(cfg, rt.paths, v2_version, "shadow", 0.0, None)
        yield BenchStack(
            home, cfg.servers.gateway_url, cfg.servers.mlflow_url, cfg.project.registered_model, v1.version, v2_version
        )
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def _train_challenger(training_pipeline: Any, config: str) -> str:
    from tasks.gates import GateRejected

    try:
        return str(training_pipeline(config=config, env="dev", allow_dirty=True).version)
    except GateRejected as exc:
        return str(exc.version)


def ensure_wrk() -> str:
    """Path to wrk, installing Debian's package when missing (the bench machine is root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get install wrk) ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")
