"""Ground-truth stage: delayed labels joined to logged predictions, live metrics and their verdict (what to do
about the verdict is tasks.actions; recording it, tasks.reporting).

A labels file has a key column (`prediction_id`, or the dataset's entity id column / `entity_id`), `label`
(classification: one of the release's class values; regression: any finite number) and `label_time` (when
the label became final). Labels are stored de-duplicated by key, so ingesting the same file twice changes
nothing; a later label for the same key (a correction) replaces the earlier one. A prediction is scored once
its label has matured: label_time <= as_of (default now).

Live metrics are the release's objective (tollgate.objective) over the logged outputs, per model version, role,
scope (overall or a segment, grouped by tollgate.segments) and window: one window over everything ("all"),
plus, when asked, fixed windows (`every` seconds) or `chunks` equal-count consecutive chunks, on prediction
time or event time.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tasks.drift import clock_of, iso, times_of
from tollgate.config import DatasetConfig, TollgateConfig
from tollgate.context import Context
from tollgate.objective import Objective, as_classes, higher_is_better
from tollgate.segments import segment_groups

if TYPE_CHECKING:  # the release module loads MLflow: a Dask worker running join_parts never needs it
    from tollgate.release import Release

STORE = "labels.parquet"
METRIC_NAMES = {"auc": "AUC", "auc_ovr": "AUC (one-vs-rest)", "rmse": "RMSE"}
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class LabelsError(Exception):
    """The labels file is unusable; the message names the file, column and rows."""


def _bad_rows(path: Path, raw: pd.DataFrame, bad: pd.Index, rule: str) -> LabelsError:
    rows = bad.tolist()
    example = raw.loc[rows[0], "label"]
    example = example.item() if hasattr(example, "item") else example  # numpy scalar -> Python, for the message
    return LabelsError(f"{path}: column 'label' must be {rule}; rows {rows[:10]} are not (e.g. {example!r})")


def read_labels(path: Path, entity_column: str, objective: Objective | None = None) -> pd.DataFrame:
    """Normalise a labels file to columns key_kind ('prediction'|'entity'), key, label, label_time; labels are
        checked against the objective (default binary 0/1): the release's class values (as stored in the data: text,
    whole floats and booleans read as them, see tollgate.objective.as_classes) or finite numbers."""
    from tasks.validation import DataReadError, read_table

    objective = objective or Objective("binary", (0, 1))
    try:
        raw = read_table(path)
    except DataReadError as exc:
        raise LabelsError(str(exc)) from None
    if "prediction_id" in raw.columns:
        kind, key = "prediction", "prediction_id"
    elif entity_column in raw.columns or "entity_id" in raw.columns:
        kind, key = "entity", entity_column if entity_column in raw.columns else "entity_id"
    else:
        raise LabelsError(
            f"{path}: needs a key column: prediction_id, {entity_column} or entity_id; has {list(raw.columns)}"
        )
    problems = [c for c in ("label", "label_time") if c not in raw.columns]
    if problems:
        raise LabelsError(f"{path}: missing column(s) {problems}")
    if objective.is_classification:
        label, bad_mask = as_classes(raw["label"].reset_index(drop=True), objective.labels)
        label.index = raw.index
        bad = raw.index[bad_mask]
        if len(bad):
            raise _bad_rows(path, raw, bad, f"one of the class values {list(objective.labels)}")
    else:
        label = pd.to_numeric(raw["label"], errors="coerce").astype("float64")
        bad = raw.index[~np.isfinite(label.to_numpy())]
        if len(bad):
            raise _bad_rows(path, raw, bad, "a finite number")
    when = pd.to_datetime(raw["label_time"], errors="coerce", utc=True)
    bad_times = raw.index[when.isna()].tolist()
    if bad_times:
        raise LabelsError(f"{path}: column 'label_time' has unparsable timestamps in rows {bad_times[:10]}")
    keys = raw[key].astype(str)
    if keys.eq("").any() or raw[key].isna().any():
        raise LabelsError(f"{path}: column '{key}' has empty keys")
    return pd.DataFrame({"key_kind": kind, "key": keys, "label": label, "label_time": when.astype("int64") / 1e9})


def ingest(store_dir: Path, labels: pd.DataFrame) -> tuple[int, int]:
    """Merge labels into the store (latest label_time per key wins); returns (rows that changed, total)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / STORE
    old = pd.read_parquet(path) if path.exists() else labels.iloc[0:0]
    merged = (
        pd.concat([old, labels], ignore_index=True)
        .sort_values(["key_kind", "key", "label_time", "label"], kind="stable")
        .drop_duplicates(["key_kind", "key"], keep="last")
        .reset_index(drop=True)
    )
    before = old.set_index(["key_kind", "key"])[["label", "label_time"]] if len(old) else None
    after = merged.set_index(["key_kind", "key"])[["label", "label_time"]]
    changed = len(after) if before is None else int((~after.isin(before.reindex(after.index))).any(axis=1).sum())
    if changed:
        tmp = path.with_suffix(".tmp")
        merged.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return changed, len(merged)


def join_labels(log: pd.DataFrame, labels: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """Logged predictions with a matured label (column `label`: float for numbers, else the class values as
    stored): by prediction id, by the request's prediction id (shadow rows), else by entity id."""
    ready = labels[labels["label_time"] <= as_of]
    by_pid = ready[ready["key_kind"] == "prediction"].set_index("key")["label"]
    by_entity = ready[ready["key_kind"] == "entity"].set_index("key")["label"]
    label = log["prediction_id"].map(by_pid)
    label = label.fillna(log["request_id"].map(by_pid)).fillna(log["entity_id"].map(by_entity))
    if pd.api.types.is_numeric_dtype(ready["label"].dtype):
        label = pd.to_numeric(label, errors="coerce").astype("float64")
    out = log.assign(label=label)
    return out[out["label"].notna()]


def merge_joined(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Labelled rows of consecutive log parts, in order, de-duplicated by prediction id (the first one kept)."""
    kept = [p for p in parts if len(p)]
    if not kept:
        return pd.DataFrame(columns=["prediction_id", "model_version", "role", "ts", "score", "label"])
    joined = pd.concat(kept, ignore_index=True).drop_duplicates("prediction_id", keep="first")
    return joined.reset_index(drop=True)


def join_log_frames(frames: Iterable[pd.DataFrame], labels: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """The labelled rows of a stream of log frames, de-duplicated by prediction id: memory follows the labelled
    rows, not the log."""
    return merge_joined(join_labels(f, labels, as_of) for f in frames)


def parse_every(text: str | float | None) -> float | None:
    """Seconds of a window length given as '<n><unit>' (s, m, h, d, w: '1h', '7d', '90m') or seconds."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _EVERY.match(str(text))
        if m is None:
            raise ValueError(f"not a window length: {text!r} (use e.g. 1h, 1d, 7d)")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not seconds > 0:
        raise ValueError(f"a window length must be positive: {text!r}")
    return seconds


@dataclass(frozen=True)
class Windowing:
    """How live metrics are windowed: one window over everything, plus fixed windows of `every` seconds or
    `chunks` equal-count consecutive chunks, on clock `by` (prediction-time or event-time)."""

    by: str = "prediction-time"
    every: float | None = None
    chunks: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "by", clock_of(self.by))
        if self.every is not None and self.chunks is not None:
            raise ValueError("window by --every or --chunks, not both")
        if self.every is not None and not self.every > 0:
            raise ValueError(f"every must be positive: {self.every}")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError(f"chunks must be at least 1: {self.chunks}")

    def assign(self, t: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[float, float]]]:
        """Each row's window id (times `t`, all known) and each window's [start, end) in epoch seconds."""
        if self.every is not None:
            ids = np.floor(t / self.every).astype("int64")
            return ids, {int(i): (float(i * self.every), float((i + 1) * self.every)) for i in np.unique(ids)}
        if self.chunks is not None:
            order = np.argsort(t, kind="stable")
            ids = np.empty(len(t), dtype="int64")
            bounds = {}
            for k, rows in enumerate(np.array_split(order, min(self.chunks, max(len(t), 1)))):
                if len(rows):
                    ids[rows] = k
                    bounds[k] = (float(t[rows].min()), float(t[rows].max()))
            return ids, bounds
        return np.zeros(len(t), dtype="int64"), {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LiveMetrics:
    """The metric rows of a backfill and what was left out of them (rows without an event time, on event time)."""

    rows: list[dict[str, Any]]
    windowing: Windowing
    excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "windowing": self.windowing.to_dict(), "excluded": self.excluded}


def _outputs(objective: Objective, part: pd.DataFrame) -> np.ndarray:
    proba = part["proba"] if "proba" in part.columns else None
    return objective.from_log(part["score"].to_numpy(), proba)


def _usable(objective: Objective, joined: pd.DataFrame) -> pd.DataFrame:
    """Rows whose logged output the objective can read (multiclass: a probability list of the right length)."""
    if objective.task != "multiclass":
        return joined[pd.to_numeric(joined["score"], errors="coerce").notna()]
    if "proba" not in joined.columns:
        return joined.iloc[0:0]
    k = len(objective.classes)
    ok = joined["proba"].map(lambda p: p is not None and not isinstance(p, float) and len(p) == k)
    return joined[ok.astype(bool)]


def live_metrics(
    joined: pd.DataFrame, objective: Objective, ds: DatasetConfig, windowing: Windowing | None = None
) -> LiveMetrics:
    """Rows of the objective's metrics per model version x role x scope (overall or segment=value) x window:
    window 'all' over every row, then (with windowing.every/chunks) one row per window with rows, labelled
    '<start>..<end>' with `start`/`end` epoch seconds. Rows without a time on the clock are excluded."""
    windowing = windowing or Windowing()
    if joined.empty:
        return LiveMetrics([], windowing)
    known = ~np.isnan(times_of(joined, windowing.by))
    excluded = int((~known).sum())
    joined = _usable(objective, joined[known]).reset_index(drop=True)
    if joined.empty:
        return LiveMetrics([], windowing, excluded)
    t = times_of(joined, windowing.by)
    ids = np.zeros(len(joined), dtype="int64")
    bounds: dict[tuple[str, str, int], tuple[float, float]] = {}
    groups = joined.groupby([joined["model_version"].astype(str), joined["role"]], sort=True).indices
    for (version, role), rows in groups.items():
        sub_ids, sub_bounds = windowing.assign(t[rows])
        ids[rows] = sub_ids
        bounds.update({(version, role, k): b for k, b in sub_bounds.items()})
    joined["_window"] = ids
    scopes: list[tuple[str, np.ndarray]] = [("overall", np.arange(len(joined)))]
    for col, values in segment_groups(joined, ds, prefix="f.").items():
        scopes += [(f"{col}={value}", pos) for value, pos in values.items()]
    out = []
    for scope, positions in scopes:
        part = joined.iloc[positions]
        for (version, role), grp in part.groupby([part["model_version"].astype(str), part["role"]], sort=True):
            tg = times_of(grp, windowing.by)
            out.append(_row(objective, grp, version, role, scope, "all", float(tg.min()), float(tg.max())))
            if windowing.every is None and windowing.chunks is None:
                continue
            for k, win in grp.groupby("_window", sort=True):
                start, end = bounds[(version, role, int(k))]
                out.append(_row(objective, win, version, role, scope, f"{iso(start)}..{iso(end)}", start, end))
    return LiveMetrics(out, windowing, excluded)


def _row(
    objective: Objective, grp: pd.DataFrame, version: str, role: str, scope: str, window: str, start: float, end: float
) -> dict[str, Any]:
    metrics = objective.metrics(objective.target(grp["label"].to_numpy()), _outputs(objective, grp))
    head = {"model_version": version, "role": role, "scope": scope, "window": window, "start": start, "end": end}
    return {**head, **metrics}


@dataclass(frozen=True)
class LiveVerdict:
    """What the live labels say about the Production version: its primary metric (`metric`: auc, auc_ovr or
    rmse) over the matured labels and the status under the release's live_degraded_at / live_severe_at."""

    version: str
    labelled: int
    value: float
    status: str  # ok | insufficient | degraded | severe
    reason: str
    metric: str = "auc"

    @property
    def auc(self) -> float:
        """The live AUC (binary releases; NaN for another metric)."""
        return self.value if self.metric == "auc" else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view; binary verdicts also carry `auc` (the name readers used before task types)."""
        body = asdict(self)
        return {**body, "auc": self.value} if self.metric == "auc" else body


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def judge(rows: list[dict[str, Any]], release: Release) -> LiveVerdict:
    """The Production version's primary live metric against monitoring.live_degraded_at / live_severe_at ("worse"
    follows the metric's direction), with at least monitoring.min_labelled_rows matured labels."""
    mon, objective = release.config.monitoring, release.objective
    metric = objective.primary
    name = METRIC_NAMES.get(metric, metric)
    mine = [
        r
        for r in rows
        if r["model_version"] == release.version
        and r["role"] == "champion"
        and r["scope"] == "overall"
        and r["window"] == "all"
    ]
    n = int(mine[0]["n"]) if mine else 0
    if n < mon.min_labelled_rows:
        reason = f"{n} matured labels, fewer than monitoring.min_labelled_rows {mon.min_labelled_rows}"
        return LiveVerdict(release.version, n, math.nan, "insufficient", reason, metric)
    value = float(mine[0][metric])
    if math.isnan(value):
        reason = f"live {name} undefined on {n} matured labels (a class is missing)"
        return LiveVerdict(release.version, n, value, "insufficient", reason, metric)
    worse, fine = (">", "<=") if not higher_is_better(metric) else ("<", ">=")
    for status, key, limit in (
        ("severe", "live_severe_at", mon.live_severe_at),
        ("degraded", "live_degraded_at", mon.live_degraded_at),
    ):
        if objective.worse_than(value, limit):
            return LiveVerdict(
                release.version, n, value, status, f"live {name} {_fmt(value)} {worse} {key} {_fmt(limit)}", metric
            )
    reason = f"live {name} {_fmt(value)} {fine} live_degraded_at {_fmt(mon.live_degraded_at)}"
    return LiveVerdict(release.version, n, value, "ok", reason, metric)


@tollgate_task
def ingest_labels(ctx: Context, release: Release, path: str) -> dict[str, int]:
    """Read a labels file (checked against the release's task and classes) and merge it into the model's label
    store (idempotent)."""
    store = ctx.paths.model_labels(ctx.config.project.registered_model)
    labels = read_labels(Path(path), release.config.dataset.id, release.objective)
    changed, total = ingest(store, labels)
    return {"changed": changed, "total": total}


@dataclass(frozen=True)
class JoinPlan:
    """A backfill's label join: the log parts (joined a few at a time by `join_parts`, in process or on a Dask worker),
    the label store, the time labels must have matured by, and the windowing of the metrics."""

    parts: list[str]
    store: str
    as_of: float
    chunk_rows: int
    windowing: Windowing


@tollgate_task
def plan_live_metrics(
    ctx: Context,
    as_of: float | None,
    by: str = "prediction-time",
    every: str | float | None = None,
    chunks: int | None = None,
) -> JoinPlan:
    """The log parts to join (sealed segments converted first; none while no label is stored) and the windowing."""
    from tollgate.predlog import compact, configure_remote, log_parts

    windowing = Windowing(by, parse_every(every), chunks)
    model = ctx.config.project.registered_model
    log_dir, store = ctx.paths.model_log(model), ctx.paths.model_labels(model) / STORE
    configure_remote(log_dir, ctx.config.serving.log_uri, ctx.config.servers.s3_endpoint_url, model)
    compact(log_dir)
    parts = [str(p) for p in log_parts(log_dir)] if store.exists() else []
    when = time.time() if as_of is None else as_of
    return JoinPlan(parts, str(store), when, ctx.config.compute.chunk_rows, windowing)


@tollgate_task
def join_parts(plan: JoinPlan, first: int, last: int) -> pd.DataFrame:
    """The labelled rows of the plan's parts first..last-1 (each read `chunk_rows` rows at a time): only they stay
    in memory."""
    from tollgate.predlog import as_part, part_frames

    labels = pd.read_parquet(plan.store)
    parts = range(first, last)
    return join_log_frames(
        (f for i in parts for f in part_frames(as_part(plan.parts[i]), chunk_rows=plan.chunk_rows)), labels, plan.as_of
    )


@tollgate_task
def merge_live_metrics(plan: JoinPlan, release: Release, joined: list[pd.DataFrame]) -> LiveMetrics:
    """Live metrics over the parts' labelled rows for every version and role in the log (champion, canary, shadow),
    under the release's objective."""
    return live_metrics(merge_joined(joined), release.objective, release.config.dataset, plan.windowing)


@tollgate_task
def judge_live_performance(rows: list[dict[str, Any]], release: Release) -> LiveVerdict:
    """The Production version's live verdict under its own release's thresholds."""
    return judge(rows, release)


def labels_from_period(frame: pd.DataFrame, cfg: TollgateConfig, delay_days: float | None = None) -> pd.DataFrame:
    """A labels file for a generated period: entity id, label, and label_time = event time + the label delay."""
    delay = cfg.dataset.label_delay_days if delay_days is None else delay_days
    when = pd.to_datetime(frame[cfg.dataset.timestamp]) + pd.to_timedelta(delay, unit="D")
    return pd.DataFrame(
        {
            cfg.dataset.id: frame[cfg.dataset.id].astype(str),
            "label": frame[cfg.dataset.target],
            "label_time": when.dt.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
