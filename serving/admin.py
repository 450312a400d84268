"""Admin routes behind the Bearer token: reload, rollback, preflight, lease, state. Every /admin/ path checks the
token first (403 when no token is configured, 401 when it is missing or wrong), and each refusal is counted. A
route that takes a JSON body acts on one only when it is declared `Content-Type: application/json` (as
tollgate.gateway_client sends it), else 415; an empty body (the defaults) needs no type."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving.http import Handler, Request, Response, invalid_json, json_response, not_json
from serving.metrics import GatewayMetrics
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
    ):
        self.token = token
        self.disabled_hint = disabled_hint
        self.registry = registry
        self.reload = reload
        self.describe = describe
        self.metrics = metrics
        self.preflight = preflight  # load + smoke-test a rollback target before the registry moves
        self.lease = lease  # hold a challenger for a while (serving/lease.py)
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

    async def _reload(self, request: Request) -> Response:
        try:
            return json_response(200, await self.reload())
        except Exception as exc:
            self.metrics.error("untrusted_release" if isinstance(exc, UntrustedRelease) else "reload")
            return json_response(502, {"error": f"reload failed, still serving {self.describe()}: {exc}"})

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
        return json_response(200, {"from": before, "to": after, "served": state["champion"] == after, **state})

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
        return json_response(200, self.lease(version, float(until_s)))

    async def _state(self, request: Request) -> Response:
        return json_response(200, {**self.describe(), **self.metrics.state()})
