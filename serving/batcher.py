"""Adaptive micro-batching: requests queue while one batch at a time is scored on a worker thread, so batches
grow with load (a 1,000-row predict costs about what a 2-row one does). A batch's log records are written (and
fsynced, if configured) before any of its requests is answered."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.metrics import GatewayMetrics
from serving.release import Release, Routing
from serving.scoring import answer_fields, log_record, outputs, scoring_thread
from serving.shadow import ShadowItem
from tollgate.config import ServingConfig
from tollgate.predlog import PredictionLog

log = logging.getLogger("tollgate.gateway")
Answer = dict[str, Any]
Slot = tuple[int, int, dict[str, Any]]  # job index, record index, record
LONE_STREAK = 8  # this many one-request batches in a row: a lone client, whose requests wait for no company


@dataclass
class Job:
    """One HTTP request's records waiting to be scored."""

    records: list[dict[str, Any]]
    routing: Routing
    future: asyncio.Future[list[Answer]]
    start: float


@dataclass
class Scored:
    """A scored batch: each job's answers, what to count, and the rows a shadow challenger should see."""

    results: list[list[Answer]]
    predictions: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    shadow: list[ShadowItem] = field(default_factory=list)
    log_records: list[dict[str, Any]] = field(default_factory=list)


def _split_roles(jobs: list[Job], idxs: list[int], routing: Routing) -> dict[str, list[Slot]]:
    """Each record of these jobs to the champion or (sticky by entity id) the canary."""
    assert routing.champion is not None
    id_field = routing.champion.schema.id_field
    slots: dict[str, list[Slot]] = {"champion": [], "canary": []}
    for i in idxs:
        for k, rec in enumerate(jobs[i].records):
            slots["canary" if routing.is_canary(str(rec[id_field])) else "champion"].append((i, k, rec))
    return slots


def _answer(
    out: Scored,
    jobs: list[Job],
    items: list[Slot],
    rel: Release,
    role: str,
    model_out: Any,
    shadow_to: Release | None,
    now: float,
) -> None:
    """Fill in the answers and log records of `items`, whose outputs by `rel` (in `role`) are `model_out`."""
    schema = rel.schema
    for (i, k, rec), (fields, proba) in zip(items, answer_fields(rel, model_out), strict=True):
        pid = uuid.uuid4().hex
        entity = str(rec[schema.id_field])
        feats = schema.logged_values(rec)
        event_ts = schema.event_ts(rec)
        out.results[i][k] = {
            "prediction_id": pid,
            "entity_id": entity,
            **fields,
            "model_version": rel.version,
            "role": role,
        }
        out.log_records.append(
            log_record(
                prediction_id=pid,
                request_id=pid,
                ts=now,
                entity_id=entity,
                release=rel,
                role=role,
                score=fields["score"],
                decision=fields["decision"],
                latency_ms=(now - jobs[i].start) * 1000.0,
                features=feats,
                proba=proba,
                event_ts=event_ts,
            )
        )
        out.predictions[(rel.version, role)] += 1
        if shadow_to is not None:
            out.shadow.append(ShadowItem(shadow_to, pid, entity, rec, feats, fields["decision"], event_ts))


def score_batch(jobs: list[Job], plog: PredictionLog) -> Scored:
    """Score a batch (runs in the batch thread) and log it durably before returning."""
    now = time.time()
    out = Scored(results=[[{} for _ in job.records] for job in jobs])
    by_routing: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_routing.setdefault(id(job.routing), []).append(i)
    for idxs in by_routing.values():
        routing = jobs[idxs[0]].routing
        champion, challenger = routing.champion, routing.challenger
        assert champion is not None
        slots = _split_roles(jobs, idxs, routing)
        canary_out = None
        if slots["canary"] and challenger is not None:
            try:
                canary_out = outputs(challenger, [rec for _, _, rec in slots["canary"]])
            except Exception:  # a failing canary must not fail requests: the champion answers them
                log.exception("canary model failed; champion answers")
                out.errors["canary"] += len(slots["canary"])
                slots["champion"] += slots["canary"]
                slots["canary"] = []
        if slots["champion"]:
            shadow_to = challenger if routing.mode == "shadow" else None
            champion_out = outputs(champion, [rec for _, _, rec in slots["champion"]])
            _answer(out, jobs, slots["champion"], champion, "champion", champion_out, shadow_to, now)
        if slots["canary"] and challenger is not None:
            _answer(out, jobs, slots["canary"], challenger, "canary", canary_out, None, now)
    plog.write(out.log_records)  # durable before any of these requests is answered
    return out


class Batcher:
    """The request queue and the loop that drains it into batches on the worker thread."""

    def __init__(self, cfg: ServingConfig, metrics: GatewayMetrics, on_shadow: Callable[[list[ShadowItem]], None]):
        self.metrics = metrics
        self.on_shadow = on_shadow
        self.max_batch = cfg.max_batch_size
        self.wait_s = cfg.max_batch_wait_ms / 1000.0
        self.executor = scoring_thread("tollgate-batch")
        self.plog: PredictionLog | None = None
        self.queue: asyncio.Queue[Job] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._lone = 0  # batches in a row that held one request each

    def start(self, plog: PredictionLog) -> None:
        """Start draining the queue (on the running loop); batches are logged to `plog`."""
        self.plog = plog
        self.queue = asyncio.Queue()
        self._loop_task = asyncio.create_task(self._run())

    def stop(self) -> None:
        """Stop taking batches and wait for the one being scored (its log records are written)."""
        if self._loop_task:
            self._loop_task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, records: list[dict[str, Any]], routing: Routing, start: float) -> list[Answer]:
        """Queue one request's records; returns their answers once their batch is logged."""
        if self.queue is None:
            raise RuntimeError("the batcher has not been started")
        future: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Job(records, routing, future, start))
        return await future

    async def _collect(self, queue: asyncio.Queue[Job]) -> tuple[list[Job], int]:
        """The next batch: the first job, whatever else is queued, then whatever arrives within wait_s, up to
        max_batch rows; but after LONE_STREAK batches in a row of one request each (a lone client), nothing is
        waited for: that client's request is scored at once (the wait was 2 ms of its ~4 ms at one connection).
        Judged on a streak, not on the last batch alone: under load one small batch now and then must not stop
        the waiting that keeps batches full."""
        loop = asyncio.get_running_loop()
        jobs = [await queue.get()]
        rows = len(jobs[0].records)
        deadline = loop.time() + (self.wait_s if self._lone < LONE_STREAK else 0.0)
        while rows < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            rows += len(job.records)
        self._lone = self._lone + 1 if len(jobs) == 1 else 0
        return jobs, rows

    async def _run(self) -> None:
        assert self.queue is not None and self.plog is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs, rows = await self._collect(self.queue)
            try:
                scored = await loop.run_in_executor(self.executor, score_batch, jobs, self.plog)
            except Exception as exc:
                log.exception("batch failed")
                self.metrics.error("batch")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.metrics.batches.inc()
            self.metrics.batch_rows.inc(rows)
            self.metrics.add_counts(scored.predictions, scored.errors)
            for job, result in zip(jobs, scored.results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
            self.on_shadow(scored.shadow)
