"""Request limits on a real gateway process: a body over serving.max_body_bytes or a batch over
serving.max_batch_size gets a 413 naming the setting, never a connection reset, and the gateway serves on.

Each over-limit request is also sent the way urllib and HTTP/1.0 clients send (`Connection: close`): the server
closes right after answering, and a close with body bytes still unread used to reach the client as a reset."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from flows.deploy import deploy_model
from tests.integration.live import records, running_gateway, train

AUTO = {"rollout": {"auto_approve": True}}
BIG = 50 * 1024 * 1024


def post_closing(url: str, body: bytes) -> tuple[int, Any]:
    """POST `body` to url/predict with http.client and `Connection: close`; the status and decoded JSON."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        conn.request("POST", "/predict", body=body, headers={"Connection": "close", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def over(setting: str, limit: int, what: str) -> dict[str, Any]:
    """The 413 body naming `setting`."""
    return {"error": f"{what}, over {setting} = {limit}", "setting": setting, "limit": limit}


def chunks(body: bytes, size: int = 1024 * 1024) -> Iterator[bytes]:
    """`body` as an upload without a Content-Length (chunked), so the gateway has to count it."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_a_body_or_batch_over_its_limit_gets_413_naming_the_setting(gateway: dict[str, Any]) -> None:
    ctx = gateway["ctx"]
    deploy_model(version=train(ctx).version, config=ctx.with_config(**AUTO))
    url, serving = gateway["url"], ctx.config.serving
    assert serving.max_body_bytes < BIG  # the default 20 MiB
    # 50 MB of a valid request (JSON allows the trailing whitespace): refused for its size alone
    big = orjson.dumps({"records": records(10)}).ljust(BIG)
    body_413 = over("serving.max_body_bytes", serving.max_body_bytes, f"request body is {BIG} bytes")

    resp = httpx.post(f"{url}/predict", content=big, timeout=60)
    assert (resp.status_code, resp.json()) == (413, body_413)
    assert post_closing(url, big) == (413, body_413)
    resp = httpx.post(f"{url}/predict", content=chunks(big), timeout=60)
    assert (resp.status_code, resp.json()) == (413, body_413)  # counted, not declared

    n = serving.max_batch_size + 1
    batch = orjson.dumps({"records": records(n)})
    assert len(batch) < serving.max_body_bytes
    batch_413 = over("serving.max_batch_size", serving.max_batch_size, f"request has {n} records")
    resp = httpx.post(f"{url}/predict", content=batch, timeout=60)
    assert (resp.status_code, resp.json()) == (413, batch_413)
    assert post_closing(url, batch) == (413, batch_413)

    # 100,000 rows of this schema are about 27 MB: the body limit is the one they meet first
    rows = orjson.dumps({"records": records(1000) * 100})
    status, answer = post_closing(url, rows)
    assert (status, answer["setting"]) == (413, "serving.max_body_bytes"), answer

    ok = httpx.post(f"{url}/predict", json={"records": records(3)}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 3
    assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
    assert 'tollgate_requests_total{route="/predict",status="413"} 6.0' in httpx.get(f"{url}/metrics").text


def test_a_100000_row_batch_within_the_body_limit_gets_413_naming_the_batch_limit(
    live_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the limits come from the config: the gateway process reads this override from its environment
    monkeypatch.setenv("TOLLGATE__SERVING__MAX_BODY_BYTES", str(64 * 1024 * 1024))
    with running_gateway(live_stack, "limits-batch") as gw:
        limit = gw["ctx"].config.serving.max_batch_size
        rows = orjson.dumps({"records": records(1000) * 100})
        expected = over("serving.max_batch_size", limit, "request has 100000 records")
        resp = httpx.post(f"{gw['url']}/predict", content=rows, timeout=60)
        assert (resp.status_code, resp.json()) == (413, expected)
        assert post_closing(gw["url"], rows) == (413, expected)
        assert httpx.get(f"{gw['url']}/health", timeout=5).json()["status"] == "ok"
