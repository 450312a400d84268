"""Training and validation at 1.2M rows (the bundled generator at 100x): whole-process wall time and peak RSS
of `tollgate validate` and of `tollgate train` on the benchmark stack, where a Production version trained on
the bundled data is the gate's baseline (a retrain, the usual case). Baseline: the model's own fit + predict
seconds inside the same `tollgate train` run (its `timing_fit_s` / `timing_predict_s`); target overhead ratio
<= 2.0, peak <= 2,500 MB, validation <= 15 s. The fit runs with the config's `model.threads` (default 1), as a
user's `tollgate train` does. bench_training_10m runs the same at 10M rows."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BIN, BenchStack, Measured, measure, record_results

NEEDS_STACK = True
ROWS = 1_200_000
TARGETS = {
    "train_1m2_overhead_ratio": 2.0,
    "train_1m2_peak_rss_mb": 2500.0,
    "validate_1m2_wall_s": 15.0,
    "report_seconds_1m2": 5.0,  # "a few seconds per version" (issue 35)
}


def _run(st: BenchStack, *args: str, env: dict[str, str] | None = None) -> Measured:
    return measure([str(BIN / "tollgate"), *args], env=env or st.child_env())


def _check(name: str, got: Measured, ok_codes: tuple[int, ...] = (0,)) -> None:
    if got.rc not in ok_codes:
        raise RuntimeError(f"`tollgate {name}` exited {got.rc}:\n{got.out[-2000:]}\n{got.err[-2000:]}")


def measure_size(st: BenchStack, rows: int, key: str, targets: dict[str, float]) -> dict[str, float]:
    """Generate `rows` rows, then `tollgate validate` and `tollgate train` on them as whole processes; records
    `validate_<key>_wall_s`, `validate_<key>_peak_rss_mb`, `train_<key>_wall_s`, `train_<key>_fit_predict_s`,
    `train_<key>_overhead_ratio`, `train_<key>_peak_rss_mb` and checks them against `targets`."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="tollgate-bench-train-") as tmp:
        data = Path(tmp) / "big.parquet"
        print(f"  generating {rows:,} rows ...", flush=True)
        env = {**st.child_env(), "TOLLGATE__GENERATION__ROWS": str(rows)}
        _check("data generate", _run(st, "data", "generate", "--out", str(data), env=env))
        val = _run(st, "validate", str(data))
        _check("validate", val)
        print(f"  tollgate validate: {val.wall_s:.1f} s wall, peak {val.peak_mb:.0f} MB", flush=True)
        print("  tollgate train ...", flush=True)
        train = _run(st, "train", "--data", str(data), "--allow-dirty")
        _check("train", train, ok_codes=(0, 1))  # 1: registered and rejected by the gate; still a whole run
    client = MlflowClient(st.mlflow_url)
    experiment = client.get_experiment_by_name(st.ctx.config.project.name)
    if experiment is None:
        raise RuntimeError(f"no MLflow experiment {st.ctx.config.project.name} on the benchmark stack")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    metrics = run.data.metrics
    fit_predict = metrics["timing_fit_s"] + metrics["timing_predict_s"]
    steps = {k[len("timing_") : -2]: v for k, v in metrics.items() if k.startswith("timing_")}
    report_s = _report_seconds(st, client, run.info.run_id)
    figures = {
        # issue 35: what a version's pictures cost at this size: the training run's plots step (draw + log to
        # MLflow, timing_plots_s) plus building its release report (gather from MLflow + render)
        f"report_seconds_{key}": steps.get("plots", float("nan")) + report_s,
        f"plots_{key}_s": steps.get("plots", float("nan")),
        f"report_build_{key}_s": report_s,
        f"validate_{key}_wall_s": val.wall_s,
        f"validate_{key}_peak_rss_mb": val.peak_mb,
        f"train_{key}_wall_s": train.wall_s,
        f"train_{key}_fit_predict_s": fit_predict,
        f"train_{key}_overhead_ratio": train.wall_s / fit_predict,
        f"train_{key}_peak_rss_mb": train.peak_mb,
    }
    print(
        f"  tollgate train (exit {train.rc}): {train.wall_s:.1f} s wall, fit + predict {fit_predict:.1f} s, "
        f"ratio {figures[f'train_{key}_overhead_ratio']:.2f}, peak {train.peak_mb:.0f} MB"
    )
    print("  steps: " + json.dumps({k: round(v, 1) for k, v in steps.items()}))
    print(
        f"  pictures: plots step {figures[f'plots_{key}_s']:.2f} s + release report {report_s:.2f} s = "
        f"report_seconds_{key} {figures[f'report_seconds_{key}']:.2f} s"
    )
    for name, target in targets.items():
        print(f"  {name}: {figures[name]:.2f} {'meets' if figures[name] <= target else 'MISSES'} target <= {target}")
    record_results(figures)
    return figures


def _report_seconds(st: BenchStack, client: Any, run_id: str) -> float:
    """Seconds to build the release report of the version trained by `run_id` (in this process)."""
    from tasks.release_report import build_report

    (version,) = client.search_model_versions(f"run_id='{run_id}'")
    start = time.perf_counter()
    page = build_report(st.ctx, str(version.version))
    took = time.perf_counter() - start
    print(f"  release report of v{version.version}: {len(page) // 1024} KiB in {took:.2f} s", flush=True)
    return took


def main(st: BenchStack) -> None:
    measure_size(st, ROWS, "1m2", TARGETS)
