"""Retraining stage: the guard (cooldown, weekly budget) and the fresh snapshot with backfilled labels.

The guard works on claims in the model's retrain history (JSON lines). A claim is recorded the moment a
retrain is allowed, under a file lock, so a concurrent trigger sees it and is refused while it runs. When the
retrain ends, its outcome is appended under the claim's id: one that failed before a training run started
(snapshot, data read, validation or data-version error) is `released` and spends neither the cooldown nor the
weekly budget; every other outcome (trained, rejected by the gate, deployed, failed later) spends them.
"""

from __future__ import annotations

import fcntl
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.common import tollgate_task
from tasks.data import DataVersionError
from tasks.gates import GateRejected
from tasks.validation import DataReadError, ValidationFailed
from tollgate.config import ConfigError, DatasetConfig, TollgateConfig
from tollgate.context import Context
from tollgate.objective import as_classes
from tollgate.paths import StatePaths

WEEK_S = 7 * 24 * 3600
# A claim whose process died never settles; after this long it no longer blocks a new retrain as "running"
# (it still counts against the cooldown and budget like any retrain that may have trained).
STALE_CLAIM_S = 24 * 3600

CLAIMED, RELEASED = "claimed", "released"


class SnapshotFailed(Exception):
    """The retrain snapshot could not be built (nothing was trained)."""


# Failures that happen before a training run starts: a retrain ending in one of these releases its claim.
BEFORE_TRAINING: tuple[type[BaseException], ...] = (
    SnapshotFailed,
    DataReadError,
    ValidationFailed,
    DataVersionError,
    ConfigError,
)


@dataclass(frozen=True)
class RetrainClaim:
    """The guard's answer: allowed or not, why, and (when allowed) the id its outcome is recorded under."""

    allowed: bool
    why: str
    id: str | None = None
    at: float | None = None


def _history(paths: StatePaths, model: str) -> list[dict[str, Any]]:
    path = paths.retrain_history(model)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


@contextmanager
def _locked(paths: StatePaths, model: str) -> Iterator[Path]:
    """The history file, held under an exclusive lock (claims and outcomes of concurrent runs serialise)."""
    history = paths.retrain_history(model)
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history.with_name(history.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield history
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def retrain_claims(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim (start time, reason, latest status), in order; lines written before claims had ids
    (plain {"at", "reason"}) are retrains that ran."""
    claims: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        key = str(rec.get("id", f"legacy-{i}"))
        if "status" not in rec:  # a line from before claims had outcomes
            claims[key] = {"at": float(rec["at"]), "reason": rec.get("reason"), "status": "started"}
        elif rec["status"] == CLAIMED:
            claims[key] = {"at": float(rec["at"]), "reason": rec.get("reason"), "status": CLAIMED}
        elif key in claims:
            claims[key]["status"] = rec["status"]
    return list(claims.values())


def retrain_allowed(cfg: TollgateConfig, paths: StatePaths, now: float) -> tuple[bool, str]:
    """(allowed, why): none running, no retrain within monitoring.retrain_cooldown_hours, at most
    max_retrains_per_week; released claims (failed before training) count for none of these."""
    mon = cfg.monitoring
    claims = [c for c in retrain_claims(_history(paths, cfg.project.registered_model)) if c["status"] != RELEASED]
    running = [c for c in claims if c["status"] == CLAIMED and now - c["at"] < STALE_CLAIM_S]
    if running:
        return False, f"running: a retrain claimed {(now - running[-1]['at']) / 60:.0f} min ago has not finished"
    starts = [c["at"] for c in claims]
    if starts and now - max(starts) < mon.retrain_cooldown_hours * 3600:
        left = mon.retrain_cooldown_hours * 3600 - (now - max(starts))
        return False, f"cooldown: last retrain {(now - max(starts)) / 3600:.1f} h ago, {left / 3600:.1f} h left"
    recent = [s for s in starts if now - s < WEEK_S]
    if len(recent) >= mon.max_retrains_per_week:
        return (
            False,
            f"budget: {len(recent)} retrains in the last 7 days (max_retrains_per_week {mon.max_retrains_per_week})",
        )
    return True, "allowed"


def claim_retrain(cfg: TollgateConfig, paths: StatePaths, reason: str, now: float) -> RetrainClaim:
    """Check the guard and, when allowed, record a claim at once (under the lock: a concurrent trigger sees it)."""
    with _locked(paths, cfg.project.registered_model) as history:
        allowed, why = retrain_allowed(cfg, paths, now)
        if not allowed:
            return RetrainClaim(False, why)
        claim = RetrainClaim(True, why, uuid.uuid4().hex, now)
        _append(history, {"id": claim.id, "at": now, "reason": reason, "status": CLAIMED})
        return claim


def retrain_outcome(error: BaseException | None) -> str:
    """The status a finished retrain records: deployed, released (failed before training) or failed."""
    if error is None:
        return "deployed"
    if isinstance(error, BEFORE_TRAINING):
        return RELEASED
    return "rejected" if isinstance(error, GateRejected) else "failed"


def settle_claim(
    cfg: TollgateConfig, paths: StatePaths, claim: RetrainClaim, error: BaseException | None, now: float
) -> str:
    """Append the claim's outcome to the history; returns the status (`released` frees cooldown and budget)."""
    if claim.id is None:
        raise ValueError("only an allowed claim has an outcome")
    status = retrain_outcome(error)
    record: dict[str, Any] = {"id": claim.id, "at": claim.at, "status": status, "settled_at": now}
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"[:500]
    with _locked(paths, cfg.project.registered_model) as history:
        _append(history, record)
    return status


@tollgate_task
def guard_retrain(ctx: Context, reason: str) -> RetrainClaim:
    """The guard's claim under the cooldown and weekly budget; an allowed retrain is recorded at once."""
    return claim_retrain(ctx.config, ctx.paths, reason, time.time())


@tollgate_task
def settle_retrain(ctx: Context, claim: RetrainClaim, error: BaseException | None = None) -> str:
    """Record how the claimed retrain ended; one that failed before training releases its claim."""
    return settle_claim(ctx.config, ctx.paths, claim, error, time.time())


def labelled_production_rows(
    log: pd.DataFrame, labels: pd.DataFrame, cfg: TollgateConfig, as_of: float
) -> pd.DataFrame:
    """Champion-answered requests with matured labels, shaped like the training table: every schema column the
    requests carried (features and segment columns alike), the target as the class values or float values."""
    from tasks.ground_truth import join_labels
    from tollgate.objective import Objective

    joined = join_labels(log[log["role"] == "champion"], labels, as_of)
    ds = cfg.dataset
    frame = pd.DataFrame(
        {ds.id: joined["entity_id"].astype(str), ds.timestamp: pd.to_datetime(joined["ts"], unit="s").dt.floor("s")}
    )
    for column in ds.columns:
        if column not in (ds.id, ds.timestamp, ds.target):
            logged = f"f.{column}"
            frame[column] = joined[logged].to_numpy() if logged in joined else None
    objective = Objective.from_config(cfg)
    labels = joined["label"].to_numpy()
    frame[ds.target] = (
        objective.decode(objective.encode(labels)) if objective.is_classification else labels.astype(float)
    )
    return frame.drop_duplicates(ds.id, keep="last").reset_index(drop=True)


def retrain_snapshot(cfg: TollgateConfig, paths: StatePaths, snapshot: str) -> str:
    """The training snapshot plus labelled production rows, written under the state folder; returns its path."""
    from tasks.ground_truth import STORE
    from tollgate.predlog import compact, configure_remote, read_log

    ds = cfg.dataset
    base = conformed_table(snapshot, ds)
    model = cfg.project.registered_model
    log_dir = paths.model_log(model)
    configure_remote(log_dir, cfg.serving.log_uri, cfg.servers.s3_endpoint_url, model)
    compact(log_dir)
    store = paths.model_labels(cfg.project.registered_model) / STORE
    extra = (
        labelled_production_rows(read_log(log_dir), pd.read_parquet(store), cfg, time.time())
        if store.exists()
        else base.iloc[0:0]
    )
    if ds.id in base and pd.api.types.is_integer_dtype(base[ds.id].dtype):  # the log keeps entity ids as text
        ids = pd.to_numeric(extra[ds.id], errors="coerce")
        if ids.isna().any() or not (ids == ids.round()).all():
            shown = extra[ds.id][ids.isna() | (ids != ids.round())].head(5).tolist()
            raise SnapshotFailed(f"labelled production rows: column {ds.id!r} holds {shown}, not whole-number ids")
        extra[ds.id] = ids.astype("int64")
    elif ds.id in base:
        base[ds.id] = base[ds.id].astype(str)
    if ds.timestamp in base:  # one type for the time column: the table's (text, datetimes) and the log's rows
        base[ds.timestamp] = utc_times(base[ds.timestamp], f"{snapshot}: column {ds.timestamp!r}")
        extra[ds.timestamp] = utc_times(extra[ds.timestamp], f"labelled production rows: column {ds.timestamp!r}")
    combined = pd.concat([base, extra[base.columns.intersection(extra.columns)]], ignore_index=True)
    combined = combined.drop_duplicates(ds.id, keep="last")
    for name, spec in ds.columns.items():  # keep the schema's dtypes (JSON round trips turn ints into floats)
        if spec.type == "label" and name in combined:  # the class values as the config lists them (text, ints)
            classes, bad = as_classes(combined[name], tuple(spec.values or []))
            if bad.any():
                shown = list(dict.fromkeys(str(v) for v in combined[name].to_numpy()[bad][:20]))[:5]
                raise SnapshotFailed(f"retrain snapshot: column {name!r} holds {shown}, not among {spec.values}")
            combined[name] = classes.to_numpy()
        if spec.type == "int" and name in combined:
            combined[name] = combined[name].astype("Int64" if combined[name].isna().any() else "int64")
        if spec.type == "bool" and name in combined:
            combined[name] = combined[name].astype(bool)
    out = paths.home / "retrain" / cfg.project.registered_model / f"snapshot-{time.strftime('%Y%m%dT%H%M%S')}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    combined.to_parquet(out, index=False)
    return str(out)


def conformed_table(path: str, ds: DatasetConfig) -> pd.DataFrame:
    """The user's table read the one way every stage reads it (CSV or Parquet, tasks.validation.read_table) with
    the documented dtype coercions (tasks.conform); SnapshotFailed naming the file and each column that cannot
    take its declared type."""
    from tasks.conform import conform
    from tasks.validation import read_table

    try:
        frame = read_table(path)
    except DataReadError as exc:
        raise SnapshotFailed(str(exc)) from None
    frame, _, rejected = conform(frame, ds)
    if rejected:
        raise SnapshotFailed(
            f"{path}: " + "; ".join(f"column {r.column!r}: {r.reason} (rows {r.rows[:5]})" for r in rejected)
        )
    return frame.copy()


def utc_times(values: pd.Series, where: str) -> pd.Series:
    """Timestamps (datetimes naive or aware, ISO 8601 text) as one UTC datetime type; naive ones are taken as UTC.
    SnapshotFailed naming `where` when a value does not parse."""
    try:
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            times = pd.Series(values)
            return times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
        return pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise SnapshotFailed(f"{where}: timestamps that do not parse as ISO 8601 ({exc})") from None


@tollgate_task
def build_retrain_snapshot(ctx: Context) -> str:
    """The configured training snapshot plus labelled production rows; returns the new file's path. Any failure
    is SnapshotFailed: nothing was trained, so the retrain's claim is released."""
    try:
        return retrain_snapshot(ctx.config, ctx.paths, str(ctx.resolve(ctx.config.dataset.path)))
    except SnapshotFailed as exc:  # a data problem, said as one line naming the file and column
        raise SnapshotFailed(f"retrain snapshot for {ctx.config.project.registered_model}: {exc}") from None
    except Exception as exc:  # whatever else broke (an unreadable log), training never started
        raise SnapshotFailed(f"retrain snapshot for {ctx.config.project.registered_model}: {exc}") from exc
