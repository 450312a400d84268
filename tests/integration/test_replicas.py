"""Two gateway replicas behind one port (issue 14.3): both serve, each logs its own segments and the readers merge
them; one killed under load loses no acknowledged prediction while the other goes on answering; a rollout, a
reload and a rollback reach both before the command returns; /admin/state and `tollgate status` sum them."""

from __future__ import annotations

import json
import time

import httpx
import psutil

from flows.deploy import deploy_model
from tests.integration.live import Traffic, records, running_gateway, train, wait_for
from tests.integration.test_supervision import Load
from tollgate.app.supervise import restart_count
from tollgate.predlog import log_parts, part_name, read_log

AUTO = {"rollout": {"auto_approve": True}}


def _own(state: dict) -> dict[int, str]:  # type: ignore[type-arg]
    """Replica index -> its own URL, from a summed /admin/state."""
    return {r["replica"]: f"http://127.0.0.1:{r['port']}" for r in state["replicas"]}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _served(urls: dict[int, str]) -> set[tuple[str, str | None, str]]:
    """What each replica says it serves, asked on its own port (a set: one element when they agree)."""
    out = set()
    for url in urls.values():
        health = httpx.get(f"{url}/health", timeout=5).json()
        out.add((health["champion"], health["challenger"], health["mode"]))
    return out


def test_two_replicas_share_the_port_the_log_and_every_change(live_stack: dict[str, str]) -> None:
    """Slow (~90 s): two trainings and a shadow + canary rollout under traffic are what reaching both replicas means."""
    with running_gateway(live_stack, "replicated-gateway", supervise=True, replicas=2) as gw:
        ctx = gw["ctx"]
        client = ctx.gateway()
        v1 = train(ctx, **AUTO)
        deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
        state = client.state()
        urls = _own(state)
        assert sorted(urls) == [0, 1] and state["replicas_agree"], state
        assert _served(urls) == {(v1.version, None, "off")}
        pids = {r["replica"]: r["pid"] for r in state["replicas"]}
        supervisor = psutil.Process(gw["proc"].pid)
        assert sorted(c.pid for c in supervisor.children()) == sorted(pids.values())

        # one replica killed under load: the other goes on answering, the killed one comes back on its own
        before = restart_count(ctx.paths)
        with Load(gw["url"]) as load:
            time.sleep(2)
            killed_at = time.monotonic()
            psutil.Process(pids[1]).kill()
            time.sleep(2)
        answered_after_kill = [t for t in load.answered_at if killed_at < t < killed_at + 1.0]
        assert len(answered_after_kill) > 10, "the surviving replica did not go on answering"
        restarts = ctx.paths.gateway_restarts.read_text().splitlines()
        assert len(restarts) == before + 1 and json.loads(restarts[-1])["replica"] == 1
        assert "killed by SIGKILL" in restarts[-1]
        wait_for(lambda: _healthy(urls[1]), 30, "the killed replica serving again on its own port")
        state = client.state()
        assert {r["replica"]: r["pid"] for r in state["replicas"]}[1] != pids[1]

        # both replicas wrote segments (a segment is named by its process), and the merged log has every acked row
        writers = {part_name(p).split("-")[2] for p in log_parts(ctx.paths.model_log(gw["name"]))}
        assert {str(pids[0]), str(pids[1])} <= writers, writers
        logged = set(read_log(ctx.paths.model_log(gw["name"]))["prediction_id"])
        missing = [p for p in load.acked if p not in logged]
        assert len(load.acked) > 100 and missing == [], f"{len(missing)} acknowledged predictions not in the log"

        # a rollout (shadow, canary, promotion) under traffic reaches both; so does a rollback
        v2 = train(ctx, **AUTO)
        with Traffic(gw["url"]) as traffic:
            deploy_model(version=v2.version, config=ctx.with_config(**AUTO))
        assert traffic.failures == []
        assert {a["model_version"] for a in traffic.answers} >= {v1.version, v2.version}
        assert _served(urls) == {(v2.version, None, "off")}
        answer = client.rollback(v1.version, "replica test", who="tester")
        assert answer["served"] is True and _served(urls) == {(v1.version, None, "off")}

        # counters: each replica's own /metrics, summed by /admin/state and by `tollgate status`. The restarted
        # replica's counter starts again at zero and a keep-alive client stays on one replica, so each is asked once.
        for url in urls.values():
            assert httpx.post(f"{url}/predict", json={"records": records(3, 0)}, timeout=30).status_code == 200
        state = client.state()
        per_replica = [r["predictions"] for r in state["replicas"]]
        assert all(n > 0 for n in per_replica) and sum(state["predictions"].values()) == sum(per_replica)
        scraped = 0.0
        for url in urls.values():
            for line in httpx.get(f"{url}/metrics").text.splitlines():
                if line.startswith("tollgate_predictions_total{"):
                    scraped += float(line.rsplit(" ", 1)[1])
        assert scraped == sum(per_replica)
        client.close()
