"""The approval step of deploy_model: the paused run's form (answered in the Prefect UI), and answering it
from a shell (`tollgate approve`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from tollgate.context import Context


class ApprovalError(Exception):
    """No run is waiting, or the answer was refused."""


@dataclass(frozen=True)
class Approval:
    """A person's (or demo mode's) answer to the approval form."""

    approve: bool
    approver: str
    comment: str


def approval_input(approvers: list[str]) -> type:
    """The Prefect RunInput for the approval form; `approver` is a choice from rollout.approvers, so the server
    refuses anyone else."""
    from prefect.input import RunInput
    from pydantic import Field, create_model

    who: Any = Literal[tuple(approvers)]
    return create_model(
        "Approval",
        __base__=RunInput,
        approve=(bool, Field(default=False, description="Promote this version to Production?")),
        approver=(who, Field(description="Who approves (rollout.approvers)")),
        comment=(str, Field(default="", description="Why")),
    )


def request_approval(ctx: Context, version: str, evidence: str) -> Approval:
    """Pause the flow run until a person answers the form in the Prefect UI (or `tollgate approve`); in demo
    mode (rollout.auto_approve) approve at once and say so. Called by the flow itself: only a flow can pause."""
    from prefect import get_run_logger
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    policy = ctx.config.rollout
    if policy.auto_approve:
        return Approval(True, "auto-approved (rollout.auto_approve: demo mode)", "no person was asked")
    form = approval_input(policy.approvers)
    get_run_logger().warning(
        "waiting up to %.0f s for approval of v%s: approve in the Prefect UI or run `tollgate approve %s --by NAME`",
        policy.approval_timeout_s,
        version,
        version,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form.with_initial_data(description=evidence),  # type: ignore[attr-defined]
            timeout=int(policy.approval_timeout_s),
            key=f"approve-v{version}",
        )
    except FlowPauseTimeout:
        return Approval(False, "nobody", f"approval timed out after {policy.approval_timeout_s:.0f} s")
    got: Any = answer
    return Approval(bool(got.approve), str(got.approver), str(got.comment))


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
