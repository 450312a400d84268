"""The registry: MLflow model versions and their stages (None -> Staging -> Production -> Archived).

This is the only module that calls MLflow's registry API. Stages are the promotion state; every transition
also moves the MLflow 3 aliases in the same operation (`champion` on the Production version, `challenger` on
the Staging one, removed when a version leaves that stage), so the new registry UI and `models:/<name>@champion`
see the truth, and appends to the promotion ledger. Each version's description is a model card summary built
from its `tollgate.card.*` tags. `rollback_release` lives here so the gateway and the rollback flow call the
same function without importing each other.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tollgate import ledger

log = logging.getLogger("tollgate.registry")

STAGES = ("None", "Staging", "Production", "Archived")
ROLLOUT_MODE_TAG = "tollgate.rollout.mode"  # on the Staging version: shadow | canary | off
ROLLOUT_SHARE_TAG = "tollgate.rollout.share"
ROLLOUT_OUTCOME_TAG = "tollgate.rollout.outcome"
STAGE_ALIAS = {"Production": "champion", "Staging": "challenger"}
LEDGER_TAG = "tollgate.ledger.last"  # on the registered model: the hash of its newest ledger entry
# The version description (the registry UI's model card summary), one line per tag that is set, in this order.
CARD_TAGS = (
    ("tollgate.card.intended_use", "Intended use"),
    ("tollgate.card.owner", "Owner"),
    ("tollgate.card.data_version", "Data version"),
    ("tollgate.gate.headline", "Gate verdict"),
    (ROLLOUT_OUTCOME_TAG, "Rollout"),
    ("tollgate.approval.by", "Approved by"),
)


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
        """Set version tags; when a model card tag is among them the description is rebuilt."""
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model, str(version), key, value)
        if any(key in dict(CARD_TAGS) for key in tags):
            self.describe(version)

    def describe(self, version: str) -> str:
        """Rebuild the version's description from its card tags (what the registry UI shows); returns it."""
        tags = self.get(version).tags
        lines = [f"**{label}:** {tags[key]}" for key, label in CARD_TAGS if tags.get(key)]
        text = "  \n".join(lines)
        self.client.update_model_version(self.model, str(version), description=text)
        return text

    def aliases(self) -> dict[str, str]:
        """alias -> version of this registered model ({} before the first registration)."""
        try:
            found = self.client.get_registered_model(self.model).aliases
        except MlflowException:
            return {}
        return {str(k): str(v) for k, v in dict(found or {}).items()}

    def _move_aliases(self, version: str, to_stage: str) -> None:
        """`champion`/`challenger` follow the stages: set on the version entering, dropped from one leaving."""
        held = self.aliases()
        for stage, alias in STAGE_ALIAS.items():
            if to_stage == stage:
                self.client.set_registered_model_alias(self.model, alias, str(version))
            elif held.get(alias) == str(version):
                self.client.delete_registered_model_alias(self.model, alias)

    def record(
        self,
        version: str,
        from_stage: str,
        to_stage: str,
        reason: str,
        evidence_run_id: str | None,
        who: str | None = None,
        flow_run_id: str | None = None,
        digests: dict[str, str] | None = None,
    ) -> ledger.LedgerEntry:
        """Append a ledger entry without changing the registry (registration, rejection, a file digest); its hash
        is mirrored to MLflow and Prefect (see `_mirror`)."""
        entry = ledger.append(
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
                digests=digests,
            ),
        )
        self._mirror(entry.hash)
        return entry

    def _mirror(self, digest: str) -> None:
        """This model's newest ledger hash, also as a registered-model tag in MLflow and a Prefect variable: a
        rewrite of the state folder's ledger then needs both logins as well to go unnoticed (`mirror_disagreements`).
        A failed write is logged, never raised: the ledger file is the record, and acting never waits on a copy."""
        try:
            self.client.set_registered_model_tag(self.model, LEDGER_TAG, digest)
        except Exception as exc:
            log.warning("could not mirror the ledger head of %s to MLflow: %s", self.model, exc)
        try:
            from prefect.variables import Variable

            Variable.set(ledger_variable(self.model), digest, overwrite=True)
        except Exception as exc:
            log.warning("could not mirror the ledger head of %s to Prefect: %s", self.model, exc)

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
        self._move_aliases(str(version), to_stage)
        proven = proven_holder(ledger_entries(self), to_stage) if to_stage in ("Staging", "Production") else None
        if proven is not None and proven not in (str(version), incumbent.version if incumbent else None):
            # the ledger's holder had been moved out of the stage outside the pipeline: close its record too
            self.record(proven, to_stage, "Archived", f"replaced by version {version}: {reason}", evidence_run_id, who)
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


def disagreements(reg: Registry) -> list[str]:
    """Where stages, aliases and the ledger disagree about this model (empty when they agree)."""
    versions = reg.all_versions()
    if not versions:
        return []
    found: list[str] = []
    aliases = reg.aliases()
    for stage, alias in STAGE_ALIAS.items():
        holders = [v.version for v in versions if v.stage == stage]
        expected = holders[0] if len(holders) == 1 else None
        if len(holders) > 1:
            found.append(f"{reg.model}: {len(holders)} versions in {stage} ({holders}); expected at most one")
        if aliases.get(alias) != expected:
            found.append(
                f"{reg.model}: alias @{alias} is on {_v(aliases.get(alias))} but the {stage} version is {_v(expected)}"
            )
    last_stage: dict[str, str] = {}
    for entry in ledger_entries(reg):
        if entry.from_stage != entry.to_stage:  # moves only: refusals and notes (X -> X) move nothing
            last_stage[entry.version] = entry.to_stage
    for v in versions:
        if v.version not in last_stage:
            found.append(
                f"{reg.model} v{v.version}: in the registry ({v.stage}) but no ledger entry ever moved it "
                "(registered or moved outside the pipeline)"
            )
        elif last_stage[v.version] != v.stage:
            unproven = " (moved outside the pipeline: never served)" if v.stage in STAGE_ALIAS else ""
            found.append(
                f"{reg.model} v{v.version}: the registry says {v.stage}, the ledger's last entry "
                f"{last_stage[v.version]}{unproven}"
            )
    return found


def ledger_variable(model: str) -> str:
    """The Prefect variable that mirrors `model`'s newest ledger hash (a name Prefect accepts, whatever the model)."""
    return "tollgate-ledger-" + hashlib.sha1(model.encode()).hexdigest()[:16]


def mirror_disagreements(reg: Registry) -> list[str]:
    """Where the newest ledger hash of this model differs from its copies in MLflow and Prefect (the ledger file
    was rewritten or cut, or a mirror write failed); empty when they agree or the model has no ledger yet."""
    from prefect.variables import Variable

    entries = ledger_entries(reg)
    if not entries:
        return []
    last = entries[-1].hash
    try:
        in_mlflow = reg.client.get_registered_model(reg.model).tags.get(LEDGER_TAG)
    except MlflowException:
        in_mlflow = None
    copies = {
        f"MLflow (registered model tag {LEDGER_TAG})": in_mlflow,
        f"Prefect (variable {ledger_variable(reg.model)})": Variable.get(ledger_variable(reg.model)),
    }
    return [
        f"{reg.model}: the ledger's last entry hashes to {last[:12]}, but {where} says "
        f"{str(copy)[:12] if copy else 'nothing'}: the ledger file was rewritten, or a copy was not written"
        for where, copy in copies.items()
        if copy != last
    ]


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no version"


def ledger_entries(reg: Registry) -> list[ledger.LedgerEntry]:
    """This model's ledger."""
    return ledger.read(reg.ledger_path, reg.model)


def ledger_stages(entries: list[ledger.LedgerEntry]) -> dict[str, str]:
    """Each version's stage as the ledger's moves leave it (refusals and notes, X -> X, move nothing)."""
    stages: dict[str, str] = {}
    for entry in entries:
        if entry.from_stage != entry.to_stage:
            stages[entry.version] = entry.to_stage
    return stages


def proven_holder(entries: list[ledger.LedgerEntry], stage: str) -> str | None:
    """The version the ledger's moves leave in `stage` (the one moved there last, should a broken history leave
    several), or None."""
    stages = ledger_stages(entries)
    holder = None
    for entry in entries:
        if entry.from_stage != entry.to_stage and entry.to_stage == stage and stages[entry.version] == stage:
            holder = entry.version
    return holder


@dataclass(frozen=True)
class ProvenServing:
    """What serving may act on: the versions the verified ledger moved to Production and Staging, and each
    registry state it refused (a stage moved outside the pipeline), as one line each."""

    champion: VersionInfo | None
    staging: VersionInfo | None
    refused: tuple[str, ...] = ()


def proven_serving(reg: Registry) -> ProvenServing:
    """The Production and Staging versions per the verified ledger, never per a registry stage alone: a stage or
    alias moved with the MLflow login but outside the pipeline is refused (named in `refused`). Raises
    RegistryError when the ledger's chain does not verify (nothing can be proven then)."""
    problems = ledger.verify(reg.ledger_path)
    if problems:
        raise RegistryError(f"the promotion ledger does not verify ({problems[0]}): nothing new is served from it")
    entries = ledger_entries(reg)
    refused: list[str] = []
    found: dict[str, VersionInfo | None] = {}
    for stage in ("Production", "Staging"):
        proven = proven_holder(entries, stage)
        registry_holder = reg.one(stage)
        if registry_holder is not None and registry_holder.version != proven:
            refused.append(
                f"{reg.model} v{registry_holder.version} is in {stage} in the registry, but no verified ledger move "
                f"put it there (moved outside the pipeline); not served, the ledger's {stage} is {_v(proven)}"
            )
        found[stage] = None if proven is None else reg.get(proven)
    return ProvenServing(found["Production"], found["Staging"], tuple(refused))


def previous_production(reg: Registry, current: str | None) -> VersionInfo:
    """The most recent version the ledger promoted to Production and later moved out, Archived now per both the
    ledger and the registry (the rollback target); versions the ledger never promoted are skipped."""
    entries = ledger_entries(reg)
    promoted = {e.version for e in entries if e.to_stage == "Production" and e.from_stage != "Production"}
    stages = ledger_stages(entries)
    for entry in reversed(entries):
        if entry.from_stage == "Production" and entry.version != current and entry.version in promoted:
            info = reg.get(entry.version)
            if info.stage == "Archived" and stages.get(entry.version) == "Archived":
                return info
    raise RegistryError(f"{reg.model}: no earlier Production version to roll back to")


def rollback_target(reg: Registry, to_version: str | None) -> tuple[VersionInfo | None, VersionInfo]:
    """(current Production, the version a rollback would restore), or RegistryError naming the rule it breaks:
    the target must have been Production before (per the ledger), be Archived now and not be the current one,
    so a version that never passed a gate and an approval is never made Production by a "rollback"."""
    proven = proven_holder(ledger_entries(reg), "Production")
    current = reg.get(proven) if proven else None  # what the ledger says is Production, not a hand-moved stage
    target = reg.get(to_version) if to_version else previous_production(reg, current.version if current else None)
    if current is not None and target.version == current.version:
        raise RegistryError(f"v{target.version} is already Production")
    if not any(e.version == target.version and e.to_stage == "Production" for e in ledger_entries(reg)):
        raise RegistryError(
            f"{reg.model} v{target.version} was never Production (per the ledger): a rollback only returns to an "
            "earlier release; a new version reaches Production through `tollgate deploy`"
        )
    if target.stage != "Archived":
        raise RegistryError(f"v{target.version} is in stage {target.stage}; a rollback target must be Archived")
    return current, target


def rollback_release(
    reg: Registry,
    to_version: str | None,
    reason: str,
    who: str | None,
    flow_run_id: str | None = None,
    check: Callable[[VersionInfo], None] | None = None,
) -> tuple[str | None, str]:
    """Make the previous (or the named) release Production again; returns (from, to). The release context
    travels with the version, so serving and monitoring follow it. `check` (the gateway's load + smoke test of
    the target) runs before anything moves: if it raises, registry and ledger stay as they were."""
    current, target = rollback_target(reg, to_version)
    if check is not None:
        check(target)
    reg.set_tags(target.version, {ROLLOUT_MODE_TAG: "off", ROLLOUT_OUTCOME_TAG: f"rolled back to: {reason}"[:500]})
    reg.transition(target.version, "Production", f"rollback: {reason}", None, who=who, flow_run_id=flow_run_id)
    return (current.version if current else None), target.version
