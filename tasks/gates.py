"""Gates: typed verdicts with their evidence, and tasks that raise when a gate says no.

The promotion gate checks absolute floors and ceilings on any metric of the task (gates.minimums/maximums),
then non-inferiority against a baseline (the Production version, or the Staging version it would displace) on
the same holdout, overall and per segment, with a paired bootstrap confidence interval on the improvement in
the task's primary metric (binary AUC, multiclass one-vs-rest AUC, regression RMSE) rather than a raw
difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig, GatesConfig
from tollgate.context import Context
from tollgate.objective import Objective, higher_is_better, paired_bootstrap
from tollgate.segments import segment_groups

Status = Literal["pass", "fail", "not_gated"]


class GateRejected(Exception):
    """A gate said no; carries the verdict so callers can show every failing comparison."""

    def __init__(self, verdict: GateVerdict, version: str | None = None):
        super().__init__((f"version {version}: " if version else "") + verdict.summary())
        self.verdict = verdict
        self.version = version


@dataclass(frozen=True)
class Check:
    """One comparison with its evidence."""

    scope: str  # "overall" or "column=value"
    check: str  # min_<metric>, max_<metric>, <primary>_non_inferiority, <primary>_segment_harm
    status: Status
    n: int
    challenger: float
    threshold: float
    champion: float | None = None
    diff: float | None = None  # improvement over the baseline in the primary metric: positive = better
    ci_low: float | None = None
    ci_high: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision and every comparison behind it."""

    passed: bool
    baseline: str  # e.g. "Production v3", "Staging v1 (no Production yet)", "none: first model"
    baseline_version: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def not_gated(self) -> list[Check]:
        return [c for c in self.checks if c.status == "not_gated"]

    def summary(self) -> str:
        """Readable multi-line verdict naming every failing scope and the reason."""
        head = f"gate {'PASSED' if self.passed else 'REJECTED'} against {self.baseline}"
        lines = [head]
        for c in self.failures:
            lines.append(f"  - FAIL {c.scope}: {c.reason}")
        for c in self.not_gated:
            lines.append(f"  - not gated {c.scope}: {c.reason}")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per check, for tables."""
        return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(c).items()} for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "baseline": self.baseline,
            "baseline_version": self.baseline_version,
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> GateVerdict:
        return cls(
            passed=body["passed"],
            baseline=body["baseline"],
            baseline_version=body.get("baseline_version"),
            checks=[Check(**c) for c in body["checks"]],
        )


# How reasons name metrics ("AUC 0.8100 >= min_auc 0.7"); others by their key, recall.<class> as "recall of 2".
METRIC_NAMES = {
    "auc": "AUC",
    "auc_ovr": "AUC (one-vs-rest)",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R2",
    "log_loss": "log loss",
    "brier": "Brier score",
    "calibration_error": "calibration error",
}


def metric_name(metric: str) -> str:
    """The readable name of a metric key, as reasons show it."""
    if metric.startswith("recall."):
        return f"recall of {metric.split('.', 1)[1]}"
    return METRIC_NAMES.get(metric, metric)


def _absolute(overall: dict[str, float], gates: GatesConfig) -> list[Check]:
    """One check per configured floor (min_<metric>) and ceiling (max_<metric>); a NaN metric fails."""
    n = int(overall.get("n", 0))
    checks = []
    for bound, limits in (("min", gates.minimums), ("max", gates.maximums)):
        for metric, limit in limits.items():
            value = float(overall.get(metric, math.nan))
            check, name = f"{bound}_{metric}", metric_name(metric)
            if math.isnan(value):
                ok = False
                reason = f"{name} is undefined on this holdout (NaN, e.g. a class is missing), so {check} {limit} fails"
            else:
                ok = value >= limit if bound == "min" else value <= limit
                sign = (">=" if ok else "<") if bound == "min" else ("<=" if ok else ">")
                reason = f"{name} {value:.4f} {sign} {check} {limit}"
            checks.append(Check("overall", check, "pass" if ok else "fail", n, value, limit, reason=reason))
    return checks


def too_small(y: np.ndarray, objective: Objective, min_rows: int) -> str | None:
    """Why a scope is too small to compare on the primary metric, or None when it can be gated: fewer than
    `min_rows` rows; binary under 5 of either class; multiclass fewer than 2 classes with >= 5 rows and >= 5
    others; regression fewer than 5 rows."""
    n = len(y)
    if objective.task == "binary":
        positives = int(np.sum(y == 1))
        if n < min_rows or positives < 5 or n - positives < 5:
            return (
                f"{n} rows ({positives} positive) is below min_segment_size {min_rows} or has under 5 of a class: "
                "too small to compare, not gated"
            )
        return None
    if objective.task == "multiclass":
        counts = {label: int(np.sum(y == c)) for c, label in zip(objective.classes, objective.labels, strict=True)}
        usable = [c for c, k in counts.items() if k >= 5 and n - k >= 5]
        if n < min_rows or len(usable) < 2:
            shown = ", ".join(f"{c}: {k}" for c, k in counts.items())
            return (
                f"{n} rows (per class {shown}) is below min_segment_size {min_rows} or has fewer than 2 classes "
                "with 5 rows and 5 others: too small to compare, not gated"
            )
        return None
    if n < max(min_rows, 5):
        return f"{n} rows is below min_segment_size {min_rows} (or 5): too small to compare, not gated"
    return None


def _compare(
    scope: str,
    y: np.ndarray,
    chal: np.ndarray,
    champ: np.ndarray,
    gates: GatesConfig,
    objective: Objective,
    seed: int,
    rule: str,
) -> Check:
    """Primary-metric comparison with a paired bootstrap CI of the improvement (positive = challenger better).
    rule "non_inferiority": pass iff CI low >= -margin; rule "harm": fail iff CI high < -margin (the challenger
    is confidently worse by more than the margin). An interval that cannot be computed fails."""
    n, primary = len(y), objective.primary
    check = f"{primary}_non_inferiority" if rule == "non_inferiority" else f"{primary}_segment_harm"
    margin = gates.non_inferiority_margin
    small = too_small(y, objective, gates.min_segment_size)
    if small is not None:
        return Check(scope, check, "not_gated", n, float("nan"), -margin, reason=small)
    chal_stat, base_stat = objective.statistic(y, chal), objective.statistic(y, champ)
    diff, lo, hi = paired_bootstrap(
        chal_stat, base_stat, n, gates.bootstrap_samples, gates.confidence, seed, higher_is_better(primary)
    )
    chal_value, base_value = chal_stat.value(), base_stat.value()
    name = metric_name(primary)
    ci = f"{gates.confidence:.0%} CI [{lo:+.4f}, {hi:+.4f}]"
    if math.isnan(lo) or math.isnan(hi) or math.isnan(diff):
        ok = False
        verdict = f"{name} is undefined on every resample: cannot be compared, fails"
    elif rule == "non_inferiority":
        ok = lo >= -margin
        verdict = f"lower bound {'>=' if ok else '<'} -{margin}: {'non-inferior' if ok else 'not shown non-inferior'}"
    else:
        ok = hi >= -margin
        verdict = f"upper bound {'>=' if ok else '<'} -{margin}: {'no clear harm' if ok else 'confidently worse'}"
    reason = f"{name} {chal_value:.4f} vs baseline {base_value:.4f}: improvement {diff:+.4f}, {ci}, {verdict}"
    return Check(
        scope,
        check,
        "pass" if ok else "fail",
        n,
        chal_value,
        -margin,
        champion=base_value,
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        reason=reason,
    )


def decide(
    holdout: pd.DataFrame,
    challenger_outputs: np.ndarray,
    overall: dict[str, float],
    ds: DatasetConfig,
    gates: GatesConfig,
    objective: Objective,
    seed: int,
    baseline_outputs: np.ndarray | None = None,
    baseline: str = "none: first model, gated on absolute minimums only",
    baseline_version: str | None = None,
) -> GateVerdict:
    """The promotion verdict: absolute minimums/maximums, then (with a baseline's outputs on the same rows)
    non-inferiority on the primary metric overall and the configured segment test for every segment value
    (tollgate.segments) with enough rows."""
    checks = _absolute(overall, gates)
    if baseline_outputs is not None:
        y = objective.target(holdout[ds.target].to_numpy())
        chal, base = challenger_outputs, baseline_outputs
        checks.append(_compare("overall", y, chal, base, gates, objective, seed, "non_inferiority"))
        for col, groups in segment_groups(holdout, ds).items():
            for value, idx in groups.items():
                scope = f"{col}={value}"
                checks.append(_compare(scope, y[idx], chal[idx], base[idx], gates, objective, seed, gates.segment_test))
    return GateVerdict(
        passed=all(c.status != "fail" for c in checks),
        baseline=baseline,
        baseline_version=baseline_version,
        checks=checks,
    )


@tollgate_task
def gate_challenger(
    ctx: Context,
    holdout: pd.DataFrame,
    outputs: np.ndarray,
    overall: dict[str, float],
    baseline: tuple[str, str, np.ndarray] | None,
) -> GateVerdict:
    """The verdict against the baseline (label, version, outputs), or on the absolute limits for a first model."""
    cfg = ctx.config
    objective = Objective.from_config(cfg)
    if baseline is None:
        return decide(holdout, outputs, overall, cfg.dataset, cfg.gates, objective, cfg.model.seed)
    label, version, base = baseline
    return decide(holdout, outputs, overall, cfg.dataset, cfg.gates, objective, cfg.model.seed, base, label, version)


@tollgate_task
def enforce_verdict(verdict: GateVerdict, version: str | None = None) -> GateVerdict:
    """Raise GateRejected (failing the flow run visibly) unless the verdict passed."""
    if not verdict.passed:
        raise GateRejected(verdict, version)
    return verdict
