"""Drift check cost: Tollgate's streaming statistics (against a precomputed reference profile) vs Evidently's
DataDriftPreset with the same method (PSI) and thresholds, on the same 1M x 20 data in one run; then 10M rows
streamed from Parquet parts in a separate process, reporting its peak memory (target < 2 GB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import OUT, project_config, record_results
from tollgate.procs import peak_rss_mb

NEEDS_STACK = False
COLUMNS = [f"x{i:02d}" for i in range(20)]
SHIFTED = {"x00": 0.6, "x03": 0.4, "x07": 0.8, "x11": 0.5, "x15": 1.0, "x19": 0.3}  # mean shift in sd units
ROWS = 1_000_000
STREAM_ROWS = 10_000_000
CHUNK = 250_000


def _frame(rng: np.random.Generator, n: int, shifted: bool) -> pd.DataFrame:
    data = {c: rng.gamma(2.0 + i % 5, 1.0, n) for i, c in enumerate(COLUMNS)}
    if shifted:
        for c, k in SHIFTED.items():
            data[c] = data[c] + k * data[c].std()
    frame = pd.DataFrame(data)
    frame["score"] = 1 / (1 + np.exp(-(frame["x00"] - frame["x07"]) / 3))
    return frame


def _features() -> object:
    from tollgate.config import FeaturesConfig

    return FeaturesConfig(numeric=COLUMNS)


def _monitoring() -> object:
    return project_config().monitoring.model_copy(update={"numeric_method": "psi", "psi_threshold": 0.2})


def _write_child(folder: str) -> None:
    """Child process: write STREAM_ROWS drifted rows, chunk by chunk, as Parquet parts."""
    rng = np.random.default_rng(2)
    for i in range(STREAM_ROWS // CHUNK):
        _frame(rng, CHUNK, shifted=True).to_parquet(Path(folder) / f"part-{i:04d}.parquet", index=False)


def _stream_child(folder: str, profile_path: str) -> None:
    """Child process: the streamed drift check over the Parquet parts; its peak RSS is the figure reported."""
    from tasks.drift import DriftAccumulator

    paths = sorted(Path(folder).glob("part-*.parquet"))
    profile = json.loads(Path(profile_path).read_text())
    start = time.perf_counter()
    acc = DriftAccumulator(profile, prefix="")
    for path in paths:
        acc.add(pd.read_parquet(path))
    report = acc.report("bench", _monitoring())  # type: ignore[arg-type]
    took = time.perf_counter() - start
    # The kernel's high-water mark of this process's own memory. Not ru_maxrss: Linux carries it across exec, so
    # a child started (vfork + exec) by this benchmark's 2.3 GB parent reported the parent's peak as its own.
    peak_mb = peak_rss_mb(os.getpid())
    print(json.dumps({"rows": acc.rows, "seconds": took, "peak_mb": peak_mb, "drifted": sorted(report.drifted)}))


def main(stack: object = None) -> None:
    from tasks.drift import DriftAccumulator
    from tasks.profiling import reference_profile
    from tasks.reporting import evidently_drift, evidently_verdicts

    rng = np.random.default_rng(1)
    print(f"generating reference and current data, {ROWS:,} x {len(COLUMNS)} each ...", flush=True)
    reference, current = _frame(rng, ROWS, False), _frame(rng, ROWS, True)
    features, mon = _features(), _monitoring()
    start = time.perf_counter()
    profile = reference_profile(reference, features, reference["score"].to_numpy(), mon.reference_bins)  # type: ignore[arg-type, attr-defined]
    profile_s = time.perf_counter() - start
    start = time.perf_counter()
    acc = DriftAccumulator(profile, prefix="")
    for offset in range(0, ROWS, CHUNK):  # streamed in chunks, as from Parquet parts
        acc.add(current.iloc[offset : offset + CHUNK])
    ours = acc.report("bench", mon)  # type: ignore[arg-type]
    ours_s = time.perf_counter() - start
    print(
        f"tollgate: {ours_s:.2f} s (+ {profile_s:.2f} s for the reference profile, done once at training)", flush=True
    )
    cfg = project_config()
    cfg = cfg.model_copy(update={"features": features, "monitoring": mon})
    print("evidently DataDriftPreset(num_method='psi', num_threshold=0.2) on the same data ...", flush=True)
    start = time.perf_counter()
    stats = evidently_drift(reference[COLUMNS], current[COLUMNS], cfg, None)
    evidently_s = time.perf_counter() - start
    theirs = evidently_verdicts(stats, cfg)
    print(f"evidently: {evidently_s:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        profile_path = Path(tmp) / "profile.json"
        profile_path.write_text(json.dumps(profile))
        print(
            f"writing {STREAM_ROWS:,} rows as Parquet parts, then streaming them in a separate process ...", flush=True
        )
        subprocess.run(
            [sys.executable, "-c", f"from bench.bench_drift import _write_child; _write_child({tmp!r})"], check=True
        )
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from bench.bench_drift import _stream_child; _stream_child({tmp!r}, {str(profile_path)!r})",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        streamed = json.loads(child.stdout.strip().splitlines()[-1])
    same = set(ours.drifted) == theirs
    print("\ndrift benchmark (same 1M x 20 data, one run; PSI, threshold 0.2)")
    print(
        f"  tollgate statistics {ours_s:.2f} s vs Evidently {evidently_s:.1f} s: {evidently_s / ours_s:.0f}x faster "
        f"(target >= 50x); with the profile build {evidently_s / (ours_s + profile_s):.0f}x"
    )
    print(
        f"  drifted columns: tollgate {sorted(ours.drifted)}; evidently {sorted(theirs)}; "
        f"{'SAME verdicts' if same else 'DIFFERENT verdicts'} (truth: {sorted(SHIFTED)})"
    )
    print(
        f"  {streamed['rows']:,} rows streamed in {streamed['seconds']:.1f} s, peak RSS {streamed['peak_mb']:.0f} MB "
        f"(target < 2048 MB, ratio {streamed['peak_mb'] / 2048:.2f}); drifted {streamed['drifted']}"
    )
    record_results(
        {
            "drift_1m_tollgate_s": ours_s,
            "drift_1m_evidently_s": evidently_s,
            "drift_1m_same_verdicts": 1.0 if same else 0.0,
            "drift_10m_stream_s": streamed["seconds"],
            "drift_10m_stream_peak_rss_mb": streamed["peak_mb"],
        }
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "drift.json").write_text(
        json.dumps(
            {
                "tollgate_s": ours_s,
                "profile_s": profile_s,
                "evidently_s": evidently_s,
                "same_verdicts": same,
                "stream": streamed,
            },
            indent=2,
        )
    )
