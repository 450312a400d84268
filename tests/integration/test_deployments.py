"""Deployments as code against the real server: schedules create runs, events trigger runs, a git push to a
bare repository starts ci_pipeline, and ci_pipeline trains a clean checkout of the pushed commit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, bundled_config, copy_project
from tollgate.app.stack import DeploymentTarget, apply_deployments
from tollgate.paths import StatePaths

BIN = Path(sys.executable).parent


async def _runs(deployment: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        return list(
            await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])), limit=200
            )
        )


def _wait_for_run(deployment: str, match: dict[str, str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in asyncio.run(_runs(deployment)):
            if all(str(run.parameters.get(k)) == v for k, v in match.items()):
                return run
        time.sleep(1)
    raise AssertionError(f"no {deployment} run with {match} after {timeout:.0f} s")


CONFIG = ROOT / "configs" / "pipeline.yaml"
TARGET = DeploymentTarget(CONFIG, "dev", bundled_config().project.registered_model)


@pytest.fixture(scope="module")
def deployed(live_stack: dict[str, str]) -> Iterator[dict[str, str]]:
    """deployments/prefect.yaml applied for the bundled config; the work pool paused so triggered runs are
    created but not executed."""
    servers = bundled_config(dict(os.environ)).servers
    apply_deployments(ROOT, servers, StatePaths(Path(live_stack["home"])), TARGET, say=lambda _m: None)
    env = {**os.environ}
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "pause", servers.work_pool], env=env, check=True, capture_output=True
    )
    yield {"pool": servers.work_pool}

    async def cleanup() -> None:
        from prefect.client.orchestration import get_client

        # Remove the deployments (and their runs) so no schedule or trigger fires later in the session.
        async with get_client() as client:
            for name in ("ci", "retrain", "drift-check", "ground-truth-backfill"):
                for run in await _runs(TARGET.name(name)):
                    await client.delete_flow_run(run.id)
            for deployment in await client.read_deployments():
                await client.delete_deployment(deployment.id)

    asyncio.run(cleanup())
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "resume", servers.work_pool], env=env, check=True, capture_output=True
    )


def _wait_for_scheduled(deployment: str, timeout: float = 120) -> list[Any]:
    """The server's scheduler services create a deployment's runs on their own loop (seconds to a minute after
    the deployment is applied, longer on a loaded machine), so wait for them rather than read once."""
    deadline = time.monotonic() + timeout
    while True:
        runs = asyncio.run(_runs(deployment))
        if any(r.state_type.value == "SCHEDULED" for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def test_schedules_create_runs(deployed: dict[str, str]) -> None:
    for name in ("drift-check", "ground-truth-backfill", "retrain"):
        runs = _wait_for_scheduled(TARGET.name(name))
        assert any(r.state_type.value == "SCHEDULED" for r in runs), f"no scheduled run for {name}"
        assert all(r.parameters.get("config") == str(CONFIG) for r in runs), f"{name} runs another config"


def test_drift_event_triggers_a_retrain_run(deployed: dict[str, str]) -> None:
    from prefect.events import emit_event

    emit_event(
        event="tollgate.drift.detected",
        resource={"prefect.resource.id": TARGET.resource_id},
        payload={"drifted": ["x"]},
    )
    run = _wait_for_run(
        TARGET.name("retrain"), {"reason": "tollgate.drift.detected", "config": str(CONFIG), "env": "dev"}
    )
    assert run.state_type.value in ("SCHEDULED", "PENDING")


def test_git_push_to_main_starts_ci_pipeline_and_it_trains_that_commit(
    deployed: dict[str, str], tmp_path: Path, live_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = copy_project(tmp_path / "work")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], cwd=work, check=True)
    env = {**os.environ, "TOLLGATE_PYTHON": sys.executable}
    installed = subprocess.run(
        [sys.executable, "-m", "tollgate.app.cli", "hooks", "install"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    push = subprocess.run(["git", "push", "-q", "origin", "main"], cwd=work, env=env, capture_output=True, text=True)
    assert push.returncode == 0 and "emitted tollgate.git.push" in push.stdout + push.stderr, push.stderr
    run = _wait_for_run(
        TARGET.name("ci"), {"sha": sha, "branch": "main", "repo": str(remote), "config": "configs/pipeline.yaml"}
    )
    assert run.state_type.value in ("SCHEDULED", "PENDING")
    # What that run does, run here: a clean checkout of the pushed sha is trained through the gates.
    from flows.ci import ci_pipeline

    monkeypatch.setenv("TOLLGATE__PROJECT__REGISTERED_MODEL", "ci-churn")
    result = ci_pipeline(sha=sha, branch="main", repo=str(remote), deploy=False)
    assert result["stage"] == "Staging"
    tags = MlflowClient(live_stack["mlflow"]).get_run(result["run_id"]).data.tags
    assert tags["tollgate.git_sha"] == sha and tags["tollgate.git_dirty"] == "false"
    assert tags["tollgate.data_dvc_tracked"] == "true"
