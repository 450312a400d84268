"""The rollout stage as plain functions over a Context: shadow -> canary -> approval -> Production, smoke test,
rollback. tasks/deployment.py wraps them as Prefect tasks; tests, benchmarks and other stages call them directly.

Rollout state lives on the Staging version as tags (mode, share) and the gateway reads it on reload; the
promotion state is the registry stage. Every move is in the ledger. Nothing here needs a Prefect run. The
rollout renews its lease on the gateway on each traffic poll, and its controller's heartbeat renews it in every
phase, the approval wait included (tasks/controller.py); the gateway stops the rollout by itself when the lease
lapses (serving/lease.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from tasks.analysis import Phase, analyze_phase_log
from tasks.approvals import Approval
from tasks.common import run_logger
from tasks.gates import GateVerdict
from tollgate.config import RolloutConfig
from tollgate.context import Context
from tollgate.gateway_client import GatewayClient, GatewayError
from tollgate.objective import Objective
from tollgate.predlog import read_log
from tollgate.registry import (
    ROLLOUT_MODE_TAG,
    ROLLOUT_OUTCOME_TAG,
    ROLLOUT_SHARE_TAG,
    RegistryError,
    previous_production,
    rollback_release,
)
from tollgate.release import load_release

# How far a multiclass answer's probabilities may sum from 1 (float rounding of k probabilities, k small).
SMOKE_PROBABILITY_SLACK = 1e-6
# The config sections a rollout reads from the candidate's release (the context it was trained and evaluated
# with); the rest is this environment's. The rollout policy (who approves, auto_approve, phase thresholds) is not
# among them: authority belongs to the deploying environment, the release's own is shown as evidence only.
RELEASE_SECTIONS = ("monitoring", "serving", "alerts")


class RolloutFailed(Exception):
    """A rollout phase failed (analysis, approval, smoke test); production was left or restored as it was."""


@dataclass(frozen=True)
class PhaseWindow:
    """A rollout phase under way: which, since when, and the gateway's error count for it when it began."""

    phase: Phase
    since: float
    errors_before: int


def release_policy(ctx: Context, version: str) -> tuple[Context, RolloutConfig]:
    """`ctx` with the candidate's release context (RELEASE_SECTIONS of the config it was released with) and this
    environment's servers, state folder and rollout policy; plus the release's own rollout policy, as evidence."""
    released = load_release(ctx.config, ctx.registry, version=version).config
    return ctx.with_config(**{s: getattr(released, s).model_dump() for s in RELEASE_SECTIONS}), released.rollout


def phase_plan(policy: RolloutConfig) -> list[tuple[Phase, float, int]]:
    """(phase, traffic share, predictions needed) for each phase, in order."""
    return [("shadow", 0.0, policy.shadow_requests), ("canary", policy.canary_share, policy.canary_requests)]


def check_candidate(ctx: Context, version: str) -> str:
    """The candidate must be the Staging version; returns the Production version ('' when there is none)."""
    info = ctx.registry.get(version)
    if info.stage != "Staging":
        raise RolloutFailed(
            f"{ctx.config.project.registered_model} v{version} is in stage {info.stage}; only the Staging "
            "version (which passed the gate) can be deployed"
        )
    prod = ctx.registry.one("Production")
    return prod.version if prod else ""


def set_rollout(
    ctx: Context, version: str, mode: Literal["shadow", "canary", "off"], share: float, flow_run_id: str | None
) -> dict[str, Any]:
    """Tag the Staging version with its rollout mode, record it, and make the gateway serve it that way."""
    ctx.registry.set_tags(version, {ROLLOUT_MODE_TAG: mode, ROLLOUT_SHARE_TAG: str(share)})
    why = f"rollout: {mode}" + (f" at {share:.0%}" if mode == "canary" else "")
    ctx.registry.record(version, "Staging", "Staging", why, None, flow_run_id=flow_run_id)
    state = ctx.gateway().reload()
    expected = None if mode == "off" else version
    if state["challenger"] != expected or (expected and state["mode"] != mode):
        raise RolloutFailed(
            not_picked_up(ctx.config.project.registered_model, ctx.config.servers.gateway_url, mode, version, state)
        )
    return state


def not_picked_up(model: str, url: str, mode: str, version: str, state: dict[str, Any]) -> str:
    """Why a rollout step did not take, naming both models when the gateway serves another one."""
    served = state.get("model")
    if served and served != model:
        return (
            f"the gateway at {url} serves model {served!r}, not {model!r}: deploy {model} through its own gateway "
            "(servers.gateway_port of its config)"
        )
    challenger = f"v{state['challenger']}" if state.get("challenger") else "none"
    return (
        f"gateway did not pick up rollout {mode} of {model} v{version}: it serves champion v{state.get('champion')}, "
        f"challenger {challenger} ({state.get('mode')})"
    )


def _gateway_errors(ctx: Context, phase: Phase) -> int:
    return int(ctx.gateway().state().get("errors", {}).get(phase, 0))


def start_phase(ctx: Context, version: str, phase: Phase, share: float, flow_run_id: str | None) -> PhaseWindow:
    """Put the candidate in `phase` on the gateway; the window it returns starts now."""
    from tasks.controller import stop_if_cancelled  # here: tasks.controller builds on this module

    since = time.time()
    stop_if_cancelled(flow_run_id)  # a cancelled rollout must not put its challenger back
    set_rollout(ctx, version, phase, share, flow_run_id)
    return PhaseWindow(phase, since, _gateway_errors(ctx, phase))


def phase_log(ctx: Context, since: float) -> Any:
    """This model's prediction log since `since`."""
    return read_log(ctx.paths.model_log(ctx.config.project.registered_model), since)


def renew_lease(ctx: Context, version: str, until_s: float, client: GatewayClient | None = None) -> None:
    """Ask the gateway to keep the challenger `version` for `until_s` more seconds; a failed renewal is logged
    and left to the next one (the lease covers a few missed polls)."""
    gateway = client or ctx.gateway()
    try:
        gateway.lease(version, until_s)
    except GatewayError as exc:
        run_logger().warning("could not renew the rollout lease of v%s: %s", version, exc)
    finally:
        if client is None:
            gateway.close()


def wait_for_traffic(
    ctx: Context, version: str, window: PhaseWindow, needed: int, flow_run_id: str | None = None
) -> int:
    """Block until the window holds `needed` predictions by the candidate in its phase; after
    serving.rollout_max_wait_s stop the rollout (Production untouched) and raise. Renews the lease each poll."""
    limit = ctx.config.serving.rollout_max_wait_s
    deadline, seen = time.monotonic() + limit, 0
    gateway = ctx.gateway()
    try:
        while time.monotonic() < deadline:
            renew_lease(ctx, version, ctx.config.rollout.lease_s, gateway)
            log = phase_log(ctx, window.since)
            seen = int(((log["role"] == window.phase) & (log["model_version"] == version)).sum()) if len(log) else 0
            if seen >= needed:
                return seen
            run_logger().info("%s: %d of %d predictions so far", window.phase, seen, needed)
            time.sleep(ctx.config.serving.rollout_poll_s)
    finally:
        gateway.close()
    reason = f"{window.phase} phase saw {seen} of {needed} predictions in {limit:.0f} s (serving.rollout_max_wait_s)"
    abort_rollout(ctx, version, reason, flow_run_id)
    raise RolloutFailed(f"v{version}: {reason}")


def analyze_window(ctx: Context, version: str, champion: str, window: PhaseWindow) -> GateVerdict:
    """The phase analysis over the log since the window began, under the context's rollout policy."""
    errors = max(_gateway_errors(ctx, window.phase) - window.errors_before, 0)  # 0 if the gateway restarted
    log = phase_log(ctx, window.since)
    cfg = ctx.config
    task = load_release(cfg, ctx.registry, version=version).objective.task
    return analyze_phase_log(
        log, window.phase, version, champion, errors, cfg.rollout, cfg.monitoring.reference_bins, task
    )


def abort_rollout(ctx: Context, version: str, reason: str, flow_run_id: str | None) -> None:
    """Stop the rollout: the challenger is archived with the reason, Production untouched, gateway reloaded."""
    ctx.registry.set_tags(version, {ROLLOUT_MODE_TAG: "off", ROLLOUT_OUTCOME_TAG: f"aborted: {reason}"[:500]})
    if ctx.registry.get(version).stage == "Staging":
        ctx.registry.transition(version, "Archived", f"rollout aborted: {reason}", None, flow_run_id=flow_run_id)
    ctx.gateway().reload()


def enforce_phase(ctx: Context, version: str, verdict: GateVerdict, phase: Phase, flow_run_id: str | None) -> None:
    """Stop the rollout (Production untouched) and raise when a phase analysis failed."""
    if not verdict.passed:
        reason = f"{phase} analysis failed: " + "; ".join(c.reason for c in verdict.failures)
        abort_rollout(ctx, version, reason, flow_run_id)
        raise RolloutFailed(reason)


def store_approval(
    ctx: Context, version: str, approval: Approval, gate: dict[str, Any], phases: list[GateVerdict], evidence: str
) -> dict[str, Any]:
    """Keep the answer with the version: who, when, comment and the evidence the approver saw (gate verdict,
    shadow/canary tables) as a JSON artifact of its run (`approvals/`), and a summary in its tags/description."""
    import mlflow

    record = {
        "version": version,
        "approve": approval.approve,
        "approver": approval.approver,
        "at": approval.at,
        "comment": approval.comment,
        "refused_before": list(approval.refused),
        "evidence": {"gate_verdict": gate, "phases": [p.to_dict() for p in phases], "form": evidence},
    }
    client = mlflow.MlflowClient(tracking_uri=ctx.config.servers.mlflow_url)
    stamp = approval.at.replace(":", "").replace("-", "")
    client.log_dict(ctx.registry.get(version).run_id, record, f"approvals/v{version}-{stamp}.json")
    answer = f"{'approved' if approval.approve else 'rejected'} by {approval.approver} at {approval.at}"
    tags = {"tollgate.approval": f"{answer}: {approval.comment}"[:500]}
    if approval.approve:
        tags["tollgate.approval.by"] = f"{approval.approver} at {approval.at}"
    ctx.registry.set_tags(version, tags)
    return record


def enforce_approval(ctx: Context, version: str, approval: Approval, flow_run_id: str | None) -> None:
    """Stop the rollout, recording who said no, and raise unless approved."""
    if not approval.approve:
        reason = f"not approved by {approval.approver}: {approval.comment}"
        ctx.registry.record(version, "Staging", "Staging", reason, None, who=approval.approver, flow_run_id=flow_run_id)
        abort_rollout(ctx, version, reason, flow_run_id)
        raise RolloutFailed(reason)


def load_gate_verdict(ctx: Context, version: str) -> dict[str, Any]:
    """The version's stored gate verdict (evidence for the approval form)."""
    return dict(load_release(ctx.config, ctx.registry, version=version).file("gate_verdict.json"))


def promote_to_production(ctx: Context, version: str, approval: Approval, flow_run_id: str | None) -> dict[str, Any]:
    """Staging -> Production (the old Production -> Archived), rollout tags cleared, gateway reloaded. The
    gateway loads and smoke-tests the version first: if it cannot, nothing moves (RolloutFailed naming why)."""
    try:
        ctx.gateway().preflight(version)
    except GatewayError as exc:
        raise RolloutFailed(f"v{version} failed the gateway's load + smoke test, nothing promoted: {exc}") from exc
    why = f"approved by {approval.approver}: {approval.comment}"
    ctx.registry.set_tags(
        version,
        {ROLLOUT_MODE_TAG: "off", ROLLOUT_OUTCOME_TAG: f"promoted to Production, {why}"[:500]},
    )
    ctx.registry.transition(version, "Production", why, None, who=approval.approver, flow_run_id=flow_run_id)
    state = ctx.gateway().reload()
    if state["champion"] != version:
        raise RolloutFailed(f"gateway still serves v{state['champion']} after promoting v{version}")
    return state


def answer_problem(answer: dict[str, Any], version: str, objective: Objective) -> str | None:
    """What is wrong with one gateway answer for a release of `objective`'s task, or None: it must come from
    `version`; binary: score in [0, 1] and decision one of the two classes; multiclass: probabilities over the classes summing to 1,
    score their maximum and decision a class; regression: a finite value that is also the score and decision."""
    if answer.get("model_version") != version:
        return f"answered by v{answer.get('model_version')}"
    score, decision = answer.get("score"), answer.get("decision")
    if not isinstance(score, int | float) or not math.isfinite(score):
        return f"score {score!r} is not a finite number"
    if objective.task == "regression":
        value = answer.get("value")
        ok = isinstance(value, int | float) and math.isfinite(value) and value == score == decision
        return None if ok else f"value {value!r} is not a finite number equal to score and decision"
    if not 0.0 <= score <= 1.0:
        return f"score {score} is outside [0, 1]"
    if decision not in objective.labels or type(decision) is not type(objective.labels[0]):
        return f"decision {decision!r} is not one of the classes {list(objective.labels)}"
    if objective.task == "multiclass":
        probs = answer.get("probabilities") or {}
        if sorted(probs) != sorted(str(c) for c in objective.labels):
            return f"probabilities {probs!r} are not keyed by the classes {list(objective.labels)}"
        if abs(sum(probs.values()) - 1.0) > SMOKE_PROBABILITY_SLACK or abs(max(probs.values()) - score) > 1e-9:
            return f"probabilities {probs!r} do not sum to 1 with the score {score} as their maximum"
    return None


def smoke_test(ctx: Context, version: str) -> dict[str, Any]:
    """Send the release's smoke records through the gateway: every answer must come from `version` and be valid
    for the release's task (answer_problem); raise RolloutFailed otherwise."""
    release = load_release(ctx.config, ctx.registry, version=version)
    records = release.file("smoke_records.json")
    objective = release.objective
    answers = ctx.gateway().predict(records)
    wrong = [(a, why) for a in answers if (why := answer_problem(a, version, objective))]
    if len(answers) != len(records) or wrong:
        raise RolloutFailed(f"smoke test: {len(wrong)} of {len(records)} answers wrong, e.g. {wrong[:2]}")
    return {"requests": len(records), "ok": len(answers)}


def rollback_via_gateway(
    ctx: Context, to: str | None, reason: str, flow_run_id: str | None, who: str | None = None
) -> dict[str, Any]:
    """Make the previous (or the named) release Production: through the gateway, which swaps to the warm release
    at once, or in the registry directly when the gateway is unreachable (it serves the release when it starts).
    Both run tollgate.registry.rollback_release. Returns {"from", "to", "served", ...}."""
    try:
        return ctx.gateway().rollback(to, reason, flow_run_id, who)
    except GatewayError as exc:
        if not exc.unreachable:
            raise  # the gateway answered (refused, or failed after acting): rolling back again could go too far
        run_logger().warning("gateway rollback failed (%s); rolling back in the registry directly", exc)
    before, after = rollback_release(ctx.registry, to, reason, who, flow_run_id, check=lambda t: _loads(ctx, t.version))
    return {"from": before, "to": after, "served": False}


def _loads(ctx: Context, version: str) -> None:
    """With no gateway to smoke-test in, at least prove the target loads: its files are the ones the pipeline
    stored (provenance) and its model deserializes under the project's allow-list."""
    load_release(ctx.config, ctx.registry, version=version).load_model()


def verify_release(ctx: Context, version: str, flow_run_id: str | None) -> dict[str, Any]:
    """Smoke-test the new Production; on failure restore the previous release (or, for a first release, archive
    it so nothing serves) and raise RolloutFailed."""
    try:
        return smoke_test(ctx, version)
    except Exception as exc:
        why = f"automatic: smoke test of v{version} failed: {exc}"
        try:
            previous_production(ctx.registry, version)
        except RegistryError:
            ctx.registry.transition(version, "Archived", why, None, flow_run_id=flow_run_id)
            ctx.gateway().reload()
            raise RolloutFailed(f"smoke test of v{version} failed ({exc}); it was archived") from exc
        done = rollback_via_gateway(ctx, None, why, flow_run_id)
        raise RolloutFailed(f"smoke test of v{version} failed ({exc}); rolled back to v{done['to']}") from exc
