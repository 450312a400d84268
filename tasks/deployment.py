"""Deployment stage tasks: thin Prefect wrappers over tasks/rollout.py (shadow -> canary -> approval ->
Production, smoke test, rollback) and the phase analysis of tasks/analysis.py."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_table_artifact

from tasks import rollout
from tasks.analysis import Phase
from tasks.approvals import Approval
from tasks.common import tollgate_task
from tasks.gates import GateVerdict
from tasks.rollout import PhaseWindow, RolloutFailed
from tasks.tracking import artifact_key
from tollgate.config import RolloutConfig
from tollgate.context import Context

__all__ = ["RolloutFailed"]  # the CLI catches it from here


@tollgate_task(idempotent_io=True)
def load_release_policy(ctx: Context, version: str) -> tuple[Context, RolloutConfig]:
    """The context a rollout of `version` runs under (its release's context, this environment's servers and
    rollout policy) and the release's own rollout policy, shown as evidence only."""
    return rollout.release_policy(ctx, version)


@tollgate_task(idempotent_io=True)
def check_candidate(ctx: Context, version: str) -> str:
    """The candidate must be the Staging version; returns the Production version ('' when there is none)."""
    return rollout.check_candidate(ctx, version)


@tollgate_task
def start_phase(ctx: Context, version: str, phase: Phase, share: float, flow_run_id: str | None) -> PhaseWindow:
    """Put the candidate in shadow or canary on the gateway (tags + ledger + reload); the window starts now."""
    return rollout.start_phase(ctx, version, phase, share, flow_run_id)


@tollgate_task
def wait_for_traffic(ctx: Context, version: str, window: PhaseWindow, needed: int, flow_run_id: str | None) -> int:
    """Block until the phase has `needed` predictions; stop the rollout and raise after serving.rollout_max_wait_s."""
    return rollout.wait_for_traffic(ctx, version, window, needed, flow_run_id)


@tollgate_task
def analyze_phase(ctx: Context, version: str, champion: str, window: PhaseWindow) -> GateVerdict:
    """The phase analysis over its window, published as a Prefect table artifact."""
    verdict = rollout.analyze_window(ctx, version, champion, window)
    outcome = "PASSED" if verdict.passed else "FAILED"
    create_table_artifact(
        key=artifact_key(f"{window.phase}-analysis", ctx.config.project.registered_model),
        table=verdict.rows(),
        description=f"{window.phase} analysis of v{version} vs Production v{champion}: {outcome}",
    )
    return verdict


@tollgate_task
def enforce_phase(ctx: Context, version: str, verdict: GateVerdict, phase: Phase, flow_run_id: str | None) -> None:
    """Stop the rollout (Production untouched) and raise RolloutFailed when the phase analysis failed."""
    rollout.enforce_phase(ctx, version, verdict, phase, flow_run_id)


@tollgate_task(idempotent_io=True)
def load_gate_verdict(ctx: Context, version: str) -> dict[str, Any]:
    """The version's stored gate verdict (evidence for the approval form)."""
    return rollout.load_gate_verdict(ctx, version)


@tollgate_task
def store_approval(
    ctx: Context, version: str, approval: Approval, gate: dict[str, Any], phases: list[GateVerdict], evidence: str
) -> dict[str, Any]:
    """Keep the approval record (who, when, comment, the evidence seen) with the version."""
    return rollout.store_approval(ctx, version, approval, gate, phases, evidence)


@tollgate_task
def enforce_approval(ctx: Context, version: str, approval: Approval, flow_run_id: str | None) -> None:
    """Stop the rollout and raise RolloutFailed unless approved."""
    rollout.enforce_approval(ctx, version, approval, flow_run_id)


@tollgate_task
def promote_to_production(ctx: Context, version: str, approval: Approval, flow_run_id: str | None) -> dict[str, Any]:
    """Staging -> Production (the old Production -> Archived), gateway reloaded."""
    return rollout.promote_to_production(ctx, version, approval, flow_run_id)


@tollgate_task
def verify_release(ctx: Context, version: str, flow_run_id: str | None) -> dict[str, Any]:
    """Smoke-test the new Production; on failure restore the previous release and raise RolloutFailed."""
    return rollout.verify_release(ctx, version, flow_run_id)


@tollgate_task
def rollback_production(ctx: Context, to_version: str | None, reason: str, flow_run_id: str | None) -> dict[str, Any]:
    """Restore the previous (or named) release through the gateway, or in the registry if it is unreachable."""
    return rollout.rollback_via_gateway(ctx, to_version, reason, flow_run_id)
