"""The gateway's connection-level self-protection under uvicorn (httptools): a deadline for request headers and a
cap on open connections, in a small subclass of uvicorn's HttpToolsProtocol that `run_uvicorn` hands to
`uvicorn.Config(http=...)`.

uvicorn 0.54 has no timeout for a connection that never finishes its request headers: its keep-alive timer starts
only after a response, and any byte received cancels it. A client that connects and then sends nothing, or a byte
now and then, holds a descriptor for ever; 20,400 of them exhausted the gateway's descriptors and every client was
reset for a minute (issue 32). So:

- headers: a connection whose request headers are not complete within serving.header_timeout_s of its opening or
  of its previous answer is closed. It is a total deadline, armed once and never pushed back by bytes arriving, so
  a client trickling a byte a second is closed on time. When part of a request had come, a 408 naming the setting
  is sent first; a connection that sent nothing is just closed (a keep-alive client may be reusing it at that very
  moment and must not read a 408 as the answer to its next request).
- header size: a request head (request line and headers) larger than serving.max_header_bytes gets a 431 naming
  the setting and the connection is closed. httptools itself has no such limit, and a head that never ends costs
  the parser memory and (it joins the pieces of a header) CPU that grows with its square: one connection sending a
  few hundred MB of one header kept uvicorn busy for minutes.
- connections: a connection over serving.max_connections is answered at once, before anything is read, with a 503
  naming the setting and `Retry-After` (the slots held by unfinished requests free up within header_timeout_s), and
  closed; so idle clients never exhaust the descriptors. uvicorn's own `limit_concurrency` answers only once a
  request's headers are complete, which a slow client never lets happen.
- descriptors: `raise_fd_limit` lifts the RLIMIT_NOFILE soft limit to the hard one at start, and `connection_cap`
  lowers the cap (with a warning) where the limit would leave no room for it, so the cap is what bites.

Each refusal is counted in tollgate_limit_refusals_total{limit} (a label from serving.metrics.LIMITS).
"""

from __future__ import annotations

import asyncio
import http
import logging
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving.http import Limit, Response

log = logging.getLogger("tollgate.gateway")

# Descriptors kept for everything but client connections (prediction log segments, the model's and the release's
# files, registry and MLflow clients, executor threads, pipes) and for the instant a refused connection holds one.
FD_RESERVE = 1024


@dataclass(frozen=True)
class Guard:
    """The connection limits of one gateway and where their refusals are counted."""

    header_timeout: Limit  # serving.header_timeout_s
    max_header_bytes: Limit  # serving.max_header_bytes
    max_connections: Limit  # serving.max_connections (as lowered by connection_cap)
    count: Callable[[str], None]  # GatewayMetrics.refusal

    @property
    def retry_after_s(self) -> int:
        """What a refused client is told to wait: by then the slots of unfinished requests have been freed."""
        return max(1, math.ceil(self.header_timeout.value))

    def over_capacity(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The 503 for a connection over the cap, as bytes on the wire."""
        what = "too many open connections"
        return wire(
            self.max_connections.refuse(what, 503), default_headers, [(b"retry-after", b"%d" % self.retry_after_s)]
        )

    def too_large(self, size: int, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The 431 for a request head over the size limit, as bytes on the wire."""
        what = f"request head is more than {size} bytes"
        return wire(self.max_header_bytes.refuse(what, 431), default_headers, [])

    def too_slow(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The 408 for a connection whose request headers were not complete by the deadline, as bytes."""
        return wire(self.header_timeout.refuse("request headers not complete in time", 408), default_headers, [])


def wire(response: Response, default_headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> bytes:
    """`response` as an HTTP/1.1 message that closes the connection (for answers sent outside any ASGI request)."""
    status = response.status
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
    headers = [
        *default_headers,
        (b"content-type", response.content_type),
        (b"content-length", b"%d" % len(response.body)),
        *extra,
        (b"connection", b"close"),
    ]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join([*lines, b"\r\n", response.body])


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the header deadline and the connection cap of `guard` (set on the
    subclass `guarded_protocol` makes)."""

    guard: ClassVar[Guard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.refused = False  # over the cap: answered and closed, never one of uvicorn's connections
        self.deadline: asyncio.TimerHandle | None = None  # armed while request headers are awaited
        self.partial = False  # part of a request's head has come, not all of it
        self.head_bytes = 0  # bytes received since the last complete head while a head was awaited or under way
        self.answered = 0  # responses completed on this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.guard.max_connections.value:
            self.refused = True
            self.guard.count(self.guard.max_connections.name)
            transport.write(self.guard.over_capacity(self.server_state.default_headers))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self.refused:  # a refused connection never became one of uvicorn's
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.transport.is_closing():
            return
        if self._in_head():
            self.head_bytes += len(data)
        super().data_received(data)
        # still in a head after all this, and over the limit: refused. Checked after feeding, so the start of a body
        # that came with the end of its head is never counted against the head (on_headers_complete resets it).
        if self._in_head() and self.head_bytes > self.guard.max_header_bytes.value and not self.transport.is_closing():
            self._disarm()
            self.guard.count(self.guard.max_header_bytes.name)
            self.transport.write(self.guard.too_large(self.head_bytes, self.server_state.default_headers))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.partial = True

    def on_headers_complete(self) -> None:
        self.partial, self.head_bytes = False, 0
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        waiting = not self.pipeline  # else the next request, headers complete, starts now
        super().on_response_complete()
        self.answered += 1
        if waiting and not self.transport.is_closing():
            self._arm()

    def _in_head(self) -> bool:
        """Whether the bytes arriving now belong to a request head: one is awaited (the deadline is armed) or under
        way (also one pipelined behind a request still being answered)."""
        return self.partial or self.deadline is not None

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.guard.header_timeout.value, self._headers_late)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _headers_late(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.partial or not self.answered:  # not an idle keep-alive connection: a slow or silent client
            self.guard.count(self.guard.header_timeout.name)
        if self.partial:
            self.transport.write(self.guard.too_slow(self.server_state.default_headers))
        self.transport.close()


def guarded_protocol(guard: Guard) -> type[GuardedProtocol]:
    """A GuardedProtocol class bound to `guard`, for `uvicorn.Config(http=...)`."""
    return type("GuardedProtocol", (GuardedProtocol,), {"guard": guard})


def raise_fd_limit() -> int:
    """Lift the process's RLIMIT_NOFILE soft limit to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # keep serving with the limit there is; connection_cap says what bites
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(configured: int, fd_soft_limit: int) -> int:
    """serving.max_connections, lowered (with a warning) to what `fd_soft_limit` leaves after FD_RESERVE, so that a
    connection over the cap is refused with a 503 rather than failing to be accepted at all."""
    if fd_soft_limit == resource.RLIM_INFINITY or configured <= fd_soft_limit - FD_RESERVE:
        return configured
    cap = max(1, fd_soft_limit - FD_RESERVE)
    log.warning(
        "serving.max_connections = %d does not fit the descriptor limit %d (RLIMIT_NOFILE, %d kept for the rest): "
        "capped at %d; raise the hard limit (ulimit -Hn) to allow more",
        configured,
        fd_soft_limit,
        FD_RESERVE,
        cap,
    )
    return cap
