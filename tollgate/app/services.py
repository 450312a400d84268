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
from tollgate.secrets import MLFLOW_ADMIN, mlflow_login, mlflow_secret_key, prefect_login

BIN = Path(sys.executable).parent


def servers_env(servers: ServersConfig) -> dict[str, str]:
    """The servers section as TOLLGATE__SERVERS__* variables for child processes that load the config from its
    path (the gateway, flow runs the worker starts): they reach this stack even when it is a config variant
    (`ctx.with_config(servers=...)`, as the benchmarks build) rather than what the files say."""
    values = servers.model_dump(mode="json", exclude_none=True)
    return {f"TOLLGATE__SERVERS__{key.upper()}": json.dumps(value) for key, value in values.items()}


def prefect_server_auth_env(servers: ServersConfig, paths: StatePaths) -> dict[str, str]:
    """The Prefect server's basic-auth string (and the same for its own client calls); empty with auth off or
    before `ensure_stack_credentials` wrote the login."""
    login = prefect_login(servers, paths)
    if login is None:
        return {}
    return {"PREFECT_SERVER_API_AUTH_STRING": login.auth_string, "PREFECT_API_AUTH_STRING": login.auth_string}


def mlflow_server_auth_env(servers: ServersConfig, paths: StatePaths) -> dict[str, str]:
    """What MLflow's basic-auth app reads: its ini (mlflow_auth_ini), the admin it creates on first start (the
    password through the environment, so no second copy of it is on disk) and its CSRF key; empty with auth off."""
    if not servers.auth:
        return {}
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(paths.mlflow_auth_config)}
    login = mlflow_login(servers, paths)
    if login is not None:
        env |= {"MLFLOW_AUTH_ADMIN_USERNAME": login.username, "MLFLOW_AUTH_ADMIN_PASSWORD": login.password}
    if (key := mlflow_secret_key(paths)) is not None:
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key
    return env


def mlflow_auth_ini(paths: StatePaths) -> str:
    """The basic-auth app's ini: its user store under the state folder, no access for any other user until an
    admin grants it (the only user is the stack's admin), and a successful login check remembered a while."""
    return (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{paths.mlflow_auth_db}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow checks the password hash (werkzeug's scrypt) on every request: ~0.45 s each on this 2-core
        # machine, which made a model load take 11 s. Cache a successful check for 5 minutes (MLflow's own opt-in
        # cache; it lives in the one server worker, so a password changed through the API is dropped at once).
        "auth_cache_ttl_seconds = 300\n"
    )


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
        if (database := servers.database_url("prefect")) is not None:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
        env.update(prefect_server_auth_env(servers, paths))
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
        backend = servers.database_url("mlflow") or f"sqlite:///{paths.mlflow_db}"
        artifacts = servers.artifacts_uri or str(paths.mlflow_artifacts)
        s3 = {"MLFLOW_S3_ENDPOINT_URL": servers.s3_endpoint_url} if servers.s3_endpoint_url else {}
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
                    *(["--app-name", "basic-auth"] if servers.auth else []),
                ],
                port=servers.mlflow_port,
                port_key="servers.mlflow_port",
                health_url=f"{servers.mlflow_url}/health",
                ui_url=servers.mlflow_url,
                # One process pair (~500 MB) instead of nine (~1.3 GB): no job runner needed.
                env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **s3, **mlflow_server_auth_env(servers, paths)},
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
                cmd=[
                    str(BIN / "tollgate"),
                    "--config",
                    str(config_path.resolve()),
                    "--env",
                    env_name,
                    "serve",
                    "--supervise",
                ],
                port=servers.gateway_port,
                port_key="servers.gateway_port",
                health_url=f"{servers.gateway_url}/health",
                ui_url=servers.gateway_url,
                env={**client_env(servers, paths), **servers_env(servers)},
                marker="serve",
            )
        )
    return out
