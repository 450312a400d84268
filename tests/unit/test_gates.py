"""Gate decisions on synthetic scores: absolute minimums, paired bootstrap, segment rules, small segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tasks.data import DataVersionError, pin_data_version
from tasks.gates import GateRejected, decide, enforce_verdict
from tests.helpers import bundled_config


def _holdout(n_per: dict[str, int], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows with a tier column and labels; a baseline scorer, and a challenger that is better everywhere
    except on 'gold', where it is noise."""
    rng = np.random.default_rng(seed)
    tiers = np.concatenate([[t] * n for t, n in n_per.items()])
    y = (rng.random(len(tiers)) < 0.3).astype("int64")
    good = np.clip(y * 0.4 + rng.random(len(y)) * 0.6, 0, 1)
    better = np.clip(y * 0.7 + rng.random(len(y)) * 0.3, 0, 1)
    bad_on_gold = np.where(tiers == "gold", np.clip(y * 0.1 + rng.random(len(y)) * 0.9, 0, 1), better)
    frame = pd.DataFrame({"tier": tiers, "region": "north", "plan": "basic", "churned": y})
    return frame, good, bad_on_gold


def auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Reference: AUC of each row of (y, p) matrices via the Mann-Whitney rank formula."""
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1)
    pos = y.sum(axis=1)
    neg = y.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def _ds():  # type: ignore[no-untyped-def]
    return bundled_config().dataset.model_copy(update={"segments": ["tier"]})


def test_tie_group_auc_matches_sklearn() -> None:
    from tasks.gates import _TieGroups

    rng = np.random.default_rng(1)
    y = (rng.random((3, 200)) < 0.4).astype("int64")
    p = rng.random((3, 200)).round(2)  # ties included
    for i in range(3):
        assert _TieGroups(y[i], p[i]).auc() == pytest.approx(roc_auc_score(y[i], p[i]), abs=1e-12)
        assert auc_rows(y, p)[i] == pytest.approx(roc_auc_score(y[i], p[i]))


def test_first_model_is_gated_on_minimums_only() -> None:
    frame, good, _ = _holdout({"gold": 300, "silver": 300})
    gates = bundled_config().gates
    verdict = decide(frame, good, {"auc": 0.9, "log_loss": 0.3, "n": 600}, _ds(), gates, seed=1)
    assert verdict.passed and verdict.baseline.startswith("none: first model")
    low = decide(frame, good, {"auc": 0.6, "log_loss": 0.3, "n": 600}, _ds(), gates, seed=1)
    assert not low.passed and low.failures[0].check == "min_auc"


def test_segment_that_is_clearly_worse_is_named() -> None:
    frame, good, bad_on_gold = _holdout({"gold": 300, "silver": 2000})
    gates = bundled_config().gates
    verdict = decide(
        frame, bad_on_gold, {"auc": 0.9, "log_loss": 0.3, "n": 2300}, _ds(), gates, 1, good, "Production v1", "1"
    )
    assert not verdict.passed
    assert [c.scope for c in verdict.failures] == ["tier=gold"]  # better overall, worse on gold
    gold = verdict.failures[0]
    assert gold.ci_high is not None and gold.ci_high < -gates.non_inferiority_margin
    assert "tier=gold" in verdict.summary() and "confidently worse" in verdict.summary()
    with pytest.raises(GateRejected, match="tier=gold"):
        enforce_verdict.fn(verdict, "2")


def test_small_segment_is_reported_not_gated_rather_than_passed() -> None:
    frame, good, bad_on_gold = _holdout({"gold": 60, "silver": 1200})
    gates = bundled_config().gates
    verdict = decide(
        frame, bad_on_gold, {"auc": 0.9, "log_loss": 0.3, "n": 1260}, _ds(), gates, 1, good, "Production v1", "1"
    )
    gold = next(c for c in verdict.checks if c.scope == "tier=gold")
    assert gold.status == "not_gated" and "below min_segment_size" in gold.reason
    assert verdict.passed and "not gated tier=gold" in verdict.summary()


def test_strict_rule_rejects_what_it_cannot_show_non_inferior() -> None:
    frame, good, _ = _holdout({"gold": 200, "silver": 200})
    rng = np.random.default_rng(5)
    noisy = np.clip(good + rng.normal(0, 0.15, len(good)), 0, 1)  # a bit worse, wide CI at n=200
    strict = bundled_config().gates.model_copy(update={"segment_test": "non_inferiority"})
    verdict = decide(
        frame, noisy, {"auc": 0.9, "log_loss": 0.3, "n": 400}, _ds(), strict, 1, good, "Production v1", "1"
    )
    assert any(
        c.check == "auc_non_inferiority" and c.scope.startswith("tier=") and c.status == "fail" for c in verdict.checks
    )


def test_dirty_tree_is_refused_unless_allowed(tmp_path: Path) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "data.csv").write_text("x\n1\n")
    git("add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    (tmp_path / "params.yaml").write_text("a: 2\n")
    with pytest.raises(DataVersionError, match="uncommitted changes"):
        pin_data_version.fn(str(tmp_path), str(tmp_path / "data.csv"), 1, allow_dirty=False)
    version = pin_data_version.fn(str(tmp_path), str(tmp_path / "data.csv"), 1, allow_dirty=True)
    assert version.git_dirty and len(version.git_sha or "") == 40 and not version.matches_dvc


def test_a_dataset_without_segments_is_gated_overall_only() -> None:
    from tasks.evaluation import evaluate_frame
    from tollgate.config import DatasetConfig

    ds = DatasetConfig.model_validate({**bundled_config().dataset.model_dump(), "segments": []})
    frame, base, chal = _holdout({"bronze": 300, "gold": 300})
    gates = bundled_config().gates
    report = evaluate_frame(frame, chal, ds, 0.5)
    verdict = decide(frame, chal, report["overall"], ds, gates, 0, base, "Production v1", "1")
    assert report["segments"] == {}
    assert {c.scope for c in verdict.checks} == {"overall"}


def _matrix_bootstrap(y, chal, champ, samples, confidence, seed):  # type: ignore[no-untyped-def]
    """The (samples x rows) reference: index every resample, rank it, take the quantiles."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(samples, len(y)))
    diffs = auc_rows(y[idx], chal[idx]) - auc_rows(y[idx], champ[idx])
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    return np.quantile(diffs, alpha), np.quantile(diffs, 1 - alpha)


@pytest.mark.parametrize("decimals", [2, None])  # heavy ties, and continuous scores
def test_streamed_bootstrap_gives_the_matrix_interval_exactly(decimals: int | None) -> None:
    from tasks.gates import paired_bootstrap_auc

    rng = np.random.default_rng(3)
    y = (rng.random(1500) < 0.3).astype("int64")
    chal, champ = y * 0.5 + rng.random(1500) * 0.6, y * 0.4 + rng.random(1500) * 0.6
    if decimals is not None:
        chal, champ = chal.round(decimals), champ.round(decimals)
    diff, lo, hi = paired_bootstrap_auc(y, chal, champ, 200, 0.9, 7)
    ref_lo, ref_hi = _matrix_bootstrap(y, chal, champ, 200, 0.9, 7)
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)
    assert diff == pytest.approx(roc_auc_score(y, chal) - roc_auc_score(y, champ), abs=1e-12)


def test_bootstrap_interval_agrees_with_scipy_within_monte_carlo_error() -> None:
    from scipy.stats import bootstrap

    from tasks.gates import paired_bootstrap_auc

    rng = np.random.default_rng(11)
    y = (rng.random(800) < 0.35).astype("int64")
    chal, champ = y * 0.5 + rng.random(800) * 0.7, y * 0.45 + rng.random(800) * 0.7
    _, lo, hi = paired_bootstrap_auc(y, chal, champ, 2000, 0.9, 5)
    ref = bootstrap(
        (y, chal, champ),
        lambda a, b, c: roc_auc_score(a, b) - roc_auc_score(a, c),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        confidence_level=0.9,
        method="percentile",
        random_state=np.random.default_rng(6),
    ).confidence_interval
    width = hi - lo
    assert abs(lo - ref.low) < 0.1 * width and abs(hi - ref.high) < 0.1 * width
