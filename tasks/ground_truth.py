"""Ground-truth stage: delayed labels joined to logged predictions, live metrics and their verdict (what to do
about the verdict is tasks.actions; recording it, tasks.reporting).

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

from tasks.common import tollgate_task
from tasks.evaluation import binary_metrics
from tollgate.config import TollgateConfig
from tollgate.context import Context
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


@tollgate_task
def ingest_labels(ctx: Context, path: str) -> dict[str, int]:
    """Read and merge a labels file into the model's label store (idempotent)."""
    store = ctx.paths.model_labels(ctx.config.project.registered_model)
    changed, total = ingest(store, read_labels(Path(path), ctx.config.dataset.id))
    return {"changed": changed, "total": total}


@tollgate_task
def compute_live_metrics(ctx: Context, release: Release, as_of: float | None) -> list[dict[str, Any]]:
    """Live metrics over matured labels for every version and role in the log (champion, canary, shadow)."""
    from tollgate.predlog import compact, read_log

    model = ctx.config.project.registered_model
    log_dir, store = ctx.paths.model_log(model), ctx.paths.model_labels(model) / STORE
    compact(log_dir)
    if not store.exists():
        return []
    joined = join_labels(read_log(log_dir), pd.read_parquet(store), time.time() if as_of is None else as_of)
    return live_metrics(joined, release.config.dataset.segments, release.config.model.decision_threshold)


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
