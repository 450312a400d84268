"""Session-wide isolation: a temp state folder and free ports, set before anything imports Prefect.

Prefect reads its settings from the environment at import, so this runs at conftest import time. Nothing
here touches a developer's .tollgate/ or running stack.
"""

from __future__ import annotations

import os

# One OpenMP thread per process, set before anything loads OpenMP (numpy, scikit-learn). The suite runs two
# pytest-xdist workers beside their stacks and gateways on 2 cores: with a thread per core in every process,
# OpenMP's waiting threads spin against each other, and a HistGradientBoosting fit on the bundled snapshot took
# 3.3 s of CPU instead of 0.25 s (two fits at once, measured). Children (servers, worker, flow runs, CLI) inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# No Prefect import in these: safe before the environment is set.
from tollgate.config import load_config
from tollgate.paths import StatePaths
from tollgate.procs import free_port
from tollgate.secrets import credential_env, ensure_stack_credentials

ROOT = Path(__file__).resolve().parent.parent


_HOME = Path(tempfile.mkdtemp(prefix="tollgate-test-"))
_PORTS = {name: free_port() for name in ("PREFECT_PORT", "MLFLOW_PORT", "GATEWAY_PORT", "WORKER_HEALTH_PORT")}
os.environ["TOLLGATE_HOME"] = str(_HOME)
for _name, _port in _PORTS.items():
    os.environ[f"TOLLGATE__SERVERS__{_name}"] = str(_port)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORTS['PREFECT_PORT']}/api"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{_PORTS['MLFLOW_PORT']}"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # as client_env sets it for the stack
# The session stack's logins exist before anything imports Prefect (which reads PREFECT_API_AUTH_STRING then);
# `up` keeps them. A command with a state folder of its own inherits them from here.
_SERVERS = load_config(ROOT / "configs" / "pipeline.yaml").config.servers
ensure_stack_credentials(_SERVERS, StatePaths(_HOME))
os.environ.update(credential_env(_SERVERS, StatePaths(_HOME)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tollgate.app.stack import Stack

    if (_HOME / "pids").exists() and any((_HOME / "pids").iterdir()):
        Stack(
            load_config(ROOT / "configs" / "pipeline.yaml").config.servers, StatePaths(_HOME), say=lambda _m: None
        ).down()
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def state_home() -> Path:
    """The session's temp state folder ($TOLLGATE_HOME)."""
    return _HOME


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture()
def config_dir(tmp_path: Path) -> Path:
    """A writable copy of configs/ for tests that edit the config."""
    dst = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", dst)
    return dst


@pytest.fixture(scope="session")
def live_stack(state_home: Path) -> Iterator[dict[str, str]]:
    """The real stack (Prefect server, MLflow server, worker, gateway) on free ports, started once per session."""
    from tollgate.app.stack import Stack

    config = ROOT / "configs" / "pipeline.yaml"
    servers = load_config(config).config.servers
    # The gateway is managed too (so it is stopped with the rest), serving the default model name.
    stack = Stack(servers, StatePaths(state_home), say=lambda _m: None, config_path=config)
    stack.up()
    yield {"prefect": servers.prefect_url, "mlflow": servers.mlflow_url, "home": str(state_home)}
    stack.down()
