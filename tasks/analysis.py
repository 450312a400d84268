"""Rollout phase analysis: the challenger's answers in a phase window against the champion's, as a GateVerdict.

One analysis for both phases. Shadow pairs each shadow answer with the champion's answer to the same request
(request_id); canary compares the canary's answers with the champion's answers in the same window (different
entities, so no pairing). The checks differ only in which apply: decision agreement needs pairs, so it is a
shadow check. Pure functions over a prediction-log frame; no I/O, no config loading.

Per task (the challenger's): agreement is the share of pairs whose decisions agree by
tollgate.predlog.decisions_agree: equal decisions for binary and multiclass, values within
REGRESSION_AGREEMENT_TOLERANCE x the champion's spread for regression. Score PSI is on the logged `score` for
every task (multiclass: the predicted class's probability).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.gates import Check, GateVerdict
from tollgate.config import RolloutConfig
from tollgate.predlog import REGRESSION_AGREEMENT_TOLERANCE, decisions_agree
from tollgate.stats import psi

Phase = Literal["shadow", "canary"]


@dataclass(frozen=True)
class Rule:
    """One phase check: its name, the rollout setting that limits it, and which side of the limit passes."""

    check: str
    limit_key: str  # a RolloutConfig field
    at_least: bool  # True: value >= limit passes; False: value <= limit passes
    what: str


AGREEMENT = Rule("agreement", "min_agreement", True, "decision agreement with the champion")
SCORE_PSI = Rule("score_psi", "max_score_psi", False, "score PSI against the champion")
P99_LATENCY = Rule("p99_latency_ms", "max_p99_latency_ms", False, "p99 latency ms")
ERROR_RATE = Rule("error_rate", "max_error_rate", False, "error rate")

PHASE_RULES: dict[str, tuple[Rule, ...]] = {
    "shadow": (AGREEMENT, SCORE_PSI, P99_LATENCY, ERROR_RATE),
    "canary": (SCORE_PSI, P99_LATENCY, ERROR_RATE),
}


def phase_sides(
    log: pd.DataFrame, phase: Phase, version: str, champion: str
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(challenger rows, champion scores, challenger scores) to compare; shadow scores come as request pairs."""
    mine = log[(log["role"] == phase) & (log["model_version"] == str(version))]
    theirs = log[(log["role"] == "champion") & (log["model_version"] == str(champion))]
    if phase == "shadow":
        pairs = mine.merge(theirs, on="request_id", suffixes=("", "_champion"))
        return pairs, pairs["score_champion"].to_numpy(), pairs["score"].to_numpy()
    return mine, theirs["score"].to_numpy(), mine["score"].to_numpy()


def _p99(latencies: pd.Series) -> float:
    return float(np.percentile(latencies.astype("float64"), 99)) if len(latencies) else math.nan


def agreement(pairs: pd.DataFrame, task: str, tolerance: float = REGRESSION_AGREEMENT_TOLERANCE) -> float:
    """The share of shadow pairs whose decisions agree (see the module docstring); NaN without pairs."""
    if not len(pairs):
        return math.nan
    champion, challenger = pairs["decision_champion"].to_numpy(), pairs["decision"].to_numpy()
    return float(decisions_agree(task, champion, challenger, tolerance).mean())


def phase_values(
    log: pd.DataFrame,
    phase: Phase,
    version: str,
    champion: str,
    errors: int,
    bins: int,
    task: str = "binary",
    tolerance: float = REGRESSION_AGREEMENT_TOLERANCE,
) -> tuple[dict[str, float], int]:
    """The measured value of every phase check (NaN where the window has nothing to measure) and the sample size."""
    mine, champion_scores, challenger_scores = phase_sides(log, phase, version, champion)
    n = len(mine)
    values = {
        "agreement": agreement(mine, task, tolerance) if phase == "shadow" else math.nan,
        "score_psi": psi(champion_scores, challenger_scores, bins),
        "p99_latency_ms": _p99(mine["latency_ms"]),
        "error_rate": errors / (n + errors) if n + errors else math.nan,
    }
    return values, n


def judge(phase: Phase, rule: Rule, value: float, limit: float, n: int) -> Check:
    """One check: passes when `value` is on the right side of `limit`; NaN (nothing measured) fails."""
    ok = not math.isnan(value) and (value >= limit if rule.at_least else value <= limit)
    side = (">=" if rule.at_least else "<=") if ok else ("<" if rule.at_least else ">")
    shown = "n/a (no predictions in the window)" if math.isnan(value) else f"{value:.4f} {side} {limit}"
    reason = f"{phase} {rule.check}: {rule.what} {shown} (rollout.{rule.limit_key})"
    return Check(phase, rule.check, "pass" if ok else "fail", n, value, limit, reason=reason)


def analyze_phase_log(
    log: pd.DataFrame,
    phase: Phase,
    version: str,
    champion: str,
    errors: int,
    limits: RolloutConfig,
    bins: int,
    task: str = "binary",
) -> GateVerdict:
    """The phase's checks on a window of the prediction log; `errors` are the challenger's failed predictions in
    the window, `bins` the number of quantile bins of the champion's scores for the score PSI, `task` the
    challenger's (objective.task), which decides what agreement means."""
    values, n = phase_values(log, phase, version, champion, errors, bins, task, limits.regression_tolerance)
    checks = [judge(phase, r, values[r.check], float(getattr(limits, r.limit_key)), n) for r in PHASE_RULES[phase]]
    return GateVerdict(all(c.status == "pass" for c in checks), f"Production v{champion}", champion, checks)


def evidence_markdown(
    version: str,
    champion: str,
    gate: dict[str, Any] | None,
    phases: list[GateVerdict],
    policy: RolloutConfig | None = None,
    released: RolloutConfig | None = None,
    report: str | None = None,
) -> str:
    """The evidence shown on the approval form: a link to the release report with its pictures (`report`, when it
    could be built), the promotion gate's failures, every phase check, and where the release's own rollout policy
    differs from the one this environment applies (evidence only)."""
    replacing = f"v{champion}" if champion else "no version: the first release"
    lines = [f"### Promote v{version} to Production (replacing {replacing})?", ""]
    if report:
        lines += [
            f"**[Release report with pictures]({report})** (gate forest plot, curves, shadow and canary evidence; "
            f"offline copy: `tollgate report {version} --out v{version}.html`)",
            "",
        ]
    if policy is not None and released is not None:
        ours, theirs = policy.model_dump(), released.model_dump()
        differ = [k for k in ours if ours[k] != theirs.get(k)]
        if differ:
            lines.append("**The release's own rollout policy (evidence only; this environment's applies):**")
            lines += [f"- {k}: release says {theirs.get(k)!r}, applied {ours[k]!r}" for k in differ]
            lines.append("")
    if gate:
        lines.append(f"**Gate:** {'PASSED' if gate['passed'] else 'REJECTED'} against {gate['baseline']}")
        lines += [f"- {c['status']} {c['scope']}: {c['reason']}" for c in gate["checks"] if c["status"] != "pass"]
    for verdict in phases:
        lines += ["", "| check | value | limit | status |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {c.scope} {c.check} | {c.challenger:.4f} | {c.threshold} | {c.status} |" for c in verdict.checks]
    return "\n".join(lines)
