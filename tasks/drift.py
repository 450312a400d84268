"""Drift stage: a window of the prediction log streamed through accumulators against the Production release's
reference profile, overall and per segment. Memory is bounded by bins and categories, not by rows; the
statistics themselves are the pure functions of tollgate.stats.

A window (`LogWindow`) is a time range on one of two clocks: `prediction-time` (the log's `ts`, when the
gateway answered) or `event-time` (the log's `event_ts`, the record's own timestamp as the request carried
it). Rows without an event time are left out of an event-time window and counted as `excluded`."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig, MonitoringConfig
from tollgate.context import Context
from tollgate.segments import segment_groups
from tollgate.stats import bin_counts, jensen_shannon, ks_pvalue, ks_statistic, proportions, psi_from_proportions

if TYPE_CHECKING:  # the release module loads MLflow: a Dask worker running drift_of_parts never needs it
    from tollgate.release import Release

SCORE = "__score__"  # the accumulator's name for the prediction column (score, or the predicted class)
CLOCKS = {"prediction-time": "ts", "event-time": "event_ts"}  # a window's clock -> the log column it reads


class WindowError(ValueError):
    """A window bound or clock that cannot be used; the message names it."""


def to_epoch(value: float | int | str | datetime | None) -> float | None:
    """Epoch seconds (UTC) of a bound given as epoch seconds (number or numeric text), an ISO 8601 text
    (naive means UTC) or a datetime; None stays None. WindowError when it is neither."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise WindowError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise WindowError(f"not a time: {value!r}")
        return float(value)
    if isinstance(value, datetime):
        when = value
    else:
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise WindowError(
                f"not a time: {value!r} (use ISO 8601, e.g. 2026-01-31T12:00, or epoch seconds)"
            ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def iso(t: float | None) -> str:
    """An epoch second as ISO 8601 UTC text to the second ('' for None)."""
    return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock_of(by: str) -> str:
    """The canonical clock name ('prediction-time' | 'event-time'); 'prediction'/'event' are accepted too."""
    name = by if by.endswith("-time") else f"{by}-time"
    if name not in CLOCKS:
        raise WindowError(f"unknown clock {by!r}: use prediction-time or event-time")
    return name


def event_times(frame: pd.DataFrame) -> np.ndarray:
    """The frame's event time per row as float epoch seconds (NaN where the request carried none)."""
    if "event_ts" not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame["event_ts"], errors="coerce").to_numpy(dtype="float64")


def times_of(frame: pd.DataFrame, by: str) -> np.ndarray:
    """Each row's time on clock `by` (float epoch seconds, NaN where unknown)."""
    if clock_of(by) == "event-time":
        return event_times(frame)
    return pd.to_numeric(frame["ts"], errors="coerce").to_numpy(dtype="float64")


@dataclass(frozen=True)
class LogWindow:
    """[start, end) on one clock; either bound may be open (None)."""

    start: float | None
    end: float | None
    by: str = "prediction-time"

    def __post_init__(self) -> None:
        object.__setattr__(self, "by", clock_of(self.by))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise WindowError(f"the window ends ({iso(self.end)}) at or before it starts ({iso(self.start)})")

    def select(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """(the rows of `frame` inside the window, how many rows had no time on this clock and were excluded)."""
        t = times_of(frame, self.by)
        known = ~np.isnan(t)
        inside = known.copy()
        if self.start is not None:
            inside &= t >= self.start
        if self.end is not None:
            inside &= t < self.end
        return frame[inside], int((~known).sum())

    def stream(self, frames: Iterable[pd.DataFrame], excluded: Counter[str]) -> Iterator[pd.DataFrame]:
        """The non-empty windowed part of each frame; rows without a time are added to excluded['rows']."""
        for frame in frames:
            part, missing = self.select(frame)
            excluded["rows"] += missing
            if len(part):
                yield part

    @property
    def label(self) -> str:
        """'<start>..<end>' in ISO 8601 UTC (an open bound is empty), or 'all' when both are open."""
        return "all" if self.start is None and self.end is None else f"{iso(self.start)}..{iso(self.end)}"

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "by": self.by, "label": self.label}


def drift_window(
    release: Release,
    window_hours: float | None,
    since: float | str | None,
    until: float | str | None,
    by: str,
    now: float,
) -> LogWindow:
    """The window of a drift check: [since, until or now) when `since` is given, else the `window_hours`
    (default: the release's monitoring.drift_window_hours) before `until` (default now), on clock `by`."""
    end = to_epoch(until)
    end = now if end is None else end
    start = to_epoch(since)
    if start is None:
        start = end - (window_hours or release.config.monitoring.drift_window_hours) * 3600
    return LogWindow(start, end, by)


def class_text(values: pd.Series) -> pd.Series:
    """Predicted classes as text, the way the reference profile names them ("2", not "2.0"); nulls dropped."""
    values = values.dropna()
    numeric = pd.to_numeric(values, errors="coerce")
    whole = numeric.notna() & (numeric == numeric.round())
    text = values.astype("string")
    text[whole] = numeric[whole].astype("int64").astype("string")
    return text


@dataclass(frozen=True)
class FeatureDrift:
    """One column's drift statistic against the reference, with its verdict and data-quality counts."""

    feature: str
    kind: str
    method: str
    statistic: float
    threshold: float
    drifted: bool
    rows: int
    null_fraction: float
    reference_null_fraction: float


@dataclass(frozen=True)
class DriftReport:
    """Input and prediction drift of one scope (the whole window or one segment) of the prediction log."""

    version: str
    rows: int
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    drift_share: float
    detected: bool
    share_threshold: float = math.nan

    @property
    def drifted(self) -> list[str]:
        """Names of the drifted input features."""
        return [f.feature for f in self.features if f.drifted]

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.prediction and self.prediction.drifted)

    @property
    def what_drifted(self) -> list[str]:
        """The drifted input features, then 'prediction' when the prediction drifted."""
        return self.drifted + (["prediction"] if self.prediction_drifted else [])

    def rows_table(self) -> list[dict[str, Any]]:
        """One row per feature (and the prediction) for a Prefect table artifact."""
        items = [*self.features, *([self.prediction] if self.prediction else [])]
        return [{**asdict(f), "statistic": round(f.statistic, 4)} for f in items]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view."""
        return {
            "version": self.version,
            "rows": self.rows,
            "drift_share": self.drift_share,
            "detected": self.detected,
            "drifted": self.drifted,
            "features": [asdict(f) for f in self.features],
            "prediction": asdict(self.prediction) if self.prediction else None,
        }


@dataclass(frozen=True)
class DriftCheck:
    """The drift of a window overall and per segment, with the one `detected` verdict (and its `headline`)
    that the alert, the recorded signal, every printer and `tollgate drift --fail-on-drift` all use."""

    overall: DriftReport
    segments: dict[str, DriftReport]
    window: LogWindow
    excluded: int = 0  # rows of the version left out: no event time on an event-time window

    @property
    def flagged_segments(self) -> dict[str, list[str]]:
        """Segments (col=value) that drifted, with what drifted in each."""
        return {k: v.what_drifted for k, v in self.segments.items() if v.detected}

    @property
    def detected(self) -> bool:
        """Drift in the whole window or in any segment."""
        return self.overall.detected or bool(self.flagged_segments)

    @property
    def headline(self) -> str:
        """One line that agrees with `detected` and names the scopes that drifted, e.g.
        "drift detected: segment tier=gold (support_calls_90d); overall: no"."""
        overall, flagged = self.overall, self.flagged_segments
        if not self.detected:
            text = f"no drift (overall and {len(self.segments)} segment(s))"
            if overall.what_drifted:
                text += (
                    f"; above their own thresholds but under the drift share: {', '.join(overall.what_drifted)} "
                    f"(share {overall.drift_share:.0%})"
                )
            return text
        scopes = []
        if overall.detected:
            scopes.append(f"overall ({', '.join(overall.what_drifted) or 'drift share'})")
        if flagged:
            noun = "segment" if len(flagged) == 1 else "segments"
            scopes.append(f"{noun} " + ", ".join(f"{k} ({', '.join(v) or 'drift share'})" for k, v in flagged.items()))
        return "drift detected: " + "; ".join(scopes) + ("" if overall.detected else "; overall: no")

    def summary(self) -> dict[str, Any]:
        """The verdict a flow returns and a command prints."""
        return {
            "version": self.overall.version,
            "rows": self.overall.rows,
            "detected": self.detected,
            "headline": self.headline,
            "overall_detected": self.overall.detected,
            "drifted": self.overall.drifted,
            "prediction_drifted": self.overall.prediction_drifted,
            "drift_share": self.overall.drift_share,
            "segments": list(self.flagged_segments),
            "segment_drift": self.flagged_segments,
            "window": {**self.window.to_dict(), "excluded": self.excluded},
        }


class DriftAccumulator:
    """Bins a stream of log frames (columns `f.<feature>`, `score`, `decision`) against a reference profile.
    The prediction is the score when the profile's prediction is numeric (binary, regression) and the
    predicted class (the log's `decision` as text) when it is categorical (multiclass)."""

    def __init__(self, profile: dict[str, Any], prefix: str = "f."):
        self.profile = profile
        self.prefix = prefix
        self.rows = 0
        self.nulls: Counter[str] = Counter()
        self.edges: dict[str, np.ndarray] = {}
        self.cats: dict[str, Counter[str]] = {}
        self.columns: dict[str, str] = {SCORE: "score"}
        if self._spec(SCORE).get("kind") == "categorical":
            self.cats[SCORE] = Counter()
            self.columns[SCORE] = "decision"
        else:
            self.edges[SCORE] = np.asarray(profile["prediction"]["edges"], dtype="float64")
        for name, spec in profile["features"].items():
            self.columns[name] = f"{prefix}{name}"
            if spec["kind"] == "numeric":
                self.edges[name] = np.asarray(spec["edges"], dtype="float64")
            else:
                self.cats[name] = Counter()
        self.bins = {name: np.zeros(len(edges) + 1, dtype="int64") for name, edges in self.edges.items()}

    def _spec(self, name: str) -> dict[str, Any]:
        return dict(self.profile["prediction"] if name == SCORE else self.profile["features"][name])

    def add(self, frame: pd.DataFrame) -> None:
        """Accumulate one frame."""
        self.rows += len(frame)
        for name, counts in self.bins.items():
            col = self.columns[name]
            if col not in frame.columns:
                self.nulls[name] += len(frame)
                continue
            x = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype="float64")
            present = x[~np.isnan(x)]
            self.nulls[name] += len(x) - len(present)
            counts += bin_counts(self.edges[name], present)
        for name, counter in self.cats.items():
            col = self.columns[name]
            if col not in frame.columns:
                self.nulls[name] += len(frame)
                continue
            values = frame[col]
            self.nulls[name] += int(values.isna().sum())
            text = class_text(values) if name == SCORE else values.dropna().astype("string")
            counter.update(text.value_counts().to_dict())

    def merge(self, other: DriftAccumulator) -> None:
        """Add the counts of another accumulator of the same profile."""
        self.rows += other.rows
        self.nulls.update(other.nulls)
        for name, counts in self.bins.items():
            counts += other.bins[name]
        for name, counter in self.cats.items():
            counter.update(other.cats[name])

    def _result(self, name: str, kind: str, method: str, stat: float, threshold: float, drifted: bool) -> FeatureDrift:
        spec = self._spec(name)
        return FeatureDrift(
            "prediction" if name == SCORE else name,
            "prediction" if name == SCORE else kind,
            method,
            stat,
            threshold,
            drifted,
            self.rows,
            self.nulls[name] / max(self.rows, 1),
            float(spec.get("null_fraction", 0.0)) if name != SCORE else 0.0,
        )

    def _numeric(self, name: str, mon: MonitoringConfig) -> FeatureDrift:
        spec = self._spec(name)
        counts, ref = self.bins[name], np.asarray(spec["proportions"], dtype="float64")
        seen = int(counts.sum())
        cur = proportions(counts)
        if mon.numeric_method == "psi":
            stat = psi_from_proportions(ref, cur) if seen else 0.0
            return self._result(name, "numeric", "psi", stat, mon.psi_threshold, seen > 0 and stat >= mon.psi_threshold)
        pvalue = ks_pvalue(ks_statistic(ref, cur), spec.get("n", 0), seen) if seen else 1.0
        return self._result(name, "numeric", "ks", pvalue, mon.ks_pvalue, seen > 0 and pvalue < mon.ks_pvalue)

    def _categorical(self, name: str, mon: MonitoringConfig) -> FeatureDrift:
        reference: dict[str, float] = self._spec(name)["proportions"]
        counter = self.cats[name]
        keys = sorted(set(reference) | set(counter))
        ref = np.array([reference.get(k, 0.0) for k in keys])
        cur = np.array([counter.get(k, 0) for k in keys], dtype="float64")
        stat = jensen_shannon(ref, cur)
        threshold = mon.categorical_threshold
        return self._result(name, "categorical", "jensenshannon", stat, threshold, cur.sum() > 0 and stat >= threshold)

    def _measure(self, name: str, mon: MonitoringConfig) -> FeatureDrift:
        return self._categorical(name, mon) if name in self.cats else self._numeric(name, mon)

    def report(self, version: str, mon: MonitoringConfig) -> DriftReport:
        """Per-feature and prediction drift with the release's thresholds."""
        features = [self._measure(name, mon) for name in self.profile["features"]]
        pred = self._measure(SCORE, mon) if self.rows else None
        share = sum(f.drifted for f in features) / max(len(features), 1)
        detected = self.rows > 0 and (share >= mon.drift_share_threshold or bool(pred and pred.drifted))
        return DriftReport(version, self.rows, features, pred, share, detected, mon.drift_share_threshold)


@dataclass(frozen=True)
class DriftScope:
    """What a drift check measures, as plain values a Dask worker can take: the version whose answers count, its
    reference profile, the dataset (segments) and monitoring settings of its release, and the window."""

    version: str
    profile: dict[str, Any]
    dataset: DatasetConfig
    monitoring: MonitoringConfig
    window: LogWindow

    @property
    def columns(self) -> list[str]:
        """The log columns a check reads: who answered and when, the prediction, the profiled features and the
        segment columns."""
        names = [*self.profile["features"], *self.dataset.segments]
        return ["role", "model_version", "ts", "event_ts", "score", "decision", *(f"f.{n}" for n in names)]

    @classmethod
    def of(cls, release: Release, window: LogWindow) -> DriftScope:
        cfg = release.config
        return cls(release.version, release.profile, cfg.dataset, cfg.monitoring, window)


@dataclass
class DriftPartial:
    """The accumulators of some log frames (overall and per segment), the report sample drawn from them (the
    rows with the smallest random keys) and how many rows the window excluded. Partials of disjoint frames merge
    exactly: counts add, and the merged sample is the one a single pass would have kept."""

    overall: DriftAccumulator
    segments: dict[tuple[str, str], DriftAccumulator]
    sample: pd.DataFrame
    excluded: int = 0

    @classmethod
    def empty(cls, scope: DriftScope) -> DriftPartial:
        segments = {
            (col, value): DriftAccumulator(seg)
            for col, values in scope.profile.get("segments", {}).items()
            for value, seg in values.items()
            if "prediction" in seg
        }
        return cls(DriftAccumulator(scope.profile), segments, pd.DataFrame())

    def add(self, frame: pd.DataFrame, scope: DriftScope, rng: np.random.Generator) -> None:
        """Accumulate one frame of the version's in-window rows."""
        self.overall.add(frame)
        _add_segments(frame, scope.dataset, self.segments)
        self._keep(frame, rng.random(len(frame)), scope.monitoring.report_sample_rows)

    def _keep(self, frame: pd.DataFrame, keys: np.ndarray, rows: int) -> None:
        """Keep the `rows` rows with the smallest keys of the sample and `frame` (keyed by `keys`), copying only
        rows that can enter: under the full sample's largest key, and at most `rows` of the frame."""
        if len(self.sample) >= rows:
            under = keys < self.sample["_key"].to_numpy().max()
            frame, keys = frame[under], keys[under]
        if len(keys) > rows:
            smallest = np.sort(np.argpartition(keys, rows - 1)[:rows])
            frame, keys = frame.iloc[smallest], keys[smallest]
        if not len(keys):
            return
        keyed = frame.assign(_key=keys)
        self.sample = keyed if self.sample.empty else pd.concat([self.sample, keyed])
        self.sample = self.sample.nsmallest(rows, "_key")

    def merge(self, other: DriftPartial, scope: DriftScope) -> None:
        """Add another partial's counts, sample and exclusions to this one."""
        self.overall.merge(other.overall)
        for key, acc in self.segments.items():
            acc.merge(other.segments[key])
        if not other.sample.empty:
            sample = other.sample
            self._keep(sample.drop(columns="_key"), sample["_key"].to_numpy(), scope.monitoring.report_sample_rows)
        self.excluded += other.excluded

    def finish(self, scope: DriftScope) -> tuple[DriftCheck, pd.DataFrame]:
        """The drift check of everything accumulated, and the report sample."""
        mon = scope.monitoring
        segments = {
            f"{col}={value}": acc.report(scope.version, mon) for (col, value), acc in self.segments.items() if acc.rows
        }
        check = DriftCheck(self.overall.report(scope.version, mon), segments, scope.window, self.excluded)
        return check, self.sample.drop(columns="_key", errors="ignore")


def _add_segments(frame: pd.DataFrame, ds: DatasetConfig, per_segment: dict[tuple[str, str], DriftAccumulator]) -> None:
    groups = segment_groups(frame, ds, prefix="f.")
    for (col, value), acc in per_segment.items():
        rows = groups.get(col, {}).get(value)
        if rows is not None and len(rows):
            acc.add(frame.iloc[rows])


SERVED = ("champion", "batch")  # what a version answered: online, and in batch runs (tasks/batch.py)


def drift_partial(frames: Iterable[pd.DataFrame], scope: DriftScope, seed: int | Sequence[int] = 0) -> DriftPartial:
    """Stream log frames through a fresh partial: only the scope's version's champion and batch answers inside
    its window count; one frame is in memory at a time."""
    partial = DriftPartial.empty(scope)
    rng = np.random.default_rng(seed)
    excluded: Counter[str] = Counter()
    mine = (f[f["role"].isin(SERVED) & (f["model_version"].astype(str) == scope.version)] for f in frames)
    for frame in scope.window.stream(mine, excluded):
        partial.add(frame, scope, rng)
    partial.excluded = excluded["rows"]
    return partial


def merge_partials(partials: Sequence[DriftPartial], scope: DriftScope) -> tuple[DriftCheck, pd.DataFrame]:
    """The drift check of the merged partials (in order) and its report sample."""
    total = DriftPartial.empty(scope)
    for partial in partials:
        total.merge(partial, scope)
    return total.finish(scope)


def drift_of_log(
    frames: Iterable[pd.DataFrame], release: Release, window: LogWindow, seed: int = 0
) -> tuple[DriftCheck, pd.DataFrame]:
    """Stream log frames (the release's version's champion and batch answers inside `window`) through the overall
    and per-segment accumulators (segments grouped by tollgate.segments, as the profile was); also keep a bounded
    uniform sample (reservoir by random keys) for the Evidently report. One frame is in memory at a time."""
    scope = DriftScope.of(release, window)
    return merge_partials([drift_partial(frames, scope, seed)], scope)


@tollgate_task(idempotent_io=True)
def load_production_release(ctx: Context) -> Release:
    """The Production release with its own config and reference profile (not the working tree's)."""
    from tollgate.release import load_release

    release = load_release(ctx.config, ctx.registry, stage="Production")
    release.file("reference_profile.json")
    return release


@dataclass(frozen=True)
class DriftPlan:
    """A drift check's scope and the log parts it reads, a few at a time by `drift_of_parts` (in process or on a
    Dask worker); `floor` lets a prediction-time window skip earlier rows as they are read."""

    scope: DriftScope
    parts: list[str]
    floor: float | None
    chunk_rows: int


@tollgate_task
def plan_drift(
    ctx: Context,
    release: Release,
    window_hours: float | None,
    since: float | str | None = None,
    until: float | str | None = None,
    by: str = "prediction-time",
) -> DriftPlan:
    """The window of the check and the log parts to read (sealed segments are converted to Parquet first)."""
    from tollgate.predlog import compact, configure_remote, log_parts

    model, cfg = ctx.config.project.registered_model, ctx.config
    log_dir = ctx.paths.model_log(model)
    configure_remote(log_dir, cfg.serving.log_uri, cfg.servers.s3_endpoint_url, model)  # where sealed parts go
    compact(log_dir)
    window = drift_window(release, window_hours, since, until, by, time.time())
    # On prediction time the reader skips earlier rows itself; event time can be anything, so every row is read.
    floor = window.start if window.by == "prediction-time" else None
    parts = [str(p) for p in log_parts(log_dir)]
    return DriftPlan(DriftScope.of(release, window), parts, floor, ctx.config.compute.chunk_rows)


@tollgate_task
def drift_of_parts(plan: DriftPlan, first: int, last: int) -> DriftPartial:
    """The partial drift counts and report sample of the plan's parts first..last-1, each read `chunk_rows` rows
    at a time (a part's sample keys come from a generator seeded by its index, so any grouping of parts into
    tasks, on any runner, draws the same sample)."""
    from tollgate.predlog import as_part, part_frames

    total = DriftPartial.empty(plan.scope)
    for index in range(first, last):
        frames = part_frames(as_part(plan.parts[index]), plan.floor, plan.chunk_rows, plan.scope.columns)
        total.merge(drift_partial(frames, plan.scope, seed=(0, index)), plan.scope)
    return total


@tollgate_task
def merge_drift(plan: DriftPlan, partials: list[DriftPartial]) -> tuple[DriftCheck, pd.DataFrame]:
    """The drift check of the whole window (overall and per segment) from the parts' partials, and the report
    sample."""
    return merge_partials(partials, plan.scope)
