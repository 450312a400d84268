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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tollgate import ledger, provenance
from tollgate.config import TollgateConfig
from tollgate.objective import Objective
from tollgate.registry import Registry, RegistryError, VersionInfo

T = TypeVar("T")

RELEASE_DIR = "release"  # the run artifact folder holding the release context
COMPILED_MODEL = "model.onnx"  # release/<it>: the pipeline compiled to ONNX, stored only when parity held


def load_release_file(tracking_uri: str, run_id: str, name: str) -> Any:
    """One release-context artifact of a run the pipeline is writing right now (JSON parsed, else text).
    Not for a registered version: `Release.file` checks the file against the ledger first."""
    with tempfile.TemporaryDirectory() as tmp:
        return _parse(name, _download(tracking_uri, run_id, f"{RELEASE_DIR}/{name}", Path(tmp)))


def _download(tracking_uri: str, run_id: str, artifact_path: str, dst: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))


def _parse(name: str, local: Path) -> Any:
    text = local.read_text()
    return json.loads(text) if name.endswith(".json") else text


def load_skops_model(folder: Path, model: str, version: str) -> Any:
    """The sklearn pipeline in a (digest-checked) MLflow model folder, loaded by skops with the project's own
    allow-list: a pickle format, or a type outside that list, is refused before anything is deserialized."""
    import skops.io as sio
    import yaml

    flavor = dict(yaml.safe_load((folder / "MLmodel").read_text()).get("flavors", {}).get("sklearn", {}))
    fmt = flavor.get("serialization_format")
    if fmt != "skops":
        raise provenance.UntrustedRelease(model, version, "model/MLmodel", f"serialization format {fmt!r}, not skops")
    path = folder / str(flavor.get("pickled_model", "model.skops"))
    foreign = sorted(set(sio.get_untrusted_types(file=path)) - set(provenance.SKOPS_TRUSTED_TYPES))
    if foreign:
        raise provenance.UntrustedRelease(
            model, version, f"model/{path.name}", f"holds types outside the project's allow-list: {foreign}"
        )
    return sio.load(path, trusted=list(provenance.SKOPS_TRUSTED_TYPES))


@dataclass(frozen=True)
class Release:
    """One registered version with its release context; further context files are read on demand, each one
    checked against the digests the pipeline recorded at registration before it is parsed."""

    model_name: str
    version: str
    run_id: str
    stage: str
    tags: dict[str, str]
    config: TollgateConfig
    tracking_uri: str
    trusted: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    registry: Registry | None = field(default=None, compare=False, repr=False)
    _files: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def local_file(self, name: str, dst: Path) -> Path:
        """A release-context artifact downloaded into `dst`, checked against its registration digest."""
        local = _download(self.tracking_uri, self.run_id, f"{RELEASE_DIR}/{name}", dst)
        self._check(lambda: provenance.check_file(self.trusted, f"{RELEASE_DIR}/{name}", local, *self._id))
        return local

    def file(self, name: str) -> Any:
        """A release-context artifact (config.json, reference_profile.json, gate_verdict.json, ...), read once."""
        if name not in self._files:
            with tempfile.TemporaryDirectory() as tmp:
                self._files[name] = _parse(name, self.local_file(name, Path(tmp)))
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
        """The task of this version (binary, multiclass, regression) with its classes and threshold; the class
        encoding is the one stored with the release (classes.json, digest-checked) when it has one."""
        objective = Objective.from_config(self.config)
        if f"{RELEASE_DIR}/classes.json" not in self.trusted:
            return objective
        labels = tuple(self.file("classes.json")["labels"])
        return replace(objective, classes=tuple(range(len(labels))), labels=labels)

    def load_model(self) -> Any:
        """The fitted pipeline of this version: every model file checked against the ledger, then skops."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self._model_folder(Path(tmp))
            return self._check(lambda: load_skops_model(folder, *self._id))

    def _model_folder(self, dst: Path) -> Path:
        """The version's MLflow model folder downloaded into `dst`, every file checked against the ledger."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.model_name}/{self.version}", dst_path=str(dst)
            )
        )
        self._check(lambda: provenance.check_tree(self.trusted, folder, "model", *self._id))
        return folder

    def load_scorer(self, compiled: bool = True, threads: int = 1) -> tuple[Any, str]:
        """What scores this version, and why: (the ONNX Runtime scorer, "onnx") when the version was compiled
        with parity at registration (release/model.onnx, digest-checked) and `compiled` allows it (the config's
        serving.compiled_scoring); else (the sklearn pipeline, "sklearn: <why>"). Both give Objective.outputs
        the same answers (parity). `threads`: the ONNX session's (1 for serving, every core for batch scoring)."""
        if not compiled:
            return self.load_model(), "sklearn: serving.compiled_scoring is off"
        if f"{RELEASE_DIR}/{COMPILED_MODEL}" not in self.trusted:
            report = self.file("compiled.json") if f"{RELEASE_DIR}/compiled.json" in self.trusted else None
            why = (report or {}).get("reason") if report is not None else "registered before compiled scoring"
            return self.load_model(), f"sklearn: {why or 'parity not met'}"
        from tollgate.compiled import OnnxScorer

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "model").mkdir()
            self._model_folder(Path(tmp) / "model")  # the whole release as registered, also files ONNX does not use
            data = self.local_file(COMPILED_MODEL, Path(tmp)).read_bytes()
        return OnnxScorer(data, self.config.features, None, threads), "onnx"

    @property
    def _id(self) -> tuple[str, str]:
        return self.model_name, self.version

    def _check(self, step: Callable[[], T]) -> T:
        try:
            return step()
        except provenance.UntrustedRelease as exc:
            record_refusal(self.registry, self.stage, exc)
            raise


def record_refusal(registry: Registry | None, stage: str, exc: provenance.UntrustedRelease) -> None:
    """A refused load is a ledger entry (the version stays where it is)."""
    if registry is not None:
        registry.record(exc.version, stage, stage, f"refused to load: {exc.file}: {exc.why}", None, who="tollgate")


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
    try:
        trusted = provenance.trusted_digests(ledger.read(registry.ledger_path), registry.model, info.version)
    except provenance.UntrustedRelease as exc:
        record_refusal(registry, info.stage, exc)
        raise
    uri = cfg.servers.mlflow_url
    release = Release(registry.model, info.version, info.run_id, info.stage, info.tags, cfg, uri, trusted, registry)
    body = release.file("config.json")
    return replace(release, config=release_config(body, cfg), _files={"config.json": body})
