"""The release: a registered model version plus the context it was trained with (resolved config, expectation
suite, reference profile, evaluation, gate verdict, smoke records, model card, model).

`load_release` is the one loader: the gateway, deploy, monitoring, training's baseline and rollback all read a
version's context through it, so a rollback restores all of it and no caller reads the working tree's config
for a served version. The release's config keeps this environment's `servers` (where the stack runs is not
part of a release).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollgate.config import TollgateConfig
from tollgate.objective import Objective
from tollgate.registry import Registry, RegistryError, VersionInfo

RELEASE_DIR = "release"  # the run artifact folder holding the release context


def load_release_file(tracking_uri: str, run_id: str, name: str) -> Any:
    """One release-context artifact of a version's run (JSON parsed, anything else as text)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{RELEASE_DIR}/{name}", dst_path=tmp)
        text = Path(local).read_text()
    return json.loads(text) if name.endswith(".json") else text


def load_model(tracking_uri: str, model_name: str, version: str) -> Any:
    """The fitted sklearn Pipeline of a registered version."""
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


@dataclass(frozen=True)
class Release:
    """One registered version with its release context; further context files are read on demand."""

    model_name: str
    version: str
    run_id: str
    stage: str
    tags: dict[str, str]
    config: TollgateConfig
    tracking_uri: str
    _files: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def file(self, name: str) -> Any:
        """A release-context artifact (config.json, reference_profile.json, gate_verdict.json, ...), read once."""
        if name not in self._files:
            self._files[name] = load_release_file(self.tracking_uri, self.run_id, name)
        return self._files[name]

    @property
    def profile(self) -> dict[str, Any]:
        """The drift reference profile stored at training."""
        return dict(self.file("reference_profile.json"))

    @property
    def features(self) -> list[str]:
        return self.config.features.all

    @property
    def objective(self) -> Objective:
        """The task of this version (binary, multiclass, regression) with its classes and threshold."""
        return Objective.from_config(self.config)

    def load_model(self) -> Any:
        """The fitted pipeline of this version."""
        return load_model(self.tracking_uri, self.model_name, self.version)


def upgrade_release_body(body: dict[str, Any]) -> dict[str, Any]:
    """A release config stored before task types (binary only: gates.min_auc/max_log_loss, monitoring
    min_live_auc/severe_live_auc) in today's keys; a current one unchanged."""
    gates, mon = dict(body.get("gates", {})), dict(body.get("monitoring", {}))
    if "min_auc" in gates or "max_log_loss" in gates:
        gates.setdefault("minimums", {"auc": gates.pop("min_auc")} if "min_auc" in gates else {})
        gates.setdefault("maximums", {"log_loss": gates.pop("max_log_loss")} if "max_log_loss" in gates else {})
    if "min_live_auc" in mon:
        mon["live_degraded_at"] = mon.pop("min_live_auc")
        mon["live_severe_at"] = mon.pop("severe_live_auc", mon["live_degraded_at"])
    return {**body, "gates": gates, "monitoring": mon} if gates or mon else body


def release_config(body: dict[str, Any], current: TollgateConfig) -> TollgateConfig:
    """A stored release config, with the servers of the environment it is loaded in."""
    return TollgateConfig.model_validate({**upgrade_release_body(body), "servers": current.servers.model_dump()})


def load_release(
    cfg: TollgateConfig, registry: Registry, version: str | None = None, stage: str | None = None
) -> Release:
    """The release of `version`, or of the one version in `stage`; RegistryError when there is none."""
    info: VersionInfo | None
    if version is not None:
        info = registry.get(version)
    elif stage is not None:
        info = registry.one(stage)
        if info is None:
            raise RegistryError(f"{registry.model} has no {stage} version")
    else:
        raise ValueError("load_release needs a version or a stage")
    uri = cfg.servers.mlflow_url
    body = load_release_file(uri, info.run_id, "config.json")
    return Release(
        model_name=registry.model,
        version=info.version,
        run_id=info.run_id,
        stage=info.stage,
        tags=info.tags,
        config=release_config(body, cfg),
        tracking_uri=uri,
        _files={"config.json": body},
    )
