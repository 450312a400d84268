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
from tollgate.config import ConfigError, load_config


class CIFailed(Exception):
    """A CI step failed; the message carries the command's output."""


def _run(cmd: list[str], cwd: Path, home: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOLLGATE_HOME": home}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def checkout_cli(config: str, env: str, *args: str) -> list[str]:
    """The checkout's own `tollgate --config CONFIG --env ENV ...` (run with the checkout as working directory,
    so a relative CONFIG is the checkout's file, not this working tree's)."""
    return [sys.executable, "-m", "tollgate.app.cli", "--config", config, "--env", env, *args]


def restore_command(checkout: str, config: str, env: str) -> list[str]:
    """How the checkout gets its training data: `tollgate data generate` for a config that describes the bundled
    generator, else `dvc pull` of what the checkout's DVC files record (bring-your-own data)."""
    cfg = load_config(Path(checkout) / config, env).config
    if cfg.generation is not None:
        return checkout_cli(config, env, "data", "generate")
    return [str(Path(sys.executable).parent / "dvc"), "pull"]


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
def prepare_checkout(checkout: str, config: str, env: str, home: str) -> None:
    """Restore the snapshot the checkout's DVC files record (the bundled one regenerated deterministically and
    md5-checked; a user's table pulled from the DVC remote)."""
    try:
        cmd = restore_command(checkout, config, env)
    except ConfigError as exc:
        raise CIFailed(f"the config {config} at {checkout} does not load:\n{exc}") from exc
    proc = _run(cmd, Path(checkout), home)
    if proc.returncode != 0:
        raise CIFailed(f"`{' '.join(cmd[1:])}` failed in {checkout}:\n{proc.stdout}{proc.stderr}")
    get_run_logger().info((proc.stdout.strip().splitlines() or ["data restored"])[-1])


@tollgate_task
def train_checkout(checkout: str, config: str, env: str, home: str) -> dict[str, Any]:
    """`tollgate --config CONFIG train` in the checkout; raise CIFailed when validation or the gate says no."""
    proc = _run(checkout_cli(config, env, "train", "--json"), Path(checkout), home)
    get_run_logger().info(proc.stdout[-2000:])
    if proc.returncode != 0:
        raise CIFailed(
            f"training at {checkout} was refused (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"version": result["version"], "stage": result["stage"], "run_id": result["run_id"]}


@tollgate_task
def deploy_checkout(checkout: str, version: str, config: str, env: str, home: str) -> dict[str, Any]:
    """`tollgate --config CONFIG deploy VERSION` in the checkout (shadow, canary, approval, production)."""
    proc = _run(checkout_cli(config, env, "deploy", version), Path(checkout), home)
    if proc.returncode != 0:
        raise CIFailed(
            f"deploy of v{version} stopped (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    return {"deployed": version}
