"""The services of the local stack: what `tollgate up` starts (command, port, health URL, environment), all
from the config's servers section."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tollgate.config import ServersConfig
from tollgate.context import client_env
from tollgate.paths import StatePaths

BIN = Path(sys.executable).parent


def servers_env(servers: ServersConfig) -> dict[str, str]:
    """The servers section as TOLLGATE__SERVERS__* variables for child processes that load the config from its
    path (the gateway, flow runs the worker starts): they reach this stack even when it is a config variant
    (`ctx.with_config(servers=...)`, as the benchmarks build) rather than what the files say."""
    values = servers.model_dump(mode="json", exclude_none=True)
    return {f"TOLLGATE__SERVERS__{key.upper()}": json.dumps(value) for key, value in values.items()}


@dataclass(frozen=True)
class Service:
    """One long-running process of the local stack."""

    name: str
    cmd: list[str]
    port: int
    port_key: str
    health_url: str
    ui_url: str
    env: dict[str, str] = field(default_factory=dict)
    marker: str = ""  # a string that must be in the process command line (guards against pid reuse)


def services(
    servers: ServersConfig, paths: StatePaths, config_path: Path | None = None, env_name: str = "dev"
) -> list[Service]:
    """The services `up` manages, in start order. Remote servers (URL overrides) are not managed; the gateway
    is managed when the config it serves is named."""
    host = servers.host
    out: list[Service] = []
    if servers.prefect_api_url is None:
        env = {
            "PREFECT_HOME": str(paths.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": servers.prefect_url,
        }
        if servers.prefect_database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = servers.prefect_database_url
        out.append(
            Service(
                name="prefect-server",
                cmd=[str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(servers.prefect_port)],
                port=servers.prefect_port,
                port_key="servers.prefect_port",
                health_url=f"{servers.prefect_url}/health",
                ui_url=servers.prefect_ui_url,
                env=env,
                marker="server",
            )
        )
    if servers.mlflow_tracking_uri is None:
        backend = servers.mlflow_backend_store_uri or f"sqlite:///{paths.mlflow_db}"
        artifacts = servers.mlflow_artifacts_destination or str(paths.mlflow_artifacts)
        out.append(
            Service(
                name="mlflow-server",
                cmd=[
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    backend,
                    "--artifacts-destination",
                    artifacts,
                    "--host",
                    host,
                    "--port",
                    str(servers.mlflow_port),
                    "--workers",
                    "1",
                ],
                port=servers.mlflow_port,
                port_key="servers.mlflow_port",
                health_url=f"{servers.mlflow_url}/health",
                ui_url=servers.mlflow_url,
                # One process pair (~500 MB) instead of nine (~1.3 GB): no job runner needed.
                env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                marker="mlflow",
            )
        )
    out.append(
        Service(
            name="prefect-worker",
            cmd=[
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                servers.work_pool,
                "--type",
                "process",
                "--with-healthcheck",
            ],
            port=servers.worker_health_port,
            port_key="servers.worker_health_port",
            health_url=f"http://{host}:{servers.worker_health_port}/health",
            ui_url=f"{servers.prefect_ui_url}/work-pools/work-pool/{servers.work_pool}",
            env={
                **client_env(servers, paths),
                **servers_env(servers),
                "PREFECT_WORKER_WEBSERVER_HOST": host,
                "PREFECT_WORKER_WEBSERVER_PORT": str(servers.worker_health_port),
                "PREFECT_WORKER_QUERY_SECONDS": "2",
            },
            marker="worker",
        )
    )
    if config_path is not None:
        out.append(
            Service(
                name="gateway",
                cmd=[str(BIN / "tollgate"), "--config", str(config_path.resolve()), "--env", env_name, "serve"],
                port=servers.gateway_port,
                port_key="servers.gateway_port",
                health_url=f"{servers.gateway_url}/health",
                ui_url=servers.gateway_url,
                env={**client_env(servers, paths), **servers_env(servers)},
                marker="serve",
            )
        )
    return out
