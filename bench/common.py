"""A throw-away stack for benchmarks: its own state folder and free ports, a Production model and a Staging
challenger in shadow. Nothing touches the developer's .tollgate/ or running services."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollgate.config import TollgateConfig, load_config
from tollgate.context import Context, make_context
from tollgate.procs import free_port, healthy
from tollgate.secrets import ensure_stack_credentials

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out"
CONFIG = ROOT / "configs" / "pipeline.yaml"
PORTS = ("prefect_port", "mlflow_port", "worker_health_port", "gateway_port")
CHALLENGER_MAX_ITER = 160  # v2 differs from v1 only here, so shadow scoring compares two real models

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


def project_config() -> TollgateConfig:
    """The bundled config (dev) as the files say, whatever TOLLGATE__* variables are set."""
    return load_config(CONFIG, "dev", environ={}).config


@dataclass
class BenchStack:
    """The throw-away stack: its Context (state folder, ports), the Production and the shadow Staging version."""

    ctx: Context
    champion: str
    challenger: str

    @property
    def gateway_url(self) -> str:
        return self.ctx.config.servers.gateway_url

    @property
    def mlflow_url(self) -> str:
        return self.ctx.config.servers.mlflow_url

    @property
    def model(self) -> str:
        return self.ctx.config.project.registered_model

    def child_env(self) -> dict[str, str]:
        """The environment for a `tollgate` process that must talk to this stack (state folder and ports)."""
        from tollgate.app.services import servers_env

        return {**os.environ, **servers_env(self.ctx.config.servers)}


def bench_context() -> Context:
    """The bundled config on a temp state folder and free ports, its clients activated (before Prefect is
    imported: Prefect reads its client settings from the environment at import)."""
    home = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    ctx = make_context(CONFIG, "dev", home=home).with_config(servers={port: free_port() for port in PORTS})
    ensure_stack_credentials(ctx.config.servers, ctx.paths)  # the stack's logins, for this process's clients too
    ctx.activate()
    import prefect  # noqa: F401  (configures its loggers, which are then quieted)

    logging.getLogger("prefect").setLevel(logging.WARNING)
    return ctx


@contextmanager
def bench_stack(ctx: Context) -> Iterator[BenchStack]:
    """Start the stack of `ctx` (from bench_context), train + deploy v1 (auto-approved), put v2 in Staging with
    shadow on; stop the stack afterwards."""
    from tollgate.app.stack import Stack

    stack = Stack(
        ctx.config.servers, ctx.paths, say=lambda m: print("  " + m, flush=True), config_path=ctx.loaded.path, env="dev"
    )
    print("starting a throw-away stack ...", flush=True)
    stack.up()
    try:
        from flows.deploy import deploy_model
        from flows.training import training_pipeline

        print("training and deploying v1, training v2 (shadow challenger) ...", flush=True)
        auto = ctx.with_config(rollout={"auto_approve": True})
        v1 = training_pipeline(config=auto, allow_dirty=True)
        deploy_model(version=v1.version, config=auto)
        v2 = _train_challenger(
            training_pipeline, auto.with_config(model={"hyperparameters": {"max_iter": CHALLENGER_MAX_ITER}})
        )
        _shadow(ctx, v2)
        yield BenchStack(ctx, v1.version, v2)
    finally:
        stack.down()


def _train_challenger(training_pipeline: Any, ctx: Context) -> str:
    from tasks.gates import GateRejected

    try:
        return str(training_pipeline(config=ctx, allow_dirty=True).version)
    except GateRejected as exc:
        return str(exc.version)


def _shadow(ctx: Context, version: str) -> None:
    """Put `version` in Staging in shadow mode and make the gateway score it (a rollout's first phase)."""
    from tollgate.registry import ROLLOUT_MODE_TAG, ROLLOUT_SHARE_TAG

    reg = ctx.registry
    if reg.get(version).stage != "Staging":
        reg.transition(version, "Staging", "bench setup: shadow challenger", None)
    reg.set_tags(version, {ROLLOUT_MODE_TAG: "shadow", ROLLOUT_SHARE_TAG: "0.0"})
    gateway = ctx.gateway()
    state = gateway.reload()
    gateway.close()
    if state.get("challenger") != version or state.get("mode") != "shadow":
        raise RuntimeError(f"the gateway did not pick up v{version} in shadow: it serves {state}")


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
    """Return once GET url answers 2xx; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url, timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def record_results(figures: dict[str, float]) -> None:
    """Merge flat numeric figures into bench/out/results.json (the file every benchmark's keys land in)."""
    path = OUT / "results.json"
    OUT.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update({k: float(v) for k, v in figures.items()})
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "wall = time.perf_counter() - t\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
    "print(json.dumps({'rc': p.returncode, 'wall_s': wall, 'peak_mb': peak, 'out': p.stdout, 'err': p.stderr}))\n"
)


@dataclass(frozen=True)
class Measured:
    """One whole command: exit code, wall seconds, peak RSS (MB, the largest process it ran) and its output."""

    rc: int
    wall_s: float
    peak_mb: float
    out: str
    err: str


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` from a fresh launcher process, so its peak RSS is its own (what `/usr/bin/time -f %M` shows)."""
    launcher = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    got = json.loads(launcher.stdout.strip().splitlines()[-1])
    return Measured(got["rc"], got["wall_s"], got["peak_mb"], got["out"], got["err"])
