"""The local stack starts real servers, reports health, refuses conflicts and stops what it started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import mlflow_auth
from tollgate.app.stack import Stack, StackError, group_pids, port_in_use
from tollgate.config import load_config
from tollgate.paths import StatePaths
from tollgate.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
TG = [sys.executable, "-m", "tollgate.app.cli"]


def _isolated_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, TOLLGATE_HOME=str(home))
    for key in ("PREFECT_PORT", "MLFLOW_PORT", "WORKER_HEALTH_PORT", "GATEWAY_PORT"):
        env[f"TOLLGATE__SERVERS__{key}"] = str(free_port())
    return env


def _servers(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return load_config(ROOT / "configs" / "pipeline.yaml", "dev", environ=env).config.servers


def test_cli_up_status_down_lifecycle(tmp_path: Path) -> None:
    """`tollgate up`, `status`, `down` as processes on a state folder of their own. Slow (~40-60 s): it starts
    and stops a whole stack (Prefect, MLflow, worker, gateway), which is what it tests; the session's stack
    cannot stand in for it."""
    env = _isolated_env(tmp_path / "home")
    servers = _servers(env)
    up = subprocess.run([*TG, "up"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run([*TG, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        body = json.loads(status.stdout)
        rows = {r["service"]: r for r in body["services"]}
        assert set(rows) == {"prefect-server", "mlflow-server", "prefect-worker", "gateway"}
        assert [m["failed_alerts"] for m in body["models"]] == [0]  # per model: nothing failed yet
        assert body["disagreements"] == [] and body["gateway_restarts"] == 0
        assert all(r["healthy"] and r["rss_mb"] > 0 for r in rows.values())
        # The UIs answer, not only /health: Prefect's page loads (it asks for the login itself), MLflow's after the
        # browser's basic-auth prompt.
        assert httpx.get(servers.prefect_ui_url, timeout=10).status_code == 200
        assert httpx.get(servers.mlflow_url, timeout=10).status_code == 401
        assert httpx.get(servers.mlflow_url, timeout=10, auth=mlflow_auth(tmp_path / "home")).status_code == 200
        pids = {name: r["pid"] for name, r in rows.items()}
        again = subprocess.run([*TG, "up"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and again.stdout.count("already running") == 4
        rows2 = {
            r["service"]: r["pid"]
            for r in json.loads(
                subprocess.run([*TG, "status", "--json"], env=env, capture_output=True, text=True).stdout
            )["services"]
        }
        assert rows2 == pids  # `up` twice starts nothing twice
        # issue 32.6: nothing a fresh `up` made is open to the group or others (databases, logs, logins, pids)
        assert StatePaths(tmp_path / "home").exposed() == (0, [])
        assert body["state_folder_exposed"] == []
        (tmp_path / "home" / "logs" / "prefect-server.log").chmod(0o644)
        warned = subprocess.run([*TG, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert "WARNING: 1 entries in the state folder are open to other users" in warned.stdout, warned.stdout
        assert "prefect-server.log (-rw-r--r--)" in warned.stdout
    finally:
        down = subprocess.run([*TG, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    for port in (servers.prefect_port, servers.mlflow_port, servers.worker_health_port, servers.gateway_port):
        assert not port_in_use("127.0.0.1", port)
    for pid in pids.values():
        assert not group_pids(pid)
    assert not any((tmp_path / "home" / "pids").iterdir())
    status = subprocess.run([*TG, "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 1  # nothing healthy any more


def test_busy_port_is_refused_naming_service_and_setting(tmp_path: Path) -> None:
    env = _isolated_env(tmp_path / "home")
    servers = _servers(env)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", servers.prefect_port))
        blocker.listen()
        with pytest.raises(StackError, match=r"prefect-server: port \d+ .* already in use.*servers.prefect_port"):
            Stack(servers, StatePaths(tmp_path / "home"), say=lambda _m: None).up()
    assert not port_in_use("127.0.0.1", servers.mlflow_port)  # nothing was left started


def test_stale_pid_file_is_reported_and_removed(tmp_path: Path) -> None:
    env = _isolated_env(tmp_path / "home")
    paths = StatePaths(tmp_path / "home").ensure()
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths.pid_file("mlflow-server").write_text(json.dumps({"pid": dead.pid}))
    said: list[str] = []
    rows = Stack(_servers(env), paths, say=said.append).status()
    assert any("stale pid file" in m and "mlflow-server" in m for m in said)
    assert not paths.pid_file("mlflow-server").exists()
    assert all(not r["healthy"] for r in rows)


def test_a_service_that_dies_on_start_names_its_log_and_nothing_is_left(tmp_path: Path) -> None:
    env = _isolated_env(tmp_path / "home")
    servers = _servers(env)
    paths = StatePaths(tmp_path / "home").ensure()
    paths.mlflow_db.write_text("not a database\n")  # MLflow's server exits on it at start-up
    with pytest.raises(StackError, match=r"mlflow-server: exited during start-up. See its log: .*mlflow-server.log"):
        Stack(servers, paths, say=lambda _m: None).up()
    assert not any(paths.pids.iterdir())
    assert not port_in_use("127.0.0.1", servers.prefect_port)


def test_a_stack_from_a_config_variant_runs_every_service_on_the_variant_ports(tmp_path: Path) -> None:
    """What the benchmarks do: ports set with `ctx.with_config(servers=...)`, not in the environment; the
    gateway and worker load the config from its path and still reach this stack (servers_env)."""
    from tollgate.context import make_context

    ports = {key: free_port() for key in ("prefect_port", "mlflow_port", "worker_health_port", "gateway_port")}
    ctx = make_context(ROOT / "configs" / "pipeline.yaml", "dev", home=tmp_path / "home").with_config(servers=ports)
    stack = Stack(ctx.config.servers, ctx.paths, say=lambda _m: None, config_path=ctx.loaded.path)
    stack.up()
    try:
        rows = {r["service"]: r for r in stack.status()}
        assert all(r["healthy"] for r in rows.values()), rows
        assert rows["gateway"]["url"] == f"http://127.0.0.1:{ports['gateway_port']}"
    finally:
        stack.down()
    assert not any(port_in_use("127.0.0.1", port) for port in ports.values())
