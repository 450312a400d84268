"""The prediction gateway: a plain ASGI app with adaptive micro-batching and a durable prediction log.

POST /predict   one record (a JSON object) or {"records": [...]} / a JSON list, sent as application/json; 422
                names each field at fault, 413 the setting a body (serving.max_body_bytes) or a batch
                (serving.max_batch_size) is over, 408 a body late for serving.body_timeout_s, 415 a body not
                declared JSON, 422 a string longer than serving.max_string_length (see `predict` for the order)
GET  /health    liveness plus what is being served
GET  /metrics   Prometheus exposition (serving/metrics.py)
POST /admin/reload, POST /admin/rollback, POST /admin/lease, GET /admin/state   behind the Bearer token
                (serving/admin.py)

This module wires the rooms together: HTTP plumbing (serving/http.py), the micro-batcher (serving/batcher.py),
the shadow scorer (serving/shadow.py), the admin routes and the metrics; and `serve()` runs it under uvicorn with
the connection guards of serving/connections.py (header deadline and size, connection cap).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from serving import scoring
from serving.admin import Admin
from serving.batcher import Batcher
from serving.http import HttpApp, Limit, Receive, Request, Response, Scope, Send, invalid_json, json_response, not_json
from serving.lease import Leases
from serving.metrics import CONTENT_TYPE, GatewayMetrics
from serving.release import ReleaseStore, Routing
from serving.replicas import Replicas
from serving.schema import long_strings
from serving.shadow import ShadowScorer
from tollgate.config import TollgateConfig
from tollgate.paths import StatePaths
from tollgate.predlog import PredictionLog, configure_remote
from tollgate.provenance import UntrustedRelease
from tollgate.registry import ROLLOUT_MODE_TAG, ROLLOUT_OUTCOME_TAG, Registry, VersionInfo
from tollgate.secrets import admin_token

log = logging.getLogger("tollgate.gateway")

LEASE_CHECK_S = 1.0  # how often the gateway checks the challenger's lease


def parse_records(raw: bytes) -> tuple[list[Any], bool] | Response:
    """(records, single) from a /predict body, or the 422 to answer."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return invalid_json(exc)
    single = isinstance(payload, dict) and "records" not in payload
    records = [payload] if single else payload.get("records") if isinstance(payload, dict) else payload
    if not isinstance(records, list) or not records:
        return json_response(422, {"detail": [{"field": "records", "error": "expected a non-empty list of records"}]})
    return records, single


def validate_records(records: list[Any], single: bool, routing: Routing) -> list[dict[str, str]]:
    """Every field at fault, each record checked against the schema of the release that will answer it (the
    canary's for canary entities)."""
    assert routing.champion is not None
    where = "" if single else "records[{}]."
    errors: list[dict[str, str]] = []
    for i, rec in enumerate(records):
        schema = routing.champion.schema
        if (
            routing.challenger is not None
            and isinstance(rec, dict)
            and routing.is_canary(str(rec.get(schema.id_field)))
        ):
            schema = routing.challenger.schema
        errors += schema.errors(rec, where.format(i))
    return errors


class Gateway:
    """The ASGI application."""

    def __init__(
        self,
        cfg: TollgateConfig,
        paths: StatePaths,
        store: ReleaseStore | None = None,
        replicas: Replicas | None = None,
    ):
        self.cfg = cfg
        self.replicas = replicas
        self.paths = paths
        self.store = store or ReleaseStore(
            cfg, Registry(cfg.servers.mlflow_url, cfg.project.registered_model, paths.ledger)
        )
        self.routing = Routing(None)
        self.metrics = GatewayMetrics(paths, cfg.project.registered_model)
        self.metrics.served(self.routing.describe())
        self.plog: PredictionLog | None = None
        self.shadow = ShadowScorer(self.metrics)
        self.batcher = Batcher(cfg.serving, self.metrics, self.shadow.submit)
        self.max_batch = Limit("serving.max_batch_size", cfg.serving.max_batch_size)
        self.max_string = Limit("serving.max_string_length", cfg.serving.max_string_length)
        self.admin = Admin(
            admin_token(cfg, paths),
            f"set {cfg.serving.admin_token_env} or create {paths.admin_token}",
            self.store.registry,
            self.reload,
            self.routing_state,
            self.metrics,
            self.preflight,
            self.lease,
            replicas,
        )
        self.leases = Leases()
        self.unavailable: str | None = None  # why a process that could load nothing serves nothing
        self._lease_watch: asyncio.Task[None] | None = None
        self.http = HttpApp(
            {
                ("POST", "/predict"): self.predict,
                ("GET", "/health"): self.health,
                ("GET", "/metrics"): self.scrape,
            },
            {"/admin/": self.admin.handle},
            self.metrics,
            self.startup,
            self.shutdown,
            Limit("serving.max_body_bytes", cfg.serving.max_body_bytes),
            Limit("serving.body_timeout_s", cfg.serving.body_timeout_s),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.http(scope, receive, send)

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the prediction log, start the batcher and shadow scorer, load what the registry says."""
        model = self.cfg.project.registered_model
        configure_remote(self.paths.model_log(model), self.cfg.serving.log_uri, self.cfg.servers.s3_endpoint_url, model)
        self.plog = PredictionLog(
            self.paths.model_log(model),
            self.cfg.serving.log_fsync,
            self.cfg.serving.log_rotate_rows,
        )
        self.batcher.start(self.plog)
        self.shadow.start(self.plog)
        try:
            await self.reload()
        except Exception as exc:  # serve 503 (and say why on /health) until a reload succeeds, rather than exit
            log.error("initial load from the registry failed: %s", exc)
            self.unavailable = f"nothing loadable is served: {exc}"
            self.metrics.error("untrusted_release" if isinstance(exc, UntrustedRelease) else "reload")
        self._lease_watch = asyncio.create_task(self._watch_leases())

    async def shutdown(self) -> None:
        """Stop watching leases, finish the batch being scored, score pending shadow rows, close the log."""
        if self._lease_watch:
            self._lease_watch.cancel()
        self.batcher.stop()
        self.shadow.stop()
        if self.plog:
            self.plog.close()

    async def reload(self) -> dict[str, Any]:
        """Re-read the registry and swap the routing atomically; in-flight batches finish on the old one."""
        routing, refused = await asyncio.get_running_loop().run_in_executor(None, self.store.routing)
        for why in refused:  # a stage moved outside the pipeline: never served, counted and said
            log.error("refused: %s", why)
            self.metrics.error("unproven_stage")
        self.routing = routing
        self.unavailable = None
        if routing.challenger is not None:  # a new rollout, or one from before a restart: the release's grace
            self.leases.ensure(routing.challenger.version, routing.challenger.config.rollout.lease_s, time.monotonic())
        for version in set(self.leases.deadlines) - {routing.challenger.version if routing.challenger else ""}:
            self.leases.forget(version)
        self.metrics.served(routing.describe())
        log.warning("serving %s", routing.describe())
        model = self.cfg.project.registered_model
        return {**routing.describe(), "model": model, **({"refused": list(refused)} if refused else {})}

    def lease(self, version: str, until_s: float) -> dict[str, Any]:
        """Hold the challenger `version` for `until_s` seconds from now; returns the lease and what is served. A
        renewal for a version that is not the challenger is not kept: a late heartbeat of a stopped rollout must
        not leave a deadline that a later rollout of the same version would inherit."""
        challenger = self.routing.challenger
        held = challenger is not None and challenger.version == version
        if held:
            self.leases.grant(version, until_s, time.monotonic())
        return {"version": version, "until_s": until_s, "held": held, **self.routing.describe()}

    async def _watch_leases(self) -> None:
        """Every LEASE_CHECK_S, stop a rollout whose lease lapsed (until shutdown cancels it)."""
        while True:
            await asyncio.sleep(LEASE_CHECK_S)
            try:
                await self.check_lease()
            except Exception as exc:  # the registry may be down: keep watching, try again on the next reload
                log.error("stopping a lapsed rollout failed: %s", exc)
                self.metrics.error("reload")

    async def check_lease(self) -> None:
        """If the challenger's lease has passed: champion-only at once, then its mode tag off and a ledger note
        in the registry (so a reload or a restart does not bring it back), counted, routing reloaded."""
        routing = self.routing
        challenger = routing.challenger
        if challenger is None or not self.leases.lapsed(challenger.version, time.monotonic()):
            return
        self.routing = Routing(routing.champion)  # no answer from it from now on, whatever the registry does
        self.metrics.served(self.routing.describe())
        self.metrics.lease_lapses.inc()  # counted with the stop, not after the registry note (which may take s)
        lease_s = challenger.config.rollout.lease_s
        why = f"rollout lease lapsed: no controller renewed it within its lease (rollout.lease_s {lease_s:g} s)"
        log.error("v%s: %s; back to champion-only", challenger.version, why)
        if self.replicas is not None and self.replicas.index != 0:
            return  # replica 0 notes it in the registry and passes the reload on; the lapsed deadline stays
        await asyncio.get_running_loop().run_in_executor(None, self._stop_rollout, challenger.version, why)
        self.leases.forget(challenger.version)
        await self.reload()
        if self.replicas is not None:
            await self.replicas.tell("POST", "/admin/reload")

    def _stop_rollout(self, version: str, why: str) -> None:
        """Set the Staging version's rollout off and note why in the ledger (runs in an executor thread)."""
        registry = self.store.registry
        registry.set_tags(version, {ROLLOUT_MODE_TAG: "off", ROLLOUT_OUTCOME_TAG: f"stopped: {why}"[:500]})
        registry.record(version, "Staging", "Staging", why, None, who="tollgate")

    def preflight(self, target: VersionInfo) -> None:
        """Load `target` (provenance, allow-list) and smoke-test it in process; raises before anything moves.
        Runs in the admin executor thread; the loaded release stays warm for the swap that follows."""
        release = self.store.release(target.version, target.run_id)
        scoring.smoke_test(release, self.store.smoke_records(target.version))

    def routing_state(self) -> dict[str, Any]:
        """What is being served (champion, challenger, mode, share) and the seconds left on the challenger's
        lease (None without a challenger or a lease)."""
        challenger = self.routing.challenger
        deadline = self.leases.deadlines.get(challenger.version) if challenger else None
        left = None if deadline is None else round(deadline - time.monotonic(), 1)
        return {**self.routing.describe(), "lease_left_s": left}

    # -- routes ----------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        """Validate, queue for the next batch, answer once the batch is logged.

        The checks, in order: body size and deadline (413, 408), JSON (422), batch size (413), a model served (503),
        the media type (415), string lengths (422), the schema (422). The media type is checked last of the ones
        that need no schema, so a request refused anyway keeps the answer it always got; what it decides is that
        no body is scored or logged unless declared `application/json` (a browser sends text/plain, form and
        untyped bodies cross-site without asking first)."""
        parsed = parse_records(await request.body())
        if isinstance(parsed, Response):
            return parsed
        records, single = parsed
        if len(records) > self.max_batch.value:  # one request is scored as one batch at most
            self.metrics.refusal(self.max_batch.name)
            return self.max_batch.refuse(f"request has {len(records)} records")
        routing = self.routing
        if routing.champion is None:
            return json_response(503, {"error": "no Production model is being served yet"})
        if not request.declared_json():
            self.metrics.refusal("content_type")
            return not_json(request)
        too_long = long_strings(records, single, self.max_string)
        if too_long:
            self.metrics.refusal(self.max_string.name)
            return json_response(422, {"detail": too_long})
        errors = validate_records(records, single, routing)
        if errors:
            self.metrics.error("validation")
            return json_response(422, {"detail": errors})
        results = await self.batcher.submit(records, routing, request.start)
        return json_response(200, results[0] if single else {"predictions": results})

    async def health(self, request: Request) -> Response:
        """Liveness plus what is being served; 503 naming why when the process could load nothing it should serve."""
        if self.unavailable and self.routing.champion is None:
            return json_response(503, {"status": "unavailable", "why": self.unavailable, **self.routing.describe()})
        return json_response(200, {"status": "ok", **self.routing.describe()})

    async def scrape(self, request: Request) -> Response:
        """The Prometheus exposition."""
        return Response(200, self.metrics.render(), CONTENT_TYPE)


def run_uvicorn(
    app: Any,
    cfg: TollgateConfig,
    sock: socket.socket | None = None,
    count: Callable[[str], None] | None = None,
    own: socket.socket | None = None,
) -> None:
    """Run `app` under uvicorn until SIGINT/SIGTERM: on servers.host:servers.gateway_port, or on `sock`, a
    listening socket a supervisor holds open (and on `own`, a replica's own port, when given); with the header deadline, the header size limit and the connection
    cap of serving.* (serving/connections.py), their refusals counted by `count` (GatewayMetrics.refusal)."""
    import uvicorn

    from serving.connections import Guard, connection_cap, guarded_protocol, raise_fd_limit

    cap = connection_cap(cfg.serving.max_connections, raise_fd_limit())
    guard = Guard(
        Limit("serving.header_timeout_s", cfg.serving.header_timeout_s),
        Limit("serving.max_header_bytes", cfg.serving.max_header_bytes),
        Limit("serving.max_connections", cap),
        count or (lambda limit: None),
    )
    where: dict[str, Any] = {} if sock is not None else {"host": cfg.servers.host, "port": cfg.servers.gateway_port}
    config = uvicorn.Config(
        app,
        **where,
        loop="uvloop",
        http=guarded_protocol(guard),  # uvicorn's httptools protocol plus the guards
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    # The socket object, never its bare descriptor: uvicorn's `fd=` reopens a descriptor as AF_UNIX, so the
    # event loop treats the TCP connections it accepts as Unix ones and never sets TCP_NODELAY on them; each
    # answer (headers, then body) then waited ~40 ms for the client's delayed ACK (issue 37).
    sockets = [s for s in (sock, own) if s is not None]
    uvicorn.Server(config).run(sockets=sockets or None)


def serve(
    cfg: TollgateConfig,
    paths: StatePaths,
    sock: socket.socket | None = None,
    replicas: Replicas | None = None,
    own: socket.socket | None = None,
) -> None:
    """Run the gateway in the foreground on servers.host:servers.gateway_port (or on the listening socket `sock`
    a supervisor holds open) until SIGINT/SIGTERM; as one of several replicas (serving/replicas.py) also on its
    own port's socket `own`."""
    paths.ensure()
    gateway = Gateway(cfg, paths, replicas=replicas)
    run_uvicorn(gateway, cfg, sock, gateway.metrics.refusal, own)
