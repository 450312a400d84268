"""ASGI plumbing: lifespan hooks, a fixed route table, body reading with a size limit and a deadline, JSON
responses, and the per-request metrics (route label from a fixed set, status, /predict latency). Nothing a
handler raises crashes the worker: it becomes a 500 counted as an internal error.

A request over a limit gets a 413 naming the setting, never a connection reset. uvicorn closes the connection
as soon as a response is sent when the client asked for that (`Connection: close`, HTTP/1.0, urllib); a close
with request bytes still unread makes the kernel send a reset, which the client sees instead of the answer.
So before any response the rest of an unread body is read and dropped (within DRAIN_S), and a body that was
never asked for (`Expect: 100-continue`, not yet sent) is answered with `Connection: close` instead.

A body not complete within serving.body_timeout_s of its request's headers gets a 408 naming the setting and the
connection is closed (nothing more is waited for: a client that slow is the one the deadline is for). Every
refusal by a limit is counted in tollgate_limit_refusals_total{limit}.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from serving.metrics import GatewayMetrics

log = logging.getLogger("tollgate.gateway")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = b"application/json"
JSON_TYPE = JSON.decode()
# How long the rest of an unwanted body is read and dropped before answering (nginx's lingering_time): a client
# that is still sending after this gets its answer on a closed connection, and may see a reset.
DRAIN_S = 30.0


@dataclass(frozen=True)
class Limit:
    """A configured request limit: the setting's dotted name and its value."""

    setting: str
    value: int | float

    @property
    def name(self) -> str:
        """The setting's own name (its metrics label): 'max_body_bytes' for 'serving.max_body_bytes'."""
        return self.setting.rsplit(".", 1)[-1]

    def refuse(self, what: str, status: int = 413) -> Response:
        """The answer (413 unless told) naming this limit; `what` says what was over it (e.g. 'request body is
        52428800 bytes')."""
        return json_response(
            status,
            {"error": f"{what}, over {self.setting} = {self.value}", "setting": self.setting, "limit": self.value},
        )


class BodyTooLarge(Exception):
    """The request body is over its limit (raised once that is known, with the rest of the body unread)."""


class BodyTimeout(Exception):
    """The request body was not complete by its deadline (serving.body_timeout_s after the headers)."""


class Body:
    """One request's body stream: read whole up to a limit, or drained (read and dropped) so that the connection
    can be answered, and closed if it must be, without a reset."""

    def __init__(self, receive: Receive, headers: Mapping[bytes, bytes], limit: int | float, deadline: float):
        self.receive = receive
        self.limit = limit
        self.deadline = deadline  # event-loop time by which the whole body must have arrived
        length = headers.get(b"content-length")
        self.declared = int(length) if length is not None and length.isdigit() else None
        self.done = False  # until the server says no more is coming (one receive when there is no body)
        self.awaits_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        self.received = 0  # bytes taken off the connection so far (kept or dropped)

    async def _next(self) -> bytes:
        # uvicorn sends the `100 Continue` on the first receive, so after it the client is sending
        self.awaits_continue = False
        message = await self.receive()
        chunk: bytes = message.get("body", b"")
        self.received += len(chunk)
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            self.done = True
        return chunk

    async def read(self) -> bytes:
        """The whole body; raises BodyTooLarge, before reading it, when its Content-Length is over the limit, and
        as soon as the bytes received pass the limit otherwise; BodyTimeout when it is not all in by the deadline."""
        if self.declared is not None and self.declared > self.limit:
            raise BodyTooLarge
        chunks = []
        try:
            async with asyncio.timeout_at(self.deadline):
                while not self.done:
                    chunks.append(await self._next())
                    if self.received > self.limit:
                        raise BodyTooLarge
        except TimeoutError:
            raise BodyTimeout from None
        return b"".join(chunks)

    async def drain(self) -> bool:
        """Read and drop what is left of the body within DRAIN_S and by the body's deadline; True when it is all
        read, so the connection may stay open. A client still waiting for `100 Continue` has sent nothing: it is
        not asked to (False), since closing then loses nothing and on an open connection its next request would
        be read as this body."""
        if self.awaits_continue:
            return False
        try:
            async with asyncio.timeout_at(min(self.deadline, asyncio.get_running_loop().time() + DRAIN_S)):
                while not self.done:
                    await self._next()
        except TimeoutError:
            return False
        return True

    def size(self) -> str:
        """The body's length as far as it is known: declared, counted whole, or 'more than' what was read."""
        if self.declared is not None:
            return f"{self.declared} bytes"
        return f"{self.received} bytes" if self.done else f"more than {self.received} bytes"


@dataclass(frozen=True)
class Request:
    """What a handler sees of one HTTP request."""

    method: str
    path: str
    headers: Mapping[bytes, bytes]
    stream: Body
    start: float

    async def body(self) -> bytes:
        """The whole body; raises BodyTooLarge when it is over the body limit, BodyTimeout when it is late."""
        return await self.stream.read()

    def declared_json(self) -> bool:
        """Whether the request says its body is JSON: `Content-Type: application/json`, parameters allowed."""
        media_type = self.headers.get(b"content-type", b"").split(b";", 1)[0]
        return media_type.strip().lower() == JSON


@dataclass(frozen=True)
class Response:
    """Status, encoded body, content type, and whether the connection is to be closed after it."""

    status: int
    body: bytes
    content_type: bytes = JSON
    close: bool = False


def json_response(status: int, payload: Any) -> Response:
    """A JSON response (numpy values allowed)."""
    return Response(status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))


def invalid_json(exc: Exception) -> Response:
    """The 422 for a body that is not JSON."""
    return json_response(422, {"detail": [{"field": "body", "error": f"not valid JSON: {exc}"}]})


def not_json(request: Request) -> Response:
    """The 415 for a body that is not declared `Content-Type: application/json` (what was sent, cut short)."""
    sent = request.headers.get(b"content-type")
    said = "no Content-Type" if sent is None else f"Content-Type {sent[:100].decode('latin-1')!r}"
    return json_response(415, {"error": f"{said}; expected {JSON_TYPE}", "expected": JSON_TYPE})


Handler = Callable[[Request], Awaitable[Response]]


async def respond(send: Send, response: Response) -> None:
    """Send one complete response."""
    headers = [(b"content-type", response.content_type), (b"content-length", str(len(response.body)).encode())]
    if response.close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


class HttpApp:
    """An ASGI app over exact (method, path) routes plus path-prefix routes (e.g. /admin/ behind a token); a
    request body over `max_body` gets the 413 naming it, one not complete within `body_timeout` seconds of the
    request's headers the 408 naming that."""

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        prefixes: Mapping[str, Handler],
        metrics: GatewayMetrics,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        max_body: Limit,
        body_timeout: Limit,
    ):
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.routes = dict(routes)
        self.prefixes = dict(prefixes)
        self.metrics = metrics
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        deadline = asyncio.get_running_loop().time() + self.body_timeout.value
        stream = Body(receive, headers, self.max_body.value, deadline)
        request = Request(method, path, headers, stream, time.time())
        response: Response | None
        late = False
        try:
            response = await self._dispatch(request)
        except BodyTooLarge:
            response = None  # answered below, once the rest is drained and the size known
        except BodyTimeout:
            late = True
            self.metrics.refusal(self.body_timeout.name)
            what = f"request body not complete in time ({stream.received} bytes came)"
            response = self.body_timeout.refuse(what, 408)
        except Exception as exc:  # nothing crashes the worker
            log.exception("request failed")
            self.metrics.error("internal")
            response = json_response(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        # whatever the answer, the client must be able to finish sending and then read it (but a body past its
        # deadline is not waited for any longer)
        keep_open = stream.done or (not late and await stream.drain())
        if response is None:
            self.metrics.refusal(self.max_body.name)
            response = self.max_body.refuse(f"request body is {stream.size()}")
        if not keep_open:
            response = dataclasses.replace(response, close=True)
        self.metrics.count_request(path, response.status)
        if path == "/predict":
            self.metrics.latency.observe(time.time() - request.start)
        await respond(send, response)

    async def _dispatch(self, request: Request) -> Response:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            handler = next((h for p, h in self.prefixes.items() if request.path.startswith(p)), None)
        if handler is None:
            return json_response(404, {"error": f"no route {request.method} {request.path}"})
        return await handler(request)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
