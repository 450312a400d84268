"""The gateway protects itself (issue 32.5), in process: a body must be declared JSON (415), no string of a record
may be longer than serving.max_string_length (422 naming the field), a body late for serving.body_timeout_s gets a
408 and a closed connection; and the uvicorn protocol class (serving/connections.py) closes a connection whose
request headers are late however it trickles or whose head is over serving.max_header_bytes, and answers one
over serving.max_connections with 503 at once.
Every refusal names its setting and is counted with a label from a fixed set."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from serving.app import Gateway
from serving.connections import Guard, guarded_protocol
from serving.http import Limit
from serving.metrics import LIMITS
from serving.release import Release, Routing
from tests.helpers import GOOD_RECORD, bundled_config
from tollgate.paths import StatePaths

MAX_STRING = 32
RECORD = GOOD_RECORD
JSON = {b"content-type": b"application/json"}


@pytest.fixture()
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """A gateway that is never started, serving a stand-in release of the bundled config (its schema is real);
    the batcher answers every valid record with a fixed score and counts what it was given."""
    monkeypatch.setenv("TOLLGATE_ADMIN_TOKEN", "unit-token")
    cfg = bundled_config(
        {"TOLLGATE__SERVING__MAX_STRING_LENGTH": str(MAX_STRING), "TOLLGATE__SERVING__BODY_TIMEOUT_S": "0.2"}
    )
    gw = Gateway(cfg, StatePaths(tmp_path))
    gw.routing = Routing(Release.of("1", "run-1", None, cfg))
    gw.scored = []  # type: ignore[attr-defined]

    async def submit(records: list[Any], routing: Routing, start: float) -> list[dict[str, Any]]:
        gw.scored += records  # type: ignore[attr-defined]
        return [{"score": 0.5} for _ in records]

    gw.batcher.submit = submit  # type: ignore[method-assign]
    return gw


def call(
    gw: Gateway,
    body: bytes,
    headers: dict[bytes, bytes] | None = None,
    path: str = "/predict",
    stall: bool = False,
) -> tuple[int, dict[bytes, bytes], Any]:
    """One request through the ASGI app: status, headers and decoded body. With `stall` the client sends `body`
    and then nothing more, without closing."""
    messages = [{"type": "http.request", "body": body, "more_body": stall}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list((headers or {}).items())}
    asyncio.run(gw(scope, receive, send))  # type: ignore[arg-type]
    start, answer = sent
    return start["status"], dict(start["headers"]), orjson.loads(answer["body"])


def refusals(gw: Gateway) -> dict[str, float]:
    """tollgate_limit_refusals_total by its `limit` label."""
    return {
        s.labels["limit"]: s.value
        for family in gw.metrics.limit_refusals.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


# -- Content-Type ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x"]
)
def test_a_body_not_declared_json_is_refused_with_415_and_not_scored(
    gateway: Gateway, content_type: bytes | None
) -> None:
    headers = {b"content-type": content_type} if content_type else {}
    status, _, answer = call(gateway, orjson.dumps(RECORD), headers)
    assert status == 415 and answer["expected"] == "application/json"
    assert answer["error"].endswith("; expected application/json")
    assert gateway.scored == []  # type: ignore[attr-defined]
    assert refusals(gateway)["content_type"] == 1


@pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8", b"Application/JSON"])
def test_json_with_or_without_parameters_is_scored(gateway: Gateway, content_type: bytes) -> None:
    status, _, answer = call(gateway, orjson.dumps(RECORD), {b"content-type": content_type})
    assert (status, answer) == (200, {"score": 0.5})


def test_the_admin_json_routes_want_json_too(gateway: Gateway) -> None:
    auth = {b"authorization": b"Bearer unit-token"}
    body = orjson.dumps({"version": "2", "until_s": 5})
    status, _, answer = call(gateway, body, {**auth, b"content-type": b"text/plain"}, "/admin/lease")
    assert status == 415 and answer["expected"] == "application/json"
    assert gateway.leases.deadlines == {}
    assert call(gateway, body, {**auth, **JSON}, "/admin/lease")[0] == 200


# -- string length -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "what"),
    [
        ({"customer_id": "C" * 1_000_000}, "customer_id", "a string of 1000000 characters"),
        ({"region": "n" * (MAX_STRING + 1)}, "region", f"a string of {MAX_STRING + 1} characters"),
        ({"note": "x" * 500}, "note", "a string of 500 characters"),  # a field the schema does not know
        ({"k" * 100: 1}, "k" * 80 + "...", "a field name of 100 characters"),
    ],
)
def test_a_string_over_max_string_length_is_a_422_naming_the_field_before_anything_is_scored(
    gateway: Gateway, change: dict[str, Any], field: str, what: str
) -> None:
    body = orjson.dumps({"records": [RECORD, {**RECORD, **change}]})
    status, _, answer = call(gateway, body, JSON)
    assert status == 422
    assert answer == {
        "detail": [
            {
                "field": f"records[1].{field}",
                "error": f"{what}, over serving.max_string_length = {MAX_STRING}",
                "setting": "serving.max_string_length",
                "limit": MAX_STRING,
            }
        ]
    }
    assert gateway.scored == []  # type: ignore[attr-defined]  # nor the valid record 0: nothing is scored
    assert refusals(gateway)["max_string_length"] == 1


def test_a_string_at_the_limit_is_fine_and_a_single_record_names_the_bare_field(gateway: Gateway) -> None:
    assert call(gateway, orjson.dumps({**RECORD, "customer_id": "C" * MAX_STRING}), JSON)[0] == 200
    status, _, answer = call(gateway, orjson.dumps({**RECORD, "customer_id": "C" * (MAX_STRING + 1)}), JSON)
    assert status == 422 and answer["detail"][0]["field"] == "customer_id"


def test_a_long_non_string_value_is_not_echoed_whole(gateway: Gateway) -> None:
    status, _, answer = call(gateway, orjson.dumps({**RECORD, "tenure_months": [1] * 100_000}), JSON)
    assert status == 422
    (error,) = answer["detail"]
    assert error["field"] == "tenure_months" and len(error["error"]) < 200


# -- body deadline -----------------------------------------------------------------------------------------


def test_a_body_late_for_body_timeout_s_gets_408_naming_it_and_the_connection_closed(gateway: Gateway) -> None:
    status, headers, answer = call(gateway, b'{"customer_id": ', {**JSON, b"content-length": b"500"}, stall=True)
    assert status == 408 and headers[b"connection"] == b"close"
    assert answer == {
        "error": "request body not complete in time (16 bytes came), over serving.body_timeout_s = 0.2",
        "setting": "serving.body_timeout_s",
        "limit": 0.2,
    }
    assert refusals(gateway)["body_timeout_s"] == 1


def test_a_body_nobody_reads_is_not_waited_for_past_its_deadline(gateway: Gateway) -> None:
    # an unknown route does not read its body; the drain that lets the client read the answer stops at the deadline
    status, headers, _ = call(gateway, b"x" * 10, {b"content-length": b"500"}, path="/nowhere", stall=True)
    assert status == 404 and headers[b"connection"] == b"close"


def test_every_limit_label_is_there_from_the_start(gateway: Gateway) -> None:
    assert refusals(gateway) == dict.fromkeys(LIMITS, 0.0)
    with pytest.raises(ValueError, match="unknown limit"):
        gateway.metrics.refusal("anything a client sent")


# -- the uvicorn protocol: header deadline and connection cap -------------------------------------------------


class Transport:
    """What the protocol writes and whether it closed the connection (an asyncio.Transport stand-in)."""

    def __init__(self) -> None:
        self.written = b""
        self.closed_at: float | None = None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = asyncio.get_running_loop().time()

    def is_closing(self) -> bool:
        return self.closed_at is not None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def health(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


HEADER_TIMEOUT = 0.3
MAX_HEAD = 4096


def protocol_run(script: Any, max_connections: int = 10) -> list[str]:
    """Run `script(connect)` on an event loop, where connect() opens one guarded connection (protocol, transport)
    sharing one server state; returns the refusals counted."""
    counted: list[str] = []
    guard = Guard(
        Limit("serving.header_timeout_s", HEADER_TIMEOUT),
        Limit("serving.max_header_bytes", MAX_HEAD),
        Limit("serving.max_connections", max_connections),
        counted.append,
    )
    cls = guarded_protocol(guard)

    async def main() -> None:
        config = uvicorn.Config(health, http=cls, lifespan="off", log_level="warning")
        state = ServerState()

        def connect() -> tuple[Any, Transport]:
            proto, transport = cls(config, state, {}, asyncio.get_running_loop()), Transport()
            proto.connection_made(transport)  # type: ignore[arg-type]
            return proto, transport

        await script(connect)

    asyncio.run(main())
    return counted


def test_a_connection_trickling_its_headers_is_closed_at_the_deadline_with_a_408() -> None:
    async def script(connect: Any) -> None:
        loop = asyncio.get_running_loop()
        proto, transport = connect()
        opened = loop.time()
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # a byte every 20 ms, never the end of the headers
            if transport.is_closing():
                break
            proto.data_received(bytes([byte]))
            await asyncio.sleep(0.02)
        await asyncio.sleep(HEADER_TIMEOUT)
        assert transport.closed_at is not None
        assert HEADER_TIMEOUT <= transport.closed_at - opened < HEADER_TIMEOUT + 0.15  # a total deadline
        assert transport.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        body = orjson.loads(transport.written.split(b"\r\n\r\n", 1)[1])
        assert body["setting"] == "serving.header_timeout_s" and body["limit"] == HEADER_TIMEOUT
        proto.connection_lost(None)

    assert protocol_run(script) == ["header_timeout_s"]


def test_headers_in_time_are_served_and_an_idle_keep_alive_is_closed_quietly() -> None:
    async def script(connect: Any) -> None:
        loop = asyncio.get_running_loop()
        proto, transport = connect()
        await asyncio.sleep(HEADER_TIMEOUT / 2)
        proto.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.01)
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        answered = loop.time()
        await asyncio.sleep(HEADER_TIMEOUT * 0.7)  # past the first deadline: the complete headers disarmed it
        assert not transport.is_closing()
        await asyncio.sleep(HEADER_TIMEOUT)  # re-armed by the answer: an idle keep-alive, closed, no 408
        assert transport.closed_at is not None and transport.closed_at - answered >= HEADER_TIMEOUT - 0.02
        assert transport.written.count(b"HTTP/1.1") == 1
        proto.connection_lost(None)

    assert protocol_run(script) == []  # an idle keep-alive connection is not a refusal


def test_a_silent_connection_is_closed_and_counted() -> None:
    async def script(connect: Any) -> None:
        proto, transport = connect()
        await asyncio.sleep(HEADER_TIMEOUT + 0.1)
        assert transport.is_closing() and transport.written == b""
        proto.connection_lost(None)

    assert protocol_run(script) == ["header_timeout_s"]


def test_a_connection_over_max_connections_gets_503_with_retry_after_at_once() -> None:
    async def script(connect: Any) -> None:
        held = [connect() for _ in range(2)]
        proto, transport = connect()
        assert transport.is_closing() and not any(t.is_closing() for _, t in held)
        head, body = transport.written.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nretry-after: 1\r\n" in head and b"\r\nconnection: close" in head
        assert orjson.loads(body) == {
            "error": "too many open connections, over serving.max_connections = 2",
            "setting": "serving.max_connections",
            "limit": 2,
        }
        proto.data_received(b"GET /health HTTP/1.1\r\n\r\n")  # never served
        proto.connection_lost(None)
        held[0][0].connection_lost(None)
        _, again = connect()  # a slot freed: served again
        assert not again.is_closing()
        for p, _ in held[1:]:
            p.connection_lost(None)

    assert protocol_run(script, max_connections=2) == ["max_connections"]


def test_a_head_over_max_header_bytes_gets_431_but_a_body_that_came_with_the_head_does_not_count() -> None:
    async def script(connect: Any) -> None:
        proto, transport = connect()
        start = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
        proto.data_received(start)
        for _ in range(10):  # one header that never ends, 1 KiB at a time
            if transport.is_closing():
                break
            proto.data_received(b"a" * 1024)
        head, _, body = transport.written.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n") and transport.is_closing()
        answer = orjson.loads(body)
        assert answer["setting"] == "serving.max_header_bytes" and answer["limit"] == MAX_HEAD
        size = len(start) + MAX_HEAD  # refused with the first piece that took it over the limit
        assert answer["error"] == f"request head is more than {size} bytes, over serving.max_header_bytes = {MAX_HEAD}"
        proto.connection_lost(None)

        proto, transport = connect()  # a small head and a large body in one piece: served
        body = b"x" * (MAX_HEAD * 4)
        proto.data_received(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await asyncio.sleep(0.01)
        assert transport.written.startswith(b"HTTP/1.1 200 OK") and not transport.is_closing()
        proto.connection_lost(None)

        proto, transport = connect()  # an endless head pipelined behind a request being answered: counted too
        proto.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + start)
        for _ in range(10):
            if not transport.is_closing():
                proto.data_received(b"a" * 1024)
        assert transport.is_closing() and b"HTTP/1.1 431 " in transport.written
        proto.connection_lost(None)

    assert protocol_run(script) == ["max_header_bytes", "max_header_bytes"]
