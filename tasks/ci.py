"""CI stage: a clean checkout of a pushed commit, driven through the checkout's own CLI (its code and config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from tasks.common import tollgate_task


class CIFailed(Exception):
    """A CI step failed; the message carries the command's output."""


def _run(cmd: list[str], cwd: Path, home: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOLLGATE_HOME": home}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def clone_at(repo: str, sha: str, work: str) -> str:
    """A fresh clone of `repo` at `sha` under `work` (an earlier clone of the same sha is replaced)."""
    dest = Path(work) / f"ci-{sha[:12]}"
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for cmd in (
        ["git", "clone", "--quiet", "--no-checkout", repo, str(dest)],
        ["git", "-C", str(dest), "checkout", "--quiet", sha],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CIFailed(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return str(dest)


@tollgate_task(idempotent_io=True, retries=3, retry_delay_s=5)
def checkout_commit(repo: str, sha: str, work: str) -> str:
    """A fresh clone of `repo` at `sha` (retried: a pre-push event can arrive before the push lands)."""
    return clone_at(repo, sha, work)


@tollgate_task
def prepare_checkout(checkout: str, home: str) -> None:
    """Restore the snapshot data.dvc records in the checkout (regenerated deterministically, md5-checked)."""
    proc = _run([sys.executable, "-m", "tollgate.app.cli", "data", "generate"], Path(checkout), home)
    if proc.returncode != 0:
        raise CIFailed(f"data generate failed in {checkout}:\n{proc.stdout}{proc.stderr}")
    get_run_logger().info(proc.stdout.strip().splitlines()[-1])


@tollgate_task
def train_checkout(checkout: str, env: str, home: str) -> dict[str, Any]:
    """`tollgate train` in the checkout; raise CIFailed when validation or the gate says no."""
    proc = _run([sys.executable, "-m", "tollgate.app.cli", "--env", env, "train", "--json"], Path(checkout), home)
    get_run_logger().info(proc.stdout[-2000:])
    if proc.returncode != 0:
        raise CIFailed(
            f"training at {checkout} was refused (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"version": result["version"], "stage": result["stage"], "run_id": result["run_id"]}


@tollgate_task
def deploy_checkout(checkout: str, version: str, env: str, home: str) -> dict[str, Any]:
    """`tollgate deploy VERSION` in the checkout (shadow, canary, approval, production)."""
    proc = _run([sys.executable, "-m", "tollgate.app.cli", "--env", env, "deploy", version], Path(checkout), home)
    if proc.returncode != 0:
        raise CIFailed(
            f"deploy of v{version} stopped (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    return {"deployed": version}
