"""`tollgate predict` (batch_inference) on a real stack: a binary release trained by the real training flow and
deployed to Production, then tables scored by the CLI as a user runs it: Parquet and CSV, rows failing the
serving rules, the reject limit, a resumed run, a refused folder, and the rows in the drift check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from flows.deploy import deploy_model
from tests.helpers import ROOT
from tests.integration.live import records, running_gateway, train
from tollgate.predlog import read_log

ROWS, CHUNK = 1_000, 300  # four chunks: 300, 300, 300, 100


@pytest.fixture(scope="module")
def served(live_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """v1 of the bundled binary model in Production behind a real gateway, and an unlabelled table to score."""
    with running_gateway(live_stack, "batch-binary") as gw:
        ctx = gw["ctx"].with_config(rollout={"auto_approve": True})
        result = train(ctx)
        deploy_model(version=result.version, config=ctx)
        folder = tmp_path_factory.mktemp("batch")
        table = pd.read_parquet(ROOT / "data" / "snapshot.parquet").iloc[:ROWS].drop(columns=["churned"])
        table.to_parquet(folder / "customers.parquet", index=False)
        yield {**gw, "version": result.version, "folder": folder, "table": table}


def _predict(served: dict[str, Any], *words: str, **env: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "TOLLGATE__PROJECT__REGISTERED_MODEL": served["name"], **env}
    argv = [sys.executable, "-m", "tollgate.app.cli", "predict", *words]
    return subprocess.run(argv, env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _scored(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))], ignore_index=True)


def test_a_parquet_and_a_csv_table_score_as_the_gateway_answers(served: dict[str, Any]) -> None:
    folder = served["folder"]
    out = folder / "out-parquet"
    done = _predict(served, str(folder / "customers.parquet"), str(out), "--chunk-rows", str(CHUNK))
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"scored {ROWS:,} of {ROWS:,} rows" in done.stdout and "rows/s" in done.stdout + done.stderr
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{i:05d}.parquet" for i in range(4)]
    scored = _scored(out)
    assert list(scored.columns) == ["customer_id", "score", "prediction", "model_version", "prediction_id"]
    assert scored["customer_id"].tolist() == served["table"]["customer_id"].tolist()
    assert set(scored["model_version"]) == {served["version"]} and scored["prediction_id"].is_unique
    # the gateway's answers for the same rows: the same release, the same scoring path
    sent = records(25, offset=400)
    answers = httpx.post(f"{served['url']}/predict", json={"records": sent}, timeout=30).json()["predictions"]
    mine = scored.set_index("customer_id").loc[[r["customer_id"] for r in sent]]
    assert np.allclose(mine["score"], [a["score"] for a in answers], rtol=0, atol=1e-12)
    assert mine["prediction"].tolist() == [a["decision"] for a in answers]
    # every scored row is in the model's prediction log as role batch
    log = read_log(served["ctx"].paths.model_log(served["name"]))
    batch = log[log["prediction_id"].isin(scored["prediction_id"])]
    assert len(batch) == ROWS and set(batch["role"]) == {"batch"}
    assert batch["event_ts"].notna().all() and "f.region" in batch.columns

    csv = folder / "customers.csv"
    served["table"].to_csv(csv, index=False)
    as_csv = _predict(served, str(csv), str(folder / "out-csv"), "--chunk-rows", str(CHUNK), "--json")
    assert as_csv.returncode == 0, as_csv.stderr
    assert json.loads(as_csv.stdout)["scored"] == ROWS
    again = _scored(folder / "out-csv")
    assert np.allclose(again["score"], scored["score"], rtol=0, atol=1e-12)


def test_rows_failing_the_serving_rules_are_named_and_a_chunk_over_the_limit_fails(served: dict[str, Any]) -> None:
    folder, table = served["folder"], served["table"].copy()
    table.loc[5, "region"] = "mars"
    table.loc[310, "tenure_months"] = -4
    table.loc[620, "customer_id"] = ""
    dirty = folder / "dirty.parquet"
    table.to_parquet(dirty, index=False)
    out = folder / "out-dirty"
    done = _predict(served, str(dirty), str(out), "--chunk-rows", str(CHUNK))  # 1 bad row per 300: under 1%
    assert done.returncode == 0, done.stderr
    assert "3 rows failed the serving rules" in done.stdout
    rejects = pd.concat([pd.read_csv(p) for p in sorted(out.glob("rejects-*.csv"))], ignore_index=True)
    assert list(zip(rejects["row"], rejects["field"], strict=True)) == [
        (5, "region"),
        (310, "tenure_months"),
        (620, "customer_id"),
    ]
    assert "'mars' is not one of" in rejects["error"][0]
    scored = _scored(out)
    assert len(scored) == ROWS - 3 and not set(scored["customer_id"]) & {table.loc[5, "customer_id"], ""}

    table.loc[300:310, "plan"] = "platinum"  # 11 bad rows in the second chunk: 3.7%
    worse = folder / "worse.parquet"
    table.to_parquet(worse, index=False)
    out = folder / "out-worse"
    refused = _predict(served, str(worse), str(out), "--chunk-rows", str(CHUNK))
    assert refused.returncode == 1, refused.stderr
    assert "over batch.max_reject_share 1.0%" in refused.stderr and "rejects-00001.csv" in refused.stderr
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet"]  # the chunk before it
    lenient = _predict(
        served, str(worse), str(out), "--chunk-rows", str(CHUNK), TOLLGATE__BATCH__MAX_REJECT_SHARE="0.05"
    )
    assert lenient.returncode == 0, lenient.stderr
    assert "1 parts were done by an earlier run" in lenient.stdout


def test_a_rerun_after_a_crash_finishes_with_the_same_bytes(served: dict[str, Any]) -> None:
    folder = served["folder"]
    whole, resumed = folder / "out-whole", folder / "out-resumed"
    assert _predict(served, str(folder / "customers.parquet"), str(whole), "--chunk-rows", str(CHUNK)).returncode == 0
    # the state a crash leaves after two parts: the manifest, two parts, a half-written third
    resumed.mkdir()
    for name in ("manifest.json", "part-00000.parquet", "part-00001.parquet"):
        shutil.copy(whole / name, resumed / name)
    (resumed / "part-00002.parquet.tmp").write_bytes(b"half a part")
    done = _predict(served, str(folder / "customers.parquet"), str(resumed), "--chunk-rows", str(CHUNK))
    assert done.returncode == 0, done.stderr
    assert "2 parts were done by an earlier run" in done.stdout
    files = sorted(p.name for p in whole.iterdir())
    assert files == sorted(p.name for p in resumed.iterdir())
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    # another chunking (or input, or version) into the same folder is refused, naming what differs
    other = _predict(served, str(folder / "customers.parquet"), str(resumed), "--chunk-rows", "500")
    assert other.returncode == 2 and "differs in chunk_rows" in other.stderr, other.stderr


def test_a_parquet_table_fanned_out_on_dask_leaves_the_same_bytes(served: dict[str, Any]) -> None:
    """compute.dask_address local:2, one chunk per task: the four chunks are scored by Dask tasks that each read
    only their rows, and the OUTPUT folder is byte for byte the in-process run's; a chunk over the reject limit
    fails the run as it does in process, naming its rejects file."""
    folder = served["folder"]
    dask = {
        "TOLLGATE__COMPUTE__DASK_ADDRESS": "local:2",
        "TOLLGATE__COMPUTE__PARTS_PER_TASK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",  # the progress lines (tests run Prefect at WARNING)
    }
    here, there = folder / "out-here", folder / "out-dask"
    assert _predict(served, str(folder / "customers.parquet"), str(here), "--chunk-rows", str(CHUNK)).returncode == 0
    done = _predict(served, str(folder / "customers.parquet"), str(there), "--chunk-rows", str(CHUNK), **dask)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "4 chunks in 4 Dask task(s) at local:2" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"scored {ROWS:,} of {ROWS:,} rows" in done.stdout
    files = sorted(p.name for p in here.iterdir())
    assert files == sorted(p.name for p in there.iterdir()) and "part-00003.parquet" in files
    for name in files:
        assert (here / name).read_bytes() == (there / name).read_bytes(), name

    # a CSV cannot be split without reading it: scored in order here, and the run says so
    csv = folder / "customers-dask.csv"
    served["table"].to_csv(csv, index=False)
    as_csv = _predict(served, str(csv), str(folder / "out-dask-csv"), "--chunk-rows", str(CHUNK), **dask)
    assert as_csv.returncode == 0, as_csv.stderr[-4000:]
    assert "here, not on Dask at local:2: a CSV is read in order" in as_csv.stdout + as_csv.stderr
    assert np.allclose(_scored(folder / "out-dask-csv")["score"], _scored(there)["score"], rtol=0, atol=1e-12)

    table = served["table"].copy()
    table.loc[300:310, "plan"] = "platinum"  # 11 bad rows in the second chunk: over 1%
    worse = folder / "worse-dask.parquet"
    table.to_parquet(worse, index=False)
    refused = _predict(served, str(worse), str(folder / "out-worse-dask"), "--chunk-rows", str(CHUNK), **dask)
    assert refused.returncode == 1, refused.stderr[-4000:]
    assert "over batch.max_reject_share 1.0%" in refused.stderr and "rejects-00001.csv" in refused.stderr
    assert not (folder / "out-worse-dask" / "part-00001.parquet").exists()
    assert not (folder / "out-worse-dask" / "summary.json").exists()


def test_batch_rows_are_in_the_drift_check(served: dict[str, Any]) -> None:
    from flows.drift import drift_check

    ctx = served["ctx"]
    result = drift_check(window_hours=1.0, config=ctx)
    log = read_log(ctx.paths.model_log(served["name"]))
    batch = log[(log["role"] == "batch") & (log["model_version"] == served["version"])]
    assert len(batch) >= ROWS
    assert result["rows"] >= len(batch)


def test_predict_without_a_production_version_says_what_to_do(served: dict[str, Any]) -> None:
    done = _predict(
        served,
        str(served["folder"] / "customers.parquet"),
        str(served["folder"] / "out-none"),
        TOLLGATE__PROJECT__REGISTERED_MODEL="batch-nothing-deployed",
    )
    assert done.returncode == 2
    assert "no Production version the promotion ledger proves" in done.stderr and "--version" in done.stderr
    assert not (served["folder"] / "out-none").exists()


def test_the_release_scores_compiled_and_falls_back_to_sklearn_naming_why(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parity held at registration: the gateway, /metrics and batch scoring use the ONNX form. A version whose
    parity failed (a tolerance no model meets) is stored without it and scores with sklearn, saying why; so does
    any version with serving.compiled_scoring off."""
    from tollgate import compiled
    from tollgate.release import load_release

    health = httpx.get(f"{served['url']}/health", timeout=10).json()
    assert health["champion_scoring"] == "onnx", health
    metrics = httpx.get(f"{served['url']}/metrics", timeout=10).text
    assert 'champion_scoring="onnx"' in metrics
    folder = served["folder"]
    done = _predict(served, str(folder / "customers.parquet"), str(folder / "out-onnx"), "--json")
    assert json.loads(done.stdout)["scoring"] == "onnx", done.stderr

    ctx = served["ctx"]
    monkeypatch.setattr(compiled, "PARITY_TOLERANCE", -1.0)
    v2 = train(ctx).version
    release = load_release(ctx.config, ctx.registry, version=v2)
    report = release.file("compiled.json")
    assert report["ok"] is False and "rows differ" in report["reason"] and report["scoring"] == "sklearn"
    assert "release/model.onnx" not in release.trusted and "sklearn pipeline scores" in release.file("model_card.md")
    fallback = _predict(served, str(folder / "customers.parquet"), str(folder / "out-v2"), "--version", v2, "--json")
    scoring = json.loads(fallback.stdout)["scoring"]
    assert scoring.startswith("sklearn: ") and "rows differ" in scoring, scoring
    off = _predict(
        served,
        str(folder / "customers.parquet"),
        str(folder / "out-off"),
        "--json",
        TOLLGATE__SERVING__COMPILED_SCORING="false",
    )
    assert json.loads(off.stdout)["scoring"] == "sklearn: serving.compiled_scoring is off"
    # the same scores either way (parity)
    assert np.allclose(_scored(folder / "out-off")["score"], _scored(folder / "out-onnx")["score"], atol=1e-9)
