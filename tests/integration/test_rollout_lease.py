"""The rollout lease: a deploy process killed mid-canary leaves no challenger on the gateway for long."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from flows.deploy import deploy_model
from serving.lease import Leases, lapsed
from tests.helpers import ROOT
from tests.integration.live import CONFIG, TEST_ROLLOUT, Traffic, rollout_env, train, wait_for
from tollgate import ledger
from tollgate.context import Context
from tollgate.registry import ROLLOUT_MODE_TAG, Registry

LEASE_S = 5.0
# the deploying environment's policy for v2: a canary that never has enough traffic (the deploy sits in it until killed), a short lease
STUCK_CANARY = {**TEST_ROLLOUT, "canary_requests": 1_000_000, "lease_s": LEASE_S}


@pytest.mark.parametrize(
    ("challenger", "deadline", "now", "expected"),
    [
        (None, None, 10.0, False),  # nothing in rollout
        ("2", None, 10.0, False),  # no lease known yet: the gateway grants the grace first
        ("2", 10.0, 10.0, False),  # at the deadline it still holds
        ("2", 10.0, 10.5, True),
        ("2", 20.0, 10.5, False),
    ],
)
def test_lapse_decision(challenger: str | None, deadline: float | None, now: float, expected: bool) -> None:
    assert lapsed(challenger, deadline, now) is expected


def test_leases_grant_renew_and_grace() -> None:
    leases = Leases()
    assert leases.ensure("2", 60, now=0) == 60  # grace for a challenger with no lease
    assert leases.ensure("2", 60, now=30) == 60  # an existing lease is not extended by the grace
    assert leases.grant("2", 5, now=58) == 63  # a renewal replaces it, shorter or longer
    assert not leases.lapsed("2", 63) and leases.lapsed("2", 63.1) and not leases.lapsed("3", 100)
    leases.forget("2")
    assert not leases.lapsed("2", 1e9)


def test_killed_deploy_lets_the_canary_lapse(gateway: dict[str, Any]) -> None:
    reg: Registry = gateway["registry"]
    ctx: Context = gateway["ctx"]
    url = gateway["url"]
    v1 = train(ctx, model={"hyperparameters": {"max_iter": 10}}, rollout={"auto_approve": True})
    deploy_model(version=v1.version, config=ctx.with_config(rollout={"auto_approve": True}))
    v2 = train(ctx)
    env = {
        **os.environ,
        "TOLLGATE__PROJECT__REGISTERED_MODEL": gateway["name"],
        "TOLLGATE__SERVERS__GATEWAY_PORT": str(ctx.config.servers.gateway_port),
        **rollout_env(STUCK_CANARY),
    }
    deploy_log = (ctx.paths.logs / f"deploy-{gateway['name']}.log").open("ab")
    deploy = subprocess.Popen(
        [sys.executable, "-m", "tollgate.app.cli", "--config", CONFIG, "deploy", v2.version, "--in-terminal"],
        env=env,
        cwd=ROOT,
        stdout=deploy_log,
        stderr=deploy_log,
        start_new_session=True,
    )
    try:
        with Traffic(url) as traffic:
            wait_for(
                lambda: httpx.get(f"{url}/health").json()["mode"] == "canary" or deploy.poll() is not None,
                150,
                "the deploy never reached the canary",
            )
            assert deploy.poll() is None, f"deploy exited {deploy.returncode}: see {deploy_log.name}"
            os.killpg(deploy.pid, signal.SIGKILL)
            killed = time.monotonic()
            off = wait_for(
                lambda: httpx.get(f"{url}/health").json()["mode"] == "off",
                LEASE_S + 3,
                "the gateway kept the canary after its lease lapsed",
            )
            assert off - killed <= LEASE_S + 3
            # requests routed just before the swap may still be answering; everything sent after it is v1's
            time.sleep(0.5)
            after = len(traffic.answers)
            time.sleep(2)
        later = traffic.answers[after:]
        assert later and {a["model_version"] for a in later} == {v1.version}
        assert (v2.version, "canary") in {(a["model_version"], a["role"]) for a in traffic.answers[:after]}
    finally:
        if deploy.poll() is None:
            os.killpg(deploy.pid, signal.SIGKILL)
        deploy.wait(10)
        deploy_log.close()
    health = httpx.get(f"{url}/health").json()
    assert (health["champion"], health["challenger"], health["mode"]) == (v1.version, None, "off")
    assert reg.get(v2.version).tags[ROLLOUT_MODE_TAG] == "off"  # a reload or a restart does not bring it back
    notes = [e for e in ledger.read(reg.ledger_path, gateway["name"]) if "rollout lease lapsed" in e.reason]
    assert [(e.version, e.from_stage, e.to_stage, e.who) for e in notes] == [
        (v2.version, "Staging", "Staging", "tollgate")
    ]
    assert "tollgate_rollout_lease_lapses_total 1.0" in httpx.get(f"{url}/metrics").text
    assert httpx.post(f"{url}/admin/reload", headers=_auth(ctx)).json()["challenger"] is None


def _auth(ctx: Context) -> dict[str, str]:
    from tollgate.secrets import admin_token

    return {"Authorization": f"Bearer {admin_token(ctx.config, ctx.paths)}"}
