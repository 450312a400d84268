"""Two projects (two configs with different registered models) applied on ONE stack: each gets its own
deployments, carrying its own config path and env, and a drift alert about one model starts only that model's
retrain. And a retrain that fails before training leaves the cooldown free."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.actions import DRIFT_DETECTED
from tasks.alerts import Alert, emit_all
from tests.helpers import ROOT
from tests.integration.live import model_context
from tollgate.app.stack import DeploymentTarget, apply_deployments
from tollgate.context import Context, make_context


def _project(dst: Path, source: Path, model: str) -> Path:
    """A project folder with configs/pipeline.yaml from `source`, renamed to `model`, and the env overlays."""
    configs = dst / "configs"
    shutil.copytree(ROOT / "configs" / "environments", configs / "environments")
    raw = yaml.safe_load(source.read_text())
    raw["project"]["registered_model"] = model
    (configs / "pipeline.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return configs / "pipeline.yaml"


async def _runs(deployment_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        return list(
            await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])), limit=200
            )
        )


def _triggered(deployment_name: str) -> list[Any]:
    """Runs an event created (the retrain trigger sets `reason`; scheduled runs keep the default)."""
    return [r for r in asyncio.run(_runs(deployment_name)) if r.parameters.get("reason") == DRIFT_DETECTED]


async def _create_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


async def _cleanup(names: list[str], pool: str) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for name in names:
            for run in await _runs(name.split("/", 1)[1]):
                await client.delete_flow_run(run.id)
        for deployment in await client.read_deployments():
            if deployment.work_pool_name == pool:
                await client.delete_deployment(deployment.id)
        await client.delete_work_pool(pool)


@pytest.fixture(scope="module")
def two_projects(live_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Project A (the bundled config) and project B (the loans config of tests/fixtures/byod), each applied
    with its own config on the session's stack, on a work pool no worker serves: triggered runs are created and
    stay scheduled, so the test reads their deployment and parameters without running a retrain."""
    tag = uuid.uuid4().hex[:6]
    base = tmp_path_factory.mktemp("projects")
    config_a = _project(base / "a", ROOT / "configs" / "pipeline.yaml", f"proj-a-{tag}")
    config_b = _project(base / "b", ROOT / "tests" / "fixtures" / "byod" / "pipeline.yaml", f"proj-b-{tag}")
    ctx_a, ctx_b = make_context(config_a, "dev"), make_context(config_b, "staging")
    pool = f"two-projects-{tag}"
    asyncio.run(_create_pool(pool))
    servers = ctx_a.config.servers.model_copy(update={"work_pool": pool})
    names: list[str] = []
    for ctx in (ctx_a, ctx_b):
        names += apply_deployments(ROOT, servers, ctx.paths, DeploymentTarget.of(ctx), say=lambda _m: None)
    yield {"a": ctx_a, "b": ctx_b, "names": names}
    asyncio.run(_cleanup(names, pool))


def test_both_projects_have_their_own_deployments(two_projects: dict[str, Any]) -> None:
    a, b = (DeploymentTarget.of(two_projects[k]) for k in ("a", "b"))
    names = set(two_projects["names"])
    for target in (a, b):
        assert {f"retrain/{target.name('retrain')}", f"ci_pipeline/{target.name('ci')}"} <= names
        assert f"drift_check/{target.name('drift-check')}" in names
    assert len(names) == 16  # eight per project, none overwritten


def test_a_drift_alert_for_model_a_starts_only_a_retrain_with_a_config(two_projects: dict[str, Any]) -> None:
    ctx_a: Context = two_projects["a"]
    a, b = DeploymentTarget.of(ctx_a), DeploymentTarget.of(two_projects["b"])
    # The same call tasks.actions.drift_action makes when a drift check detects drift.
    failed = emit_all(ctx_a.paths, [Alert(DRIFT_DETECTED, a.model, "drift on A", {"drifted": ["tenure_months"]})])
    assert failed == []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _triggered(a.name("retrain")):
        time.sleep(1)
    (run,) = _triggered(a.name("retrain"))
    assert run.parameters["config"] == str(a.config_path) == ctx_a.config_path
    assert run.parameters["env"] == "dev"
    time.sleep(3)  # B's trigger saw the same event by now; it must not have fired
    assert _triggered(b.name("retrain")) == []
    # B's deployments carry B's config and env (its scheduled runs would run the loans model).
    b_runs = asyncio.run(_runs(b.name("retrain")))
    assert all(r.parameters["config"] == str(b.config_path) and r.parameters["env"] == "staging" for r in b_runs)


def test_a_retrain_that_fails_before_training_leaves_the_cooldown_free(
    live_stack: dict[str, str], tmp_path: Path
) -> None:
    from flows.retrain import retrain
    from tasks.retraining import RELEASED, SnapshotFailed, claim_retrain, retrain_claims

    ctx = model_context(f"release-{uuid.uuid4().hex[:6]}", dataset={"path": "data/no-such-snapshot.parquet"})
    ctx = ctx.with_home(tmp_path)
    with pytest.raises(SnapshotFailed):
        retrain(reason=DRIFT_DETECTED, config=ctx)
    lines = [yaml.safe_load(line) for line in ctx.paths.retrain_history(ctx.config.project.registered_model).open()]
    assert [c["status"] for c in retrain_claims(lines)] == [RELEASED]
    assert claim_retrain(ctx.config, ctx.paths, "manual", time.time()).allowed
