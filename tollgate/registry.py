"""The registry: MLflow model versions and their stages (None -> Staging -> Production -> Archived).

This is the only module that calls MLflow's registry API, so a move to aliases touches one file. Every
transition also appends to the promotion ledger; `rollback_release` lives here so the gateway and the rollback
flow call the same function without importing each other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tollgate import ledger

STAGES = ("None", "Staging", "Production", "Archived")
ROLLOUT_MODE_TAG = "tollgate.rollout.mode"  # on the Staging version: shadow | canary | off
ROLLOUT_SHARE_TAG = "tollgate.rollout.share"


class RegistryError(Exception):
    """A registry operation failed or would break an invariant."""


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version, normalised (versions are str whatever the store returns)."""

    name: str
    version: str
    stage: str
    run_id: str
    tags: dict[str, str]


def _info(mv: ModelVersion) -> VersionInfo:
    return VersionInfo(mv.name, str(mv.version), mv.current_stage or "None", mv.run_id or "", dict(mv.tags or {}))


class Registry:
    """Stage-aware view of one registered model, writing every transition to the ledger."""

    def __init__(self, tracking_uri: str, model: str, ledger_path: Path):
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.model = model
        self.ledger_path = ledger_path

    def exists(self) -> bool:
        try:
            self.client.get_registered_model(self.model)
        except MlflowException:
            return False
        return True

    def in_stage(self, stage: str) -> list[VersionInfo]:
        """Versions currently in `stage`, newest first."""
        if not self.exists():
            return []
        found = self.client.search_model_versions(f"name = '{self.model}'")
        return sorted((_info(v) for v in found if (v.current_stage or "None") == stage), key=lambda v: -int(v.version))

    def one(self, stage: str) -> VersionInfo | None:
        """The single version in `stage` (Production/Staging hold at most one), or None."""
        versions = self.in_stage(stage)
        if len(versions) > 1:
            raise RegistryError(
                f"{self.model}: {len(versions)} versions in {stage} ({[v.version for v in versions]}); expected at most one"
            )
        return versions[0] if versions else None

    def get(self, version: str) -> VersionInfo:
        try:
            return _info(self.client.get_model_version(self.model, str(version)))
        except MlflowException as exc:
            raise RegistryError(f"{self.model} version {version} does not exist") from exc

    def all_versions(self) -> list[VersionInfo]:
        if not self.exists():
            return []
        return sorted(
            (_info(v) for v in self.client.search_model_versions(f"name = '{self.model}'")),
            key=lambda v: int(v.version),
        )

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model, str(version), key, value)

    def record(
        self,
        version: str,
        from_stage: str,
        to_stage: str,
        reason: str,
        evidence_run_id: str | None,
        who: str | None = None,
        flow_run_id: str | None = None,
    ) -> ledger.LedgerEntry:
        """Append a ledger entry without changing the registry (registration, rejection)."""
        return ledger.append(
            self.ledger_path,
            ledger.LedgerEntry(
                model=self.model,
                version=str(version),
                from_stage=from_stage,
                to_stage=to_stage,
                who=who or ledger.current_actor(),
                reason=reason,
                evidence_run_id=evidence_run_id,
                flow_run_id=flow_run_id,
            ),
        )

    def transition(
        self,
        version: str,
        to_stage: str,
        reason: str,
        evidence_run_id: str | None,
        who: str | None = None,
        flow_run_id: str | None = None,
    ) -> VersionInfo:
        """Move `version` to `to_stage`; the version previously there goes to Archived. Both land in the ledger.

        Promotion to a single-holder stage archives the incumbent in the same MLflow call
        (archive_existing_versions), so there is never a moment with two holders.
        """
        if to_stage not in STAGES:
            raise RegistryError(f"unknown stage '{to_stage}', expected one of {STAGES}")
        current = self.get(version)
        incumbent = self.one(to_stage) if to_stage in ("Staging", "Production") else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; this module is the one place
            updated = self.client.transition_model_version_stage(
                self.model, str(version), to_stage, archive_existing_versions=to_stage in ("Staging", "Production")
            )
        if incumbent is not None and incumbent.version != str(version):
            self.record(
                incumbent.version,
                to_stage,
                "Archived",
                f"replaced by version {version}: {reason}",
                evidence_run_id,
                who,
                flow_run_id,
            )
        self.record(str(version), current.stage, to_stage, reason, evidence_run_id, who, flow_run_id)
        return _info(updated)


def ledger_entries(reg: Registry) -> list[ledger.LedgerEntry]:
    """This model's ledger."""
    return ledger.read(reg.ledger_path, reg.model)


def previous_production(reg: Registry, current: str | None) -> VersionInfo:
    """The most recent version that left Production and still exists in Archived (the rollback target)."""
    for entry in reversed(ledger_entries(reg)):
        if entry.from_stage == "Production" and entry.version != current:
            info = reg.get(entry.version)
            if info.stage == "Archived":
                return info
    raise RegistryError(f"{reg.model}: no earlier Production version to roll back to")


def rollback_release(
    reg: Registry, to_version: str | None, reason: str, who: str | None, flow_run_id: str | None = None
) -> tuple[str | None, str]:
    """Make the previous (or the named) release Production again; returns (from, to). The release context
    travels with the version, so serving and monitoring follow it."""
    current = reg.one("Production")
    target = reg.get(to_version) if to_version else previous_production(reg, current.version if current else None)
    if current is not None and target.version == current.version:
        raise RegistryError(f"v{target.version} is already Production")
    if target.stage not in ("Archived", "Staging", "None"):
        raise RegistryError(f"v{target.version} is in stage {target.stage}; cannot roll back to it")
    reg.set_tags(target.version, {ROLLOUT_MODE_TAG: "off"})
    reg.transition(target.version, "Production", f"rollback: {reason}", None, who=who, flow_run_id=flow_run_id)
    return (current.version if current else None), target.version
