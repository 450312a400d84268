"""The serving rules on a whole table (batch inference) give the answers they give record by record (the
gateway): the same rows, fields and messages, on clean, dirty and mixed-type columns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.helpers import GOOD_RECORD, bundled_config
from tollgate.request_schema import RequestSchema

# Values a column may hold in a table read from CSV or Parquet, good and bad for some rule of the bundled schema
ODD = [None, math.nan, True, 0, 3, -1, 2.5, 1e9, math.inf, "", "north", "nope", "2026-01-01T00:00:00", "soon", 7.0]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as the gateway would receive them: a null cell as None, numpy scalars as Python ones."""
    columns = {c: frame[c].astype(object).tolist() for c in frame.columns}

    def plain(value: Any) -> Any:
        null = value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))
        return None if null else value

    return [{c: plain(columns[c][i]) for c in frame.columns} for i in range(len(frame))]


def _per_record(schema: RequestSchema, frame: pd.DataFrame) -> list[tuple[int, str, str]]:
    return [(i, e["field"], e["error"]) for i, r in enumerate(_records(frame)) for e in schema.errors(r, "")]


def _per_table(schema: RequestSchema, frame: pd.DataFrame) -> list[tuple[int, str, str]]:
    found = schema.frame_errors(frame)
    return list(zip(found["row"].tolist(), found["field"].tolist(), found["error"].tolist(), strict=True))


def _good(n: int) -> pd.DataFrame:
    rows = [{**GOOD_RECORD, "customer_id": f"c{i}"} for i in range(n)]
    return pd.DataFrame(rows)


def test_a_clean_table_has_no_problems() -> None:
    schema = RequestSchema(bundled_config())
    frame = _good(50)
    assert _per_record(schema, frame) == [] and schema.frame_errors(frame).empty


@pytest.mark.parametrize("seed", range(6))
def test_dirty_columns_give_the_same_rows_fields_and_messages(seed: int) -> None:
    schema = RequestSchema(bundled_config())
    rng = np.random.default_rng(seed)
    frame = _good(200)
    for column in rng.choice(list(frame.columns), size=5, replace=False):
        values = frame[column].astype(object).tolist()
        for i in rng.choice(len(values), size=30, replace=False):
            values[i] = ODD[rng.integers(len(ODD))]
        frame[column] = pd.Series(values, dtype=object).infer_objects()  # typed where the values allow
    if seed % 2 and pd.api.types.is_integer_dtype(frame["tenure_months"]):
        frame["tenure_months"] = frame["tenure_months"].astype("float64")  # ints as a CSV with a gap reads them
    expected = _per_record(schema, frame)
    assert expected  # the table is dirty
    assert _per_table(schema, frame) == expected


def test_missing_and_unknown_columns_and_the_target_name_every_row() -> None:
    schema = RequestSchema(bundled_config())
    frame = _good(3).drop(columns=["region"]).assign(churned=1, colour="red")
    found = _per_table(schema, frame)
    assert found == _per_record(schema, frame)
    assert {(f, e) for _, f, e in found} == {
        ("region", "field required"),
        ("churned", "the target is not an input (labels go to backfill)"),
        ("colour", "unknown field (dataset.extra_columns: forbid)"),
    }  # event_time (optional) is absent too: fine
    assert sorted({r for r, _, _ in found}) == [0, 1, 2]


def test_typed_parquet_columns_check_fast_and_alike() -> None:
    """Numbers in number columns (numpy and nullable dtypes), datetimes, bools: as a Parquet file gives them."""
    schema = RequestSchema(bundled_config())
    frame = _good(6)
    frame["event_time"] = pd.to_datetime(["2026-01-01", None, "2026-02-01", "2026-03-01", "2026-01-05", None])
    frame["tenure_months"] = pd.array([1, None, 300, 4, -2, 6], dtype="Int64")
    frame["monthly_charges"] = [1.0, math.nan, 600.0, 2.5, math.inf, 3.0]
    frame["autopay"] = pd.array([True, None, False, True, True, False], dtype="boolean")
    expected = _per_record(schema, frame)
    assert {f for _, f, _ in expected} == {"tenure_months", "monthly_charges", "autopay"}
    assert _per_table(schema, frame) == expected
