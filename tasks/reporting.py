"""Reporting stage: Evidently's drift report on a bounded sample, and each monitoring check recorded as an MLflow
run (metrics, JSON, HTML) plus Prefect artifacts. Recording creates a run, so it is never retried."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.common import tollgate_task
from tasks.drift import DriftCheck
from tasks.ground_truth import LiveMetrics, LiveVerdict
from tasks.pictures import log_drift_plots, log_live_plots
from tasks.tracking import artifact_key
from tollgate.config import TollgateConfig
from tollgate.context import Context
from tollgate.keys import key_part
from tollgate.release import Release


@dataclass(frozen=True)
class EvidentlyReport:
    """Evidently's per-column drift statistic on the sample, and where its HTML report was saved."""

    html: str
    statistics: dict[str, float]


def evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, cfg: TollgateConfig, html_path: str | None
) -> dict[str, float]:
    """Evidently's DataDriftPreset with the release's methods and thresholds; per-column drift statistic."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    feats, mon = cfg.features, cfg.monitoring
    ref, cur = reference[feats.all].copy(), current[feats.all].copy()
    for col in feats.boolean:  # Evidently treats bools as numbers; as categories they match the profile
        ref[col], cur[col] = ref[col].astype("string"), cur[col].astype("string")
    definition = DataDefinition(
        numerical_columns=feats.numeric, categorical_columns=[*feats.categorical, *feats.boolean]
    )
    preset = DataDriftPreset(
        num_method=mon.numeric_method,
        num_threshold=mon.psi_threshold if mon.numeric_method == "psi" else mon.ks_pvalue,
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


def release_reference_sample(release: Release) -> pd.DataFrame:
    """The reference rows stored with the release (what Evidently compares the window against), checked
    against their registration digest before they are read."""
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(release.local_file("reference_sample.parquet", Path(tmp)))


@tollgate_task(idempotent_io=True)
def evidently_report(ctx: Context, release: Release, sample: pd.DataFrame) -> EvidentlyReport:
    """Evidently's report on the window's sample vs the release's reference sample (HTML under reports/)."""
    html = ctx.paths.reports / f"drift-v{release.version}-{time.strftime('%Y%m%dT%H%M%S')}.html"
    if sample.empty:
        return EvidentlyReport(str(html), {})
    html.parent.mkdir(parents=True, exist_ok=True)
    current = sample[[f"f.{c}" for c in release.features]].set_axis(release.features, axis=1)
    return EvidentlyReport(
        str(html), evidently_drift(release_reference_sample(release), current, release.config, str(html))
    )


def log_monitoring_run(
    release: Release, run_name: str, tags: dict[str, str], metrics: dict[str, float], files: dict[str, Any]
) -> str:
    """One MLflow run in the project's monitoring experiment: tags, metrics, and `files` (JSON bodies by name, or
    paths of existing files) under monitoring/; returns its run id."""
    import mlflow

    cfg = release.config
    mlflow.set_tracking_uri(release.tracking_uri)
    experiment = mlflow.set_experiment(f"{cfg.project.name}-monitoring")
    with (
        mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.set_tags({"tollgate.model": release.model_name, "tollgate.model_version": release.version, **tags})
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN (no data) is not a metric
        for name, body in files.items():
            if isinstance(body, Path):
                if body.exists():
                    mlflow.log_artifact(str(body), "monitoring")
                continue
            (Path(tmp) / name).write_text(json.dumps(body, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / name), "monitoring")
        return str(run.info.run_id)


def drift_metrics(check: DriftCheck) -> dict[str, float]:
    """The drift check's numbers as MLflow metrics."""
    overall = check.overall
    metrics = {"rows": float(overall.rows), "drift_share": overall.drift_share, "detected": float(check.detected)}
    metrics.update({f"drift.{key_part(f.feature)}": f.statistic for f in overall.features})
    metrics.update({f"null_fraction.{key_part(f.feature)}": f.null_fraction for f in overall.features})
    if overall.prediction:
        metrics["drift.prediction"] = overall.prediction.statistic
    for scope, report in check.segments.items():
        column, _, value = scope.partition("=")
        metrics[f"segment_drift_share.{key_part(column)}.{key_part(value)}"] = report.drift_share
    return metrics


def store_drift(
    release: Release, check: DriftCheck, evidently: EvidentlyReport, estimated: dict[str, Any] | None = None
) -> str:
    """A monitoring run in MLflow (metrics, the Evidently HTML, the JSON report, the window's estimates) and
    Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    overall, model = check.overall, release.model_name
    body = {
        **check.summary(),
        "overall": overall.to_dict(),
        "segments": {k: v.to_dict() for k, v in check.segments.items()},
        "evidently": evidently.statistics,
    }
    tags = {"tollgate.monitor": "drift", "tollgate.release_run_id": release.run_id}
    tags["tollgate.drift_detected"] = str(check.detected).lower()
    tags["tollgate.window"] = f"{check.window.by} {check.window.label}"
    files: dict[str, Any] = {"drift.json": body, "report.html": Path(evidently.html)}
    metrics = drift_metrics(check)
    verdict = (estimated or {}).get("verdict") or {}
    if verdict.get("status") not in (None, "none"):
        name = key_part(verdict["metric"])
        metrics |= {f"estimated_{name}": verdict["value"], f"estimated_{name}_low": verdict["low"]}
        metrics |= {f"estimated_{name}_high": verdict["high"], "estimated_below_windows": verdict["consecutive"]}
        if check.window.start is not None:  # where the report's live picture places the estimate
            metrics["estimated_window_start"] = check.window.start
        tags["tollgate.estimated_status"] = verdict["status"]
    if estimated:
        files["estimate.json"] = {"verdict": verdict, "rows": estimated.get("rows", [])}
    run_id = log_monitoring_run(release, f"drift-v{release.version}", tags, metrics, files)
    log_drift_plots(release, run_id, body)
    create_table_artifact(
        key=artifact_key("drift", model),
        table=overall.rows_table(),
        description=f"Drift of v{release.version}: {check.headline}; share {overall.drift_share:.0%} over "
        f"{overall.rows} rows ({check.window.by} {check.window.label})",
    )
    create_markdown_artifact(
        key=artifact_key("drift-report", model),
        markdown=f"### Drift check of v{release.version}: {check.headline}\n\n"
        f"- window: {check.window.by} {check.window.label} ({check.excluded} rows without an event time left out)\n"
        f"- rows: {overall.rows}\n- drifted features: {', '.join(overall.drifted) or 'none'}\n"
        f"- segments with drift: {', '.join(check.flagged_segments) or 'none'}\n"
        f"- Evidently report: `{evidently.html}` (also in MLflow run `{run_id}`, folder monitoring/)\n",
    )
    return run_id


def live_metric_values(live: LiveMetrics, metric: str) -> dict[str, float]:
    """MLflow metrics of a backfill: the primary metric and the labelled count per version and role (window 'all')."""
    totals = [r for r in live.rows if r["window"] == "all" and r["scope"] == "overall"]
    metrics = {f"live_{key_part(metric)}.v{r['model_version']}.{r['role']}": r[metric] for r in totals}
    metrics |= {f"labelled.v{r['model_version']}.{r['role']}": r["n"] for r in totals}
    return metrics | {"excluded": float(live.excluded)}


def store_live_metrics(release: Release, live: LiveMetrics, verdict: LiveVerdict) -> str:
    """A monitoring run in MLflow with the live metrics, and a Prefect table artifact."""
    from prefect.artifacts import create_table_artifact

    tags = {"tollgate.monitor": "ground_truth", "tollgate.live_status": verdict.status}
    files = {"live_metrics.json": {"verdict": verdict.to_dict(), **live.to_dict()}}
    metrics = live_metric_values(live, verdict.metric)
    run_id = log_monitoring_run(release, f"live-v{release.version}", tags, metrics, files)
    log_live_plots(release, run_id, live.rows, verdict.metric)
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in live.rows]
    create_table_artifact(
        key=artifact_key("live-metrics", release.model_name),
        table=table,
        description=f"Live metrics (matured labels): v{release.version} {verdict.status}: {verdict.reason}",
    )
    return run_id


# -- tasks (not retried: each creates an MLflow run) -----------------------------------------------------------
@tollgate_task
def record_drift(
    release: Release, check: DriftCheck, evidently: EvidentlyReport, estimated: dict[str, Any] | None = None
) -> str:
    """Record the drift check and the window's estimates (MLflow monitoring run, Prefect artifacts); the run id."""
    return store_drift(release, check, evidently, estimated)


@tollgate_task
def record_live_metrics(release: Release, live: LiveMetrics, verdict: LiveVerdict) -> str:
    """Record the live metrics (MLflow monitoring run, Prefect table); returns the run id."""
    return store_live_metrics(release, live, verdict)
