"""Gates: typed verdicts with their evidence, and tasks that raise when a gate says no.

The promotion gate checks absolute minimums, then non-inferiority against a baseline (the Production version,
or the Staging version it would displace) on the same holdout, overall and per segment, with a paired
bootstrap confidence interval on the AUC difference rather than a raw difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.common import tollgate_task
from tollgate.config import DatasetConfig, GatesConfig
from tollgate.context import Context

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
    check: str  # "min_auc", "max_log_loss", "auc_non_inferiority", "auc_segment_harm"
    status: Status
    n: int
    challenger: float
    threshold: float
    champion: float | None = None
    diff: float | None = None
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


class _TieGroups:
    """One score vector reduced once to its sorted tie groups: each row's key is (group, label), so a resample's
    AUC needs one gather and one bincount over the drawn rows, then O(groups) work."""

    def __init__(self, y: np.ndarray, scores: np.ndarray):
        uniq, group = np.unique(scores, return_inverse=True)
        self.groups = len(uniq)
        self.key = (group.astype("int64") * 2 + y.astype("int64")).astype("int32" if 2 * len(uniq) < 2**31 else "int64")

    def auc(self, rows: np.ndarray | None = None) -> float:
        """AUC over the drawn `rows` (with repeats; all rows when None); ties count one half, as midranks do."""
        keys = self.key if rows is None else self.key[rows]
        counts = np.bincount(keys, minlength=2 * self.groups).reshape(self.groups, 2).astype("float64")
        neg, pos = counts[:, 0], counts[:, 1]
        p, q = pos.sum(), neg.sum()
        if p == 0 or q == 0:
            return float("nan")
        return float(np.dot(pos, np.cumsum(neg) - 0.5 * neg) / (p * q))


def paired_bootstrap_auc(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """(observed AUC difference, lower, upper) of a two-sided `confidence` interval, resampling rows jointly.

    Resample b draws the same rows as indexing with rng.integers(0, n, (samples, n))[b]; time is
    O(samples x n) and memory O(n): no (samples x n) matrix of indices, scores or ranks is ever built."""
    n = len(y)
    rng = np.random.default_rng(seed)
    chal, champ = _TieGroups(y, challenger), _TieGroups(y, champion)
    diffs = np.empty(samples)
    for b in range(samples):
        rows = rng.integers(0, n, size=n)
        diffs[b] = chal.auc(rows) - champ.auc(rows)
    d = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    return chal.auc() - champ.auc(), float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))


def _absolute(overall: dict[str, float], gates: GatesConfig) -> list[Check]:
    auc, ll, n = overall["auc"], overall["log_loss"], int(overall["n"])
    return [
        Check(
            "overall",
            "min_auc",
            "pass" if auc >= gates.min_auc else "fail",
            n,
            auc,
            gates.min_auc,
            reason=f"AUC {auc:.4f} {'>=' if auc >= gates.min_auc else '<'} min_auc {gates.min_auc}",
        ),
        Check(
            "overall",
            "max_log_loss",
            "pass" if ll <= gates.max_log_loss else "fail",
            n,
            ll,
            gates.max_log_loss,
            reason=f"log loss {ll:.4f} {'<=' if ll <= gates.max_log_loss else '>'} max_log_loss {gates.max_log_loss}",
        ),
    ]


def _compare(
    scope: str, y: np.ndarray, chal: np.ndarray, champ: np.ndarray, gates: GatesConfig, seed: int, rule: str
) -> Check:
    """AUC comparison with a paired bootstrap CI. rule "non_inferiority": pass iff CI low >= -margin;
    rule "harm": fail iff CI high < -margin (the challenger is confidently worse by more than the margin)."""
    n = len(y)
    positives = int(y.sum())
    check = "auc_non_inferiority" if rule == "non_inferiority" else "auc_segment_harm"
    margin = gates.non_inferiority_margin
    if n < gates.min_segment_size or positives < 5 or n - positives < 5:
        return Check(
            scope,
            check,
            "not_gated",
            n,
            float("nan"),
            -margin,
            reason=f"{n} rows ({positives} positive) is below min_segment_size {gates.min_segment_size} "
            "or has under 5 of a class: too small to compare, not gated",
        )
    diff, lo, hi = paired_bootstrap_auc(y, chal, champ, gates.bootstrap_samples, gates.confidence, seed)
    chal_auc = _TieGroups(y, chal).auc()
    ok = lo >= -margin if rule == "non_inferiority" else hi >= -margin
    ci = f"{gates.confidence:.0%} CI [{lo:+.4f}, {hi:+.4f}]"
    if rule == "non_inferiority":
        verdict = f"lower bound {'>=' if ok else '<'} -{margin}: {'non-inferior' if ok else 'not shown non-inferior'}"
    else:
        verdict = f"upper bound {'>=' if ok else '<'} -{margin}: {'no clear harm' if ok else 'confidently worse'}"
    reason = f"AUC {chal_auc:.4f} vs baseline {chal_auc - diff:.4f}: diff {diff:+.4f}, {ci}, {verdict}"
    return Check(
        scope,
        check,
        "pass" if ok else "fail",
        n,
        chal_auc,
        -margin,
        champion=chal_auc - diff,
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        reason=reason,
    )


def decide(
    holdout: pd.DataFrame,
    challenger_scores: np.ndarray,
    overall: dict[str, float],
    ds: DatasetConfig,
    gates: GatesConfig,
    seed: int,
    baseline_scores: np.ndarray | None = None,
    baseline: str = "none: first model, gated on absolute minimums only",
    baseline_version: str | None = None,
) -> GateVerdict:
    """The promotion verdict: absolute minimums, then (with a baseline) non-inferiority overall and the
    configured segment test for every segment with enough rows."""
    checks = _absolute(overall, gates)
    if baseline_scores is not None:
        y = holdout[ds.target].to_numpy().astype("int64")
        checks.append(_compare("overall", y, challenger_scores, baseline_scores, gates, seed, "non_inferiority"))
        for col in ds.segments:
            for value, idx in sorted(holdout.groupby(col, observed=True).indices.items(), key=lambda kv: str(kv[0])):
                scope = f"{col}={value}"
                chal, base = challenger_scores[idx], baseline_scores[idx]
                checks.append(_compare(scope, y[idx], chal, base, gates, seed, gates.segment_test))
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
    scores: np.ndarray,
    overall: dict[str, float],
    baseline: tuple[str, str, np.ndarray] | None,
) -> GateVerdict:
    """The verdict against the baseline (label, version, scores), or on the absolute minimums for a first model."""
    cfg = ctx.config
    if baseline is None:
        return decide(holdout, scores, overall, cfg.dataset, cfg.gates, cfg.model.seed)
    label, version, base = baseline
    return decide(holdout, scores, overall, cfg.dataset, cfg.gates, cfg.model.seed, base, label, version)


@tollgate_task
def enforce_verdict(verdict: GateVerdict, version: str | None = None) -> GateVerdict:
    """Raise GateRejected (failing the flow run visibly) unless the verdict passed."""
    if not verdict.passed:
        raise GateRejected(verdict, version)
    return verdict
