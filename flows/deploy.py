"""deploy_model: shadow -> analysis -> canary -> analysis -> approval -> Production -> smoke test (-> rollback)."""

from __future__ import annotations

import time

from prefect import flow
from prefect.runtime import flow_run

from tasks.deployment import (
    analyze_phase,
    check_candidate,
    enforce_approval,
    enforce_phase,
    evidence_markdown,
    load_gate_verdict,
    promote_to_production,
    release_config,
    request_approval,
    set_rollout,
    verify_release,
    wait_for_traffic,
)
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="deploy_model")
def deploy_model(version: str, config: str | Context = DEFAULT_CONFIG, env: str = "dev") -> dict[str, str]:
    """Roll the Staging `version` out under its own release's rollout policy; Production changes only on approval."""
    ctx = as_context(config, env)
    paths, run_id = ctx.paths, str(flow_run.id)
    cfg = release_config(ctx.config, paths, version)
    champion = check_candidate(cfg, paths, version)
    phases = []
    if champion:  # the first release has no champion to shadow or share traffic with
        # shadow
        since = time.time()
        set_rollout(cfg, paths, version, "shadow", 0.0, run_id)
        wait_for_traffic(cfg, paths, version, "shadow", cfg.rollout.shadow_requests, since)
        phases.append(analyze_phase(cfg, paths, version, champion, "shadow", since))
        enforce_phase(cfg, paths, version, phases[-1], "shadow", run_id)
        # canary
        since = time.time()
        set_rollout(cfg, paths, version, "canary", cfg.rollout.canary_share, run_id)
        wait_for_traffic(cfg, paths, version, "canary", cfg.rollout.canary_requests, since)
        phases.append(analyze_phase(cfg, paths, version, champion, "canary", since))
        enforce_phase(cfg, paths, version, phases[-1], "canary", run_id)
    # approve
    gate = load_gate_verdict(cfg, paths, version)
    approval = request_approval(cfg, version, evidence_markdown(version, champion, gate, phases))
    enforce_approval(cfg, paths, version, approval, run_id)
    # promote, then smoke test (automatic rollback on failure)
    promote_to_production(cfg, paths, version, approval, run_id)
    verify_release(cfg, paths, version, run_id)
    return {"version": version, "replaced": champion, "approved_by": approval.approver}
