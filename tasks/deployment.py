"""Deployment stage: shadow -> canary -> approval -> Production, analyses, smoke test, rollback.

Rollout state lives on the Staging version as tags (mode, share) and the gateway reads it on reload; the
promotion state is the registry stage. Every move is in the ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.gates import Check, GateVerdict
from tasks.monitoring import psi_from_proportions
from tollgate.config import RolloutConfig, TollgateConfig
from tollgate.gateway_client import GatewayClient
from tollgate.paths import StatePaths
from tollgate.predlog import read_log
from tollgate.registry import (
    ROLLOUT_MODE_TAG,
    ROLLOUT_SHARE_TAG,
    Registry,
    ledger_entries,
    rollback_release,
)
from tollgate.release import load_release


class RolloutFailed(Exception):
    """A rollout phase failed (analysis, approval, smoke test); production was left or restored as it was."""


@dataclass(frozen=True)
class Approval:
    """A person's (or demo mode's) answer to the approval form."""

    approve: bool
    approver: str
    comment: str


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`, on quantile bins of `expected`."""
    expected, actual = np.asarray(expected, dtype="float64"), np.asarray(actual, dtype="float64")
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1) / len(expected)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1) / len(actual)
    return psi_from_proportions(e, a)


def _check(scope: str, name: str, value: float, limit: float, ok: bool, n: int, what: str) -> Check:
    return Check(scope, name, "pass" if ok else "fail", n, value, limit, reason=f"{what} {value:.4f} (limit {limit})")


def analyze_shadow_log(
    log: pd.DataFrame, version: str, champion: str, policy: RolloutConfig, shadow_errors: int
) -> GateVerdict:
    """Agreement, score shift, latency and errors of the shadow challenger against the champion's answers."""
    shadow = log[(log["role"] == "shadow") & (log["model_version"] == version)]
    champ = log[(log["role"] == "champion") & (log["model_version"] == champion)]
    pairs = shadow.merge(champ, on="request_id", suffixes=("_s", "_c"))
    n = len(pairs)
    agreement = float((pairs["decision_s"] == pairs["decision_c"]).mean()) if n else float("nan")
    shift = psi(pairs["score_c"].to_numpy(), pairs["score_s"].to_numpy())
    p99 = float(np.percentile(shadow["latency_ms"], 99)) if len(shadow) else float("nan")
    error_rate = shadow_errors / max(n + shadow_errors, 1)
    checks = [
        _check(
            "shadow",
            "agreement",
            agreement,
            policy.min_agreement,
            agreement >= policy.min_agreement,
            n,
            "decision agreement",
        ),
        _check(
            "shadow",
            "score_psi",
            shift,
            policy.max_score_psi,
            shift <= policy.max_score_psi,
            n,
            "score PSI vs champion",
        ),
        _check(
            "shadow",
            "p99_latency_ms",
            p99,
            policy.max_p99_latency_ms,
            p99 <= policy.max_p99_latency_ms,
            len(shadow),
            "p99 latency ms",
        ),
        _check(
            "shadow",
            "error_rate",
            error_rate,
            policy.max_error_rate,
            error_rate <= policy.max_error_rate,
            n,
            "error rate",
        ),
    ]
    return GateVerdict(all(c.status == "pass" for c in checks), f"Production v{champion}", champion, checks)


def analyze_canary_log(
    log: pd.DataFrame, version: str, champion: str, policy: RolloutConfig, canary_errors: int
) -> GateVerdict:
    """Error rate, latency and score distribution of canary answers against the champion's in the same window."""
    canary = log[(log["role"] == "canary") & (log["model_version"] == version)]
    champ = log[(log["role"] == "champion") & (log["model_version"] == champion)]
    n = len(canary)
    shift = psi(champ["score"].to_numpy(), canary["score"].to_numpy())
    p99 = float(np.percentile(canary["latency_ms"], 99)) if n else float("nan")
    error_rate = canary_errors / max(n + canary_errors, 1)
    checks = [
        _check(
            "canary",
            "score_psi",
            shift,
            policy.max_score_psi,
            shift <= policy.max_score_psi,
            n,
            "score PSI vs champion",
        ),
        _check(
            "canary",
            "p99_latency_ms",
            p99,
            policy.max_p99_latency_ms,
            p99 <= policy.max_p99_latency_ms,
            n,
            "p99 latency ms",
        ),
        _check(
            "canary",
            "error_rate",
            error_rate,
            policy.max_error_rate,
            error_rate <= policy.max_error_rate,
            n,
            "error rate",
        ),
    ]
    return GateVerdict(all(c.status == "pass" for c in checks), f"Production v{champion}", champion, checks)


def _registry(cfg: TollgateConfig, paths: StatePaths) -> Registry:
    return Registry(cfg.servers.mlflow_url, cfg.project.registered_model, paths.ledger)


@task(name="check_candidate", cache_policy=NO_CACHE)
def check_candidate(cfg: TollgateConfig, paths: StatePaths, version: str) -> str:
    """The candidate must be the Staging version and a Production version must exist; returns the champion."""
    reg = _registry(cfg, paths)
    info = reg.get(version)
    if info.stage != "Staging":
        raise RolloutFailed(
            f"{cfg.project.registered_model} v{version} is in stage {info.stage}; only the Staging "
            "version (which passed the gate) can be deployed"
        )
    prod = reg.one("Production")
    return prod.version if prod else ""


@task(name="set_rollout", cache_policy=NO_CACHE)
def set_rollout(
    cfg: TollgateConfig,
    paths: StatePaths,
    version: str,
    mode: Literal["shadow", "canary", "off"],
    share: float,
    flow_run_id: str | None,
) -> dict[str, Any]:
    """Tag the Staging version with its rollout mode, record it, and make the gateway serve it that way."""
    reg = _registry(cfg, paths)
    reg.set_tags(version, {ROLLOUT_MODE_TAG: mode, ROLLOUT_SHARE_TAG: str(share)})
    reg.record(
        version,
        "Staging",
        "Staging",
        f"rollout: {mode}" + (f" at {share:.0%}" if mode == "canary" else ""),
        None,
        flow_run_id=flow_run_id,
    )
    state = GatewayClient.from_config(cfg, paths).reload()
    expected = None if mode == "off" else version
    if state["challenger"] != expected or (expected and state["mode"] != mode):
        raise RolloutFailed(f"gateway did not pick up rollout {mode} of v{version}: it serves {state}")
    return state


@task(name="wait_for_traffic", cache_policy=NO_CACHE)
def wait_for_traffic(cfg: TollgateConfig, paths: StatePaths, version: str, role: str, needed: int, since: float) -> int:
    """Block until the log holds `needed` predictions of `role` by `version` since `since`; raise after
    serving.rollout_max_wait_s."""
    logger = get_run_logger()
    deadline = time.monotonic() + cfg.serving.rollout_max_wait_s
    seen = 0
    while time.monotonic() < deadline:
        log = read_log(paths.model_log(cfg.project.registered_model), since)
        seen = int(((log["role"] == role) & (log["model_version"] == version)).sum()) if len(log) else 0
        if seen >= needed:
            return seen
        logger.info("%s: %d of %d %s predictions so far", role, seen, needed, role)
        time.sleep(1.0)
    raise RolloutFailed(
        f"{role} phase of v{version} saw {seen} of {needed} predictions in "
        f"{cfg.serving.rollout_max_wait_s:.0f} s (serving.rollout_max_wait_s)"
    )


@task(name="analyze_phase", cache_policy=NO_CACHE)
def analyze_phase(
    cfg: TollgateConfig, paths: StatePaths, version: str, champion: str, phase: str, since: float
) -> GateVerdict:
    """The shadow or canary analysis over the log since the phase began, published as a Prefect table."""
    from prefect.artifacts import create_table_artifact

    from tasks.tracking import artifact_key

    errors = GatewayClient.from_config(cfg, paths).state().get("errors", {}).get(phase, 0)
    log = read_log(paths.model_log(cfg.project.registered_model), since)
    analyze = analyze_shadow_log if phase == "shadow" else analyze_canary_log
    verdict = analyze(log, version, champion, cfg.rollout, int(errors))
    create_table_artifact(
        key=artifact_key(f"{phase}-analysis", cfg.project.registered_model),
        table=verdict.rows(),
        description=f"{phase} analysis of v{version} vs Production v{champion}: "
        f"{'PASSED' if verdict.passed else 'FAILED'}",
    )
    return verdict


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


def request_approval(cfg: TollgateConfig, version: str, evidence: str) -> Approval:
    """Pause the flow run until a person answers the form in the Prefect UI (or `tollgate approve`); in demo
    mode (rollout.auto_approve) approve at once and say so."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    if cfg.rollout.auto_approve:
        return Approval(True, "auto-approved (rollout.auto_approve: demo mode)", "no person was asked")
    form = approval_input(cfg.rollout.approvers)
    get_run_logger().warning(
        "waiting up to %.0f s for approval of v%s: approve in the Prefect UI or run `tollgate approve %s --by NAME`",
        cfg.rollout.approval_timeout_s,
        version,
        version,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form.with_initial_data(description=evidence),  # type: ignore[attr-defined]
            timeout=int(cfg.rollout.approval_timeout_s),
            key=f"approve-v{version}",
        )
    except FlowPauseTimeout:
        return Approval(False, "nobody", f"approval timed out after {cfg.rollout.approval_timeout_s:.0f} s")
    got: Any = answer
    return Approval(bool(got.approve), str(got.approver), str(got.comment))


def evidence_markdown(version: str, champion: str, gate: dict[str, Any] | None, phases: list[GateVerdict]) -> str:
    """The evidence shown on the approval form."""
    lines = [f"### Promote v{version} to Production (replacing v{champion or 'none'})?", ""]
    if gate:
        lines.append(f"**Gate:** {'PASSED' if gate['passed'] else 'REJECTED'} against {gate['baseline']}")
        for c in gate["checks"]:
            if c["status"] != "pass":
                lines.append(f"- {c['status']} {c['scope']}: {c['reason']}")
    for verdict in phases:
        lines += ["", "| check | value | limit | status |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {c.scope} {c.check} | {c.challenger:.4f} | {c.threshold} | {c.status} |" for c in verdict.checks]
    return "\n".join(lines)


@task(name="promote_to_production", cache_policy=NO_CACHE)
def promote_to_production(
    cfg: TollgateConfig, paths: StatePaths, version: str, approval: Approval, flow_run_id: str | None
) -> dict[str, Any]:
    """Staging -> Production (the old Production -> Archived), rollout tags cleared, gateway reloaded."""
    reg = _registry(cfg, paths)
    reg.set_tags(version, {ROLLOUT_MODE_TAG: "off"})
    reg.transition(
        version,
        "Production",
        f"approved by {approval.approver}: {approval.comment}",
        None,
        who=approval.approver,
        flow_run_id=flow_run_id,
    )
    state = GatewayClient.from_config(cfg, paths).reload()
    if state["champion"] != version:
        raise RolloutFailed(f"gateway still serves v{state['champion']} after promoting v{version}")
    return state


@task(name="abort_rollout", cache_policy=NO_CACHE)
def abort_rollout(cfg: TollgateConfig, paths: StatePaths, version: str, reason: str, flow_run_id: str | None) -> None:
    """Stop the rollout: the challenger is archived with the reason, Production untouched, gateway reloaded."""
    reg = _registry(cfg, paths)
    reg.set_tags(version, {ROLLOUT_MODE_TAG: "off"})
    if reg.get(version).stage == "Staging":
        reg.transition(version, "Archived", f"rollout aborted: {reason}", None, flow_run_id=flow_run_id)
    GatewayClient.from_config(cfg, paths).reload()


@task(name="smoke_test", cache_policy=NO_CACHE)
def smoke_test(cfg: TollgateConfig, paths: StatePaths, version: str) -> dict[str, Any]:
    """Send the release's smoke records through the gateway: every answer must come from `version` with a valid
    score."""
    records = load_release(cfg, _registry(cfg, paths), version=version).file("smoke_records.json")
    answers = GatewayClient.from_config(cfg, paths).predict(records)
    wrong = [a for a in answers if a["model_version"] != version or not 0.0 <= a["score"] <= 1.0]
    if len(answers) != len(records) or wrong:
        raise RolloutFailed(f"smoke test: {len(wrong)} of {len(records)} answers wrong, e.g. {wrong[:2]}")
    return {"requests": len(records), "ok": len(answers)}


@task(name="rollback_production", cache_policy=NO_CACHE)
def rollback_production(
    cfg: TollgateConfig, paths: StatePaths, to_version: str | None, reason: str, flow_run_id: str | None
) -> dict[str, Any]:
    """Roll back through the gateway (it swaps to the warm release at once), or directly if it is down."""
    from tollgate.gateway_client import GatewayError

    client = GatewayClient.from_config(cfg, paths)
    try:
        return client.rollback(to_version, reason, flow_run_id)
    except GatewayError as exc:
        get_run_logger().warning("gateway rollback failed (%s); rolling back in the registry directly", exc)
        before, after = rollback_release(_registry(cfg, paths), to_version, reason, None, flow_run_id)
        return {"from": before, "to": after, "served": False}


@task(name="release_config", cache_policy=NO_CACHE)
def release_config(cfg: TollgateConfig, paths: StatePaths, version: str) -> TollgateConfig:
    """The candidate's own policies (rollout, thresholds) from its release context, with this environment's
    servers: a rollout follows the policy the version was released with, not the working tree's."""
    return load_release(cfg, _registry(cfg, paths), version=version).config


@task(name="load_gate_verdict", cache_policy=NO_CACHE)
def load_gate_verdict(cfg: TollgateConfig, paths: StatePaths, version: str) -> dict[str, Any]:
    """The version's stored gate verdict (evidence for the approval form)."""
    return dict(load_release(cfg, _registry(cfg, paths), version=version).file("gate_verdict.json"))


@task(name="enforce_phase", cache_policy=NO_CACHE)
def enforce_phase(
    cfg: TollgateConfig, paths: StatePaths, version: str, verdict: GateVerdict, phase: str, flow_run_id: str | None
) -> None:
    """Abort the rollout (Production untouched) and raise when a phase analysis failed."""
    if not verdict.passed:
        reason = f"{phase} analysis failed: " + "; ".join(c.reason for c in verdict.failures)
        abort_rollout.fn(cfg, paths, version, reason, flow_run_id)
        raise RolloutFailed(reason)


@task(name="enforce_approval", cache_policy=NO_CACHE)
def enforce_approval(
    cfg: TollgateConfig, paths: StatePaths, version: str, approval: Approval, flow_run_id: str | None
) -> None:
    """Abort the rollout and raise unless approved."""
    if not approval.approve:
        reason = f"not approved by {approval.approver}: {approval.comment}"
        _registry(cfg, paths).record(
            version, "Staging", "Staging", reason, None, who=approval.approver, flow_run_id=flow_run_id
        )
        abort_rollout.fn(cfg, paths, version, reason, flow_run_id)
        raise RolloutFailed(reason)


@task(name="verify_release", cache_policy=NO_CACHE)
def verify_release(cfg: TollgateConfig, paths: StatePaths, version: str, flow_run_id: str | None) -> dict[str, Any]:
    """Smoke-test the new Production; on failure roll back to the previous release automatically and raise."""
    try:
        return smoke_test.fn(cfg, paths, version)
    except Exception as exc:
        reg = _registry(cfg, paths)
        if not any(e.from_stage == "Production" and e.version != version for e in ledger_entries(reg)):
            # The first release: there is nothing to roll back to, so production goes back to empty.
            reg.transition(version, "Archived", f"automatic: smoke test failed: {exc}", None, flow_run_id=flow_run_id)
            GatewayClient.from_config(cfg, paths).reload()
            raise RolloutFailed(f"smoke test of v{version} failed ({exc}); it was archived") from exc
        done = rollback_production.fn(
            cfg, paths, None, f"automatic: smoke test of v{version} failed: {exc}", flow_run_id
        )
        raise RolloutFailed(f"smoke test of v{version} failed ({exc}); rolled back to v{done['to']}") from exc
