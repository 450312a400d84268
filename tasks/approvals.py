"""The approval step of deploy_model: the paused run's form (answered in the Prefect UI), and answering it
from a shell (`tollgate approve`).

An answer counts only with a proof from an enrolled approver (tollgate/approvers.py), never their key: the
Prefect UI form takes a one-time code from their authenticator app, `tollgate approve` signs the exact question
(run, pause, version, decision) with their key. The flow checks the proof after every resume: a wrong, used or
replayed one is recorded in the ledger and the run pauses again (under a new pause key) for the rest of the
approval timeout, so nothing acts on it. The submitted form is deleted from the Prefect server once read.
`tollgate approve` checks the approver's key before it resumes anything.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.common import run_logger
from tollgate import approvers, ledger, procs
from tollgate.context import Context


class ApprovalError(Exception):
    """No run is waiting, or the answer was refused."""


@dataclass(frozen=True)
class Approval:
    """A person's (or demo mode's) answer to the approval form."""

    approve: bool
    approver: str
    comment: str
    at: str = ""
    refused: tuple[str, ...] = ()  # answers refused before this one (wrong, used or missing proof)


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
        proof=(
            str,
            Field(
                default="",
                description="The 6-digit code your authenticator app shows (enrolled with `tollgate approvers add`); "
                "never your key",
            ),
        ),
        comment=(str, Field(default="", description="Why")),
    )


def request_approval(ctx: Context, version: str, evidence: str) -> Approval:
    """Pause the flow run until a person answers the form in the Prefect UI (or `tollgate approve`); in demo
    mode (rollout.auto_approve) approve at once and say so. Called by the flow itself: only a flow can pause."""
    allowed = auto_approval(ctx)
    if allowed:
        return Approval(True, allowed, "no person was asked", _now())
    if ctx.config.rollout.auto_approve:
        run_logger().warning(
            "rollout.auto_approve is set but env %s does not allow it (rollout.auto_approve_envs: %s): a person "
            "must approve v%s",
            ctx.loaded.env,
            ctx.config.rollout.auto_approve_envs,
            version,
        )
    with waiting_for(ctx, version):
        return _wait_for_answer(ctx, version, evidence)


def auto_approval(ctx: Context) -> str | None:
    """Why this deploy may approve with nobody asked (the deploying environment's rollout.auto_approve, in an
    environment its rollout.auto_approve_envs lists, never prod), or None: a person must approve."""
    policy, env = ctx.config.rollout, ctx.loaded.env
    if not policy.auto_approve or env == "prod" or env not in policy.auto_approve_envs:
        return None
    return f"auto-approved in env {env} (rollout.auto_approve; env {env} is in rollout.auto_approve_envs)"


@contextmanager
def waiting_for(ctx: Context, version: str) -> Iterator[None]:
    """While the flow waits, a file names the waiting process (pid, its start time, host, flow run), so
    `tollgate approve` can tell a run whose process is gone (it could never act on an answer)."""
    path = waiter_file(ctx, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**procs.this_process(), "flow_run_id": _flow_run_id()}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def waiter_file(ctx: Context, version: str) -> Path:
    return ctx.paths.approval_waiters / f"{ctx.config.project.registered_model}-v{version}.json"


def gone_waiter(ctx: Context, version: str, flow_run_id: str) -> str | None:
    """Why the process waiting for this run's approval cannot act any more, or None (alive, or unknown)."""
    path = waiter_file(ctx, version)
    if not path.exists():
        return None
    waiter = json.loads(path.read_text())
    if waiter.get("flow_run_id") != flow_run_id or procs.same_process(waiter) is not False:
        return None
    return f"the deploy process that waits for this answer (pid {waiter['pid']}) is gone"


def _wait_for_answer(ctx: Context, version: str, evidence: str) -> Approval:
    from prefect import get_run_logger
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    policy = ctx.config.rollout
    form = approval_input(policy.approvers)
    deadline = time.monotonic() + policy.approval_timeout_s
    refused: list[str] = []
    while (left := deadline - time.monotonic()) >= 1:
        get_run_logger().warning(
            "waiting up to %.0f s for approval of v%s: approve in the Prefect UI or run `tollgate approve %s --by NAME`",
            left,
            version,
            version,
        )
        pause_key = f"approve-v{version}-{len(refused)}"  # a new pause per attempt (a reused key returns at once)
        try:
            answer: Any = pause_flow_run(
                wait_for_input=form.with_initial_data(description=evidence),  # type: ignore[attr-defined]
                timeout=int(left),
                key=pause_key,
            )
        except FlowPauseTimeout:
            break
        _forget_answer(answer)
        question = approvers.Question(str(_flow_run_id()), pause_key, str(version), bool(answer.approve))
        why_not = approvers.check_proof(ctx.paths.approvers, str(answer.approver), str(answer.proof), question)
        if why_not is None:
            return Approval(bool(answer.approve), str(answer.approver), str(answer.comment), _now(), tuple(refused))
        refused.append(f"{answer.approver}: {why_not}")
        record_refusal(ctx, version, str(answer.approver), why_not, _flow_run_id())
        get_run_logger().error("approval refused (%s); v%s stays waiting for a valid answer", why_not, version)
    return Approval(
        False, "nobody", f"approval timed out after {policy.approval_timeout_s:.0f} s", _now(), tuple(refused)
    )


def record_refusal(ctx: Context, version: str, approver: str, why_not: str, flow_run_id: str | None) -> None:
    """A refused answer lands in the ledger (the stage does not change)."""
    ctx.registry.record(
        version,
        "Staging",
        "Staging",
        f"approval refused: {why_not}",
        None,
        who=f"{approver} (unproven)",
        flow_run_id=flow_run_id,
    )


def _forget_answer(answer: Any) -> None:
    """Delete the submitted form from the Prefect server once read (its proof is single-use anyway)."""
    from prefect.input.actions import delete_flow_run_input

    delete_flow_run_input(key=answer.metadata.key, flow_run_id=answer.metadata.receiver)


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def stop_orphaned_rollout(ctx: Context, version: str, why: str) -> None:
    """A rollout whose controller is gone must not keep its challenger answering until the lease runs out: mode
    off in the registry, a ledger note, and the gateway reloaded (champion only)."""
    from tollgate.gateway_client import GatewayError
    from tollgate.registry import ROLLOUT_MODE_TAG, ROLLOUT_OUTCOME_TAG

    ctx.registry.set_tags(version, {ROLLOUT_MODE_TAG: "off", ROLLOUT_OUTCOME_TAG: f"stopped: {why}"[:500]})
    ctx.registry.record(version, "Staging", "Staging", f"rollout stopped: {why}", None, who="tollgate")
    gateway = ctx.gateway()
    try:
        gateway.reload()
    except GatewayError:
        pass  # a gateway that is down reads the registry (mode off) when it starts
    finally:
        gateway.close()


async def _nothing_waiting(version: str) -> str:
    """Why no run can take an answer for `version`: the newest deploy_model run's state, if there is one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["deploy_model"])), sort=FlowRunSort.START_TIME_DESC
        )
    mine = [r for r in runs if str(r.parameters.get("version")) == str(version)]
    if not mine:
        return f"no deploy_model run is waiting for approval of v{version} (no such approval)"
    state = mine[0].state
    name = str(state.name if state else "unknown").lower()
    return f"no deploy_model run is waiting for approval of v{version}: the latest, flow run {mine[0].name}, is {name}"


async def _mark_crashed(run_id: Any, why: str) -> None:
    """Tell Prefect what `approve` found: the paused run can never resume (its process is gone)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    async with get_client() as client:
        await client.set_flow_run_state(run_id, Crashed(message=why), force=True)


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


def answer_approval(ctx: Context, version: str, approver: str, secret: str | None, approve: bool, comment: str) -> str:
    """Resume the paused deploy_model run for `version` with the answer; raise ApprovalError if refused.

    `secret` is the approver's key: checked here first, so a wrong one resumes nothing (the run stays paused)
    and is recorded; only a proof signed with it is sent, and the flow checks that proof again, since anyone with
    Prefect API access could resume the run without this command."""
    from prefect.flow_runs import resume_flow_run

    runs = asyncio.run(_paused_runs(version))
    if not runs:
        raise ApprovalError(asyncio.run(_nothing_waiting(version)))
    run = runs[0]
    gone = gone_waiter(ctx, version, str(run.id))
    if gone is not None:
        asyncio.run(_mark_crashed(run.id, gone))
        stop_orphaned_rollout(ctx, version, gone)
        raise ApprovalError(
            f"refused: flow run {run.name} for v{version} is crashed ({gone}): nothing was approved, the gateway "
            f"serves the champion only; run `tollgate deploy {version}` again"
        )
    if approver not in ctx.config.rollout.approvers:
        raise ApprovalError(f"refused: {approver!r} is not on rollout.approvers ({ctx.config.rollout.approvers})")
    why_not = approvers.check_key(ctx.paths.approvers, approver, secret)
    if why_not is not None:
        record_refusal(ctx, version, approver, why_not, str(run.id))
        raise ApprovalError(f"refused: {why_not}; v{version} is still waiting (flow run {run.name})")
    answer = signed_answer(run, version, approver, str(secret), approve, comment)
    try:
        result: Any = resume_flow_run(run.id, run_input=answer)
    except Exception as exc:
        raise ApprovalError(f"refused: {exc}") from None
    status = getattr(result, "status", None)
    if status is not None and str(getattr(status, "value", status)).upper() != "ACCEPT":
        details = getattr(result, "details", None)
        reason = getattr(details, "reason", None) or details
        raise ApprovalError(f"refused: {approver!r} cannot answer this approval ({reason})")
    said = f"{'approved' if approve else 'rejected'} v{version} as {approver} (flow run {run.name})"
    return f"{said}: {_await_outcome(ctx, run.id, version, approve, _promotions(ctx, version))}"


def signed_answer(run: Any, version: str, approver: str, key: str, approve: bool, comment: str) -> dict[str, Any]:
    """The form answer `tollgate approve` sends for the paused `run`: a proof bound to this run, this pause,
    `version` and the decision (HMAC under the approver's key), never the key itself."""
    question = approvers.Question(str(run.id), str(run.state.state_details.pause_key), str(version), approve)
    return {
        "approve": approve,
        "approver": approver,
        "proof": approvers.sign(key, approver, question),
        "comment": comment,
    }


def _promotions(ctx: Context, version: str) -> int:
    """How many ledger records promote `version` to Production (a rollback may have promoted it before)."""
    model = ctx.config.project.registered_model
    return sum((e.version, e.to_stage) == (version, "Production") for e in ledger.read(ctx.paths.ledger, model))


def _await_outcome(ctx: Context, run_id: Any, version: str, approve: bool, promoted_before: int) -> str:
    """Wait until the answer took effect: for an approval, the version is Production in the registry AND the
    ledger holds the promotion's record (the rollout writes it just after the stage, possibly in the worker's
    flow-run process: reporting on the stage alone raced it); else the run ended. ApprovalError when an
    approval did not make the version Production."""
    deadline = time.monotonic() + ctx.config.serving.rollout_max_wait_s
    while True:
        prod = ctx.registry.one("Production")
        if approve and prod is not None and prod.version == version and _promotions(ctx, version) > promoted_before:
            return f"v{version} is Production"
        state = asyncio.run(_run_state(run_id))
        if state is not None and state.is_final():
            now = f"Production is {'v' + prod.version if prod else 'none'}"
            if approve:
                raise ApprovalError(f"approved, but the rollout ended {state.name}: {state.message}; {now}")
            return f"the rollout ended {str(state.name).lower()}; {now}, as before"
        if time.monotonic() > deadline:
            raise ApprovalError(f"answered, but nothing changed within serving.rollout_max_wait_s; flow run is {state}")
        time.sleep(1.0)


async def _run_state(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_flow_run(run_id)).state
