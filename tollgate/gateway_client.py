"""A small client for the gateway (used by flows, the CLI and tests)."""

from __future__ import annotations

from typing import Any

import httpx

from tollgate.config import TollgateConfig
from tollgate.paths import StatePaths
from tollgate.secrets import admin_token


class GatewayError(Exception):
    """The gateway answered with an error (`status`, `body`) or could not be reached (`unreachable`: the request
    never arrived, so the gateway did nothing; a lost reply is neither)."""

    def __init__(self, message: str, status: int | None = None, body: str = "", unreachable: bool = False):
        super().__init__(message)
        self.status, self.body, self.unreachable = status, body, unreachable


class GatewayClient:
    """predict / reload / state against one gateway."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else {}
        )

    @classmethod
    def from_config(cls, cfg: TollgateConfig, paths: StatePaths) -> GatewayClient:
        """A client with the admin token that waits as long as loading a release may take (serving.reload_timeout_s)."""
        return cls(cfg.servers.gateway_url, admin_token(cfg, paths), timeout=cfg.serving.reload_timeout_s)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            never_arrived = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise GatewayError(
                f"gateway at {self.base_url} did not answer: {exc!r}", unreachable=never_arrived
            ) from exc
        if resp.status_code >= 400:
            raise GatewayError(
                f"{method} {path} -> {resp.status_code}: {resp.text[:500]}", resp.status_code, resp.text[:2000]
            )
        return resp.json()

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self._call("POST", "/predict", json={"records": records})["predictions"])

    def reload(self) -> dict[str, Any]:
        return dict(self._call("POST", "/admin/reload"))

    def rollback(
        self, to_version: str | None, reason: str, flow_run_id: str | None = None, who: str | None = None
    ) -> dict[str, Any]:
        """Ask the gateway to roll back (registry + ledger + swap); returns {from, to, served, ...}."""
        body = {"to": to_version, "reason": reason, "flow_run_id": flow_run_id, "who": who}
        return dict(self._call("POST", "/admin/rollback", json=body))

    def preflight(self, version: str) -> dict[str, Any]:
        """Ask the gateway to load `version` and smoke-test it in process, changing nothing (409 if it fails)."""
        return dict(self._call("POST", "/admin/preflight", json={"version": version}))

    def lease(self, version: str, until_s: float) -> dict[str, Any]:
        """Ask the gateway to keep serving the challenger `version` for `until_s` more seconds."""
        return dict(self._call("POST", "/admin/lease", json={"version": version, "until_s": until_s}))

    def state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/admin/state"))

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def close(self) -> None:
        self.http.close()
