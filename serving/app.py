"""The prediction gateway: a plain ASGI app with adaptive micro-batching and a durable prediction log.

POST /predict   one record (a JSON object) or {"records": [...]} / a JSON list; 422 names each field at fault
GET  /health    liveness plus what is being served
GET  /metrics   Prometheus text: latency histogram, predictions by version and role, errors, shadow disagreement
POST /admin/reload   re-read the registry and swap what is served (Bearer token)
GET  /admin/state    routing and counters (Bearer token)

Requests are queued; one batch at a time is scored in a worker thread while the event loop keeps accepting,
so batches grow with load (a 1,000-row predict costs about what a 2-row one does). A batch's log records are
written (and fsynced, if configured) before any of its requests is answered. A shadow challenger answers
nobody, so it is scored off the answer path in its own batches (256 rows or 0.25 s) on a second thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from serving.release import Release, ReleaseStore, Routing
from tollgate.config import TollgateConfig
from tollgate.paths import StatePaths
from tollgate.predlog import PredictionLog
from tollgate.registry import Registry
from tollgate.secrets import admin_token

log = logging.getLogger("tollgate.gateway")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2500, 5000)
MAX_BODY = 20 * 1024 * 1024
SHADOW_BATCH = 256  # shadow rows scored together
SHADOW_MAX_AGE_S = 0.25  # ...or after this long
SHADOW_MAX_PENDING = 20_000
ShadowItem = tuple[
    Release, str, str, dict[str, Any], dict[str, Any], int
]  # challenger, pid, entity, record, features, champion decision


@dataclass
class Job:
    """One HTTP request's records waiting to be scored."""

    records: list[dict[str, Any]]
    routing: Routing
    future: asyncio.Future[list[dict[str, Any]]]
    start: float


@dataclass
class Metrics:
    """Counters and a latency histogram, updated on the event loop only."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    predictions: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    shadow_compared: int = 0
    shadow_disagreed: int = 0  # counted when the deferred shadow batch is scored
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    batches: int = 0
    batch_rows: int = 0

    def observe_latency(self, ms: float) -> None:
        for i, edge in enumerate(LATENCY_BUCKETS_MS):
            if ms <= edge:
                self.latency_counts[i] += 1
                break
        else:
            self.latency_counts[-1] += 1
        self.latency_sum_ms += ms

    def render(self, routing: Routing) -> str:
        """Prometheus text exposition."""
        out = ["# TYPE tollgate_requests_total counter"]
        out += [
            f'tollgate_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())
        ]
        out.append("# TYPE tollgate_predictions_total counter")
        out += [
            f'tollgate_predictions_total{{model_version="{v}",role="{role}"}} {n}'
            for (v, role), n in sorted(self.predictions.items())
        ]
        out.append("# TYPE tollgate_errors_total counter")
        out += [f'tollgate_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
        out += [
            "# TYPE tollgate_shadow_compared_total counter",
            f"tollgate_shadow_compared_total {self.shadow_compared}",
            "# TYPE tollgate_shadow_disagreements_total counter",
            f"tollgate_shadow_disagreements_total {self.shadow_disagreed}",
        ]
        out.append("# TYPE tollgate_request_latency_ms histogram")
        cumulative = 0
        for edge, n in zip(LATENCY_BUCKETS_MS, self.latency_counts, strict=False):
            cumulative += n
            out.append(f'tollgate_request_latency_ms_bucket{{le="{edge}"}} {cumulative}')
        cumulative += self.latency_counts[-1]
        out += [
            f'tollgate_request_latency_ms_bucket{{le="+Inf"}} {cumulative}',
            f"tollgate_request_latency_ms_sum {self.latency_sum_ms:.3f}",
            f"tollgate_request_latency_ms_count {cumulative}",
            "# TYPE tollgate_batches_total counter",
            f"tollgate_batches_total {self.batches}",
            "# TYPE tollgate_batch_rows_total counter",
            f"tollgate_batch_rows_total {self.batch_rows}",
        ]
        d = routing.describe()
        out += [
            "# TYPE tollgate_serving info",
            f'tollgate_serving_info{{champion="{d["champion"]}",challenger="{d["challenger"]}",mode="{d["mode"]}"}} 1',
        ]
        return "\n".join(out) + "\n"


def _single_thread_blas() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _frame(release: Release, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Column lists -> DataFrame: ~15x cheaper than DataFrame.from_records at batch sizes of a few dozen."""
    features = release.config.features
    columns: dict[str, Any] = {c: [r.get(c) for r in records] for c in features.all}
    for c in features.numeric:
        columns[c] = np.array([np.nan if v is None else v for v in columns[c]], dtype="float64")
    return pd.DataFrame(columns, copy=False)


def _score(release: Release, records: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray(release.model.predict_proba(_frame(release, records))[:, 1], dtype="float64")


class Gateway:
    """The ASGI application."""

    def __init__(self, cfg: TollgateConfig, paths: StatePaths, store: ReleaseStore | None = None):
        self.cfg = cfg
        self.paths = paths
        self.store = store or ReleaseStore(
            cfg, Registry(cfg.servers.mlflow_url, cfg.project.registered_model, paths.ledger)
        )
        self.routing = Routing(None)
        self.metrics = Metrics()
        self.token = admin_token(cfg, paths)
        self.plog: PredictionLog | None = None
        self.queue: asyncio.Queue[Job] | None = None
        # One batch thread, with one OpenMP thread: per-tree parallelism only adds dispatch cost at these batch
        # sizes and competes with the event loop for the two cores.
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tollgate-batch", initializer=_single_thread_blas
        )
        self.shadow_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tollgate-shadow", initializer=_single_thread_blas
        )
        self._shadow_pending: list[ShadowItem] = []
        self._shadow_since = 0.0
        self._shadow_busy = False
        self._batcher: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.max_batch = cfg.serving.max_batch_size
        self.wait_s = cfg.serving.max_batch_wait_ms / 1000.0

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.plog = PredictionLog(
            self.paths.model_log(self.cfg.project.registered_model),
            self.cfg.serving.log_fsync,
            self.cfg.serving.log_rotate_rows,
        )
        self.queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop())
        self._flusher = asyncio.create_task(self._shadow_flusher())
        try:
            await self.reload()
        except Exception as exc:  # serve 503 until a reload succeeds rather than refusing to start
            log.error("initial load from the registry failed: %s", exc)
            self.metrics.errors["reload"] += 1

    async def shutdown(self) -> None:
        for background in (self._batcher, self._flusher):
            if background:
                background.cancel()
        if self._shadow_pending:
            self._score_shadow(self._shadow_pending)
        self.shadow_executor.shutdown(wait=True)
        if self.plog:
            self.plog.close()
        self.executor.shutdown(wait=True)

    async def reload(self) -> dict[str, Any]:
        """Re-read the registry and swap the routing atomically; in-flight batches finish on the old one."""
        routing = await asyncio.get_running_loop().run_in_executor(None, self.store.routing)
        self.routing = routing
        log.warning("serving %s", routing.describe())
        return routing.describe()

    # -- batching --------------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            rows = len(jobs[0].records)
            deadline = loop.time() + self.wait_s
            while rows < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(job)
                rows += len(job.records)
            try:
                results, counts, shadow_work = await loop.run_in_executor(self.executor, self._process, jobs)
            except Exception as exc:
                log.exception("batch failed")
                self.metrics.errors["batch"] += 1
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            m = self.metrics
            m.batches += 1
            m.batch_rows += rows
            m.predictions.update(counts["predictions"])
            m.errors.update(counts["errors"])
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
            self._queue_shadow(shadow_work)

    def _process(self, jobs: list[Job]) -> tuple[list[list[dict[str, Any]]], dict[str, Any], list[ShadowItem]]:
        """Score a batch (runs in the batch thread); log it durably before returning."""
        counts: dict[str, Any] = {
            "predictions": Counter(),
            "errors": Counter(),
        }
        now = time.time()
        shadow_work: list[ShadowItem] = []
        results: list[list[dict[str, Any]]] = [[] for _ in jobs]
        log_records: list[dict[str, Any]] = []
        by_routing: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_routing.setdefault(id(job.routing), []).append(i)
        for idxs in by_routing.values():
            routing = jobs[idxs[0]].routing
            champion, challenger = routing.champion, routing.challenger
            assert champion is not None
            slots: dict[str, list[tuple[int, int, dict[str, Any]]]] = {"champion": [], "canary": []}
            for i in idxs:
                id_field = champion.schema.id_field
                for k, rec in enumerate(jobs[i].records):
                    role = "canary" if routing.is_canary(str(rec[id_field])) else "champion"
                    slots[role].append((i, k, rec))
            for i in idxs:
                results[i] = [{} for _ in jobs[i].records]
            canary_scores = None
            if slots["canary"] and challenger is not None:
                try:
                    canary_scores = _score(challenger, [rec for _, _, rec in slots["canary"]])
                except Exception:  # a failing canary must not fail requests: the champion answers them
                    log.exception("canary model failed; champion answers")
                    counts["errors"]["canary"] += len(slots["canary"])
                    slots["champion"] += slots["canary"]
                    slots["canary"] = []
            for role, rel in (("champion", champion), ("canary", challenger)):
                items = slots[role]
                if not items or rel is None:
                    continue
                scores = canary_scores if role == "canary" else _score(rel, [rec for _, _, rec in items])
                assert scores is not None
                shadowing = role == "champion" and routing.mode == "shadow" and challenger is not None
                for n, (i, k, rec) in enumerate(items):
                    pid = uuid.uuid4().hex
                    score = float(scores[n])
                    decision = int(score >= rel.threshold)
                    entity = str(rec[rel.schema.id_field])
                    latency = (now - jobs[i].start) * 1000.0
                    feats = {f: rec.get(f) for f in rel.config.features.all}
                    results[i][k] = {
                        "prediction_id": pid,
                        "entity_id": entity,
                        "score": score,
                        "decision": decision,
                        "model_version": rel.version,
                        "role": role,
                    }
                    log_records.append(
                        {
                            "prediction_id": pid,
                            "request_id": pid,
                            "ts": now,
                            "entity_id": entity,
                            "model_version": rel.version,
                            "role": role,
                            "score": score,
                            "decision": decision,
                            "latency_ms": latency,
                            "features": feats,
                        }
                    )
                    counts["predictions"][(rel.version, role)] += 1
                    if shadowing and challenger is not None:
                        shadow_work.append((challenger, pid, entity, rec, feats, decision))
        assert self.plog is not None
        self.plog.write(log_records)  # durable before any of these requests is answered
        return results, counts, shadow_work

    # -- shadow ----------------------------------------------------------------------------------
    def _queue_shadow(self, work: list[ShadowItem]) -> None:
        """Shadow answers nobody, so it is scored off the answer path, in its own larger batches."""
        if not work:
            return
        if not self._shadow_pending:
            self._shadow_since = time.monotonic()
        self._shadow_pending.extend(work)
        overflow = len(self._shadow_pending) - SHADOW_MAX_PENDING
        if overflow > 0:  # the challenger cannot keep up: compare a sample rather than grow without bound
            del self._shadow_pending[:overflow]
            self.metrics.errors["shadow_dropped"] += overflow
        if len(self._shadow_pending) >= SHADOW_BATCH:
            self._flush_shadow()

    def _flush_shadow(self) -> None:
        if not self._shadow_pending or self._shadow_busy:
            return
        work, self._shadow_pending = self._shadow_pending, []
        self._shadow_busy = True
        future = asyncio.get_running_loop().run_in_executor(self.shadow_executor, self._score_shadow, work)
        future.add_done_callback(self._shadow_done)

    def _shadow_done(self, future: asyncio.Future[dict[str, Any]]) -> None:
        self._shadow_busy = False
        if future.exception() is not None:
            self.metrics.errors["shadow"] += 1
            return
        counts = future.result()
        self.metrics.predictions.update(counts["predictions"])
        self.metrics.errors.update(counts["errors"])
        self.metrics.shadow_compared += counts["compared"]
        self.metrics.shadow_disagreed += counts["disagreed"]

    async def _shadow_flusher(self) -> None:
        while True:
            await asyncio.sleep(SHADOW_MAX_AGE_S / 2)
            if self._shadow_pending and time.monotonic() - self._shadow_since >= SHADOW_MAX_AGE_S:
                self._flush_shadow()

    def _score_shadow(self, work: list[ShadowItem]) -> dict[str, Any]:
        """Score queued shadow rows per challenger (shadow thread) and log them; latency_ms is the challenger's
        scoring time for its batch."""
        counts: dict[str, Any] = {"predictions": Counter(), "errors": Counter(), "compared": 0, "disagreed": 0}
        by_version: dict[str, list[ShadowItem]] = {}
        for item in work:
            by_version.setdefault(item[0].version, []).append(item)
        records: list[dict[str, Any]] = []
        for items in by_version.values():
            challenger = items[0][0]
            start = time.perf_counter()
            try:
                scores = _score(challenger, [rec for _, _, _, rec, _, _ in items])
            except Exception:
                log.exception("shadow model failed")
                counts["errors"]["shadow"] += len(items)
                continue
            took_ms = (time.perf_counter() - start) * 1000.0
            now = time.time()
            for (rel, pid, entity, _, feats, decision), score in zip(items, scores, strict=True):
                s_decision = int(float(score) >= rel.threshold)
                counts["compared"] += 1
                counts["disagreed"] += int(s_decision != decision)
                counts["predictions"][(rel.version, "shadow")] += 1
                records.append(
                    {
                        "prediction_id": f"{pid}-shadow",
                        "request_id": pid,
                        "ts": now,
                        "entity_id": entity,
                        "model_version": rel.version,
                        "role": "shadow",
                        "score": float(score),
                        "decision": s_decision,
                        "latency_ms": took_ms,
                        "features": feats,
                    }
                )
        assert self.plog is not None
        self.plog.write(records)
        return counts

    # -- HTTP ------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        start = time.time()
        try:
            if path == "/predict" and method == "POST":
                status, body = await self._predict(await _read_body(receive), start)
            elif path == "/health" and method == "GET":
                status, body = 200, {"status": "ok", **self.routing.describe()}
            elif path == "/metrics" and method == "GET":
                await _respond(send, 200, self.metrics.render(self.routing).encode(), b"text/plain; version=0.0.4")
                self.metrics.requests[(path, 200)] += 1
                return
            elif path.startswith("/admin/"):
                status, body = await self._admin(scope, receive, path, method)
            else:
                status, body = 404, {"error": f"no route {method} {path}"}
        except BodyTooLarge:
            status, body = 413, {"error": f"request body over {MAX_BODY} bytes"}
        except Exception as exc:  # nothing crashes the worker
            log.exception("request failed")
            self.metrics.errors["internal"] += 1
            status, body = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
        self.metrics.requests[(path if status != 404 else "other", status)] += 1
        if path == "/predict":
            self.metrics.observe_latency((time.time() - start) * 1000.0)
        await _respond(send, status, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))

    async def _predict(self, raw: bytes, start: float) -> tuple[int, Any]:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return 422, {"detail": [{"field": "body", "error": f"not valid JSON: {exc}"}]}
        single = isinstance(payload, dict) and "records" not in payload
        records = [payload] if single else payload.get("records") if isinstance(payload, dict) else payload
        where = "" if single else "records[{}]."
        if not isinstance(records, list) or not records:
            return 422, {"detail": [{"field": "records", "error": "expected a non-empty list of records"}]}
        routing = self.routing
        if routing.champion is None:
            return 503, {"error": "no Production model is being served yet"}
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
        if errors:
            self.metrics.errors["validation"] += 1
            return 422, {"detail": errors}
        assert self.queue is not None
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Job(records, routing, future, start))
        results = await future
        return 200, results[0] if single else {"predictions": results}

    async def _admin(self, scope: Scope, receive: Receive, path: str, method: str) -> tuple[int, Any]:
        if not self.token:
            return 403, {
                "error": f"admin routes are disabled: set {self.cfg.serving.admin_token_env} or create "
                f"{self.paths.admin_token}"
            }
        sent = dict(scope.get("headers") or []).get(b"authorization", b"").decode()
        if not hmac.compare_digest(sent, f"Bearer {self.token}"):
            return 401, {"error": "missing or wrong admin token (Authorization: Bearer ...)"}
        if path == "/admin/reload" and method == "POST":
            try:
                return 200, await self.reload()
            except Exception as exc:
                self.metrics.errors["reload"] += 1
                return 502, {"error": f"reload failed, still serving {self.routing.describe()}: {exc}"}
        if path == "/admin/rollback" and method == "POST":
            return await self._rollback(await _read_body(receive))
        if path == "/admin/state" and method == "GET":
            m = self.metrics
            return 200, {
                **self.routing.describe(),
                "predictions": {f"{v}/{r}": n for (v, r), n in m.predictions.items()},
                "errors": dict(m.errors),
                "shadow_compared": m.shadow_compared,
                "shadow_disagreed": m.shadow_disagreed,
                "batches": m.batches,
                "batch_rows": m.batch_rows,
            }
        return 404, {"error": f"no admin route {method} {path}"}

    async def _rollback(self, raw: bytes) -> tuple[int, Any]:
        """Registry transition + ledger (the same function as the rollback flow), then swap at once: the
        previous release is usually still warm in memory."""
        from tollgate.registry import RegistryError, rollback_release

        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return 422, {"detail": [{"field": "body", "error": f"not valid JSON: {exc}"}]}
        loop = asyncio.get_running_loop()
        try:
            before, after = await loop.run_in_executor(
                None,
                rollback_release,
                self.store.registry,
                body.get("to"),
                body.get("reason") or "manual",
                body.get("who"),
                body.get("flow_run_id"),
            )
        except RegistryError as exc:
            return 409, {"error": str(exc)}
        state = await self.reload()
        return 200, {"from": before, "to": after, "served": state["champion"] == after, **state}

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


class BodyTooLarge(Exception):
    """The request body exceeds MAX_BODY."""


async def _read_body(receive: Receive) -> bytes:
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


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve(cfg: TollgateConfig, paths: StatePaths) -> None:
    """Run the gateway in the foreground on servers.host:servers.gateway_port until SIGINT/SIGTERM."""
    import uvicorn

    paths.ensure()
    app = Gateway(cfg, paths)
    uvicorn.run(
        app,
        host=cfg.servers.host,
        port=cfg.servers.gateway_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
