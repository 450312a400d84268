"""Gate decisions on synthetic scores: absolute minimums, paired bootstrap, segment rules, small segments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tasks.data import DataVersionError, pin_data_version
from tasks.gates import GateRejected, decide, enforce_verdict
from tests.helpers import bundled_config
from tollgate import objective as objective_module
from tollgate.objective import Objective, TieGroups, paired_bootstrap, poisson_weights

BINARY = Objective("binary", (0, 1), 0.5)


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
    rng = np.random.default_rng(1)
    y = (rng.random((3, 200)) < 0.4).astype("int64")
    p = rng.random((3, 200)).round(2)  # ties included
    for i in range(3):
        assert TieGroups(y[i], p[i]).value() == pytest.approx(roc_auc_score(y[i], p[i]), abs=1e-12)
        assert auc_rows(y, p)[i] == pytest.approx(roc_auc_score(y[i], p[i]))


def test_first_model_is_gated_on_minimums_only() -> None:
    frame, good, _ = _holdout({"gold": 300, "silver": 300})
    gates = bundled_config().gates
    verdict = decide(frame, good, {"auc": 0.9, "log_loss": 0.3, "n": 600}, _ds(), gates, BINARY, seed=1)
    assert verdict.passed and verdict.baseline.startswith("none: first model")
    assert [c.check for c in verdict.checks] == ["min_auc", "max_log_loss"]
    assert verdict.checks[0].reason == f"AUC 0.9000 >= min_auc {gates.minimums['auc']}"
    low = decide(frame, good, {"auc": 0.6, "log_loss": 0.3, "n": 600}, _ds(), gates, BINARY, seed=1)
    assert not low.passed and low.failures[0].check == "min_auc"
    assert low.failures[0].reason == f"AUC 0.6000 < min_auc {gates.minimums['auc']}"


def test_an_undefined_metric_fails_its_limit_naming_why() -> None:
    frame, good, _ = _holdout({"gold": 300})
    gates = bundled_config().gates
    verdict = decide(frame, good, {"auc": float("nan"), "log_loss": 0.3, "n": 300}, _ds(), gates, BINARY, seed=1)
    assert not verdict.passed and [c.check for c in verdict.failures] == ["min_auc"]
    assert "undefined" in verdict.failures[0].reason and "NaN" in verdict.failures[0].reason


def test_segment_that_is_clearly_worse_is_named() -> None:
    frame, good, bad_on_gold = _holdout({"gold": 300, "silver": 2000})
    gates = bundled_config().gates
    verdict = decide(
        frame,
        bad_on_gold,
        {"auc": 0.9, "log_loss": 0.3, "n": 2300},
        _ds(),
        gates,
        BINARY,
        1,
        good,
        "Production v1",
        "1",
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
        frame,
        bad_on_gold,
        {"auc": 0.9, "log_loss": 0.3, "n": 1260},
        _ds(),
        gates,
        BINARY,
        1,
        good,
        "Production v1",
        "1",
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
        frame, noisy, {"auc": 0.9, "log_loss": 0.3, "n": 400}, _ds(), strict, BINARY, 1, good, "Production v1", "1"
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
    report = evaluate_frame(frame, chal, ds, BINARY)
    verdict = decide(frame, chal, report["overall"], ds, gates, BINARY, 0, base, "Production v1", "1")
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
    rng = np.random.default_rng(3)
    y = (rng.random(1500) < 0.3).astype("int64")
    chal, champ = y * 0.5 + rng.random(1500) * 0.6, y * 0.4 + rng.random(1500) * 0.6
    if decimals is not None:
        chal, champ = chal.round(decimals), champ.round(decimals)
    diff, lo, hi = paired_bootstrap(TieGroups(y, chal), TieGroups(y, champ), len(y), 200, 0.9, 7)
    ref_lo, ref_hi = _matrix_bootstrap(y, chal, champ, 200, 0.9, 7)
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)
    assert diff == pytest.approx(roc_auc_score(y, chal) - roc_auc_score(y, champ), abs=1e-12)


def _assert_agrees_with_scipy(lo: float, hi: float, data: tuple, statistic: Any, **kwargs: Any) -> None:
    """Our percentile interval (lo, hi) is within 0.1 x its width of scipy's paired percentile bootstrap."""
    from scipy.stats import bootstrap

    ref = bootstrap(
        data,
        statistic,
        paired=True,
        n_resamples=2000,
        confidence_level=0.9,
        method="percentile",
        random_state=np.random.default_rng(6),
        **kwargs,
    ).confidence_interval
    width = hi - lo
    assert abs(lo - ref.low) < 0.1 * width and abs(hi - ref.high) < 0.1 * width


def test_bootstrap_interval_agrees_with_scipy_within_monte_carlo_error() -> None:
    rng = np.random.default_rng(11)
    y = (rng.random(800) < 0.35).astype("int64")
    chal, champ = y * 0.5 + rng.random(800) * 0.7, y * 0.45 + rng.random(800) * 0.7
    _, lo, hi = paired_bootstrap(TieGroups(y, chal), TieGroups(y, champ), len(y), 2000, 0.9, 5)
    _assert_agrees_with_scipy(
        lo,
        hi,
        (y, chal, champ),
        lambda a, b, c, axis=-1: auc_rows(a, b) - auc_rows(a, c),  # rank AUC of each resample (checked above)
        vectorized=True,
        batch=250,
    )


def _multiclass_case(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of 3 classes and two probability matrices (the first sharper than the second)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)

    def proba(signal: float) -> np.ndarray:
        logits = rng.normal(0, 1, (n, 3)) + signal * np.eye(3)[y]
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    return y, proba(1.6), proba(1.2)


def _regression_case(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(100, 30, n)
    return y, y + rng.normal(0, 20, n), y + rng.normal(0, 24, n)


def _ovr_auc(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Reference macro one-vs-rest AUC of each row of (samples x rows) label and (samples x rows x 3)
    probability arrays: the mean over classes of the Mann-Whitney rank AUC of class vs rest."""
    return np.mean([auc_rows((y == c).astype("int64"), proba[..., c]) for c in range(3)], axis=0)


def _rmse(y: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((y - value) ** 2, axis=-1))


def _improvements(task: str, y: np.ndarray, chal: np.ndarray, base: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The improvement of the challenger on every resample (rows of `idx`): AUC gain, or RMSE reduction."""
    if task == "multiclass":
        return _ovr_auc(y[idx], chal[idx]) - _ovr_auc(y[idx], base[idx])
    return _rmse(y[idx], base[idx]) - _rmse(y[idx], chal[idx])


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_streamed_bootstrap_of_auc_ovr_and_rmse_gives_the_matrix_interval_exactly(task: str) -> None:
    objective = Objective(task, (0, 1, 2) if task == "multiclass" else ())
    y, chal, base = (_multiclass_case if task == "multiclass" else _regression_case)(600, 4)
    higher = task == "multiclass"
    diff, lo, hi = paired_bootstrap(
        objective.statistic(y, chal), objective.statistic(y, base), len(y), 200, 0.9, 7, higher_better=higher
    )
    # the (samples x rows) reference: index every resample at once, compute the metric on each
    idx = np.random.default_rng(7).integers(0, len(y), size=(200, len(y)))
    diffs = _improvements(task, y, chal, base, idx)
    assert lo == pytest.approx(np.quantile(diffs, 0.05), abs=1e-12)
    assert hi == pytest.approx(np.quantile(diffs, 0.95), abs=1e-12)
    if higher:
        labels = [0, 1, 2]
        observed = roc_auc_score(y, chal, multi_class="ovr", labels=labels) - roc_auc_score(
            y, base, multi_class="ovr", labels=labels
        )
    else:
        observed = float(_rmse(y, base) - _rmse(y, chal))
    assert diff == pytest.approx(observed, abs=1e-12) and diff > 0  # the challenger is the better one


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_bootstrap_of_auc_ovr_and_rmse_agrees_with_scipy_within_monte_carlo_error(task: str) -> None:
    objective = Objective(task, (0, 1, 2) if task == "multiclass" else ())
    y, chal, base = (_multiclass_case if task == "multiclass" else _regression_case)(500, 9)
    higher = task == "multiclass"
    _, lo, hi = paired_bootstrap(
        objective.statistic(y, chal), objective.statistic(y, base), len(y), 2000, 0.9, 5, higher_better=higher
    )
    _assert_agrees_with_scipy(
        lo,
        hi,
        (np.arange(len(y)),),
        lambda r, axis=-1: _improvements(task, y, chal, base, r.astype("int64")),
        vectorized=True,
        batch=250,
    )


# -- the Poisson bootstrap of large holdouts (objective.POISSON_MIN_ROWS rows and more) ------------------------
def _statistics(task: str, n: int, seed: int) -> tuple[Objective, np.ndarray, np.ndarray, np.ndarray]:
    if task == "binary":
        rng = np.random.default_rng(seed)
        y = (rng.random(n) < 0.35).astype("int64")
        return Objective("binary"), y, y * 0.5 + rng.random(n) * 0.7, y * 0.45 + rng.random(n) * 0.7
    if task == "multiclass":
        return Objective("multiclass", (0, 1, 2)), *_multiclass_case(n, seed)
    return Objective("regression"), *_regression_case(n, seed)


@pytest.mark.parametrize("task", ["binary", "binary-ties", "multiclass", "regression"])
def test_weighted_statistics_equal_the_rows_repeated_by_their_weights(task: str) -> None:
    objective, y, chal, _ = _statistics(task.split("-")[0], 700, 2)
    if task == "binary-ties":
        chal = chal.round(1)
    w = poisson_weights(np.random.default_rng(4), len(y))
    stat = objective.statistic(y, chal)
    assert stat.weighted(w) == pytest.approx(stat.value(np.repeat(np.arange(len(y)), w)), abs=1e-12)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_poisson_bootstrap_agrees_with_scipy_within_monte_carlo_error(
    task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objective_module, "POISSON_MIN_ROWS", 1)  # the large-holdout path, on a small sample
    objective, y, chal, base = _statistics(task, 800, 9)
    higher = task != "regression"
    a, b = objective.statistic(y, chal), objective.statistic(y, base)
    _, lo, hi = paired_bootstrap(a, b, len(y), 2000, 0.9, 5, higher_better=higher)
    sign = 1.0 if higher else -1.0
    _assert_agrees_with_scipy(
        lo,
        hi,
        (np.arange(len(y)),),
        lambda r: sign * (a.value(r.astype("int64")) - b.value(r.astype("int64"))),
        vectorized=False,
    )


def test_poisson_bootstrap_of_a_large_holdout_matches_the_classic_one_and_repeats_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, y, chal, champ = _statistics("binary", objective_module.POISSON_MIN_ROWS + 10_000, 3)
    a, b = TieGroups(y, chal), TieGroups(y, champ)
    poisson = paired_bootstrap(a, b, len(y), 200, 0.9, 7)
    assert paired_bootstrap(a, b, len(y), 200, 0.9, 7) == poisson  # same seed, same interval, on any threads
    monkeypatch.setattr(objective_module, "MAX_THREADS", 1)
    assert paired_bootstrap(a, b, len(y), 200, 0.9, 7) == poisson
    monkeypatch.setattr(objective_module, "POISSON_MIN_ROWS", 10**9)  # the classic multinomial draws
    classic = paired_bootstrap(a, b, len(y), 200, 0.9, 7)
    width = classic[2] - classic[1]
    assert poisson[0] == classic[0]
    assert abs(poisson[1] - classic[1]) < 0.15 * width and abs(poisson[2] - classic[2]) < 0.15 * width
