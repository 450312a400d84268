"""A stock Prometheus scrapes a real gateway serving a trained model, whatever clients send to it.

Prometheus (Debian's package, installed when missing) runs on a free port with its data in tmp_path and the
shipped config and rules, scraping every second. The test replays predictions, sends hostile requests (quotes,
newlines and raw bytes in paths, headers and bodies; 1,000 distinct unknown paths; all to 127.0.0.1), then asks
Prometheus's HTTP API what it stored: the target is up, the prediction counter equals the acknowledged
predictions, the route label keeps to the fixed set, and the drift signal reaches an alert.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import OTHER_ROUTE, ROUTES
from tests.helpers import ROOT
from tests.integration.live import free_port, records, running_gateway, train
from tollgate.signals import record_signals

SHIPPED = ROOT / "deployments" / "prometheus"


@pytest.fixture(scope="session")
def promtools() -> dict[str, str]:
    """Paths to `prometheus` and `promtool`, installing Debian's prometheus package when either is missing."""
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    if not all(found.values()):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "prometheus"]):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.fail(
                    f"prometheus/promtool are missing and `{' '.join(cmd)}` could not run: {exc}", pytrace=False
                )
            if done.returncode != 0:
                pytest.fail(
                    f"prometheus/promtool are missing and `{' '.join(cmd)}` failed (exit {done.returncode}); "
                    f"install Debian's prometheus package as root and run again.\n{done.stderr[-2000:]}",
                    pytrace=False,
                )
        found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
        if not all(found.values()):
            pytest.fail(f"apt-get installed prometheus but these are still not on PATH: {found}", pytrace=False)
    return {name: str(path) for name, path in found.items()}


@contextmanager
def running_prometheus(binary: str, folder: Path, target: str) -> Iterator[str]:
    """Prometheus with the shipped config (target, 1 s intervals and an absolute rules path swapped in) and its
    data in `folder`; stopped, and waited for, on exit."""
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(SHIPPED / rules) for rules in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job.update(scrape_timeout="1s", static_configs=[{"targets": [target]}])
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, 60, "prometheus ready", proc)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert proc.poll() is not None


def _wait(check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _scalar(url: str, expr: str) -> float | None:
    result = _query(url, expr)
    return float(result[0]["value"][1]) if result else None


def _raw_request(port: int, request: bytes) -> bytes:
    """One request written byte for byte (no client library normalising it); the status line comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _hostile(gw_url: str) -> None:
    """Hostile traffic, bounded and to 127.0.0.1 only."""
    port = int(gw_url.rsplit(":", 1)[1])
    with httpx.Client(base_url=gw_url, timeout=10) as client:
        for i in range(1000):  # 1,000 distinct unknown paths
            assert client.get(f"/unknown/{i}/x", params={"q": i}).status_code == 404
        for path in ("/a%22b%22", "/line%0Abreak", "/quote%22%0A%7D%201%0Afake%7Bx%3D%22", "/%FF%FE", "/admin/%22%0A"):
            assert client.get(path).status_code in (401, 404)
        assert client.post("/predict", content=b"\xff\xfe\x00 raw bytes").status_code == 422
        assert client.get("/admin/state", headers={"Authorization": b"Bearer \xff\xfe"}).status_code == 401
    for raw in (
        b'GET /quo"te HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
        b"GET /raw\xff\xfebytes HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b'POST /admin/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff"\r\nContent-Length: 0\r\n'
        b"Connection: close\r\n\r\n",
    ):
        status = _raw_request(port, raw)
        assert status.startswith(b"HTTP/1.1 4"), status  # 400 from the HTTP parser, else the app's 401/404


def test_prometheus_scrapes_the_gateway_whatever_clients_send(
    live_stack: dict[str, str], tmp_path: Path, promtools: dict[str, str]
) -> None:
    for check in (["check", "config", str(SHIPPED / "prometheus.yml")], ["check", "rules", str(SHIPPED / "rules.yml")]):
        done = subprocess.run([promtools["promtool"], *check], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [promtools["promtool"], "test", "rules", "rules.test.yml"], cwd=SHIPPED, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr

    with running_gateway(live_stack, "prometheus-scrape") as gw:
        version = train(gw["ctx"]).version
        gw["registry"].transition(version, "Production", "test: serve it for the scrape", None)
        assert gw["ctx"].gateway().reload()["champion"] == version
        target = gw["url"].removeprefix("http://")
        with running_prometheus(promtools["prometheus"], tmp_path, target) as prom:
            acked = 0
            with httpx.Client(base_url=gw["url"], timeout=30) as client:
                for i in range(30):
                    resp = client.post("/predict", json={"records": records(7, i * 7)})
                    assert resp.status_code == 200
                    acked += len(resp.json()["predictions"])
                for rec in records(10, 500):
                    assert client.post("/predict", json=rec).status_code == 200
                    acked += 1
            _hostile(gw["url"])

            page = httpx.get(f"{gw['url']}/metrics").text  # every request but scrapes is counted on it now
            lint = subprocess.run(
                [promtools["promtool"], "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
            )
            assert lint.returncode == 0, lint.stdout + lint.stderr

            answered = sum(
                s.value
                for f in text_string_to_metric_families(page)
                for s in f.samples
                if s.name == "tollgate_requests_total" and s.labels["route"] != "/metrics"
            )

            def scraped_everything() -> bool:
                return _scalar(prom, 'sum(tollgate_requests_total{route!="/metrics"})') == answered

            _wait(scraped_everything, 30, "prometheus to scrape the final counters")
            assert _scalar(prom, 'up{job="tollgate-gateway"}') == 1
            assert _scalar(prom, "sum(tollgate_predictions_total)") == acked
            (health,) = httpx.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
            assert health["health"] == "up" and health["lastError"] == ""
            assert (
                _scalar(prom, f'sum(tollgate_predictions_total{{model_version="{version}",role="champion"}})') == acked
            )
            routes = {r["metric"]["route"] for r in _query(prom, "group by (route) (tollgate_requests_total)")}
            assert routes <= {*ROUTES, OTHER_ROUTE} and len(routes) <= len(ROUTES) + 1, routes
            series = _scalar(prom, 'count({job="tollgate-gateway"})')
            assert series is not None and series < 200, f"{series} series after 1,000 distinct paths"
            assert (_scalar(prom, "sum(tollgate_admin_refused_total)") or 0) >= 3

            # a drift verdict recorded by monitoring reaches Prometheus at the next scrape and fires the alert
            record_signals(gw["ctx"].paths, gw["name"], drift_detected=1)

            def drift_alert_fires() -> bool:
                alerts = httpx.get(f"{prom}/api/v1/alerts").json()["data"]["alerts"]
                return any(a["labels"]["alertname"] == "TollgateDriftDetected" for a in alerts)

            _wait(drift_alert_fires, 30, "the TollgateDriftDetected alert")
            groups = httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"]
            assert sum(len(g["rules"]) for g in groups) == 6
