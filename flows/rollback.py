"""rollback: the previous (or named) Production release comes back whole, served at once."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.deployment import rollback_production
from tollgate.paths import PROJECT_ROOT
from tollgate.runtime import make_runtime


@flow(name="rollback")
def rollback(
    to_version: str | None = None,
    reason: str = "manual rollback",
    config: str = str(PROJECT_ROOT / "configs" / "pipeline.yaml"),
    env: str = "dev",
) -> dict[str, Any]:
    """Restore a release (model and its whole release context) as Production and make the gateway serve it."""
    rt = make_runtime(config, env)
    return rollback_production(rt.config, rt.paths, to_version, reason, str(flow_run.id))
