"""Deployments as code against the real server: schedules create runs, events trigger runs, a git push to a
bare repository starts ci_pipeline, and ci_pipeline trains a clean checkout of the pushed commit of ci.repository
(and of no other repository), with the checkout's own code run without the stack's logins."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tasks.ci import LOGIN_VARS, CIFailed
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


async def _read_run(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(run_id)


def _execute(run: Any) -> tuple[Any, str]:
    """Execute a run the server created as the worker would, while the pool stays paused: `prefect flow-run
    execute` runs the deployment's pull step and entrypoint with the run's parameters in a process with the
    worker's environment (the session's logins and state folder). Returns the run as it ended, and the output."""
    proc = subprocess.run(
        [str(BIN / "prefect"), "flow-run", "execute", str(run.id)],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return asyncio.run(_read_run(run.id)), proc.stdout + proc.stderr


def _commit(repo: Path, files: dict[str, str]) -> str:
    """A git repository at `repo` holding `files` in one commit on main; returns its sha."""
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c"], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def _assert_refused_before_cloning(run: Any, output: str, other: Path, sha: str, home: str) -> None:
    assert run.state_type.value == "FAILED", (run.state_type, output[-3000:])
    refusal = f"refused: ci builds only ci.repository ({ROOT}), not {other}"
    assert refusal in (run.state.message or "") + output, output[-3000:]
    assert not (StatePaths(Path(home)).work / f"ci-{sha[:12]}").exists()  # nothing was cloned


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
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        # Remove the deployments first (no schedule, trigger or automation can create a run once they are gone),
        # then every run they created, whatever its state or flow (ci, retrain, drift-check, backfill, deploy):
        # a run left behind would be executed when the pool resumes and hold the bundled model's rollout.
        async with get_client() as client:
            ids = [d.id for d in await client.read_deployments()]
            for deployment_id in ids:
                await client.delete_deployment(deployment_id)
            while ids and (
                runs := await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=ids)), limit=200
                )
            ):
                for run in runs:
                    await client.delete_flow_run(run.id)

    asyncio.run(cleanup())
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "resume", servers.work_pool], env=env, check=True, capture_output=True
    )


async def _schedules(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return list((await client.read_deployment_by_name(name)).schedules)


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
    # the nightly batch scoring is applied with its schedule paused (batch.input must name a table to score first)
    [schedule] = asyncio.run(_schedules(f"batch_inference/{TARGET.name('batch-inference')}"))
    assert schedule.active is False and schedule.schedule.cron == "30 2 * * *"
    assert not asyncio.run(_runs(TARGET.name("batch-inference")))


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
    """The pushed commit's config and data, trained by this worker's training_pipeline (the run the trigger made is
    run here, in-process, with its parameters)."""
    work = copy_project(tmp_path / "work")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], cwd=work, check=True)
    # The stack's config (and the hook's) names the bare repository as the one CI builds.
    monkeypatch.setenv("TOLLGATE__CI__REPOSITORY", str(remote))
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
    expected = {"sha": sha, "branch": "main", "repo": str(remote.resolve()), "ci_config": "configs/pipeline.yaml"}
    run = _wait_for_run(TARGET.name("ci"), {**expected, "config": str(CONFIG)})
    assert run.state_type.value in ("SCHEDULED", "PENDING")
    # What that run does, run here: a clean checkout of the pushed sha is trained through the gates.
    from flows.ci import ci_pipeline

    monkeypatch.setenv("TOLLGATE__PROJECT__REGISTERED_MODEL", "ci-churn")
    result = ci_pipeline(**{**run.parameters, "deploy": False})
    assert result["stage"] == "Staging" and result["sha"] == sha and "deployed" not in result
    tags = MlflowClient(live_stack["mlflow"]).get_run(result["run_id"]).data.tags
    assert tags["tollgate.git_sha"] == sha and tags["tollgate.git_dirty"] == "false"
    assert tags["tollgate.data_dvc_tracked"] == "true"


def test_a_ci_run_for_another_repository_is_refused_before_cloning(
    deployed: dict[str, str], tmp_path: Path, live_stack: dict[str, str]
) -> None:
    """A run created through the Prefect API (what anyone with the Prefect login can do) naming a repository
    other than ci.repository (unset: the project root) fails before anything is cloned."""
    from prefect.deployments import run_deployment

    other = tmp_path / "other"
    sha = _commit(other, {"README": "not the project"})
    created = run_deployment(f"ci_pipeline/{TARGET.name('ci')}", parameters={"sha": sha, "repo": str(other)}, timeout=0)
    assert created.parameters["config"] == str(CONFIG)  # the deployment's own config: ci.repository from it
    _assert_refused_before_cloning(*_execute(created), other, sha, live_stack["home"])


def test_a_push_event_from_another_remote_is_refused_before_cloning(
    deployed: dict[str, str], tmp_path: Path, live_stack: dict[str, str]
) -> None:
    """A tollgate.git.push event naming another remote (emitted by anyone with the Prefect login) starts a ci
    run through the real trigger; that run fails before anything is cloned."""
    from prefect.events import emit_event

    other = tmp_path / "elsewhere"
    sha = _commit(other, {"README": "not the project"})
    emit_event(
        event="tollgate.git.push",
        resource={"prefect.resource.id": "tollgate.repo.elsewhere"},
        payload={"sha": sha, "branch": "main", "remote": str(other)},
    )
    run = _wait_for_run(TARGET.name("ci"), {"sha": sha, "repo": str(other)})
    _assert_refused_before_cloning(*_execute(run), other, sha, live_stack["home"])


FAKE_CLI = """import json, os, sys
from pathlib import Path

Path({out!r}).write_text(json.dumps({{"environ": dict(os.environ), "cwd": os.getcwd()}}))
sys.exit(3)
"""


def test_a_checkouts_own_code_runs_without_the_stacks_logins(
    live_stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configured repository's commit ships its own `tollgate` package, whose CLI (what the data restore runs
    in the checkout) writes down the environment it was given: no login, not the stack's state folder."""
    from flows.ci import ci_pipeline

    seen = tmp_path / "seen.json"
    repo = tmp_path / "pushed"
    # The bundled config: its generation section makes the restore step the checkout's `tollgate data generate`.
    configs = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "configs").rglob("*.yaml")}
    package = {
        "tollgate/__init__.py": "",
        "tollgate/app/__init__.py": "",
        "tollgate/app/cli.py": FAKE_CLI.format(out=str(seen)),
    }
    sha = _commit(repo, {**configs, **package})
    monkeypatch.setenv("TOLLGATE__CI__REPOSITORY", str(repo))
    secrets = {
        "TOLLGATE_ADMIN_TOKEN": "admin-token-value",
        "TOLLGATE_APPROVER_SECRET": "approver-secret-value",
        "PREFECT_SERVER_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],
        "MLFLOW_TRACKING_TOKEN": "mlflow-token-value",
        "MLFLOW_AUTH_ADMIN_PASSWORD": os.environ["MLFLOW_TRACKING_PASSWORD"],
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    held = {name: os.environ[name] for name in (*LOGIN_VARS, *secrets) if name in os.environ}
    assert {"PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"} <= set(held)  # the worker holds the logins
    with pytest.raises(CIFailed, match="data generate"):
        ci_pipeline(sha=sha, repo=str(repo), config=str(CONFIG), deploy=False)
    written = json.loads(seen.read_text())
    environ, home = written["environ"], Path(live_stack["home"]).resolve()
    assert Path(written["cwd"]).name == f"ci-{sha[:12]}"  # it ran: the checkout's own code, in the checkout
    assert not set(held) & set(environ), sorted(set(held) & set(environ))
    secret_values = [v for k, v in held.items() if k != "MLFLOW_TRACKING_USERNAME"]  # a user name is no secret
    assert not [k for k, value in environ.items() if any(secret in value for secret in secret_values)]
    assert not any(name.startswith("MLFLOW_AUTH_") for name in environ)
    assert not Path(environ["TOLLGATE_HOME"]).resolve().is_relative_to(home)
    assert not Path(environ["PREFECT_HOME"]).resolve().is_relative_to(home)
    assert not Path(environ["TOLLGATE_HOME"]).exists()  # the scratch state folder is gone
