"""The resolved context a command runs in: typed config, state paths, and the client environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tollgate.config import LoadedConfig, TollgateConfig, load_config
from tollgate.paths import StatePaths
from tollgate.stack import client_env


@dataclass(frozen=True)
class Runtime:
    """Config + state folder for one command invocation."""

    loaded: LoadedConfig
    paths: StatePaths

    @property
    def config(self) -> TollgateConfig:
        return self.loaded.config

    @property
    def root(self) -> Path:
        """Project root that relative paths in the config (dataset.path) resolve against."""
        return self.loaded.root

    def resolve(self, rel: str | Path) -> Path:
        """A config path made absolute against the project root."""
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p).resolve()

    def activate(self) -> None:
        """Point Prefect and MLflow clients in this process at the configured servers.

        Must run before `prefect` is imported: Prefect reads its settings from the environment at import.
        """
        os.environ.update(client_env(self.config.servers, self.paths))
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.paths.prefect_home.mkdir(parents=True, exist_ok=True)


def make_runtime(config_path: str | Path, env: str) -> Runtime:
    """Load config (raises ConfigError) and resolve the state folder."""
    loaded = load_config(config_path, env)
    return Runtime(loaded=loaded, paths=StatePaths.from_env(loaded.root))
