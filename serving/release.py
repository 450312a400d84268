"""What the gateway serves: releases (model + its release context) read from the MLflow registry by stage."""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import Any

from serving.schema import RequestSchema
from tollgate.config import TollgateConfig
from tollgate.objective import Objective
from tollgate.registry import ROLLOUT_MODE_TAG, ROLLOUT_SHARE_TAG, Registry, proven_serving
from tollgate.release import load_release


@dataclass(frozen=True)
class Release:
    """One model version with the context it was trained with."""

    version: str
    run_id: str
    model: Any
    config: TollgateConfig
    schema: RequestSchema
    objective: Objective  # the task of the release's own config: how outputs become answers and log fields
    scoring: str = "sklearn"  # "onnx", or "sklearn: <why not onnx>" (tollgate.release.Release.load_scorer)

    @classmethod
    def of(cls, version: str, run_id: str, model: Any, config: TollgateConfig, scoring: str = "sklearn") -> Release:
        """A release from its parts; the schema and objective come from its config."""
        return cls(version, run_id, model, config, RequestSchema(config), Objective.from_config(config), scoring)

    @property
    def threshold(self) -> float:
        return self.config.model.decision_threshold


@dataclass(frozen=True)
class Routing:
    """Who answers: the champion, plus an optional challenger in shadow or canary mode."""

    champion: Release | None
    challenger: Release | None = None
    mode: str = "off"  # off | shadow | canary
    share: float = 0.0

    def is_canary(self, entity_id: str) -> bool:
        """Sticky canary assignment by a hash of the entity id."""
        if self.mode != "canary" or self.challenger is None:
            return False
        return zlib.crc32(f"{self.challenger.version}:{entity_id}".encode()) % 10_000 < self.share * 10_000

    def describe(self) -> dict[str, Any]:
        return {
            "champion": self.champion.version if self.champion else None,
            "challenger": self.challenger.version if self.challenger else None,
            "mode": self.mode,
            "share": self.share,
            "champion_scoring": self.champion.scoring if self.champion else None,
            "challenger_scoring": self.challenger.scoring if self.challenger else None,
        }


class ReleaseStore:
    """Loads releases from MLflow and keeps them in memory, so a rollback to a recent version is instant."""

    def __init__(self, cfg: TollgateConfig, registry: Registry, keep: int = 4):
        self.cfg = cfg
        self.model_name = registry.model
        self.registry = registry
        self.keep = keep
        self._cache: dict[str, Release] = {}
        self._lock = threading.Lock()

    def release(self, version: str, run_id: str) -> Release:
        """The release for `version`, from memory or loaded from the registry."""
        with self._lock:
            if version in self._cache:
                return self._cache[version]
        loaded = load_release(self.cfg, self.registry, version=version)
        model, scoring = loaded.load_scorer(self.cfg.serving.compiled_scoring)
        rel = Release.of(version, loaded.run_id, model, loaded.config, scoring)
        with self._lock:
            self._cache[version] = rel
            while len(self._cache) > self.keep:
                self._cache.pop(next(iter(self._cache)))
        return rel

    def smoke_records(self, version: str) -> list[dict[str, Any]]:
        """The release's own smoke records (digest-checked like every release file)."""
        return list(load_release(self.cfg, self.registry, version=version).file("smoke_records.json"))

    def routing(self) -> tuple[Routing, tuple[str, ...]]:
        """Current routing from what the verified ledger proves (never a registry stage alone): its Production
        version is the champion; its Staging version, when the rollout tag says shadow or canary, the challenger.
        Also each registry state it refused (a stage moved outside the pipeline). Raises RegistryError when the
        ledger does not verify."""
        proven = proven_serving(self.registry)
        prod, staging = proven.champion, proven.staging
        champion = self.release(prod.version, prod.run_id) if prod else None
        mode = staging.tags.get(ROLLOUT_MODE_TAG, "off") if staging else "off"
        if staging is None or mode not in ("shadow", "canary"):
            return Routing(champion), proven.refused
        share = float(staging.tags.get(ROLLOUT_SHARE_TAG, "0") or 0)
        return Routing(champion, self.release(staging.version, staging.run_id), mode, share), proven.refused
