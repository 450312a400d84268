"""Training, evaluation, the gate, profiling, tracking records and the model card for multiclass and regression
models (binary is the bundled config's, covered by test_gates and the integration tier), on small frames built
from scikit-learn's bundled wine and diabetes tables."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    recall_score,
    roc_auc_score,
)

from tasks.evaluation import evaluate_frame, predict_scores
from tasks.gates import decide
from tasks.model_card import model_card
from tasks.profiling import reference_profile
from tasks.tracking import request_records, segment_metrics
from tasks.training import build_pipeline, fit_pipeline, split_frame
from tests.helpers import bundled_config
from tollgate.config import TollgateConfig
from tollgate.objective import Objective
from tollgate.segments import bin_labels

WINE_FEATURES = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]
DIABETES_FEATURES = ["age", "bmi", "bp", "s1", "s5"]
BINS = {"multiclass": {"alcohol": [12.5, 13.5]}, "regression": {"bmi": [0.0]}}


def task_frame(task: str) -> pd.DataFrame:
    """Wine (3 classes, 178 rows) or diabetes (442 rows) with an id, a time, a category and a bool segment."""
    rng = np.random.default_rng(0)
    if task == "multiclass":
        raw = load_wine(as_frame=True).frame[[*WINE_FEATURES, "target"]].rename(columns={"target": "y"})
    else:
        raw = load_diabetes(as_frame=True).frame[[*DIABETES_FEATURES, "target"]].rename(columns={"target": "y"})
    raw = raw.iloc[rng.permutation(len(raw))].reset_index(drop=True)
    n = len(raw)
    return raw.assign(
        id=[f"r{i}" for i in range(n)],
        ts=pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(n), unit="h"),
        cellar=rng.choice(["north", "south"], n),
        organic=rng.random(n) < 0.5,
    )


def task_config(task: str, kind: str = "hist_gradient_boosting", **gates: Any) -> TollgateConfig:
    """The bundled config with the task's schema, features, model, gates and live thresholds."""
    body = bundled_config().model_dump(mode="json")
    features = WINE_FEATURES if task == "multiclass" else DIABETES_FEATURES
    columns: dict[str, Any] = {c: {"type": "float"} for c in features}
    columns.update(
        id={"type": "string", "unique": True},
        ts={"type": "timestamp"},
        cellar={"type": "category", "categories": ["north", "south"]},
        organic={"type": "bool"},
        y={"type": "label", "values": [0, 1, 2]} if task == "multiclass" else {"type": "float"},
    )
    segment = next(iter(BINS[task]))
    body["dataset"] = {
        "path": "data/t.parquet",
        "id": "id",
        "timestamp": "ts",
        "target": "y",
        "segments": ["cellar", "organic", segment],
        "segment_bins": BINS[task],
        "row_count": {"min": 10},
        "columns": columns,
    }
    linear = kind != "hist_gradient_boosting"
    body["features"] = {"numeric": features, "categorical": [], "boolean": [], "scale_numeric": linear}
    hp = {} if linear else {"max_iter": 20, "min_samples_leaf": 5}
    body["model"] = {"task": task, "kind": kind, "seed": 3, "hyperparameters": hp}
    body["split"] = {"method": "random", "holdout_fraction": 0.4}
    if task == "multiclass":
        limits = {"minimums": {"auc_ovr": 0.8}, "maximums": {"log_loss": 2.0}, "non_inferiority_margin": 0.01}
        body["monitoring"].update(live_degraded_at=0.8, live_severe_at=0.7)
    else:
        limits = {"minimums": {"r2": 0.1}, "maximums": {"rmse": 80.0}, "non_inferiority_margin": 1.0}
        body["monitoring"].update(live_degraded_at=70.0, live_severe_at=90.0)
    body["gates"].update({**limits, "min_segment_size": 20, "bootstrap_samples": 200, **gates})
    return TollgateConfig.model_validate(body)


@functools.cache  # one fit per (task, kind) for the whole module: tests read, never modify, what it returns
def _fit(task: str, kind: str) -> tuple[TollgateConfig, Objective, pd.DataFrame, Any, np.ndarray]:
    cfg = task_config(task, kind)
    objective = Objective.from_config(cfg)
    train, holdout = split_frame(task_frame(task), cfg.dataset, cfg.split, cfg.model.seed)
    model = fit_pipeline(
        build_pipeline(cfg.features, cfg.model), train, cfg.features, "y", objective, cfg.model.threads
    )
    return cfg, objective, holdout, model, predict_scores(model, holdout, cfg.features.all, objective)


def _sklearn_metrics(task: str, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """The metrics computed directly with sklearn, as a user would check them."""
    if task == "regression":
        return {
            "n": len(y),
            "rmse": float(np.sqrt(mean_squared_error(y, out))),
            "mae": mean_absolute_error(y, out),
            "r2": r2_score(y, out),
        }
    predicted = out.argmax(axis=1)
    recalls = recall_score(y, predicted, labels=[0, 1, 2], average=None, zero_division=0)
    return {
        "n": len(y),
        "auc_ovr": roc_auc_score(y, out, multi_class="ovr", labels=[0, 1, 2]),
        "log_loss": log_loss(y, out, labels=[0, 1, 2]),
        "accuracy": accuracy_score(y, predicted),
        **{f"recall.{c}": float(r) for c, r in enumerate(recalls)},
    }


ESTIMATORS = [
    ("multiclass", "hist_gradient_boosting", HistGradientBoostingClassifier),
    ("multiclass", "logistic_regression", LogisticRegression),
    ("regression", "hist_gradient_boosting", HistGradientBoostingRegressor),
    ("regression", "ridge", Ridge),
]


@pytest.mark.parametrize(("task", "kind", "estimator"), ESTIMATORS, ids=[f"{t}-{k}" for t, k, _ in ESTIMATORS])
def test_pipelines_train_and_evaluate_to_sklearns_metrics(task: str, kind: str, estimator: type) -> None:
    cfg, objective, holdout, model, out = _fit(task, kind)
    assert type(model.named_steps["model"]) is estimator
    assert out.shape == ((len(holdout), 3) if task == "multiclass" else (len(holdout),))
    report = evaluate_frame(holdout, out, cfg.dataset, objective)
    y = holdout["y"].to_numpy()
    assert report["overall"] == pytest.approx(_sklearn_metrics(task, y, out), abs=1e-9)
    assert report["overall"][objective.primary] == (
        pytest.approx(report["overall"]["auc_ovr"]) if task == "multiclass" else report["overall"]["rmse"]
    )
    north = (holdout["cellar"] == "north").to_numpy()
    assert report["segments"]["cellar"]["north"] == pytest.approx(
        _sklearn_metrics(task, y[north], out[north]), abs=1e-9
    )


def test_regression_random_split_is_not_stratified_and_classification_is() -> None:
    for task in ("regression", "multiclass"):
        cfg = task_config(task)
        frame = task_frame(task)
        train, holdout = split_frame(frame, cfg.dataset, cfg.split, cfg.model.seed)
        assert len(train) + len(holdout) == len(frame)
    wine = task_frame("multiclass")
    _, holdout = split_frame(wine, task_config("multiclass").dataset, task_config("multiclass").split, 3)
    expected = wine["y"].value_counts(normalize=True).sort_index()
    assert holdout["y"].value_counts(normalize=True).sort_index().to_numpy() == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_numeric_segment_is_evaluated_by_its_bin_labels_and_bool_by_true_false(task: str) -> None:
    cfg, objective, holdout, _, out = _fit(task, "hist_gradient_boosting")
    report = evaluate_frame(holdout, out, cfg.dataset, objective)
    col, edges = next(iter(BINS[task].items()))
    assert set(report["segments"][col]) <= set(bin_labels(edges)) and len(report["segments"][col]) >= 2
    first = bin_labels(edges)[0]
    rows = (holdout[col] < edges[0]).to_numpy()
    assert report["segments"][col][first]["n"] == rows.sum()
    assert set(report["segments"]["organic"]) == {"False", "True"}
    assert sum(m["n"] for m in report["segments"]["organic"].values()) == len(holdout)
    keys = segment_metrics(report)
    assert f"seg.organic.True.{objective.primary}" in keys and any(k.startswith(f"seg.{col}.") for k in keys)


def test_a_dataset_without_segments_evaluates_overall_only() -> None:
    cfg, objective, holdout, _, out = _fit("regression", "ridge")
    ds = cfg.dataset.model_copy(update={"segments": [], "segment_bins": {}})
    assert evaluate_frame(holdout, out, ds, objective)["segments"] == {}


def _scored(task: str, n_per: dict[str, int], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows with a cellar segment; a baseline's outputs and a challenger's that match it in quality except on
    'south', where the challenger is much worse."""
    rng = np.random.default_rng(seed)
    cellar = np.concatenate([[c] * n for c, n in n_per.items()])
    n = len(cellar)
    south = cellar == "south"
    if task == "regression":
        y = rng.normal(150, 60, n)
        base = y + rng.normal(0, 20, n)
        chal = y + np.where(south, rng.normal(0, 80, n), rng.normal(0, 20, n))
    else:
        y = rng.integers(0, 3, n)

        def proba(signal: np.ndarray) -> np.ndarray:
            e = np.exp(rng.normal(0, 1, (n, 3)) + signal[:, None] * np.eye(3)[y])
            return e / e.sum(axis=1, keepdims=True)

        base = proba(np.full(n, 2.5))
        chal = proba(np.where(south, 0.2, 2.5))
    frame = pd.DataFrame({"cellar": cellar, "organic": True, "y": y, "alcohol": 13.0, "bmi": 0.1})
    return frame, base, chal


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_gate_rejects_a_clearly_worse_challenger_naming_the_scope(task: str) -> None:
    cfg = task_config(task)
    objective = Objective.from_config(cfg)
    frame, base, chal = _scored(task, {"north": 600, "south": 300})
    overall = objective.metrics(frame["y"], chal)
    verdict = decide(frame, chal, overall, cfg.dataset, cfg.gates, objective, 1, base, "Production v1", "1")
    primary = objective.primary
    assert not verdict.passed
    failing = {(c.scope, c.check) for c in verdict.failures}
    assert ("cellar=south", f"{primary}_segment_harm") in failing
    assert ("cellar=north", f"{primary}_segment_harm") not in failing
    south = next(c for c in verdict.checks if c.scope == "cellar=south")
    assert south.diff is not None and south.ci_high is not None and south.diff < 0 and south.ci_high < -1e-3
    name = "AUC (one-vs-rest)" if task == "multiclass" else "RMSE"
    assert south.reason.startswith(f"{name} {south.challenger:.4f} vs baseline {south.champion:.4f}: improvement")
    assert "confidently worse" in south.reason and "FAIL cellar=south" in verdict.summary()
    if task == "regression":  # RMSE: lower is better, so the worse challenger has the higher value
        assert south.challenger > (south.champion or 0)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_gate_passes_an_equal_challenger_and_does_not_gate_a_tiny_segment(task: str) -> None:
    cfg = task_config(task)
    objective = Objective.from_config(cfg)
    frame, base, _ = _scored(task, {"north": 600, "south": 12})
    verdict = decide(frame, base, objective.metrics(frame["y"], base), cfg.dataset, cfg.gates, objective, 1, base)
    assert verdict.passed, verdict.summary()
    overall = next(c for c in verdict.checks if c.check == f"{objective.primary}_non_inferiority")
    assert overall.scope == "overall" and overall.diff == 0 and overall.status == "pass"
    tiny = next(c for c in verdict.checks if c.scope == "cellar=south")
    assert tiny.status == "not_gated" and "below min_segment_size" in tiny.reason
    assert "not gated cellar=south" in verdict.summary()


def test_multiclass_segment_with_one_usable_class_is_not_gated() -> None:
    cfg = task_config("multiclass", min_segment_size=1)
    objective = Objective.from_config(cfg)
    frame, base, _ = _scored("multiclass", {"north": 300})
    y = np.where(np.arange(len(frame)) < 297, 0, frame["y"])  # class 0 and 3 rows of the rest
    frame = frame.assign(y=y)
    verdict = decide(frame, base, objective.metrics(y, base), cfg.dataset, cfg.gates, objective, 1, base)
    north = next(c for c in verdict.checks if c.scope == "cellar=north")
    assert north.status == "not_gated" and "fewer than 2 classes" in north.reason


@pytest.mark.parametrize(
    ("overall", "status", "reason"),
    [
        ({"n": 100, "r2": 0.4, "rmse": 55.0, "mae": 40.0}, ["pass", "pass"], "RMSE 55.0000 <= max_rmse 80.0"),
        ({"n": 100, "r2": 0.05, "rmse": 95.5, "mae": 70.0}, ["fail", "fail"], "RMSE 95.5000 > max_rmse 80.0"),
        ({"n": 1, "r2": float("nan"), "rmse": 5.0, "mae": 5.0}, ["fail", "pass"], "R2 is undefined"),
    ],
)
def test_absolute_limits_follow_the_config_for_any_metric(
    overall: dict[str, float], status: list[str], reason: str
) -> None:
    cfg = task_config("regression")
    verdict = decide(pd.DataFrame(), np.empty(0), overall, cfg.dataset, cfg.gates, Objective.from_config(cfg), 1)
    assert [(c.check, c.status) for c in verdict.checks] == list(zip(["min_r2", "max_rmse"], status, strict=True))
    assert any(c.reason.startswith(reason) for c in verdict.checks)


def test_prediction_profile_is_the_predicted_class_for_multiclass_and_the_value_for_regression() -> None:
    for task in ("multiclass", "regression"):
        cfg, objective, holdout, _, out = _fit(task, "hist_gradient_boosting")
        frame = task_frame(task)
        profile = reference_profile(frame, cfg.features, out, 5, holdout, cfg.dataset, 10, objective)
        pred = profile["prediction"]
        col = next(iter(BINS[task]))
        seg = profile["segments"][col]
        assert set(seg) <= set(bin_labels(BINS[task][col])) and set(profile["segments"]["organic"]) == {"False", "True"}
        if task == "multiclass":
            decided = out.argmax(axis=1)
            assert pred["kind"] == "categorical"
            assert pred["proportions"] == pytest.approx(
                {str(c): float(np.mean(decided == c)) for c in np.unique(decided)}
            )
            south = (holdout["cellar"] == "south").to_numpy()
            got = profile["segments"]["cellar"]["south"]["prediction"]["proportions"]
            assert sum(got.values()) == pytest.approx(1.0) and got.get("0", 0) == pytest.approx(
                np.mean(decided[south] == 0)
            )
        else:
            assert pred["kind"] == "numeric" and pred["mean"] == pytest.approx(out.mean())
            assert profile["segments"]["cellar"]["north"]["rows"] == (frame["cellar"] == "north").sum()


def test_request_records_carry_id_and_features_first_then_segments_and_time() -> None:
    cfg = task_config("regression")
    frame = task_frame("regression")
    recs = request_records(frame, cfg, 3)
    assert list(recs[0]) == ["id", *DIABETES_FEATURES, "cellar", "organic", "ts"]
    assert recs[0]["ts"] == frame["ts"].iloc[0].isoformat() and isinstance(recs[0]["organic"], bool)
    assert "y" not in recs[0]


def test_model_card_names_the_tasks_metrics() -> None:
    from tasks.data import DataVersion

    data = DataVersion(path="data/t.parquet", md5="0" * 32, recorded_md5=None, git_sha=None, git_dirty=False, rows=9)
    for task in ("multiclass", "regression"):
        cfg, objective, holdout, _, out = _fit(task, "hist_gradient_boosting")
        card = model_card(cfg, data, evaluate_frame(holdout, out, cfg.dataset, objective))
        if task == "regression":
            assert "AUC" not in card and "RMSE" in card and "| cellar=north |" in card
            assert "max_rmse" not in card and "RMSE <= 80.0" in card
        else:
            assert "AUC (one-vs-rest" in card and "recall of 2" in card and "| organic=True |" in card


def test_a_hyperparameter_the_estimator_does_not_take_is_named() -> None:
    cfg = task_config("regression", "ridge")
    model = cfg.model.model_copy(update={"hyperparameters": {"alpha": 2.0, "learning_rate": 0.1}})
    with pytest.raises(ValueError, match=r"\['learning_rate'\] are not parameters of Ridge"):
        build_pipeline(cfg.features, model)
    fitted = build_pipeline(cfg.features, cfg.model.model_copy(update={"hyperparameters": {"alpha": 2.0}}))
    assert fitted.named_steps["model"].alpha == 2.0
