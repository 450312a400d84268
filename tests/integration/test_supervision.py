"""A gateway that heals itself (issue 16.5): `kill -9` of the serving process under load, and it serves again
within 3 s with no command, on the verified Production release, with every acknowledged prediction logged."""

from __future__ import annotations

import threading
import time

import httpx
import psutil

from flows.deploy import deploy_model
from tests.integration.live import records, running_gateway, train
from tollgate.app.supervise import restart_count
from tollgate.predlog import read_log

AUTO = {"rollout": {"auto_approve": True}}
BACK_WITHIN_S = 3.0


class Load:
    """Four clients posting small batches; remembers every acknowledged prediction id and when answers came."""

    def __init__(self, url: str):
        self.url = url
        self.acked: list[str] = []
        self.answered_at: list[float] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]

    def _run(self, worker: int) -> None:
        offset = worker * 1_000_000
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    resp = client.post(f"{self.url}/predict", json={"records": records(5, offset)})
                except httpx.HTTPError:
                    time.sleep(0.02)
                    continue
                offset += 5
                if resp.status_code == 200:
                    self.acked.extend(p["prediction_id"] for p in resp.json()["predictions"])
                    self.answered_at.append(time.monotonic())

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_a_killed_gateway_serves_again_within_3s_by_itself(live_stack: dict[str, str]) -> None:
    with running_gateway(live_stack, "supervised-gateway", supervise=True) as gw:
        ctx = gw["ctx"]
        v1 = train(ctx, **AUTO)
        deploy_model(version=v1.version, config=ctx.with_config(**AUTO))
        supervisor = psutil.Process(gw["proc"].pid)
        # the restart log is the state folder's: other tests of the session may have restarted gateways too
        before = restart_count(ctx.paths)
        with Load(gw["url"]) as load:
            time.sleep(3)
            (serving,) = supervisor.children()
            killed_at = time.monotonic()
            serving.kill()
            serving.wait(10)
            deadline = killed_at + 30
            while time.monotonic() < deadline and not any(t > killed_at + 0.05 for t in load.answered_at):
                time.sleep(0.02)
            back_after = min((t for t in load.answered_at if t > killed_at + 0.05), default=float("inf")) - killed_at
            time.sleep(1)
        assert back_after < BACK_WITHIN_S, (
            f"serving again only after {back_after:.2f} s: {gw['log'].read_text()[-3000:]}"
        )
        (restarted,) = supervisor.children()
        assert restarted.pid != serving.pid
        answer = httpx.post(f"{gw['url']}/predict", json=records(1)[0]).json()
        assert answer["model_version"] == v1.version and answer["role"] == "champion"
        logged = set(read_log(ctx.paths.model_log(gw["name"]))["prediction_id"])
        missing = [p for p in load.acked if p not in logged]
        assert len(load.acked) > 100 and missing == [], f"{len(missing)} acknowledged predictions not in the log"
        restarts = ctx.paths.gateway_restarts.read_text().splitlines()
        assert len(restarts) == before + 1 and "killed by SIGKILL" in restarts[-1]
        assert f"tollgate_gateway_restarts_total {before + 1}.0" in httpx.get(f"{gw['url']}/metrics").text
