"""Answering a paused deploy_model approval from a shell (the Prefect UI shows the same form)."""

from __future__ import annotations

import asyncio
from typing import Any


class ApprovalError(Exception):
    """No run is waiting, or the answer was refused."""


async def _paused_runs(version: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["deploy_model"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    return [r for r in runs if str(r.parameters.get("version")) == str(version)]


def answer_approval(version: str, approver: str, approve: bool, comment: str) -> str:
    """Resume the paused deploy_model run for `version` with the answer; raise ApprovalError if refused."""
    from prefect.flow_runs import resume_flow_run

    runs = asyncio.run(_paused_runs(version))
    if not runs:
        raise ApprovalError(f"no deploy_model run is waiting for approval of v{version}")
    run = runs[0]
    try:
        result: Any = resume_flow_run(run.id, run_input={"approve": approve, "approver": approver, "comment": comment})
    except Exception as exc:
        raise ApprovalError(f"refused: {exc}") from None
    status = getattr(result, "status", None)
    if status is not None and str(getattr(status, "value", status)).upper() != "ACCEPT":
        details = getattr(result, "details", None)
        reason = getattr(details, "reason", None) or details
        raise ApprovalError(f"refused: {approver!r} cannot answer this approval ({reason})")
    return f"{'approved' if approve else 'rejected'} v{version} as {approver} (flow run {run.name})"
