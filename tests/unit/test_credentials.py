"""The local servers' logins: 0600 files made once, handed to every client (client_env) and server (services)
iff servers.auth is on; for remote servers the user's environment is left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tollgate.app.services import Service, mlflow_auth_ini, services
from tollgate.app.stack import is_loopback, open_host_warning
from tollgate.config import ServersConfig
from tollgate.context import client_env, make_context
from tollgate.paths import StatePaths
from tollgate.secrets import CREDENTIAL_VARS, CredentialsError, ensure_stack_credentials, read_login

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pipeline.yaml"
REMOTE = {"prefect_api_url": "http://prefect.internal:4200/api", "mlflow_tracking_uri": "http://mlflow.internal:5000"}


def secret_files(paths: StatePaths) -> list[Path]:
    return [paths.prefect_auth, paths.mlflow_auth, paths.mlflow_secret_key, paths.mlflow_auth_db]


def made(tmp_path: Path, **servers: object) -> tuple[ServersConfig, StatePaths]:
    """A servers section and a state folder whose credentials `up` would have made."""
    cfg, paths = ServersConfig.model_validate(servers), StatePaths(tmp_path)
    ensure_stack_credentials(cfg, paths)
    return cfg, paths


def by_name(cfg: ServersConfig, paths: StatePaths) -> dict[str, Service]:
    return {s.name: s for s in services(cfg, paths, CONFIG)}


def test_credentials_are_random_0600_files_made_once(tmp_path: Path) -> None:
    _, paths = made(tmp_path)
    first = {f: f.read_text() for f in secret_files(paths)}
    for f in secret_files(paths):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    prefect, mlflow = read_login(paths.prefect_auth), read_login(paths.mlflow_auth)
    assert prefect and mlflow and len(prefect.password) >= 40 and prefect.password != mlflow.password
    made(tmp_path)  # a second `up` keeps them: the MLflow admin exists with the first password
    assert {f: f.read_text() for f in secret_files(paths)} == first
    assert made(tmp_path / "other")[1].prefect_auth.read_text() != first[paths.prefect_auth]


@pytest.mark.parametrize("servers", [{"auth": False}, REMOTE], ids=["auth off", "remote servers"])
def test_no_credentials_are_made_with_auth_off_or_for_remote_servers(
    tmp_path: Path, servers: dict[str, object]
) -> None:
    made(tmp_path, **servers)
    assert not any(f.exists() for f in secret_files(StatePaths(tmp_path)))


def test_a_malformed_login_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "prefect-auth").write_text("no colon here\n")
    with pytest.raises(CredentialsError, match="prefect-auth"):
        read_login(StatePaths(tmp_path).prefect_auth)


def test_client_env_carries_the_logins_iff_auth_is_on(tmp_path: Path) -> None:
    cfg, paths = made(tmp_path)
    env = client_env(cfg, paths)
    prefect, mlflow = read_login(paths.prefect_auth), read_login(paths.mlflow_auth)
    assert prefect and mlflow
    assert env["PREFECT_API_AUTH_STRING"] == prefect.auth_string
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (mlflow.username, mlflow.password)
    off = client_env(cfg.model_copy(update={"auth": False}), paths)  # files left from an earlier stack are unused
    assert not set(CREDENTIAL_VARS) & set(off)


def test_a_state_folder_without_logins_leaves_the_inherited_ones(tmp_path: Path) -> None:
    """A command run with a state folder of its own against a stack its parent holds the login of: client_env names
    no credential, so the parent's variables reach the servers (a CI checkout's commands get none: tasks.ci)."""
    assert not set(CREDENTIAL_VARS) & set(client_env(ServersConfig(), StatePaths(tmp_path)))


def test_activate_keeps_the_users_logins_for_remote_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_context(CONFIG, "dev", home=tmp_path).with_config(servers=REMOTE)
    ensure_stack_credentials(ServersConfig(), ctx.paths)  # even a local stack's files in the same folder lose
    mine = {"PREFECT_API_AUTH_STRING": "me:prefect-secret", "MLFLOW_TRACKING_USERNAME": "me"}
    mine["MLFLOW_TRACKING_PASSWORD"] = "mlflow-secret"
    for key in client_env(ctx.config.servers, ctx.paths):  # activate writes these: restored after the test
        monkeypatch.setenv(key, "restored after the test")
    for key, value in mine.items():
        monkeypatch.setenv(key, value)
    ctx.activate()
    assert {key: os.environ[key] for key in mine} == mine


def test_the_local_stacks_file_wins_over_a_login_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell that holds a remote server's login still reaches the local stack with the stack's own."""
    ctx = make_context(CONFIG, "dev", home=tmp_path)
    ensure_stack_credentials(ctx.config.servers, ctx.paths)
    for key in client_env(ctx.config.servers, ctx.paths):
        monkeypatch.setenv(key, "someone else's")
    ctx.activate()
    prefect = read_login(ctx.paths.prefect_auth)
    assert prefect and os.environ["PREFECT_API_AUTH_STRING"] == prefect.auth_string


def test_servers_get_the_logins_and_clients_the_same_ones(tmp_path: Path) -> None:
    cfg, paths = made(tmp_path)
    svc = by_name(cfg, paths)
    prefect, mlflow = read_login(paths.prefect_auth), read_login(paths.mlflow_auth)
    assert prefect and mlflow
    server, tracking = svc["prefect-server"], svc["mlflow-server"]
    assert server.env["PREFECT_SERVER_API_AUTH_STRING"] == prefect.auth_string
    assert tracking.cmd[-2:] == ["--app-name", "basic-auth"]
    assert tracking.env["MLFLOW_AUTH_CONFIG_PATH"] == str(paths.mlflow_auth_config)
    assert tracking.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == mlflow.password
    assert tracking.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == paths.mlflow_secret_key.read_text()
    for name in ("prefect-worker", "gateway"):
        env = svc[name].env
        assert env["PREFECT_API_AUTH_STRING"] == prefect.auth_string, name
        assert env["MLFLOW_TRACKING_PASSWORD"] == mlflow.password, name


def test_with_auth_off_no_server_asks_for_a_login(tmp_path: Path) -> None:
    cfg, paths = made(tmp_path, auth=False)
    svc = by_name(cfg, paths)
    assert "--app-name" not in svc["mlflow-server"].cmd
    secrets = {*CREDENTIAL_VARS, "PREFECT_SERVER_API_AUTH_STRING", "MLFLOW_AUTH_ADMIN_PASSWORD"}
    assert not {k for s in svc.values() for k in s.env} & secrets


def test_remote_servers_are_not_started_and_the_worker_keeps_the_users_login(tmp_path: Path) -> None:
    cfg, paths = made(tmp_path, **REMOTE)
    svc = by_name(cfg, paths)
    assert set(svc) == {"prefect-worker", "gateway"}
    assert not set(CREDENTIAL_VARS) & set(svc["prefect-worker"].env)


def test_the_mlflow_auth_ini_keeps_users_under_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.server.auth.config import read_auth_config

    paths = StatePaths(tmp_path)
    paths.mlflow_auth_config.parent.mkdir(parents=True)
    paths.mlflow_auth_config.write_text(mlflow_auth_ini(paths))
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(paths.mlflow_auth_config))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    read = read_auth_config()
    assert read.database_uri == f"sqlite:///{paths.mlflow_auth_db}"
    assert read.default_permission == "NO_PERMISSIONS" and read.admin_password is None  # no password on disk
    assert read.auth_cache_ttl_seconds > 0  # not one password-hash check per request


@pytest.mark.parametrize(
    ("host", "auth", "warned"),
    [
        ("127.0.0.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("0.0.0.0", False, True),
        ("10.1.2.3", False, True),
        ("tollgate.internal", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_up_warns_of_an_open_server_beyond_this_machine(host: str, auth: bool, warned: bool) -> None:
    assert is_loopback(host) == (host in ("127.0.0.1", "localhost", "::1"))
    warning = open_host_warning(ServersConfig(host=host, auth=auth))
    assert (warning is not None) == warned
    if warning:
        assert host in warning and "servers.auth" in warning
