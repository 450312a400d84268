"""Ground-truth stage: delayed labels joined to logged predictions, live metrics, and what to do about them.

A labels file has a key column (`prediction_id`, or the dataset's entity id column / `entity_id`), `label`
(0/1) and `label_time` (when the label became final). Labels are stored de-duplicated by key, so ingesting
the same file twice changes nothing; a later label for the same key (a correction) replaces the earlier one.
A prediction is scored once its label has matured: label_time <= as_of (default now).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evaluation import binary_metrics
from tollgate.config import TollgateConfig
from tollgate.release import Release

STORE = "labels.parquet"


class LabelsError(Exception):
    """The labels file is unusable; the message names the file, column and rows."""


def read_labels(path: Path, entity_column: str) -> pd.DataFrame:
    """Normalise a labels file to columns key_kind ('prediction'|'entity'), key, label, label_time."""
    from tasks.validation import DataReadError, read_table

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
    label = pd.to_numeric(raw["label"], errors="coerce")
    bad = raw.index[~label.isin([0, 1])].tolist()
    if bad:
        raise LabelsError(
            f"{path}: column 'label' must be 0 or 1; rows {bad[:10]} are not (e.g. {raw['label'].iloc[bad[0]]!r})"
        )
    when = pd.to_datetime(raw["label_time"], errors="coerce", utc=True)
    bad = raw.index[when.isna()].tolist()
    if bad:
        raise LabelsError(f"{path}: column 'label_time' has unparsable timestamps in rows {bad[:10]}")
    keys = raw[key].astype(str)
    if keys.eq("").any() or raw[key].isna().any():
        raise LabelsError(f"{path}: column '{key}' has empty keys")
    return pd.DataFrame(
        {"key_kind": kind, "key": keys, "label": label.astype("int64"), "label_time": when.astype("int64") / 1e9}
    )


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
    """Logged predictions with a matured label: by prediction id, by the request's prediction id (shadow rows),
    else by entity id."""
    ready = labels[labels["label_time"] <= as_of]
    by_pid = ready[ready["key_kind"] == "prediction"].set_index("key")["label"]
    by_entity = ready[ready["key_kind"] == "entity"].set_index("key")["label"]
    label = log["prediction_id"].map(by_pid)
    label = label.fillna(log["request_id"].map(by_pid)).fillna(log["entity_id"].map(by_entity))
    out = log.assign(label=label)
    return out[out["label"].notna()].assign(label=lambda f: f["label"].astype("int64"))


def live_metrics(joined: pd.DataFrame, segments: list[str], threshold: float) -> list[dict[str, Any]]:
    """Rows of metrics per model version x role x scope (overall or segment=value) x day, and per version x
    role x scope over the whole window (day 'all')."""
    if joined.empty:
        return []
    joined = joined.assign(day=pd.to_datetime(joined["ts"], unit="s").dt.strftime("%Y-%m-%d"))
    rows = []
    scopes: list[tuple[str, pd.Series]] = [("overall", pd.Series(True, index=joined.index))]
    for col in segments:
        if f"f.{col}" in joined.columns:
            for value in sorted(joined[f"f.{col}"].dropna().astype(str).unique()):
                scopes.append((f"{col}={value}", joined[f"f.{col}"].astype(str) == value))
    for scope, mask in scopes:
        part = joined[mask]
        for (version, role, day), grp in [
            *part.groupby(["model_version", "role", "day"]),
            *(((*k, "all"), g) for k, g in part.groupby(["model_version", "role"])),
        ]:
            m = binary_metrics(grp["label"].to_numpy(), grp["score"].to_numpy(), threshold)
            rows.append({"model_version": str(version), "role": role, "scope": scope, "day": day, **m})
    return rows


@dataclass(frozen=True)
class LiveVerdict:
    """What the live labels say about the Production version."""

    version: str
    labelled: int
    auc: float
    status: str  # ok | insufficient | degraded | severe
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(rows: list[dict[str, Any]], release: Release) -> LiveVerdict:
    """Degraded below monitoring.min_live_auc, severe below severe_live_auc, with enough matured labels."""
    mon = release.config.monitoring
    mine = [
        r
        for r in rows
        if r["model_version"] == release.version
        and r["role"] == "champion"
        and r["scope"] == "overall"
        and r["day"] == "all"
    ]
    if not mine or mine[0]["n"] < mon.min_labelled_rows:
        n = int(mine[0]["n"]) if mine else 0
        return LiveVerdict(
            release.version,
            n,
            float("nan"),
            "insufficient",
            f"{n} matured labels, fewer than monitoring.min_labelled_rows {mon.min_labelled_rows}",
        )
    auc, n = float(mine[0]["auc"]), int(mine[0]["n"])
    if auc < mon.severe_live_auc:
        return LiveVerdict(
            release.version, n, auc, "severe", f"live AUC {auc:.4f} < severe_live_auc {mon.severe_live_auc}"
        )
    if auc < mon.min_live_auc:
        return LiveVerdict(release.version, n, auc, "degraded", f"live AUC {auc:.4f} < min_live_auc {mon.min_live_auc}")
    return LiveVerdict(release.version, n, auc, "ok", f"live AUC {auc:.4f} >= min_live_auc {mon.min_live_auc}")


@task(name="ingest_labels", cache_policy=NO_CACHE)
def ingest_labels(path: str, store_dir: str, cfg: TollgateConfig) -> dict[str, int]:
    """Read and merge a labels file into the label store (idempotent)."""
    changed, total = ingest(Path(store_dir), read_labels(Path(path), cfg.dataset.id))
    return {"changed": changed, "total": total}


@task(name="compute_live_metrics", cache_policy=NO_CACHE)
def compute_live_metrics(log_dir: str, store_dir: str, release: Release, as_of: float | None) -> list[dict[str, Any]]:
    """Live metrics over matured labels for every version and role in the log (champion, canary, shadow)."""
    from tollgate.predlog import compact, read_log

    compact(Path(log_dir))
    store = Path(store_dir) / STORE
    if not store.exists():
        return []
    joined = join_labels(read_log(Path(log_dir)), pd.read_parquet(store), time.time() if as_of is None else as_of)
    return live_metrics(joined, release.config.dataset.segments, release.config.model.decision_threshold)


@task(name="record_live_metrics", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_live_metrics(release: Release, rows: list[dict[str, Any]], verdict: LiveVerdict) -> str:
    """A monitoring run in MLflow with the live metrics, and a Prefect table artifact."""
    import json
    import tempfile

    import mlflow
    from prefect.artifacts import create_table_artifact

    from tasks.tracking import artifact_key

    cfg = release.config
    mlflow.set_tracking_uri(cfg.servers.mlflow_url)
    experiment = mlflow.set_experiment(f"{cfg.project.name}-monitoring")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"live-v{release.version}") as run:
        mlflow.set_tags(
            {
                "tollgate.monitor": "ground_truth",
                "tollgate.model_version": release.version,
                "tollgate.live_status": verdict.status,
            }
        )
        totals = [r for r in rows if r["day"] == "all" and r["scope"] == "overall"]
        mlflow.log_metrics(
            {f"live_auc.v{r['model_version']}.{r['role']}": r["auc"] for r in totals if r["auc"] == r["auc"]}
            | {f"labelled.v{r['model_version']}.{r['role']}": r["n"] for r in totals}
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "live_metrics.json"
            path.write_text(json.dumps({"verdict": verdict.to_dict(), "rows": rows}, default=str))
            mlflow.log_artifact(str(path), "monitoring")
        run_id = str(run.info.run_id)
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows if r["day"] == "all"]
    create_table_artifact(
        key=artifact_key("live-metrics", cfg.project.registered_model),
        table=table,
        description=f"Live metrics (matured labels): v{release.version} {verdict.status}: {verdict.reason}",
    )
    return run_id


@task(name="act_on_performance", cache_policy=NO_CACHE)
def act_on_performance(
    release: Release,
    verdict: LiveVerdict,
    run_id: str,
    cfg: TollgateConfig,
    state_home: str,
    flow_run_id: str | None,
) -> str:
    """Degraded -> tollgate.performance.degraded; severe -> also roll back to the previous release at once."""
    from tasks.alerts import raise_alert
    from tasks.deployment import rollback_production
    from tollgate.paths import StatePaths

    if verdict.status not in ("degraded", "severe"):
        return "none"
    model = release.config.project.registered_model
    payload = {**verdict.to_dict(), "monitoring_run_id": run_id}
    raise_alert.fn(
        "tollgate.performance.degraded",
        model,
        f"{model} v{release.version}: {verdict.reason}",
        payload,
        release.config.alerts.webhook_url,
    )
    if verdict.status != "severe":
        return "alerted"
    done = rollback_production.fn(
        cfg,
        StatePaths(Path(state_home)),
        None,
        f"automatic: severe degradation of v{release.version}: {verdict.reason}",
        flow_run_id,
    )
    raise_alert.fn(
        "tollgate.rollback.automatic",
        model,
        f"{model}: rolled back v{done['from']} -> v{done['to']}",
        {**payload, "from": done["from"], "to": done["to"]},
        release.config.alerts.webhook_url,
    )
    return "rolled_back"


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
