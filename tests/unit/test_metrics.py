"""The gateway's /metrics page: fixed label sets whatever clients send, a page the Prometheus parser reads,
monitoring signals read at scrape time, and the shipped Prometheus files in step with the config."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.app import Gateway
from serving.metrics import OTHER_ROUTE, ROUTES, route_label
from serving.release import Routing
from tests.helpers import ROOT, bundled_config
from tollgate.config import load_config
from tollgate.paths import StatePaths
from tollgate.signals import record_alert_failure, record_signals

HOSTILE_PATHS = [
    "/",
    "/predict/",
    "/PREDICT",
    "/predict/../metrics",
    "/admin/",
    "/admin/reload/",
    '/a"b',
    '/"} 1\nfake_metric{x="y',
    "/line\nbreak",
    "/cr\r\nlf",
    "/back\\slash",
    "/nul\x00byte",
    "/\u00e9t\u00e9",
    "/" + "x" * 5000,
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_unknown_or_hostile_paths_get_the_other_route_label(path: str) -> None:
    assert route_label(path) == OTHER_ROUTE


@pytest.mark.parametrize("path", ROUTES)
def test_known_routes_keep_their_label(path: str) -> None:
    assert route_label(path) == path


def _call(
    gw: Gateway, method: str, path: str, body: bytes = b"", headers: list[Any] | None = None
) -> tuple[int, bytes]:
    """One request through the ASGI app, in process."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    asyncio.run(gw(scope, receive, send))  # type: ignore[arg-type]
    return int(sent[0]["status"]), bytes(sent[1]["body"])


@pytest.fixture()
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """A gateway that is never started: no model, no server contacted; its routes and metrics still work."""
    monkeypatch.setenv("TOLLGATE_ADMIN_TOKEN", "unit-token")
    return Gateway(bundled_config(), StatePaths(tmp_path))


def _families(gw: Gateway) -> dict[str, Any]:
    status, body = _call(gw, "GET", "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_hostile_requests_leave_only_fixed_label_values(gateway: Gateway) -> None:
    for path in HOSTILE_PATHS:
        assert _call(gateway, "GET", path)[0] == (401 if path.startswith("/admin/") else 404)
    for i in range(300):
        _call(gateway, "POST", f"/unknown/{i}", b"\xff\xfe raw bytes")
    assert _call(gateway, "POST", '/admin/"x\n', headers=[(b"authorization", b"Bearer \xff")])[0] == 401
    assert _call(gateway, "GET", "/admin/state")[0] == 401
    assert _call(gateway, "POST", "/predict", b"\x00\xff not json")[0] == 422
    families = _families(gateway)
    routes = {s.labels["route"] for f in families.values() for s in f.samples if "route" in s.labels}
    assert routes <= {*ROUTES, OTHER_ROUTE}
    values = [v for f in families.values() for s in f.samples for v in s.labels.values()]
    assert not [v for v in values if '"' in v or "\n" in v or "\\" in v]
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["tollgate_requests"].samples}
    assert requests == {
        (OTHER_ROUTE, "404"): len(HOSTILE_PATHS) - 2 + 300,
        (OTHER_ROUTE, "401"): 3,
        ("/admin/state", "401"): 1,
        ("/predict", "422"): 1,
    }
    refused = {
        (s.labels["route"], s.labels["reason"]): s.value
        for s in families["tollgate_admin_refused"].samples
        if s.name.endswith("_total")
    }
    assert refused == {
        (OTHER_ROUTE, "missing_token"): 2,
        (OTHER_ROUTE, "wrong_token"): 1,
        ("/admin/state", "missing_token"): 1,
    }


def test_the_page_parses_and_names_every_metric(gateway: Gateway) -> None:
    families = _families(gateway)
    assert {
        "tollgate_requests",
        "tollgate_request_latency_seconds",
        "tollgate_predictions",
        "tollgate_errors",
        "tollgate_shadow_compared",
        "tollgate_shadow_disagreements",
        "tollgate_batches",
        "tollgate_batch_rows",
        "tollgate_admin_refused",
        "tollgate_serving_info",
        "tollgate_drift_detected",
        "tollgate_live_metric_degraded",
        "tollgate_alert_delivery_failures",
    } <= set(families)
    assert all(f.type != "info" for f in families.values())  # no `info` type in the text format
    assert families["tollgate_serving_info"].samples[0].labels == {
        "champion": "none",
        "challenger": "none",
        "mode": "off",
        "champion_scoring": "none",
        "champion_scoring_reason": "",
        "challenger_scoring": "none",
        "challenger_scoring_reason": "",
    }
    status, _ = _call(gateway, "POST", "/predict", b'{"customer_id": "C1"}')
    assert status == 503  # never started: no model yet
    latency = _families(gateway)["tollgate_request_latency_seconds"]
    assert next(s.value for s in latency.samples if s.name.endswith("_count")) == 1


def test_signals_are_read_at_scrape_time(gateway: Gateway) -> None:
    model = gateway.cfg.project.registered_model

    def value(families: dict[str, Any], name: str) -> float:
        (sample,) = [s for s in families[name].samples if s.labels == {"model": model}]
        return float(sample.value)

    before = _families(gateway)
    assert value(before, "tollgate_drift_detected") == 0 and value(before, "tollgate_live_metric_degraded") == 0
    record_signals(gateway.paths, model, drift_detected=1, live_status="severe")
    record_alert_failure(gateway.paths, model, "tollgate.drift.detected", "webhook: connection refused")
    record_alert_failure(gateway.paths, model, "tollgate.drift.detected", "webhook: 500")
    after = _families(gateway)
    assert value(after, "tollgate_drift_detected") == 1 and value(after, "tollgate_live_metric_degraded") == 1
    assert value(after, "tollgate_alert_delivery_failures") == 2
    record_signals(gateway.paths, model, drift_detected=0, live_status="ok")
    cleared = _families(gateway)
    assert value(cleared, "tollgate_drift_detected") == 0 and value(cleared, "tollgate_live_metric_degraded") == 0
    assert "tollgate_estimated_metric" not in cleared or not cleared["tollgate_estimated_metric"].samples  # none yet
    record_signals(
        gateway.paths, model, estimated_metric="auc", estimated_value=0.81, estimated_low=0.79, estimated_high=0.83
    )
    samples = _families(gateway)["tollgate_estimated_metric"].samples
    assert {s.labels["metric"] for s in samples} == {"auc"}
    estimated = {s.labels["bound"]: s.value for s in samples}
    assert estimated == {"estimate": 0.81, "low": 0.79, "high": 0.83}


def test_admin_state_keeps_its_keys(gateway: Gateway) -> None:
    _call(gateway, "POST", "/predict", b"{not json")
    status, body = _call(gateway, "GET", "/admin/state", headers=[(b"authorization", b"Bearer unit-token")])
    assert status == 200
    state = orjson.loads(body)
    assert state == {
        "champion": None,
        "challenger": None,
        "mode": "off",
        "share": 0.0,
        "champion_scoring": None,
        "challenger_scoring": None,
        "lease_left_s": None,
        "predictions": {},
        "errors": {},
        "shadow_compared": 0,
        "shadow_disagreed": 0,
        "batches": 0,
        "batch_rows": 0,
        "pid": os.getpid(),  # which serving process answered (one of several replicas: serving/replicas.py)
    }


def test_shipped_prometheus_files_follow_the_config() -> None:
    folder = ROOT / "deployments" / "prometheus"
    dev = load_config(ROOT / "configs" / "pipeline.yaml", "dev", environ={}).config
    scrape = yaml.safe_load((folder / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "tollgate-gateway"]
    assert job["static_configs"][0]["targets"] == [f"{dev.servers.host}:{dev.servers.gateway_port}"]
    rules = {r["alert"]: r for g in yaml.safe_load((folder / "rules.yml").read_text())["groups"] for r in g["rules"]}
    assert (
        rules["TollgatePredictP99LatencyHigh"]["expr"].strip().endswith(f"> {dev.rollout.max_p99_latency_ms / 1000:g}")
    )
    assert rules["TollgateGateway5xxRate"]["expr"].strip().endswith(f"> {dev.rollout.max_error_rate:g}")


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"version": "2"}', b'{"version": "", "until_s": 5}', b'{"version": "2", "until_s": 0}', b"[1]"],
)
def test_admin_lease_names_each_bad_field(gateway: Gateway, body: bytes) -> None:
    auth = [(b"authorization", b"Bearer unit-token")]
    assert _call(gateway, "POST", "/admin/lease", body, headers=auth)[0] == 422
    assert gateway.leases.deadlines == {}


def test_admin_lease_holds_a_version(gateway: Gateway) -> None:
    assert _call(gateway, "POST", "/admin/lease", b'{"version": "2", "until_s": 5}')[0] == 401
    auth = [(b"authorization", b"Bearer unit-token"), (b"content-type", b"application/json")]
    status, body = _call(gateway, "POST", "/admin/lease", b'{"version": "2", "until_s": 5}', headers=auth)
    assert status == 200 and orjson.loads(body)["held"] is False  # not the challenger: nothing kept
    assert gateway.leases.deadlines == {}
    gateway.routing = Routing(None, cast(Any, SimpleNamespace(version="2", scoring="onnx")), "canary", 0.2)
    status, body = _call(gateway, "POST", "/admin/lease", b'{"version": "2", "until_s": 5}', headers=auth)
    assert status == 200 and orjson.loads(body)["version"] == "2" and orjson.loads(body)["held"] is True
    assert not gateway.leases.lapsed("2", time.monotonic()) and gateway.leases.lapsed("2", time.monotonic() + 6)
    assert 0 < gateway.routing_state()["lease_left_s"] <= 5
