"""Estimated performance before the labels arrive (issue 36) on synthetic worlds with a known truth, per task:
under covariate shift the realized metric of a window falls inside the estimate's 95% interval in >= 90% of
windows; under concept shift it does not and the calibration check says the map no longer holds; with no shift
the check stays quiet. The expected AUC equals scikit-learn's AUC when the probabilities are 0 or 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_squared_error, roc_auc_score

from tasks.estimation import estimate_rows  # imports Prefect (tasks.common): at collection, not in a test
from tests.helpers import bundled_config
from tollgate.config import LoadedConfig
from tollgate.estimation import (
    BinaryEstimator,
    Calibration,
    estimate_auc,
    estimator_from_dict,
    expected_auc,
    fit_calibration,
    fit_estimator_for,
    simulated_aucs,
)
from tollgate.objective import Objective
from tollgate.release import Release


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
    maps = {"3": BinaryEstimator(calibration), "4": "v4 has no estimator.json"}
    rows = estimate_rows(log, maps, ds, "auc", every=6 * 3600, draws=50)  # type: ignore[arg-type]
    champion = [r for r in rows if r["model_version"] == "3"]
    assert {(r["scope"], r["window"].split("..")[0][:13]) for r in champion if r["scope"] == "overall"} == {
        ("overall", "all"),  # 22:13 .. 10:13 the next day, in windows aligned to the epoch (as backfill's)
        ("overall", "2023-11-14T18"),
        ("overall", "2023-11-15T00"),
        ("overall", "2023-11-15T06"),
    }
    assert {r["scope"] for r in champion} == {"overall", "plan=basic", "plan=premium"}
    whole = next(r for r in champion if (r["scope"], r["window"]) == ("overall", "all"))
    assert whole["n"] == 1000 and whole["low"] < whole["estimate"] < whole["high"] and whole["metric"] == "auc"
    canary = [r for r in rows if r["model_version"] == "4"]
    assert canary and all(r["estimate"] is None and r["why"] == "v4 has no estimator.json" for r in canary)
    assert estimate_rows(log, {"3": BinaryEstimator(calibration)}, ds, "auc", every=6 * 3600, draws=50) == [
        r for r in rows if r["model_version"] == "3"
    ]


def test_every_task_gets_an_estimator_whose_quality_is_logged() -> None:
    from tasks.estimation import estimator_body, estimator_metrics

    rng = np.random.default_rng(5)
    y, scores = _world(400, 0.0, 1.5, rng)
    binary = estimator_body(y, scores, Objective("binary"))
    assert set(estimator_metrics(binary)) == {
        "estimator_estimated_auc",
        "estimator_realized_auc",
        "estimator_abs_error",
    }
    y3, proba = _classes(600, 0.0, 1.0, rng)
    multi = estimator_body(y3, proba, Objective("multiclass", (0, 1, 2)))
    assert multi["quality"]["metric"] == "auc_ovr" and multi["quality"]["covered"] is not None
    assert set(estimator_metrics(multi)) == {
        "estimator_estimated_auc_ovr",
        "estimator_realized_auc_ovr",
        "estimator_abs_error",
    }
    yr, value = _values(600, 0.0, 1.0, rng)
    reg = estimator_body(yr, value, Objective("regression"))
    assert reg["metric"] == "rmse" and reg["quality"]["abs_error"] < 0.2
    for body in (binary, multi, reg):  # stored as JSON, read back as the same estimator
        again = estimator_from_dict(json.loads(json.dumps(body)))
        assert again == estimator_from_dict(body) and again.metric == body["metric"]
    assert estimator_metrics(None) == {}
    with pytest.raises(ValueError, match="no calibration, calibrations or error_map"):
        estimator_from_dict({"task": "binary"})


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


_W = np.array([[1.5, 0.0], [0.0, 1.5], [-1.0, -1.0]])


def _classes(n: int, shift: float, sharpness: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(classes 0..2, the model's probabilities): the model learned softmax(W x); the world has sharpness * W x."""
    x = rng.normal(shift, 1.0, (n, 2))
    truth = _softmax(sharpness * (x @ _W.T))
    y = (np.cumsum(truth, axis=1)[:, :-1] < rng.random(n)[:, None]).sum(axis=1)
    return y, _softmax(x @ _W.T)


def _values(n: int, shift: float, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(truth, the model's predictions): errors grow with |x| (heteroscedastic); `noise` scales them."""
    x = rng.normal(shift, 1.0, n)
    return 2 * x + 1 + rng.normal(0, 1, n) * (0.5 + 0.5 * np.abs(x)) * noise, 2 * x + 1


def _auc_ovr(y: np.ndarray, proba: np.ndarray) -> float:
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def _rmse(y: np.ndarray, value: np.ndarray) -> float:
    return float(np.sqrt(mean_squared_error(y, value)))


WORLDS = {  # task: (world, realized metric, the world's concept-shift parameter)
    "binary": (lambda n, shift, p, rng: _world(n, shift, 1.5 * p, rng), lambda y, s: float(roc_auc_score(y, s)), 0.2),
    "multiclass": (_classes, _auc_ovr, 0.3),
    "regression": (_values, _rmse, 1.6),
}


@pytest.mark.parametrize("task", sorted(WORLDS))
def test_covariate_shift_is_covered_concept_shift_is_caught_no_shift_is_quiet(task: str) -> None:
    world, realized_of, concept = WORLDS[task]
    rng = np.random.default_rng(7)
    estimator = fit_estimator_for(task, *world(3000, 0.0, 1.0, rng))  # the gate's holdout
    covered, quiet = [], []
    for k, shift in enumerate(np.linspace(-0.7, 0.7, 20)):  # (a) P(X) moves window by window; P(Y|X) stays
        y, out = world(2000, shift, 1.0, rng)
        covered.append(estimator.estimate(out, draws=100, seed=k).covers(realized_of(y, out)))
        quiet.append(not estimator.calibration_check(out, y).shifted)
    assert sum(covered) >= 18, covered  # >= 90% of 20 windows
    assert all(quiet), quiet  # (c) the labels agree with the stored map: no concept shift called
    for k in range(5):  # (b) P(Y|X) changes: the outputs do not move, the estimate misses, the check sees it
        y, out = world(2000, 0.0, concept, rng)
        estimate = estimator.estimate(out, draws=100, seed=k)
        assert not estimate.covers(realized_of(y, out)), (estimate, realized_of(y, out))
        assert estimator.calibration_check(out, y).shifted


def test_the_calibration_check_allows_for_the_maps_own_error_on_large_windows() -> None:
    """A map fitted on 2,400 holdout rows, checked on 20,000 labelled rows a window: its own fitting error must not
    read as a concept shift where the window reaches scores the holdout had few of."""
    rng = np.random.default_rng(8)
    estimator = fit_estimator_for("binary", *_world(2400, 0.0, 1.5, rng))
    calls = [estimator.calibration_check(*_world(20_000, shift, 1.5, rng)[::-1]) for shift in np.linspace(-1, 1, 10)]
    assert not any(c.shifted for c in calls), [c.p_value for c in calls]
    assert estimator.calibration_check(*_world(20_000, 0.0, 0.3, rng)[::-1]).shifted


def _drift_window(world_shift: float, k: int, rng: np.random.Generator, estimator: Any) -> dict[str, Any]:
    """estimate_now's result for one drift window of v1's champion traffic (the binary world, 1,000 rows)."""
    _, scores = _world(1000, world_shift, 1.5, rng)
    log = pd.DataFrame(
        {"model_version": "1", "role": "champion", "ts": 1.7e9 + k * 3600 + np.arange(1000.0), "score": scores}
    )
    ds = bundled_config().dataset.model_copy(update={"segments": []})
    return {"metric": "auc", "rows": estimate_rows(log, {"1": estimator}, ds, "auc", draws=50)}


def test_an_estimated_drop_needs_n_windows_in_a_row_and_never_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(c) no shift: 20 windows, no estimated-drop signal; then a drop: `below` until the Nth window in a row,
    `degraded` (the alert marked ESTIMATED, the retrain trigger's event) from then on; a rerun over a window
    already counted does not count it twice; a good window resets the count. No severe, no rollback."""
    from tasks.actions import PERFORMANCE_DEGRADED, estimated_drop_action
    from tasks.estimation import estimated_verdict
    from tollgate.context import Context
    from tollgate.paths import StatePaths

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the event is not sent (a unit test has no server)
    rng = np.random.default_rng(9)
    estimator = fit_estimator_for("binary", *_world(5000, 0.0, 1.5, rng))
    cfg = bundled_config()  # live_degraded_at 0.65, live_severe_at 0.55
    cfg = cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(update={"live_degraded_at": 0.78})})
    release = Release(cfg.project.registered_model, "1", "run", "Production", {}, cfg, "http://unused")
    ctx = Context(LoadedConfig(cfg, tmp_path / "pipeline.yaml", "dev", {}), StatePaths(tmp_path))
    quiet = [estimated_verdict(ctx, release, _drift_window(0.0, k, rng, estimator), 1.7e9 + k) for k in range(20)]
    assert {v["status"] for v in quiet} == {"ok"}, [round(v["value"], 3) for v in quiet]

    def squeezed(k: int) -> dict[str, Any]:  # P(X) squeezed toward the middle: customers alike, a lower AUC
        scores = _sigmoid(1.5 * rng.normal(0.0, 0.3, 1000) - 0.5)
        return {"metric": "auc", "rows": estimate_rows(_log(scores, k), {"1": estimator}, _ds(), "auc", draws=50)}

    seen = [estimated_verdict(ctx, release, squeezed(k), 1.7e9 + 100 + k) for k in range(3)]
    assert [v["status"] for v in seen] == ["below", "below", "degraded"], seen
    assert [v["consecutive"] for v in seen] == [1, 2, 3] and all(v["value"] < 0.78 for v in seen)
    again = estimated_verdict(ctx, release, squeezed(9), 1.7e9 + 102)  # the same window end: not counted again
    assert again["consecutive"] == 3 and again["status"] == "degraded"
    acted = estimated_drop_action(ctx, release, {"verdict": again}, "run-1")
    assert acted.action == "alerted" and [a.event for a in acted.alerts] == [PERFORMANCE_DEGRADED]
    assert [f["channel"] for f in acted.failed] == ["prefect-event"]  # recorded, as any event that cannot go out
    assert acted.alerts[0].payload["estimated"] is True and "(ESTIMATED)" in acted.alerts[0].text
    good = estimated_verdict(ctx, release, _drift_window(0.0, 50, rng, estimator), 1.7e9 + 200)
    assert (good["status"], good["consecutive"]) == ("ok", 0)
    assert estimated_drop_action(ctx, release, {"verdict": good}, "run-2").action == "none"


def _log(scores: np.ndarray, k: int) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame(
        {"model_version": "1", "role": "champion", "ts": 1.7e9 + k * 3600 + np.arange(n * 1.0), "score": scores}
    )


def _ds() -> Any:
    return bundled_config().dataset.model_copy(update={"segments": []})


@pytest.mark.parametrize(("task", "margin"), [("binary", -0.05), ("multiclass", -0.05), ("regression", 0.15)])
def test_no_shift_raises_no_estimated_drop_in_20_windows(
    task: str, margin: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(c) per task: 20 windows of 1,000 predictions from the holdout's own world, the threshold a usual margin
    from the holdout's value (AUC 0.05 lower, RMSE 15% higher): the estimate's noise alone never crosses it."""
    from tasks.estimation import estimated_verdict
    from tollgate.context import Context
    from tollgate.paths import StatePaths

    world, realized_of, _ = WORLDS[task]
    rng = np.random.default_rng(11)
    y, out = world(3000, 0.0, 1.0, rng)
    estimator = fit_estimator_for(task, y, out)
    holdout = realized_of(y, out)
    threshold = holdout * (1 + margin) if task == "regression" else holdout + margin
    cfg = _task_config(task, threshold)
    release = Release(cfg.project.registered_model, "1", "run", "Production", {}, cfg, "http://unused")
    ctx = Context(LoadedConfig(cfg, tmp_path / "pipeline.yaml", "dev", {}), StatePaths(tmp_path))
    verdicts = []
    for k in range(20):
        _, out = world(1000, 0.0, 1.0, rng)
        log = _log(out if task != "multiclass" else np.zeros(len(out)), k)
        if task == "multiclass":
            log["proba"] = list(out)
        rows = estimate_rows(log, {"1": estimator}, _ds(), estimator.metric, draws=50)
        verdicts.append(estimated_verdict(ctx, release, {"metric": estimator.metric, "rows": rows}, 1.7e9 + k))
    assert {v["status"] for v in verdicts} == {"ok"}, [(round(v["value"], 3), threshold) for v in verdicts]


def _task_config(task: str, degraded_at: float) -> Any:
    """The bundled config as a `task` model whose live_degraded_at is `degraded_at` (severe further out)."""
    cfg = bundled_config()
    ds = cfg.dataset
    if task == "multiclass":
        target = ds.columns[ds.target].model_copy(update={"values": [0, 1, 2]})
        ds = ds.model_copy(update={"columns": {**ds.columns, ds.target: target}})
    severe = degraded_at * 1.5 if task == "regression" else degraded_at - 0.1
    monitoring = cfg.monitoring.model_copy(update={"live_degraded_at": degraded_at, "live_severe_at": severe})
    model = cfg.model.model_copy(update={"task": task})
    return cfg.model_copy(update={"model": model, "dataset": ds, "monitoring": monitoring})


def test_the_drift_command_says_what_the_estimate_means() -> None:
    from tollgate.app.commands.monitor import _estimate_text

    verdict = {"metric": "auc", "value": 0.61, "low": 0.58, "high": 0.64, "threshold": 0.65, "needed": 3}
    below = _estimate_text({**verdict, "status": "below", "consecutive": 2})
    assert below.startswith("estimated live auc 0.6100 (95% [0.5800, 0.6400]") and "BELOW, 2 of 3 windows" in below
    degraded = _estimate_text({**verdict, "status": "degraded", "consecutive": 3, "unreliable": "unreliable: x"})
    assert "marked estimated (never a rollback)" in degraded and degraded.endswith("; unreliable: x")
    assert _estimate_text({"status": "none", "why": "estimates follow prediction time"}).endswith(
        "none (estimates follow prediction time)"
    )


def test_large_windows_draw_the_auc_from_its_normal_limit_with_the_same_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    """From NORMAL_FROM rows the simulated AUCs come from (sum of positive ranks, positives) drawn jointly normal;
    their interval matches the one of label sets drawn row by row."""
    import tollgate.estimation as estimation

    rng = np.random.default_rng(12)
    scores = rng.random(5000).round(3)  # ties included
    q = np.clip(scores * 0.9 + 0.05, 0, 1)
    normal = np.percentile(simulated_aucs(q, scores, draws=400, seed=1), [2.5, 50, 97.5])
    monkeypatch.setattr(estimation, "NORMAL_FROM", 10**9)
    rows = np.percentile(simulated_aucs(q, scores, draws=400, seed=1), [2.5, 50, 97.5])
    np.testing.assert_allclose(normal, rows, atol=0.003)
