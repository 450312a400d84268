"""rollback: the previous (or named) Production release comes back whole, served at once."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.deployment import rollback_production
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="rollback")
def rollback(
    to_version: str | None = None,
    reason: str = "manual rollback",
    config: str | Context = DEFAULT_CONFIG,
    env: str = "dev",
) -> dict[str, Any]:
    """Restore a release (model and its whole release context) as Production and make the gateway serve it."""
    ctx = as_context(config, env)
    return rollback_production(ctx, to_version, reason, str(flow_run.id))
