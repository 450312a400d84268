"""deployments/prefect.yaml as Prefect renders it for one project (the same templating `prefect deploy` applies
with the variables `tollgate up` sets): every deployment carries the project's config path and env, names carry
the registered model, and the retrain trigger matches only that model's events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.templating import apply_values

from tests.helpers import ROOT, bundled_config
from tollgate.app.stack import DeploymentTarget, deployment_variables

SPEC = ROOT / "deployments" / "prefect.yaml"


def _rendered(target: DeploymentTarget, root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """The deployments as `prefect deploy` templates them: {{ $VAR }} placeholders come from the environment
    of the `prefect deploy` process, which apply_deployments sets to deployment_variables(...)."""
    spec = yaml.safe_load(SPEC.read_text())
    with pytest.MonkeyPatch.context() as mp:
        for name, value in deployment_variables(root, bundled_config().servers, target).items():
            mp.setenv(name, value)
        rendered = apply_values(spec, {}, remove_notset=False)
    return {d["entrypoint"].split(":")[1]: d for d in rendered["deployments"]}


def test_every_deployment_runs_the_config_that_applied_it() -> None:
    config = ROOT / "tests" / "fixtures" / "byod" / "pipeline.yaml"
    target = DeploymentTarget(config, "staging", "loan-default")
    by_flow = _rendered(target)
    assert len(by_flow) == 8  # one per flow, batch_inference included
    for flow, dep in by_flow.items():
        assert dep["name"].endswith("-loan-default"), flow
        # ci_pipeline also gets the config's path inside the repository: the file it trains in the clone
        inside = {"ci_config": "tests/fixtures/byod/pipeline.yaml"} if flow == "ci_pipeline" else {}
        assert dep["parameters"] == {"config": str(config), "env": "staging", **inside}, flow
        assert "$TOLLGATE" not in yaml.safe_dump(dep), flow
        assert dep["work_pool"]["name"] == bundled_config().servers.work_pool


def test_the_retrain_trigger_matches_only_its_own_model_and_passes_the_config() -> None:
    target = DeploymentTarget(ROOT / "configs" / "pipeline.yaml", "dev", "churn-classifier")
    (trigger,) = _rendered(target)["retrain"]["triggers"]
    assert trigger["match"] == {"prefect.resource.id": "tollgate.model.churn-classifier"}
    assert trigger["match"]["prefect.resource.id"] == target.resource_id
    assert trigger["parameters"] == {
        "reason": "{{ event.event }}",  # left for Prefect to fill from the event
        "config": str(ROOT / "configs" / "pipeline.yaml"),
        "env": "dev",
    }


def test_the_ci_trigger_trains_the_project_config_inside_the_clone() -> None:
    """The push event's remote reaches ci_pipeline only as `repo`, which it checks against ci.repository of the
    deploying config (`config`) before cloning; `ci_config` is the file it trains in the clone."""
    target = DeploymentTarget(ROOT / "configs" / "pipeline.yaml", "prod", "churn-classifier")
    (trigger,) = _rendered(target)["ci_pipeline"]["triggers"]
    assert trigger["parameters"] == {
        "sha": "{{ event.payload.sha }}",
        "branch": "{{ event.payload.branch }}",
        "repo": "{{ event.payload.remote }}",
        "config": str(ROOT / "configs" / "pipeline.yaml"),
        "ci_config": "configs/pipeline.yaml",
        "env": "prod",
    }
    # a config outside the repository is passed as it is
    outside = DeploymentTarget(Path("/srv/other/pipeline.yaml"), "dev", "m")
    assert outside.ci_config(ROOT) == "/srv/other/pipeline.yaml"


def test_two_models_get_distinct_deployment_names() -> None:
    a = DeploymentTarget(ROOT / "configs" / "pipeline.yaml", "dev", "churn-classifier")
    b = DeploymentTarget(ROOT / "configs" / "b.yaml", "dev", "team/loans & fraud")
    names_a = {d["name"] for d in _rendered(a).values()}
    names_b = {d["name"] for d in _rendered(b).values()}
    assert not names_a & names_b
    assert b.name("retrain") == "retrain-team-loans-fraud"
    assert not any(ch in n for n in names_b for ch in "/%&<>")
