"""Drift stage: a window of the prediction log streamed through accumulators against the Production release's
reference profile, overall and per segment. Memory is bounded by bins and categories, not by rows; the
statistics themselves are the pure functions of tollgate.stats."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import MonitoringConfig
from tollgate.context import Context
from tollgate.release import Release, load_release
from tollgate.stats import bin_counts, jensen_shannon, ks_pvalue, ks_statistic, proportions, psi_from_proportions

SCORE = "__score__"  # the accumulator's name for the prediction score column


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

    @property
    def drifted(self) -> list[str]:
        """Names of the drifted input features."""
        return [f.feature for f in self.features if f.drifted]

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.prediction and self.prediction.drifted)

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
    """The drift of a window overall and per segment, with the one `detected` headline that the alert, the
    recorded signal and `tollgate drift --fail-on-drift` all use."""

    overall: DriftReport
    segments: dict[str, DriftReport]
    since: float
    window_hours: float

    @property
    def flagged_segments(self) -> dict[str, list[str]]:
        """Segments (col=value) that drifted, with what drifted in each."""
        return {
            k: v.drifted + (["prediction"] if v.prediction_drifted else [])
            for k, v in self.segments.items()
            if v.detected
        }

    @property
    def detected(self) -> bool:
        """Drift in the whole window or in any segment."""
        return self.overall.detected or bool(self.flagged_segments)

    def summary(self) -> dict[str, Any]:
        """The headline a flow returns and a command prints."""
        return {
            "version": self.overall.version,
            "rows": self.overall.rows,
            "detected": self.detected,
            "overall_detected": self.overall.detected,
            "drifted": self.overall.drifted,
            "prediction_drifted": self.overall.prediction_drifted,
            "drift_share": self.overall.drift_share,
            "segments": list(self.flagged_segments),
        }


class DriftAccumulator:
    """Bins a stream of log frames (columns `f.<feature>` and `score`) against a reference profile."""

    def __init__(self, profile: dict[str, Any], prefix: str = "f."):
        self.profile = profile
        self.prefix = prefix
        self.rows = 0
        self.nulls: Counter[str] = Counter()
        self.edges: dict[str, np.ndarray] = {SCORE: np.asarray(profile["prediction"]["edges"], dtype="float64")}
        self.cats: dict[str, Counter[str]] = {}
        for name, spec in profile["features"].items():
            if spec["kind"] == "numeric":
                self.edges[name] = np.asarray(spec["edges"], dtype="float64")
            else:
                self.cats[name] = Counter()
        self.bins = {name: np.zeros(len(edges) + 1, dtype="int64") for name, edges in self.edges.items()}

    def add(self, frame: pd.DataFrame) -> None:
        """Accumulate one frame."""
        self.rows += len(frame)
        for name, counts in self.bins.items():
            col = "score" if name == SCORE else f"{self.prefix}{name}"
            if col not in frame.columns:
                self.nulls[name] += len(frame)
                continue
            x = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype="float64")
            present = x[~np.isnan(x)]
            self.nulls[name] += len(x) - len(present)
            counts += bin_counts(self.edges[name], present)
        for name, counter in self.cats.items():
            col = f"{self.prefix}{name}"
            if col not in frame.columns:
                self.nulls[name] += len(frame)
                continue
            values = frame[col]
            self.nulls[name] += int(values.isna().sum())
            counter.update(values.dropna().astype("string").value_counts().to_dict())

    def _result(self, name: str, kind: str, method: str, stat: float, threshold: float, drifted: bool) -> FeatureDrift:
        spec = self.profile["prediction"] if name == SCORE else self.profile["features"][name]
        return FeatureDrift(
            "prediction" if name == SCORE else name,
            "prediction" if name == SCORE else kind,
            method,
            stat,
            threshold,
            drifted,
            self.rows,
            self.nulls[name] / max(self.rows, 1),
            0.0 if name == SCORE else float(spec["null_fraction"]),
        )

    def _numeric(self, name: str, mon: MonitoringConfig) -> FeatureDrift:
        spec = self.profile["prediction"] if name == SCORE else self.profile["features"][name]
        counts, ref = self.bins[name], np.asarray(spec["proportions"], dtype="float64")
        seen = int(counts.sum())
        cur = proportions(counts)
        if mon.numeric_method == "psi":
            stat = psi_from_proportions(ref, cur) if seen else 0.0
            return self._result(name, "numeric", "psi", stat, mon.psi_threshold, seen > 0 and stat >= mon.psi_threshold)
        pvalue = ks_pvalue(ks_statistic(ref, cur), spec.get("n", 0), seen) if seen else 1.0
        return self._result(name, "numeric", "ks", pvalue, mon.ks_pvalue, seen > 0 and pvalue < mon.ks_pvalue)

    def _categorical(self, name: str, mon: MonitoringConfig) -> FeatureDrift:
        reference: dict[str, float] = self.profile["features"][name]["proportions"]
        counter = self.cats[name]
        keys = sorted(set(reference) | set(counter))
        ref = np.array([reference.get(k, 0.0) for k in keys])
        cur = np.array([counter.get(k, 0) for k in keys], dtype="float64")
        stat = jensen_shannon(ref, cur)
        threshold = mon.categorical_threshold
        return self._result(name, "categorical", "jensenshannon", stat, threshold, cur.sum() > 0 and stat >= threshold)

    def report(self, version: str, mon: MonitoringConfig) -> DriftReport:
        """Per-feature and prediction drift with the release's thresholds."""
        features = [
            self._numeric(name, mon) if spec["kind"] == "numeric" else self._categorical(name, mon)
            for name, spec in self.profile["features"].items()
        ]
        pred = self._numeric(SCORE, mon) if self.rows else None
        share = sum(f.drifted for f in features) / max(len(features), 1)
        detected = self.rows > 0 and (share >= mon.drift_share_threshold or bool(pred and pred.drifted))
        return DriftReport(version, self.rows, features, pred, share, detected)


def drift_of_log(
    frames: Iterable[pd.DataFrame], release: Release, since: float, window_hours: float, seed: int = 0
) -> tuple[DriftCheck, pd.DataFrame]:
    """Stream log frames (champion answers of the Production version) through the overall and per-segment
    accumulators; also keep a bounded uniform sample (reservoir by random keys) for the Evidently report."""
    mon = release.config.monitoring
    overall = DriftAccumulator(release.profile)
    per_segment = {
        (col, value): DriftAccumulator(seg)
        for col, values in release.profile.get("segments", {}).items()
        for value, seg in values.items()
        if "prediction" in seg
    }
    rng = np.random.default_rng(seed)
    sample = pd.DataFrame()
    for frame in frames:
        frame = frame[(frame["role"] == "champion") & (frame["model_version"] == release.version)]
        if frame.empty:
            continue
        overall.add(frame)
        for (col, value), acc in per_segment.items():
            part = frame[frame[f"f.{col}"].astype("string") == value]
            if len(part):
                acc.add(part)
        keyed = frame.assign(_key=rng.random(len(frame)))
        sample = pd.concat([sample, keyed]).nsmallest(mon.report_sample_rows, "_key")
    segments = {
        f"{col}={value}": acc.report(release.version, mon) for (col, value), acc in per_segment.items() if acc.rows
    }
    check = DriftCheck(overall.report(release.version, mon), segments, since, window_hours)
    return check, sample.drop(columns="_key", errors="ignore")


def drift_window(release: Release, window_hours: float | None, since: float | None, now: float) -> tuple[float, float]:
    """(start epoch s, hours): from `since` when given, else the last `window_hours` (default: the release's
    monitoring.drift_window_hours)."""
    hours = window_hours or release.config.monitoring.drift_window_hours
    return (since if since is not None else now - hours * 3600), hours


@tollgate_task(idempotent_io=True)
def load_production_release(ctx: Context) -> Release:
    """The Production release with its own config and reference profile (not the working tree's)."""
    release = load_release(ctx.config, ctx.registry, stage="Production")
    release.file("reference_profile.json")
    return release


@tollgate_task
def compute_drift(
    ctx: Context, release: Release, window_hours: float | None, since: float | None
) -> tuple[DriftCheck, pd.DataFrame]:
    """Drift of the log window against the release's reference profile (streamed), and the report sample."""
    from tollgate.predlog import compact, iter_log_frames

    log_dir = ctx.paths.model_log(ctx.config.project.registered_model)
    compact(log_dir)
    start, hours = drift_window(release, window_hours, since, time.time())
    return drift_of_log(iter_log_frames(log_dir, start), release, start, hours)
