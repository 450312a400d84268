"""The worked examples of "Bring your own data" (tests/fixtures/sklearn_tables.py) are what they claim: stored
the awkward way, their configs load, and the documented coercions make them fit their schema without changing
a value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.conform import conform
from tasks.validation import read_table
from tests.fixtures.sklearn_tables import NAMES, SEGMENT_VALUES, build_one, main
from tollgate.config import load_config
from tollgate.segments import segment_groups


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sklearn")


@pytest.mark.parametrize("name", NAMES)
def test_example_config_loads_and_names_the_table(name: str, built: Path) -> None:
    ex = build_one(name, built)
    cfg = load_config(ex.config, "dev", environ={}).config
    assert cfg.model.task == ex.task
    assert (cfg.dataset.id, cfg.dataset.timestamp, cfg.dataset.target) == (ex.id, ex.timestamp, ex.target)
    assert (ex.project / cfg.dataset.path).resolve() == ex.table
    frame = read_table(ex.table)
    assert set(frame.columns) == set(cfg.dataset.columns)
    assert cfg.dataset.row_count.min <= len(frame) <= cfg.dataset.row_count.max


@pytest.mark.parametrize(
    ("name", "column", "stored", "read_as"),
    [
        ("breast_cancer", "diagnosis", "object", "int64"),
        ("breast_cancer", "clinic", "category", "object"),
        ("breast_cancer", "recorded at", "int64", "datetime64[s]"),
        ("wine", "magnesium", "float64", "int64"),
        ("wine", "proline", "float64", "int64"),
        ("diabetes", "age", "float64", "int64"),
        ("diabetes", "sex", "float64", "int64"),
    ],
)
def test_stored_awkwardly_and_coerced_without_changing_a_value(
    name: str, column: str, stored: str, read_as: str, built: Path
) -> None:
    ex = build_one(name, built)
    ds = load_config(ex.config, "dev", environ={}).config.dataset
    frame = read_table(ex.table)
    assert str(frame[column].dtype) == stored
    out, done, rejected = conform(frame, ds)
    assert rejected == []
    assert column in {c.column for c in done}
    assert str(out[column].dtype).startswith(read_as.split("[")[0])
    if read_as == "int64":
        assert np.array_equal(out[column].to_numpy(), pd.to_numeric(frame[column]).astype("float64").to_numpy())
    elif read_as == "object":
        assert out[column].tolist() == frame[column].astype(str).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_every_segment_value_is_a_hard_one(name: str, built: Path) -> None:
    ex = build_one(name, built)
    ds = load_config(ex.config, "dev", environ={}).config.dataset
    out, _, _ = conform(read_table(ex.table), ds)
    groups = segment_groups(out, ds)
    text = [c for c in ds.segments if c not in ds.segment_bins]
    assert text, "each example has a segment column with unicode values"
    for col in text:
        assert set(groups[col]) <= set(SEGMENT_VALUES) and len(groups[col]) >= 3
        assert set(groups[col]) == set(ds.columns[col].categories or [])
    for col, edges in ds.segment_bins.items():
        assert len(groups[col]) == len(edges) + 1  # every bin is populated


@pytest.mark.parametrize("name", NAMES)
def test_time_column_spans_about_sixty_days_and_classes_spread_over_it(name: str, built: Path) -> None:
    ex = build_one(name, built)
    ds = load_config(ex.config, "dev", environ={}).config.dataset
    out, _, _ = conform(read_table(ex.table), ds)
    times = pd.to_datetime(out[ex.timestamp], utc=True)
    assert 50 <= (times.max() - times.min()).days <= 60
    if ex.task != "regression":  # the last quarter (a time split's holdout) holds every class
        late = out.loc[times >= times.quantile(0.75), ex.target]
        assert set(late) == set(ds.columns[ex.target].values or [])


def test_main_builds_named_examples_and_refuses_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "wine"]) == 0
    assert (tmp_path / "wine" / "configs" / "pipeline.yaml").exists()
    assert not (tmp_path / "diabetes").exists()
    assert "--config" in capsys.readouterr().out
    assert main([str(tmp_path), "iris"]) == 2
    assert main([]) == 2
