"""Batch scoring (issue 13): `tollgate predict` against `mlflow models predict` on the same 1M rows and the same
registered version (the stack's Production v1), both as whole processes, in one run; then `tollgate predict` on
10M rows streamed from a Parquet file of 1M-row groups, its peak RSS measured in its own process.

mlflow reads CSV or JSON only: it gets the rows' feature columns as CSV (what its signature needs) and scores them
in one call; tollgate reads the same rows as Parquet with the id and timestamp, checks every row with the serving
rules, scores in chunks (ONNX Runtime when the version passed parity) and logs every row to the prediction log.
Also `onnx_parity_max_abs_diff`: v1's parity check at registration, on its holdout. Targets: `batch_predict_ratio` (rows/s over
mlflow's) >= 10, `batch_predict_10m_peak_rss_mb` < 1,500."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import BIN, BenchStack, Measured, measure, record_results

NEEDS_STACK = True
ROWS, BIG_ROWS = 1_000_000, 10_000_000
TARGETS = {"batch_predict_ratio": (10.0, ">="), "batch_predict_10m_peak_rss_mb": (1500.0, "<")}


def _check(name: str, got: Measured) -> Measured:
    if got.rc != 0:
        raise RuntimeError(f"`{name}` exited {got.rc}:\n{got.out[-2000:]}\n{got.err[-2000:]}")
    return got


def _phases(got: Measured) -> str:
    """Where a `tollgate predict --json` run spent its time (its own profile), the rest being the process's
    start (imports, the flow run) and end."""
    result = json.loads(got.out.strip().splitlines()[-1])
    phases = dict(result["phases"])
    inside = sum(phases.values())
    return (
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        + f"; process start and end {got.wall_s - inside:.1f}"
    )


def _table(st: BenchStack, rows: int, folder: Path) -> Path:
    """`rows` generated rows without the target, as Parquet (1M-row groups)."""
    raw, out = folder / f"raw-{rows}.parquet", folder / f"score-{rows}.parquet"
    env = {**st.child_env(), "TOLLGATE__GENERATION__ROWS": str(rows)}
    _check("tollgate data generate", measure([str(BIN / "tollgate"), "data", "generate", "--out", str(raw)], env))
    import pyarrow.parquet as pq

    target = st.ctx.config.dataset.target
    table = pq.read_table(raw)
    pq.write_table(table.drop_columns([target]), out, row_group_size=1_000_000)
    del table
    raw.unlink()
    return out


def main(st: BenchStack) -> None:
    features = st.ctx.config.features.all
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-batch-") as tmp:
        folder = Path(tmp)
        print(f"  generating {ROWS:,} rows ...", flush=True)
        small = _table(st, ROWS, folder)
        csv = folder / "features.csv"
        pd.read_parquet(small, columns=features).to_csv(csv, index=False)
        print(f"  tollgate predict, {ROWS:,} rows ...", flush=True)
        ours = _check(
            "tollgate predict",
            measure([str(BIN / "tollgate"), "predict", str(small), str(folder / "out-1m"), "--json"], st.child_env()),
        )
        print(f"    {ours.wall_s:.1f} s wall, peak {ours.peak_mb:.0f} MB; {_phases(ours)}", flush=True)
        print(f"  mlflow models predict, {ROWS:,} rows (v{st.champion}, --env-manager local) ...", flush=True)
        env = {**st.child_env(), "MLFLOW_TRACKING_URI": st.mlflow_url}
        env.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)  # as bench_serving: a user's default environment
        theirs = _check(
            "mlflow models predict",
            measure(
                [
                    str(BIN / "mlflow"),
                    "models",
                    "predict",
                    "-m",
                    f"models:/{st.model}/{st.champion}",
                    "-i",
                    str(csv),
                    "-t",
                    "csv",
                    "-o",
                    str(folder / "mlflow-out.json"),
                    "--env-manager",
                    "local",
                ],
                env,
            ),
        )
        print(f"    {theirs.wall_s:.1f} s wall, peak {theirs.peak_mb:.0f} MB", flush=True)
        small.unlink()
        csv.unlink()

        print(f"  generating {BIG_ROWS:,} rows ...", flush=True)
        big = _table(st, BIG_ROWS, folder)
        print(f"  tollgate predict, {BIG_ROWS:,} rows ...", flush=True)
        large = _check(
            "tollgate predict 10M",
            measure([str(BIN / "tollgate"), "predict", str(big), str(folder / "out-10m"), "--json"], st.child_env()),
        )
        print(f"    {large.wall_s:.1f} s wall, peak {large.peak_mb:.0f} MB; {_phases(large)}", flush=True)
    from mlflow import MlflowClient

    client = MlflowClient(st.mlflow_url)
    run = client.get_run(str(client.get_model_version(st.model, st.champion).run_id))
    figures = {
        "onnx_parity_max_abs_diff": run.data.metrics["onnx_parity_max_abs_diff"],  # the bundled model's holdout
        "batch_predict_rows_per_s": ROWS / ours.wall_s,
        "batch_predict_mlflow_rows_per_s": ROWS / theirs.wall_s,
        "batch_predict_ratio": theirs.wall_s / ours.wall_s,
        "batch_predict_peak_rss_mb": ours.peak_mb,
        "batch_predict_10m_rows_per_s": BIG_ROWS / large.wall_s,
        "batch_predict_10m_peak_rss_mb": large.peak_mb,
    }
    print(f"  ONNX parity of v{st.champion} on its holdout: max |diff| {figures['onnx_parity_max_abs_diff']:.2g}")
    print(
        f"  batch: tollgate {figures['batch_predict_rows_per_s']:,.0f} rows/s vs mlflow models predict "
        f"{figures['batch_predict_mlflow_rows_per_s']:,.0f} rows/s: {figures['batch_predict_ratio']:.2f}x; "
        f"10M rows {figures['batch_predict_10m_rows_per_s']:,.0f} rows/s, peak {large.peak_mb:.0f} MB"
    )
    for name, (target, way) in TARGETS.items():
        met = figures[name] >= target if way == ">=" else figures[name] < target
        print(f"  {name}: {figures[name]:.2f} {'meets' if met else 'MISSES'} target {way} {target}")
    record_results(figures)
