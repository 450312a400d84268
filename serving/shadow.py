"""Shadow scoring off the answer path: a shadow challenger answers nobody, so its rows are queued and scored in
their own larger batches (SHADOW_BATCH rows or SHADOW_MAX_AGE_S) on a second thread, then logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from serving.metrics import GatewayMetrics
from serving.release import Release
from serving.scoring import answer_fields, log_record, outputs, scoring_thread
from tollgate.predlog import PredictionLog, decisions_agree

log = logging.getLogger("tollgate.gateway")
SHADOW_BATCH = 256  # shadow rows scored together
SHADOW_MAX_AGE_S = 0.25  # ...or after this long
SHADOW_MAX_PENDING = 20_000


class ShadowItem(NamedTuple):
    """One champion answer to compare against the challenger."""

    challenger: Release
    prediction_id: str
    entity_id: str
    record: dict[str, Any]
    features: dict[str, Any]
    champion_decision: int | float | str | bool
    event_ts: float | None = None


@dataclass
class ShadowCounts:
    """What one shadow batch scored."""

    predictions: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    compared: int = 0
    disagreed: int = 0


def score_shadow(work: list[ShadowItem], plog: PredictionLog) -> ShadowCounts:
    """Score queued shadow rows per challenger and log them; latency_ms is the challenger's scoring time for
    its batch."""
    counts = ShadowCounts()
    by_version: dict[str, list[ShadowItem]] = {}
    for item in work:
        by_version.setdefault(item.challenger.version, []).append(item)
    records: list[dict[str, Any]] = []
    for items in by_version.values():
        challenger = items[0].challenger
        start = time.perf_counter()
        try:
            model_out = outputs(challenger, [item.record for item in items])
        except Exception:
            log.exception("shadow model failed")
            counts.errors["shadow"] += len(items)
            continue
        took_ms = (time.perf_counter() - start) * 1000.0
        now = time.time()
        fields = answer_fields(challenger, model_out)
        agree = decisions_agree(
            challenger.objective.task,
            [item.champion_decision for item in items],
            [f["decision"] for f, _ in fields],
            challenger.config.rollout.regression_tolerance,
        )
        counts.compared += len(items)
        counts.disagreed += int(len(items) - agree.sum())
        counts.predictions[(challenger.version, "shadow")] += len(items)
        for item, (answer, proba) in zip(items, fields, strict=True):
            records.append(
                log_record(
                    prediction_id=f"{item.prediction_id}-shadow",
                    request_id=item.prediction_id,
                    ts=now,
                    entity_id=item.entity_id,
                    release=challenger,
                    role="shadow",
                    score=answer["score"],
                    decision=answer["decision"],
                    latency_ms=took_ms,
                    features=item.features,
                    proba=proba,
                    event_ts=item.event_ts,
                )
            )
    plog.write(records)
    return counts


class ShadowScorer:
    """Queues shadow work from the event loop and scores it on its own thread, one batch at a time."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics
        self.executor = scoring_thread("tollgate-shadow")
        self.plog: PredictionLog | None = None
        self._pending: list[ShadowItem] = []
        self._since = 0.0
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None

    def start(self, plog: PredictionLog) -> None:
        """Start the age-based flusher (on the running loop); rows are logged to `plog`."""
        self.plog = plog
        self._flusher = asyncio.create_task(self._flush_when_old())

    def stop(self) -> None:
        """Score what is still pending (synchronously) and stop the thread."""
        if self._flusher:
            self._flusher.cancel()
        self.executor.shutdown(wait=True)
        if self._pending and self.plog is not None:
            score_shadow(self._pending, self.plog)
            self._pending = []

    def submit(self, work: list[ShadowItem]) -> None:
        """Queue a batch's shadow rows (event loop only); past SHADOW_MAX_PENDING the oldest are dropped."""
        if not work:
            return
        if not self._pending:
            self._since = time.monotonic()
        self._pending.extend(work)
        overflow = len(self._pending) - SHADOW_MAX_PENDING
        if overflow > 0:  # the challenger cannot keep up: compare a sample rather than grow without bound
            del self._pending[:overflow]
            self.metrics.error("shadow_dropped", overflow)
        if len(self._pending) >= SHADOW_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending or self._busy or self.plog is None:
            return
        work, self._pending = self._pending, []
        self._busy = True
        future = asyncio.get_running_loop().run_in_executor(self.executor, score_shadow, work, self.plog)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[ShadowCounts]) -> None:
        self._busy = False
        if future.cancelled() or future.exception() is not None:
            self.metrics.error("shadow")
            return
        counts = future.result()
        self.metrics.add_counts(counts.predictions, counts.errors)
        self.metrics.shadow_compared.inc(counts.compared)
        self.metrics.shadow_disagreed.inc(counts.disagreed)

    async def _flush_when_old(self) -> None:
        while True:
            await asyncio.sleep(SHADOW_MAX_AGE_S / 2)
            if self._pending and time.monotonic() - self._since >= SHADOW_MAX_AGE_S:
                self._flush()
