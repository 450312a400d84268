"""Secrets the stack hands to its parts: the gateway admin token (environment variable, else a 0600 file) and the
basic-auth logins of the local Prefect and MLflow servers (0600 files under the state folder, made by `up`)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from tollgate.config import ServersConfig, TollgateConfig
from tollgate.paths import StatePaths

PREFECT_USER = "tollgate"
MLFLOW_ADMIN = "tollgate"
# What a client of the stack authenticates with (Prefect's and MLflow's own variable names).
CREDENTIAL_VARS = ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class CredentialsError(ValueError):
    """A credential file that cannot be used; the message names it."""


@dataclass(frozen=True)
class Login:
    """A basic-auth user name and password."""

    username: str
    password: str

    @property
    def auth_string(self) -> str:
        """The login as `user:password`, the form of Prefect's PREFECT_(SERVER_)API_AUTH_STRING."""
        return f"{self.username}:{self.password}"


def _create_secret_file(path: Path, text: str) -> None:
    """Create `path` with mode 600 holding `text`; an existing file is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def admin_token(cfg: TollgateConfig, paths: StatePaths) -> str | None:
    """The gateway admin token: the variable named by serving.admin_token_env, else the state-folder file."""
    token = os.environ.get(cfg.serving.admin_token_env)
    if token:
        return token
    return paths.admin_token.read_text().strip() if paths.admin_token.exists() else None


def ensure_admin_token(paths: StatePaths) -> None:
    """Create the gateway admin token file (mode 600) unless it exists."""
    _create_secret_file(paths.admin_token, secrets.token_urlsafe(32))


def read_login(path: Path) -> Login | None:
    """The login kept in `path` ("user:password" on one line), or None when there is no such file."""
    if not path.exists():
        return None
    username, _, password = path.read_text().strip().partition(":")
    if not username or not password:
        raise CredentialsError(f"{path}: expected one line `user:password`; delete it and run `tollgate up` again")
    return Login(username, password)


def ensure_stack_credentials(servers: ServersConfig, paths: StatePaths) -> None:
    """Create a random login file (mode 600) for each local server, and MLflow's CSRF key, unless they exist.
    Nothing with auth off, and nothing for a remote server (servers.prefect_api_url / mlflow_tracking_uri): its
    login is the user's."""
    if not servers.auth:
        return
    if servers.prefect_api_url is None:
        _create_secret_file(paths.prefect_auth, f"{PREFECT_USER}:{secrets.token_urlsafe(32)}")
    if servers.mlflow_tracking_uri is None:
        _create_secret_file(paths.mlflow_auth, f"{MLFLOW_ADMIN}:{secrets.token_urlsafe(32)}")
        _create_secret_file(paths.mlflow_secret_key, secrets.token_urlsafe(32))
        # MLflow's user store (password hashes): SQLite takes an empty file as a new database and gives its
        # journal the file's mode.
        _create_secret_file(paths.mlflow_auth_db, "")


def mlflow_secret_key(paths: StatePaths) -> str | None:
    """The local MLflow server's CSRF signing key, or None before the first `up`."""
    return paths.mlflow_secret_key.read_text().strip() if paths.mlflow_secret_key.exists() else None


def prefect_login(servers: ServersConfig, paths: StatePaths) -> Login | None:
    """The local Prefect server's login; None with auth off, for a remote server, or before the first `up`."""
    return read_login(paths.prefect_auth) if servers.auth and servers.prefect_api_url is None else None


def mlflow_login(servers: ServersConfig, paths: StatePaths) -> Login | None:
    """The local MLflow server's admin login; None with auth off, for a remote server, or before the first `up`."""
    return read_login(paths.mlflow_auth) if servers.auth and servers.mlflow_tracking_uri is None else None


def credential_env(servers: ServersConfig, paths: StatePaths) -> dict[str, str]:
    """The client variables (CREDENTIAL_VARS) for the local servers' logins. A variable that is left out keeps
    what the environment has: always for a remote server, and for a state folder without login files (a
    command run with another $TOLLGATE_HOME against a stack whose login its parent process already holds)."""
    env: dict[str, str] = {}
    if (prefect := prefect_login(servers, paths)) is not None:
        env["PREFECT_API_AUTH_STRING"] = prefect.auth_string
    if (mlflow := mlflow_login(servers, paths)) is not None:
        env["MLFLOW_TRACKING_USERNAME"] = mlflow.username
        env["MLFLOW_TRACKING_PASSWORD"] = mlflow.password
    return env
