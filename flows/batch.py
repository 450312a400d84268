"""batch_inference: a table scored by the served release, under the serving rules, logged like online
predictions (tasks/batch.py); a Parquet table's chunks fan out over Dask when compute.dask_address names a
cluster, and the OUTPUT folder ends byte for byte as the in-process run leaves it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.fan_out import over_parts
from tasks.batch import (
    BatchPlan,
    ChunkScorer,
    SpanResult,
    announce,
    finish,
    output_folder,
    plan_file,
    score_chunks,
    score_span,
)
from tasks.common import run_logger, tollgate_task
from tollgate.context import DEFAULT_CONFIG, Context, as_context
from tollgate.release import Release


@flow(name="batch_inference")
def batch_inference(
    input: str | None = None,
    output: str | None = None,
    version: str | None = None,
    stage: str = "Production",
    chunk_rows: int | None = None,
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
) -> dict[str, Any]:
    """Score `input` (default batch.input) into the folder `output` (default batch.output/<UTC date>) with
    `version`, or the version the promotion ledger holds in `stage`; resumable (a rerun skips finished parts).
    With compute.dask_address set, a Parquet input's chunks are scored by Dask tasks of compute.parts_per_task
    chunks each; a CSV input is read in order, here."""
    ctx = as_context(config, env)
    src = Path(ctx.resolve(input or ctx.config.batch.input))
    plan, release, scorer, address = plan_batch(ctx, src, str(output_folder(ctx, output)), version, stage, chunk_rows)
    setup = time.perf_counter() - plan.began
    if address:
        spans = over_parts(address, score_chunks, plan.chunks, ctx.config.compute.parts_per_task, plan=plan)
    else:
        spans = [score_here(plan, release, scorer)]
    return finish(plan, release, spans, scorer.scoring, setup).summary()


@tollgate_task
def plan_batch(
    ctx: Context, src: Path, output: str, version: str | None, stage: str, chunk_rows: int | None
) -> tuple[BatchPlan, Release, ChunkScorer, str]:
    """The input checked, the release chosen and loaded, OUTPUT claimed; and where the chunks are scored: the
    Dask address (compute.dask_address, for a Parquet input of more than one chunk) or "" (here)."""
    plan, release = plan_file(ctx, src, output, version, stage, chunk_rows)
    scorer = ChunkScorer(ctx, release, plan.manifest, plan.out)
    address = ctx.config.compute.dask_address
    say = run_logger().info
    if address and plan.splittable:
        tasks = -(-plan.chunks // ctx.config.compute.parts_per_task)
        announce(plan, release, scorer.scoring, f", {plan.chunks} chunks in {tasks} Dask task(s) at {address}", say)
        return plan, release, scorer, address
    why = ""
    if address:  # said, not silent: why this run does not use the configured cluster
        why = f"; here, not on Dask at {address}: " + ("a CSV is read in order" if plan.rows is None else "one chunk")
    announce(plan, release, scorer.scoring, why, say)
    return plan, release, scorer, ""


@tollgate_task
def score_here(plan: BatchPlan, release: Release, scorer: ChunkScorer) -> SpanResult:
    """Every chunk, in order, in this process, with the model `plan_batch` loaded."""
    return score_span(plan, release, 0, plan.chunks, scorer=scorer)
