"""retrain: guarded by cooldown and budget; fresh snapshot with backfilled labels -> the same gates -> rollout."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy import deploy_model
from flows.training import training_pipeline
from tasks.retraining import build_retrain_snapshot, guard_retrain
from tollgate.paths import PROJECT_ROOT
from tollgate.runtime import make_runtime


@flow(name="retrain")
def retrain(
    reason: str = "scheduled", config: str = str(PROJECT_ROOT / "configs" / "pipeline.yaml"), env: str = "dev"
) -> dict[str, Any]:
    """Retrain on the snapshot plus matured production labels; a model that fails a gate never serves."""
    rt = make_runtime(config, env)
    # guard
    allowed, why = guard_retrain(rt.config, rt.paths, reason)
    if not allowed:
        return {"status": "skipped", "why": why}
    # data
    snapshot = build_retrain_snapshot(rt.config, rt.paths, str(rt.resolve(rt.config.dataset.path)))
    # train + gate (raises GateRejected: the flow fails and nothing is deployed)
    trained = training_pipeline(config=config, env=env, data=snapshot, allow_dirty=True)
    # roll out through shadow, canary and approval
    deployed = deploy_model(version=trained.version, config=config, env=env)
    return {"status": "deployed", "version": trained.version, "snapshot": snapshot, **deployed}
