"""Retraining stage: the guard (cooldown, weekly budget) and the fresh snapshot with backfilled labels."""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import TollgateConfig
from tollgate.context import Context
from tollgate.paths import StatePaths

WEEK_S = 7 * 24 * 3600


def _history(paths: StatePaths, model: str) -> list[dict[str, Any]]:
    path = paths.retrain_history(model)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def retrain_allowed(cfg: TollgateConfig, paths: StatePaths, now: float) -> tuple[bool, str]:
    """(allowed, why): no retrain within monitoring.retrain_cooldown_hours, at most max_retrains_per_week."""
    mon = cfg.monitoring
    starts = [float(r["at"]) for r in _history(paths, cfg.project.registered_model)]
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


def claim_retrain(cfg: TollgateConfig, paths: StatePaths, reason: str, now: float) -> tuple[bool, str]:
    """Check the guard and, when allowed, record this retrain (so concurrent triggers see it)."""
    allowed, why = retrain_allowed(cfg, paths, now)
    if allowed:
        history = paths.retrain_history(cfg.project.registered_model)
        history.parent.mkdir(parents=True, exist_ok=True)
        with open(history, "a") as fh:
            fh.write(json.dumps({"at": now, "reason": reason}) + "\n")
    return allowed, why


@tollgate_task
def guard_retrain(ctx: Context, reason: str) -> tuple[bool, str]:
    """(allowed, why) under the cooldown and weekly budget; an allowed retrain is recorded at once."""
    return claim_retrain(ctx.config, ctx.paths, reason, time.time())


def labelled_production_rows(
    log: pd.DataFrame, labels: pd.DataFrame, cfg: TollgateConfig, as_of: float
) -> pd.DataFrame:
    """Champion-answered requests with matured labels, shaped like the training table."""
    from tasks.ground_truth import join_labels

    joined = join_labels(log[log["role"] == "champion"], labels, as_of)
    ds = cfg.dataset
    frame = pd.DataFrame(
        {ds.id: joined["entity_id"].astype(str), ds.timestamp: pd.to_datetime(joined["ts"], unit="s").dt.floor("s")}
    )
    for feature in cfg.features.all:
        frame[feature] = joined[f"f.{feature}"].to_numpy()
    frame[ds.target] = joined["label"].to_numpy()
    return frame.drop_duplicates(ds.id, keep="last").reset_index(drop=True)


def retrain_snapshot(cfg: TollgateConfig, paths: StatePaths, snapshot: str) -> str:
    """The training snapshot plus labelled production rows, written under the state folder; returns its path."""
    from tasks.ground_truth import STORE
    from tollgate.predlog import compact, read_log

    base = pd.read_parquet(snapshot)
    log_dir = paths.model_log(cfg.project.registered_model)
    compact(log_dir)
    store = paths.model_labels(cfg.project.registered_model) / STORE
    extra = (
        labelled_production_rows(read_log(log_dir), pd.read_parquet(store), cfg, time.time())
        if store.exists()
        else base.iloc[0:0]
    )
    ds = cfg.dataset
    combined = pd.concat([base, extra[base.columns.intersection(extra.columns)]], ignore_index=True)
    combined = combined.drop_duplicates(ds.id, keep="last")
    for name, spec in ds.columns.items():  # keep the schema's dtypes (JSON round trips turn ints into floats)
        if spec.type in ("int", "label") and name in combined:
            combined[name] = combined[name].astype("Int64" if combined[name].isna().any() else "int64")
        if spec.type == "bool" and name in combined:
            combined[name] = combined[name].astype(bool)
    out = paths.home / "retrain" / cfg.project.registered_model / f"snapshot-{time.strftime('%Y%m%dT%H%M%S')}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    combined.to_parquet(out, index=False)
    return str(out)


@tollgate_task
def build_retrain_snapshot(ctx: Context) -> str:
    """The configured training snapshot plus labelled production rows; returns the new file's path."""
    return retrain_snapshot(ctx.config, ctx.paths, str(ctx.resolve(ctx.config.dataset.path)))
