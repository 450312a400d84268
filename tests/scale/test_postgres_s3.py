"""The scale tier on real engines (issue 14): a throw-away PostgreSQL cluster and an S3-compatible store (moto's
server), both started here (tests/scale/engines.py). Through the CLI, as a user runs it with
`servers.backend: postgres`, `servers.artifacts_uri: s3://...` and `compute.dask_address: local:2`:
`tollgate up` (Prefect and MLflow on Postgres, MLflow's artifacts in the bucket) -> train -> deploy v1 ->
traffic -> train v2 -> deploy v2 through shadow and canary under traffic -> drift on Dask -> backfill on Dask ->
rollback to v1 -> down. Then the state is where the config said: flow runs, runs and model versions in Postgres,
the models' files in the bucket, no SQLite file of either server in the state folder. Then the Prefect server on
Postgres is killed and started again in the middle of a rollout. Slow because it is the whole loop on a stack of its
own (~3 min, and ~2 min for the restart); each is the one test of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.helpers import ROOT
from tests.integration.live import records, wait_for
from tests.integration.monitoring_support import period
from tests.scale.engines import PG_PASSWORD, S3_ENV, Postgres, postgres, s3, s3_keys
from tollgate.paths import StatePaths
from tollgate.predlog import read_log
from tollgate.procs import free_port, group_pids

TOLLGATE = str(Path(sys.executable).parent / "tollgate")
MODEL = "churn-classifier"  # the bundled config's registered model


class User:
    """`tollgate ...` as a subprocess with the scale stack's environment; every command's output is kept."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, expect: int = 0, timeout: float = 300) -> str:
        proc = subprocess.run(
            [TOLLGATE, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        said = f"$ tollgate {' '.join(args)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        assert "Traceback" not in proc.stdout + proc.stderr, said
        assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{said}"
        return proc.stdout

    def json(self, *args: str) -> dict[str, Any]:
        out = self.run(*args, "--json").strip()
        body: dict[str, Any] = json.loads(out[out.index("{") :])  # the one object, maybe over several lines
        return body


def _env(home: Path, pg: Postgres, endpoint: str, bucket: str) -> dict[str, str]:
    """The suite's environment without its own stack's settings, plus this stack's: ports, backend, store."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOLLGATE__", "PREFECT_API", "PREFECT_UI", "MLFLOW_TRACKING", "PREFECT_HOME"))
        and k != "TOLLGATE_HOME"
    }
    ports = {p: str(free_port()) for p in ("PREFECT_PORT", "MLFLOW_PORT", "GATEWAY_PORT", "WORKER_HEALTH_PORT")}
    return {
        **inherited,
        **S3_ENV,
        "PGPASSWORD": PG_PASSWORD,  # the only place the password is: the environment (libpq, asyncpg)
        "TOLLGATE_HOME": str(home),
        **{f"TOLLGATE__SERVERS__{k}": v for k, v in ports.items()},
        "TOLLGATE__SERVERS__BACKEND": "postgres",
        "TOLLGATE__SERVERS__POSTGRES_URL": pg.url,
        "TOLLGATE__SERVERS__POSTGRES_DB_PREFIX": f"t{uuid.uuid4().hex[:8]}",
        "TOLLGATE__SERVERS__ARTIFACTS_URI": f"s3://{bucket}/mlflow",
        "TOLLGATE__SERVERS__S3_ENDPOINT_URL": endpoint,
        "TOLLGATE__SERVING__LOG_URI": f"s3://{bucket}/predlog",
        "TOLLGATE__COMPUTE__DASK_ADDRESS": "local:2",
        "TOLLGATE__ROLLOUT__AUTO_APPROVE": "true",
        "TOLLGATE__ROLLOUT__SHADOW_REQUESTS": "60",
        "TOLLGATE__ROLLOUT__CANARY_REQUESTS": "60",
        "TOLLGATE__ROLLOUT__CANARY_SHARE": "0.5",
        "TOLLGATE__SERVING__LOG_ROTATE_ROWS": "500",  # several sealed parts: the Dask steps fan out over them
    }


def _query(pg: Postgres, database: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(f"{pg.url}/{database}", password=PG_PASSWORD, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("scale-home")
    with postgres() as pg, s3() as store:
        env = _env(home, pg, store.endpoint, store.bucket)
        user = User(env)
        user.run("up", "--no-deployments", timeout=400)
        try:
            yield {"user": user, "env": env, "pg": pg, "s3": store, "home": home}
        finally:
            subprocess.run([TOLLGATE, "down"], env=env, cwd=ROOT, capture_output=True, timeout=120)


def _replay(url: str, frame: pd.DataFrame, until: subprocess.Popen[str] | None = None) -> list[dict[str, Any]]:
    """Send the frame's rows through the gateway (again and again while `until` runs); the answers."""
    answers: list[dict[str, Any]] = []
    with httpx.Client(timeout=60) as client:
        while True:
            for offset in range(0, len(frame), 100):
                resp = client.post(f"{url}/predict", json={"records": records(100, offset, frame)})
                assert resp.status_code == 200, resp.text[:2000]
                answers += resp.json()["predictions"]
            if until is None or until.poll() is not None:
                return answers
            time.sleep(0.2)


def test_the_whole_loop_on_postgres_s3_and_dask(
    scale_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, env, pg, store = scale_stack["user"], scale_stack["env"], scale_stack["pg"], scale_stack["s3"]
    prefix = env["TOLLGATE__SERVERS__POSTGRES_DB_PREFIX"]
    url = f"http://127.0.0.1:{env['TOLLGATE__SERVERS__GATEWAY_PORT']}"
    traffic = period("none", rows=1000)

    v1 = user.json("train", "--allow-dirty")
    assert v1["stage"] == "Staging", v1
    user.run("deploy", str(v1["version"]), "--in-terminal")
    t0 = time.time()
    _replay(url, traffic)

    v2 = user.json("train", "--allow-dirty")
    assert v2["stage"] == "Staging", v2
    deploy = subprocess.Popen(
        [TOLLGATE, "deploy", str(v2["version"]), "--in-terminal"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    during = _replay(url, traffic, until=deploy)
    out, _ = deploy.communicate(timeout=60)
    assert deploy.returncode == 0, out[-4000:]
    assert httpx.get(f"{url}/health").json()["champion"] == str(v2["version"])
    assert {a["role"] for a in during} >= {"champion"}

    # drift and backfill fan out over the log's parts on a Dask LocalCluster (compute.dask_address: local:2)
    drift = user.json("drift", "--since", str(t0))
    assert drift["rows"] > 0, drift
    # the log's sealed parts went to the bucket (serving.log_uri), and the Dask workers read them there
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    folder = StatePaths(scale_stack["home"]).model_log(MODEL)
    shipped = [k for k in s3_keys(store) if k.startswith(f"predlog/{MODEL}/seg-") and k.endswith(".parquet")]
    assert len(shipped) > 2 and not list(folder.glob("seg-*.parquet")), (shipped, sorted(os.listdir(folder)))
    log = read_log(folder)
    assert len(log) >= drift["rows"]
    labelled = log.sample(600, random_state=0)
    rng = np.random.default_rng(0)
    labels = pd.DataFrame(
        {
            "prediction_id": labelled["prediction_id"],
            "label": (rng.random(len(labelled)) < labelled["score"].astype(float)).astype(int),
            "label_time": "2026-01-01T00:00:00",
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    backfilled = user.json("backfill", str(tmp_path / "labels.csv"))
    assert any(r["n"] > 0 for r in backfilled["rows"]), backfilled
    fanned = _query(pg, f"{prefix}_prefect", "SELECT name FROM flow WHERE name LIKE 'fan_out-%' ORDER BY name")
    assert [r[0] for r in fanned] == ["fan_out-drift_of_parts", "fan_out-join_parts"]

    # status names where the state is (and never the password)
    state = user.json("status")["state"]
    assert state == {
        "prefect": f"postgresql+asyncpg{pg.url.removeprefix('postgresql')}/{prefix}_prefect",
        "mlflow": f"{pg.url}/{prefix}_mlflow",
        "artifacts": f"s3://{store.bucket}/mlflow",
        "compute": "local:2",
        "predictions": f"s3://{store.bucket}/predlog",
    }, state

    # rollback restores v1, served at once
    user.run("rollback")
    assert httpx.get(f"{url}/health").json()["champion"] == str(v1["version"])

    # the state is where the config said
    assert _query(pg, f"{prefix}_mlflow", "SELECT count(*) FROM model_versions")[0][0] == 2
    assert _query(pg, f"{prefix}_mlflow", "SELECT count(*) FROM runs")[0][0] >= 2
    assert _query(pg, f"{prefix}_prefect", "SELECT count(*) FROM flow_run")[0][0] >= 5
    keys = s3_keys(store)
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in keys), keys[:20]
    paths = StatePaths(scale_stack["home"])
    assert not paths.mlflow_db.exists() and not (paths.prefect_home / "prefect.db").exists()
    assert not any(paths.mlflow_artifacts.rglob("MLmodel")) if paths.mlflow_artifacts.exists() else True


def _kill_group(pid_file: Path) -> None:
    """kill -9 a stack service's whole process group (a crash, not a shutdown), and wait until it is gone."""
    pid = int(json.loads(pid_file.read_text())["pid"])
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not group_pids(pid), 30, f"process group {pid} gone after SIGKILL")


def test_a_prefect_server_restart_mid_rollout_leaves_one_production_version(
    scale_stack: dict[str, Any],
) -> None:
    """The Postgres-backed Prefect server is killed while a rollout's shadow phase waits for traffic, the phase's
    traffic arrives while it is down, and it is started again: the rollout goes on or fails closed, and at no
    moment are there two Production versions or none; the gateway ends serving the one Production version."""
    user, env, pg = scale_stack["user"], scale_stack["env"], scale_stack["pg"]
    prefix = env["TOLLGATE__SERVERS__POSTGRES_DB_PREFIX"]
    url = f"http://127.0.0.1:{env['TOLLGATE__SERVERS__GATEWAY_PORT']}"
    production_sql = (
        f"SELECT version FROM model_versions WHERE name = '{MODEL}' AND current_stage = 'Production' ORDER BY version"
    )
    if httpx.get(f"{url}/health").json()["champion"] is None:  # run alone: a champion for the rollout to shadow
        user.run("deploy", str(user.json("train", "--allow-dirty")["version"]), "--in-terminal")
    before = httpx.get(f"{url}/health").json()["champion"]
    assert [str(r[0]) for r in _query(pg, f"{prefix}_mlflow", production_sql)] == [before]
    traffic = period("none", rows=1000)
    new = user.json("train", "--allow-dirty")
    assert new["stage"] == "Staging", new
    version = str(new["version"])

    watched: list[list[str]] = []  # the Production versions, read from MLflow's database all along
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            watched.append([str(r[0]) for r in _query(pg, f"{prefix}_mlflow", production_sql)])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deploy = subprocess.Popen(
        [TOLLGATE, "deploy", version, "--in-terminal"],
        env={**env, "TOLLGATE__ROLLOUT__SHADOW_REQUESTS": "500", "TOLLGATE__ROLLOUT__CANARY_REQUESTS": "500"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # no traffic yet: the shadow phase waits for it; then the Prefect server dies and the traffic comes
        wait_for(lambda: httpx.get(f"{url}/health").json()["mode"] == "shadow", 180, "the shadow phase")
        _kill_group(StatePaths(scale_stack["home"]).pid_file("prefect-server"))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{env['TOLLGATE__SERVERS__PREFECT_PORT']}/api/health", timeout=2)
        _replay(url, traffic)
        user.run("up", "--no-deployments", timeout=400)
        _replay(url, traffic, until=deploy)
        out, _ = deploy.communicate(timeout=300)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait(30)
        done.set()
        watcher.join(30)
    print(f"tollgate deploy exit {deploy.returncode}:\n{out[-3000:]}")

    # never two Production versions, never none; the one at the end is the new version exactly when deploy succeeded
    assert watched and all(len(seen) == 1 for seen in watched), [s for s in watched if len(s) != 1][:5]
    final = watched[-1][0]
    assert final == (version if deploy.returncode == 0 else before), (final, deploy.returncode, out[-3000:])
    # the gateway serves it, with no challenger left behind (a failed rollout turns it off, or its lease lapses)
    wait_for(
        lambda: (lambda h: (h["champion"], h["mode"]))(httpx.get(f"{url}/health").json()) == (final, "off"),
        90,
        "the gateway serving the one Production version alone",
    )
    # the run's state on the restarted server: Completed when the rollout went on (a run that failed while the
    # server was still down may not have reached it: the terminal's exit code and Production above are what count)
    states = _query(
        pg,
        f"{prefix}_prefect",
        "SELECT fr.state_type FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
        f"WHERE f.name = 'deploy_model' AND fr.parameters->>'version' = '{version}'",
    )
    assert len(states) == 1 and (states[0][0] == "COMPLETED") == (deploy.returncode == 0), states
    if deploy.returncode == 0:
        assert "Traceback" not in out, out[-3000:]
