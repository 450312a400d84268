"""Registry stage tasks: thin Prefect wrappers over tollgate.registry."""

from __future__ import annotations

from tasks.common import tollgate_task
from tollgate.context import Context
from tollgate.registry import VersionInfo


@tollgate_task
def promote_version(
    ctx: Context, version: str, to_stage: str, reason: str, evidence_run_id: str | None, flow_run_id: str | None = None
) -> VersionInfo:
    """Transition a version (with its ledger entry); returns the updated version."""
    return ctx.registry.transition(version, to_stage, reason, evidence_run_id, flow_run_id=flow_run_id)
