"""ci_pipeline: a pushed commit, checked out clean, runs training_pipeline and (when the gate passes) deploy_model."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.ci import checkout_commit, deploy_checkout, prepare_checkout, train_checkout
from tollgate.paths import PROJECT_ROOT, StatePaths

CI_CONFIG = "configs/pipeline.yaml"


@flow(name="ci_pipeline")
def ci_pipeline(
    sha: str,
    branch: str = "main",
    repo: str = str(PROJECT_ROOT),
    config: str = CI_CONFIG,
    env: str = "dev",
    deploy: bool = True,
) -> dict[str, Any]:
    """Run the pipeline as it is at `sha` (the checkout's code and config, not this working tree). `config` is
    the project's config path inside the repository, read in the checkout (an absolute path is read as is)."""
    paths = StatePaths.from_env()
    # checkout
    checkout = checkout_commit(repo, sha, str(paths.work))
    prepare_checkout(checkout, config, env, str(paths.home))
    # train + gate
    trained = train_checkout(checkout, config, env, str(paths.home))
    # roll out
    deployed = deploy_checkout(checkout, trained["version"], config, env, str(paths.home)) if deploy else {}
    return {"sha": sha, "branch": branch, "config": config, **trained, **deployed}
