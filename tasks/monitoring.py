"""Monitoring stage: the drift reference profile of a release (computed at training time, read at check time)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tollgate.config import FeaturesConfig, MonitoringConfig, TollgateConfig
from tollgate.release import Release, load_release

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _numeric_profile(values: pd.Series, bins: int) -> dict[str, Any]:
    x = pd.to_numeric(values, errors="coerce").astype("float64")
    present = x.dropna().to_numpy()
    if len(present) == 0:
        return {"kind": "numeric", "null_fraction": 1.0, "edges": [], "proportions": [], "quantiles": {}}
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {
        "kind": "numeric",
        "null_fraction": float(x.isna().mean()),
        "edges": [float(e) for e in edges],  # interior edges; bin i is (edges[i-1], edges[i]]
        "proportions": [float(c) for c in counts / counts.sum()],
        "quantiles": {str(q): float(np.quantile(present, q)) for q in QUANTILES},
        "mean": float(present.mean()),
        "std": float(present.std()),
        "n": len(x),
    }


def _categorical_profile(values: pd.Series) -> dict[str, Any]:
    shares = values.astype("string").value_counts(normalize=True, dropna=True)
    return {
        "kind": "categorical",
        "null_fraction": float(values.isna().mean()),
        "proportions": {str(k): float(v) for k, v in sorted(shares.items())},
        "n": len(values),
    }


def _features_profile(frame: pd.DataFrame, features: FeaturesConfig, bins: int) -> dict[str, Any]:
    out = {col: _numeric_profile(frame[col], bins) for col in features.numeric}
    out.update({col: _categorical_profile(frame[col]) for col in [*features.categorical, *features.boolean]})
    return out


def reference_profile(
    frame: pd.DataFrame,
    features: FeaturesConfig,
    scores: np.ndarray,
    bins: int,
    holdout: pd.DataFrame | None = None,
    segments: list[str] | None = None,
    min_rows: int = 1,
) -> dict[str, Any]:
    """Per-feature binned distributions and quantiles and the prediction-score distribution (scores of the
    holdout rows), overall and for every segment value with at least `min_rows` rows."""
    profile: dict[str, Any] = {
        "rows": len(frame),
        "features": _features_profile(frame, features, bins),
        "prediction": _numeric_profile(pd.Series(scores), bins),
        "segments": {},
    }
    for col in segments or []:
        for value, part in frame.groupby(col, observed=True):
            if len(part) < min_rows:
                continue
            seg: dict[str, Any] = {"rows": len(part), "features": _features_profile(part, features, bins)}
            if holdout is not None:
                mask = (holdout[col] == value).to_numpy()
                seg["prediction"] = _numeric_profile(pd.Series(scores[mask]), bins)
            profile["segments"].setdefault(col, {})[str(value)] = seg
    return profile


@task(name="profile_reference", cache_policy=NO_CACHE)
def profile_reference(
    frame: pd.DataFrame, holdout: pd.DataFrame, scores: np.ndarray, cfg: TollgateConfig
) -> dict[str, Any]:
    """The drift reference profile of the training data and holdout scores, overall and per segment."""
    return reference_profile(
        frame,
        cfg.features,
        scores,
        cfg.monitoring.reference_bins,
        holdout,
        cfg.dataset.segments,
        cfg.gates.min_segment_size,
    )


# -- drift: streaming statistics against the reference profile --------------------------------------------
def psi_from_proportions(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two binned distributions (empty bins floored at 1e-4)."""
    e, a = (
        np.clip(np.asarray(expected, dtype="float64"), 1e-4, None),
        np.clip(np.asarray(actual, dtype="float64"), 1e-4, None),
    )
    return float(np.sum((a - e) * np.log(a / e)))


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
    """Input and prediction drift of a window of the prediction log."""

    version: str
    rows: int
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    drift_share: float
    detected: bool

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def rows_table(self) -> list[dict[str, Any]]:
        items = [*self.features, *([self.prediction] if self.prediction else [])]
        return [{**asdict(f), "statistic": round(f.statistic, 4)} for f in items]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rows": self.rows,
            "drift_share": self.drift_share,
            "detected": self.detected,
            "drifted": self.drifted,
            "features": [asdict(f) for f in self.features],
            "prediction": asdict(self.prediction) if self.prediction else None,
        }


class DriftAccumulator:
    """Bins a stream of log frames (columns `f.<feature>` and `score`) against a reference profile; memory is
    bounded by the number of bins and categories, not by rows."""

    def __init__(self, profile: dict[str, Any], prefix: str = "f."):
        self.profile = profile
        self.prefix = prefix
        self.rows = 0
        self.nulls: Counter[str] = Counter()
        self.bins: dict[str, np.ndarray] = {}
        self.cats: dict[str, Counter[str]] = {}
        for name, spec in profile["features"].items():
            if spec["kind"] == "numeric":
                self.bins[name] = np.zeros(len(spec["edges"]) + 1, dtype="int64")
            else:
                self.cats[name] = Counter()
        self.bins["__score__"] = np.zeros(len(profile["prediction"]["edges"]) + 1, dtype="int64")

    def _edges(self, name: str) -> np.ndarray:
        spec = self.profile["prediction"] if name == "__score__" else self.profile["features"][name]
        return np.asarray(spec["edges"], dtype="float64")

    def add(self, frame: pd.DataFrame) -> None:
        """Accumulate one frame."""
        self.rows += len(frame)
        for name, counts in self.bins.items():
            col = "score" if name == "__score__" else f"{self.prefix}{name}"
            if col not in frame.columns:
                self.nulls[name] += len(frame)
                continue
            x = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype="float64")
            present = x[~np.isnan(x)]
            self.nulls[name] += len(x) - len(present)
            counts += np.bincount(np.searchsorted(self._edges(name), present, side="right"), minlength=len(counts))
        for name, counter in self.cats.items():
            col = f"{self.prefix}{name}"
            if col not in frame.columns:
                self.nulls[name] += len(frame)
                continue
            values = frame[col]
            self.nulls[name] += int(values.isna().sum())
            counter.update(values.dropna().astype("string").value_counts().to_dict())

    def _numeric(self, name: str, counts: np.ndarray, spec: dict[str, Any], mon: MonitoringConfig) -> FeatureDrift:
        ref = np.asarray(spec["proportions"], dtype="float64")
        total = counts.sum()
        cur = counts / total if total else np.zeros_like(ref)
        if mon.numeric_method == "psi":
            stat, threshold, drifted = psi_from_proportions(ref, cur), mon.psi_threshold, False
            drifted = bool(total) and stat >= threshold
        else:  # binned Kolmogorov-Smirnov: D over the reference bin edges, asymptotic p-value
            from scipy.special import kolmogorov

            d = float(np.max(np.abs(np.cumsum(ref) - np.cumsum(cur)))) if total else 0.0
            n, m = max(int(spec.get("n", 0)), 1), max(int(total), 1)
            stat, threshold = float(kolmogorov(d * np.sqrt(n * m / (n + m)))), mon.ks_pvalue
            drifted = bool(total) and stat < threshold
        nulls = self.nulls[name]
        return FeatureDrift(
            name,
            "numeric",
            mon.numeric_method,
            stat,
            threshold,
            drifted,
            self.rows,
            nulls / max(self.rows, 1),
            float(spec["null_fraction"]),
        )

    def _categorical(self, name: str, spec: dict[str, Any], mon: MonitoringConfig) -> FeatureDrift:
        from scipy.spatial.distance import jensenshannon

        counter = self.cats[name]
        keys = sorted(set(spec["proportions"]) | set(counter))
        ref = np.array([spec["proportions"].get(k, 0.0) for k in keys])
        total = sum(counter.values())
        cur = np.array([counter.get(k, 0) / total if total else 0.0 for k in keys])
        stat = float(jensenshannon(ref, cur)) if total else 0.0
        return FeatureDrift(
            name,
            "categorical",
            "jensenshannon",
            stat,
            mon.categorical_threshold,
            bool(total) and stat >= mon.categorical_threshold,
            self.rows,
            self.nulls[name] / max(self.rows, 1),
            float(spec["null_fraction"]),
        )

    def report(self, version: str, mon: MonitoringConfig) -> DriftReport:
        """Per-feature and prediction drift with the release's thresholds."""
        features = []
        for name, spec in self.profile["features"].items():
            if spec["kind"] == "numeric":
                features.append(self._numeric(name, self.bins[name], spec, mon))
            else:
                features.append(self._categorical(name, spec, mon))
        pred = (
            self._numeric("__score__", self.bins["__score__"], self.profile["prediction"], mon) if self.rows else None
        )
        if pred is not None:
            pred = FeatureDrift(
                "prediction",
                "prediction",
                pred.method,
                pred.statistic,
                pred.threshold,
                pred.drifted,
                pred.rows,
                pred.null_fraction,
                0.0,
            )
        share = sum(f.drifted for f in features) / max(len(features), 1)
        return DriftReport(
            version,
            self.rows,
            features,
            pred,
            share,
            self.rows > 0 and (share >= mon.drift_share_threshold or bool(pred and pred.drifted)),
        )


# -- drift check tasks -------------------------------------------------------------------------------------
@task(name="load_production_release", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_production_release(cfg: TollgateConfig, ledger_path: str) -> Release:
    """The Production release with its own config and reference profile (not the working tree's)."""
    from pathlib import Path

    from tollgate.registry import Registry

    registry = Registry(cfg.servers.mlflow_url, cfg.project.registered_model, Path(ledger_path))
    release = load_release(cfg, registry, stage="Production")
    release.file("reference_profile.json")
    return release


def drift_of_log(
    frames: Any, release: Release, sample_rows: int, seed: int = 0
) -> tuple[DriftReport, dict[str, DriftReport], pd.DataFrame]:
    """Stream log frames (champion answers of the Production version) through the overall and per-segment
    accumulators; also keep a bounded uniform sample (reservoir by random keys) for the Evidently report."""
    mon = release.config.monitoring
    overall = DriftAccumulator(release.profile)
    per_segment: dict[tuple[str, str], DriftAccumulator] = {}
    for col, values in release.profile.get("segments", {}).items():
        for value, seg in values.items():
            if "prediction" in seg:
                per_segment[(col, value)] = DriftAccumulator(seg)
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
        sample = pd.concat([sample, keyed]).nsmallest(sample_rows, "_key")
    reports = {
        f"{col}={value}": acc.report(release.version, mon) for (col, value), acc in per_segment.items() if acc.rows
    }
    return overall.report(release.version, mon), reports, sample.drop(columns="_key", errors="ignore")


@task(name="compute_drift", cache_policy=NO_CACHE)
def compute_drift(
    log_dir: str, release: Release, since: float
) -> tuple[DriftReport, dict[str, DriftReport], pd.DataFrame]:
    """Drift of the log window since `since` against the release's reference profile (streamed)."""
    from pathlib import Path

    from tollgate.predlog import compact, iter_log_frames

    compact(Path(log_dir))
    return drift_of_log(iter_log_frames(Path(log_dir), since), release, release.config.monitoring.report_sample_rows)


def evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, cfg: TollgateConfig, html_path: str | None
) -> dict[str, float]:
    """Evidently's DataDriftPreset with the release's methods and thresholds; per-column drift statistic."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    feats, mon = cfg.features, cfg.monitoring
    cats = [*feats.categorical, *feats.boolean]
    ref, cur = reference[feats.all].copy(), current[feats.all].copy()
    for col in feats.boolean:  # Evidently treats bools as numbers; as categories they match the profile
        ref[col], cur[col] = ref[col].astype("string"), cur[col].astype("string")
    definition = DataDefinition(numerical_columns=feats.numeric, categorical_columns=cats)
    num_threshold = mon.psi_threshold if mon.numeric_method == "psi" else mon.ks_pvalue
    preset = DataDriftPreset(
        num_method=mon.numeric_method,
        num_threshold=num_threshold,
        cat_method="jensenshannon",
        cat_threshold=mon.categorical_threshold,
    )
    snapshot = Report([preset]).run(
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
        current_data=Dataset.from_pandas(cur, data_definition=definition),
    )
    if html_path:
        snapshot.save_html(html_path)
    out = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith("ValueDrift"):
            out[str(config["column"])] = float(metric["value"])
    return out


def evidently_verdicts(stats: dict[str, float], cfg: TollgateConfig) -> set[str]:
    """Columns Evidently calls drifted (PSI/JS above threshold, or a KS p-value below it)."""
    mon, cats = cfg.monitoring, {*cfg.features.categorical, *cfg.features.boolean}
    out = set()
    for col, value in stats.items():
        if col in cats:
            drifted = value >= mon.categorical_threshold
        else:
            drifted = value >= mon.psi_threshold if mon.numeric_method == "psi" else value < mon.ks_pvalue
        if drifted:
            out.add(col)
    return out


@task(name="evidently_report", retries=1, cache_policy=NO_CACHE)
def evidently_report(release: Release, sample: pd.DataFrame, html_path: str) -> dict[str, float]:
    """Evidently's report on a bounded sample of the window vs the release's reference sample (HTML saved)."""
    import tempfile

    import mlflow

    if sample.empty:
        return {}
    mlflow.set_tracking_uri(release.config.servers.mlflow_url)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=release.run_id, artifact_path="release/reference_sample.parquet", dst_path=tmp
        )
        reference = pd.read_parquet(local)
    current = sample[[f"f.{c}" for c in release.config.features.all]]
    current.columns = release.config.features.all
    return evidently_drift(reference, current, release.config, html_path)


@task(name="record_drift", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_drift(
    release: Release,
    overall: DriftReport,
    segments: dict[str, DriftReport],
    evidently: dict[str, float],
    html_path: str,
    window_hours: float,
) -> str:
    """A monitoring run in MLflow (metrics, the Evidently HTML, the JSON report) and Prefect artifacts."""
    import json
    import tempfile
    from pathlib import Path

    import mlflow
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.tracking import artifact_key

    cfg = release.config
    mlflow.set_tracking_uri(cfg.servers.mlflow_url)
    experiment = mlflow.set_experiment(f"{cfg.project.name}-monitoring")
    body = {
        "overall": overall.to_dict(),
        "segments": {k: v.to_dict() for k, v in segments.items()},
        "evidently": evidently,
        "window_hours": window_hours,
    }
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"drift-v{release.version}") as run:
        mlflow.set_tags(
            {
                "tollgate.monitor": "drift",
                "tollgate.model_version": release.version,
                "tollgate.release_run_id": release.run_id,
                "tollgate.drift_detected": str(overall.detected).lower(),
            }
        )
        metrics = {"rows": float(overall.rows), "drift_share": overall.drift_share}
        metrics.update({f"drift.{f.feature}": f.statistic for f in overall.features})
        metrics.update({f"null_fraction.{f.feature}": f.null_fraction for f in overall.features})
        if overall.prediction:
            metrics["drift.prediction"] = overall.prediction.statistic
        metrics.update({f"segment_drift_share.{k.replace('=', '.')}": v.drift_share for k, v in segments.items()})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "drift.json").write_text(json.dumps(body, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / "drift.json"), "monitoring")
        if Path(html_path).exists():
            mlflow.log_artifact(html_path, "monitoring")
        run_id = str(run.info.run_id)
    create_table_artifact(
        key=artifact_key("drift", cfg.project.registered_model),
        table=overall.rows_table(),
        description=f"Drift of v{release.version}: {'DETECTED' if overall.detected else 'none'}; "
        f"share {overall.drift_share:.0%} over {overall.rows} rows",
    )
    flagged = [k for k, v in segments.items() if v.detected]
    create_markdown_artifact(
        key=artifact_key("drift-report", cfg.project.registered_model),
        markdown=f"### Drift check of v{release.version}\n\n- rows: {overall.rows}\n- drifted features: "
        f"{', '.join(overall.drifted) or 'none'}\n- segments with drift: {', '.join(flagged) or 'none'}\n"
        f"- Evidently report: `{html_path}` (also in MLflow run `{run_id}`, folder monitoring/)\n",
    )
    return run_id


@task(name="alert_on_drift", cache_policy=NO_CACHE)
def alert_on_drift(release: Release, overall: DriftReport, segments: dict[str, DriftReport], run_id: str) -> bool:
    """Emit tollgate.drift.detected (and the webhook) when the window or any segment drifted; returns whether."""
    from tasks.alerts import raise_alert

    flagged = {
        k: v.drifted + (["prediction"] if v.prediction and v.prediction.drifted else [])
        for k, v in segments.items()
        if v.detected
    }
    if not overall.detected and not flagged:
        return False
    cfg = release.config
    text = (
        f"Drift on {cfg.project.registered_model} v{release.version}: features {overall.drifted or 'none'}"
        f"{', prediction' if overall.prediction and overall.prediction.drifted else ''}; segments {list(flagged) or 'none'}"
    )
    raise_alert.fn(
        "tollgate.drift.detected",
        cfg.project.registered_model,
        text,
        {
            "version": release.version,
            "drifted": overall.drifted,
            "drift_share": overall.drift_share,
            "segments": flagged,
            "monitoring_run_id": run_id,
            "rows": overall.rows,
        },
        cfg.alerts.webhook_url,
    )
    return True
