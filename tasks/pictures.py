"""Pictures stage: a version's plots (tasks/plots.py) logged to its MLflow run under `plots/` (PNG, so MLflow's
artifact view shows them inline), plus `plots/data.json` with the numbers each one drew.

Drawing is never on the critical path: a failure to draw or to upload is logged as a warning and counted on the
run (`plots_failed` tag), and training, a rollout or a rollback goes on (issue 35.5)."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tasks.common import run_logger, tollgate_task
from tasks.gates import GateVerdict
from tasks.plots import Plot, drift_per_feature, forest, holdout_plots, live_series, phase_checks, score_distributions
from tollgate import ledger
from tollgate.context import Context
from tollgate.ledger import LedgerEntry
from tollgate.objective import Objective
from tollgate.release import Release

PLOTS_DIR = "plots"


def log_plots(tracking_uri: str, run_id: str, plots: Sequence[Plot], folder: str = PLOTS_DIR) -> list[str]:
    """Upload each plot as <folder>/<name>.png and every plot's numbers as <folder>/data.json; the names logged."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for plot in plots:
            (root / f"{plot.name}.png").write_bytes(plot.png)
        data = {p.name: {"title": p.title, **p.data} for p in plots}
        (root / "data.json").write_text(json.dumps(data, default=_plain))
        client.log_artifacts(run_id, tmp, folder)
    return [p.name for p in plots]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def drawn_safely(
    tracking_uri: str, run_id: str, what: str, draw: Callable[[], list[Plot]], folder: str = PLOTS_DIR
) -> list[str]:
    """Draw and log `what`'s plots; on any failure a warning naming it, a `plots_failed` tag on the run, and []."""
    log = run_logger()
    start = time.perf_counter()
    try:
        names = log_plots(tracking_uri, run_id, draw(), folder)
    except Exception as exc:  # a picture must never fail what it illustrates
        log.warning("could not draw or log the %s plots: %s: %s", what, type(exc).__name__, exc)
        with contextlib.suppress(Exception):  # the tracking server itself may be what failed
            client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            client.set_tag(run_id, "plots_failed", f"{what}: {type(exc).__name__}: {exc}"[:500])
        return []
    log.info(
        "logged %d %s plots to run %s under %s/ in %.1f s",
        len(names),
        what,
        run_id,
        folder,
        time.perf_counter() - start,
    )
    return names


def version_plots(
    objective: Objective,
    y: np.ndarray,
    outputs: np.ndarray,
    verdict: GateVerdict,
    baseline: tuple[str, str, np.ndarray] | None,
    version: str,
) -> list[Plot]:
    """A trained version's pictures: its holdout curves for its task type (the baseline on the same axes when
    there is one), and with a baseline the gate's forest plot and both score distributions."""
    names = (f"v{version} (challenger)", f"v{baseline[1]} ({baseline[0]})" if baseline else "champion")
    champion = baseline[2] if baseline is not None else None
    plots = holdout_plots(objective.task, y, outputs, champion, objective.labels, names)
    if baseline is not None:
        plots.append(forest(verdict.checks, objective.primary, f"Gate: v{version} minus v{baseline[1]}"))
        if objective.task != "multiclass":
            plots.append(score_distributions(outputs, champion, names))
    return plots


@tollgate_task
def log_version_plots(
    ctx: Context,
    run_id: str,
    version: str,
    holdout: pd.DataFrame,
    outputs: np.ndarray,
    verdict: GateVerdict,
    baseline: tuple[str, str, np.ndarray] | None,
) -> list[str]:
    """Draw the version's holdout curves and gate picture from what training computed, log them to its run."""
    objective = Objective.from_config(ctx.config)
    y = objective.target(holdout[ctx.config.dataset.target].to_numpy())
    return drawn_safely(
        ctx.config.servers.mlflow_url,
        run_id,
        "training",
        lambda: version_plots(objective, y, outputs, verdict, baseline, version),
    )


def phase_plots(verdict: GateVerdict, log: pd.DataFrame, phase: str, version: str, champion: str) -> list[Plot]:
    """A rollout phase's pictures: its checks against their limits, and the champion's and the challenger's score
    distributions on the phase's own traffic (shadow: the same requests; canary: the same window)."""
    from tasks.analysis import phase_sides

    _, champion_scores, challenger_scores = phase_sides(log, phase, version, champion)  # type: ignore[arg-type]
    names = (f"v{version} ({phase})", f"v{champion} (champion)")
    distributions = score_distributions(challenger_scores, champion_scores, names)
    distributions = Plot(
        f"{phase}_score_distributions", f"{phase} score distributions", distributions.png, distributions.data
    )
    return [phase_checks(verdict.checks, phase), distributions]


def live_plot(
    rows: list[dict[str, Any]],
    metric: str,
    lines: dict[str, float],
    entries: Sequence[LedgerEntry],
    estimated: dict[str, list[tuple[float, float]]] | None = None,
) -> Plot:
    """The live primary metric per window for every version and role in a backfill's rows (overall scope; the
    whole period when it was not windowed), with reference `lines`, the ledger's promotions and rollbacks, and
    `estimated` series (name -> [(window start, estimate)], the drift checks' estimates before labels, drawn
    dashed) next to the realized ones."""
    overall = [r for r in rows if r["scope"] == "overall"]
    use = [r for r in overall if r["window"] != "all"] or overall
    series: dict[str, list[tuple[float, float]]] = {}
    for r in use:
        series.setdefault(f"v{r['model_version']} {r['role']}", []).append((float(r["start"]), float(r[metric])))
    series |= estimated or {}
    starts = [float(r["start"]) for r in use] + [float(r["end"]) for r in use]
    starts += [t for points in (estimated or {}).values() for t, _ in points]
    return live_series(metric, series, lines, ledger_events(entries, min(starts, default=0), max(starts, default=0)))


def ledger_events(entries: Sequence[LedgerEntry], since: float, until: float) -> list[tuple[float, str]]:
    """Promotions to Production and rollbacks in the ledger between two epochs (a margin of a tenth of the span
    either side), as (epoch, label)."""
    pad = (until - since) / 10
    out = []
    for e in entries:
        if e.to_stage != "Production" or not e.at:
            continue
        at = datetime.fromisoformat(e.at).timestamp()
        if since - pad <= at <= until + pad:
            label = f"rollback to v{e.version}" if "rollback" in e.reason.lower() else f"v{e.version} to Production"
            out.append((at, label))
    return out


def drift_plots(drift: dict[str, Any]) -> list[Plot]:
    """A drift check's per-feature picture (its statistic against its threshold) from its drift.json body."""
    features = drift["overall"]["features"]
    method = ", ".join(sorted({f["method"] for f in features}))
    return [
        drift_per_feature(
            {f["feature"]: f["statistic"] for f in features}, {f["feature"]: f["threshold"] for f in features}, method
        )
    ]


@tollgate_task
def log_phase_plots(
    ctx: Context, version: str, champion: str, phase: str, since: float, verdict: GateVerdict
) -> list[str]:
    """Draw a rollout phase's pictures from its window of the prediction log, log them to the version's run under
    plots/<phase>/; never fails the rollout."""
    from tasks.rollout import phase_log

    try:
        run_id = ctx.registry.get(version).run_id
    except Exception as exc:
        run_logger().warning("could not find v%s's run for its %s plots: %s", version, phase, exc)
        return []
    return drawn_safely(
        ctx.config.servers.mlflow_url,
        run_id,
        phase,
        lambda: phase_plots(verdict, phase_log(ctx, since), phase, version, champion),
        f"{PLOTS_DIR}/{phase}",
    )


def release_lines(release: Release, metric: str) -> dict[str, float]:
    """The live plot's reference lines: the holdout value of the release and its SLO thresholds."""
    mon = release.config.monitoring
    lines = {"degraded at": float(mon.live_degraded_at), "severe at": float(mon.live_severe_at)}
    try:
        holdout = float(release.file("evaluation.json")["overall"][metric])
    except Exception:  # an old release without it: no holdout line
        return lines
    return {f"v{release.version} holdout": holdout, **lines}


def release_ledger(release: Release) -> list[LedgerEntry]:
    """The ledger entries of the release's model (none when the release was loaded without a registry)."""
    if release.registry is None:
        return []
    return ledger.read(release.registry.ledger_path, release.model_name)


def log_live_plots(release: Release, run_id: str, rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The live-metric picture of a backfill, logged to its monitoring run under plots/; never fails it."""
    return drawn_safely(
        release.tracking_uri,
        run_id,
        "live metrics",
        lambda: [live_plot(rows, metric, release_lines(release, metric), release_ledger(release))],
    )


def log_drift_plots(release: Release, run_id: str, drift: dict[str, Any]) -> list[str]:
    """The per-feature drift picture of a drift check, logged to its monitoring run under plots/."""
    return drawn_safely(release.tracking_uri, run_id, "drift", lambda: drift_plots(drift))
