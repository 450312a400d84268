"""Admin routes behind the Bearer token: reload, rollback, preflight, lease, state. Every /admin/ path checks the
token first (403 when no token is configured, 401 when it is missing or wrong), and each refusal is counted. A
route that takes a JSON body acts on one only when it is declared `Content-Type: application/json` (as
tollgate.gateway_client sends it), else 415; an empty body (the defaults) needs no type.

With several replicas (serving/replicas.py) a reload, rollback or lease renewal is passed on to every other replica
before it is answered (502 naming a replica that did not take it), and /admin/state sums them all."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving.http import Handler, Request, Response, invalid_json, json_response, not_json
from serving.metrics import GatewayMetrics
from serving.replicas import Replicas, failures, from_sibling, summed
from serving.scoring import SmokeFailed
from tollgate.provenance import UntrustedRelease
from tollgate.registry import Registry, RegistryError, VersionInfo, rollback_release


class Admin:
    """The /admin/ routes of one gateway."""

    def __init__(
        self,
        token: str | None,
        disabled_hint: str,
        registry: Registry,
        reload: Callable[[], Awaitable[dict[str, Any]]],
        describe: Callable[[], dict[str, Any]],
        metrics: GatewayMetrics,
        preflight: Callable[[VersionInfo], None],
        lease: Callable[[str, float], dict[str, Any]],
        replicas: Replicas | None = None,
    ):
        self.token = token
        self.disabled_hint = disabled_hint
        self.registry = registry
        self.reload = reload
        self.describe = describe
        self.metrics = metrics
        self.preflight = preflight  # load + smoke-test a rollback target before the registry moves
        self.lease = lease  # hold a challenger for a while (serving/lease.py)
        self.replicas = replicas  # this process's siblings behind the same port, if any
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/admin/reload"): self._reload,
            ("POST", "/admin/rollback"): self._rollback,
            ("POST", "/admin/preflight"): self._preflight,
            ("POST", "/admin/lease"): self._lease,
            ("GET", "/admin/state"): self._state,
        }

    async def handle(self, request: Request) -> Response:
        """Check the token, then dispatch; the prefix handler for /admin/."""
        if not self.token:
            self.metrics.refused(request.path, "admin_disabled")
            return json_response(403, {"error": f"admin routes are disabled: {self.disabled_hint}"})
        sent = request.headers.get(b"authorization", b"")
        if not hmac.compare_digest(sent, f"Bearer {self.token}".encode()):
            self.metrics.refused(request.path, "wrong_token" if sent else "missing_token")
            return json_response(401, {"error": "missing or wrong admin token (Authorization: Bearer ...)"})
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return json_response(404, {"error": f"no admin route {request.method} {request.path}"})
        return await handler(request)

    def _untyped(self, request: Request, raw: bytes) -> Response | None:
        """The 415 (counted) when a body `raw` is there but not declared JSON; None when it may be acted on."""
        if not raw or request.declared_json():
            return None
        self.metrics.refusal("content_type")
        return not_json(request)

    async def _siblings(self, request: Request, body: bytes = b"") -> tuple[list[dict[str, Any]], str | None]:
        """Pass this request on to the other replicas (not when it came from one): their answers, and what failed."""
        if self.replicas is None or from_sibling(request.headers):
            return [], None
        answers = await self.replicas.tell(request.method, request.path, body)
        return answers, failures(answers)

    def _not_everywhere(self, what: str, failed: str, state: dict[str, Any]) -> Response:
        self.metrics.error("reload")
        return json_response(502, {"error": f"{what} on this replica, but not on every replica: {failed}", **state})

    async def _reload(self, request: Request) -> Response:
        try:
            state = await self.reload()
        except Exception as exc:
            self.metrics.error("untrusted_release" if isinstance(exc, UntrustedRelease) else "reload")
            return json_response(502, {"error": f"reload failed, still serving {self.describe()}: {exc}"})
        answers, failed = await self._siblings(request)
        if failed:
            return self._not_everywhere("reloaded", failed, state)
        return json_response(200, {**state, **_replica_rows(state, answers, self.replicas)})

    async def _rollback(self, request: Request) -> Response:
        """Registry transition + ledger (the same core function as the rollback flow), then swap at once: the
        previous release is usually still warm in memory."""
        raw = await request.body()
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return invalid_json(exc)
        if not isinstance(body, dict):
            return json_response(422, {"detail": [{"field": "body", "error": "expected a JSON object"}]})
        if untyped := self._untyped(request, raw):
            return untyped
        try:
            before, after = await asyncio.get_running_loop().run_in_executor(
                None,
                rollback_release,
                self.registry,
                body.get("to"),
                body.get("reason") or "manual",
                body.get("who"),
                body.get("flow_run_id"),
                self.preflight,
            )
        except (RegistryError, SmokeFailed) as exc:
            return json_response(409, {"error": str(exc)})
        except UntrustedRelease as exc:
            self.metrics.error("untrusted_release")
            return json_response(409, {"error": str(exc)})
        state = await self.reload()
        answers, failed = await self._siblings(dataclasses.replace(request, path="/admin/reload"))
        if failed:
            return self._not_everywhere(f"rolled back v{before} -> v{after} in the registry and", failed, state)
        served = state["champion"] == after and all(a["body"].get("champion") == after for a in answers)
        return json_response(200, {"from": before, "to": after, "served": served, **state})

    async def _preflight(self, request: Request) -> Response:
        """Load + smoke-test a version before a promotion moves the registry; changes nothing."""
        raw = await request.body()
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return invalid_json(exc)
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str) or not version:
            return json_response(422, {"detail": [{"field": "version", "error": "expected a version string"}]})
        if untyped := self._untyped(request, raw):
            return untyped
        try:
            target = await asyncio.get_running_loop().run_in_executor(None, self.registry.get, version)
            await asyncio.get_running_loop().run_in_executor(None, self.preflight, target)
        except (RegistryError, SmokeFailed) as exc:
            return json_response(409, {"error": str(exc)})
        except UntrustedRelease as exc:
            self.metrics.error("untrusted_release")
            return json_response(409, {"error": str(exc)})
        return json_response(200, {"version": version, "loaded": True, "smoke_test": "passed"})

    async def _lease(self, request: Request) -> Response:
        """Renew the lease of a challenger: {"version": "...", "until_s": seconds from now}."""
        raw = await request.body()
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return invalid_json(exc)
        body = body if isinstance(body, dict) else {}
        version, until_s = body.get("version"), body.get("until_s")
        errors = []
        if not isinstance(version, str) or not version:
            errors.append({"field": "version", "error": "expected a version string"})
        if isinstance(until_s, bool) or not isinstance(until_s, int | float) or not 0 < until_s < 1e9:
            errors.append({"field": "until_s", "error": "expected a positive number of seconds"})
        if errors or not isinstance(version, str) or not isinstance(until_s, int | float):
            return json_response(422, {"detail": errors})
        if untyped := self._untyped(request, raw):
            return untyped
        held = self.lease(version, float(until_s))
        answers, failed = await self._siblings(request, raw)
        if failed:
            return self._not_everywhere("lease renewed", failed, held)
        return json_response(200, {**held, "held": held["held"] and all(a["body"].get("held") for a in answers)})

    async def _state(self, request: Request) -> Response:
        own = {**self.describe(), **self.metrics.state(), "pid": os.getpid()}
        answers, failed = await self._siblings(request)
        if self.replicas is None or from_sibling(request.headers):
            return json_response(200, own)
        bodies = [own, *(a["body"] for a in answers if a["ok"])]
        rows = _replica_rows(own, answers, self.replicas)
        return json_response(200, {**own, **summed(bodies), **rows, **({"replicas_failed": failed} if failed else {})})


SERVED = ("champion", "challenger", "mode", "share")


def _replica_rows(own: dict[str, Any], answers: list[dict[str, Any]], replicas: Replicas | None) -> dict[str, Any]:
    """Each replica's port and what it serves (this one's first), and whether they all serve the same; {} with
    one process."""
    if replicas is None:
        return {}
    rows = [{"replica": replicas.index, "port": replicas.ports[replicas.index], "ok": True, **_served(own)}]
    for a in answers:
        rows.append(
            {"replica": a["replica"], "port": replicas.ports[a["replica"]], "ok": a["ok"], **_served(a.get("body"))}
        )
    rows.sort(key=lambda r: r["replica"])
    agree = all(r["ok"] for r in rows) and len({tuple(r.get(k) for k in SERVED) for r in rows}) == 1
    return {"replicas": rows, "replicas_agree": agree}


def _served(body: dict[str, Any] | None) -> dict[str, Any]:
    """What one replica's answer says it serves (and its pid and prediction count, from /admin/state)."""
    if body is None:
        return {}
    out = {k: body.get(k) for k in SERVED}
    if "pid" in body:
        out["pid"] = body["pid"]
    if "predictions" in body:
        out["predictions"] = sum(int(n) for n in body["predictions"].values())
    return out
