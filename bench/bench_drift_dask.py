"""Drift check fanned out over Dask (issue 14): the same 10M x 20 prediction log (Parquet parts of 250k rows, the
gateway's log columns) checked in process and on a Dask LocalCluster of 2 workers (prefect-dask, a real Prefect
server), in one run; then 30M rows on the same cluster size, with each worker's peak RSS (its kernel high-water
mark, VmHWM, read until it exits).

Keys: drift_dask_equal (1 when every count, statistic, verdict and the report sample are identical),
drift_dask_overhead (Dask time / in-process time on 10M; cluster start included), drift_30m_worker_peak_rss_mb,
drift_scaling_30m_over_10m (Dask 30M time / Dask 10M time), and the seconds behind them."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from bench.bench_drift import COLUMNS, SHIFTED, _frame
from bench.common import project_config, record_results
from tollgate.procs import peak_rss_mb

NEEDS_STACK = True  # the Dask path runs as a Prefect subflow: the throw-away stack's Prefect server records it
PART_ROWS = 250_000
PARTS_10M, PARTS_30M = 40, 120
T0 = 1_767_225_600.0


def _log_part(rng: np.random.Generator, k: int) -> pd.DataFrame:
    """One prediction-log part as the gateway writes it: base columns plus `f.<feature>` columns."""
    from tollgate.predlog import BASE_COLUMNS

    data = _frame(rng, PART_ROWS, shifted=True)
    ids = pd.Series(np.arange(k * PART_ROWS, (k + 1) * PART_ROWS)).astype(str).radd("p")
    base = {
        "prediction_id": ids,
        "request_id": ids,
        "ts": T0 + np.arange(k * PART_ROWS, (k + 1) * PART_ROWS) * 0.01,
        "entity_id": ids,
        "model_version": "1",
        "role": "champion",
        "score": data["score"],
        "decision": (data["score"] >= 0.5).astype("int64"),
        "latency_ms": 1.0,
        "proba": None,
        "event_ts": np.nan,
    }
    frame = pd.DataFrame({c: base[c] for c in BASE_COLUMNS})
    return pd.concat([frame, data[COLUMNS].add_prefix("f.")], axis=1)


def _write_child(folder: str, first: int, last: int) -> None:
    """Child process: parts first..last-1 (each from its own seed, so any split writes the same bytes)."""
    from tollgate.predlog import write_part

    for k in range(first, last):
        write_part(_log_part(np.random.default_rng([3, k]), k), Path(folder) / f"seg-{k:05d}.parquet")


def _plan(folder: Path, parts: int) -> Any:
    from tasks.drift import DriftPlan, DriftScope, LogWindow
    from tasks.profiling import reference_profile
    from tollgate.config import FeaturesConfig

    cfg = project_config()
    features = FeaturesConfig(numeric=COLUMNS)
    mon = cfg.monitoring.model_copy(update={"numeric_method": "psi", "psi_threshold": 0.2})
    reference = _frame(np.random.default_rng(1), 1_000_000, shifted=False)
    profile = reference_profile(reference, features, reference["score"].to_numpy(), mon.reference_bins)
    dataset = cfg.dataset.model_copy(update={"segments": []})
    scope = DriftScope("1", profile, dataset, mon, LogWindow(None, None))
    paths = [str(p) for p in sorted(folder.glob("seg-*.parquet"))[:parts]]
    return DriftPlan(scope, paths, None, cfg.compute.chunk_rows)


class WorkerPeaks:
    """Polls the kernel's peak RSS (VmHWM) of the Dask worker processes below this one (multiprocessing spawns
    them; the stack's servers are not counted) until stopped."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            for child in me.children(recursive=True):
                try:
                    if "spawn_main" not in " ".join(child.cmdline()):
                        continue
                except psutil.Error:
                    continue
                peak = peak_rss_mb(child.pid)
                if peak is not None:
                    self.peaks[child.pid] = max(self.peaks.get(child.pid, 0.0), peak)


def _run(plan: Any, address: str) -> tuple[float, Any, dict[int, float]]:
    from flows.fan_out import over_parts
    from tasks.drift import drift_of_parts, merge_partials

    with WorkerPeaks() as peaks:
        start = time.perf_counter()
        per_task = project_config().compute.parts_per_task
        result = merge_partials(over_parts(address, drift_of_parts, len(plan.parts), per_task, plan=plan), plan.scope)
        took = time.perf_counter() - start
    return took, result, peaks.peaks


def _same(a: Any, b: Any) -> bool:
    (ca, sa), (cb, sb) = a, b
    return (
        ca.summary() == cb.summary()
        and ca.overall.rows_table() == cb.overall.rows_table()
        and sa.reset_index(drop=True).equals(sb.reset_index(drop=True))
    )


def main(stack: object = None) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TOLLGATE_BENCH_TMP")) as tmp:
        folder = Path(tmp)
        print(f"writing {PARTS_30M * PART_ROWS:,} log rows as {PARTS_30M} Parquet parts ...", flush=True)
        step = PARTS_30M // 2
        writers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from bench.bench_drift_dask import _write_child; _write_child({tmp!r}, {a}, {a + step})",
                ]
            )
            for a in (0, step)
        ]
        if any(w.wait() for w in writers):
            raise RuntimeError("writing the log parts failed")
        plan10, plan30 = _plan(folder, PARTS_10M), _plan(folder, PARTS_30M)
        print("10M rows in process ...", flush=True)
        here_s, here, _ = _run(plan10, "")
        print(f"  {here_s:.1f} s; drifted {sorted(here[0].overall.drifted)}", flush=True)
        print("10M rows on Dask local:2 (cluster start included) ...", flush=True)
        dask10_s, there, _ = _run(plan10, "local:2")
        print(f"  {dask10_s:.1f} s", flush=True)
        print("30M rows on Dask local:2 ...", flush=True)
        dask30_s, big, peaks = _run(plan30, "local:2")
        print(f"  {dask30_s:.1f} s; rows {big[0].overall.rows:,}", flush=True)
    equal = _same(here, there)
    worker_peak = max(peaks.values()) if peaks else float("nan")
    figures = {
        "drift_dask_equal": 1.0 if equal else 0.0,
        "drift_dask_overhead": dask10_s / here_s,
        "drift_30m_worker_peak_rss_mb": worker_peak,
        "drift_scaling_30m_over_10m": dask30_s / dask10_s,
        "drift_inprocess_10m_s": here_s,
        "drift_dask_10m_s": dask10_s,
        "drift_dask_30m_s": dask30_s,
    }
    print("\ndrift on Dask (PSI, threshold 0.2; parts of 250k rows; compute.chunk_rows as configured)")
    print(
        f"  10M in process {here_s:.1f} s, on Dask local:2 {dask10_s:.1f} s: overhead {figures['drift_dask_overhead']:.2f} (target <= 1.3)"
    )
    print(
        f"  identical results: {'yes' if equal else 'NO'}; drifted {sorted(there[0].overall.drifted)} (truth {sorted(SHIFTED)})"
    )
    print(
        f"  30M on Dask local:2 {dask30_s:.1f} s: {figures['drift_scaling_30m_over_10m']:.2f}x the 10M time (target <= 3.3)"
    )
    print(f"  worker peak RSS {worker_peak:.0f} MB over {len(peaks)} worker process(es) (target < 1000)")
    record_results(figures)
