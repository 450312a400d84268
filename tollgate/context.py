"""The one typed context every flow, task, command and the gateway run with: the loaded config as a value, the
state paths, and the clients built from them once.

Flows take a config path (what deployments pass) or a Context (what the demo, benchmarks and tests pass),
load it once at the top and hand the object down. A variant of a context is `ctx.with_config(...)` (a
`model_copy(update=...)` of the typed config), never an edit of `os.environ`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollgate.config import LoadedConfig, ServersConfig, TollgateConfig, load_config
from tollgate.paths import PROJECT_ROOT, StatePaths
from tollgate.secrets import credential_env

if TYPE_CHECKING:
    from tollgate.gateway_client import GatewayClient
    from tollgate.registry import Registry

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "pipeline.yaml")


def client_env(servers: ServersConfig, paths: StatePaths) -> dict[str, str]:
    """Environment variables a Prefect/MLflow client process needs to talk to this stack, with the local servers'
    logins when auth is on (a remote server's login is left to the user's environment: see credential_env)."""
    return {
        "PREFECT_API_URL": servers.prefect_url,
        "PREFECT_HOME": str(paths.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_URL": servers.prefect_ui_url,
        "MLFLOW_TRACKING_URI": servers.mlflow_url,
        # No network but the stack's own: MLflow's usage telemetry only adds a background thread (and a race on
        # its session variable seen under load).
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # MLflow's own model loaders stay off (they would trust the artifact's skops list or unpickle): models
        # are loaded only by tollgate.release, after the provenance check, with the project's allow-list.
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "TOLLGATE_HOME": str(paths.home),
        **credential_env(servers, paths),
    }


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@dataclass(frozen=True)
class Context:
    """Config + state folder (+ clients, built on first use) for one command, flow run or process."""

    loaded: LoadedConfig
    paths: StatePaths
    _clients: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def config(self) -> TollgateConfig:
        return self.loaded.config

    @property
    def root(self) -> Path:
        """Project root that relative paths in the config (dataset.path) resolve against."""
        return self.loaded.root

    @property
    def config_path(self) -> str:
        return str(self.loaded.path)

    @property
    def env(self) -> str:
        return self.loaded.env

    def resolve(self, rel: str | Path) -> Path:
        """A config path made absolute against the project root."""
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p).resolve()

    def with_config(self, **update: Any) -> Context:
        """A variant with sections of the config replaced (nested dicts merge), validated like a loaded config."""
        merged = _deep_update(self.config.model_dump(), update)
        cfg = TollgateConfig.model_validate(merged)
        return replace(self, loaded=replace(self.loaded, config=cfg), _clients={})

    def with_home(self, home: Path) -> Context:
        """The same config on another state folder."""
        return replace(self, paths=StatePaths(home.resolve()), _clients={})

    @cached_property
    def registry(self) -> Registry:
        """The registry of this project's registered model (one client per context)."""
        from tollgate.registry import Registry

        return Registry(self.config.servers.mlflow_url, self.config.project.registered_model, self.paths.ledger)

    def gateway(self) -> GatewayClient:
        """A client for the configured gateway with the admin token."""
        from tollgate.gateway_client import GatewayClient

        return GatewayClient.from_config(self.config, self.paths)

    def activate(self) -> None:
        """Point Prefect and MLflow clients in this process at the configured servers.

        Must run before `prefect` is imported: Prefect reads its settings from the environment at import.
        """
        os.environ.update(client_env(self.config.servers, self.paths))
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.paths.prefect_home.mkdir(parents=True, exist_ok=True)


def make_context(config_path: str | Path = DEFAULT_CONFIG, env: str = "dev", home: Path | None = None) -> Context:
    """Load config (raises ConfigError) and resolve the state folder ($TOLLGATE_HOME unless `home` is given)."""
    loaded = load_config(config_path, env)
    paths = StatePaths(home.resolve()) if home else StatePaths.from_env(loaded.root)
    return Context(loaded=loaded, paths=paths)


def as_context(config: str | Context, env: str = "dev") -> Context:
    """What a flow does first: a path (from a deployment) is loaded once; a Context is used as it is."""
    return config if isinstance(config, Context) else make_context(config, env)
