"""Estimated AUC before labels arrive (issue 36): `estimate_rows` over 1M logged predictions of one version, one
window set (the whole span plus 10 fixed windows, overall scope), 200 simulated label draws per estimate, with a
calibration map fitted on a 100k-row holdout. Baseline: NannyML's CBPE on the same data was not run: installing
NannyML beside the locked environment (its own pandas/numpy pins) is left for a throw-away venv on a machine with
the time; the figure here is absolute seconds and rows per second."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from bench.common import project_config, record_results

NEEDS_STACK = False
ROWS = 1_000_000
WINDOWS = 10


def _world(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(shift, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x - 0.5)))).astype(int)
    return y, 1 / (1 + np.exp(-(1.5 * x - 0.5)))


def main(_: object) -> None:
    from tasks.estimation import estimate_rows
    from tollgate.estimation import fit_calibration

    rng = np.random.default_rng(0)
    y, scores = _world(rng, 100_000, 0.0)
    calibration = fit_calibration(y, scores)
    _, live = _world(rng, ROWS, 0.3)  # a covariate shift: P(X) moved
    span = 10 * 24 * 3600.0
    log = pd.DataFrame(
        {"model_version": "1", "role": "champion", "ts": 1.7e9 + np.sort(rng.random(ROWS)) * span, "score": live}
    )
    ds = project_config().dataset.model_copy(update={"segments": []})
    start = time.perf_counter()
    rows = estimate_rows(log, {"1": calibration}, ds, every=span / WINDOWS)
    took = time.perf_counter() - start
    whole = next(r for r in rows if r["window"] == "all")
    print(
        f"estimate of {ROWS:,} logged predictions, {len(rows)} estimates (whole span + {WINDOWS} windows), "
        f"200 draws each: {took:.2f} s ({ROWS / took:,.0f} rows/s); whole span AUC {whole['auc']:.4f} "
        f"[{whole['low']:.4f}, {whole['high']:.4f}]"
    )
    record_results({"estimate_1m_s": took, "estimate_1m_rows_per_s": ROWS / took})
