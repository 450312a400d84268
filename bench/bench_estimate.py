"""Estimated AUC before labels arrive (issue 36): `estimate_rows` over 1M logged predictions of one version, one
window set (the whole span plus 10 fixed windows, overall scope), 200 simulated label draws per estimate, with a
calibration map fitted on a 100k-row holdout. Baseline, on the same data: NannyML's CBPE (roc_auc, 10 chunks,
its isotonic calibration fitted on the same holdout as its reference), installed into a throw-away venv under
bench/out/ (NannyML pins its own pandas/numpy; nothing of it enters the locked environment). When that venv
cannot be made (no registry), the bench says so and records only Tollgate's figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from bench.common import OUT, project_config, record_results

NEEDS_STACK = False
ROWS = 1_000_000
WINDOWS = 10


def _world(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(shift, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x - 0.5)))).astype(int)
    return y, 1 / (1 + np.exp(-(1.5 * x - 0.5)))


def main(_: object) -> None:
    from tasks.estimation import estimate_rows
    from tollgate.estimation import fit_estimator_for

    rng = np.random.default_rng(0)
    y, scores = _world(rng, 100_000, 0.0)
    estimator = fit_estimator_for("binary", y, scores)
    _, live = _world(rng, ROWS, 0.3)  # a covariate shift: P(X) moved
    span = 10 * 24 * 3600.0
    log = pd.DataFrame(
        {"model_version": "1", "role": "champion", "ts": 1.7e9 + np.sort(rng.random(ROWS)) * span, "score": live}
    )
    ds = project_config().dataset.model_copy(update={"segments": []})
    start = time.perf_counter()
    rows = estimate_rows(log, {"1": estimator}, ds, "auc", every=span / WINDOWS)
    took = time.perf_counter() - start
    whole = next(r for r in rows if r["window"] == "all")
    print(
        f"estimate of {ROWS:,} logged predictions, {len(rows)} estimates (whole span + {WINDOWS} windows), "
        f"200 draws each: {took:.2f} s ({ROWS / took:,.0f} rows/s); whole span AUC {whole['estimate']:.4f} "
        f"[{whole['low']:.4f}, {whole['high']:.4f}]"
    )
    figures = {"estimate_1m_s": took, "estimate_1m_rows_per_s": ROWS / took}
    nanny = _nannyml(y, scores, log)
    if nanny is not None:
        print(
            f"NannyML CBPE on the same data ({nanny['version']}, {WINDOWS} chunks): {nanny['seconds']:.2f} s "
            f"(fit {nanny['fit_s']:.2f} s + estimate {nanny['estimate_s']:.2f} s); Tollgate takes "
            f"{took / nanny['seconds']:.2f}x its time"
        )
        figures |= {"estimate_1m_nannyml_s": nanny["seconds"], "estimate_1m_over_nannyml": took / nanny["seconds"]}
    record_results(figures)


NANNYML = """
import json, sys, time
import pandas as pd
import nannyml as nml
ref, ana = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
start = time.perf_counter()
cbpe = nml.CBPE(metrics=["roc_auc"], y_pred_proba="score", y_pred="pred", y_true="y", problem_type="classification_binary",
                timestamp_column_name="timestamp", chunk_number=int(sys.argv[3]))
cbpe.fit(ref)
fitted = time.perf_counter()
result = cbpe.estimate(ana).to_df()
done = time.perf_counter()
print(json.dumps({"version": nml.__version__, "fit_s": fitted - start, "estimate_s": done - fitted,
                  "seconds": done - start, "chunks": len(result)}))
"""


def _nannyml(y: np.ndarray, scores: np.ndarray, log: pd.DataFrame) -> dict[str, float] | None:
    """NannyML's CBPE timed on the same holdout (its reference) and log (its analysis set), in its own venv; None
    (with the reason printed) when the venv cannot be made."""
    venv = OUT / "nannyml-venv"
    python = venv / "bin" / "python"
    uv = shutil.which("uv")
    try:
        if not python.exists():
            if uv is None:
                raise RuntimeError("uv is not on PATH")
            print("installing NannyML into a throw-away venv (bench/out/nannyml-venv) ...")
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
            subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "nannyml", "statsmodels"], check=True)
        ref = pd.DataFrame({"y": y, "score": scores, "pred": (scores >= 0.5).astype(int)})
        ref["timestamp"] = pd.Timestamp("2023-01-01") + pd.to_timedelta(np.arange(len(ref)), unit="s")
        ana = pd.DataFrame({"score": log["score"], "pred": (log["score"] >= 0.5).astype(int)})
        ana["timestamp"] = pd.to_datetime(log["ts"], unit="s")
        work = OUT / "nannyml-data"
        work.mkdir(parents=True, exist_ok=True)
        ref.to_parquet(work / "reference.parquet")
        ana.to_parquet(work / "analysis.parquet")
        script = work / "cbpe.py"
        script.write_text(NANNYML)
        args = [str(python), str(script), str(work / "reference.parquet"), str(work / "analysis.parquet")]
        out = subprocess.run([*args, str(WINDOWS)], check=True, capture_output=True, text=True).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (OSError, RuntimeError, subprocess.CalledProcessError, ValueError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"NannyML CBPE not run: {type(exc).__name__}: {exc} {str(detail)[-500:]}")
        return None
