"""ci_pipeline: a pushed commit of ci.repository, checked out clean, trained (and, when the gate passes, deployed)
by this worker's own flows on the commit's config and data."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy import deploy_model
from flows.training import training_pipeline
from tasks.ci import check_repository, checkout_commit, load_checkout, prepare_checkout
from tollgate.context import DEFAULT_CONFIG, Context, as_context

CI_CONFIG = "configs/pipeline.yaml"


@flow(name="ci_pipeline")
def ci_pipeline(
    sha: str,
    branch: str = "main",
    repo: str | None = None,
    config: str | Context = DEFAULT_CONFIG,
    ci_config: str = CI_CONFIG,
    env: str = "dev",
    deploy: bool = True,
) -> dict[str, Any]:
    """Train the commit `sha` of ci.repository (from `config`, the deploying environment's config) on the config
    file `ci_config` inside the checkout and the data it records. `repo` (a push event's remote) is only checked:
    naming any other repository fails the run before anything is cloned. The checkout's own code runs only to
    restore its data, without logins; registering, gating and deploying are this worker's flows."""
    ctx = as_context(config, env)
    # check: ci.repository only
    source = check_repository(ctx, repo)
    # checkout + data (the commit's code runs here, with no login and a scratch state folder)
    checkout = checkout_commit(source, sha, str(ctx.paths.work))
    prepare_checkout(ctx, checkout, ci_config)
    # train + gate: the commit's config and data, this worker's code, the deploying environment's authority
    pushed = load_checkout(ctx, checkout, ci_config)
    trained = training_pipeline(config=pushed, data=str(pushed.resolve(pushed.config.dataset.path)))
    # roll out
    deployed = {"deployed": deploy_model(version=trained.version, config=pushed)["version"]} if deploy else {}
    summary = {"version": trained.version, "stage": trained.stage, "run_id": trained.run_id}
    return {"sha": sha, "branch": branch, "config": ci_config, **summary, **deployed}
