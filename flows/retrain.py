"""retrain: guarded by cooldown and budget; fresh snapshot with backfilled labels -> the same gates -> rollout."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy import deploy_model
from flows.training import training_pipeline
from tasks.retraining import build_retrain_snapshot, guard_retrain, settle_retrain
from tollgate.context import DEFAULT_CONFIG, Context, as_context


@flow(name="retrain")
def retrain(reason: str = "scheduled", config: str | Context = DEFAULT_CONFIG, env: str = "dev") -> dict[str, Any]:
    """Retrain on the snapshot plus matured production labels; a model that fails a gate never serves."""
    ctx = as_context(config, env)
    # guard: a claim concurrent triggers see; a retrain that fails before training releases it
    claim = guard_retrain(ctx, reason)
    if not claim.allowed:
        return {"status": "skipped", "why": claim.why}
    try:
        # data
        snapshot = build_retrain_snapshot(ctx)
        # train + gate (raises GateRejected: the flow fails and nothing is deployed)
        trained = training_pipeline(config=ctx, data=snapshot, allow_dirty=True)
        # roll out through shadow, canary and approval
        deployed = deploy_model(version=trained.version, config=ctx)
    except Exception as exc:  # recorded (a failure before training frees the cooldown), then raised
        settle_retrain(ctx, claim, exc)
        raise
    settle_retrain(ctx, claim)
    return {"status": "deployed", "version": trained.version, "snapshot": snapshot, **deployed}
