"""Only files the training pipeline stored, unchanged since, are ever loaded (issue 16): a version registered
outside the pipeline (a pickle that runs code when loaded) and a registered version whose model file was
replaced afterwards are refused by every loader, with production and serving untouched."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.sklearn
import pytest
from mlflow import MlflowClient

from flows.deploy import deploy_model
from tasks.rollout import rollback_via_gateway
from tests.integration.live import records, train
from tollgate import ledger
from tollgate.app.commands.history import consistency
from tollgate.gateway_client import GatewayError
from tollgate.provenance import UntrustedRelease, sha256_file
from tollgate.release import RELEASE_DIR, load_release
from tollgate.secrets import admin_token

AUTO = {"rollout": {"auto_approve": True}}


class RunsCodeWhenLoaded:
    """What an attacker registers: unpickling it creates the marker file (any code could run instead)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _register_outside_the_pipeline(ctx: Any, copy_from_run: str, marker: Path) -> str:
    """Any MLflow client with registry write access: a pickle model plus release/ files copied from v1."""
    mlflow.set_tracking_uri(ctx.config.servers.mlflow_url)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="not-the-pipeline"):
        local = mlflow.artifacts.download_artifacts(run_id=copy_from_run, artifact_path=RELEASE_DIR, dst_path=tmp)
        mlflow.log_artifacts(local, RELEASE_DIR)
        info = mlflow.sklearn.log_model(RunsCodeWhenLoaded(marker), name="model", serialization_format="pickle")
    return str(mlflow.register_model(info.model_uri, ctx.config.project.registered_model).version)


def _admin(gateway: dict[str, Any]) -> dict[str, str]:
    ctx = gateway["ctx"]
    return {"Authorization": f"Bearer {admin_token(ctx.config, ctx.paths)}"}


def _served(gateway: dict[str, Any]) -> str:
    answer = httpx.post(f"{gateway['url']}/predict", json=records(1)[0], timeout=30)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def test_a_version_registered_outside_the_pipeline_never_runs(gateway: dict[str, Any], tmp_path: Path) -> None:
    ctx = gateway["ctx"]
    v1 = train(ctx, **AUTO)
    deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
    marker = tmp_path / "code-ran"
    evil = _register_outside_the_pipeline(ctx, v1.run_id, marker)

    # The rollback deployment's path (through the gateway): refused by the rollback rules, nothing moves.
    refused = httpx.post(f"{gateway['url']}/admin/rollback", json={"to": evil}, headers=_admin(gateway), timeout=60)
    assert refused.status_code == 409 and "never Production" in refused.json()["error"], refused.text
    # Someone with registry write access moves it to Production by hand and asks the gateway to reload.
    client = MlflowClient(ctx.config.servers.mlflow_url)
    client.transition_model_version_stage(ctx.config.project.registered_model, evil, "Production", True)
    reload = httpx.post(f"{gateway['url']}/admin/reload", headers=_admin(gateway), timeout=60)
    assert reload.status_code == 200 and reload.json()["champion"] == v1.version, reload.text  # the ledger's
    assert any(
        f"v{evil} is in Production in the registry, but no verified ledger move" in r for r in reload.json()["refused"]
    )
    assert _served(gateway) == v1.version  # the gateway keeps serving what the ledger proves
    found = consistency(ctx)  # what `tollgate status` and `history --verify` print as DISAGREES
    assert any(f"v{evil}: in the registry (Production)" in p and "outside the pipeline" in p for p in found), found
    assert any(f"v{v1.version}: the registry says Archived, the ledger's last entry Production" in p for p in found)
    with pytest.raises(UntrustedRelease, match="no registration entry"):
        load_release(ctx.config, ctx.registry, version=evil)  # deploy, monitoring and rollback load through it
    assert not marker.exists(), "the registered pickle ran its code"
    metrics = httpx.get(f"{gateway['url']}/metrics").text
    assert 'tollgate_errors_total{kind="unproven_stage"} 1.0' in metrics
    refusals = [e for e in ledger.read(ctx.paths.ledger, ctx.config.project.registered_model) if e.version == evil]
    assert refusals and all(e.reason.startswith("refused to load:") for e in refusals)


def _v1_served_and_v2_trained(gateway: dict[str, Any]) -> tuple[Any, str, Any, Any]:
    """(ctx, model name, v1 in Production and served, v2 trained by the pipeline and staged)."""
    ctx = gateway["ctx"]
    v1 = train(ctx, **AUTO)
    deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
    return ctx, ctx.config.project.registered_model, v1, train(ctx, **AUTO)


def test_a_model_file_replaced_after_registration_is_refused_by_digest(gateway: dict[str, Any]) -> None:
    ctx, name, v1, v2 = _v1_served_and_v2_trained(gateway)
    with pytest.raises(GatewayError, match="never Production"):  # a Staging version is not a rollback target
        rollback_via_gateway(ctx, v2.version, "test", None)
    client = MlflowClient(ctx.config.servers.mlflow_url)
    model_ids = [
        str(client.get_model_version(name, v).source).removeprefix("models:/") for v in (v1.version, v2.version)
    ]
    first, second = (next(ctx.paths.mlflow_artifacts.rglob(f"{m}/artifacts/model.skops")) for m in model_ids)
    second.write_bytes(first.read_bytes())  # a valid model file, just not the one the pipeline stored for v2

    with pytest.raises(UntrustedRelease, match=r"model/model\.skops: sha256 .* differs"):
        load_release(ctx.config, ctx.registry, version=v2.version).load_model()
    with pytest.raises(Exception, match=rf"refused {name} v{v2.version}: model/model\.skops"):
        deploy_model(version=v2.version, config=ctx)
    prod = ctx.registry.one("Production")
    assert prod is not None and prod.version == v1.version and _served(gateway) == v1.version


def test_a_rollback_target_that_fails_its_smoke_test_changes_nothing(gateway: dict[str, Any]) -> None:
    ctx, name, v1, v2 = _v1_served_and_v2_trained(gateway)
    ctx.registry.transition(v2.version, "Production", "test: promoted directly", v2.run_id)  # v1 -> Archived
    ctx.gateway().reload()
    # v1's smoke records now break its own serving rules. The test acts as the pipeline would (it records the
    # new file's digest), so provenance holds and only the smoke test can say no.
    smoke = next(ctx.paths.mlflow_artifacts.rglob(f"{v1.run_id}/artifacts/{RELEASE_DIR}/smoke_records.json"))
    bad = [{**r, ctx.config.features.numeric[0]: "not a number"} for r in json.loads(smoke.read_text())]
    smoke.write_text(json.dumps(bad))
    digest = {f"{RELEASE_DIR}/smoke_records.json": sha256_file(smoke)}
    ctx.registry.record(v1.version, "Archived", "Archived", "test: smoke records replaced", None, digests=digest)
    before = ledger.read(ctx.paths.ledger, name)

    with pytest.raises(GatewayError, match="smoke test") as refused:
        rollback_via_gateway(ctx, v1.version, "test", None)  # what `tollgate rollback --to` and the flow run
    assert refused.value.status == 409
    prod = ctx.registry.one("Production")
    assert prod is not None and prod.version == v2.version and ctx.registry.get(v1.version).stage == "Archived"
    assert ledger.read(ctx.paths.ledger, name) == before and ctx.registry.aliases().get("champion") == v2.version
    assert _served(gateway) == v2.version
