"""The path the tests/e2e/test_sklearn_*.py files run. A user's own table, end to end, through the CLI only: three datasets that ship inside scikit-learn (binary,
multiclass, regression), stored the awkward way users have them (tests/fixtures/sklearn_tables.py), each with
its own config. For each: `config check` -> `validate` -> `train` -> `deploy` -> held-out rows replayed through
the real gateway over HTTP -> `drift` over the replay window (prediction time, then event time) -> `backfill
--json` of the replayed rows' labels -> the live primary metric of every window equals scikit-learn's metric on
the same logged rows -> the retrain the schedule or a drift/backfill event starts (a flow run of the project's
retrain deployment, executed by the stack's worker) trains on the table plus the labelled production rows, gates
and rolls out its version while the replay goes on. The tables are stored as users have them: wine is a CSV file
with the cultivars' names as classes and ISO-text times, breast_cancer holds its 0/1 label as text, and every
answer names the original classes. No command may print a traceback. Each path's wall time is printed (and
recorded as a junit property `wall_s`); the path is slow because it is the whole loop, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import mean_squared_error, roc_auc_score

from tasks.validation import read_table
from tests.fixtures.sklearn_tables import Example, build_one
from tests.helpers import ROOT, open_in_chromium
from tollgate.app.stack import DeploymentTarget, apply_deployments
from tollgate.app.worker_runs import new_log_lines
from tollgate.config import TollgateConfig, load_config
from tollgate.objective import PRIMARY, Objective
from tollgate.paths import StatePaths
from tollgate.predlog import read_log
from tollgate.procs import free_port

TOLLGATE = str(Path(sys.executable).parent / "tollgate")  # the venv's entry point, as the README runs it
BATCH = 20
TOL = 1e-9


@dataclass
class User:
    """Runs `tollgate --config <the example's config> ...` as a subprocess in the example's project folder, the
    way a user would, and keeps every command's output and wall time."""

    config: Path
    env: dict[str, str]
    cwd: Path
    times: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, expect: int = 0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        start = time.perf_counter()
        proc = subprocess.run(
            [TOLLGATE, "--config", str(self.config), *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        step = " ".join(a for a in args[:2] if not a.startswith("/"))
        took = time.perf_counter() - start
        self.times[step] = self.times.get(step, 0.0) + took
        print(f"  tollgate {step}: {took:.1f} s, exit {proc.returncode}")
        said = f"$ tollgate {' '.join(args)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        assert "Traceback" not in proc.stdout + proc.stderr, said
        assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{said}"
        return proc


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of stdout that is a JSON object (commands print their result as one with --json)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            body: dict[str, Any] = json.loads(line)
            return body
    raise AssertionError(f"no JSON line in:\n{stdout}")


@contextmanager
def gateway(user: User, port: int, log_file: Path) -> Iterator[str]:
    """`tollgate --config <config> serve` on `port` (from TOLLGATE__SERVERS__GATEWAY_PORT) until the block ends."""
    with open(log_file, "w") as err:
        proc = subprocess.Popen(
            [TOLLGATE, "--config", str(user.config), "serve"],
            env=user.env,
            cwd=user.cwd,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, f"the gateway exited:\n{log_file.read_text()[-3000:]}"
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"the gateway did not start:\n{log_file.read_text()[-3000:]}"
                time.sleep(0.3)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _json_value(v: Any) -> Any:
    """A stored table value as a client would send it in JSON (missing -> null, datetimes as ISO 8601)."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v.item() if hasattr(v, "item") else v


def request_records(rows: pd.DataFrame, cfg: TollgateConfig) -> list[dict[str, Any]]:
    """The rows as /predict records: every schema column but the target, as stored (time included)."""
    cols = [c for c in cfg.dataset.columns if c != cfg.dataset.target]
    return [{c: _json_value(v) for c, v in rec.items()} for rec in rows[cols].to_dict("records")]


def check_answer(answer: dict[str, Any], cfg: TollgateConfig, version: str) -> None:
    """The gateway's answer carries what fits the task."""
    assert answer["model_version"] == version and answer["role"] == "champion", answer
    task = cfg.model.task
    if task != "regression":  # the class as the table holds it (the cultivar's name), of the same type
        values = cfg.dataset.columns[cfg.dataset.target].values or []
        assert answer["decision"] in values and type(answer["decision"]) is type(values[0]), answer
    if task == "binary":
        assert 0.0 <= answer["score"] <= 1.0, answer
    elif task == "multiclass":
        probs = answer["probabilities"]
        assert set(probs) == {str(c) for c in cfg.dataset.columns[cfg.dataset.target].values or []}, answer
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6), answer
        assert str(answer["decision"]) == max(probs, key=probs.__getitem__), answer
        assert math.isclose(answer["score"], max(probs.values()), abs_tol=1e-12), answer
    else:
        assert math.isfinite(answer["value"]) and answer["value"] == answer["score"] == answer["decision"], answer


def sklearn_primary(task: str, y: np.ndarray, rows: pd.DataFrame, objective: Objective) -> float | None:
    """scikit-learn's value of the task's primary metric on logged rows (None where it is undefined), from the
    labels as the table stores them: text '0'/'1' compared as text with the positive class; class names given to
    sklearn as they are, with the logged probabilities in the release's (sorted) class order."""
    if task == "binary":
        positive = pd.Series(y).astype(str).str.strip() == str(objective.labels[1])
        return float(roc_auc_score(positive, rows["score"].astype("float64"))) if positive.nunique() == 2 else None
    if task == "multiclass":
        classes = list(objective.labels)
        if set(y) != set(classes):
            return None
        proba = np.vstack([np.asarray(p, dtype="float64") for p in rows["proba"]])
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))
    if not len(y):
        return None
    return float(math.sqrt(mean_squared_error(y.astype("float64"), rows["score"].astype("float64"))))


async def _flow_run(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(run_id)


async def _remove_deployments(target: DeploymentTarget) -> None:
    """Delete the project's deployments so their schedules start nothing after this test."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for deployment in await client.read_deployments():
            if deployment.name.endswith(target.suffix):
                await client.delete_deployment(deployment.id)


@contextmanager
def project_deployments(cfg: TollgateConfig, ex: Example) -> Iterator[DeploymentTarget]:
    """The project's deployments applied, as `tollgate up` does, until the block ends; then deleted, so their
    schedules start nothing after this test."""
    target = DeploymentTarget(ex.config.resolve(), "dev", cfg.project.registered_model)
    apply_deployments(ROOT, cfg.servers, StatePaths.from_env(), target, say=lambda _m: None)
    try:
        yield target
    finally:
        asyncio.run(_remove_deployments(target))


def retrain_on_the_worker(
    target: DeploymentTarget, port: int, url: str, records: list[dict[str, Any]]
) -> tuple[Any, list[dict[str, Any]]]:
    """A run of the project's retrain deployment, as the weekly schedule or a drift/backfill event creates it,
    executed by the stack's worker (its gateway port passed as a job variable, as a worker host's environment
    would hold it). The held-out records are replayed while it runs: its rollout's shadow and canary phases judge
    live traffic. Returns the ended run and the answers."""
    from prefect.deployments import run_deployment

    answers: list[dict[str, Any]] = []
    run = run_deployment(
        f"retrain/{target.name('retrain')}",
        parameters={"reason": "tollgate.ground_truth.degraded", "config": str(target.config_path), "env": "dev"},
        job_variables={"env": {"TOLLGATE__SERVERS__GATEWAY_PORT": str(port)}},
        timeout=0,
    )
    deadline = time.monotonic() + 400
    with httpx.Client(timeout=30) as client:
        while not (run := asyncio.run(_flow_run(run.id))).state.is_final():  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"the retrain run is still {run.state_name} after 400 s"
            for i in range(0, len(records), BATCH):
                resp = client.post(f"{url}/predict", json={"records": records[i : i + BATCH]})
                assert resp.status_code == 200, resp.text[:2000]
                answers += resp.json()["predictions"]
            time.sleep(0.5)
    return run, answers


TASK_PLOTS = {
    "binary": {"roc", "precision_recall", "calibration"},
    "multiclass": {"confusion_matrix", "roc_per_class"},
    "regression": {"predicted_vs_actual", "residuals_vs_predicted", "residual_histogram"},
}


def plot_names(client: MlflowClient, run_id: str, folder: str = "plots") -> set[str]:
    """The PNG plots under a run's plots/ folder (and its phase subfolders), by path without plots/ and .png."""
    found = set()
    for item in client.list_artifacts(run_id, folder):
        if item.is_dir:
            found |= plot_names(client, run_id, item.path)
        elif item.path.endswith(".png"):
            found.add(item.path.removeprefix("plots/").removesuffix(".png"))
    return found


def assert_self_contained(page: str, live: bool) -> None:
    """A release report: every picture inline, no external URL in any attribute, the live section when expected."""
    assert page.startswith("<!doctype html>") and page.count('src="data:image/png;base64,') >= 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I), "an external reference"
    assert "<script" not in page.lower() and "could not be read" not in page
    assert ('alt="Live ' in page) == live, "the live section"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def user_path(name: str, live_stack: dict[str, str], tmp_path: Path, record_property: Any) -> None:
    """The whole path for one of the tables (tests/e2e/test_sklearn_<name>.py: one file each, so pytest-xdist's
    --dist loadfile runs the three on different workers)."""
    assert live_stack["mlflow"]
    started = time.perf_counter()
    ex = build_one(name, tmp_path / "example")
    cfg = load_config(ex.config, "dev").config  # with the session's server overrides, as the subprocesses see it
    task, primary = cfg.model.task, {"binary": "auc", "multiclass": "auc_ovr", "regression": "rmse"}[cfg.model.task]
    port = free_port()
    user = User(ex.config, {**os.environ, "TOLLGATE__SERVERS__GATEWAY_PORT": str(port)}, ex.project)
    model = cfg.project.registered_model

    # config check -> validate -> train
    user.run("config", "check")
    validated = user.run("validate", str(ex.table))
    assert "all passed" in validated.stdout, validated.stdout
    trained = last_json(user.run("train", "--data", str(ex.table), "--allow-dirty", "--json").stdout)
    version = str(trained["version"])
    assert trained["stage"] == "Staging" and trained["verdict"]["passed"], trained

    stored = read_table(ex.table)  # the project's reader: CSV or Parquet
    holdout = stored.tail(math.ceil(len(stored) * cfg.split.holdout_fraction))  # rows are in time order
    with gateway(user, port, tmp_path / "gateway.log") as url:
        # deploy in the command's own process (the first release: straight to approval, auto-approved, then the
        # smoke test). Not on the worker: the project's deployments carry the drift/backfill triggers, which
        # would start a retrain of their own during the steps below; the rollout on the worker is
        # tests/integration/test_rollout_controller.py's, and this path's retrain rolls out on the worker.
        user.run("deploy", version, "--in-terminal")
        assert httpx.get(f"{url}/health").json()["champion"] == version

        # replay the held-out rows through the gateway over HTTP
        records = request_records(holdout, cfg)
        t0 = time.time()
        answers: list[dict[str, Any]] = []
        with httpx.Client(timeout=30) as client:
            for i in range(0, len(records), BATCH):
                resp = client.post(f"{url}/predict", json={"records": records[i : i + BATCH]})
                assert resp.status_code == 200, resp.text[:2000]
                answers += resp.json()["predictions"]
        t1 = time.time() + 0.5
        assert len(answers) == len(records)
        for a in answers:
            check_answer(a, cfg, version)
        replayed = pd.DataFrame(
            {"prediction_id": [a["prediction_id"] for a in answers], "label": holdout[ex.target].to_numpy()}
        )

        # drift over the replay window: prediction time, then the records' own event time
        log = read_log(StatePaths.from_env().model_log(model))
        mine = log[(log["model_version"].astype(str) == version) & (log["role"] == "champion")]
        assert set(replayed["prediction_id"]) <= set(mine["prediction_id"])
        by_pred = user.run("drift", "--since", iso(t0), "--until", iso(t1), "--json")
        result = last_json(by_pred.stdout)
        assert result["rows"] == int(((mine["ts"] >= t0) & (mine["ts"] < t1)).sum()) == len(records), result
        assert len(by_pred.stdout.strip().splitlines()) == 1  # --json: the one object, nothing else
        assert ("no drift" in result["headline"]) != result["detected"]
        ours = mine[mine["prediction_id"].isin(set(replayed["prediction_id"]))]
        assert ours["event_ts"].notna().all(), "every replayed record carried its event time"
        e0, e1 = float(ours["event_ts"].min()), float(ours["event_ts"].max()) + 1.0
        by_event = user.run("drift", "--by", "event-time", "--since", iso(e0), "--until", iso(e1), "--json")
        in_window = int(((mine["event_ts"] >= e0) & (mine["event_ts"] < e1)).sum())
        assert last_json(by_event.stdout)["rows"] == in_window >= len(records)

        # backfill the replayed rows' labels (stored as the table has them), live metrics per 7-day event window
        labels = replayed.assign(label_time=iso(time.time() - 60))
        labels.to_csv(tmp_path / "labels.csv", index=False)
        backfilled = user.run(
            "backfill", str(tmp_path / "labels.csv"), "--json", "--by", "event-time", "--every", "7d"
        ).stdout

        # the automatic retrain, on the worker, on the table plus the labelled production rows
        began = time.perf_counter()
        with project_deployments(cfg, ex) as target:
            run, during = retrain_on_the_worker(target, port, url, records)
        user.times["retrain (worker)"] = time.perf_counter() - began
        said = "\n".join(new_log_lines(str(run.id), {}))  # the run's own log, shown when an assert below fails
        assert run.state_type.value == "COMPLETED", f"retrain run {run.state_name}: {run.state.message}\n{said}"
        health = httpx.get(f"{url}/health").json()
        new = str(health["champion"])
        assert int(new) > int(version), f"the retrained version was rolled out to Production: {health}\n{said}"
        served = [a for a in during if a["model_version"] == new]
        assert served, "the retrained version answered some of the replay (canary, then champion)"
        for a in served:
            assert a["decision"] in (cfg.dataset.columns[ex.target].values or [a["decision"]]), a

        # the whole table, without its target, scored in batch by the Production release: as the gateway answers
        raw = pd.read_csv(ex.table) if ex.table.suffix == ".csv" else pd.read_parquet(ex.table)
        unlabelled = tmp_path / f"unlabelled{ex.table.suffix}"
        if ex.table.suffix == ".csv":
            raw.drop(columns=[ex.target]).to_csv(unlabelled, index=False)
        else:
            raw.drop(columns=[ex.target]).to_parquet(unlabelled, index=False)
        batch = last_json(user.run("predict", str(unlabelled), str(tmp_path / "scored"), "--json").stdout)
        assert (batch["version"], batch["scored"], batch["rejected"]) == (new, len(raw), 0), batch
        assert batch["scoring"] == "onnx" == health["champion_scoring"], (batch, health)  # parity held on this table
        scored = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "scored").glob("part-*.parquet"))])
        sample = request_records(holdout.head(20), cfg)
        live = httpx.post(f"{url}/predict", json={"records": sample}, timeout=30).json()["predictions"]
        mine = (
            scored.assign(key=scored[cfg.dataset.id].astype(str)).set_index("key").loc[[a["entity_id"] for a in live]]
        )
        assert np.allclose(mine["score"], [a["score"] for a in live], rtol=0, atol=1e-9)
        if task == "regression":  # the value: BLAS may round a row differently in another batch
            assert np.allclose(mine["prediction"], [a["decision"] for a in live], rtol=0, atol=1e-9)
        else:
            assert mine["prediction"].tolist() == [a["decision"] for a in live]
    start = 0 if backfilled.startswith("{") else backfilled.index("\n{") + 1
    filled = json.loads(backfilled[start:])  # checked below to be all of stdout
    assert filled["ingested"]["changed"] == len(records), filled["ingested"]
    assert filled["verdict"]["status"] == "ok" and filled["verdict"]["metric"] == primary, filled["verdict"]

    # every window's live primary metric equals scikit-learn's on the same logged rows
    joined = ours.merge(replayed, on="prediction_id", validate="one_to_one")
    objective = Objective.from_config(cfg)
    windows = [
        r
        for r in filled["rows"]
        if r["scope"] == "overall" and r["role"] == "champion" and str(r["model_version"]) == version
    ]
    assert {r["window"] for r in windows} >= {"all"} and len(windows) >= 3, windows  # 'all' + a series
    for r in windows:
        t = joined["event_ts"]
        rows = joined if r["window"] == "all" else joined[(t >= r["start"]) & (t < r["end"])]
        assert r["n"] == len(rows), r
        expected = sklearn_primary(task, rows["label"].to_numpy(), rows, objective)
        if expected is None:
            assert r[primary] is None, r
        else:
            assert r[primary] is not None and abs(r[primary] - expected) <= TOL, (r, expected)
    overall = next(r for r in windows if r["window"] == "all")
    assert math.isclose(filled["verdict"]["value"], overall[primary], abs_tol=TOL), (filled["verdict"], overall)

    assert backfilled.lstrip().startswith("{"), f"backfill --json printed more than its JSON:\n{backfilled[:500]}"

    # the pictures (issue 35): each version's run lists its task type's plots, the retrained one (gated against
    # the first, then shadow and canary) the gate's forest plot and its phases' too; each report is one file
    client = MlflowClient(live_stack["mlflow"])
    for v, extra in ((version, set()), (new, {"gate_forest", "shadow/shadow_checks", "canary/canary_checks"})):
        run_id = client.get_model_version(model, v).run_id
        assert TASK_PLOTS[task] | extra <= plot_names(client, run_id), (v, plot_names(client, run_id))
        out = tmp_path / f"report-v{v}.html"
        said = user.run("report", v, "--out", str(out)).stdout
        assert said.startswith(f"wrote {out}"), said
        assert_self_contained(out.read_text(), live=v == version)
    # the estimated primary metric before labels (issue 36): the replayed window, from the log alone
    estimated = last_json(user.run("estimate", "--json").stdout)
    whole = next(
        r for r in estimated["rows"] if (r["model_version"], r["scope"], r["window"]) == (version, "overall", "all")
    )
    assert whole["metric"] == estimated["metric"] == PRIMARY[task], whole
    assert whole["estimate"] is not None and whole["low"] <= whole["estimate"] <= whole["high"], whole
    monitoring = client.get_experiment_by_name(f"{cfg.project.name}-monitoring")
    assert monitoring is not None
    for monitor, picture in (("ground_truth", "live_metric"), ("drift", "drift_per_feature")):
        query = f"tags.`tollgate.monitor` = '{monitor}' and tags.`tollgate.model` = '{model}'"
        runs = client.search_runs([monitoring.experiment_id], query)
        assert runs and all(picture in plot_names(client, r.info.run_id) for r in runs), (monitor, len(runs))
    shot = tmp_path / f"report-v{new}.png"
    open_in_chromium(tmp_path / f"report-v{new}.html", shot)  # the way a reviewer opens it: offline, no error
    assert shot.stat().st_size > 50_000, "the screenshot of the report is (nearly) empty"
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()
    wall = time.perf_counter() - started
    record_property("wall_s", round(wall, 1))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in user.times.items())
    print(f"\n[{name}] end-to-end path {wall:.1f} s wall: {steps}")
