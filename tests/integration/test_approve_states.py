"""`tollgate approve` answers only a run that can act on the answer (issue 20.3): after `kill -9` of the
`tollgate deploy` that waits for the approval, the answer is refused naming the run as crashed and nothing
changes; asked again, the run's state is named; an approval that does take effect returns once Production
changed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from flows.deploy import deploy_model
from tasks.approvals import ApprovalError, _paused_runs, answer_approval
from tests.integration.live import TEST_ROLLOUT, Traffic, rollout_env, train
from tollgate import approvers, ledger

AUTO = {"rollout": {"auto_approve": True}}


def _deploy_process(gateway: dict[str, Any], version: str) -> subprocess.Popen[bytes]:
    """`tollgate deploy VERSION` as an operator runs it, in its own process group (so it can be killed whole)."""
    env = {
        **os.environ,
        "TOLLGATE__PROJECT__REGISTERED_MODEL": gateway["name"],
        "TOLLGATE__SERVERS__GATEWAY_PORT": str(gateway["ctx"].config.servers.gateway_port),
        **rollout_env(TEST_ROLLOUT),
    }
    argv = [sys.executable, "-m", "tollgate.app.cli", "deploy", version, "--in-terminal"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_paused(version: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if asyncio.run(_paused_runs(version)):
            return
        time.sleep(1)
    raise AssertionError(f"deploy of v{version} never paused for approval (exit {proc.poll()})")


def test_approve_refuses_a_run_whose_deploy_process_was_killed(gateway: dict[str, Any]) -> None:
    ctx = gateway["ctx"]
    if "alice" in approvers.read(ctx.paths.approvers):  # the state folder is the session's
        approvers.remove(ctx.paths.approvers, "alice")
    secret = approvers.add(ctx.paths.approvers, "alice", ctx.config.rollout.approvers)
    v1 = train(ctx, **AUTO)
    deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
    v2 = train(ctx)
    with Traffic(gateway["url"]):
        proc = _deploy_process(gateway, v2.version)
        _wait_paused(v2.version, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)

    with pytest.raises(ApprovalError, match=rf"flow run .* for v{v2.version} is crashed .*pid {proc.pid}.* is gone"):
        answer_approval(ctx, v2.version, "alice", secret, True, "looks fine")
    prod = ctx.registry.one("Production")
    assert prod is not None and prod.version == v1.version  # nothing was promoted
    health = httpx.get(f"{gateway['url']}/health").json()  # and the orphaned canary answers no more
    assert (health["champion"], health["challenger"], health["mode"]) == (v1.version, None, "off")
    notes = [e.reason for e in ledger.read(ctx.paths.ledger, gateway["name"]) if e.version == v2.version]
    assert any(r.startswith("rollout stopped: the deploy process") for r in notes), notes
    with pytest.raises(
        ApprovalError, match=rf"no deploy_model run is waiting for approval of v{v2.version}: .* crashed"
    ):
        answer_approval(ctx, v2.version, "alice", secret, True, "again")
    with pytest.raises(ApprovalError, match="no such approval"):
        answer_approval(ctx, "999", "alice", secret, True, "a version nobody deploys")
