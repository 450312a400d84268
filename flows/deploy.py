"""deploy_model: shadow -> analysis -> canary -> analysis -> approval -> Production -> smoke test (-> rollback)."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.analysis import evidence_markdown
from tasks.approvals import request_approval
from tasks.controller import controlling
from tasks.deployment import (
    analyze_phase,
    check_candidate,
    enforce_approval,
    enforce_phase,
    load_gate_verdict,
    load_release_policy,
    promote_to_production,
    start_phase,
    store_approval,
    verify_release,
    wait_for_traffic,
)
from tasks.gates import GateVerdict
from tasks.pictures import log_phase_plots
from tasks.release_report import publish_release_report
from tasks.rollout import phase_plan
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="deploy_model")
def deploy_model(version: str, config: str | Context = DEFAULT_CONFIG, env: str = "dev") -> dict[str, str]:
    """Roll the Staging `version` out under this environment's rollout policy (the release's own is evidence only);
    Production changes only on approval. One rollout per model at a time; fails before it touches the gateway
    while another is in flight."""
    ctx = as_context(config, env)
    run_id = str(flow_run.id)
    # claim the model; the controller's heartbeat holds the challenger's lease in every phase, approval included
    with controlling(ctx, version, run_id):
        ctx, released_policy = load_release_policy(ctx, version)
        champion = check_candidate(ctx, version)
        phases: list[GateVerdict] = []
        # shadow, then canary; the first release has no champion to shadow or share traffic with
        for phase, share, needed in phase_plan(ctx.config.rollout) if champion else []:
            window = start_phase(ctx, version, phase, share, run_id)
            wait_for_traffic(ctx, version, window, needed, run_id)
            phases.append(analyze_phase(ctx, version, champion, window))
            log_phase_plots(ctx, version, champion, phase, window.since, phases[-1])  # failing phases too
            enforce_phase(ctx, version, phases[-1], phase, run_id)
        # approve
        gate = load_gate_verdict(ctx, version)
        report = publish_release_report(ctx, version)  # the pictures, linked from the approval form
        evidence = evidence_markdown(version, champion, gate, phases, ctx.config.rollout, released_policy, report)
        approval = request_approval(ctx, version, evidence)
        store_approval(ctx, version, approval, gate, phases, evidence)
        enforce_approval(ctx, version, approval, run_id)
        # promote, then smoke test (automatic rollback on failure)
        promote_to_production(ctx, version, approval, run_id)
        verify_release(ctx, version, run_id)
        publish_release_report(ctx, version)  # again, with the approval and the promotion in it
    return {"version": version, "replaced": champion, "approved_by": approval.approver}
