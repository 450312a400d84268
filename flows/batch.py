"""batch_inference: a table scored by the served release, under the serving rules, logged like online
predictions (tasks/batch.py)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.batch import score_table
from tollgate.context import DEFAULT_CONFIG, Context, as_context


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
    `version`, or the version the promotion ledger holds in `stage`; resumable (a rerun skips finished parts)."""
    ctx = as_context(config, env)
    return score_table(ctx, input, output, version, stage, chunk_rows).summary()
