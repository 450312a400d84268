"""Estimation stage (issue 36): the estimator fitted at training and stored with the release (`estimator.json`,
digest-checked like every release file), estimates of the live primary metric from the prediction log alone, per
model version, role, window and segment, and their reconciliation with the labels when a backfill brings them
(tollgate/estimation.py has the method per task and its limits).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig
from tollgate.context import Context
from tollgate.estimation import DRAWS, METHODS, Estimator, MulticlassEstimator, estimator_from_dict, fit_estimator_for
from tollgate.objective import PRIMARY, Objective
from tollgate.release import Release, load_release
from tollgate.segments import segment_groups

ESTIMATOR_FILE = "estimator.json"


def estimator_body(y: np.ndarray, outputs: np.ndarray, objective: Objective, seed: int = 0) -> dict[str, Any]:
    """The release's estimator, fitted on every holdout row, and its quality measured the honest way first: fitted
    on the even rows, the odd rows' primary metric estimated and compared with their realized value."""
    y, outputs = np.asarray(y), np.asarray(outputs, dtype=float)
    metric = objective.primary
    fit, check = slice(0, None, 2), slice(1, None, 2)
    half = fit_estimator_for(objective.task, y[fit], outputs[fit]).estimate(outputs[check], seed=seed)
    realized = float(objective.metrics(y[check], outputs[check]).get(metric, float("nan")))
    quality = {
        "metric": metric,
        "check_rows": len(y[check]),
        "estimated": half.value,
        "low": half.low,
        "high": half.high,
        "realized": realized,
        "abs_error": abs(half.value - realized),
        "covered": bool(half.covers(realized)) if math.isfinite(realized) and math.isfinite(half.value) else None,
    }
    estimator = fit_estimator_for(objective.task, y, outputs)
    return {
        "task": objective.task,
        "method": METHODS[objective.task],
        "metric": metric,
        **estimator.to_dict(),
        "quality": quality,
    }


def estimator_metrics(body: dict[str, Any] | None) -> dict[str, float]:
    """The estimator's quality as MLflow metrics of the training run (estimator_estimated_<metric>, ...)."""
    quality = (body or {}).get("quality") or {}
    metric = quality.get("metric", "auc")
    out = {
        f"estimator_estimated_{metric}": quality.get("estimated"),
        f"estimator_realized_{metric}": quality.get("realized"),
        "estimator_abs_error": quality.get("abs_error"),
    }
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float) and math.isfinite(v)}


@tollgate_task
def fit_estimator(
    holdout: pd.DataFrame, outputs: np.ndarray, ds: DatasetConfig, objective: Objective
) -> dict[str, Any]:
    """Fit the release's performance estimator on the gate's holdout (see tollgate/estimation.py per task)."""
    return estimator_body(objective.target(holdout[ds.target].to_numpy()), outputs, objective)


def release_estimator(release: Release) -> Estimator | str:
    """The release's estimator, or why it has none (an older release, or a malformed file)."""
    try:
        body = release.file(ESTIMATOR_FILE)
    except Exception as exc:
        return f"v{release.version} has no {ESTIMATOR_FILE} ({type(exc).__name__}: retrain to get one)"
    try:
        return estimator_from_dict(body)
    except ValueError as exc:
        return f"v{release.version}: {body.get('why') or exc}"


def log_outputs(estimator: Estimator, frame: pd.DataFrame) -> np.ndarray:
    """The model outputs an estimator reads from prediction-log rows: the score, or (multiclass) the logged class
    probabilities, rows without a usable list left out."""
    if not isinstance(estimator, MulticlassEstimator):
        return pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=float)
    k = len(estimator.calibrations)
    if "proba" not in frame.columns:
        return np.empty((0, k))
    rows = [list(p) for p in frame["proba"] if p is not None and not isinstance(p, float) and len(p) == k]
    return np.asarray(rows, dtype=float).reshape(-1, k)


def _windows(ts: np.ndarray, every: float | None) -> list[tuple[str, float, float, np.ndarray]]:
    """('all', start, end, positions) and, with `every` seconds, one per fixed window aligned to the epoch (the
    windows `tollgate backfill --every` measures the realized metric on)."""
    if len(ts) == 0:
        return []
    out = [("all", float(ts.min()), float(ts.max()), np.arange(len(ts)))]
    if every:
        index = np.floor(ts / every).astype("int64")
        for k in np.unique(index):
            lo = float(k * every)
            out.append((f"{_iso(lo)}..{_iso(lo + every)}", lo, lo + every, np.flatnonzero(index == k)))
    return out


def _iso(t: float) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(
    head: dict[str, Any], metric: str, n: int, value: float | None, low: Any, high: Any, why: str
) -> dict[str, Any]:
    return {**head, "metric": metric, "n": n, "estimate": value, "low": low, "high": high, "why": why}


def estimate_rows(
    log: pd.DataFrame,
    maps: dict[str, Estimator | str],
    ds: DatasetConfig,
    metric: str,
    every: float | None = None,
    draws: int = DRAWS,
) -> list[dict[str, Any]]:
    """One row per (version, role, scope, window) of the logged predictions: the estimated primary metric
    (`estimate`, named by `metric`) with its 95% interval (`low`, `high`), or why there is none. `maps` is each
    version's estimator (or why it has none); versions not in it are left out; `metric` names the rows of versions
    without one. Scopes: overall and every configured segment value (tollgate.segments)."""
    out: list[dict[str, Any]] = []
    if log.empty:
        return out
    for (version, role), rows in log.groupby([log["model_version"].astype(str), log["role"]], sort=True):
        if version not in maps:
            continue
        estimator = maps[version]
        rows = rows.reset_index(drop=True)
        scopes: list[tuple[str, np.ndarray]] = [("overall", np.arange(len(rows)))]
        for col, values in segment_groups(rows, ds, prefix="f.").items():
            scopes += [(f"{col}={value}", pos) for value, pos in values.items()]
        for scope, positions in scopes:
            part = rows.iloc[positions]
            ts = part["ts"].to_numpy(dtype=float)
            for window, start, end, pos in _windows(ts, every):
                head = {"model_version": version, "role": role, "scope": scope, "window": window, "start": start}
                head["end"] = end
                if isinstance(estimator, str):
                    out.append(_row(head, metric, len(pos), None, None, None, estimator))
                    continue
                seed = len(out)  # a fixed seed per row: the same log gives the same intervals
                est = estimator.estimate(log_outputs(estimator, part.iloc[pos]), draws=draws, seed=seed)
                if math.isnan(est.value):
                    out.append(_row(head, estimator.metric, est.n, None, None, None, est.why))
                else:
                    out.append(_row(head, estimator.metric, est.n, est.value, est.low, est.high, est.why))
    return out


def _load_estimators(ctx: Context, versions: list[str]) -> dict[str, Estimator | str]:
    maps: dict[str, Estimator | str] = {}
    for version in sorted(versions, key=lambda v: int(v) if v.isdigit() else 0):
        try:
            maps[version] = release_estimator(load_release(ctx.config, ctx.registry, version=version))
        except Exception as exc:  # a version the registry no longer has, or one whose files fail their digests
            maps[version] = f"v{version}: its release cannot be loaded ({type(exc).__name__}: {exc})"
    return maps


def estimate_now(
    ctx: Context, since: float | None = None, until: float | None = None, every: float | None = None
) -> dict[str, Any]:
    """Estimates for the model's logged predictions between `since` and `until` (prediction time), per version,
    role, segment and window (`every` seconds, besides the whole span). Every version in the log is estimated
    with its own release's estimator; segments and the metric are the Production release's (else Staging's)."""
    from tollgate.predlog import read_log
    from tollgate.registry import RegistryError
    from tollgate.signals import read_signals

    model = ctx.config.project.registered_model
    log = read_log(ctx.paths.model_log(model), since)
    if until is not None and not log.empty:
        log = log[log["ts"].astype(float) < until]
    if not log.empty:
        log = log[log["role"] != "batch"]  # batch scores have no window of traffic to estimate
    anchor = next((info for stage in ("Production", "Staging") if (info := ctx.registry.one(stage))), None)
    if anchor is None:
        raise RegistryError(f"{model} has no Production or Staging version: nothing to estimate for")
    release = load_release(ctx.config, ctx.registry, version=anchor.version)
    versions = sorted(set(log["model_version"].astype(str))) if not log.empty else []
    maps = _load_estimators(ctx, versions)
    metric = release.objective.primary
    rows = estimate_rows(log, maps, release.config.dataset, metric, every)
    signals = read_signals(ctx.paths, model)
    if signals.get("concept_shift"):  # the labels showed the estimate wrong for this version: say so on every row
        flagged = str(signals.get("concept_shift_version"))
        note = f"unreliable: concept shift since {signals.get('concept_shift_since')}"
        for r in rows:
            if r["model_version"] == flagged:
                r["unreliable"] = note
    return {
        "model": model,
        "metric": metric,
        "method": METHODS[release.objective.task],
        "rows_read": len(log),
        "since": since,
        "until": until,
        "every_s": every,
        "estimators": {v: (m if isinstance(m, str) else METHODS_BY_METRIC[m.metric]) for v, m in maps.items()},
        "rows": rows,
    }


METHODS_BY_METRIC = {PRIMARY[task]: method for task, method in METHODS.items()}


def champion_rows(result: dict[str, Any], version: str) -> list[dict[str, Any]]:
    """The overall-scope rows of one version's champion traffic: the whole span first, then its windows in time."""
    mine = [
        r for r in result["rows"] if (r["model_version"], r["role"], r["scope"]) == (version, "champion", "overall")
    ]
    return sorted(mine, key=lambda r: (r["window"] != "all", float(r["start"])))


def record_estimate(ctx: Context, result: dict[str, Any]) -> dict[str, Any] | None:
    """Keep the Production champion's whole-span estimate as the model's signals (`tollgate status`, `/metrics`
    tollgate_estimated_metric); the values recorded, or None when there is no such estimate."""
    from tollgate.signals import record_signals

    production = ctx.registry.one("Production")
    if production is None:
        return None
    mine = champion_rows(result, production.version)
    if not mine or mine[0]["window"] != "all" or mine[0]["estimate"] is None:
        return None
    values = {
        "estimated_metric": mine[0]["metric"],
        "estimated_value": mine[0]["estimate"],
        "estimated_low": mine[0]["low"],
        "estimated_high": mine[0]["high"],
        "estimated_version": production.version,
        "estimated_unreliable": mine[0].get("unreliable", ""),
    }
    record_signals(ctx.paths, ctx.config.project.registered_model, **values)
    return values


def logged_outputs(
    ctx: Context, estimator: Estimator, version: str, role: str, clock: str, start: float, end: float
) -> np.ndarray:
    """The logged outputs of one version and role with `clock` ('ts' or 'event_ts') in [start, end], read a few
    columns at a time (memory bounded by compute.chunk_rows) and de-duplicated by prediction id."""
    from tollgate.predlog import log_parts, part_frames

    folder = ctx.paths.model_log(ctx.config.project.registered_model)
    since = start if clock == "ts" else None
    columns = ["prediction_id", "model_version", "role", "score", "event_ts", "proba"]
    kept: list[pd.DataFrame] = []
    for path in log_parts(folder):
        for frame in part_frames(path, since, ctx.config.compute.chunk_rows, columns):
            t = frame[clock].astype(float)
            mine = frame[
                (frame["model_version"].astype(str) == version) & (frame["role"] == role) & (t >= start) & (t <= end)
            ]
            kept.append(mine[[c for c in ("prediction_id", "score", "proba") if c in mine.columns]])
    if not kept:
        return log_outputs(estimator, pd.DataFrame({"score": [], "proba": []}))
    return log_outputs(estimator, pd.concat(kept).drop_duplicates("prediction_id"))


def labelled_outputs(
    joined: pd.DataFrame, release: Release, estimator: Estimator, clock: str, start: float, end: float
) -> tuple[np.ndarray, np.ndarray]:
    """The champion's labelled rows in [start, end] on `clock`: (outputs, truth as the objective's codes/values)."""
    if joined.empty:
        return log_outputs(estimator, pd.DataFrame({"score": [], "proba": []})), np.array([])
    t = pd.to_numeric(joined[clock], errors="coerce").astype(float)
    rows = joined[
        (joined["model_version"].astype(str) == release.version)
        & (joined["role"] == "champion")
        & (t >= start)
        & (t <= end)
    ]
    if isinstance(estimator, MulticlassEstimator) and "proba" in rows.columns:
        k = len(estimator.calibrations)
        rows = rows[
            rows["proba"].map(lambda p: p is not None and not isinstance(p, float) and len(p) == k).astype(bool)
        ]
    else:
        rows = rows[pd.to_numeric(rows["score"], errors="coerce").notna()]
    return log_outputs(estimator, rows), release.objective.target(rows["label"].to_numpy())


def reconcile(
    ctx: Context,
    release: Release,
    rows: list[dict[str, Any]],
    by: str = "prediction-time",
    joined: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Check the estimates against the labels a backfill brought: for the Production champion's whole span and
    each of its windows (overall scope), the primary metric estimated from all its logged outputs next to the
    realized one on the labelled rows, whether the realized value fell inside the estimate's 95% interval, and a
    calibration check of the stored estimator on the labelled rows (tollgate.estimation.CalibrationCheck). The
    first window (in time) where either fails sets the model's `concept_shift` signal: later estimates of this
    version are marked unreliable until a new version is promoted."""
    from tollgate.signals import record_signals

    metric = release.objective.primary
    estimator = release_estimator(release)
    if isinstance(estimator, str) or estimator.metric != metric:
        return {"checked": [], "concept_shift": None, "why": estimator if isinstance(estimator, str) else metric}
    clock = "ts" if by == "prediction-time" else "event_ts"
    labelled = joined if joined is not None else pd.DataFrame()
    mine = [
        r
        for r in rows
        if (str(r["model_version"]), r["role"], r["scope"]) == (release.version, "champion", "overall")
        and r.get(metric) is not None
    ]
    checked = []
    for r in sorted(mine, key=lambda r: (r["window"] != "all", float(r["start"]))):
        start, end = float(r["start"]), float(r["end"])
        est = estimator.estimate(logged_outputs(ctx, estimator, release.version, "champion", clock, start, end))
        realized = float(r[metric])
        inside = None if math.isnan(est.value) or math.isnan(realized) else est.covers(realized)
        outputs, truth = labelled_outputs(labelled, release, estimator, clock, start, end)
        calibration = estimator.calibration_check(outputs, truth) if len(truth) else None
        checked.append(
            {
                "window": r["window"],
                "labelled": int(r["n"]),
                "estimated": est.to_dict(),
                "realized": realized,
                "inside": inside,
                "calibration": calibration.to_dict() if calibration else None,
                "shifted": inside is False or bool(calibration and calibration.shifted),
            }
        )
    missed = [c for c in checked if c["shifted"]]
    windows = [c for c in missed if c["window"] != "all"] or missed  # the first fixed window, else the whole span
    shift = None
    if windows:
        first = windows[0]
        shift = {
            "version": release.version,
            "since": first["window"],
            "metric": metric,
            "realized": first["realized"],
            "estimated": first["estimated"]["value"],
            "interval_missed": first["inside"] is False,
            "calibration_p_value": (first["calibration"] or {}).get("p_value"),
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
def reconcile_estimates(
    ctx: Context, release: Release, rows: list[dict[str, Any]], by: str, joined: list[pd.DataFrame] | None = None
) -> dict[str, Any]:
    """The backfill's reconciliation of estimates with the labels (see `reconcile`)."""
    from tasks.ground_truth import merge_joined

    return reconcile(ctx, release, rows, by, merge_joined(joined) if joined else None)


def estimated_verdict(ctx: Context, release: Release, result: dict[str, Any], window_end: float) -> dict[str, Any]:
    """The Production champion's estimate over one drift window against monitoring.live_degraded_at: `below` when
    it is worse, `degraded` when it has been for monitoring.estimated_drop_windows consecutive windows (counted in
    the signals, once per window end), else `ok`; `none` without an estimate. Never `severe`: an estimate does not
    roll back."""
    from tollgate.objective import higher_is_better
    from tollgate.signals import read_signals, record_signals

    mon, model = release.config.monitoring, release.model_name
    mine = champion_rows(result, release.version)
    row = mine[0] if mine and mine[0]["window"] == "all" else None
    base = {"version": release.version, "metric": result["metric"], "threshold": mon.live_degraded_at}
    base["needed"] = mon.estimated_drop_windows
    if row is None or row["estimate"] is None:
        why = row["why"] if row else f"no champion predictions of v{release.version} in the window"
        return {**base, "status": "none", "why": why, "consecutive": 0}
    value = float(row["estimate"])
    worse = value < mon.live_degraded_at if higher_is_better(result["metric"]) else value > mon.live_degraded_at
    signals = read_signals(ctx.paths, model)
    mine_before = signals.get("estimated_below_version") == release.version
    before = int(signals.get("estimated_below_windows") or 0) if mine_before else 0
    counted = signals.get("estimated_window_end") if mine_before else None
    # a window already counted (a rerun over the same or an earlier end) does not count again
    again = isinstance(counted, int | float) and window_end <= float(counted)
    consecutive = (max(before, 1) if again else before + 1) if worse else 0
    status = "ok" if not worse else "degraded" if consecutive >= mon.estimated_drop_windows else "below"
    record_signals(
        ctx.paths,
        model,
        estimated_below_windows=consecutive,
        estimated_below_version=release.version,
        estimated_window_end=float(counted) if again and isinstance(counted, int | float) else window_end,
        estimated_status=status,
    )
    return {
        **base,
        "status": status,
        "value": value,
        "low": row["low"],
        "high": row["high"],
        "n": row["n"],
        "consecutive": consecutive,
        "unreliable": row.get("unreliable", ""),
        "why": "",
    }


@tollgate_task
def estimate_drift_window(
    ctx: Context, release: Release, start: float | None, end: float | None, by: str
) -> dict[str, Any]:
    """drift_check's estimates: every version, role and segment over the window (prediction time), the champion's
    kept as signals (/metrics, status), and its verdict against live_degraded_at (`estimated_verdict`)."""
    import time

    if by != "prediction-time":
        return {"rows": [], "verdict": {"status": "none", "why": "estimates follow prediction time, not event time"}}
    result = estimate_now(ctx, start, end)
    signals = record_estimate(ctx, result)
    verdict = estimated_verdict(ctx, release, result, end if end is not None else time.time())
    return {"metric": result["metric"], "rows": result["rows"], "signals": signals, "verdict": verdict}
