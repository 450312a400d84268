"""The rollout's controller (issue 34, parts 1-5): the lease is held by a live controller only, also in the
approval wait; one rollout per model; `tollgate rollout cancel` and `tollgate rollout status`.

Slow (~2-3 min each): each test trains two versions, rolls the first out, then drives a real `tollgate deploy`
process against a real gateway, Prefect server and MLflow; the waits are the rollout's own phases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.deploy import deploy_model
from tasks.approvals import ApprovalError, _paused_runs, answer_approval
from tasks.controller import RolloutInFlight, rollouts_in_flight
from tests.helpers import ROOT
from tests.integration.live import CONFIG, TEST_ROLLOUT, Traffic, rollout_env, train, wait_for
from tollgate import approvers, ledger
from tollgate.app.stack import DeploymentTarget, apply_deployments
from tollgate.registry import ROLLOUT_MODE_TAG

AUTO = {"rollout": {"auto_approve": True}}
LEASE_S = 8.0  # the beat is 2 s; small enough to wait for, large enough for a CLI to see the orphan first
LEASE_S_WORKER = 30.0  # the beat is 5 s: 25 s at least for two CLI processes to start and read the orphan when busy


@pytest.fixture()
def secret(gateway: dict[str, Any]) -> Iterator[str]:
    """alice's approver key for this test; the state folder is the session's, so she is removed again after."""
    path, allowed = gateway["ctx"].paths.approvers, gateway["ctx"].config.rollout.approvers
    if "alice" in approvers.read(path):
        approvers.remove(path, "alice")
    yield approvers.add(path, "alice", allowed)
    approvers.remove(path, "alice")


def _env(gateway: dict[str, Any], rollout: dict[str, Any]) -> dict[str, str]:
    return {
        **os.environ,
        "TOLLGATE__PROJECT__REGISTERED_MODEL": gateway["name"],
        "TOLLGATE__SERVERS__GATEWAY_PORT": str(gateway["ctx"].config.servers.gateway_port),
        **rollout_env(rollout),
    }


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_deploy_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a `tollgate deploy` running (it would hold its model's rollout)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _deploy(gateway: dict[str, Any], version: str, rollout: dict[str, Any], *flags: str) -> subprocess.Popen[bytes]:
    """`tollgate deploy VERSION [flags]` in its own process group, its output in the state folder's logs."""
    log = (gateway["ctx"].paths.logs / f"deploy-{gateway['name']}-v{version}.log").open("ab")
    argv = [sys.executable, "-m", "tollgate.app.cli", "deploy", version, *flags]
    proc = subprocess.Popen(argv, env=_env(gateway, rollout), cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    _STARTED.append(proc)
    return proc


def _kill_terminal_when(gateway: dict[str, Any], version: str, policy: dict[str, Any], ready: Any, what: str) -> None:
    """The operator's terminal lost: `tollgate deploy VERSION` started (on the worker), then `kill -9` of it once
    `ready()` holds (a phase reached)."""
    proc = _deploy(gateway, version, policy)
    wait_for(lambda: ready() or proc.poll() is not None, 300, what)
    assert proc.poll() is None, f"deploy exited {proc.returncode}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _cli(gateway: dict[str, Any], *words: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tollgate.app.cli", *words]
    return subprocess.run(argv, env=_env(gateway, TEST_ROLLOUT), cwd=ROOT, capture_output=True, text=True, timeout=120)


def _health(gateway: dict[str, Any]) -> dict[str, Any]:
    return dict(httpx.get(f"{gateway['url']}/health").json())


def _v1_served_v2_trained(gateway: dict[str, Any], on_the_worker: bool = False) -> tuple[Any, Any]:
    """v1 in Production (auto-approved), v2 trained; with `on_the_worker`, the project's deployments applied so
    `tollgate deploy` hands the rollout to the worker. Returns both training results."""
    ctx = gateway["ctx"]
    v1 = train(ctx, **AUTO)
    deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
    v2 = train(ctx)
    if on_the_worker:
        target = DeploymentTarget(Path(CONFIG).resolve(), "dev", gateway["name"])
        apply_deployments(ROOT, ctx.config.servers, ctx.paths, target, say=lambda _m: None)
    return v1, v2


def test_a_killed_controller_in_the_approval_wait_loses_the_canary_within_its_lease(
    gateway: dict[str, Any], secret: str
) -> None:
    ctx = gateway["ctx"]
    v1, v2 = _v1_served_v2_trained(gateway)
    policy = {**TEST_ROLLOUT, "lease_s": LEASE_S}
    with Traffic(gateway["url"]) as traffic:
        proc = _deploy(gateway, v2.version, policy, "--in-terminal")
        wait_for(lambda: asyncio_paused(v2.version) or proc.poll() is not None, 300, "the deploy never paused")
        assert proc.poll() is None, f"deploy exited {proc.returncode}"
        # the approval wait no longer extends the lease to its deadline: the heartbeat keeps it at lease_s
        time.sleep(2 * LEASE_S)
        assert _health(gateway)["mode"] == "canary"
        # one rollout per model: a second deploy (CLI, and a flow run of its own) is refused, naming the first
        second = _cli(gateway, "deploy", v2.version)
        assert second.returncode == 1, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        for part in (f"v{v2.version} in approval since", "flow run", f"tollgate rollout cancel {v2.version}"):
            assert part in second.stderr, second.stderr
        with pytest.raises(RolloutInFlight) as refused:
            deploy_model(version=v1.version, config=ctx.with_config(rollout=policy))
        assert str(refused.value) == second.stderr.strip().removeprefix("failed: ")
        status = _cli(gateway, "rollout", "status", "--json")
        assert status.returncode == 0, status.stderr
        [shown] = json.loads(status.stdout)
        assert (shown["version"], shown["phase"], shown["controller"], shown["challenger_live"]) == (
            v2.version,
            "approval",
            "alive",
            True,
        )
        assert 0 < shown["lease_left_s"] <= LEASE_S and shown["url"].endswith(shown["flow_run_id"])

        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(10)
        orphan = _cli(gateway, "rollout", "status")
        if _health(gateway)["mode"] == "canary":  # the CLI answered before the lease ran out
            assert orphan.returncode == 1 and f"ORPHANED: v{v2.version}" in orphan.stdout, orphan.stdout
        off = wait_for(lambda: _health(gateway)["mode"] == "off", LEASE_S + 5, "the canary outlived its lease")
        assert off - killed <= LEASE_S + 5
        time.sleep(0.5)
        after = len(traffic.answers)
        time.sleep(2)
    later = traffic.answers[after:]
    assert later and {a["model_version"] for a in later} == {v1.version}
    prod = ctx.registry.one("Production")
    assert prod is not None and prod.version == v1.version
    with pytest.raises(ApprovalError, match=rf"flow run .* for v{v2.version} is crashed"):
        answer_approval(ctx, v2.version, "alice", secret, True, "too late")
    assert ctx.registry.one("Production").version == v1.version  # type: ignore[union-attr]


def asyncio_paused(version: str) -> bool:
    import asyncio

    return bool(asyncio.run(_paused_runs(version)))


def test_rollout_cancel_in_canary(gateway: dict[str, Any]) -> None:
    ctx = gateway["ctx"]
    v1, v2 = _v1_served_v2_trained(gateway)
    stuck = {**TEST_ROLLOUT, "canary_requests": 1_000_000}  # the deploy sits in the canary until cancelled
    with Traffic(gateway["url"]):
        proc = _deploy(gateway, v2.version, stuck, "--in-terminal")
        wait_for(lambda: _health(gateway)["mode"] == "canary" or proc.poll() is not None, 200, "no canary")
        assert proc.poll() is None, f"deploy exited {proc.returncode}"
        cancel = _cli(gateway, "rollout", "cancel", v2.version, "--reason", "bad timing")
        assert cancel.returncode == 0, cancel.stderr
        assert f"cancelled the rollout of v{v2.version}" in cancel.stdout
        health = _health(gateway)  # at once: the command returned after the gateway reloaded
        assert (health["champion"], health["challenger"], health["mode"]) == (v1.version, None, "off")
        assert proc.wait(30) == 1  # the controller saw the cancellation and ended, touching nothing
    assert ctx.registry.get(v2.version).stage == "Staging"
    assert ctx.registry.get(v2.version).tags[ROLLOUT_MODE_TAG] == "off"
    notes = [e for e in ledger.read(ctx.paths.ledger, gateway["name"]) if e.reason == "rollout cancelled: bad timing"]
    assert [(e.version, e.from_stage, e.to_stage, e.who) for e in notes] == [
        (v2.version, "Staging", "Staging", ledger.current_actor())
    ]
    again = _cli(gateway, "rollout", "cancel", v2.version)
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"nothing to cancel: no rollout of {gateway['name']} v{v2.version} in flight",
    )
    status = _cli(gateway, "rollout", "status")
    assert status.returncode == 0 and "no rollout" in status.stdout
    # without the project's deploy deployment (no `tollgate up`) and no --in-terminal: refused, nothing touched
    unapplied = _cli(gateway, "deploy", v2.version)
    assert unapplied.returncode == 2 and "Traceback" not in unapplied.stderr, unapplied.stderr
    for part in ("no deployment deploy_model/deploy-", "run `tollgate up`", "--in-terminal"):
        assert part in unapplied.stderr, unapplied.stderr
    assert (_health(gateway)["mode"], ctx.registry.get(v2.version).stage) == ("off", "Staging")


def test_deploy_runs_on_the_worker_and_a_killed_terminal_in_shadow_only_detaches(
    gateway: dict[str, Any], secret: str
) -> None:
    """Issue 34 (a) in shadow: with the project's deploy deployment applied, `tollgate deploy` hands the rollout to
    the worker; `kill -9` of the command in shadow leaves the rollout going on (through the canary into the
    approval wait, its controller alive); an approval afterwards promotes exactly once, and `tollgate approve`
    reports the new Production only once the promotion is in the ledger."""
    ctx = gateway["ctx"]
    _, v2 = _v1_served_v2_trained(gateway, on_the_worker=True)
    policy = {**TEST_ROLLOUT, "shadow_requests": 150}  # a shadow long enough to be killed in
    with Traffic(gateway["url"]):
        _kill_terminal_when(gateway, v2.version, policy, lambda: _health(gateway)["mode"] == "shadow", "no shadow")
        wait_for(lambda: asyncio_paused(v2.version), 300, "the rollout did not go on to the approval wait")
        [rollout] = rollouts_in_flight(ctx)
        assert (rollout.version, rollout.phase, rollout.controller) == (v2.version, "approval", "alive")
        assert _health(gateway)["mode"] == "canary"
        outcome = answer_approval(ctx, v2.version, "alice", secret, True, "the worker carried it")
    assert outcome.endswith(f"v{v2.version} is Production"), outcome
    promotions = [
        e
        for e in ledger.read(ctx.paths.ledger, gateway["name"])
        if (e.version, e.to_stage) == (v2.version, "Production")
    ]
    assert len(promotions) == 1  # at once: `approve` reported only after the record
    log = (ctx.paths.logs / f"deploy-{gateway['name']}-v{v2.version}.log").read_text()
    assert "on the worker" in log and "flow run" in log
    no_follow = _cli(gateway, "deploy", v2.version, "--no-follow")  # v2 is Production now: the run fails at once
    assert no_follow.returncode == 0 and "tollgate rollout follow" in no_follow.stdout, no_follow.stderr


def test_a_killed_flow_run_process_on_the_worker_loses_the_canary_within_its_lease(
    gateway: dict[str, Any], secret: str
) -> None:
    """Issue 34 (a) in the approval wait, (c) through the Prefect API and (b): `kill -9` of `tollgate deploy` in the
    approval wait leaves the worker's flow-run process holding the lease; a second flow run of the deploy
    deployment, created through the Prefect API, fails before it touches the gateway; `kill -9` of the flow-run
    process leaves an orphan that `rollout status` and `status` report (exit 1) until the lease lapses, then
    champion-only."""
    from prefect.deployments import run_deployment

    from tollgate.app.worker_runs import config_overrides, deployment_name

    ctx = gateway["ctx"]
    v1, v2 = _v1_served_v2_trained(gateway, on_the_worker=True)
    policy = {**TEST_ROLLOUT, "lease_s": LEASE_S_WORKER}
    with Traffic(gateway["url"]) as traffic:
        _kill_terminal_when(gateway, v2.version, policy, lambda: asyncio_paused(v2.version), "the run never paused")
        health = _health(gateway)
        second = run_deployment(
            deployment_name(ctx),
            parameters={"version": v1.version, "config": str(Path(CONFIG).resolve()), "env": "dev"},
            job_variables={"env": config_overrides(_env(gateway, policy))},
            timeout=240,
            as_subflow=False,
        )
        assert second.state.is_failed(), second.state
        for part in (f"v{v2.version} in approval since", "flow run", f"tollgate rollout cancel {v2.version}"):
            assert part in str(second.state.message), second.state.message
        assert _health(gateway) == health  # refused before it touched the gateway
        [rollout] = rollouts_in_flight(ctx)  # the terminal is gone; the worker's flow-run process holds the lease
        record = json.loads((ctx.paths.rollout_controllers / f"{rollout.flow_run_id}.json").read_text())
        assert (rollout.phase, rollout.controller) == ("approval", "alive") and record["pid"] != os.getpid()
        os.kill(int(record["pid"]), signal.SIGKILL)
        killed = time.monotonic()
        checks = [
            subprocess.Popen(
                [sys.executable, "-m", "tollgate.app.cli", *words],
                env=_env(gateway, policy),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for words in (["rollout", "status", "--json"], ["status", "--json"])
        ]
        off = wait_for(lambda: _health(gateway)["mode"] == "off", LEASE_S_WORKER + 5, "the canary outlived its lease")
        assert off - killed <= LEASE_S_WORKER + 5
        (orphan, orphan_err), (stack, stack_err) = (c.communicate(timeout=120) for c in checks)
        # read while the lease still ran (a beat is 5 s, the lease 30 s): the orphan is named, exit 1
        assert checks[0].returncode == 1, orphan + orphan_err
        assert [(r["version"], r["orphaned"]) for r in json.loads(orphan)] == [(v2.version, True)]
        assert checks[1].returncode == 1 and f"ORPHANED rollout: v{v2.version}" in stack_err, stack_err
        assert [r["version"] for r in json.loads(stack)["rollouts"]] == [v2.version]
        time.sleep(0.5)
        after = len(traffic.answers)
        time.sleep(2)
    later = traffic.answers[after:]
    assert later and {a["model_version"] for a in later} == {v1.version}
    with pytest.raises(ApprovalError, match="crashed"):
        answer_approval(ctx, v2.version, "alice", secret, True, "too late")
    prod = ctx.registry.one("Production")
    assert prod is not None and prod.version == v1.version
    assert _cli(gateway, "rollout", "status").returncode == 0


def test_on_the_worker_a_killed_terminal_in_canary_detaches_follow_detaches_cancel_stops(
    gateway: dict[str, Any],
) -> None:
    """Issue 34 (a) in canary, `rollout follow` and cancel on the worker: kill -9 of `tollgate deploy` leaves the
    canary with its controller on the worker; `rollout follow` prints the run and only detaches on Ctrl-C (130);
    `rollout cancel` ends the worker's flow-run process with the run left Cancelled."""
    ctx = gateway["ctx"]
    _, v2 = _v1_served_v2_trained(gateway, on_the_worker=True)
    stuck = {**TEST_ROLLOUT, "canary_requests": 1_000_000}
    with Traffic(gateway["url"]):
        _kill_terminal_when(gateway, v2.version, stuck, lambda: _health(gateway)["mode"] == "canary", "no canary")
        time.sleep(6)  # past a beat and a lease renewal: the canary goes on without the terminal
        [rollout] = rollouts_in_flight(ctx)
        assert (rollout.phase, rollout.controller, _health(gateway)["mode"]) == ("canary", "alive", "canary")
        follow = subprocess.Popen(
            [sys.executable, "-m", "tollgate.app.cli", "rollout", "follow", v2.version],
            env=_env(gateway, stuck),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follow.stdout is not None
        first = _line_within(follow.stdout, 90)  # its first line, however long the CLI takes to start (not 12 s)
        time.sleep(2)  # following, not just started
        follow.send_signal(signal.SIGINT)
        rest, err = follow.communicate(timeout=60)
        out = first + rest
        assert follow.returncode == 130, out + err
        assert f"following flow run {rollout.flow_run}" in out and "detached" in err, out + err
        cancel = _cli(gateway, "rollout", "cancel", v2.version, "--reason", "from the worker")
        assert cancel.returncode == 0, cancel.stderr
        assert _health(gateway)["mode"] == "off"
        wait_for(lambda: not rollouts_in_flight(ctx), 30, "the cancelled run is still live")
    record = ctx.paths.rollout_controllers / f"{rollout.flow_run_id}.json"
    wait_for(lambda: not record.exists(), 30, "the flow-run process did not end")  # it removes its record
    run = asyncio_run_state(rollout.flow_run_id)
    assert run == "CANCELLED", run
    assert ctx.registry.get(v2.version).stage == "Staging"


def asyncio_run_state(flow_run_id: str) -> str:
    from tollgate.app.worker_runs import read_run

    return str(read_run(flow_run_id).state.type.value)


def _line_within(stream: Any, seconds: float) -> str:
    """The next line of a child's text stream, or fail after `seconds` (a thread reads; the test does not block)."""
    import threading

    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    assert got and got[0], f"no line from the child in {seconds} s"
    return got[0]
