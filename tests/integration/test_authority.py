"""Serving follows the ledger, not a registry stage (issue 32.2): the MLflow login alone cannot get a version
served. A gate-rejected version moved to Production by hand is refused by a reload, by a restarted serving
process and by a plain `tollgate rollback`; `tollgate status` exits 1 naming it. And the ledger's newest hash per
model is mirrored to MLflow and Prefect (issue 32.6), so a consistent rewrite of the file is still caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil
import pytest
from mlflow.tracking import MlflowClient

from flows.deploy import deploy_model
from tasks.gates import GateRejected
from tests.helpers import ROOT
from tests.integration.live import records, running_gateway, train
from tollgate import ledger
from tollgate.registry import mirror_disagreements
from tollgate.secrets import admin_token

AUTO = {"rollout": {"auto_approve": True}}


def _served(url: str) -> str:
    answer = httpx.post(f"{url}/predict", json=records(1)[0], timeout=30)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def _cli(gw: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TOLLGATE__PROJECT__REGISTERED_MODEL": gw["name"],
        "TOLLGATE__SERVERS__GATEWAY_PORT": str(gw["ctx"].config.servers.gateway_port),
    }
    return subprocess.run(
        [sys.executable, "-m", "tollgate.app.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_stage_moved_by_hand_is_never_served(live_stack: dict[str, str]) -> None:
    """Slow (~40 s): two trainings, a deploy and a supervised gateway restarted while the registry says
    otherwise; the refusal must hold across a restart, so the restart is part of the check."""
    with running_gateway(live_stack, "authority-hand-moved", supervise=True) as gw:
        ctx, url, name = gw["ctx"], gw["url"], gw["name"]
        admin = {"Authorization": f"Bearer {admin_token(ctx.config, ctx.paths)}"}
        v1 = train(ctx)
        deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
        with pytest.raises(GateRejected) as rejected:
            train(ctx, gates={"minimums": {"auc": 0.999}})
        bad = str(rejected.value.version)
        assert ctx.registry.get(bad).stage == "None"

        # the MLflow login alone: the gate-rejected version to Production (v1 archived) by hand
        MlflowClient(ctx.config.servers.mlflow_url).transition_model_version_stage(name, bad, "Production", True)
        assert ctx.registry.one("Production").version == bad  # type: ignore[union-attr]

        # reload: the ledger's version stays served, the refusal is named and counted
        reload = httpx.post(f"{url}/admin/reload", headers=admin, timeout=60)
        assert reload.status_code == 200 and reload.json()["champion"] == v1.version, reload.text
        assert any(f"v{bad} is in Production in the registry" in r for r in reload.json()["refused"])
        assert _served(url) == v1.version

        # restart: a fresh serving process (kill -9, the supervisor forks another) loads from the ledger too
        (serving,) = psutil.Process(gw["proc"].pid).children()
        serving.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = psutil.Process(gw["proc"].pid).children()
            if children and children[0].pid != serving.pid:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["champion"] == v1.version, health
        assert _served(url) == v1.version
        assert 'tollgate_errors_total{kind="unproven_stage"} 1.0' in httpx.get(f"{url}/metrics").text

        # a plain rollback does not take the hand-moved version for "previous Production": refused, exit 1
        rollback = _cli(gw, "rollback")
        assert rollback.returncode == 1, rollback.stdout + rollback.stderr
        assert "no earlier Production version" in rollback.stdout + rollback.stderr
        assert "Traceback" not in rollback.stderr
        assert _served(url) == v1.version

        # status names the disagreement and exits 1
        status = _cli(gw, "status")
        assert status.returncode == 1, status.stdout + status.stderr
        assert any(f"v{bad}" in line and "outside the pipeline" in line for line in status.stdout.splitlines()), (
            status.stdout
        )

        # the ledger rewritten consistently by someone who can write the state folder (its last entry cut, the
        # head file moved back): the chain still verifies, but its copies in MLflow and Prefect say otherwise
        assert mirror_disagreements(ctx.registry) == []
        path, head = ctx.paths.ledger, ledger.head_path(ctx.paths.ledger)
        original, original_head = path.read_bytes(), head.read_bytes()
        lines = original.decode().splitlines(keepends=True)
        assert json.loads(lines[-1])["model"] == name, "the last ledger entry must be this test's to cut it"
        try:
            path.write_text("".join(lines[:-1]))
            head.write_text(json.loads(lines[-2])["hash"] + "\n")
            assert ledger.verify(path) == []
            found = mirror_disagreements(ctx.registry)
            assert len(found) == 2 and all("the ledger file was rewritten" in f for f in found), found
            assert any("MLflow" in f for f in found) and any("Prefect" in f for f in found)
        finally:
            path.write_bytes(original)
            head.write_bytes(original_head)
