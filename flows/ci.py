"""ci_pipeline: a pushed commit, checked out clean, runs training_pipeline and (when the gate passes) deploy_model."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.ci import checkout_commit, deploy_checkout, prepare_checkout, train_checkout
from tollgate.context import DEFAULT_CONFIG, make_context
from tollgate.paths import PROJECT_ROOT


@flow(name="ci_pipeline")
def ci_pipeline(
    sha: str, branch: str = "main", repo: str = str(PROJECT_ROOT), env: str = "dev", deploy: bool = True
) -> dict[str, Any]:
    """Run the pipeline as it is at `sha` (the checkout's code and config, not this working tree)."""
    ctx = make_context(DEFAULT_CONFIG, env)
    # checkout
    checkout = checkout_commit(repo, sha, str(ctx.paths.work))
    prepare_checkout(checkout, str(ctx.paths.home))
    # train + gate
    trained = train_checkout(checkout, env, str(ctx.paths.home))
    # roll out
    deployed = deploy_checkout(checkout, trained["version"], env, str(ctx.paths.home)) if deploy else {}
    return {"sha": sha, "branch": branch, **trained, **deployed}
