"""Estimated AUC before the labels arrive (issue 36) on synthetic worlds with a known truth: under covariate shift
the realized AUC of a window falls inside the estimate's 95% interval; under concept shift it does not; the
expected AUC equals scikit-learn's AUC when the probabilities are 0 or 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tasks.estimation import estimate_rows  # imports Prefect (tasks.common): at collection, not in a test
from tests.helpers import bundled_config
from tollgate.estimation import Calibration, estimate_auc, expected_auc, fit_calibration, simulated_aucs
from tollgate.objective import Objective


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _world(n: int, shift: float, slope: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the model's scores): the model learned P(y|x) = sigmoid(1.5x - 0.5); the world has `slope`."""
    x = rng.normal(shift, 1.0, n)
    y = (rng.random(n) < _sigmoid(slope * x - 0.5)).astype(int)
    return y, _sigmoid(1.5 * x - 0.5)


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    y, scores = _world(5000, 0.0, 1.5, np.random.default_rng(0))  # the gate's holdout
    return fit_calibration(y, scores)


def test_expected_auc_is_the_auc_when_the_labels_are_certain() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(500).round(2)  # ties included
    y = (rng.random(500) < scores).astype(int)
    assert expected_auc(y.astype(float), scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    sims = simulated_aucs(y.astype(float), scores, draws=3)
    np.testing.assert_allclose(sims, roc_auc_score(y, scores), atol=1e-12)


def test_covariate_shift_the_realized_auc_falls_inside_the_interval(calibration: Calibration) -> None:
    rng = np.random.default_rng(2)
    covered = []
    for shift in np.linspace(-1.0, 1.0, 20):  # P(X) moves window by window; P(Y|X) stays
        y, scores = _world(2000, shift, 1.5, rng)
        estimate = estimate_auc(calibration, scores, seed=int(shift * 100) + 100)
        covered.append(estimate.covers(roc_auc_score(y, scores)))
    assert sum(covered) >= 18, covered  # at least 90% of 20 windows


def test_concept_shift_the_estimate_stays_confident_and_misses(calibration: Calibration) -> None:
    rng = np.random.default_rng(3)
    missed = []
    for _ in range(10):
        y, scores = _world(2000, 0.0, 0.3, rng)  # P(Y|X) weakened: the scores do not move
        estimate = estimate_auc(calibration, scores)
        realized = roc_auc_score(y, scores)
        missed.append(not estimate.covers(realized) and realized < estimate.low)
    assert all(missed), missed


def test_too_few_rows_or_one_class_is_no_estimate_and_says_why(calibration: Calibration) -> None:
    small = estimate_auc(calibration, np.array([0.2, 0.4]))
    assert np.isnan(small.value) and small.why == "2 predictions, fewer than 30"
    certain = Calibration((0.0, 1.0), (0.0, 0.0))  # a map that says no row is ever positive
    assert "one class" in estimate_auc(certain, np.linspace(0, 1, 100)).why


def test_the_map_round_trips_as_json_and_is_monotone(calibration: Calibration) -> None:
    again = Calibration.from_dict(calibration.to_dict())
    assert again == calibration
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(again.apply(grid)) >= 0)
    with pytest.raises(ValueError, match="equal, non-empty lists"):
        Calibration.from_dict({"x": [0.1], "y": []})


def test_estimate_rows_per_version_role_window_and_segment(calibration: Calibration) -> None:
    """Rows for every (version, role, scope, window); a version without a map says why; one with a map gives an
    interval around its estimate; the same log gives the same numbers (seeded)."""
    rng = np.random.default_rng(4)
    n = 1200
    _, scores = _world(n, 0.0, 1.5, rng)
    log = pd.DataFrame(
        {
            "model_version": np.where(np.arange(n) < 1000, "3", "4"),
            "role": np.where(np.arange(n) < 1000, "champion", "canary"),
            "ts": 1.7e9 + np.arange(n) * 36.0,  # 1,200 predictions over 12 hours
            "score": scores,
            "f.plan": rng.choice(["basic", "premium"], n),
        }
    )
    ds = bundled_config().dataset.model_copy(update={"segments": ["plan"]})
    rows = estimate_rows(log, {"3": calibration, "4": "v4 has no estimator.json"}, ds, every=6 * 3600, draws=50)
    champion = [r for r in rows if r["model_version"] == "3"]
    assert {(r["scope"], r["window"].split("..")[0][:13]) for r in champion if r["scope"] == "overall"} == {
        ("overall", "all"),
        ("overall", "2023-11-14T22"),
        ("overall", "2023-11-15T04"),
    }
    assert {r["scope"] for r in champion} == {"overall", "plan=basic", "plan=premium"}
    whole = next(r for r in champion if (r["scope"], r["window"]) == ("overall", "all"))
    assert whole["n"] == 1000 and whole["low"] < whole["auc"] < whole["high"]
    canary = [r for r in rows if r["model_version"] == "4"]
    assert canary and all(r["auc"] is None and r["why"] == "v4 has no estimator.json" for r in canary)
    assert estimate_rows(log, {"3": calibration}, ds, every=6 * 3600, draws=50) == [
        r for r in rows if r["model_version"] == "3"
    ]


def test_a_model_estimation_is_not_built_for_records_why_and_logs_no_metric() -> None:
    from tasks.estimation import estimator_body, estimator_metrics

    body = estimator_body(np.array([0, 1, 2] * 10), np.ones((30, 3)) / 3, Objective("multiclass", (0, 1, 2)))
    assert body["method"] is None and "binary models only" in body["why"]
    assert estimator_metrics(body) == {} and estimator_metrics(None) == {}
    y, scores = _world(400, 0.0, 1.5, np.random.default_rng(5))
    binary = estimator_body(y, scores, Objective("binary"))
    assert set(estimator_metrics(binary)) == {
        "estimator_estimated_auc",
        "estimator_realized_auc",
        "estimator_abs_error",
    }
