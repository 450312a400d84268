"""Estimation stage (issue 36): the estimator fitted at training and stored with the release (`estimator.json`,
digest-checked like every release file), and estimates of the live primary metric from the prediction log alone,
per model version, role, window and segment (tollgate/estimation.py has the method and its limits).

Built for binary models (estimated AUC); a multiclass or regression release records that it has no estimator
and `tollgate estimate` says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig
from tollgate.context import Context
from tollgate.estimation import DRAWS, METHOD, Calibration, estimate_auc, fit_calibration
from tollgate.objective import Objective
from tollgate.release import Release, load_release
from tollgate.segments import segment_groups

ESTIMATOR_FILE = "estimator.json"


def estimator_body(y: np.ndarray, scores: np.ndarray, objective: Objective, seed: int = 0) -> dict[str, Any]:
    """The release's estimator: the calibration map fitted on every holdout row, and its quality measured the
    honest way first (fitted on the even rows, the odd rows' AUC estimated and compared with their realized AUC)."""
    from sklearn.metrics import roc_auc_score

    if objective.task != "binary":
        return {"task": objective.task, "method": None, "why": "estimation is built for binary models only"}
    y, scores = np.asarray(y), np.asarray(scores, dtype=float)
    fit, check = slice(0, None, 2), slice(1, None, 2)
    half = estimate_auc(fit_calibration(y[fit], scores[fit]), scores[check], seed=seed)
    one_class = len(np.unique(y[check])) < 2
    realized = float("nan") if one_class else float(roc_auc_score(y[check], scores[check]))
    quality = {
        "check_rows": len(y[check]),
        "estimated_auc": half.value,
        "low": half.low,
        "high": half.high,
        "realized_auc": realized,
        "abs_error": abs(half.value - realized),
        "covered": bool(half.covers(realized)) if math.isfinite(realized) else None,
    }
    calibration = fit_calibration(y, scores)
    return {
        "task": "binary",
        "method": METHOD,
        "metric": "auc",
        "calibration": calibration.to_dict(),
        "quality": quality,
    }


def estimator_metrics(body: dict[str, Any] | None) -> dict[str, float]:
    """The estimator's quality as MLflow metrics of the training run."""
    quality = (body or {}).get("quality") or {}  # none for a model estimation is not built for
    out = {f"estimator_{k}": quality.get(k) for k in ("estimated_auc", "realized_auc", "abs_error")}
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float) and math.isfinite(v)}


@tollgate_task
def fit_estimator(
    holdout: pd.DataFrame, outputs: np.ndarray, ds: DatasetConfig, objective: Objective
) -> dict[str, Any]:
    """Fit the release's performance estimator on the gate's holdout (binary: an isotonic calibration map)."""
    return estimator_body(objective.target(holdout[ds.target].to_numpy()), outputs, objective)


def release_calibration(release: Release) -> Calibration | str:
    """The release's calibration map, or why it has none (an older release, or not a binary model)."""
    try:
        body = release.file(ESTIMATOR_FILE)
    except Exception as exc:
        return f"v{release.version} has no {ESTIMATOR_FILE} ({type(exc).__name__}: retrain to get one)"
    if not body.get("calibration"):
        return f"v{release.version}: {body.get('why', 'no calibration map')}"
    return Calibration.from_dict(body["calibration"])


def _windows(ts: np.ndarray, every: float | None) -> list[tuple[str, float, float, np.ndarray]]:
    """('all', start, end, positions) and, with `every` seconds, one per fixed window aligned to the first row."""
    if len(ts) == 0:
        return []
    start, end = float(ts.min()), float(ts.max())
    out = [("all", start, end, np.arange(len(ts)))]
    if every:
        index = ((ts - start) // every).astype(int)
        for k in np.unique(index):
            lo = start + k * every
            out.append((f"{_iso(lo)}..{_iso(lo + every)}", lo, lo + every, np.flatnonzero(index == k)))
    return out


def _iso(t: float) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def estimate_rows(
    log: pd.DataFrame,
    maps: dict[str, Calibration | str],
    ds: DatasetConfig,
    every: float | None = None,
    draws: int = DRAWS,
) -> list[dict[str, Any]]:
    """One row per (version, role, scope, window) of the logged predictions: the estimated AUC with its 95%
    interval, or why there is none. `maps` is each version's calibration map (or why it has none); versions not in
    it are left out. Scopes: overall and every configured segment value (tollgate.segments)."""
    out: list[dict[str, Any]] = []
    if log.empty:
        return out
    for (version, role), rows in log.groupby([log["model_version"].astype(str), log["role"]], sort=True):
        if version not in maps:
            continue
        calibration = maps[version]
        rows = rows.reset_index(drop=True)
        scopes: list[tuple[str, np.ndarray]] = [("overall", np.arange(len(rows)))]
        for col, values in segment_groups(rows, ds, prefix="f.").items():
            scopes += [(f"{col}={value}", pos) for value, pos in values.items()]
        for scope, positions in scopes:
            part = rows.iloc[positions]
            ts = part["ts"].to_numpy(dtype=float)
            for window, start, end, pos in _windows(ts, every):
                head = {"model_version": version, "role": role, "scope": scope, "window": window, "start": start}
                if isinstance(calibration, str):
                    out.append(
                        {**head, "end": end, "n": len(pos), "auc": None, "low": None, "high": None, "why": calibration}
                    )
                    continue
                seed = len(out)  # a fixed seed per row: the same log gives the same intervals
                est = estimate_auc(calibration, part["score"].to_numpy(dtype=float)[pos], draws=draws, seed=seed)
                value = None if math.isnan(est.value) else est.value
                bounds = (None, None) if value is None else (est.low, est.high)
                out.append(
                    {**head, "end": end, "n": est.n, "auc": value, "low": bounds[0], "high": bounds[1], "why": est.why}
                )
    return out


def estimate_now(
    ctx: Context, since: float | None = None, until: float | None = None, every: float | None = None
) -> dict[str, Any]:
    """Estimates for the model's logged predictions between `since` and `until` (prediction time), per version,
    role, segment and window (`every` seconds, besides the whole span). Every version in the log is estimated
    with its own release's map; segments are the Production release's (else the Staging one's)."""
    from tollgate.predlog import read_log
    from tollgate.registry import RegistryError
    from tollgate.signals import read_signals

    model = ctx.config.project.registered_model
    log = read_log(ctx.paths.model_log(model), since)
    if until is not None and not log.empty:
        log = log[log["ts"].astype(float) < until]
    log = log[log["role"] != "batch"]  # batch scores have no window of traffic to estimate
    anchor = next((info for stage in ("Production", "Staging") if (info := ctx.registry.one(stage))), None)
    if anchor is None:
        raise RegistryError(f"{model} has no Production or Staging version: nothing to estimate for")
    ds = load_release(ctx.config, ctx.registry, version=anchor.version).config.dataset
    maps: dict[str, Calibration | str] = {}
    for version in sorted(set(log["model_version"].astype(str)), key=lambda v: int(v) if v.isdigit() else 0):
        try:
            maps[version] = release_calibration(load_release(ctx.config, ctx.registry, version=version))
        except Exception as exc:  # a version the registry no longer has, or one whose files fail their digests
            maps[version] = f"v{version}: its release cannot be loaded ({type(exc).__name__}: {exc})"
    rows = estimate_rows(log, maps, ds, every)
    signals = read_signals(ctx.paths, model)
    if signals.get("concept_shift"):  # the labels showed the estimate wrong for this version: say so on every row
        flagged = str(signals.get("concept_shift_version"))
        note = f"unreliable: concept shift since {signals.get('concept_shift_since')}"
        for r in rows:
            if r["model_version"] == flagged:
                r["unreliable"] = note
    return {
        "model": model,
        "method": METHOD,
        "rows_read": len(log),
        "since": since,
        "until": until,
        "every_s": every,
        "estimators": {v: ("calibration map" if isinstance(m, Calibration) else m) for v, m in maps.items()},
        "rows": rows,
    }


def record_estimate(ctx: Context, result: dict[str, Any]) -> dict[str, float] | None:
    """Keep the Production champion's whole-span estimate as the model's signals (`tollgate status`, `/metrics`
    tollgate_estimated_auc); the values recorded, or None when there is no such estimate."""
    from tollgate.signals import record_signals

    production = ctx.registry.one("Production")
    if production is None:
        return None
    mine = [
        r
        for r in result["rows"]
        if (r["model_version"], r["role"], r["scope"], r["window"])
        == (production.version, "champion", "overall", "all")
    ]
    if not mine or mine[0]["auc"] is None:
        return None
    values = {
        "estimated_auc": mine[0]["auc"],
        "estimated_auc_low": mine[0]["low"],
        "estimated_auc_high": mine[0]["high"],
    }
    record_signals(ctx.paths, ctx.config.project.registered_model, **values)
    return values


def logged_scores(ctx: Context, version: str, role: str, clock: str, start: float, end: float) -> np.ndarray:
    """The logged scores of one version and role with `clock` ('ts' or 'event_ts') in [start, end], read a few
    columns at a time (memory bounded by compute.chunk_rows) and de-duplicated by prediction id."""
    from tollgate.predlog import log_parts, part_frames

    folder = ctx.paths.model_log(ctx.config.project.registered_model)
    since = start if clock == "ts" else None
    columns = ["prediction_id", "model_version", "role", "score", "event_ts"]
    kept: list[pd.DataFrame] = []
    for path in log_parts(folder):
        for frame in part_frames(path, since, ctx.config.compute.chunk_rows, columns):
            t = frame[clock].astype(float)
            mine = frame[
                (frame["model_version"].astype(str) == version) & (frame["role"] == role) & (t >= start) & (t <= end)
            ]
            kept.append(mine[["prediction_id", "score"]])
    if not kept:
        return np.array([])
    return pd.concat(kept).drop_duplicates("prediction_id")["score"].to_numpy(dtype=float)


def reconcile(
    ctx: Context, release: Release, rows: list[dict[str, Any]], by: str = "prediction-time"
) -> dict[str, Any]:
    """Check the estimates against the labels a backfill brought: for the Production champion's whole span and
    each of its windows (overall scope), the AUC estimated from its logged scores next to the realized one, and
    whether the realized value fell inside the estimate's 95% interval. The first window (in time) it did not
    sets the model's `concept_shift` signal: later estimates of this version are marked unreliable."""
    from tollgate.signals import record_signals

    metric = release.objective.primary
    calibration = release_calibration(release)
    if metric != "auc" or isinstance(calibration, str):
        return {
            "checked": [],
            "concept_shift": None,
            "why": calibration if isinstance(calibration, str) else f"{metric}: not estimated",
        }
    clock = "ts" if by == "prediction-time" else "event_ts"
    mine = [
        r
        for r in rows
        if (str(r["model_version"]), r["role"], r["scope"]) == (release.version, "champion", "overall")
        and r.get(metric) is not None
    ]
    checked = []
    for r in sorted(mine, key=lambda r: (r["window"] != "all", float(r["start"]))):
        est = estimate_auc(
            calibration, logged_scores(ctx, release.version, "champion", clock, float(r["start"]), float(r["end"]))
        )
        realized = float(r[metric])
        inside = None if math.isnan(est.value) or math.isnan(realized) else est.covers(realized)
        checked.append(
            {
                "window": r["window"],
                "labelled": int(r["n"]),
                "estimated": est.to_dict(),
                "realized": realized,
                "inside": inside,
            }
        )
    missed = [c for c in checked if c["inside"] is False]
    windows = [c for c in missed if c["window"] != "all"] or missed  # the first fixed window, else the whole span
    shift = None
    if windows:
        first = windows[0]
        shift = {
            "version": release.version,
            "since": first["window"],
            "realized": first["realized"],
            "estimated": first["estimated"]["value"],
        }
        record_signals(
            ctx.paths,
            release.model_name,
            concept_shift=1,
            concept_shift_version=release.version,
            concept_shift_since=first["window"],
        )
    return {"checked": checked, "concept_shift": shift, "why": ""}


@tollgate_task
def reconcile_estimates(ctx: Context, release: Release, rows: list[dict[str, Any]], by: str) -> dict[str, Any]:
    """The backfill's reconciliation of estimates with the labels (see `reconcile`)."""
    return reconcile(ctx, release, rows, by)
