"""ASGI plumbing: lifespan hooks, a fixed route table, body reading with a size limit, JSON responses, and the
per-request metrics (route label from a fixed set, status, /predict latency). Nothing a handler raises
crashes the worker: it becomes a 500 counted as an internal error."""

from __future__ import annotations

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
MAX_BODY = 20 * 1024 * 1024
JSON = b"application/json"


class BodyTooLarge(Exception):
    """The request body exceeds MAX_BODY."""


@dataclass(frozen=True)
class Request:
    """What a handler sees of one HTTP request."""

    method: str
    path: str
    headers: Mapping[bytes, bytes]
    receive: Receive
    start: float

    async def body(self) -> bytes:
        """The whole body; raises BodyTooLarge past MAX_BODY."""
        return await read_body(self.receive)


@dataclass(frozen=True)
class Response:
    """Status, encoded body and content type."""

    status: int
    body: bytes
    content_type: bytes = JSON


def json_response(status: int, payload: Any) -> Response:
    """A JSON response (numpy values allowed)."""
    return Response(status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))


def invalid_json(exc: Exception) -> Response:
    """The 422 for a body that is not JSON."""
    return json_response(422, {"detail": [{"field": "body", "error": f"not valid JSON: {exc}"}]})


Handler = Callable[[Request], Awaitable[Response]]


async def read_body(receive: Receive) -> bytes:
    """Concatenate the body chunks; raises BodyTooLarge as soon as they pass MAX_BODY."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Send, response: Response) -> None:
    """Send one complete response."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", response.content_type),
                (b"content-length", str(len(response.body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class HttpApp:
    """An ASGI app over exact (method, path) routes plus path-prefix routes (e.g. /admin/ behind a token)."""

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        prefixes: Mapping[str, Handler],
        metrics: GatewayMetrics,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ):
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
        request = Request(method, path, dict(scope.get("headers") or []), receive, time.time())
        try:
            response = await self._dispatch(request)
        except BodyTooLarge:
            response = json_response(413, {"error": f"request body over {MAX_BODY} bytes"})
        except Exception as exc:  # nothing crashes the worker
            log.exception("request failed")
            self.metrics.error("internal")
            response = json_response(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
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
