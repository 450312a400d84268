"""Several serving processes behind one port (`serving.replicas: N`, run by `tollgate serve --supervise`).

The supervisor (tollgate/app/supervise.py) binds the public port once and forks N serving processes that all
accept on it: the kernel hands each new connection to one of them, and connections that arrive while one is being
restarted wait in the shared backlog for the others. Each replica also listens on a port of its own
(`serving.replica_base_port + index`, or one the OS picks when that is 0): its own `/metrics` for Prometheus to
scrape, and where its siblings reach it.

A change that arrives at one replica (an admin reload, rollback or lease renewal through the public port) is
applied there, then passed on to every other replica on its own port with REPLICA_HEADER set (so it is applied
there and not passed on again); the admin call answers only when every replica has taken it, and with an error
naming the replica that did not. `/admin/state` sums the counters of all replicas and lists each one.

Each replica writes its own prediction-log segments (named by its pid); readers merge them (tollgate/predlog.py).
A rollout lease that lapses is acted on in the registry by replica 0 alone; the others stop serving the
challenger at once and wait for the reload replica 0 passes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

REPLICA_HEADER = "x-tollgate-replica"  # set on a change passed on by a sibling: apply it here only
_REPLICA_HEADER_BYTES = REPLICA_HEADER.encode()


def from_sibling(headers: Mapping[bytes, bytes]) -> bool:
    """Whether a request was passed on by another replica (apply it, do not pass it on)."""
    return _REPLICA_HEADER_BYTES in headers


@dataclass(frozen=True)
class Replicas:
    """Where this serving process stands among its siblings: its index and every replica's own port."""

    index: int
    host: str
    ports: tuple[int, ...]  # replica i's own port, in index order
    token: str | None  # the admin token: a sibling checks it like any admin request
    timeout_s: float = 60.0  # how long a sibling may take to apply a change (serving.reload_timeout_s)

    @property
    def count(self) -> int:
        return len(self.ports)

    def url(self, index: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.ports[index]}"

    async def tell(self, method: str, path: str, body: bytes = b"") -> list[dict[str, Any]]:
        """Send one admin request to every other replica at once; one answer each, in index order:
        {"replica", "ok", "status", "body" (parsed JSON) or "error"}."""
        headers = {REPLICA_HEADER: str(self.index)}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body:
            headers["Content-Type"] = "application/json"
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=headers) as client:
            calls = [self._one(client, i, method, path, body) for i in range(self.count) if i != self.index]
            return list(await asyncio.gather(*calls))

    async def _one(self, client: httpx.AsyncClient, index: int, method: str, path: str, body: bytes) -> dict[str, Any]:
        try:
            resp = await client.request(method, f"{self.url(index)}{path}", content=body or None)
        except httpx.HTTPError as exc:
            return {"replica": index, "ok": False, "status": None, "error": f"unreachable: {exc!r}"}
        try:
            parsed = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            parsed = None
        if resp.status_code >= 400 or not isinstance(parsed, dict):
            return {"replica": index, "ok": False, "status": resp.status_code, "error": resp.text[:500]}
        return {"replica": index, "ok": True, "status": resp.status_code, "body": parsed}


def failures(answers: list[dict[str, Any]]) -> str | None:
    """What went wrong passing a change on ('replica 1: ...; replica 2: ...'), or None when every sibling took it."""
    failed = [f"replica {a['replica']} ({a['status'] or 'no answer'}): {a['error']}" for a in answers if not a["ok"]]
    return "; ".join(failed) or None


COUNTERS = ("shadow_compared", "shadow_disagreed", "batches", "batch_rows")


def summed(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The counters of several replicas' /admin/state added up (predictions and errors per key, the rest as is)."""
    out: dict[str, Any] = {"predictions": {}, "errors": {}, **{key: 0 for key in COUNTERS}}
    for state in states:
        for group in ("predictions", "errors"):
            for key, n in state.get(group, {}).items():
                out[group][key] = out[group].get(key, 0) + int(n)
        for key in COUNTERS:
            out[key] += int(state.get(key, 0))
    return out
