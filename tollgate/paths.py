"""The one place that resolves on-disk locations under the state folder ($TOLLGATE_HOME, default .tollgate/)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StatePaths:
    """Every location Tollgate writes to. Creating folders is explicit (`ensure`), never at import."""

    home: Path

    @classmethod
    def from_env(cls, root: Path = PROJECT_ROOT) -> StatePaths:
        """The state folder named by $TOLLGATE_HOME, else `.tollgate/` in the project root."""
        raw = os.environ.get("TOLLGATE_HOME")
        return cls(Path(raw).resolve() if raw else (root / ".tollgate").resolve())

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        return self.home / "pids"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def gx_root(self) -> Path:
        return self.home / "gx"

    @property
    def ledger(self) -> Path:
        return self.home / "ledger.jsonl"

    @property
    def prediction_log(self) -> Path:
        return self.home / "predictions"

    @property
    def admin_token(self) -> Path:
        return self.home / "admin-token"

    @property
    def prefect_auth(self) -> Path:
        """The Prefect API's basic-auth string ("user:password") of the local stack; written 0600 by `up`."""
        return self.home / "prefect-auth"

    @property
    def mlflow_auth(self) -> Path:
        """The local MLflow server's admin login ("user:password"); written 0600 by `up`."""
        return self.home / "mlflow-auth"

    @property
    def mlflow_secret_key(self) -> Path:
        """The key MLflow's basic-auth app signs its CSRF tokens with (MLFLOW_FLASK_SERVER_SECRET_KEY); 0600."""
        return self.home / "mlflow-secret-key"

    @property
    def mlflow_auth_db(self) -> Path:
        """MLflow's basic-auth user store (the admin is created in it from `mlflow_auth` on first start)."""
        return self.home / "mlflow" / "auth.db"

    @property
    def mlflow_auth_config(self) -> Path:
        """The ini MLflow's basic-auth app reads (MLFLOW_AUTH_CONFIG_PATH); holds no password."""
        return self.home / "mlflow" / "basic_auth.ini"

    @property
    def approvers(self) -> Path:
        """Approvers' salted secret hashes (issue 12); written 0600 by `tollgate approvers add`."""
        return self.home / "approvers.json"

    @property
    def model_cache(self) -> Path:
        return self.home / "model-cache"

    @property
    def labels(self) -> Path:
        return self.home / "labels"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def work(self) -> Path:
        """Scratch space for flows (checkouts, temporary snapshots)."""
        return self.home / "work"

    @property
    def approval_waiters(self) -> Path:
        """One JSON file per approval being waited for: which process waits (so `approve` can tell a dead one)."""
        return self.home / "approvals"

    @property
    def rollout_controllers(self) -> Path:
        """One JSON file per deploy_model run: the process that controls it (judged alive by its pid and start
        time, never by the file being there: a killed controller leaves it behind)."""
        return self.home / "rollouts"

    @property
    def gateway_restarts(self) -> Path:
        """One JSON line per restart of the serving process by its supervisor (`tollgate serve --supervise`)."""
        return self.home / "gateway-restarts.jsonl"

    def model_log(self, model: str) -> Path:
        """The prediction log of one registered model (version numbers are only unique within a model)."""
        return self.prediction_log / model

    def model_labels(self, model: str) -> Path:
        """The label store of one registered model."""
        return self.labels / model

    def retrain_history(self, model: str) -> Path:
        """When retrains of one registered model started (the cooldown and budget guard reads it)."""
        return self.home / "retrains" / f"{model}.jsonl"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.pids / f"{service}.pid"

    def ensure(self) -> StatePaths:
        """Create the folders, owner-only (0700: prediction rows, databases, logins and logs live here); returns
        self."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)
        for d in (
            self.logs,
            self.pids,
            self.prefect_home,
            self.mlflow_db.parent,
            self.mlflow_artifacts,
            self.reports,
            self.work,
        ):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self

    def exposed(self, limit: int = 5) -> tuple[int, list[str]]:
        """(how many, the first `limit`) entries under the state folder that its owner's group or others may read,
        write or enter; (0, []) when everything is owner-only."""
        count, named = 0, list[str]()
        for root, dirs, files in os.walk(self.home):
            for name in [*dirs, *files]:
                path = os.path.join(root, name)
                try:
                    mode = os.lstat(path).st_mode
                except FileNotFoundError:
                    continue
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    count += 1
                    if len(named) < limit:
                        named.append(f"{path} ({stat.filemode(mode)})")
        return count, named


OWNER_ONLY_UMASK = 0o077


@contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders this process (and the processes it starts) creates in the block are owner-only."""
    old = os.umask(OWNER_ONLY_UMASK)
    try:
        yield
    finally:
        os.umask(old)
