"""Class labels of any type (issue 33.1): the config lists the values as the data holds them (text, ints,
booleans), the model is trained on a fixed encoding, and answers, metrics, labels files and gate messages carry
the original classes. Checked against scikit-learn, which takes string labels directly."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from tasks.evaluation import evaluate_frame, predict_scores
from tasks.gates import too_small
from tasks.ground_truth import LabelsError, join_labels, live_metrics, read_labels
from tasks.rollout import answer_problem
from tasks.training import build_pipeline, fit_pipeline, split_frame
from tasks.validation import conform_and_validate
from tests.unit.test_task_types import task_config, task_frame
from tollgate.config import TollgateConfig
from tollgate.objective import Objective, class_codes, positive_class

NAMES = {0: "barolo", 1: "grignolino", 2: "barbera €"}  # sklearn's wine cultivars, one with a symbol in it


def _config(values: list[Any], task: str = "multiclass", **label: Any) -> TollgateConfig:
    body = task_config("multiclass").model_dump(mode="json")
    body["dataset"]["columns"]["y"] = {"type": "label", "values": values, **label}
    body["model"]["task"] = task
    if task == "binary":
        body["gates"]["minimums"] = {"auc": 0.5}
        body["gates"]["maximums"] = {}
        body["monitoring"].update(live_degraded_at=0.7, live_severe_at=0.6)
    return TollgateConfig.model_validate(body)


def _named_wine() -> pd.DataFrame:
    frame = task_frame("multiclass")
    return frame.assign(y=frame["y"].map(NAMES).astype(object))


@functools.cache
def _fit() -> tuple[TollgateConfig, Objective, pd.DataFrame, np.ndarray]:
    cfg = _config(list(NAMES.values()))
    objective = Objective.from_config(cfg)
    train, holdout = split_frame(_named_wine(), cfg.dataset, cfg.split, cfg.model.seed)
    model = fit_pipeline(
        build_pipeline(cfg.features, cfg.model), train, cfg.features, "y", objective, cfg.model.threads
    )
    return cfg, objective, holdout, predict_scores(model, holdout, cfg.features.all, objective)


def test_the_encoding_is_fixed_and_the_positive_class_follows_the_documented_rule() -> None:
    assert class_codes("multiclass", ["z", "a", "m"]) == ("a", "m", "z")  # sorted: listing order does not matter
    assert class_codes("binary", [1, 0]) == (0, 1) and class_codes("binary", [True, False]) == (False, True)
    assert class_codes("binary", ["no", "yes"]) == ("no", "yes") and positive_class(["yes", "no"]) == "no"
    assert class_codes("binary", ["bad", "good"], positive="bad") == ("good", "bad")


@pytest.mark.parametrize(
    ("label", "task", "problem"),
    [
        ({"values": ["a", 1, "c"]}, "multiclass", "'values' must be of one type"),
        ({"values": ["no", "yes"], "positive": "maybe"}, "binary", "'positive' ('maybe') must be one of"),
        ({"values": ["a", "b", "c"], "positive": "a"}, "multiclass", "positive' is only for binary tasks"),
        ({"values": ["a", "b", "c"]}, "binary", "binary needs exactly 2 label values"),
    ],
)
def test_a_label_config_that_cannot_work_is_refused_naming_why(label: dict[str, Any], task: str, problem: str) -> None:
    values = label.pop("values")
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        _config(values, task, **label)


def test_string_classes_train_and_are_measured_by_their_names() -> None:
    cfg, objective, holdout, out = _fit()
    assert objective.labels == ("barbera €", "barolo", "grignolino") and objective.classes == (0, 1, 2)
    report = evaluate_frame(holdout, out, cfg.dataset, objective)["overall"]
    truth, decided = holdout["y"].to_numpy(), objective.decision(out)
    assert set(decided) <= set(NAMES.values())
    names = list(objective.labels)
    expected = recall_score(truth, decided, labels=names, average=None, zero_division=0)
    assert report["recall.barbera _"] == pytest.approx(expected[0]) and report["recall.barolo"] == pytest.approx(
        expected[1]
    )
    assert report["auc_ovr"] == pytest.approx(roc_auc_score(truth, out, multi_class="ovr", labels=names), abs=1e-12)


def test_the_gateway_answer_carries_the_class_names() -> None:
    _, objective, _, out = _fit()
    answer = objective.answer(out[0])
    assert answer["decision"] in NAMES.values() and set(answer["probabilities"]) == set(NAMES.values())
    assert answer["decision"] == max(answer["probabilities"], key=answer["probabilities"].__getitem__)
    assert answer_problem({**answer, "model_version": "3"}, "3", objective) is None
    assert "is not one of the classes" in str(
        answer_problem({**answer, "decision": 1, "model_version": "3"}, "3", objective)
    )


def test_a_too_small_segment_names_its_classes() -> None:
    _, objective, _, _ = _fit()
    message = too_small(objective.target(["barolo"] * 6 + ["grignolino"] * 2), objective, 50)
    assert message is not None and "(per class barbera €: 0, barolo: 6, grignolino: 2)" in message


def test_text_classes_in_a_table_are_validated_by_name(tmp_path: Path) -> None:
    cfg = _config(list(NAMES.values()))
    frame = _named_wine().assign(y=lambda f: pd.Categorical(f["y"]))  # a categorical column, as Parquet keeps it
    out, report = conform_and_validate(frame, cfg.dataset, tmp_path / "gx")
    assert report.passed, report.summary()
    assert out["y"].tolist() == _named_wine()["y"].tolist()
    wrong = _named_wine().assign(y=lambda f: f["y"].where(f.index != 7, "merlot"))
    _, failed = conform_and_validate(wrong, cfg.dataset, tmp_path / "gx2")
    assert "column 'y': expect_column_values_to_be_in_set failed: values outside ['barolo'" in failed.summary()
    assert "1 unexpected rows; e.g. ['merlot']" in failed.summary()


def test_a_labels_file_with_class_names_gives_live_metrics_equal_to_sklearns(tmp_path: Path) -> None:
    _, objective, holdout, out = _fit()
    log = pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in range(len(holdout))],
            "request_id": "r",
            "entity_id": holdout["id"].to_numpy(),
            "model_version": "1",
            "role": "champion",
            "ts": 100.0 + np.arange(len(holdout)),
            "score": objective.score(out),
            "proba": [list(row) for row in out],
        }
    )
    path = tmp_path / "labels.csv"
    pd.DataFrame(
        {"prediction_id": log["prediction_id"], "label": [f" {v}" for v in holdout["y"]], "label_time": "2026-01-01"}
    ).to_csv(path, index=False)
    labels = read_labels(path, "id", objective)
    assert set(labels["label"]) == set(holdout["y"])  # padded text read as the class names
    joined = join_labels(log, labels, as_of=2e9)
    ds = _config(list(NAMES.values())).dataset.model_copy(update={"segments": []})
    (row,) = live_metrics(joined, objective, ds).rows
    names = list(objective.labels)
    assert row["auc_ovr"] == pytest.approx(roc_auc_score(holdout["y"], out, multi_class="ovr", labels=names), abs=1e-12)
    pd.DataFrame({"prediction_id": ["p0"], "label": ["merlot"], "label_time": "2026-01-01"}).to_csv(path, index=False)
    with pytest.raises(
        LabelsError, match=r"one of the class values \['barbera €', 'barolo', 'grignolino'\]; rows \[0\]"
    ):
        read_labels(path, "id", objective)


def test_a_binary_text_label_scores_its_positive_class() -> None:
    frame = task_frame("multiclass")
    frame = frame.assign(y=np.where(frame["y"] == 0, "barolo", "other"))
    cfg = _config(["barolo", "other"], "binary", positive="barolo")
    objective = Objective.from_config(cfg)
    train, holdout = split_frame(frame, cfg.dataset, cfg.split, cfg.model.seed)
    model = fit_pipeline(
        build_pipeline(cfg.features, cfg.model), train, cfg.features, "y", objective, cfg.model.threads
    )
    score = predict_scores(model, holdout, cfg.features.all, objective)
    report = evaluate_frame(holdout, score, cfg.dataset, objective)["overall"]
    assert report["auc"] == pytest.approx(roc_auc_score(holdout["y"] == "barolo", score), abs=1e-12)
    assert report["auc"] > 0.9  # the score is the positive class's probability, not the other's
    assert set(objective.decision(score)) <= {"barolo", "other"}
    assert objective.answer(0.9)["decision"] == "barolo" and objective.answer(0.1)["decision"] == "other"
