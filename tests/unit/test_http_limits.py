"""The gateway's request limits in process (no server): what the 413 names, that the rest of an unread body is
drained before any answer, and when the answer asks for the connection to be closed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

import serving.http
from serving.app import Gateway
from tests.helpers import bundled_config
from tollgate.paths import StatePaths

LIMIT = 4096


class Client:
    """One request's side of the ASGI conversation: the body in chunks, what the app took and sent."""

    def __init__(self, chunks: list[bytes], stall: bool = False):
        self.chunks = list(chunks)
        self.stall = stall  # after the chunks, the client sends nothing more (nor closes)
        self.taken = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if not self.chunks and self.stall:
            await asyncio.sleep(3600)
        chunk = self.chunks.pop(0)
        self.taken += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or self.stall}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, dict[bytes, bytes], Any]:
        start, body = self.sent
        return start["status"], dict(start["headers"]), orjson.loads(body["body"])


@pytest.fixture()
def gateway(tmp_path: Path) -> Gateway:
    """A gateway that is never started (no model), with a small body limit and a batch limit of 3."""
    cfg = bundled_config({"TOLLGATE__SERVING__MAX_BODY_BYTES": str(LIMIT), "TOLLGATE__SERVING__MAX_BATCH_SIZE": "3"})
    return Gateway(cfg, StatePaths(tmp_path))


def call(gw: Gateway, client: Client, path: str = "/predict", headers: dict[bytes, bytes] | None = None) -> None:
    scope = {"type": "http", "method": "POST", "path": path, "headers": list((headers or {}).items())}
    asyncio.run(gw(scope, client.receive, client.send))  # type: ignore[arg-type]


def body_413(what: str) -> dict[str, Any]:
    return {
        "error": f"request body is {what}, over serving.max_body_bytes = {LIMIT}",
        "setting": "serving.max_body_bytes",
        "limit": LIMIT,
    }


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_limit_is_drained_then_refused_with_its_size(gateway: Gateway, declared: bool) -> None:
    client = Client([b"x" * 1000] * 10)
    headers = {b"content-length": b"10000"} if declared else {b"transfer-encoding": b"chunked"}
    call(gateway, client, headers=headers)
    status, sent_headers, answer = client.answer()
    assert (status, answer) == (413, body_413("10000 bytes"))
    assert client.taken == 10 and b"connection" not in sent_headers  # all read: the connection can stay open


def test_a_body_that_waits_for_100_continue_is_refused_unread_and_the_connection_closed(gateway: Gateway) -> None:
    client = Client([b"x" * 10000])
    call(gateway, client, headers={b"content-length": b"10000", b"expect": b"100-continue"})
    status, sent_headers, answer = client.answer()
    assert (status, answer) == (413, body_413("10000 bytes"))
    assert client.taken == 0 and sent_headers[b"connection"] == b"close"


def test_a_client_that_stalls_mid_body_is_answered_after_the_drain_time_and_closed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving.http, "DRAIN_S", 0.05)
    client = Client([b"x" * 5000], stall=True)
    call(gateway, client, headers={b"transfer-encoding": b"chunked"})
    status, sent_headers, answer = client.answer()
    assert (status, answer) == (413, body_413("more than 5000 bytes"))
    assert sent_headers[b"connection"] == b"close"


def test_an_unread_body_is_drained_before_any_answer(gateway: Gateway) -> None:
    client = Client([b"x" * 100] * 5)
    call(gateway, client, path="/nowhere", headers={b"content-length": b"500"})
    status, sent_headers, _ = client.answer()
    assert (status, client.taken) == (404, 5) and b"connection" not in sent_headers


@pytest.mark.parametrize(("rows", "status"), [(3, 503), (4, 413)])
def test_a_batch_over_max_batch_size_is_refused_naming_it(gateway: Gateway, rows: int, status: int) -> None:
    client = Client([orjson.dumps({"records": [{}] * rows})])
    call(gateway, client)
    got, _, answer = client.answer()
    assert got == status  # 503 within the limit: this gateway serves no model
    if status == 413:
        assert answer == {
            "error": "request has 4 records, over serving.max_batch_size = 3",
            "setting": "serving.max_batch_size",
            "limit": 3,
        }
