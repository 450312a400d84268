"""The rollout phase analysis on small synthetic prediction logs, with numbers checkable by hand."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from tasks.analysis import Phase, analyze_phase_log, evidence_markdown
from tasks.rollout import phase_plan
from tests.helpers import bundled_config
from tollgate.config import RolloutConfig
from tollgate.predlog import records_to_frame

CHAMPION, CHALLENGER = "3", "4"


def limits(**update: Any) -> RolloutConfig:
    """Rollout limits that pass everything unless a test tightens one."""
    loose = {"min_agreement": 0.0, "max_score_psi": 100.0, "max_error_rate": 1.0, "max_p99_latency_ms": 1e6}
    return bundled_config().rollout.model_copy(update={**loose, **update})


def rows(role: str, version: str, requests: list[str], scores: list[float], **cols: list[Any]) -> pd.DataFrame:
    """Log rows of one role; decision defaults to score >= 0.25, latency to 5 ms."""
    n = len(requests)
    suffix = "" if role == "champion" else f"-{role}"
    return pd.DataFrame(
        {
            "prediction_id": [f"{r}{suffix}" for r in requests],
            "request_id": requests,
            "ts": [1000.0 + i for i in range(n)],
            "entity_id": [f"e{r}" for r in requests],
            "model_version": [version] * n,
            "role": [role] * n,
            "score": scores,
            "decision": cols.get("decision", [int(s >= 0.25) for s in scores]),
            "latency_ms": cols.get("latency_ms", [5.0] * n),
        }
    )


def log(*parts: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True)


def by_name(verdict: Any) -> dict[str, Any]:
    return {c.check: c for c in verdict.checks}


@pytest.fixture()
def shadow_log() -> pd.DataFrame:
    """Four paired requests (shadow rows in another order), one champion answer without a shadow answer, one
    shadow answer without a champion answer, and another version's rows that must be ignored."""
    return log(
        rows("champion", CHAMPION, ["r1", "r2", "r3", "r4", "r5"], [0.1, 0.2, 0.3, 0.4, 0.9], decision=[1, 0, 1, 0, 1]),
        rows("shadow", CHALLENGER, ["r4", "r3", "r2", "r1", "r9"], [0.4, 0.1, 0.1, 0.1, 0.9], decision=[0, 0, 0, 1, 1]),
        rows("shadow", "2", ["r1", "r2"], [0.9, 0.9], decision=[0, 1]),
    )


def test_shadow_pairs_answers_by_request_for_agreement_and_score_psi(shadow_log: pd.DataFrame) -> None:
    verdict = analyze_phase_log(shadow_log, "shadow", CHALLENGER, CHAMPION, 0, limits(), bins=2)
    checks = by_name(verdict)
    assert list(checks) == ["agreement", "score_psi", "p99_latency_ms", "error_rate"]
    # pairs r1..r4: decisions (1,1) (0,0) (1,0) (0,0) -> 3 of 4 agree
    assert checks["agreement"].challenger == pytest.approx(0.75) and checks["agreement"].n == 4
    # champion scores .1 .2 .3 .4 -> one edge at .25, proportions (.5, .5); shadow .1 .1 .1 .4 -> (.75, .25)
    expected_psi = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert checks["score_psi"].challenger == pytest.approx(expected_psi) == pytest.approx(0.274653, abs=1e-6)
    assert checks["error_rate"].challenger == 0.0 and verdict.passed
    assert verdict.baseline == f"Production v{CHAMPION}" and verdict.baseline_version == CHAMPION


@pytest.mark.parametrize(
    ("tight", "check", "words"),
    [
        ({"min_agreement": 0.8}, "agreement", ["0.7500 < 0.8", "rollout.min_agreement"]),
        ({"max_score_psi": 0.25}, "score_psi", ["0.2747 > 0.25", "rollout.max_score_psi"]),
        ({"max_p99_latency_ms": 4.0}, "p99_latency_ms", ["5.0000 > 4.0", "rollout.max_p99_latency_ms"]),
    ],
)
def test_a_failing_check_names_itself_and_its_limit(
    shadow_log: pd.DataFrame, tight: dict[str, float], check: str, words: list[str]
) -> None:
    verdict = analyze_phase_log(shadow_log, "shadow", CHALLENGER, CHAMPION, 0, limits(**tight), bins=2)
    assert not verdict.passed
    assert [c.check for c in verdict.failures] == [check]
    failed = verdict.failures[0]
    assert failed.reason.startswith(f"shadow {check}:") and all(w in failed.reason for w in words), failed.reason
    assert failed.threshold == next(iter(tight.values()))


def test_a_check_exactly_at_its_limit_passes(shadow_log: pd.DataFrame) -> None:
    verdict = analyze_phase_log(shadow_log, "shadow", CHALLENGER, CHAMPION, 0, limits(min_agreement=0.75), bins=2)
    assert verdict.passed and ">= 0.75" in by_name(verdict)["agreement"].reason


def canary_log(canary_scores: list[float], latencies: list[float] | None = None) -> pd.DataFrame:
    n = len(canary_scores)
    requests = [f"c{i}" for i in range(n)]
    return log(
        rows("champion", CHAMPION, ["a", "b", "c", "d"], [0.1, 0.2, 0.3, 0.4]),
        rows("canary", CHALLENGER, requests, canary_scores, latency_ms=latencies or [5.0] * n),
    )


def test_canary_compares_to_the_champions_answers_in_the_window_without_agreement() -> None:
    same = analyze_phase_log(canary_log([0.15, 0.35, 0.1, 0.4]), "canary", CHALLENGER, CHAMPION, 0, limits(), bins=2)
    assert [c.check for c in same.checks] == ["score_psi", "p99_latency_ms", "error_rate"]
    assert by_name(same)["score_psi"].challenger == pytest.approx(0.0)
    shifted = analyze_phase_log(canary_log([0.35, 0.4, 0.45, 0.5]), "canary", CHALLENGER, CHAMPION, 0, limits(), 2)
    # all canary scores above the champion's median edge: proportions (0, 1), the empty bin floored at 1e-4
    floor = 1e-4
    expected = (floor - 0.5) * math.log(floor / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert by_name(shifted)["score_psi"].challenger == pytest.approx(expected) == pytest.approx(4.6043, abs=1e-4)


@pytest.mark.parametrize(("errors", "limit", "passed"), [(2, 0.1, False), (2, 0.2, True), (0, 0.0, True)])
def test_canary_error_rate_counts_failed_predictions_among_all_attempts(
    errors: int, limit: float, passed: bool
) -> None:
    frame = canary_log([0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4])  # 8 answered
    verdict = analyze_phase_log(frame, "canary", CHALLENGER, CHAMPION, errors, limits(max_error_rate=limit), bins=2)
    rate = by_name(verdict)["error_rate"]
    assert rate.challenger == pytest.approx(errors / (8 + errors)) and rate.n == 8
    assert verdict.passed is passed and (rate.status == "pass") is passed


@pytest.mark.parametrize(("limit", "passed"), [(99.0, False), (99.02, True)])
def test_canary_latency_is_the_99th_percentile(limit: float, passed: bool) -> None:
    # latencies 1..100 ms: the 99th percentile interpolates to 99 + 0.01 * (100 - 99)
    frame = canary_log([0.25] * 100, latencies=[float(i) for i in range(1, 101)])
    verdict = analyze_phase_log(frame, "canary", CHALLENGER, CHAMPION, 0, limits(max_p99_latency_ms=limit), bins=2)
    assert by_name(verdict)["p99_latency_ms"].challenger == pytest.approx(99.01)
    assert verdict.passed is passed


@pytest.mark.parametrize("phase", ["shadow", "canary"])
@pytest.mark.parametrize("window", ["empty", "champion only"])
def test_an_empty_window_fails_every_check_and_says_why(phase: Phase, window: str) -> None:
    frame = records_to_frame([]) if window == "empty" else rows("champion", CHAMPION, ["a", "b"], [0.1, 0.2])
    verdict = analyze_phase_log(frame, phase, CHALLENGER, CHAMPION, 0, limits(), bins=10)
    assert not verdict.passed and len(verdict.failures) == len(verdict.checks)
    assert all(c.n == 0 and "no predictions in the window" in c.reason for c in verdict.checks)


def test_phase_plan_and_evidence_come_from_the_policy_and_the_verdicts(shadow_log: pd.DataFrame) -> None:
    policy = limits(shadow_requests=7, canary_share=0.3, canary_requests=9)
    assert phase_plan(policy) == [("shadow", 0.0, 7), ("canary", 0.3, 9)]
    verdict = analyze_phase_log(shadow_log, "shadow", CHALLENGER, CHAMPION, 0, limits(min_agreement=0.8), bins=2)
    gate = {"passed": True, "baseline": "Production v3", "checks": [{"status": "fail", "scope": "x", "reason": "r"}]}
    text = evidence_markdown(CHALLENGER, CHAMPION, gate, [verdict])
    assert "replacing v3" in text and "- fail x: r" in text
    assert "| shadow agreement | 0.7500 | 0.8 | fail |" in text
    assert "Release report" not in text  # none could be built: no link
    linked = evidence_markdown(CHALLENGER, CHAMPION, gate, [verdict], report="http://mlflow/#/runs/r/report.html")
    assert linked.splitlines()[2].startswith("**[Release report with pictures](http://mlflow/#/runs/r/report.html)**")


@pytest.mark.parametrize(
    ("task", "champion", "challenger", "expected"),
    [
        # classes: pairs (0,0) (1,2) (2,2) (2,1) -> 2 of 4 equal
        ("multiclass", [0, 1, 2, 2], [0, 2, 2, 1], 0.5),
        # values: champion std of 1,2,3,4 = sqrt(1.25) = 1.1180, tolerance 0.25 x that = 0.2795;
        # differences 0.1, 0.5, 0.0, 0.2 -> 3 of 4 within
        ("regression", [1.0, 2.0, 3.0, 4.0], [1.1, 2.5, 3.0, 4.2], 0.75),
        # a constant champion (std 0): the tolerance is 0.25 x its magnitude (2.0 -> 0.5): 2.4 and 1.6 agree, 2.6 not
        ("regression", [2.0, 2.0, 2.0, 2.0], [2.4, 1.6, 2.6, 2.0], 0.75),
    ],
)
def test_shadow_agreement_follows_the_task(
    task: str, champion: list[float], challenger: list[float], expected: float
) -> None:
    requests = ["r1", "r2", "r3", "r4"]
    frame = log(
        rows("champion", CHAMPION, requests, [0.5] * 4, decision=champion),
        rows("shadow", CHALLENGER, requests, [0.5] * 4, decision=challenger),
    )
    verdict = analyze_phase_log(frame, "shadow", CHALLENGER, CHAMPION, 0, limits(), bins=2, task=task)
    assert by_name(verdict)["agreement"].challenger == pytest.approx(expected)
    assert by_name(verdict)["agreement"].n == 4
