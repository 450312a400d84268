"""The ONNX-compiled pipeline answers as the sklearn one does, for every task x estimator x scaling, on holdout
frames (missing numbers, messy and unseen categories) and on one-row frames built as the gateway builds them;
parity reports a different model as not ok, with the row that shows it."""

from __future__ import annotations

import functools
import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from tasks.training import build_pipeline
from tollgate.compiled import MARK, OnnxScorer, Unconvertible, convert, parity, token
from tollgate.config import MODEL_KINDS, TASKS, FeaturesConfig, ModelConfig
from tollgate.objective import Objective

FEATURES = FeaturesConfig(
    numeric=["tenure", "charges", "usage gb"], categorical=["region", "plan"], boolean=["autopay"]
)
REGIONS = np.array(["north", "North", "south", "east", "west"], dtype=object)
VARIANTS = [(task, kind, scale) for task in TASKS for kind in MODEL_KINDS[task] for scale in (False, True)]
OBJECTIVES = {
    "binary": Objective("binary", (0, 1), 0.5),
    "multiclass": Objective("multiclass", (0, 1, 2)),
    "regression": Objective("regression"),
}


def features_frame(n: int, seed: int) -> pd.DataFrame:
    """n rows as parquet gives them back: float numbers with NaN, object strings with None and NaN, a bool."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 60, n).astype("float64")  # many ties: tree thresholds sit on training values
    charges = np.round(rng.gamma(2.0, 30.0, n), 2)
    usage = rng.lognormal(2.0, 0.7, n)
    tenure[rng.random(n) < 0.1] = np.nan
    charges[rng.random(n) < 0.05] = np.nan
    usage[rng.random(n) < 0.05] = np.nan
    region = REGIONS[rng.integers(0, len(REGIONS), n)]
    region[rng.random(n) < 0.05] = None
    region[rng.random(n) < 0.05] = np.nan
    plan = np.array(["basic", "pro"], dtype=object)[rng.integers(0, 2, n)]
    return pd.DataFrame(
        {"tenure": tenure, "charges": charges, "usage gb": usage, "region": region, "plan": plan,
         "autopay": rng.random(n) < 0.4}
    )  # fmt: skip


def target(frame: pd.DataFrame, task: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    z = (
        0.04 * frame["tenure"].fillna(30).to_numpy()
        - 0.02 * frame["charges"].fillna(60).to_numpy()
        + 0.8 * (frame["region"] == "north").to_numpy()
        + 0.6 * frame["autopay"].to_numpy()
        + rng.normal(0, 0.5, len(frame))
    )
    if task == "binary":
        return (z > np.median(z)).astype("int64")
    if task == "multiclass":
        return np.digitize(z, np.quantile(z, [0.33, 0.66])).astype("int64")
    return 250.0 + 40.0 * z  # values in the hundreds


@functools.cache
def fitted(task: str, kind: str, scale: bool, seed: int = 0) -> Pipeline:
    features = FEATURES.model_copy(update={"scale_numeric": scale})
    train = features_frame(400, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return build_pipeline(features, ModelConfig.model_validate({"task": task, "kind": kind, "seed": seed})).fit(
            train, target(train, task, seed)
        )


def scorer_for(pipeline: Pipeline, features: FeaturesConfig) -> OnnxScorer:
    classes = list(pipeline.classes_) if hasattr(pipeline, "classes_") else None
    return OnnxScorer(convert(pipeline, features), features, classes)


def holdout() -> pd.DataFrame:
    frame = features_frame(300, seed=1)
    frame.loc[0, "region"] = "atlantis"  # unseen
    frame.loc[1, ["tenure", "charges", "usage gb", "region"]] = [np.nan, np.nan, np.nan, None]
    frame.loc[2, "region"] = np.nan
    frame.loc[3, "plan"] = "PRO"  # unseen spelling
    return frame


SERVING_RECORDS: list[dict[str, Any]] = [
    {"tenure": 12, "charges": 49.5, "usage gb": 7.25, "region": "north", "plan": "pro", "autopay": True},
    {"tenure": None, "charges": 80.0, "usage gb": None, "region": None, "plan": "basic", "autopay": None},
    {"tenure": 3, "charges": None, "usage gb": 1.0, "region": "atlantis", "plan": "basic", "autopay": False},
    {"tenure": 40, "charges": 20.0, "usage gb": 3.0, "region": "North", "plan": "pro"},  # autopay absent
]


def serving_frame(records: list[dict[str, Any]], features: FeaturesConfig) -> pd.DataFrame:
    """As serving/scoring.py frame() builds it: numbers float64 with NaN, the rest as the JSON values."""
    columns: dict[str, Any] = {c: [r.get(c) for r in records] for c in features.all}
    for c in features.numeric:
        columns[c] = np.array([np.nan if v is None else v for v in columns[c]], dtype="float64")
    return pd.DataFrame(columns, copy=False)


@pytest.mark.parametrize(("task", "kind", "scale"), VARIANTS)
def test_compiled_model_matches_sklearn(task: str, kind: str, scale: bool) -> None:
    features = FEATURES.model_copy(update={"scale_numeric": scale})
    pipeline = fitted(task, kind, scale)
    scorer = scorer_for(pipeline, features)
    objective = OBJECTIVES[task]

    report = parity(pipeline, scorer, holdout(), objective)
    assert report["ok"], report["reason"]
    assert report["rows"] == 300 and report["decisions_differ"] == 0 and report["max_abs_diff"] <= 1e-9
    json.dumps(report)

    for record in SERVING_RECORDS:
        one = serving_frame([record], features)
        assert one["region"].dtype == object  # autopay: bool for True/False, object with None
        assert parity(pipeline, scorer, one, objective)["ok"], record
    assert parity(pipeline, scorer, serving_frame(SERVING_RECORDS, features), objective)["ok"]

    if task != "regression":
        assert list(scorer.classes_) == list(pipeline.classes_)
        frame = holdout()
        assert (scorer.predict(frame) == pipeline.predict(frame)).all()


def test_batch_dtypes_and_missing_values_in_training() -> None:
    """Trained on a categorical-dtype column with NaN and an object bool column with None, scored on pandas
    category and object columns; trained on a bool column, scored on a nullable boolean one: the same answers
    as sklearn."""
    train = features_frame(400, seed=3)
    train["region"] = train["region"].astype("category")
    autopay = train["autopay"].astype(object)
    autopay[::17] = None
    train["autopay"] = autopay
    pipeline = build_pipeline(FEATURES, ModelConfig(task="binary", kind="hist_gradient_boosting", seed=0))
    pipeline.fit(train, target(features_frame(400, seed=3), "binary", 3))
    scorer = scorer_for(pipeline, FEATURES)
    objective = OBJECTIVES["binary"]

    frame = holdout()
    as_category = frame.assign(region=frame["region"].astype("category"), plan=frame["plan"].astype("category"))
    with_none = frame.assign(autopay=[None if i % 9 == 0 else v for i, v in enumerate(frame["autopay"])])
    big = pd.concat([frame] * 5, ignore_index=True)  # past the per-row loop: the factorized path
    for variant in (frame, as_category, with_none, big):
        report = parity(pipeline, scorer, variant, objective)
        assert report["ok"], report["reason"]
    one = serving_frame(SERVING_RECORDS, FEATURES)
    assert parity(pipeline, scorer, one, objective)["ok"]

    on_bool = fitted("binary", "hist_gradient_boosting", False)
    nullable = frame.assign(autopay=pd.array(list(with_none["autopay"]), dtype="boolean"))
    report = parity(on_bool, scorer_for(on_bool, FEATURES), nullable, objective)
    assert report["ok"], report["reason"]


def test_parity_reports_a_different_model() -> None:
    features = FEATURES
    pipeline = fitted("binary", "hist_gradient_boosting", False)
    other = fitted("binary", "hist_gradient_boosting", False, seed=7)  # other data and seed
    report = parity(pipeline, scorer_for(other, features), holdout(), OBJECTIVES["binary"])
    assert not report["ok"]
    assert report["max_abs_diff"] > 1e-5 and report["decisions_differ"] > 0
    assert report["reason"].startswith(f"{report['decisions_differ']}") or "first row" in report["reason"]
    assert "sklearn" in report["reason"] and "onnx" in report["reason"]
    json.dumps(report)

    regression = fitted("regression", "ridge", False)
    other_reg = fitted("regression", "ridge", False, seed=7)
    report = parity(regression, scorer_for(other_reg, features), holdout(), OBJECTIVES["regression"])
    assert not report["ok"] and report["decisions_differ"] > 0 and "first row 0" in report["reason"]


def test_parity_of_an_empty_frame_is_not_ok() -> None:
    pipeline = fitted("binary", "logistic_regression", False)
    report = parity(pipeline, scorer_for(pipeline, FEATURES), holdout().iloc[0:0], OBJECTIVES["binary"])
    assert not report["ok"] and report["reason"] == "no rows to compare"


def test_scorer_reads_classes_from_the_model_and_needs_every_column() -> None:
    pipeline = fitted("multiclass", "logistic_regression", True)
    features = FEATURES.model_copy(update={"scale_numeric": True})
    scorer = OnnxScorer(convert(pipeline, features), features, None)
    assert list(scorer.classes_) == [0, 1, 2]
    with pytest.raises(KeyError, match="plan"):
        scorer.predict_proba(holdout().drop(columns="plan"))


def test_an_unsupported_estimator_is_unconvertible() -> None:
    pipeline = fitted("binary", "logistic_regression", False)
    swapped = Pipeline([pipeline.steps[0], ("model", DecisionTreeClassifier().fit([[0.0], [1.0]], [0, 1]))])
    with pytest.raises(Unconvertible, match="step 'model': DecisionTreeClassifier"):
        convert(swapped, FEATURES)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (True, 1, True),  # sklearn's encoder matches by equality: True == 1 == 1.0
        (np.True_, 1.0, True),
        (np.int64(3), 3.0, True),
        (None, np.nan, False),  # but keeps None and NaN apart
        (np.nan, float("nan"), True),
        ("True", True, False),
        ("north", "North", False),
        (MARK + "None", None, False),  # a string that looks like a token is escaped
        (0.5, 0.5000001, False),
    ],
)
def test_tokens_follow_sklearn_matching(a: Any, b: Any, same: bool) -> None:
    assert (token(a) == token(b)) is same
