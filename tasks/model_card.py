"""The model card of a release: intended use and limits, data version, metrics by segment, owner, obligations."""

from __future__ import annotations

from typing import Any

from tasks.data import DataVersion
from tollgate.config import TollgateConfig


def model_card(cfg: TollgateConfig, data: DataVersion, evaluation: dict[str, Any], version: str | None = None) -> str:
    """The Markdown model card: intended use and limits, data version, metrics by segment, owner, obligations."""
    o = evaluation["overall"]
    lines = [
        f"# Model card: {cfg.project.registered_model}" + (f" v{version}" if version else ""),
        "",
        f"**Owner:** {cfg.project.owner}  ",
        f"**Model:** {cfg.model.kind} (seed {cfg.model.seed}), decision threshold {cfg.model.decision_threshold}",
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
        "## Holdout metrics",
        f"AUC {o['auc']:.4f} · log loss {o['log_loss']:.4f} · precision {o['precision']:.3f} · recall {o['recall']:.3f}"
        f" · calibration error {o['calibration_error']:.4f} · n {int(o['n'])}",
        "",
        "| segment | n | positives | AUC | log loss | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for col, per in evaluation["segments"].items():
        for value, m in per.items():
            lines.append(
                f"| {col}={value} | {int(m['n'])} | {int(m['positives'])} | {m['auc']:.4f} | {m['log_loss']:.4f} | {m['recall']:.3f} |"
            )
    mon, gates = cfg.monitoring, cfg.gates
    lines += [
        "",
        "## Monitoring obligations",
        f"- input drift: {mon.numeric_method} > {mon.psi_threshold if mon.numeric_method == 'psi' else mon.ks_pvalue} on numeric features,"
        f" Jensen-Shannon > {mon.categorical_threshold} on categorical; alert when over {mon.drift_share_threshold:.0%} of features drift",
        f"- live AUC >= {mon.min_live_auc} over at least {mon.min_labelled_rows} matured labels; below {mon.severe_live_auc} rolls back",
        f"- promotion gate: AUC >= {gates.min_auc}, log loss <= {gates.max_log_loss}, non-inferior within {gates.non_inferiority_margin}"
        f" AUC at {gates.confidence:.0%} confidence overall and per segment with >= {gates.min_segment_size} rows",
    ]
    return "\n".join(lines) + "\n"
