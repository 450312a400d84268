"""Labels: validation, idempotent ingestion, corrections, joining; the retrain guard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.ground_truth import LabelsError, ingest, join_labels, live_metrics, read_labels
from tasks.retraining import retrain_allowed
from tests.helpers import bundled_config
from tollgate.objective import Objective
from tollgate.paths import StatePaths


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_ingest_is_idempotent_and_takes_corrections(tmp_path: Path) -> None:
    first = pd.DataFrame({"customer_id": ["A", "B"], "label": [1, 0], "label_time": ["2026-01-01", "2026-01-01"]})
    labels = read_labels(_write(tmp_path, first), "customer_id")
    assert ingest(tmp_path / "store", labels) == (2, 2)
    assert ingest(tmp_path / "store", labels) == (0, 2)  # the same file twice changes nothing
    fix = pd.DataFrame({"customer_id": ["B"], "label": [1], "label_time": ["2026-02-01"]})
    assert ingest(tmp_path / "store", read_labels(_write(tmp_path, fix, "fix.csv"), "customer_id")) == (1, 2)
    stored = pd.read_parquet(tmp_path / "store" / "labels.parquet").set_index("key")["label"]
    assert stored.to_dict() == {"A": 1, "B": 1}


@pytest.mark.parametrize(
    ("frame", "phrase"),
    [
        (pd.DataFrame({"who": ["A"], "label": [1], "label_time": ["2026-01-01"]}), "needs a key column"),
        (
            pd.DataFrame({"customer_id": ["A"], "label": [2], "label_time": ["2026-01-01"]}),
            "column 'label' must be one of the class values [0, 1]; rows [0] are not (e.g. 2)",
        ),
        (
            pd.DataFrame({"customer_id": ["A"], "label": [1], "label_time": ["someday"]}),
            "unparsable timestamps in rows [0]",
        ),
        (pd.DataFrame({"customer_id": ["A"], "label": [1]}), "missing column(s) ['label_time']"),
    ],
)
def test_bad_labels_files_name_the_cause(tmp_path: Path, frame: pd.DataFrame, phrase: str) -> None:
    with pytest.raises(LabelsError) as err:
        read_labels(_write(tmp_path, frame), "customer_id")
    assert phrase in str(err.value)


def test_join_uses_matured_labels_and_scores_shadow_rows_by_request() -> None:
    log = pd.DataFrame(
        {
            "prediction_id": ["p1", "p1-shadow", "p2", "p3"],
            "request_id": ["p1", "p1", "p2", "p3"],
            "entity_id": ["A", "A", "B", "C"],
            "model_version": ["1", "2", "1", "1"],
            "role": ["champion", "shadow", "champion", "champion"],
            "score": [0.9, 0.8, 0.2, 0.4],
            "ts": [1.0] * 4,
        }
    )
    labels = pd.DataFrame(
        {
            "key_kind": ["prediction", "entity", "entity"],
            "key": ["p1", "B", "C"],
            "label": [1, 0, 1],
            "label_time": [10.0, 10.0, 99.0],
        }
    )
    joined = join_labels(log, labels, as_of=50.0)
    assert dict(zip(joined["prediction_id"], joined["label"], strict=True)) == {"p1": 1, "p1-shadow": 1, "p2": 0}
    rows = live_metrics(joined, Objective("binary", (0, 1)), bundled_config().dataset).rows
    assert {(r["model_version"], r["role"]) for r in rows if r["window"] == "all"} == {
        ("1", "champion"),
        ("2", "shadow"),
    }


def test_retrain_guard_cooldown_and_budget(tmp_path: Path) -> None:
    cfg = bundled_config()
    paths = StatePaths(tmp_path)
    assert retrain_allowed(cfg, paths, 1_000_000.0) == (True, "allowed")
    history = paths.retrain_history(cfg.project.registered_model)
    history.parent.mkdir(parents=True)
    history.write_text('{"at": 1000000.0}\n')
    allowed, why = retrain_allowed(cfg, paths, 1_000_000.0 + 3600)
    assert not allowed and why.startswith("cooldown")
    day = 24 * 3600
    history.write_text("".join(f'{{"at": {1_000_000.0 + i * 2 * day}}}\n' for i in range(2)))
    allowed, why = retrain_allowed(cfg, paths, 1_000_000.0 + 3 * day)
    assert not allowed and why.startswith("budget: 2 retrains")
    assert retrain_allowed(cfg, paths, 1_000_000.0 + 10 * day)[0]
