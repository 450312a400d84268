"""Servers that let no one in: with servers.auth on (the default) the stack's Prefect API and MLflow server
answer 401 to a request without the stack's login and 200 with it; health checks and the UIs' front doors still
work; the login files are 0600; and a login the server no longer accepts stops `up` with what to do."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from tests.helpers import mlflow_auth, prefect_auth
from tollgate.app.stack import Stack, StackError
from tollgate.config import ServersConfig
from tollgate.paths import StatePaths
from tollgate.procs import free_port, port_in_use

REQUESTS = {
    "prefect POST": ("prefect", "POST", "/flows/filter", {}),
    "prefect GET": ("prefect", "GET", "/admin/version", None),
    "mlflow GET": ("mlflow", "GET", "/api/2.0/mlflow/registered-models/search", None),
    "mlflow POST": ("mlflow", "POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1}),
}


def call(live_stack: dict[str, str], api: str, auth: tuple[str, str] | None) -> httpx.Response:
    """One read request to the Prefect API or the MLflow REST API with `auth` (user, password), or none."""
    server, method, path, body = REQUESTS[api]
    return httpx.request(method, f"{live_stack[server]}{path}", json=body, auth=auth)


def login(api: str) -> tuple[str, str]:
    """The session stack's login for the server of `api`."""
    return prefect_auth() if api.startswith("prefect") else mlflow_auth()


APIS = list(REQUESTS)


@pytest.mark.parametrize("api", APIS)
def test_a_request_without_the_stacks_login_is_refused(live_stack: dict[str, str], api: str) -> None:
    assert call(live_stack, api, None).status_code == 401
    assert call(live_stack, api, (login(api)[0], "a wrong password")).status_code == 401


@pytest.mark.parametrize("api", APIS)
def test_the_same_request_with_the_stacks_login_is_answered(live_stack: dict[str, str], api: str) -> None:
    assert call(live_stack, api, login(api)).status_code == 200


def test_health_needs_no_login(live_stack: dict[str, str]) -> None:
    """What `up`, `status` and commands poll before they run (procs.healthy sends no login)."""
    assert httpx.get(f"{live_stack['prefect']}/health").status_code == 200
    assert httpx.get(f"{live_stack['mlflow']}/health").status_code == 200


def test_the_uis_ask_the_browser_for_the_login(live_stack: dict[str, str]) -> None:
    mlflow = live_stack["mlflow"]
    prompt = httpx.get(mlflow)
    assert prompt.status_code == 401 and prompt.headers["WWW-Authenticate"].startswith("Basic ")
    page = httpx.get(mlflow, auth=mlflow_auth())
    assert page.status_code == 200 and "<html" in page.text.lower()
    # the page's own calls carry the login the browser got at the prompt
    ajax = httpx.get(f"{mlflow}/ajax-api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=mlflow_auth())
    assert ajax.status_code == 200
    # Prefect's UI loads without a login and asks for it on its own page (the API tells it to)
    ui = live_stack["prefect"].removesuffix("/api")
    assert httpx.get(ui).status_code == 200
    assert httpx.get(f"{ui}/ui-settings").json()["auth"] == "BASIC"


def test_the_login_files_are_readable_by_their_owner_only(live_stack: dict[str, str]) -> None:
    paths = StatePaths(Path(live_stack["home"]))
    for secret in (paths.prefect_auth, paths.mlflow_auth, paths.mlflow_secret_key, paths.mlflow_auth_db):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret


def test_the_worker_and_this_process_reach_the_servers_with_the_login(live_stack: dict[str, str]) -> None:
    """The worker polls the work pool with the login (the pool is READY only while it does); this process's
    Prefect and MLflow clients got theirs from the environment (tests/conftest.py, as Context.activate does)."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    from tollgate.config import load_config

    pool = load_config(Path(__file__).resolve().parents[2] / "configs" / "pipeline.yaml").config.servers.work_pool
    with get_client(sync_client=True) as client:
        assert str(client.read_work_pool(pool).status) in ("WorkPoolStatus.READY", "READY")
    assert isinstance(MlflowClient(live_stack["mlflow"]).search_registered_models(max_results=1), list)


def test_up_stops_when_mlflow_no_longer_takes_the_login_file(tmp_path: Path) -> None:
    """MLflow creates its admin once, from the first login; a later `up` keeps using it, and a login file that no
    longer matches (deleted and made again) stops `up` naming the files, with nothing left running."""
    ports = {key: free_port() for key in ("prefect_port", "mlflow_port", "worker_health_port", "gateway_port")}
    servers, paths = ServersConfig.model_validate(ports), StatePaths(tmp_path / "home")
    said: list[str] = []
    stack = Stack(servers, paths, say=said.append)
    stack.up()
    stack.down()
    stack.up()  # the admin exists now: its password is the file's, not set again
    try:
        assert httpx.get(f"{servers.mlflow_url}/api/2.0/mlflow/registered-models/search").status_code == 401
        assert (
            httpx.get(f"{servers.mlflow_url}/api/2.0/mlflow/registered-models/search", auth=mlflow_auth(paths.home))
        ).status_code == 200
    finally:
        stack.down()
    assert not any("warning" in m for m in said), said
    paths.mlflow_auth.unlink()
    paths.mlflow_auth.write_text("tollgate:a-login-mlflow-never-saw-0123456789")
    with pytest.raises(StackError, match=r"mlflow-server refuses the stack's login: .*auth\.db.*mlflow-auth"):
        Stack(servers, paths, say=said.append).up()
    assert not any(port_in_use("127.0.0.1", port) for port in ports.values())
    assert not any(paths.pids.iterdir())
