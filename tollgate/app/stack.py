"""The local stack: a real Prefect server, MLflow server, Prefect process worker and the gateway.

Each service runs in its own process group with a pid file and a log under the state folder, so `down`
stops exactly what `up` started. Every URL and port comes from ServersConfig.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tollgate.app.services import BIN, Service, mlflow_auth_ini, services
from tollgate.config import ServersConfig
from tollgate.context import Context, client_env
from tollgate.paths import StatePaths, owner_only
from tollgate.procs import cmdline, group_pids, group_rss_mb, healthy, http_status, pid_alive, port_in_use
from tollgate.secrets import Login, ensure_admin_token, ensure_stack_credentials, mlflow_login, prefect_login

__all__ = [
    "BIN",
    "DeploymentTarget",
    "Service",
    "Stack",
    "StackError",
    "apply_deployments",
    "deployment_variables",
    "group_pids",
    "port_in_use",
]


class StackError(Exception):
    """A service could not be started, checked or stopped; the message names the service and its log."""


def ensure_databases(servers: ServersConfig) -> list[str]:
    """On the postgres backend, create the databases of the servers `up` starts that do not exist yet; returns
    the names it created. StackError naming servers.postgres_url when the server cannot be reached."""
    if servers.backend != "postgres" or servers.postgres_url is None:
        return []
    import psycopg2
    from psycopg2 import sql

    prefix = servers.postgres_db_prefix
    wanted = [f"{prefix}_prefect"] if servers.prefect_api_url is None else []
    wanted += [f"{prefix}_mlflow"] if servers.mlflow_tracking_uri is None else []
    try:
        conn = psycopg2.connect(f"{servers.postgres_url}/postgres", connect_timeout=10)
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackError(
            f"servers.postgres_url {servers.postgres_url}: cannot connect ({reason}); "
            "the password comes from PGPASSWORD or ~/.pgpass"
        ) from None
    created = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in wanted:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
    finally:
        conn.close()
    return created


def is_loopback(host: str) -> bool:
    """True when `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_host_warning(servers: ServersConfig) -> str | None:
    """What `up` says when the servers take anyone's requests on an address beyond this machine; else None."""
    if servers.auth or is_loopback(servers.host):
        return None
    return (
        f"warning: servers.auth is off and the stack binds to {servers.host}: anyone who can reach that address "
        "can use the Prefect and MLflow APIs. Turn servers.auth on unless this is a throw-away stack."
    )


class Stack:
    """Start, check and stop the local services under one state folder."""

    def __init__(
        self,
        servers: ServersConfig,
        paths: StatePaths,
        say: Callable[[str], None] = print,
        config_path: Path | None = None,
        env: str = "dev",
    ):
        self.servers = servers
        self.paths = paths
        self.say = say
        self.config_path = config_path
        self.env_name = env
        self.services = services(servers, paths, config_path, env)

    # -- pid files -------------------------------------------------------------------------------
    def _read_pid(self, svc: Service) -> int | None:
        """The live pid recorded for svc, or None; a stale pid file is removed with a message."""
        pid_file = self.paths.pid_file(svc.name)
        if not pid_file.exists():
            return None
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            self.say(f"{svc.name}: removed unreadable pid file {pid_file}")
            pid_file.unlink()
            return None
        if pid_alive(pid) and svc.marker in cmdline(pid):
            return pid
        if group_pids(pid):
            return pid  # leader gone but children still hold the group: still ours to stop
        self.say(f"{svc.name}: removed stale pid file {pid_file} (process {pid} is gone)")
        pid_file.unlink()
        return None

    # -- up --------------------------------------------------------------------------------------
    def up(self) -> None:
        """Start every service not already running and wait until all are healthy; everything it and the services
        create in the state folder is owner-only."""
        with owner_only():
            self._up()

    def _up(self) -> None:
        self.paths.ensure()
        self._prepare_auth()
        for name in ensure_databases(self.servers):
            self.say(f"postgres: created database {name} at {self.servers.postgres_url}")
        started: list[Service] = []
        try:
            ensure_admin_token(self.paths)
            waited: set[str] = set()
            for svc in self.services:
                # The worker needs a healthy API; the gateway reads the registry when it starts.
                needs = {"prefect-worker": "prefect-server", "gateway": "mlflow-server"}.get(svc.name)
                for prior in started:
                    if prior.name == needs and prior.name not in waited:
                        self._wait_healthy(prior)
                        waited.add(prior.name)
                if svc.name == "prefect-worker":
                    self._wait_remote_prefect()
                if self._start(svc):
                    started.append(svc)
            for svc in started:
                if svc.name not in waited:
                    self._wait_healthy(svc)
            self._check_logins()
        except StackError:
            for svc in reversed(started):
                self._stop(svc, quiet=True)
            raise

    def _prepare_auth(self) -> None:
        """Make the local servers' logins (first `up`) and MLflow's auth ini, then describe the services again so
        their environments carry the logins; warn when a server open to anyone is bound beyond this machine."""
        if not self.servers.auth:
            if (warning := open_host_warning(self.servers)) is not None:
                self.say(warning)
            return
        ensure_stack_credentials(self.servers, self.paths)
        if self.servers.mlflow_tracking_uri is None:
            self.paths.mlflow_auth_config.write_text(mlflow_auth_ini(self.paths))
        self.services = services(self.servers, self.paths, self.config_path, self.env_name)

    def _login_checks(self) -> list[tuple[str, Login | None, str, str]]:
        """Per local server: its name, login, a URL that needs the login, and what to do when it is refused."""
        servers, paths = self.servers, self.paths
        return [
            (
                "prefect-server",
                prefect_login(servers, paths),
                f"{servers.prefect_url}/admin/version",
                f"it was started with another login than {paths.prefect_auth} holds. Run `tollgate down`, then "
                "`tollgate up`.",
            ),
            (
                "mlflow-server",
                mlflow_login(servers, paths),
                f"{servers.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                f"its admin in {paths.mlflow_auth_db} was created with another password than {paths.mlflow_auth} "
                f"holds. Run `tollgate down`, delete {paths.mlflow_auth_db} (MLflow creates the admin again from "
                "the file), then `tollgate up`.",
            ),
        ]

    def _check_logins(self) -> None:
        """Fail loudly when a local server refuses the login its clients get, and warn when it needs none (started
        before servers.auth was on): /health answers without a login either way, so it cannot tell."""
        for name, login, url, fix in self._login_checks():
            if login is None:
                continue
            if http_status(url, (login.username, login.password)) in (401, 403):
                raise StackError(f"{name} refuses the stack's login: {fix}")
            if http_status(url) == 200:
                self.say(f"warning: {name} answers without a login; restart it (`tollgate down`, `tollgate up`)")

    def _wait_remote_prefect(self) -> None:
        if self.servers.prefect_api_url is not None and not healthy(f"{self.servers.prefect_url}/health", 5):
            raise StackError(f"prefect API at {self.servers.prefect_url} (servers.prefect_api_url) is not healthy")

    def _start(self, svc: Service) -> bool:
        """Launch svc unless it already runs; returns True when a process was started."""
        pid = self._read_pid(svc)
        if pid is not None:
            self.say(f"{svc.name}: already running (pid {pid})")
            return False
        if port_in_use(self.servers.host, svc.port):
            raise StackError(
                f"{svc.name}: port {svc.port} on {self.servers.host} is already in use by a process Tollgate did "
                f"not start. Stop it, or choose another port with {svc.port_key} in configs/environments/*.yaml "
                f"or TOLLGATE__{svc.port_key.upper().replace('.', '__')}=<port>."
            )
        log = self.paths.log_file(svc.name)
        env = {**os.environ, **svc.env}
        with open(log, "ab") as fh:
            fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(svc.cmd)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                svc.cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.paths.home,
                start_new_session=True,
            )
        self.paths.pid_file(svc.name).write_text(
            json.dumps({"pid": proc.pid, "port": svc.port, "cmd": svc.cmd, "started": time.time()})
        )
        self.say(f"{svc.name}: starting (pid {proc.pid}, log {log})")
        return True

    def _wait_healthy(self, svc: Service) -> None:
        deadline = time.monotonic() + self.servers.startup_timeout_s
        pid = self._read_pid(svc)
        while time.monotonic() < deadline:
            if healthy(svc.health_url):
                self.say(f"{svc.name}: healthy at {svc.ui_url}")
                return
            if pid is None or not pid_alive(pid):
                raise StackError(
                    f"{svc.name}: exited during start-up. See its log: {self.paths.log_file(svc.name)}\n"
                    + self._tail(svc)
                )
            time.sleep(0.5)
        raise StackError(
            f"{svc.name}: not healthy at {svc.health_url} after {self.servers.startup_timeout_s:.0f} s "
            f"(servers.startup_timeout_s). See its log: {self.paths.log_file(svc.name)}\n" + self._tail(svc)
        )

    def _tail(self, svc: Service, lines: int = 15) -> str:
        log = self.paths.log_file(svc.name)
        if not log.exists():
            return ""
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join("  | " + line for line in text)

    # -- down ------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every service this state folder started (by pid), and check its port is free."""
        for svc in reversed(self.services):
            self._stop(svc)

    def _stop(self, svc: Service, quiet: bool = False) -> None:
        pid = self._read_pid(svc)
        if pid is None:
            if not quiet:
                self.say(f"{svc.name}: not running")
            return
        # A Prefect worker ignores the first SIGTERM, so escalate: TERM, TERM, then KILL.
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while group_pids(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not group_pids(pid):
                break
        left = group_pids(pid)
        if left:
            raise StackError(f"{svc.name}: processes {left} survived SIGKILL")
        deadline = time.monotonic() + 5
        while port_in_use(self.servers.host, svc.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.paths.pid_file(svc.name).unlink(missing_ok=True)
        if not quiet:
            self.say(f"{svc.name}: stopped (pid {pid})")

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> list[dict[str, object]]:
        """One row per service: name, url, pid, healthy, rss_mb."""
        rows: list[dict[str, object]] = []
        if self.servers.prefect_api_url is not None:
            rows.append(
                {
                    "service": "prefect-server (remote)",
                    "url": self.servers.prefect_ui_url,
                    "pid": None,
                    "healthy": healthy(f"{self.servers.prefect_url}/health"),
                    "rss_mb": None,
                }
            )
        if self.servers.mlflow_tracking_uri is not None:
            rows.append(
                {
                    "service": "mlflow-server (remote)",
                    "url": self.servers.mlflow_url,
                    "pid": None,
                    "healthy": healthy(f"{self.servers.mlflow_url}/health"),
                    "rss_mb": None,
                }
            )
        for svc in self.services:
            pid = self._read_pid(svc)
            rows.append(
                {
                    "service": svc.name,
                    "url": svc.ui_url,
                    "pid": pid,
                    "healthy": pid is not None and healthy(svc.health_url),
                    "rss_mb": round(group_rss_mb(pid), 1) if pid is not None else None,
                }
            )
        return rows


@dataclass(frozen=True)
class DeploymentTarget:
    """The project a set of applied deployments runs: its config (absolute path and environment) and
    registered model. Every deployment gets the config as parameters; names carry the model so projects on
    one stack stay apart; the retrain trigger matches only events about this model."""

    config_path: Path
    env: str
    model: str

    @classmethod
    def of(cls, ctx: Context) -> DeploymentTarget:
        """The target for the project of a context (what `tollgate --config ... --env ... up` applies)."""
        return cls(Path(ctx.config_path).resolve(), ctx.env, ctx.config.project.registered_model)

    @property
    def suffix(self) -> str:
        """The model as a deployment-name suffix (Prefect refuses '/', '%', '&', '<', '>' in names)."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.model).strip("-") or "model"

    @property
    def resource_id(self) -> str:
        """The event resource the model's alerts are emitted for (tasks.alerts.emit)."""
        return f"tollgate.model.{self.model}"

    def name(self, deployment: str) -> str:
        """The applied name of one of prefect.yaml's deployments (e.g. retrain -> retrain-churn-classifier)."""
        return f"{deployment}-{self.suffix}"

    def ci_config(self, root: Path) -> str:
        """The config as ci_pipeline reads it in a clone: relative to the repository root when it is inside."""
        try:
            return str(self.config_path.relative_to(root.resolve()))
        except ValueError:
            return str(self.config_path)

    def variables(self, root: Path) -> dict[str, str]:
        """The TOLLGATE_* variables deployments/prefect.yaml is templated with (besides root and work pool)."""
        return {
            "TOLLGATE_CONFIG": str(self.config_path),
            "TOLLGATE_ENV": self.env,
            "TOLLGATE_CI_CONFIG": self.ci_config(root),
            "TOLLGATE_MODEL": self.model,
            "TOLLGATE_DEPLOYMENT_SUFFIX": self.suffix,
        }


def deployment_variables(root: Path, servers: ServersConfig, target: DeploymentTarget) -> dict[str, str]:
    """Every variable deployments/prefect.yaml is templated with, for `target` on this stack."""
    return {
        "TOLLGATE_PROJECT_ROOT": str(root.resolve()),
        "TOLLGATE_WORK_POOL": servers.work_pool,
        **target.variables(root),
    }


def apply_deployments(
    root: Path,
    servers: ServersConfig,
    paths: StatePaths,
    target: DeploymentTarget,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Register every deployment in deployments/prefect.yaml (schedules and event triggers) for the project of
    `target`; returns the applied names (flow/deployment). Another target's deployments are left alone."""
    env = {
        **os.environ,
        **client_env(servers, paths),
        **deployment_variables(root, servers, target),
        "COLUMNS": "1000",  # rich wraps its panels at the terminal width; one line per applied deployment
    }
    cmd = [
        str(BIN / "prefect"),
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(root / "deployments" / "prefect.yaml"),
    ]
    say(f"applying deployments/prefect.yaml for {target.model} ({target.config_path}, --env {target.env}) ...")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise StackError(f"`prefect deploy --all` failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    names = re.findall(r"Deployment '([^']+)' successfully created", proc.stdout)
    say(f"deployments applied: {', '.join(names) or 'see prefect deployment ls'}")
    return names
