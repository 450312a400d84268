"""A user's own table, end to end, through the CLI only: three datasets that ship inside scikit-learn (binary,
multiclass, regression), stored the awkward way users have them (tests/fixtures/sklearn_tables.py), each with
its own config. For each: `config check` -> `validate` -> `train` -> `deploy` -> held-out rows replayed through
the real gateway over HTTP -> `drift` over the replay window (prediction time, then event time) -> `backfill
--json` of the replayed rows' labels -> the live primary metric of every window equals scikit-learn's metric on
the same logged rows. No command may print a traceback. Each path's wall time is printed (and recorded as a
junit property `wall_s`)."""

from __future__ import annotations

import json
import math
import os
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
import pytest
from sklearn.metrics import mean_squared_error, roc_auc_score

from tests.fixtures.sklearn_tables import NAMES, Example, build
from tollgate.config import TollgateConfig, load_config
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
    if task == "binary":
        assert 0.0 <= answer["score"] <= 1.0 and answer["decision"] in (0, 1), answer
    elif task == "multiclass":
        probs = answer["probabilities"]
        assert set(probs) == {str(c) for c in cfg.dataset.columns[cfg.dataset.target].values or []}, answer
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6), answer
        assert str(answer["decision"]) == max(probs, key=probs.__getitem__), answer
        assert math.isclose(answer["score"], max(probs.values()), abs_tol=1e-12), answer
    else:
        assert math.isfinite(answer["value"]) and answer["value"] == answer["score"] == answer["decision"], answer


def sklearn_primary(task: str, y: np.ndarray, rows: pd.DataFrame, classes: list[int]) -> float | None:
    """scikit-learn's value of the task's primary metric on logged rows (None where it is undefined)."""
    if task == "binary":
        y = y.astype("int64")
        return float(roc_auc_score(y, rows["score"].astype("float64"))) if len(set(y)) == 2 else None
    if task == "multiclass":
        y = y.astype("int64")
        if set(y) != set(classes):
            return None
        proba = np.vstack([np.asarray(p, dtype="float64") for p in rows["proba"]])
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))
    if not len(y):
        return None
    return float(math.sqrt(mean_squared_error(y.astype("float64"), rows["score"].astype("float64"))))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Example]:
    return build(tmp_path_factory.mktemp("sklearn-examples"))


@pytest.mark.parametrize("name", NAMES)
def test_user_table_from_config_check_to_monitored_production(
    name: str,
    live_stack: dict[str, str],
    examples: dict[str, Example],
    tmp_path: Path,
    record_property: Any,
) -> None:
    started = time.perf_counter()
    ex = examples[name]
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

    stored = pd.read_parquet(ex.table)
    holdout = stored.tail(math.ceil(len(stored) * cfg.split.holdout_fraction))  # rows are in time order
    with gateway(user, port, tmp_path / "gateway.log") as url:
        # deploy (the first release: straight to approval, auto-approved, then the smoke test)
        user.run("deploy", version)
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
    start = 0 if backfilled.startswith("{") else backfilled.index("\n{") + 1
    filled = json.loads(backfilled[start:])  # checked below to be all of stdout
    assert filled["ingested"]["changed"] == len(records), filled["ingested"]
    assert filled["verdict"]["status"] == "ok" and filled["verdict"]["metric"] == primary, filled["verdict"]

    # every window's live primary metric equals scikit-learn's on the same logged rows
    joined = ours.merge(replayed, on="prediction_id", validate="one_to_one")
    classes = [int(c) for c in cfg.dataset.columns[ex.target].values or []]
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
        expected = sklearn_primary(task, rows["label"].to_numpy(), rows, classes)
        if expected is None:
            assert r[primary] is None, r
        else:
            assert r[primary] is not None and abs(r[primary] - expected) <= TOL, (r, expected)
    overall = next(r for r in windows if r["window"] == "all")
    assert math.isclose(filled["verdict"]["value"], overall[primary], abs_tol=TOL), (filled["verdict"], overall)

    assert backfilled.lstrip().startswith("{"), f"backfill --json printed more than its JSON:\n{backfilled[:500]}"
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()
    wall = time.perf_counter() - started
    record_property("wall_s", round(wall, 1))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in user.times.items())
    print(f"\n[{name}] end-to-end path {wall:.1f} s wall: {steps}")
