"""The model card of a release: intended use and limits, data version, metrics by segment, owner, obligations."""

from __future__ import annotations

import math
from typing import Any

from tasks.data import DataVersion
from tasks.gates import metric_name
from tollgate.config import TollgateConfig
from tollgate.objective import PRIMARY, higher_is_better


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _metric_lines(cfg: TollgateConfig, evaluation: dict[str, Any]) -> list[str]:
    """The holdout summary line and the per-segment table for the task's metrics."""
    o, task = evaluation["overall"], cfg.model.task
    if task == "binary":
        summary = (
            f"AUC {o['auc']:.4f} · log loss {o['log_loss']:.4f} · precision {o['precision']:.3f} · recall {o['recall']:.3f}"
            f" · calibration error {o['calibration_error']:.4f} · n {int(o['n'])}"
        )
        head = ["| segment | n | positives | AUC | log loss | recall |", "| --- | ---: | ---: | ---: | ---: | ---: |"]

        def row(m: dict[str, float]) -> str:
            return f"{int(m['positives'])} | {m['auc']:.4f} | {m['log_loss']:.4f} | {m['recall']:.3f}"
    elif task == "multiclass":
        recalls = " · ".join(f"{metric_name(k)} {_fmt(v, 3)}" for k, v in o.items() if k.startswith("recall."))
        summary = (
            f"AUC (one-vs-rest, macro) {_fmt(o['auc_ovr'])} · log loss {_fmt(o['log_loss'])}"
            f" · accuracy {_fmt(o['accuracy'], 3)} · {recalls} · n {int(o['n'])}"
        )
        head = ["| segment | n | AUC (OvR) | log loss | accuracy |", "| --- | ---: | ---: | ---: | ---: |"]

        def row(m: dict[str, float]) -> str:
            return f"{_fmt(m['auc_ovr'])} | {_fmt(m['log_loss'])} | {_fmt(m['accuracy'], 3)}"
    else:
        summary = f"RMSE {_fmt(o['rmse'])} · MAE {_fmt(o['mae'])} · R2 {_fmt(o['r2'])} · n {int(o['n'])}"
        head = ["| segment | n | RMSE | MAE | R2 |", "| --- | ---: | ---: | ---: | ---: |"]

        def row(m: dict[str, float]) -> str:
            return f"{_fmt(m['rmse'])} | {_fmt(m['mae'])} | {_fmt(m['r2'])}"

    lines = ["## Holdout metrics", summary, "", *head]
    for col, per in evaluation["segments"].items():
        for value, m in per.items():
            lines.append(f"| {col}={value} | {int(m['n'])} | {row(m)} |")
    return lines


def _limits(limits: dict[str, float], sign: str) -> str:
    return ", ".join(f"{metric_name(k)} {sign} {v}" for k, v in limits.items())


def model_card(
    cfg: TollgateConfig,
    data: DataVersion,
    evaluation: dict[str, Any],
    version: str | None = None,
    compiled: dict[str, Any] | None = None,
) -> str:
    """The Markdown model card: intended use and limits, data version, the task's metrics by segment, owner,
    obligations."""
    task, primary = cfg.model.task, metric_name(PRIMARY[cfg.model.task])
    model_line = f"**Model:** {cfg.model.kind} {task} (seed {cfg.model.seed})"
    if task == "binary":
        model_line += f", decision threshold {cfg.model.decision_threshold}"
    lines = [
        f"# Model card: {cfg.project.registered_model}" + (f" v{version}" if version else ""),
        "",
        f"**Owner:** {cfg.project.owner}  ",
        model_line,
        "",
        "## Intended use",
        cfg.project.intended_use or "(not stated in config)",
        "",
        "## Limitations",
        cfg.project.limitations or "(not stated in config)",
        "",
        "## Data",
        f"- snapshot `{data.path}`, md5 `{data.md5}`"
        + ("" if data.matches_dvc else " (**not** the version data.dvc records)"),
        f"- git sha `{data.git_sha}`" + (" (**dirty tree**)" if data.git_dirty else ""),
        f"- {data.rows} rows; target `{cfg.dataset.target}`; label delay {cfg.dataset.label_delay_days} days",
        "",
        *_metric_lines(cfg, evaluation),
        *_scoring_lines(compiled),
    ]
    mon, gates = cfg.monitoring, cfg.gates
    better = "higher" if higher_is_better(PRIMARY[task]) else "lower"
    limits = "; ".join(x for x in (_limits(gates.minimums, ">="), _limits(gates.maximums, "<=")) if x) or "none"
    lines += [
        "",
        "## Monitoring obligations",
        f"- input drift: {mon.numeric_method} > {mon.psi_threshold if mon.numeric_method == 'psi' else mon.ks_pvalue} on numeric features,"
        f" Jensen-Shannon > {mon.categorical_threshold} on categorical; alert when over {mon.drift_share_threshold:.0%} of features drift",
        f"- live {primary} ({better} is better) over at least {mon.min_labelled_rows} matured labels: worse than"
        f" {mon.live_degraded_at} is degraded (alert, retrain); worse than {mon.live_severe_at} rolls back",
        f"- promotion gate: {limits}; {primary} non-inferior within {gates.non_inferiority_margin}"
        f" at {gates.confidence:.0%} confidence overall and per segment with >= {gates.min_segment_size} rows",
    ]
    return "\n".join(lines) + "\n"


def _scoring_lines(compiled: dict[str, Any] | None) -> list[str]:
    """How the version scores: its ONNX form (parity on the holdout) or the sklearn pipeline, and why."""
    if compiled is None:
        return []
    if compiled.get("ok"):
        return [
            "",
            "## Scoring",
            f"- compiled to ONNX (ONNX Runtime scores it): parity on {compiled['rows']} holdout rows, max |diff| "
            f"{compiled['max_abs_diff']:.2g} <= {compiled['tolerance']:g}, no decision differs",
        ]
    return ["", "## Scoring", f"- the sklearn pipeline scores (no compiled form): {compiled.get('reason')}"]
